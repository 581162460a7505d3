"""DeviceClient against a scripted peer on a real socket pair: matching, retransmission, timeouts,
malformed replies, events, re-handshake after a reset, keep-alive and closing."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import socket
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from vkpy.protocol import (
    AsyncioStreams,
    ClockNotSynchronised,
    ConnectionClosed,
    ContainerExited,
    ContainerSpec,
    DeviceClient,
    DeviceReset,
    EventsLost,
    FrameDecoder,
    FrameTooLarge,
    HostEvent,
    MalformedMessage,
    NoSuchPod,
    PodDeleted,
    RequestTimeout,
    UnknownEvent,
    encode_frame,
)
from vkpy.protocol.messages import dumps

HELLO_FIELDS: dict[str, Any] = {
    "version": 1,
    "device_id": "peer",
    "firmware": "script",
    "firmware_version": "0",
    "capabilities": ["events"],
    "capacity": {"pods": "2"},
    "max_frame": 4096,
    "boot_id": "boot-a",
    "event_seq": 0,
}
POD = {"uid": "u1", "namespace": "", "name": "", "deleting": False, "containers": []}


class Peer:
    """The device end of the socket pair, driven by the test."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.decoder = FrameDecoder(max_frame=65536)
        self.bodies: list[bytes] = []
        self.received: list[bytes] = []

    async def recv(self, timeout: float = 5.0) -> dict[str, Any]:
        async with asyncio.timeout(timeout):
            while not self.bodies:
                chunk = await self.reader.read(65536)
                if not chunk:
                    raise EOFError
                self.bodies += self.decoder.feed(chunk)
        body = self.bodies.pop(0)
        self.received.append(body)
        obj = json.loads(body)
        assert isinstance(obj, dict)
        return obj

    async def nothing_for(self, seconds: float) -> None:
        with pytest.raises(TimeoutError):
            await self.recv(seconds)

    async def send_raw(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def send(self, obj: dict[str, Any]) -> None:
        await self.send_raw(b"\x00" + encode_frame(dumps(obj)))

    async def reply(self, request: dict[str, Any], now: int = 1000, **fields: Any) -> None:
        await self.send({"id": request["id"], "ok": True, "now": now, **fields})

    async def error(self, request: dict[str, Any], code: int, name: str, message: str) -> None:
        await self.send(
            {
                "id": request["id"],
                "ok": False,
                "now": 1,
                "error": {"code": code, "name": name, "message": message},
            }
        )

    async def handshake(self, **overrides: Any) -> dict[str, Any]:
        request = await self.recv()
        assert request["op"] == "hello"
        await self.reply(request, **{**HELLO_FIELDS, **overrides})
        return request


@contextlib.asynccontextmanager
async def connected(**options: Any) -> AsyncIterator[tuple[DeviceClient, Peer]]:
    host_sock, peer_sock = socket.socketpair()
    host_reader, host_writer = await asyncio.open_connection(sock=host_sock)
    peer_reader, peer_writer = await asyncio.open_connection(sock=peer_sock)
    options.setdefault("keepalive", None)
    client = DeviceClient(AsyncioStreams(host_reader, host_writer), **options)
    peer = Peer(peer_reader, peer_writer)
    try:
        async with client:
            yield client, peer
    finally:
        peer_writer.close()
        with contextlib.suppress(OSError):
            await peer_writer.wait_closed()


async def hello(client: DeviceClient, peer: Peer, **overrides: Any) -> None:
    task = asyncio.ensure_future(client.hello())
    await peer.handshake(**overrides)
    await task


@pytest.mark.asyncio
async def test_replies_are_matched_by_id() -> None:
    async with connected() as (client, peer):
        await hello(client, peer)
        first = asyncio.ensure_future(client.status("u1"))
        second = asyncio.ensure_future(client.status("u2"))
        req_a = await peer.recv()
        req_b = await peer.recv()
        assert req_a["id"] != req_b["id"]
        for request in (req_b, req_a):  # answer in the opposite order
            await peer.reply(request, pod={**POD, "uid": request["uid"]})
        assert (await first).pod.uid == "u1"
        assert (await second).pod.uid == "u2"


@pytest.mark.asyncio
async def test_retransmission_uses_the_same_frame() -> None:
    async with connected(timeout=0.2, attempts=3, first_request_id=77) as (client, peer):
        task = asyncio.ensure_future(client.ping())
        first = await peer.recv()
        second = await peer.recv(1.0)  # the client retransmits after 0.2 s
        assert first == second == {"id": 77, "op": "ping"}
        assert peer.received[0] == peer.received[1]
        await peer.reply(second, now=5)
        await peer.reply(first, now=6)  # a late duplicate is ignored
        assert (await task).now == 5
        following = asyncio.ensure_future(client.ping())
        request = await peer.recv()
        assert request["id"] == 78  # ids count up from first_request_id
        await peer.reply(request, now=7)
        assert (await following).now == 7


@pytest.mark.asyncio
async def test_request_timeout_after_all_attempts() -> None:
    async with connected(timeout=0.1, attempts=2) as (client, peer):
        with pytest.raises(RequestTimeout) as info:
            await client.status("u1")
        assert isinstance(info.value, TimeoutError)
        assert info.value.attempts == 2
        assert "no reply to 'status'" in str(info.value)
        first = await peer.recv()
        second = await peer.recv()
        assert first == second
        await peer.nothing_for(0.3)


@pytest.mark.asyncio
async def test_corrupt_reply_is_dropped_and_retransmission_recovers() -> None:
    async with connected(timeout=0.3) as (client, peer):
        task = asyncio.ensure_future(client.ping())
        request = await peer.recv()
        frame = bytearray(encode_frame(dumps({"id": request["id"], "ok": True, "now": 3})))
        frame[4] ^= 0x40
        await peer.send_raw(b"\x00" + bytes(frame))
        again = await peer.recv(1.0)
        await peer.reply(again, now=4)
        assert (await task).now == 4
        assert client.frames_dropped == {"crc": 1}


@pytest.mark.asyncio
async def test_malformed_reply_fails_the_request_with_the_field() -> None:
    async with connected() as (client, peer):
        task = asyncio.ensure_future(client.status("u1"))
        request = await peer.recv()
        await peer.reply(request, pod={"uid": "u1", "containers": [{"name": "c", "state": "running"}]})
        with pytest.raises(MalformedMessage) as info:
            await task
        assert info.value.field == "pod.containers[0].started_at"
        assert str(info.value) == "reply to status: field 'pod.containers[0].started_at': missing"


@pytest.mark.asyncio
async def test_error_reply_raises_device_error() -> None:
    async with connected() as (client, peer):
        task = asyncio.ensure_future(client.status("nope"))
        await peer.error(await peer.recv(), 3, "no_such_pod", "no pod with uid nope")
        with pytest.raises(NoSuchPod, match="no pod with uid nope"):
            await task


@pytest.mark.asyncio
async def test_junk_messages_are_ignored() -> None:
    async with connected() as (client, peer):
        task = asyncio.ensure_future(client.ping())
        request = await peer.recv()
        await peer.send({"id": request["id"] + 1000, "ok": True, "now": 1})  # no such request
        await peer.send({"id": 0, "ok": False, "now": 1, "error": {"code": 7, "name": "frame_too_large"}})
        await peer.send({"hello": "world"})  # neither reply nor event
        await peer.send({"event": "container_exited", "seq": 1, "now": 1})  # malformed event
        await peer.send_raw(b"\x00" + encode_frame(b"[1,2,3]") + encode_frame(b"not json"))
        await peer.reply(request, now=9)
        assert (await task).now == 9
        assert client.events.empty()


@pytest.mark.asyncio
async def test_close_fails_pending_requests() -> None:
    async with connected() as (client, peer):
        task = asyncio.ensure_future(client.list_pods())
        await peer.recv()
        await client.close()
        with pytest.raises(ConnectionClosed, match=r"client closed; 'list' \(id \d+\) got no reply"):
            await task
        with pytest.raises(ConnectionClosed):
            await client.ping()
        with pytest.raises(ConnectionClosed):
            await client.next_event()
        assert client.closed


@pytest.mark.asyncio
async def test_end_of_stream_fails_pending_requests() -> None:
    async with connected() as (client, peer):
        task = asyncio.ensure_future(client.ping())
        waiter = asyncio.ensure_future(client.next_event())
        await peer.recv()
        peer.writer.close()
        with pytest.raises(ConnectionClosed, match="EOF"):
            await task
        with pytest.raises(ConnectionClosed):
            await waiter
        async with asyncio.timeout(1):
            await client.wait_closed()
        assert "EOF" in client.close_reason


@pytest.mark.asyncio
async def test_outgoing_frames_respect_the_device_max_frame() -> None:
    big = ContainerSpec("c", command=["echo"], env={"PAD": "x" * 2000})
    async with connected() as (client, peer):
        assert client.peer_max_frame == 1024
        with pytest.raises(FrameTooLarge, match="exceeds the maximum frame size of 1024"):
            await client.create("u1", [big])
        await hello(client, peer)
        assert client.peer_max_frame == 4096
        task = asyncio.ensure_future(client.create("u1", [big]))
        request = await peer.recv()
        assert request["op"] == "create"
        assert request["containers"][0]["env"]["PAD"] == "x" * 2000
        await peer.reply(request, created=True, pod=POD)
        assert (await task).created
        assert peer.received[0].startswith(b'{"id":')  # nothing was sent for the refused create


@pytest.mark.asyncio
async def test_events_reach_queue_and_callback_and_gaps_are_reported() -> None:
    seen: list[HostEvent] = []
    async with connected(on_event=seen.append) as (client, peer):
        await hello(client, peer, event_seq=5)
        exited = {
            "uid": "u1",
            "container": "c",
            "exit_code": 2,
            "reason": "Error",
            "message": "",
            "started_at": 1,
            "finished_at": 9,
        }
        await peer.send({"event": "container_exited", "seq": 6, "now": 9, **exited})
        await peer.send({"event": "pod_deleted", "seq": 9, "now": 10, "uid": "u1"})
        await peer.send({"event": "battery_low", "seq": 10, "now": 11, "percent": 3})
        events = []
        async with asyncio.timeout(2):
            for _ in range(4):
                events.append(await client.next_event())
        assert isinstance(events[0], ContainerExited)
        assert events[0].state.exit_code == 2
        assert events[1] == EventsLost(expected_seq=7, received_seq=9)
        assert events[1].count == 2
        assert events[2] == PodDeleted(seq=9, now=10, uid="u1")
        assert isinstance(events[3], UnknownEvent)
        assert events[3].fields == {"percent": 3}
        assert seen == events


@pytest.mark.asyncio
async def test_hello_required_repeats_the_handshake_and_reports_the_reset() -> None:
    async with connected() as (client, peer):
        await hello(client, peer, boot_id="boot-a")
        task = asyncio.ensure_future(client.list_pods())
        request = await peer.recv()
        assert request["op"] == "list"
        await peer.error(request, 10, "hello_required", "send hello first")
        await peer.handshake(boot_id="boot-b")
        again = await peer.recv()
        assert again["op"] == "list"
        assert again["id"] != request["id"]
        await peer.reply(again, pods=[])
        assert (await task).pods == ()
        assert client.hello_reply is not None
        assert client.hello_reply.boot_id == "boot-b"
        assert client.events.get_nowait() == DeviceReset(previous_boot_id="boot-a", boot_id="boot-b")


@pytest.mark.asyncio
async def test_clock_conversion() -> None:
    async with connected() as (client, peer):
        with pytest.raises(ClockNotSynchronised):
            client.clock.to_unix(0)
        await hello(client, peer)  # the hello reply says now=1000 ms since boot
        assert client.clock.uncertainty < 1.0
        assert abs(client.clock.to_unix(1000) - time.time()) < 1.0
        assert abs(client.clock.offset - (time.time() - 1.0)) < 1.0
        stamp = client.clock.to_datetime(61_000)
        assert stamp.tzinfo == datetime.UTC
        assert abs((stamp - datetime.datetime.now(datetime.UTC)).total_seconds() - 60) < 1.0


@pytest.mark.asyncio
async def test_keepalive_pings_an_idle_device() -> None:
    async with connected(keepalive=0.2) as (client, peer):
        for _ in range(3):
            request = await peer.recv(2.0)
            assert request["op"] == "ping"
            await peer.reply(request)
        assert not client.closed


@pytest.mark.asyncio
async def test_keepalive_closes_a_dead_link() -> None:
    async with connected(keepalive=0.2, timeout=0.1, attempts=2) as (client, _peer):
        async with asyncio.timeout(3):
            await client.wait_closed()
        assert "keep-alive" in client.close_reason
        with pytest.raises(ConnectionClosed, match="keep-alive"):
            await client.ping()
