"""Asyncio client for the vkpy device protocol.

:class:`DeviceClient` sits on any :class:`~vkpy.protocol.streams.ByteStream` (serial line, pipe,
pty, USB bridge); a vkpy transport plugin creates one per connection. It matches replies to
requests by id, retransmits a request with the same id after each per-attempt timeout (safe
because every op is idempotent), re-does the handshake when a rebooted device answers
``hello_required``, queues pushed events (and hands them to an optional callback), keeps an
estimate of the device's clock, and on close fails every pending request with
:class:`~vkpy.protocol.errors.ConnectionClosed`.

Typical use::

    async with DeviceClient(AsyncioStreams(reader, writer)) as client:
        hello = await client.hello()
        await client.create(uid, [ContainerSpec("main", command=["count", "3"])], name="demo")
        async with asyncio.timeout(10):
            event = await client.next_event()
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import attrs
import structlog

from .errors import (
    ClockNotSynchronised,
    ConnectionClosed,
    HelloRequired,
    MalformedMessage,
    ProtocolError,
    RequestTimeout,
)
from .framing import (
    DEFAULT_MAX_FRAME,
    DELIMITER,
    MAX_MAX_FRAME,
    MIN_HOST_MAX_FRAME,
    FrameDecoder,
    encode_frame,
)
from .messages import (
    MAX_REQUEST_ID,
    SUPPORTED_VERSIONS,
    ContainerSpec,
    Create,
    CreateReply,
    Delete,
    DeleteReply,
    Event,
    Hello,
    HelloReply,
    List,
    ListReply,
    Logs,
    LogsReply,
    Ping,
    PingReply,
    Request,
    Restart,
    RestartReply,
    Status,
    StatusReply,
    decode_event,
    decode_reply,
    encode_request,
    loads,
)
from .streams import ByteStream

log = structlog.get_logger("vkpy.protocol")

R = TypeVar("R")

DEFAULT_TIMEOUT = 1.0
"""Seconds to wait for a reply before retransmitting (per attempt)."""
DEFAULT_ATTEMPTS = 3
"""Transmissions of one request (the first one included) before RequestTimeout."""
DEFAULT_HOST_MAX_FRAME = 65536
"""Largest frame this host accepts from a device; announced in hello."""
DEFAULT_KEEPALIVE = 10.0
"""Seconds without any frame from the device after which the client sends a ping."""
DROP_LOG_INTERVAL = 5.0
"""Dropped frames are logged at most this often (with counts): line noise must not flood the log."""


@attrs.frozen
class EventsLost:
    """Synthesised by the client: event sequence numbers were skipped, so events were lost.

    The host should re-read the device's state with :meth:`DeviceClient.list_pods`.
    """

    expected_seq: int
    received_seq: int

    @property
    def count(self) -> int:
        return self.received_seq - self.expected_seq


@attrs.frozen
class DeviceReset:
    """Synthesised by the client: a new hello showed another boot id, so the device rebooted
    (and lost every pod it held) since the previous hello."""

    previous_boot_id: str
    boot_id: str


HostEvent = Event | EventsLost | DeviceReset
EventCallback = Callable[[HostEvent], None]


class DeviceClock:
    """Maps device times (ms since device boot) to host unix time.

    Each reply to a first transmission gives an estimate ``offset = (sent + received) / 2 -
    now / 1000`` with an error of at most half the round trip. The estimate with the shortest
    round trip is kept, unless it is older than ``max_age`` seconds (to follow oscillator drift).
    """

    def __init__(self, *, max_age: float = 600.0) -> None:
        self._max_age = max_age
        self._offset: float | None = None
        self._rtt = 0.0
        self._at = 0.0

    def reset(self) -> None:
        """Forget the estimate (the device rebooted)."""
        self._offset = None

    def observe(self, sent: float, received: float, device_ms: int) -> None:
        """Record that a reply stamped ``device_ms`` answered a request sent at ``sent``."""
        rtt = max(0.0, received - sent)
        if self._offset is None or rtt <= self._rtt or received - self._at > self._max_age:
            self._offset = (sent + received) / 2 - device_ms / 1000
            self._rtt = rtt
            self._at = received

    @property
    def synchronised(self) -> bool:
        return self._offset is not None

    @property
    def offset(self) -> float:
        """Host unix time at which the device booted."""
        if self._offset is None:
            raise ClockNotSynchronised("no reply from the device has been timed yet")
        return self._offset

    @property
    def uncertainty(self) -> float:
        """Maximum error of :attr:`offset`, in seconds (half the round trip it came from)."""
        _ = self.offset
        return self._rtt / 2

    def to_unix(self, device_ms: int) -> float:
        """Host unix time (seconds) of a device time."""
        return self.offset + device_ms / 1000

    def to_datetime(self, device_ms: int) -> datetime.datetime:
        """Aware UTC datetime of a device time (e.g. for a Kubernetes startedAt)."""
        return datetime.datetime.fromtimestamp(self.to_unix(device_ms), tz=datetime.UTC)


@attrs.define
class _Pending:
    request: Request[Any]
    request_id: int
    future: asyncio.Future[Any]
    attempt: int = 0
    sent: float = 0.0


class DeviceClient:
    """One connection to one device over a ByteStream. See the module docstring.

    Parameters:
        stream: the byte stream (see :mod:`vkpy.protocol.streams`); closed by :meth:`close`.
        max_frame: the largest frame this host accepts (1024..1048576); announced in hello.
        timeout: default seconds to wait for a reply before retransmitting.
        attempts: default transmissions per request (the first included).
        host_name: sent in hello, for the device's logs.
        versions: protocol versions offered in hello.
        on_event: called (synchronously, on the event loop) with each event as it arrives, in
            addition to the :attr:`events` queue.
        event_queue_size: bound of the event queue (the oldest event is dropped when full); None:
            events are not queued, only handed to ``on_event`` (for owners that never read the queue).
        keepalive: seconds without a frame from the device after which a ping is sent; when the
            ping gets no reply the client closes itself (:meth:`wait_closed` returns). None: off.
        first_request_id: the first request id (default: random, see docs/protocol.md section 12).
        logger: a structlog logger for the client's events (e.g. bound to the node and port);
            default ``vkpy.protocol``.
    """

    def __init__(
        self,
        stream: ByteStream,
        *,
        max_frame: int = DEFAULT_HOST_MAX_FRAME,
        timeout: float = DEFAULT_TIMEOUT,
        attempts: int = DEFAULT_ATTEMPTS,
        host_name: str = "vkpy",
        versions: Sequence[int] = SUPPORTED_VERSIONS,
        on_event: EventCallback | None = None,
        event_queue_size: int | None = 1024,
        keepalive: float | None = DEFAULT_KEEPALIVE,
        first_request_id: int | None = None,
        logger: Any = None,
    ) -> None:
        if timeout <= 0:
            raise ValueError("timeout must be positive")
        if attempts < 1:
            raise ValueError("attempts must be at least 1")
        if not MIN_HOST_MAX_FRAME <= max_frame <= MAX_MAX_FRAME:
            raise ValueError(f"max_frame must be between {MIN_HOST_MAX_FRAME} and {MAX_MAX_FRAME}")
        self._stream = stream
        self._log: Any = logger if logger is not None else log
        self._drops_unlogged = 0
        self._last_drop_log = float("-inf")
        self._decoder = FrameDecoder(max_frame, on_drop=self._frame_dropped)
        self._max_frame = max_frame
        self._peer_max_frame = DEFAULT_MAX_FRAME
        self._timeout = timeout
        self._attempts = attempts
        self._host_name = host_name
        self._versions = tuple(versions)
        self._on_event = on_event
        if event_queue_size is not None and event_queue_size < 1:
            raise ValueError("event_queue_size must be at least 1 (or None: no queue)")
        self._queue_events = event_queue_size is not None
        self._events: asyncio.Queue[HostEvent] = asyncio.Queue(maxsize=event_queue_size or 1)
        self._pending: dict[int, _Pending] = {}
        if first_request_id is not None and not 1 <= first_request_id <= MAX_REQUEST_ID:
            raise ValueError(f"first_request_id must be in 1..{MAX_REQUEST_ID}")
        # A random start keeps a late reply meant for a previous host process from matching.
        self._next_id = first_request_id if first_request_id is not None else secrets.randbelow(1 << 30) + 1
        self._write_lock = asyncio.Lock()
        self._reader_task: asyncio.Task[None] | None = None
        self._keepalive = keepalive
        self._keepalive_task: asyncio.Task[None] | None = None
        self._last_traffic = time.monotonic()
        self._closed = False
        self._closed_event = asyncio.Event()
        self._close_reason = ""
        self._stream_closed = False
        self._hello_reply: HelloReply | None = None
        self._event_seq: int | None = None
        self.clock = DeviceClock()

    # ---------------------------------------------------------------- lifecycle

    async def __aenter__(self) -> DeviceClient:
        self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def start(self) -> None:
        """Start reading from the stream (done implicitly by the first request)."""
        if self._reader_task is None and not self._closed:
            loop = asyncio.get_running_loop()
            self._reader_task = loop.create_task(self._read_loop(), name="vkpy-protocol-reader")
            if self._keepalive is not None:
                self._keepalive_task = loop.create_task(
                    self._keepalive_loop(), name="vkpy-protocol-keepalive"
                )

    async def close(self) -> None:
        """Stop reading, fail pending requests with ConnectionClosed, close the stream."""
        self._shutdown("client closed")
        tasks = [t for t in (self._reader_task, self._keepalive_task) if t is not None]
        self._reader_task = self._keepalive_task = None
        current = asyncio.current_task()
        for task in tasks:
            if task is not current and not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if not self._stream_closed:
            self._stream_closed = True
            try:
                await self._stream.close()
            except OSError as exc:
                self._log.debug("protocol.stream_close_failed", error=str(exc))

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def close_reason(self) -> str:
        return self._close_reason

    async def wait_closed(self) -> None:
        """Wait until the connection ends: EOF, a read or write error, a failed keep-alive ping,
        or close(). The owner of the stream then calls close() and may reconnect."""
        await self._closed_event.wait()

    # ---------------------------------------------------------------- state

    @property
    def hello_reply(self) -> HelloReply | None:
        """The device's latest hello reply (None before the handshake)."""
        return self._hello_reply

    @property
    def max_frame(self) -> int:
        """Largest frame this host accepts."""
        return self._max_frame

    @property
    def peer_max_frame(self) -> int:
        """Largest frame the device accepts (the default before the handshake)."""
        return self._peer_max_frame

    @property
    def frames_dropped(self) -> Mapping[str, int]:
        """Counts of dropped incoming frames by reason (crc, cobs, short, too_large)."""
        return dict(self._decoder.dropped)

    @property
    def events(self) -> asyncio.Queue[HostEvent]:
        """Queue of pushed (and synthesised) events. When full, the oldest event is dropped."""
        return self._events

    async def next_event(self) -> HostEvent:
        """The next queued event; raises ConnectionClosed once closed and drained.

        Bound the wait with ``asyncio.timeout()`` if needed.
        """
        if not self._events.empty():
            return self._events.get_nowait()
        if self._closed:
            raise ConnectionClosed(self._close_reason)
        getter = asyncio.ensure_future(self._events.get())
        closer = asyncio.ensure_future(self._closed_event.wait())
        try:
            done, _ = await asyncio.wait({getter, closer}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in (getter, closer):
                if not waiter.done():
                    waiter.cancel()
        if getter in done:
            return getter.result()
        raise ConnectionClosed(self._close_reason)

    # ---------------------------------------------------------------- requests

    async def request(
        self, request: Request[R], *, attempt_timeout: float | None = None, attempts: int | None = None
    ) -> R:
        """Send ``request`` and return its validated reply.

        Waits ``attempt_timeout`` seconds (default: the client's ``timeout``) per attempt and
        retransmits the same frame (same id) up to ``attempts`` transmissions in all. Raises
        RequestTimeout, ConnectionClosed, a DeviceError subclass for an error reply,
        MalformedMessage for a reply that breaks the spec, or FrameTooLarge if the request
        exceeds the device's maximum frame size. When the device answers ``hello_required`` (it
        rebooted) after a handshake, the client repeats the hello and then the request, once.
        """
        try:
            return await self._request_once(request, attempt_timeout, attempts)
        except HelloRequired:
            if isinstance(request, Hello) or self._hello_reply is None:
                raise
            self._log.info("protocol.rehello", op=request.OP, reason="device requires hello")
            await self.hello(attempt_timeout=attempt_timeout, attempts=attempts)
            return await self._request_once(request, attempt_timeout, attempts)

    async def hello(self, *, attempt_timeout: float | None = None, attempts: int | None = None) -> HelloReply:
        """Handshake: announce our versions and max frame, learn the device's identity and limits."""
        request = Hello(versions=self._versions, max_frame=self._max_frame, host=self._host_name)
        return await self.request(request, attempt_timeout=attempt_timeout, attempts=attempts)

    async def ping(self, *, attempt_timeout: float | None = None) -> PingReply:
        return await self.request(Ping(), attempt_timeout=attempt_timeout)

    async def create(
        self,
        uid: str,
        containers: Sequence[ContainerSpec],
        *,
        namespace: str = "",
        name: str = "",
        attempt_timeout: float | None = None,
    ) -> CreateReply:
        """Create a pod (idempotent: an existing uid returns that pod with ``created`` false)."""
        request = Create(uid=uid, namespace=namespace, name=name, containers=containers)
        return await self.request(request, attempt_timeout=attempt_timeout)

    async def delete(self, uid: str, grace: int = 0, *, attempt_timeout: float | None = None) -> DeleteReply:
        """Delete a pod: TERM its containers, KILL after ``grace`` s (idempotent: unknown uid succeeds)."""
        return await self.request(Delete(uid=uid, grace=grace), attempt_timeout=attempt_timeout)

    async def list_pods(self, *, attempt_timeout: float | None = None) -> ListReply:
        return await self.request(List(), attempt_timeout=attempt_timeout)

    async def status(self, uid: str, *, attempt_timeout: float | None = None) -> StatusReply:
        return await self.request(Status(uid=uid), attempt_timeout=attempt_timeout)

    async def logs(
        self,
        uid: str,
        container: str,
        offset: int = 0,
        max_bytes: int = 4096,
        *,
        previous: bool = False,
        attempt_timeout: float | None = None,
    ) -> LogsReply:
        """Read a container's log from byte ``offset`` (the device may return fewer bytes); with
        ``previous``, the log of the instance before the last restart (``restart`` capability)."""
        request = Logs(uid=uid, container=container, offset=offset, max_bytes=max_bytes, previous=previous)
        return await self.request(request, attempt_timeout=attempt_timeout)

    async def restart(
        self, uid: str, container: str, restarts: int, *, attempt_timeout: float | None = None
    ) -> RestartReply:
        """Start a terminated container again, if its ``restarts`` count is still ``restarts``
        (idempotent: a repeated request finds the count moved on and changes nothing)."""
        request = Restart(uid=uid, container=container, restarts=restarts)
        return await self.request(request, attempt_timeout=attempt_timeout)

    # ---------------------------------------------------------------- internals

    def _allocate_id(self) -> int:
        while True:
            request_id = self._next_id
            self._next_id = 1 if request_id >= MAX_REQUEST_ID else request_id + 1
            if request_id not in self._pending:
                return request_id

    async def _request_once(
        self, request: Request[R], attempt_timeout: float | None, attempts: int | None
    ) -> R:
        self.start()
        if self._closed:
            raise ConnectionClosed(self._close_reason)
        per_attempt = self._timeout if attempt_timeout is None else attempt_timeout
        transmissions = self._attempts if attempts is None else attempts
        request_id = self._allocate_id()
        frame = encode_frame(encode_request(request_id, request), max_frame=self._peer_max_frame)
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        pending = _Pending(request=request, request_id=request_id, future=future)
        self._pending[request_id] = pending
        try:
            for attempt in range(1, transmissions + 1):
                if attempt > 1:
                    self._log.info("protocol.retransmit", op=request.OP, id=request_id, attempt=attempt)
                pending.attempt = attempt
                pending.sent = time.time()
                await self._send(frame)
                done, _ = await asyncio.wait({future}, timeout=per_attempt)
                if done:
                    return future.result()
            raise RequestTimeout(request.OP, request_id, transmissions, per_attempt)
        finally:
            self._pending.pop(request_id, None)
            if not future.done():
                future.cancel()
            elif not future.cancelled():
                future.exception()  # mark retrieved

    async def _send(self, frame: bytes) -> None:
        async with self._write_lock:
            if self._closed:
                raise ConnectionClosed(self._close_reason)
            try:
                # A leading delimiter flushes whatever partial frame the device may hold.
                await self._stream.write(DELIMITER + frame)
            except OSError as exc:
                reason = f"writing to the device failed: {exc}"
                self._shutdown(reason)
                raise ConnectionClosed(reason) from exc

    async def _read_loop(self) -> None:
        reason = "device stream ended (EOF)"
        try:
            while True:
                chunk = await self._stream.read()
                if not chunk:
                    break
                received = time.time()
                for body in self._decoder.feed(chunk):
                    self._last_traffic = time.monotonic()
                    self._dispatch(body, received)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            reason = f"reading from the device failed: {exc or repr(exc)}"
            self._log.warning("protocol.read_failed", error=repr(exc))
        self._shutdown(reason)

    async def _keepalive_loop(self) -> None:
        interval = self._keepalive
        assert interval is not None
        while not self._closed:
            idle = time.monotonic() - self._last_traffic
            if idle < interval:
                await asyncio.sleep(interval - idle)
                continue
            try:
                await self.ping()
            except RequestTimeout:
                self._log.warning("protocol.keepalive_failed", interval=interval)
                self._shutdown("device stopped answering (keep-alive ping got no reply)")
                return
            except ConnectionClosed:
                return
            except ProtocolError as exc:  # e.g. busy: the device is alive
                self._log.info("protocol.keepalive_error", error=str(exc))
                self._last_traffic = time.monotonic()

    def _shutdown(self, reason: str) -> None:
        if self._closed:
            return
        self._closed = True
        self._close_reason = reason
        self._closed_event.set()
        self._log.debug("protocol.closed", reason=reason, pending=len(self._pending))
        for pending in list(self._pending.values()):
            if not pending.future.done():
                pending.future.set_exception(
                    ConnectionClosed(
                        f"{reason}; {pending.request.OP!r} (id {pending.request_id}) got no reply"
                    )
                )

    def _frame_dropped(self, reason: str, size: int) -> None:
        self._drops_unlogged += 1
        now = time.monotonic()
        if now - self._last_drop_log < DROP_LOG_INTERVAL:
            return
        self._log.warning(
            "protocol.frame_dropped",
            reason=reason,
            size=size,
            dropped=self._drops_unlogged,
            totals=dict(self._decoder.dropped),
        )
        self._last_drop_log = now
        self._drops_unlogged = 0

    def _dispatch(self, body: bytes, received: float) -> None:
        try:
            obj = loads(body, "device message")
            if "id" in obj:
                self._handle_reply(obj, received)
            elif "event" in obj:
                self._handle_event(obj)
            else:
                self._log.warning("protocol.message_dropped", reason="neither reply (id) nor event")
        except MalformedMessage as exc:
            self._log.warning("protocol.message_dropped", reason=str(exc))
        except Exception as exc:  # never let one message kill the reader
            self._log.exception("protocol.dispatch_failed", error=repr(exc))

    def _handle_reply(self, obj: Mapping[str, object], received: float) -> None:
        request_id = obj.get("id")
        if isinstance(request_id, bool) or not isinstance(request_id, int):
            self._log.warning(
                "protocol.message_dropped", reason=f"reply id is not an integer: {request_id!r}"
            )
            return
        pending = self._pending.get(request_id)
        if pending is None:
            if obj.get("ok") is False:
                self._log.warning("protocol.unmatched_error", id=request_id, error=obj.get("error"))
            else:
                self._log.debug("protocol.unmatched_reply", id=request_id)
            return
        if pending.future.done():
            return  # a duplicate reply to a retransmission
        try:
            reply = decode_reply(obj, pending.request, request_id)
        except ProtocolError as exc:
            pending.future.set_exception(exc)
            return
        now = obj["now"]
        assert isinstance(now, int)
        if isinstance(reply, HelloReply):
            self._on_hello(reply)
        if pending.attempt == 1:
            self.clock.observe(pending.sent, received, now)
        pending.future.set_result(reply)

    def _on_hello(self, reply: HelloReply) -> None:
        previous = self._hello_reply
        if previous is not None and previous.boot_id != reply.boot_id:
            self._log.warning(
                "protocol.device_reset", previous_boot_id=previous.boot_id, boot_id=reply.boot_id
            )
            self._deliver(DeviceReset(previous_boot_id=previous.boot_id, boot_id=reply.boot_id))
        if previous is None or previous.boot_id != reply.boot_id:
            self.clock.reset()
        self._hello_reply = reply
        self._peer_max_frame = reply.max_frame
        self._event_seq = reply.event_seq

    def _handle_event(self, obj: Mapping[str, object]) -> None:
        event = decode_event(obj)
        last = self._event_seq
        if last is not None and event.seq > last + 1:
            self._log.warning("protocol.events_lost", expected_seq=last + 1, received_seq=event.seq)
            self._deliver(EventsLost(expected_seq=last + 1, received_seq=event.seq))
        self._event_seq = event.seq
        self._deliver(event)

    def _deliver(self, event: HostEvent) -> None:
        if self._on_event is not None:
            try:
                self._on_event(event)
            except Exception as exc:
                self._log.exception("protocol.event_callback_failed", error=repr(exc))
        if not self._queue_events:
            return
        if self._events.full():
            dropped = self._events.get_nowait()
            self._log.warning("protocol.event_queue_overflow", dropped=type(dropped).__name__)
        self._events.put_nowait(event)
