"""The kubelet's HTTPS API as the kube-apiserver calls it: container logs (``kubectl logs``), the pod
list, health and metrics. One server answers for every node of the process: they all advertise its
address and port, and the pod's namespace and name in the URL say which pod is meant."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import os
import socket
import ssl
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Final, Protocol

import attrs
import structlog
from aiohttp import web
from aiohttp.typedefs import Handler

from vkpy.errors import ConfigError, DeviceUnreachable, LogsNotAvailable
from vkpy.kubelet.logformat import ByteBudget, render_line
from vkpy.kubelet.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from vkpy.kubelet.metrics import Check, KubeletMetrics, readyz_text
from vkpy.kubelet.query import QueryError, parse_log_options, parse_stream
from vkpy.kubelet.tls import (
    load_certificate,
    load_pem_certificate,
    peer_common_name,
    self_signed_certificate,
    server_context,
)
from vkpy.types import LogLine, LogOptions, Pod

log = structlog.get_logger("vkpy.kubelet")

ANONYMOUS_REFUSED: Final = (
    "anonymous requests are refused: present a client certificate signed by the cluster CA"
)

# Liveness and readiness probes carry no client certificate, and neither answer gives anything away
# (the apiserver also lets anonymous callers read its /healthz and /readyz).
_PUBLIC_PATHS: Final = frozenset({"/healthz", "/readyz"})
_UNSUPPORTED: Final = ("exec", "attach", "portForward", "run")
_QUIET_ROUTES: Final = frozenset({"healthz", "readyz", "metrics"})
# The apiserver passes the kubelet's own words on to kubectl only for 400 and 500 (as the kubelet
# answers); any other code becomes a generic message that hides what is wrong.
_BACKEND_ERRORS: Final[Mapping[type[Exception], int]] = {LogsNotAvailable: 400, DeviceUnreachable: 500}

# On stop, a follow stream would otherwise hold the shutdown for aiohttp's default 60 s.
_SHUTDOWN_GRACE: Final = 2.0
_CLOSE_TIMEOUT: Final = 5.0
# A log chunk stops growing past this: big enough that the per-write cost is lost in the copying,
# small enough that a reader sees steady progress and the memory per stream stays small.
_CHUNK_BYTES: Final = 64 * 1024

_PEER: Final = web.RequestKey("vkpy_kubelet_peer", str)
_STREAM: Final = web.RequestKey("vkpy_kubelet_stream", web.StreamResponse)

MetricsSource = Callable[[], str]
"""More metrics for ``/metrics``: exposition text appended to the server's own."""
ReadinessSource = Callable[[], Sequence[Check]]
"""The checks ``/readyz`` reports; without one, ready means ``backend.healthy()``."""


class KubeletBackend(Protocol):
    """What the server needs from the core. Called on the event loop: every method but
    ``container_logs`` must answer from memory, without blocking."""

    def find_pod(self, namespace: str, name: str) -> Pod | None:
        """The pod with this namespace and name on any node of this process, or ``None``."""

    def container_logs(self, pod: Pod, container: str, options: LogOptions) -> AsyncIterator[LogLine]:
        """The container's log lines, honouring ``follow``, ``previous``, ``tail_lines`` and ``since``
        (the server applies ``timestamps`` and ``limit_bytes``). An async generator is expected; the
        server ``aclose()``s it when the caller goes away or ``limit_bytes`` is reached.

        Raise (when called or from the iteration) :class:`~vkpy.LogsNotAvailable` for logs that do not
        exist and :class:`~vkpy.DeviceUnreachable` when the device cannot be asked."""

    def pods_manifests(self) -> list[Mapping[str, Any]]:
        """The v1 Pod objects of every pod on this process's nodes, for ``/pods``."""

    def healthy(self) -> bool:
        """Whether the process is working, for ``/healthz``."""


def _optional_path(value: str | os.PathLike[str] | None) -> Path | None:
    return None if value is None else Path(value)


def _text(status: int, message: str) -> web.Response:
    return web.Response(status=status, text=message + "\n")


def _quoted(value: str) -> str:
    # Like Go's %q, so odd characters from the URL cannot forge lines in the answer.
    return json.dumps(value)


def _json_default(value: object) -> object:
    if isinstance(value, Mapping):
        return dict(value)
    if isinstance(value, datetime.datetime):
        return value.isoformat()
    if isinstance(value, set | frozenset):
        return sorted(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _backend_error(exc: Exception) -> web.Response | None:
    for error_type, status in _BACKEND_ERRORS.items():
        if isinstance(exc, error_type):
            return _text(status, str(exc))
    return None


def _route_name(request: web.Request) -> str:
    resource = request.match_info.route.resource
    name = resource.name if resource is not None else None
    return name or "other"


class _ClientGone(Exception):
    """Writing to the caller failed: it closed the connection."""


@attrs.define(eq=False)
class _DeferredHeaders:
    """Sends a streaming response's headers ``delay`` seconds from now, unless settled before."""

    request: web.Request
    response: web.StreamResponse
    _timer: asyncio.TimerHandle | None = attrs.field(init=False, default=None)
    _sending: asyncio.Task[Any] | None = attrs.field(init=False, default=None)

    def arm(self, delay: float) -> None:
        self._timer = asyncio.get_running_loop().call_later(delay, self._send)

    def _send(self) -> None:
        self._sending = asyncio.ensure_future(_prepare(self.response, self.request))

    async def settle(self) -> bool:
        """Stop the timer; return whether the headers went out (waiting for a send under way).
        Raises :class:`_ClientGone` when they could not be sent."""
        self.cancel_timer()
        if self._sending is not None:
            await self._sending
        return self.response.prepared

    def cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()

    def discard(self) -> None:
        """Give up (the handler is leaving early): nothing more will be sent from here."""
        self.cancel_timer()
        if self._sending is not None and not self._sending.done():
            self._sending.cancel()


async def _prepare(response: web.StreamResponse, request: web.Request) -> None:
    try:
        await response.prepare(request)
    except ConnectionResetError as exc:
        raise _ClientGone from exc


async def _write(response: web.StreamResponse, chunk: bytes) -> None:
    try:
        await response.write(chunk)
    except ConnectionResetError as exc:
        raise _ClientGone from exc


async def _close(lines: AsyncIterator[LogLine]) -> None:
    aclose = getattr(lines, "aclose", None)
    if aclose is None:
        return
    try:
        async with asyncio.timeout(_CLOSE_TIMEOUT):
            await aclose()
    except Exception as exc:
        # The stream is over for the caller either way; a backend that cannot let go is worth a note.
        log.warning("kubelet.logs_close_failed", error=str(exc) or type(exc).__name__)


@attrs.define(eq=False)
class _Batch:
    """Gathers the lines of a log stream into HTTP chunks of up to about ``_CHUNK_BYTES``: a chunk
    costs a transport write and a TLS record, which line by line took most of the CPU.

    A chunk goes out when it is full, or as soon as the source has nothing more ready: lines that
    the source yields without waiting come one after the other while the handler's task keeps the
    event loop, and once it has to wait (a file read, a follow poll, the network) the loop runs the
    callback queued with the first gathered line, which writes the chunk from a task of its own. So
    ``kubectl logs -f`` still shows a lone line at once, while the iteration itself stays in the
    handler's task (see ``_stream_logs``). One write runs at a time, in order."""

    response: web.StreamResponse
    metrics: KubeletMetrics
    _parts: list[bytes] = attrs.field(init=False, factory=list)
    _size: int = attrs.field(init=False, default=0)
    _soon: asyncio.Handle | None = attrs.field(init=False, default=None)
    _writer: asyncio.Task[None] | None = attrs.field(init=False, default=None)
    _failure: Exception | None = attrs.field(init=False, default=None)

    async def add(self, chunk: bytes) -> None:
        """Gather ``chunk``. Raises :class:`_ClientGone` (or what else a write raised) once a
        write failed, so that the handler stops reading as it did when it wrote each line itself."""
        if self._failure is not None:
            raise self._failure
        self._parts.append(chunk)
        self._size += len(chunk)
        if self._size >= _CHUNK_BYTES:
            await self.flush()
        elif self._soon is None:
            self._soon = asyncio.get_running_loop().call_soon(self._write_soon)

    async def flush(self) -> None:
        """Write everything gathered, after the write under way if any."""
        self._cancel_soon()
        if self._writer is not None:
            await self._writer
            self._writer = None
        if self._failure is not None:
            raise self._failure
        if self._parts:
            await self._send()

    def discard(self) -> None:
        """The stream is over: nothing more goes out from here."""
        self._cancel_soon()
        if self._writer is not None and not self._writer.done():
            self._writer.cancel()

    def _cancel_soon(self) -> None:
        if self._soon is not None:
            self._soon.cancel()
            self._soon = None

    def _write_soon(self) -> None:
        self._soon = None
        # A write under way takes what was gathered meanwhile when it is done; after a failure the
        # handler learns of it at its next line.
        if self._failure is None and (self._writer is None or self._writer.done()):
            self._writer = asyncio.ensure_future(self._write_gathered())

    async def _write_gathered(self) -> None:
        try:
            while self._parts:
                await self._send()
        except Exception as exc:
            # Kept for the handler's task, which ends the stream as it would have on its own write.
            self._failure = exc

    async def _send(self) -> None:
        parts, self._parts, self._size = self._parts, [], 0
        chunk = parts[0] if len(parts) == 1 else b"".join(parts)
        await _write(self.response, chunk)
        self.metrics.log_bytes += len(chunk)


@attrs.define(eq=False)
class KubeletServer:
    """The kubelet API on ``address:port`` over TLS.

    ``tls_cert``/``tls_key`` are the serving certificate (without them a self-signed one is made,
    which an apiserver verifying kubelets will refuse). ``client_ca`` is the CA that signs the
    apiserver's kubelet-client certificate; callers without a certificate get a 401 unless
    ``allow_anonymous``. ``first_line_grace`` is how long a ``follow`` request waits for its first
    line before the 200 goes out (after that, an error can only end the stream).
    ``metrics_source`` adds to ``/metrics`` and ``readiness`` answers ``/readyz``."""

    backend: KubeletBackend
    address: str
    _port: int = attrs.field(alias="port")
    tls_cert: Path | None = attrs.field(default=None, converter=_optional_path)
    tls_key: Path | None = attrs.field(default=None, converter=_optional_path)
    client_ca: Path | None = attrs.field(default=None, converter=_optional_path)
    allow_anonymous: bool = False
    first_line_grace: float = 2.0
    metrics_source: MetricsSource | None = None
    readiness: ReadinessSource | None = None
    _metrics: KubeletMetrics = attrs.field(init=False, factory=KubeletMetrics)
    _context: ssl.SSLContext | None = attrs.field(init=False, default=None)
    _runner: web.AppRunner | None = attrs.field(init=False, default=None)
    _bound_port: int | None = attrs.field(init=False, default=None)
    _streams: set[asyncio.Task[Any]] = attrs.field(init=False, factory=set)

    def __attrs_post_init__(self) -> None:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ConfigError(
                "kubelet: tls_cert and tls_key go together: set both (the serving certificate and its "
                "key) or neither (a self-signed certificate)"
            )
        if self.client_ca is None and not self.allow_anonymous:
            raise ConfigError(
                "kubelet.client_ca is not set and allow_anonymous is false, so every request would be "
                "refused: set client_ca to the CA of the apiserver's --kubelet-client-certificate"
            )
        if not 0 <= self._port <= 65535:
            raise ConfigError(f"kubelet.port: {self._port} is not a TCP port (0-65535, 0 for any)")

    @property
    def port(self) -> int:
        """The port listened on: the real one once started, even when 0 asked for any free port."""
        return self._bound_port if self._bound_port is not None else self._port

    async def start(self) -> None:
        """Load the certificates and listen. Raises :class:`~vkpy.ConfigError` when a certificate
        cannot be loaded or the address cannot be bound."""
        if self._runner is not None:
            raise RuntimeError("the kubelet server is already running")
        context = await asyncio.to_thread(self._make_context)
        runner = web.AppRunner(
            self._application(), handler_cancellation=True, access_log=None, shutdown_timeout=_SHUTDOWN_GRACE
        )
        await runner.setup()
        try:
            await web.TCPSite(runner, self.address, self._port, ssl_context=context).start()
        except OSError as exc:
            await runner.cleanup()
            raise ConfigError(
                f"kubelet: cannot listen on {self.address}:{self._port}: {exc.strerror or exc}"
            ) from exc
        self._context, self._runner = context, runner
        self._bound_port = int(runner.addresses[0][1])
        log.info(
            "kubelet.listening",
            address=self.address,
            port=self._bound_port,
            client_ca=str(self.client_ca) if self.client_ca else None,
            allow_anonymous=self.allow_anonymous,
        )

    async def stop(self) -> None:
        """Stop listening and end open streams (each backend iterator is closed)."""
        runner, self._runner = self._runner, None
        if runner is None:
            return
        # A follow stream never ends by itself: cut it now rather than after aiohttp's grace.
        for task in self._streams:
            task.cancel()
        await runner.cleanup()
        self._context, self._bound_port = None, None
        log.info("kubelet.stopped")

    def reload_certificate(self, cert: str | os.PathLike[str], key: str | os.PathLike[str]) -> None:
        """Serve ``cert``/``key`` from now on: new connections present it, open ones are left alone.

        Runs on the event loop on purpose: OpenSSL does not promise that changing a context is safe
        while another thread handshakes with it. Raises ``OSError`` or ``ssl.SSLError`` (unreadable
        file, bad PEM, key not matching) and keeps the previous certificate."""
        cert_path, key_path = Path(cert), Path(key)
        if self._context is not None:
            load_certificate(self._context, cert_path, key_path)
        self.tls_cert, self.tls_key = cert_path, key_path
        log.info("kubelet.certificate_reloaded", cert=str(cert_path), live=self._context is not None)

    # -- setup -------------------------------------------------------------------------------

    def _make_context(self) -> ssl.SSLContext:
        try:
            context = server_context(self.client_ca)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"kubelet.client_ca {self.client_ca}: cannot load the CA: {exc}") from exc
        if self.tls_cert is None or self.tls_key is None:
            hosts = self._self_signed_hosts()
            load_pem_certificate(context, self_signed_certificate(hosts))
            log.warning(
                "kubelet.self_signed_certificate",
                hosts=hosts,
                hint="the apiserver accepts it only without --kubelet-certificate-authority; "
                "set kubelet.tls_cert and kubelet.tls_key",
            )
            return context
        try:
            load_certificate(context, self.tls_cert, self.tls_key)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(
                f"kubelet.tls_cert {self.tls_cert}, kubelet.tls_key {self.tls_key}: "
                f"cannot load the serving certificate: {exc}"
            ) from exc
        return context

    def _self_signed_hosts(self) -> list[str]:
        hosts = []
        if self.address not in ("", "0.0.0.0", "::"):  # noqa: S104 - comparing, not binding
            hosts.append(self.address)
        hosts += ["localhost", socket.gethostname()]
        return hosts

    def _application(self) -> web.Application:
        app = web.Application(middlewares=[self._observe, self._authenticate])
        router = app.router
        router.add_get(
            "/containerLogs/{namespace}/{pod}/{container}",
            self._container_logs,
            name="containerLogs",
            allow_head=False,
        )
        router.add_get("/pods", self._pods, name="pods")
        router.add_get("/healthz", self._healthz, name="healthz")
        router.add_get("/readyz", self._readyz, name="readyz")
        router.add_get("/metrics", self._metrics_text, name="metrics")
        for kind in _UNSUPPORTED:
            router.add_route("*", f"/{kind}/{{rest:.*}}", self._unsupported, name=kind)
        return app

    # -- middlewares -------------------------------------------------------------------------

    @web.middleware
    async def _observe(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        started = time.perf_counter()
        status = 500
        try:
            response = await handler(request)
            status = response.status
            return response
        except web.HTTPException as exc:
            status = exc.status
            raise
        except asyncio.CancelledError:
            # The caller hung up (aiohttp cancels the handler); 499 as nginx says when nothing went out.
            stream = request.get(_STREAM)
            status = stream.status if stream is not None else 499
            raise
        except Exception:
            log.exception("kubelet.handler_failed", method=request.method, path=request.path)
            if request.get(_STREAM) is not None:
                raise  # the status line is gone: aiohttp can only drop the connection
            return _text(500, "internal error in vkpy: see its log")
        finally:
            self._record(request, status, time.perf_counter() - started)

    @web.middleware
    async def _authenticate(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        transport = request.transport
        peer = peer_common_name(transport.get_extra_info("peercert") if transport is not None else None)
        if peer is not None:
            request[_PEER] = peer
        elif not self.allow_anonymous and request.path not in _PUBLIC_PATHS:
            return _text(401, ANONYMOUS_REFUSED)
        return await handler(request)

    def _record(self, request: web.Request, status: int, duration: float) -> None:
        route = _route_name(request)
        self._metrics.count_request(route, status)
        emit = log.debug if route in _QUIET_ROUTES else log.info
        emit(
            "kubelet.request",
            method=request.method,
            path=request.path,
            query=request.query_string,
            status=status,
            peer_cn=request.get(_PEER),
            remote=request.remote,
            duration=round(duration, 6),
        )

    # -- handlers ----------------------------------------------------------------------------

    async def _container_logs(self, request: web.Request) -> web.StreamResponse:
        namespace = request.match_info["namespace"]
        name = request.match_info["pod"]
        container = request.match_info["container"]
        try:
            options = parse_log_options(request.query)
            only = parse_stream(request.query)
        except QueryError as exc:
            return _text(400, str(exc))
        key = f"{namespace}/{name}"
        pod = self.backend.find_pod(namespace, name)
        if pod is None:
            return _text(404, f"pod {_quoted(key)} not found on this node")
        if pod.container(container) is None:
            return _text(404, f"container {_quoted(container)} not found in pod {_quoted(key)}")
        try:
            lines = self.backend.container_logs(pod, container, options)
        except (LogsNotAvailable, DeviceUnreachable) as exc:
            return _backend_error(exc) or _text(500, str(exc))
        task = asyncio.current_task()
        if task is not None:
            self._streams.add(task)
        self._metrics.log_streams += 1
        try:
            return await self._stream_logs(request, pod, container, lines, options, only)
        finally:
            self._metrics.log_streams -= 1
            if task is not None:
                self._streams.discard(task)
            await _close(lines)

    async def _stream_logs(
        self,
        request: web.Request,
        pod: Pod,
        container: str,
        lines: AsyncIterator[LogLine],
        options: LogOptions,
        only: str | None,
    ) -> web.StreamResponse:
        response = web.StreamResponse()
        response.content_type = "text/plain"
        response.enable_chunked_encoding()
        # The status waits for the first line so that a missing log or an unreachable device still
        # gets its 404/503. A follow stream may stay silent for hours, so it answers 200 after a
        # grace. The iteration itself stays in this task: a backend may rely on its task or context.
        headers = _DeferredHeaders(request, response)
        if options.follow:
            headers.arm(self.first_line_grace)
        failure: Exception | None = None
        try:
            try:
                first = await anext(lines, None)
            except Exception as exc:
                first, failure = None, exc
            opened = await headers.settle()
            if not opened and failure is not None:
                error = _backend_error(failure)
                if error is None:
                    raise failure
                return error
            if not opened:
                await _prepare(response, request)
            request[_STREAM] = response
            if failure is not None:
                self._log_failure(pod, container, failure)
            else:
                await self._copy_lines(response, first, lines, options, only)
        except _ClientGone:
            log.debug("kubelet.logs_client_gone", pod=pod.key, container=container)
            return response
        except Exception as exc:
            if not response.prepared:
                raise
            self._log_failure(pod, container, exc)
        finally:
            headers.discard()
        with contextlib.suppress(ConnectionResetError):
            await response.write_eof()
        return response

    async def _copy_lines(
        self,
        response: web.StreamResponse,
        line: LogLine | None,
        lines: AsyncIterator[LogLine],
        options: LogOptions,
        only: str | None,
    ) -> None:
        budget = ByteBudget(options.limit_bytes)
        batch = _Batch(response, self._metrics)
        try:
            while line is not None:
                if only is None or line.stream == only:
                    chunk = budget.take(render_line(line, options.timestamps))
                    if chunk:
                        await batch.add(chunk)
                    if budget.exhausted:
                        break
                try:
                    line = await anext(lines, None)
                except Exception:
                    # The lines read before the failure still reach the caller, then the stream ends.
                    await batch.flush()
                    raise
            await batch.flush()
        finally:
            batch.discard()

    @staticmethod
    def _log_failure(pod: Pod, container: str, exc: Exception) -> None:
        # After the 200 went out, an error can only end the stream early; say why here.
        log.warning(
            "kubelet.logs_failed",
            pod=pod.key,
            container=container,
            error=str(exc) or type(exc).__name__,
            error_type=type(exc).__name__,
        )

    async def _pods(self, request: web.Request) -> web.Response:
        body = {"kind": "PodList", "apiVersion": "v1", "metadata": {}, "items": self.backend.pods_manifests()}
        return web.Response(text=json.dumps(body, default=_json_default), content_type="application/json")

    async def _healthz(self, request: web.Request) -> web.Response:
        return _text(200, "ok") if self.backend.healthy() else _text(500, "unhealthy")

    async def _readyz(self, request: web.Request) -> web.Response:
        return readyz_response(self.checks())

    def checks(self) -> Sequence[Check]:
        """What ``/readyz`` reports: the ``readiness`` checks, else whether the backend is healthy."""
        if self.readiness is not None:
            return self.readiness()
        healthy = self.backend.healthy()
        return [Check("process", healthy, "" if healthy else "the process reports itself unhealthy")]

    def metrics_text(self) -> str:
        """Everything ``/metrics`` shows: the server's own counters, then ``metrics_source``'s."""
        text = self._metrics.render()
        if self.metrics_source is not None:
            text += self.metrics_source()
        return text

    async def _metrics_text(self, request: web.Request) -> web.Response:
        return web.Response(body=self.metrics_text().encode(), headers={"Content-Type": METRICS_CONTENT_TYPE})

    async def _unsupported(self, request: web.Request) -> web.Response:
        kind = _route_name(request)
        return _text(501, f"vkpy does not support {kind}: devices have no container runtime")


def readyz_response(checks: Sequence[Check]) -> web.Response:
    ready, body = readyz_text(checks)
    return web.Response(status=200 if ready else 500, text=body)


@attrs.define(eq=False)
class MetricsServer:
    """``/metrics``, ``/healthz`` and ``/readyz`` over plain HTTP on a port of their own, for
    Prometheus and for probes that hold no client certificate for the kubelet port. It can start
    before the kubelet server (which may wait for its certificate), so it asks callables."""

    metrics: MetricsSource
    healthy: Callable[[], bool]
    readiness: ReadinessSource
    address: str
    _port: int = attrs.field(alias="port")
    _runner: web.AppRunner | None = attrs.field(init=False, default=None)
    _bound_port: int | None = attrs.field(init=False, default=None)

    @property
    def port(self) -> int:
        return self._bound_port if self._bound_port is not None else self._port

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=_SHUTDOWN_GRACE)
        await runner.setup()
        try:
            await web.TCPSite(runner, self.address, self._port).start()
        except OSError as exc:
            await runner.cleanup()
            raise ConfigError(
                f"metrics: cannot listen on {self.address}:{self._port}: {exc.strerror or exc}"
            ) from exc
        self._runner = runner
        self._bound_port = int(runner.addresses[0][1])
        log.info("metrics.listening", address=self.address, port=self._bound_port)

    async def stop(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()
        self._bound_port = None

    async def _metrics(self, request: web.Request) -> web.Response:
        return web.Response(body=self.metrics().encode(), headers={"Content-Type": METRICS_CONTENT_TYPE})

    async def _healthz(self, request: web.Request) -> web.Response:
        return _text(200, "ok") if self.healthy() else _text(500, "unhealthy")

    async def _readyz(self, request: web.Request) -> web.Response:
        return readyz_response(self.readiness())
