"""``ProtocolTransport``: the vkpy transport for any device that speaks the vkpy device protocol.

A subclass only says how to reach its device: ``open_stream()`` returns a fresh
:class:`~vkpy.protocol.streams.ByteStream` (a serial port, a USB bulk pipe, a socket) and
``describe()`` names it in messages (``/dev/serial/by-id/usb-...``). This class does the rest:

* **Link.** A background task opens the stream, says hello and keeps the link: when the stream
  ends (unplugged, reset, keep-alive unanswered) the node turns NotReady
  (``DeviceDisconnected``, ``"<port>: <reason>"``) and the task reopens it with capped backoff;
  Ready again after a new hello. ``node_start`` waits only briefly for the first connection, so an
  absent device never holds up node registration.
* **Reconciliation.** After every (re)connect a ``list`` tells which pods the device holds; every
  pod vkpy knew of is re-checked at once. A device that rebooted (new ``boot_id``) has lost its
  pods: ``get_pod_status`` then returns None and the core fails them with ``DeviceLost``; pods it
  still runs are adopted, never created twice.
* **Pods.** ``create`` keyed by pod UID (idempotent), ``delete`` with the grace period,
  ``restart`` of one container (devices with the ``restart`` capability), ``status`` mapped to
  vkpy's Waiting/Running/Terminated with device times converted to host time, pushed
  ``container_exited``/``pod_deleted`` events turned into ``node.report_status``.
* **Logs.** :mod:`vkpy.protocol.device_logs`: tail, since, follow, previous over offset reads,
  in small requests so a long log read never stalls status requests sharing the link.
* **Errors.** A request that times out or a closed link raises :class:`vkpy.DeviceUnreachable`
  (the core keeps the last known state and never re-creates because of it); a device that is
  busy is asked again; what the device refuses raises :class:`DeviceRequestFailed` or
  :class:`vkpy.PodRejected` with the device's own message.

Nothing here blocks the event loop: every device call is a request on the shared
:class:`~vkpy.protocol.client.DeviceClient`, which multiplexes them by id.
"""

from __future__ import annotations

import abc
import asyncio
import collections
import contextlib
import datetime
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Mapping
from typing import Any, ClassVar, TypeVar

import attrs
import structlog

from vkpy import hookimpl
from vkpy.config import Duration, InvalidValue, PositiveDuration
from vkpy.errors import DeviceUnreachable, LogsNotAvailable, PodRejected, VkpyError
from vkpy.plugins.transport import Transport
from vkpy.types import (
    ContainerState,
    DeviceHealth,
    LogLine,
    LogOptions,
    NodeHandle,
    Pod,
    PodStatusReport,
    Running,
    Terminated,
    Waiting,
)

from . import messages as wire
from .client import DEFAULT_TIMEOUT, DeviceClient, DeviceReset, EventsLost, HostEvent
from .device_logs import LogMarks, LogReader, LogWindow, wait_or_timeout
from .errors import (
    BadRequest,
    CapacityExceeded,
    ConnectionClosed,
    DeviceBusy,
    DeviceError,
    DeviceFrameTooLarge,
    DeviceInternalError,
    FrameTooLarge,
    HandshakeError,
    MalformedMessage,
    NoSuchContainer,
    NoSuchPod,
    NoSuchProgram,
    ProtocolError,
    RequestTimeout,
    UnknownOp,
    UnsupportedVersion,
)
from .framing import MAX_MAX_FRAME, MIN_HOST_MAX_FRAME
from .streams import ByteStream

T = TypeVar("T")

BUSY_RETRIES = 5
BUSY_PAUSE = 0.1
LINK_WAIT_FOR_LIST = 30.0
"""How long ``list_pods`` (asked once at start, to clean up orphans) waits for the device."""
_TIME_MEMO = 4096


# --- options -----------------------------------------------------------------------------------


def _at_least(minimum: int, maximum: int) -> Callable[[Any, attrs.Attribute[int], int], None]:
    def check(_instance: Any, attribute: attrs.Attribute[int], value: int) -> None:
        if not minimum <= value <= maximum:
            raise InvalidValue(f"must be between {minimum} and {maximum}, got {value}", key=attribute.name)

    return check


@attrs.frozen(kw_only=True)
class ProtocolOptions:
    """Link settings every protocol transport shares; a transport's options class subclasses it
    (``@attrs.frozen(kw_only=True) class SerialOptions(ProtocolOptions): port: str ...``)."""

    device_id: str | None = None
    """When set, the device must announce this ``device_id`` in its hello; another device on the
    port (a renumbered ``/dev/ttyUSB0``) keeps the node NotReady (``DeviceMismatch``)."""
    request_timeout: PositiveDuration | None = None
    """Seconds to wait for a reply before sending the request again (same id); default: the
    transport's (1 s; the serial transport stretches it on slow lines)."""
    attempts: int = attrs.field(default=3, validator=_at_least(1, 20))
    """Transmissions of a request before the device counts as unreachable."""
    max_in_flight: int = attrs.field(default=4, validator=_at_least(1, 64))
    """Requests outstanding at once: more wait their turn, so that a burst (every pod's status
    after a reconnect) does not overrun a small device's receive buffer."""
    keepalive: PositiveDuration = 10.0
    """A ping after this long without a frame from the device; no answer closes the link."""
    connect_timeout: PositiveDuration = 10.0
    """Opening the port, and the hello after it, must each finish within this."""
    reconnect_initial: PositiveDuration = 0.5
    reconnect_max: PositiveDuration = 30.0
    """Reconnect delays double from ``reconnect_initial`` up to ``reconnect_max`` (with jitter)."""
    startup_wait: Duration = 5.0
    """``node_start`` waits this long at most for the first hello, so the node registers with the
    device's capacity; an absent device registers the node NotReady at once."""
    poll_interval: PositiveDuration = 2.0
    """Devices without the ``events`` capability are listed this often to notice exits."""
    log_chunk: int = attrs.field(default=512, validator=_at_least(64, 65536))
    """Most bytes per ``logs`` request while following (bulk reads ask four times as much)."""
    max_frame: int = attrs.field(default=65536, validator=_at_least(MIN_HOST_MAX_FRAME, MAX_MAX_FRAME))
    """The largest frame vkpy accepts from the device (announced in hello)."""

    def __attrs_post_init__(self) -> None:
        if self.reconnect_max < self.reconnect_initial:
            raise InvalidValue(
                f"must be at least reconnect_initial ({self.reconnect_initial:g}s)", key="reconnect_max"
            )


class DeviceRequestFailed(VkpyError):
    """The device refused or failed a request, and asking again at once would not help (the core
    retries later with backoff). The message names the device and carries the device's own."""


@attrs.frozen
class _Link:
    client: DeviceClient
    hello: wire.HelloReply


def _backoff(initial: float, maximum: float, attempt: int) -> float:
    return float(min(maximum, initial * 2 ** min(attempt, 30)))


class ProtocolTransport(Transport, abc.ABC):
    """Maps pods onto a device speaking the vkpy protocol; see the module docstring.

    Subclass API (what a serial or USB transport writes):

    * ``async def open_stream(self) -> ByteStream`` (required): open the link and return a byte
      stream on it. Raise ``OSError`` (or any exception: its text becomes the node's NotReady
      message) when the device is absent. Called again for every reconnect.
    * ``def describe(self) -> str``: where the device is, for messages (default: the class name).
    * ``def default_request_timeout(self) -> float``: the attempt timeout when the options set none
      (default 1 s; the serial transport stretches it on slow lines).
    * ``def client_options(self) -> dict``: keyword arguments for :class:`DeviceClient` (default:
      from :class:`ProtocolOptions`).
    * ``options_class``: an attrs class deriving from :class:`ProtocolOptions` (``kw_only=True``;
      call ``super().__attrs_post_init__()`` from your own).

    Lower-level API for device plugins (``node.transport``): :attr:`client` and :attr:`hello`
    (None while disconnected), :meth:`wait_connected`, :meth:`request`.
    """

    options_class: ClassVar[type[Any] | None] = ProtocolOptions

    def __init__(self, node: NodeHandle, options: Any = None) -> None:
        super().__init__(node, options if options is not None else ProtocolOptions())
        settings = self.options if isinstance(self.options, ProtocolOptions) else ProtocolOptions()
        self.settings: ProtocolOptions = settings
        self._log = structlog.get_logger("vkpy.protocol.transport").bind(node=node.name)
        self._link: _Link | None = None
        self._connected = asyncio.Event()
        self._first_attempt = asyncio.Event()
        # describe() is not called here: a subclass may not be set up yet.
        self._health = DeviceHealth(False, "DeviceConnecting", "connecting")
        self._task: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[None]] = set()
        self._boot_id: str | None = None
        self._known: set[str] = set()
        self._news: dict[str, set[asyncio.Event]] = {}
        self._marks: dict[tuple[str, str, int | None], LogMarks] = {}
        self._times: collections.OrderedDict[tuple[str, int], datetime.datetime] = collections.OrderedDict()
        self._last_states: dict[str, tuple[Any, ...]] = {}
        self._window = asyncio.Semaphore(settings.max_in_flight)

    # -- the subclass API --------------------------------------------------------------------------

    @abc.abstractmethod
    async def open_stream(self) -> ByteStream:
        """Open the link to the device and return a byte stream on it."""

    def describe(self) -> str:
        """Where the device is, for messages and the node's NotReady reason."""
        return type(self).name or type(self).__name__

    def default_request_timeout(self) -> float:
        """The attempt timeout when the options set none."""
        return DEFAULT_TIMEOUT

    def client_options(self) -> dict[str, Any]:
        """Keyword arguments for :class:`DeviceClient`."""
        s = self.settings
        return {
            "timeout": s.request_timeout if s.request_timeout is not None else self.default_request_timeout(),
            "attempts": s.attempts,
            "keepalive": s.keepalive,
            "max_frame": s.max_frame,
        }

    # -- the lower-level API -----------------------------------------------------------------------

    @property
    def client(self) -> DeviceClient | None:
        """The connected client (after a successful hello), or None."""
        link = self._link
        return link.client if link is not None and not link.client.closed else None

    @property
    def hello(self) -> wire.HelloReply | None:
        """The device's latest hello reply while connected, or None."""
        client = self.client
        return client.hello_reply if client is not None else None

    @property
    def health(self) -> DeviceHealth:
        return self._health

    def capabilities(self) -> frozenset[str]:
        hello = self.hello
        return frozenset(hello.capabilities) if hello is not None else frozenset()

    async def wait_connected(self, timeout: float | None = None) -> bool:
        """Wait until the device is connected (True) or ``timeout`` passes (False)."""
        try:
            async with asyncio.timeout(timeout):
                await self._connected.wait()
        except TimeoutError:
            return False
        return True

    async def request(self, what: str, call: Callable[[DeviceClient], Awaitable[T]]) -> T:
        """Run ``call(client)`` on the connected client: ``busy`` is asked again after a pause, an
        ``internal`` error once; a timeout or closed link raises DeviceUnreachable; any other
        protocol error raises DeviceRequestFailed. DeviceError subclasses the caller wants to
        handle itself (NoSuchPod...) are raised as they are."""
        internal_retried = False
        for attempt in range(BUSY_RETRIES + 1):
            client = self._client_or_raise(what)
            try:
                async with self._window:
                    return await call(client)
            except DeviceBusy:
                if attempt == BUSY_RETRIES:
                    raise DeviceUnreachable(f"{self.describe()}: {what}: the device stays busy") from None
                await asyncio.sleep(BUSY_PAUSE * (attempt + 1))
            except DeviceInternalError as exc:
                if internal_retried:
                    raise DeviceRequestFailed(f"{self.describe()}: {what}: {exc.message}") from exc
                internal_retried = True
            except (RequestTimeout, ConnectionClosed) as exc:
                raise DeviceUnreachable(f"{self.describe()}: {what}: {exc}") from exc
        raise AssertionError("unreachable")  # pragma: no cover

    # -- node hooks --------------------------------------------------------------------------------

    @hookimpl
    async def node_start(self, node: NodeHandle) -> None:
        self._health = DeviceHealth(False, "DeviceConnecting", f"{self.describe()}: connecting")
        node.set_health(self._health)
        self._task = asyncio.get_running_loop().create_task(self._run_link(), name=f"link:{node.name}")
        if self.settings.startup_wait > 0:
            # Until the first attempt is over: a device that answers registers the node with its
            # capacity; an absent one does not hold the node back.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.settings.startup_wait):
                    await self._first_attempt.wait()

    @hookimpl
    async def node_stop(self, node: NodeHandle) -> None:
        # Pods keep running on the device; the next vkpy adopts them.
        tasks = [t for t in (self._task, *self._background) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._task = None
        link, self._link = self._link, None
        self._connected.clear()
        if link is not None:
            await link.client.close()

    @hookimpl
    async def node_capacity(self, node: NodeHandle) -> Mapping[str, str] | None:
        hello = self.hello
        return dict(hello.capacity) if hello is not None and hello.capacity else None

    @hookimpl
    async def node_health(self, node: NodeHandle) -> DeviceHealth:
        return self._health

    @hookimpl
    async def list_pods(self, node: NodeHandle) -> Collection[str]:
        await self.wait_connected(LINK_WAIT_FOR_LIST)
        reply = await self.request("list", lambda c: c.list_pods())
        return [pod.uid for pod in reply.pods]

    # -- pod hooks ---------------------------------------------------------------------------------

    @hookimpl
    async def create_pod(self, node: NodeHandle, pod: Pod) -> None:
        if pod.init_containers:
            raise PodRejected(
                f"{self.describe()}: devices of the vkpy protocol do not run init containers "
                f"({', '.join(c.name for c in pod.init_containers)}); remove them from the pod",
                reason="InitContainersNotSupported",
            )
        specs = [
            wire.ContainerSpec(
                name=c.name,
                command=c.command,
                args=c.args,
                env=c.env,
                working_dir=c.working_dir,
                image=c.image or None,
            )
            for c in pod.containers
        ]
        self._warn_unsupported(pod)
        try:
            reply = await self.request(
                f"create {pod.key}",
                lambda c: c.create(pod.uid, specs, namespace=pod.namespace, name=pod.name),
            )
        except CapacityExceeded as exc:
            raise PodRejected(
                f"{self.describe()}: the device holds its maximum number of pods: {exc.message}",
                reason="OutOfpods",
            ) from exc
        except NoSuchProgram as exc:
            raise PodRejected(f"{self.describe()}: {exc.message}", reason="ProgramNotFound") from exc
        except BadRequest as exc:
            raise PodRejected(
                f"{self.describe()}: the device rejected the pod: {exc.message}", reason="DeviceRejected"
            ) from exc
        except (FrameTooLarge, DeviceFrameTooLarge) as exc:
            raise PodRejected(
                f"{self.describe()}: the pod does not fit in one protocol frame for this device ({exc}); "
                "shorten its command, args or env",
                reason="PodTooLarge",
            ) from exc
        except (DeviceError, MalformedMessage) as exc:
            raise DeviceRequestFailed(f"{self.describe()}: create {pod.key}: {exc}") from exc
        self._known.add(pod.uid)
        self._log.info(
            "device.pod_created" if reply.created else "device.pod_exists", pod=pod.key, pod_uid=pod.uid
        )

    def _warn_unsupported(self, pod: Pod) -> None:
        caps = self.capabilities()
        ignored = []
        if "env" not in caps and any(c.env for c in pod.containers):
            ignored.append("env")
        if "working_dir" not in caps and any(c.working_dir for c in pod.containers):
            ignored.append("workingDir")
        if ignored:
            self._log.warning(
                "device.fields_ignored",
                pod=pod.key,
                fields=ignored,
                why="the device does not announce these capabilities",
            )

    @hookimpl
    async def update_pod(self, node: NodeHandle, pod: Pod) -> None:
        # Nothing a device runs can change in place (image, deadlines mean nothing to it).
        self._log.debug("device.pod_update_ignored", pod=pod.key)

    @hookimpl
    async def delete_pod(self, node: NodeHandle, pod: Pod, grace_period_seconds: int) -> None:
        grace = max(0, int(grace_period_seconds))
        try:
            reply = await self.request(f"delete {pod.key}", lambda c: c.delete(pod.uid, grace))
        except NoSuchPod:
            reply = None
        except (DeviceError, MalformedMessage) as exc:
            raise DeviceRequestFailed(f"{self.describe()}: delete {pod.key}: {exc}") from exc
        if reply is None or reply.gone:
            self._forget(pod.uid)
        self._log.info(
            "device.pod_deleting",
            pod=pod.key if pod.name else pod.uid,
            grace=grace,
            found=reply.found if reply else False,
            gone=reply.gone if reply else True,
        )

    @hookimpl
    async def restart_container(self, node: NodeHandle, pod: Pod, container_name: str) -> None:
        if "restart" not in self.capabilities() and self.client is not None:
            raise DeviceRequestFailed(
                f"{self.describe()}: the device cannot restart containers (no 'restart' capability in "
                f"its hello); use restartPolicy Never for pods on node {node.name}, or update the firmware"
            )
        try:
            status = await self.request(f"status {pod.key}", lambda c: c.status(pod.uid))
            current = status.pod.container(container_name)
            if current is None:
                raise DeviceRequestFailed(
                    f"{self.describe()}: pod {pod.key} has no container {container_name!r}"
                )
            if not isinstance(current.state, wire.Terminated):
                return  # running again already (a repeated call)
            # The count the device reported: a retransmitted restart then cannot start it twice.
            seen = current.restarts
            reply = await self.request(
                f"restart {pod.key}/{container_name}", lambda c: c.restart(pod.uid, container_name, seen)
            )
        except NoSuchPod:
            return  # gone: the next status says so
        except UnknownOp as exc:
            raise DeviceRequestFailed(
                f"{self.describe()}: the device cannot restart containers: {exc}"
            ) from exc
        except (DeviceError, MalformedMessage) as exc:
            raise DeviceRequestFailed(
                f"{self.describe()}: restart {pod.key}/{container_name}: {exc}"
            ) from exc
        self._log.info(
            "device.container_restarted", pod=pod.key, container=container_name, restarted=reply.restarted
        )

    @hookimpl
    async def get_pod_status(self, node: NodeHandle, pod: Pod) -> PodStatusReport | None:
        try:
            reply = await self.request(f"status {pod.key or pod.uid}", lambda c: c.status(pod.uid))
        except NoSuchPod:
            self._forget(pod.uid)
            return None
        except (DeviceError, MalformedMessage) as exc:
            raise DeviceRequestFailed(f"{self.describe()}: status {pod.key}: {exc}") from exc
        self._known.add(pod.uid)
        return self._report(reply.pod, reply.now)

    @hookimpl
    def get_container_logs(
        self, node: NodeHandle, pod: Pod, container_name: str, options: LogOptions
    ) -> AsyncIterator[LogLine]:
        return self._logs(pod, container_name, options)

    # -- status mapping ----------------------------------------------------------------------------

    def _report(self, pod: wire.PodStatus, now_ms: int | None = None) -> PodStatusReport:
        states = {c.name: self._state(c.state, now_ms) for c in pod.containers}
        return PodStatusReport(
            containers=states, message="being deleted on the device" if pod.deleting else ""
        )

    def _state(self, state: wire.ContainerState, now_ms: int | None = None) -> ContainerState:
        if isinstance(state, wire.Running):
            return Running(started_at=self.device_time(state.started_at, now_ms))
        if isinstance(state, wire.Terminated):
            started = state.started_at if state.started_at is not None else state.finished_at
            return Terminated(
                exit_code=state.exit_code,
                reason=state.reason,
                message=state.message,
                started_at=self.device_time(started, now_ms),
                finished_at=self.device_time(state.finished_at, now_ms),
            )
        return Waiting(reason=state.reason, message=state.message)

    def device_time(self, device_ms: int, now_ms: int | None = None) -> datetime.datetime:
        """A device time (ms since its boot) as host time. Remembered: a better clock estimate
        later must not move a time already reported (the core compares states). ``now_ms``, the
        ``now`` of the reply just received, dates it while the clock has no estimate yet."""
        client = self.client
        hello = client.hello_reply if client is not None else None
        key = (hello.boot_id if hello is not None else "", device_ms)
        known = self._times.get(key)
        if known is not None:
            return known
        if client is not None and client.clock.synchronised:
            when = client.clock.to_datetime(device_ms)
        else:
            ago = (now_ms - device_ms) / 1000 if now_ms is not None else 0.0
            when = datetime.datetime.now(datetime.UTC) - datetime.timedelta(seconds=max(0.0, ago))
        self._times[key] = when
        if len(self._times) > _TIME_MEMO:
            self._times.popitem(last=False)
        return when

    # -- logs --------------------------------------------------------------------------------------

    async def _logs(self, pod: Pod, container: str, options: LogOptions) -> AsyncIterator[LogLine]:
        if pod.container(container) is None:
            raise LogsNotAvailable(f"container {container!r} is not part of pod {pod.key}")
        if self.client is not None and "logs" not in self.capabilities():
            raise LogsNotAvailable(f"{self.describe()}: the device keeps no logs (no 'logs' capability)")
        if options.previous and self.client is not None and "restart" not in self.capabilities():
            raise LogsNotAvailable(
                f"{self.describe()}: the device keeps no logs of previous container instances "
                "(no 'restart' capability)"
            )
        window = await self._log_window(pod, container, options)
        previous = options.previous

        async def fetch(offset: int, max_bytes: int) -> wire.LogsReply:
            try:
                return await self.request(
                    f"logs {pod.key}/{container}",
                    lambda c: c.logs(pod.uid, container, offset, max_bytes, previous=previous),
                )
            except NoSuchPod as exc:
                raise LogsNotAvailable(f"pod {pod.key} is not on the device") from exc
            except NoSuchContainer as exc:
                what = "previous terminated container" if previous else "container"
                raise LogsNotAvailable(
                    f"{what} {container!r} in pod {pod.key} not found: {exc.message}"
                ) from exc
            except (DeviceError, MalformedMessage) as exc:
                raise DeviceRequestFailed(f"{self.describe()}: logs {pod.key}/{container}: {exc}") from exc

        def marks_for(restarts: int | None) -> LogMarks:
            key = (pod.uid, container, restarts)
            return self._marks.setdefault(key, LogMarks())

        news = asyncio.Event()
        self._news.setdefault(pod.uid, set()).add(news)

        async def wait_news(timeout: float) -> None:
            await wait_or_timeout(news, timeout)

        async def wait_link() -> None:
            await self._connected.wait()

        chunk = self.settings.log_chunk
        reader = LogReader(
            fetch,
            options,
            marks_for=marks_for,
            wait_news=wait_news,
            wait_link=wait_link,
            window=window,
            chunk=chunk,
            bulk_chunk=chunk * 4,
        )
        try:
            async for line in reader.lines():
                yield line
        finally:
            waiters = self._news.get(pod.uid)
            if waiters is not None:
                waiters.discard(news)
                if not waiters:
                    del self._news[pod.uid]

    async def _log_window(self, pod: Pod, container: str, options: LogOptions) -> LogWindow:
        """The container's run, to clamp line times into; also the kubelet's "waiting to start"."""
        try:
            reply = await self.request(f"status {pod.key}", lambda c: c.status(pod.uid))
        except NoSuchPod as exc:
            raise LogsNotAvailable(f"pod {pod.key} is not on the device") from exc
        except (DeviceError, MalformedMessage) as exc:
            raise DeviceRequestFailed(f"{self.describe()}: status {pod.key}: {exc}") from exc
        status = reply.pod.container(container)
        if status is None:
            raise LogsNotAvailable(f"container {container!r} is not on the device in pod {pod.key}")
        state = status.state
        if options.previous:
            return LogWindow()
        if isinstance(state, wire.Waiting):
            raise LogsNotAvailable(
                f"container {container!r} in pod {pod.key} is waiting to start: {state.reason}"
            )
        if isinstance(state, wire.Running):
            return LogWindow(started_at=self.device_time(state.started_at, reply.now))
        started = state.started_at if state.started_at is not None else state.finished_at
        return LogWindow(
            started_at=self.device_time(started, reply.now),
            finished_at=self.device_time(state.finished_at, reply.now),
        )

    # -- the link ----------------------------------------------------------------------------------

    def _client_or_raise(self, what: str) -> DeviceClient:
        client = self.client
        if client is None:
            raise DeviceUnreachable(f"{what}: {self._health.message or self.describe() + ': not connected'}")
        return client

    def _set_health(self, health: DeviceHealth) -> None:
        if health != self._health:
            self._health = health
            self.node.set_health(health)

    def _down(self, reason: str, code: str = "DeviceDisconnected") -> None:
        self._set_health(DeviceHealth(False, code, f"{self.describe()}: {reason}"))

    async def _run_link(self) -> None:
        attempt = 0
        last_problem = ""
        while True:
            try:
                link = await self._connect()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                code, problem = _describe_failure(exc)
                self._down(problem, code)
                delay = _backoff(self.settings.reconnect_initial, self.settings.reconnect_max, attempt)
                attempt += 1
                log = self._log.warning if problem != last_problem else self._log.debug
                log(
                    "device.connect_failed",
                    port=self.describe(),
                    reason=problem,
                    attempt=attempt,
                    retry_in=round(delay, 2),
                )
                last_problem = problem
                self._first_attempt.set()
                await asyncio.sleep(delay)
                continue
            attempt = 0
            last_problem = ""
            reason = await self._serve(link)
            self._down(reason)
            self._log.warning("device.disconnected", port=self.describe(), reason=reason)
            await asyncio.sleep(self.settings.reconnect_initial)

    async def _connect(self) -> _Link:
        timeout = self.settings.connect_timeout
        try:
            async with asyncio.timeout(timeout):
                stream = await self.open_stream()
        except TimeoutError:
            raise _ConnectProblem(f"opening the link took longer than {timeout:g}s") from None
        client = DeviceClient(
            stream,
            on_event=self._on_event,
            event_queue_size=None,
            logger=self._log.bind(port=self.describe()),
            **self.client_options(),
        )
        try:
            try:
                async with asyncio.timeout(timeout):
                    hello = await client.hello()
            except (TimeoutError, RequestTimeout):
                raise _ConnectProblem(
                    f"the device does not answer (no reply to hello within {timeout:g}s)"
                ) from None
            expected = self.settings.device_id
            if expected is not None and hello.device_id != expected:
                raise _Mismatch(f"the device on this port is {hello.device_id!r}, not {expected!r}")
        except BaseException:
            await client.close()
            raise
        return _Link(client, hello)

    async def _serve(self, link: _Link) -> str:
        """Reconcile, mark the node Ready, and keep the link until it ends; returns why it ended."""
        client = link.client
        self._link = link
        try:
            await self._reconcile(client, link.hello)
        except BaseException as exc:
            self._link = None
            await client.close()
            if not isinstance(exc, Exception):
                raise
            return f"listing the device's pods failed: {exc}"
        self._connected.set()
        self._set_health(DeviceHealth(True))
        self._first_attempt.set()
        hello = link.hello
        self._log.info(
            "device.connected",
            port=self.describe(),
            device_id=hello.device_id,
            firmware=f"{hello.firmware} {hello.firmware_version}",
            boot_id=hello.boot_id,
            capabilities=list(hello.capabilities),
            pods=len(self._known),
        )
        poller = None
        if "events" not in hello.capabilities:
            poller = asyncio.get_running_loop().create_task(self._poll(client), name="device-poll")
        try:
            await client.wait_closed()
        finally:
            if poller is not None:
                poller.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await poller
            self._connected.clear()
            if self._link is link:
                self._link = None
            reason = client.close_reason
            await client.close()
        return reason or "the link closed"

    async def _reconcile(self, client: DeviceClient, hello: wire.HelloReply) -> None:
        """After a (re)connect, a device reset or lost events: which pods does the device hold?"""
        if self._boot_id is not None and hello.boot_id != self._boot_id:
            self._log.warning(
                "device.rebooted",
                port=self.describe(),
                previous_boot_id=self._boot_id,
                boot_id=hello.boot_id,
                pods_lost=len(self._known),
            )
            self._times.clear()
        self._boot_id = hello.boot_id
        reply = await client.list_pods()
        held = {pod.uid for pod in reply.pods}
        lost = self._known - held
        if lost:
            self._log.warning("device.pods_lost", port=self.describe(), pods=sorted(lost))
        for uid in lost:
            self._forget(uid)
        self._known = held
        self._last_states = {pod.uid: _fingerprint(pod) for pod in reply.pods}
        for uid in held | lost:
            self.node.report_status(uid)

    async def _poll(self, client: DeviceClient) -> None:
        """For devices that push no events: list now and then, report what changed."""
        while not client.closed:
            await asyncio.sleep(self.settings.poll_interval)
            try:
                async with self._window:
                    reply = await client.list_pods()
            except ProtocolError as exc:
                self._log.debug("device.poll_failed", error=str(exc))
                continue
            states = {pod.uid: _fingerprint(pod) for pod in reply.pods}
            for uid in set(states) | set(self._last_states):
                if states.get(uid) != self._last_states.get(uid):
                    self._wake(uid)
            self._last_states = states

    def _on_event(self, event: HostEvent) -> None:
        if isinstance(event, wire.ContainerExited | wire.PodDeleted):
            if isinstance(event, wire.PodDeleted):
                self._forget(event.uid)
            self._wake(event.uid)
        elif isinstance(event, DeviceReset | EventsLost):
            # The device rebooted under an open link (it asked for a new hello), or events were
            # lost: only a list tells what it holds now.
            self._spawn(self._reconcile_now(), "device-reconcile")
        else:
            self._log.debug("device.unknown_event", event=event.name)

    async def _reconcile_now(self) -> None:
        client = self.client
        hello = client.hello_reply if client is not None else None
        if client is None or hello is None:
            return
        try:
            await self._reconcile(client, hello)
        except ProtocolError as exc:
            self._log.warning("device.reconcile_failed", error=str(exc))

    def _spawn(self, work: Awaitable[None], name: str) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(work)
        task.set_name(name)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _wake(self, uid: str) -> None:
        self.node.report_status(uid)
        for news in self._news.get(uid, ()):
            news.set()

    def _forget(self, uid: str) -> None:
        self._known.discard(uid)
        self._last_states.pop(uid, None)
        for key in [k for k in self._marks if k[0] == uid]:
            del self._marks[key]


class _Mismatch(Exception):
    """The device on the port is not the one configured."""


class _ConnectProblem(Exception):
    """Connecting failed; the message says how, for the node's condition."""


def _fingerprint(pod: wire.PodStatus) -> tuple[Any, ...]:
    return (pod.deleting, *((c.name, c.restarts, c.state) for c in pod.containers))


def _describe_failure(exc: BaseException) -> tuple[str, str]:
    """The node's NotReady reason and message for a failed connect."""
    if isinstance(exc, _Mismatch):
        return "DeviceMismatch", str(exc)
    if isinstance(exc, UnsupportedVersion):
        return "DeviceIncompatible", f"the device speaks none of our protocol versions: {exc.message}"
    if isinstance(exc, HandshakeError | MalformedMessage):
        return "DeviceIncompatible", f"the handshake failed: {exc}"
    if isinstance(exc, OSError) and exc.strerror:
        return "DeviceDisconnected", exc.strerror + (f": {exc.filename}" if exc.filename else "")
    text = str(exc) or type(exc).__name__
    return "DeviceDisconnected", text


__all__ = ["DeviceRequestFailed", "ProtocolOptions", "ProtocolTransport"]
