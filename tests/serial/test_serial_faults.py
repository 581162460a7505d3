"""A bad line between vkpy and the device: bytes corrupted, dropped and duplicated by the relay,
and garbage or oversize frames from the device. Nothing may end in a wrong state: requests are
retransmitted until they get through, and the link survives."""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

from serial_support import Faults, MakeTransport, SerialLink, StartDevice, make_pod, program
from structlog.testing import capture_logs
from test_serial_transport import eventually, logs, text, wait_state
from vkpy_serial import SerialTransport

from vkpy import DeviceUnreachable, Pod, Running, Terminated
from vkpy.protocol import DeviceRequestFailed, crc32, encode_frame, encode_reply
from vkpy.protocol.framing import cobs_encode
from vkpy.protocol.messages import PingReply

# About one byte in a thousand goes wrong: a 300-byte exchange fails one time in four.
T = TypeVar("T")

NOISE = Faults(corrupt=0.0004, drop=0.0003, duplicate=0.0003, seed=7)


async def until_done(call: Callable[..., Awaitable[T]], *args: Any) -> T:
    """Call a transport hook until the noisy line lets it through (it is idempotent)."""
    for _ in range(30):
        try:
            return await call(*args)
        except (DeviceUnreachable, DeviceRequestFailed):
            await asyncio.sleep(0.1)
    raise AssertionError(f"{call} never got through")


async def test_a_noisy_line_retransmits_and_never_reaches_a_wrong_state(
    link: SerialLink, start_device: StartDevice, make_transport: MakeTransport
) -> None:
    start_device(link, "--pods", "8")
    transport, node = await make_transport(
        link, request_timeout=0.25, attempts=8, keepalive=60, log_chunk=128
    )
    assert node.health.reachable
    link.set_faults(NOISE)

    expected: dict[str, tuple[int, str]] = {}
    pods: list[Pod] = []
    for index in range(4):
        if index % 3 == 0:
            container = program("main", "count", "30", "0.01")
            result = (0, "".join(f"{i}\n" for i in range(1, 31)))
        elif index % 3 == 1:
            container = program("main", "exit", str(index))
            result = (index, "")
        else:
            container = program("main", "echo", *[f"word{i}" for i in range(40)])
            result = (0, " ".join(f"word{i}" for i in range(40)) + "\n")
        pod = make_pod(container)
        pods.append(pod)
        expected[pod.uid] = result
        # A create that times out may have reached the device: repeating it is safe.
        await until_done(transport.create_pod, node, pod)
        await until_done(transport.create_pod, node, pod)

    for pod in pods:
        done = await wait_state(transport, node, pod, Terminated)
        code, output = expected[pod.uid]
        assert done.exit_code == code
        lines = await until_done(logs, transport, node, pod)
        assert text(lines) == output

    # Exactly these pods, each once.
    held = await until_done(transport.list_pods, node)
    assert sorted(held) == sorted(expected)
    for pod in pods:
        await until_done(transport.delete_pod, node, pod, 0)
    assert await eventually(lambda: transport.list_pods(node), lambda uids: not list(uids)) is not None

    client = transport.client
    assert client is not None
    dropped = client.frames_dropped
    assert sum(dropped.values()) > 0, "the noise never hit a frame: the test tested nothing"
    assert link.stats["to_host"] > 10_000


async def test_a_noisy_follow_reads_every_byte_once(
    link: SerialLink, start_device: StartDevice, make_transport: MakeTransport
) -> None:
    start_device(link, "--log-buffer", "65536")
    transport, node = await make_transport(
        link, request_timeout=0.25, attempts=8, keepalive=60, log_chunk=128
    )
    pod = make_pod(program("main", "sensor", "60", "0.02"))
    await transport.create_pod(node, pod)
    await wait_state(transport, node, pod, Running)
    link.set_faults(NOISE)
    # A follow rides out requests that time out: it asks again from the same offset.
    got = await logs(transport, node, pod, follow=True)
    readings = [line.data.split(b" ")[1] for line in got]
    assert readings == [b"reading=%d" % i for i in range(1, 61)]


async def test_garbage_and_oversize_frames_from_the_device_are_logged_and_survived(
    link: SerialLink, start_device: StartDevice, make_transport: MakeTransport
) -> None:
    start_device(link)
    with capture_logs() as captured:
        transport, node = await make_transport(link, keepalive=60)
        client = transport.client
        assert client is not None
        rng = random.Random(3)
        garbage = bytes(rng.randrange(1, 256) for _ in range(500))
        not_json = cobs_encode(b"hello world" + crc32(b"hello world").to_bytes(4, "little"))
        stray_reply = encode_frame(encode_reply(12345, PingReply(now=1)))
        bad_event = encode_frame(json.dumps({"event": "container_exited", "seq": 1, "now": 1}).encode())
        link.inject_to_host(b"\x00" + garbage + b"\x00")
        link.inject_to_host(b"\x00" + not_json + b"\x00")
        link.inject_to_host(b"\x00" + stray_reply + bad_event)
        link.inject_to_host(b"\x00" + b"\x55" * 70_000 + b"\x00")  # beyond the 64 KiB limit

        pod = make_pod(program("main", "echo", "still", "fine"))
        await eventually(lambda: transport.create_pod(node, pod), lambda _: True)
        await wait_state(transport, node, pod, Terminated)
        assert text(await logs(transport, node, pod)) == "still fine\n"

        async def all_seen() -> Mapping[str, int]:
            return client.frames_dropped

        await eventually(
            all_seen, lambda d: d.get("too_large", 0) >= 1 and d.get("crc", 0) + d.get("cobs", 0) >= 1
        )
    assert node.health.reachable
    assert not client.closed
    events = {entry["event"] for entry in captured}
    assert "protocol.frame_dropped" in events
    assert "protocol.message_dropped" in events
    dropped = [e for e in captured if e["event"] == "protocol.frame_dropped"]
    assert all(e["node"] == node.name and e["port"] == str(link.host_path) for e in dropped)
    malformed = [e for e in captured if e["event"] == "protocol.message_dropped"]
    assert any("not valid UTF-8 JSON" in e["reason"] for e in malformed)
    assert any("container_exited event" in e["reason"] for e in malformed)
    assert isinstance(transport, SerialTransport)
