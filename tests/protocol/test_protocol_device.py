"""Integration: the reference device program as a real subprocess (pipes, and a real pty), driven
by DeviceClient. Nothing is mocked."""

from __future__ import annotations

import ast
import asyncio
import contextlib
import os
import random
import sys
import time
import tty
from collections.abc import AsyncIterator
from pathlib import Path
from types import ModuleType
from typing import Any, ClassVar

import attrs
import pytest

from vkpy.protocol import (
    ByteStream,
    CapacityExceeded,
    ConnectionClosed,
    ContainerExited,
    ContainerSpec,
    DeviceClient,
    DeviceReset,
    FdStream,
    FrameDecoder,
    HelloRequired,
    HostEvent,
    NoSuchContainer,
    NoSuchPod,
    PingReply,
    PodDeleted,
    Request,
    RequestTimeout,
    Running,
    Status,
    Terminated,
    UnknownOp,
    crc32,
    encode_frame,
    encode_request,
)
from vkpy.protocol.messages import FieldReader

COUNT_3 = [ContainerSpec("main", command=["count", "3", "0.05"])]


async def event_of(client: DeviceClient, kind: type[Any], timeout: float = 10.0) -> Any:
    """The next event of type ``kind`` (other events are skipped)."""
    async with asyncio.timeout(timeout):
        while True:
            event = await client.next_event()
            if isinstance(event, kind):
                return event


async def read_all_logs(client: DeviceClient, uid: str, container: str, max_bytes: int = 4096) -> bytes:
    data = b""
    offset = 0
    while True:
        reply = await client.logs(uid, container, offset, max_bytes)
        data += reply.data
        offset = reply.next_offset
        if reply.eof:
            return data


def count_output(n: int) -> bytes:
    return b"".join(b"%d\n" % i for i in range(1, n + 1))


@attrs.frozen
class Frobnicate(Request[PingReply]):
    """An op no device knows."""

    OP: ClassVar[str] = "frobnicate"

    def to_wire(self) -> dict[str, object]:
        return {"really": True}

    def parse_reply(self, r: FieldReader) -> PingReply:
        return PingReply.from_wire(r)

    @classmethod
    def from_wire(cls, r: FieldReader) -> Frobnicate:
        return cls()


class NoisyStream:
    """Wraps a byte stream: puts garbage in front of incoming chunks, and can lose incoming chunks."""

    def __init__(self, inner: ByteStream, seed: int = 1) -> None:
        self.inner = inner
        self.rng = random.Random(seed)
        self.noise = False
        self.losing: FrameDecoder | None = None

    def lose_next_reply(self) -> None:
        """Lose everything the device sends up to and including its next reply."""
        self.losing = FrameDecoder(max_frame=65536, on_drop=lambda reason, size: None)

    async def read(self) -> bytes:
        chunk = await self.inner.read()
        if chunk and self.losing is not None:
            if any(b'"ok":' in body for body in self.losing.feed(chunk)):
                self.losing = None
            return b"\x00"  # the chunk is lost on the line
        if chunk and self.noise:
            garbage = bytes(self.rng.randrange(256) for _ in range(self.rng.randrange(1, 64)))
            return garbage + chunk
        return chunk

    async def write(self, data: bytes) -> None:
        await self.inner.write(data)

    async def close(self) -> None:
        await self.inner.close()


# ------------------------------------------------------------------------------------------ pipes


@pytest.mark.asyncio
async def test_device_session(spawn_device: Any) -> None:
    async with spawn_device("--device-id", "dev-7", "--pods", "3") as dev:
        client = dev.client
        with pytest.raises(HelloRequired):
            await client.list_pods()
        assert (await client.ping()).now >= 0  # allowed before hello

        hello = await client.hello()
        assert hello.device_id == "dev-7"
        assert hello.version == 1
        assert hello.capacity == {"cpu": "1", "memory": "256Ki", "pods": "3"}
        assert hello.max_frame == 4096
        assert {"events", "logs", "grace"} <= set(hello.capabilities)
        assert {"echo", "sleep", "count", "sensor", "exit", "fail"} <= set(hello.programs)
        assert hello.event_seq == 0

        created = await client.create("uid-1", COUNT_3, namespace="default", name="counter")
        assert created.created
        assert created.pod.namespace == "default"
        assert created.pod.name == "counter"
        main = created.pod.container("main")
        assert main is not None
        assert isinstance(main.state, Running)

        exited = await event_of(client, ContainerExited)
        assert (exited.seq, exited.uid, exited.container) == (1, "uid-1", "main")
        assert exited.state.exit_code == 0
        assert exited.state.reason == "Completed"
        assert exited.state.started_at is not None
        assert exited.state.finished_at - exited.state.started_at >= 90  # two 50 ms sleeps
        assert abs(client.clock.to_unix(exited.state.finished_at) - time.time()) < 5

        chunks = []
        offset = 0
        while True:
            reply = await client.logs("uid-1", "main", offset, max_bytes=2)
            assert reply.offset == offset
            assert reply.earliest == 0
            assert reply.end == 6
            chunks.append(reply.data)
            offset = reply.next_offset
            if reply.eof:
                break
        assert chunks == [b"1\n", b"2\n", b"3\n"]
        tail = await client.logs("uid-1", "main", 4)
        assert (tail.data, tail.offset, tail.next_offset, tail.eof) == (b"3\n", 4, 6, True)
        beyond = await client.logs("uid-1", "main", 100)
        assert (beyond.data, beyond.offset, beyond.next_offset) == (b"", 6, 6)

        listed = await client.list_pods()
        assert [p.uid for p in listed.pods] == ["uid-1"]
        state = listed.pods[0].containers[0].state
        assert isinstance(state, Terminated)
        assert state.exit_code == 0

        again = await client.create("uid-1", [ContainerSpec("other", command=["sleep", "5"])])
        assert not again.created
        assert again.pod == listed.pods[0]

        with pytest.raises(NoSuchPod):
            await client.status("uid-unknown")
        with pytest.raises(NoSuchContainer, match="no container 'nope'"):
            await client.logs("uid-1", "nope")

        deleted = await client.delete("uid-1", grace=5)
        assert (deleted.found, deleted.gone) == (True, True)
        assert deleted.pod is not None
        assert deleted.pod.deleting
        gone = await event_of(client, PodDeleted)
        assert (gone.seq, gone.uid) == (2, "uid-1")
        repeated = await client.delete("uid-1", grace=5)
        assert (repeated.found, repeated.gone, repeated.pod) == (False, True, None)
        with pytest.raises(NoSuchPod):
            await client.status("uid-1")
        assert (await client.list_pods()).pods == ()
        assert client.frames_dropped == {}


@pytest.mark.asyncio
async def test_capacity_and_delete_grace(spawn_device: Any) -> None:
    async with spawn_device("--pods", "2") as dev:
        client = dev.client
        await client.hello()
        sleeper = [ContainerSpec("s", command=["sleep", "30"])]
        assert (await client.create("a", sleeper)).created
        assert (await client.create("b", sleeper)).created
        with pytest.raises(CapacityExceeded, match="holds 2 of 2 pods"):
            await client.create("c", sleeper)
        assert not (await client.create("b", sleeper)).created  # an existing uid is not refused

        # A cooperative program stops at once on TERM: exit 143, the pod is gone.
        deleted = await client.delete("a", grace=10)
        assert deleted.gone
        assert deleted.pod is not None
        state = deleted.pod.containers[0].state
        assert isinstance(state, Terminated)
        assert (state.exit_code, state.reason) == (143, "Terminated")
        assert (await client.create("c", sleeper)).created

        # grace 0 kills at once: 137.
        killed = await client.delete("c", grace=0)
        assert killed.gone
        assert killed.pod is not None
        state = killed.pod.containers[0].state
        assert isinstance(state, Terminated)
        assert (state.exit_code, state.reason, state.message) == (
            137,
            "Killed",
            "deleted with no grace period",
        )

        # A program that ignores TERM is killed when the grace period ends.
        pod = [ContainerSpec("stubborn", command=["stubborn"]), ContainerSpec("s", command=["sleep", "30"])]
        assert (await client.create("d", pod)).created
        deleted_at = time.monotonic()
        pending = await client.delete("d", grace=1)
        assert (pending.found, pending.gone) == (True, False)
        assert pending.pod is not None
        assert pending.pod.deleting
        states = {c.name: c.state for c in pending.pod.containers}
        assert isinstance(states["stubborn"], Running)
        assert isinstance(states["s"], Terminated)
        assert states["s"].exit_code == 143
        still = await client.delete("d", grace=1)  # repeating it while it is deleting
        assert (still.found, still.gone) == (True, False)
        status = await client.status("d")
        assert status.pod.deleting
        log = await client.logs("d", "stubborn")
        assert b"ignoring termination" in log.data

        exited = await event_of(client, ContainerExited)
        while exited.container != "stubborn":
            exited = await event_of(client, ContainerExited)
        assert (exited.state.exit_code, exited.state.reason) == (137, "Killed")
        assert time.monotonic() - deleted_at > 0.9  # killed when the 1 s grace period ended
        gone = await event_of(client, PodDeleted)
        assert gone.uid == "d"
        assert [p.uid for p in (await client.list_pods()).pods] == ["b"]


@pytest.mark.asyncio
async def test_programs_args_env_and_failures(spawn_device: Any) -> None:
    async with spawn_device("--pods", "1") as dev:
        client = dev.client
        await client.hello()
        containers = [
            ContainerSpec("echo", command=["echo", "hello"], args=["big", "world"]),
            ContainerSpec("env", command=["env"], env=[("B", "2"), ("A", "1")]),
            ContainerSpec("pwd", command=["pwd"], working_dir="/srv/data"),
            ContainerSpec("missing", command=["no-such-program", "x"]),
            ContainerSpec("empty", command=[]),
            ContainerSpec("exit", command=["exit", "3"]),
            ContainerSpec("fail", command=["fail", "it", "broke"]),
            ContainerSpec("sensor", command=["sensor", "2", "0.01"], env={"SENSOR_NAME": "t1"}),
            ContainerSpec("usage", command=["count", "abc"]),
        ]
        created = await client.create("p", containers)
        assert created.created
        async with asyncio.timeout(10):
            while not (status := (await client.status("p")).pod).finished:
                await asyncio.sleep(0.02)
        results = {c.name: c.state for c in status.containers}
        expected = {
            "echo": (0, "Completed"),
            "env": (0, "Completed"),
            "pwd": (0, "Completed"),
            "missing": (127, "ProgramNotFound"),
            "empty": (127, "ProgramNotFound"),
            "exit": (3, "Error"),
            "fail": (1, "Error"),
            "sensor": (0, "Completed"),
            "usage": (2, "Error"),
        }
        for name, (code, reason) in expected.items():
            state = results[name]
            assert isinstance(state, Terminated), name
            assert (state.exit_code, state.reason) == (code, reason), name
        missing = results["missing"]
        assert isinstance(missing, Terminated)
        assert missing.started_at is None
        assert "no-such-program" in missing.message

        logs = {c.name: await read_all_logs(client, "p", c.name) for c in containers}
        assert logs["echo"] == b"hello big world\n"
        assert logs["env"] == b"A=1\nB=2\n"
        assert logs["pwd"] == b"/srv/data\n"
        assert logs["fail"] == b"it broke\n"
        assert logs["missing"] == b""
        assert b"N must be an integer" in logs["usage"]
        lines = logs["sensor"].decode().splitlines()
        assert len(lines) == 2
        assert lines[0].startswith("t1 reading=1 temperature=")
        assert "humidity=" in lines[0]


@pytest.mark.asyncio
async def test_micropython_io_path(spawn_device: Any) -> None:
    """--stream-io: the StreamPort code path MicroPython uses (poll + one-byte reads)."""
    async with spawn_device("--stream-io", "--device-id", "streams") as dev:
        client = dev.client
        assert (await client.hello()).device_id == "streams"
        big = [ContainerSpec("main", command=["count", "3", "0.01"], env={"PAD": "p" * 2500})]
        assert (await client.create("p", big)).created
        assert (await event_of(client, ContainerExited)).state.exit_code == 0
        assert await read_all_logs(client, "p", "main") == count_output(3)
        assert (await client.delete("p")).gone


def test_device_clock_extends_wrapping_ticks(
    device_module: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    """MicroPython's ticks_ms() wraps (at 2**30 on most ports); the device's clock must not."""
    period = 1 << 30

    class Ticks:
        now = period - 1500  # shortly before the wrap

        def ticks_ms(self) -> int:
            return self.now % period

        def ticks_diff(self, new: int, old: int) -> int:
            return ((new - old + period // 2) % period) - period // 2

    ticks = Ticks()
    monkeypatch.setattr(device_module, "time", ticks)
    clock = device_module.Clock()
    readings = []
    for _ in range(6):
        ticks.now += 700
        readings.append(clock.ms())
    assert readings == [700, 1400, 2100, 2800, 3500, 4200]


@pytest.mark.asyncio
async def test_unknown_op(spawn_device: Any) -> None:
    async with spawn_device() as dev:
        await dev.client.hello()
        with pytest.raises(UnknownOp, match="unknown op 'frobnicate'") as info:
            await dev.client.request(Frobnicate())
        assert (info.value.code, info.value.name) == (1, "unknown_op")


@pytest.mark.asyncio
async def test_log_buffer_overflow(spawn_device: Any) -> None:
    async with spawn_device("--log-buffer", "64") as dev:
        client = dev.client
        await client.hello()
        await client.create("p", [ContainerSpec("c", command=["count", "100", "0"])])
        await event_of(client, ContainerExited)
        full = count_output(100)
        reply = await client.logs("p", "c", 0)
        assert reply.end == len(full) == 292
        assert reply.earliest == reply.offset == len(full) - 64
        assert reply.lost(0) == len(full) - 64
        assert reply.data == full[-64:]
        assert reply.eof
        inside = await client.logs("p", "c", 250, 10)
        assert (inside.offset, inside.data, inside.eof) == (250, full[250:260], False)


@pytest.mark.asyncio
async def test_logs_are_cut_to_the_host_max_frame(spawn_device: Any) -> None:
    async with spawn_device(max_frame=1024) as dev:
        client = dev.client
        await client.hello()
        await client.create("p", [ContainerSpec("c", command=["count", "300", "0"])])
        await event_of(client, ContainerExited)
        first = await client.logs("p", "c", 0, 4096)
        assert 0 < len(first.data) <= 609  # ((1024 - 1) * 254 // 255 - 204) // 4 * 3
        assert first.next_offset < first.end
        assert await read_all_logs(client, "p", "c") == count_output(300)


@pytest.mark.asyncio
async def test_garbage_in_both_directions_is_survived(spawn_device: Any) -> None:
    noisy: list[NoisyStream] = []

    def wrap(inner: ByteStream) -> ByteStream:
        noisy.append(NoisyStream(inner))
        return noisy[0]

    async with spawn_device(wrap=wrap, timeout=0.5, attempts=4) as dev:
        client = dev.client
        rng = random.Random(5)
        # host -> device: line noise with and without delimiters, a truncated frame, a corrupted
        # frame, and a run longer than the device's max_frame without any delimiter.
        good = b"\x00" + encode_frame(b'{"id":5,"op":"ping"}')
        corrupted = bytearray(good)
        corrupted[6] ^= 0xFF
        dev.write_raw(bytes(rng.randrange(256) for _ in range(500)))
        dev.write_raw(good[: len(good) // 2])
        dev.write_raw(b"\x00" + bytes(corrupted))
        dev.write_raw(bytes(rng.randrange(1, 256) for _ in range(9000)))
        await client.hello()
        assert (await client.ping()).now >= 0

        # device -> host: garbage in front of every chunk the device sends.
        noisy[0].noise = True
        assert (await client.create("p", COUNT_3)).created
        exited = await event_of(client, ContainerExited)
        assert exited.state.exit_code == 0
        assert await read_all_logs(client, "p", "main") == count_output(3)
        assert [p.uid for p in (await client.list_pods()).pods] == ["p"]
        for _ in range(20):
            await client.ping()
        assert sum(client.frames_dropped.values()) > 0


@pytest.mark.asyncio
async def test_retransmitted_create_is_idempotent(spawn_device: Any) -> None:
    noisy: list[NoisyStream] = []

    def wrap(inner: ByteStream) -> ByteStream:
        noisy.append(NoisyStream(inner))
        return noisy[0]

    async with spawn_device(wrap=wrap, timeout=0.3) as dev:
        client = dev.client
        await client.hello()
        noisy[0].lose_next_reply()  # the reply to the first transmission is lost
        reply = await client.create("p", [ContainerSpec("s", command=["sleep", "30"])])
        assert not reply.created  # the retransmission found the pod the first one made
        assert isinstance(reply.pod.containers[0].state, Running)
        assert [p.uid for p in (await client.list_pods()).pods] == ["p"]
        noisy[0].lose_next_reply()
        deleted = await client.delete("p", grace=0)
        assert (deleted.found, deleted.gone) == (False, True)  # the first delete did it
        assert (await client.list_pods()).pods == ()


@pytest.mark.asyncio
async def test_many_requests_in_flight(spawn_device: Any) -> None:
    async with spawn_device("--pods", "4") as dev:
        client = dev.client
        await client.hello()
        creates = [client.create(f"p{i}", [ContainerSpec("c", command=["sleep", "10"])]) for i in range(4)]
        pings = [client.ping() for _ in range(30)]
        results = await asyncio.gather(*creates, *pings)
        assert all(r.created for r in results[:4])
        assert len((await client.list_pods()).pods) == 4


@pytest.mark.asyncio
async def test_timeout_close_and_device_exit(spawn_device: Any) -> None:
    async with spawn_device() as dev:
        client = dev.client
        await client.hello()
        dev.pause()
        with pytest.raises(RequestTimeout):
            await client.ping(attempt_timeout=0.2)
        pending = asyncio.ensure_future(client.list_pods(attempt_timeout=30))
        await asyncio.sleep(0.1)
        dev.proc.kill()  # the device dies with a request outstanding
        with pytest.raises(ConnectionClosed, match="EOF"):
            await pending
        async with asyncio.timeout(5):
            await client.wait_closed()


# ------------------------------------------------------------------------------------------ pty


@contextlib.asynccontextmanager
async def pty_device(path: str, *args: str) -> AsyncIterator[asyncio.subprocess.Process]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(Path(__file__).resolve().parents[2] / "examples" / "device" / "vkpy_device.py"),
        "--port",
        path,
        *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        yield proc
    finally:
        if proc.returncode is None:
            proc.terminate()
        await proc.wait()
        assert proc.stderr is not None
        err = await proc.stderr.read()
        assert b"Traceback" not in err, err.decode(errors="replace")


def uid_for_crc_byte(request_id: int, byte: int) -> str:
    """A uid such that the status request with this id has ``byte`` in its CRC."""
    for n in range(100_000):
        uid = f"pty-{n}"
        if byte in crc32(encode_request(request_id, Status(uid=uid))).to_bytes(4, "little"):
            return uid
    raise AssertionError("no uid found")


async def hello_when_ready(client: DeviceClient) -> Any:
    """Hello, retried while the device program is still starting (it flushes the tty on open)."""
    async with asyncio.timeout(15):
        while True:
            with contextlib.suppress(RequestTimeout):
                return await client.hello(attempt_timeout=0.5, attempts=1)


@pytest.mark.asyncio
async def test_device_on_a_pseudo_terminal() -> None:
    master, slave = os.openpty()
    tty.setraw(master)
    tty.setraw(slave)
    path = os.ttyname(slave)
    events: list[HostEvent] = []
    client = DeviceClient(FdStream(master), first_request_id=1000, keepalive=None, on_event=events.append)
    try:
        async with pty_device(path, "--device-id", "pty-dev", "--pods", "2"):
            hello = await hello_when_ready(client)
            assert hello.device_id == "pty-dev"
            assert (await client.create("p1", COUNT_3)).created
            exited = await event_of(client, ContainerExited)
            assert exited.state.exit_code == 0
            assert await read_all_logs(client, "p1", "main") == count_output(3)

            # Bytes a cooked tty would eat or rewrite: ^C ^D LF CR ^Q ^S ^U ^V ^W ^R ^Z ^\ DEL.
            # Each request below carries one of them in its CRC; all must arrive intact.
            for byte in (0x03, 0x04, 0x0A, 0x0D, 0x11, 0x13, 0x15, 0x16, 0x17, 0x12, 0x1A, 0x1C, 0x7F):
                uid = uid_for_crc_byte(client._next_id, byte)
                with pytest.raises(NoSuchPod):
                    await client.status(uid)
            for _ in range(50):
                await client.ping()
            assert client.frames_dropped == {}

        # Another device process on the same line: the device was reset. The client notices the
        # hello_required reply and repeats the handshake by itself.
        async with pty_device(path, "--device-id", "pty-dev"):
            async with asyncio.timeout(15):
                while True:
                    with contextlib.suppress(RequestTimeout):
                        listed = await client.list_pods(attempt_timeout=0.5)
                        break
            assert listed.pods == ()
            assert any(isinstance(e, DeviceReset) for e in events)
    finally:
        await client.close()  # closes the master
        os.close(slave)


# ------------------------------------------------------------------------------------------ portability

MICROPYTHON_MODULES = {
    "sys",
    "time",
    "json",
    "ujson",
    "binascii",
    "ubinascii",
    "select",
    "uselect",
    "os",
    "uos",
}
OPTIONAL_IN_FUNCTIONS = {"termios", "tty", "micropython", "machine"}


def _imports(node: ast.AST, in_function: bool, found: list[tuple[str, bool]]) -> None:
    if isinstance(node, ast.Import):
        found += [(alias.name.split(".")[0], in_function) for alias in node.names]
    elif isinstance(node, ast.ImportFrom):
        found.append(((node.module or "").split(".")[0], in_function))
    inside = in_function or isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)
    for child in ast.iter_child_nodes(node):
        _imports(child, inside, found)


def test_device_program_uses_only_micropython_modules(device_program: Path) -> None:
    source = device_program.read_text()
    tree = ast.parse(source)
    found: list[tuple[str, bool]] = []
    _imports(tree, False, found)
    top_level = {name for name, in_function in found if not in_function}
    lazily = {name for name, in_function in found if in_function}
    assert top_level <= MICROPYTHON_MODULES, top_level
    assert lazily <= MICROPYTHON_MODULES | OPTIONAL_IN_FUNCTIONS, lazily
    for feature in ("dataclass", "typing", "asyncio", "async def", "await ", "threading"):
        assert feature not in source, feature
    nodes = list(ast.walk(tree))
    assert not any(isinstance(n, ast.JoinedStr) for n in nodes), (
        "f-strings: some MicroPython builds lack them"
    )
    assert not any(isinstance(n, ast.NamedExpr | ast.Match | ast.AsyncFunctionDef) for n in nodes)


def test_device_program_help_and_bad_options(device_program: Path) -> None:
    import subprocess

    ok = subprocess.run(
        [sys.executable, str(device_program), "--help"], capture_output=True, text=True, timeout=30
    )
    assert ok.returncode == 0
    assert "--log-buffer" in ok.stdout
    bad = subprocess.run(
        [sys.executable, str(device_program), "--pods"], capture_output=True, text=True, timeout=30
    )
    assert bad.returncode == 2
    assert "needs a value" in bad.stderr
    bad = subprocess.run(
        [sys.executable, str(device_program), "--frob", "1"], capture_output=True, text=True, timeout=30
    )
    assert bad.returncode == 2
    assert "unknown option" in bad.stderr


def test_device_program_exits_on_end_of_input(device_program: Path) -> None:
    import subprocess

    done = subprocess.run([sys.executable, str(device_program)], input=b"", capture_output=True, timeout=30)
    assert done.returncode == 0
    assert done.stdout == b""
    assert done.stderr == b""


async def test_restart_starts_a_new_instance_once_and_keeps_the_previous_log(spawn_device: Any) -> None:
    async with spawn_device() as dev:
        client = dev.client
        await client.hello()
        await client.create("uid-r", [ContainerSpec("main", command=["fail", "first"])])
        await event_of(client, ContainerExited)
        with pytest.raises(NoSuchContainer, match="no previous instance"):
            await client.logs("uid-r", "main", previous=True)

        restarted = await client.restart("uid-r", "main", 0)
        assert restarted.restarted
        main = restarted.pod.container("main")
        assert main is not None
        assert main.restarts == 1
        second = await event_of(client, ContainerExited)
        assert second.state.exit_code == 1
        # The same request again (a retransmission): the count moved on, nothing happens.
        repeat = await client.restart("uid-r", "main", 0)
        assert not repeat.restarted
        assert repeat.pod.container("main") == main.__class__("main", second.state, 1)

        current = await client.logs("uid-r", "main")
        previous = await client.logs("uid-r", "main", previous=True)
        assert (current.data, current.restarts, current.eof) == (b"first\n", 1, True)
        assert (previous.data, previous.restarts, previous.eof) == (b"first\n", 0, True)

        await client.create("uid-s", [ContainerSpec("main", command=["sleep", "5"])])
        running = await client.restart("uid-s", "main", 0)
        assert not running.restarted  # not terminated: nothing to restart
        with pytest.raises(NoSuchContainer):
            await client.restart("uid-s", "nope", 0)
        with pytest.raises(NoSuchPod):
            await client.restart("uid-none", "main", 0)
        await client.delete("uid-s", grace=0)


async def test_a_device_can_leave_out_capabilities(spawn_device: Any) -> None:
    async with spawn_device("--without", "events,restart,logs") as dev:
        client = dev.client
        hello = await client.hello()
        assert set(hello.capabilities) == {"env", "working_dir", "grace"}
        await client.create("uid-q", [ContainerSpec("main", command=["exit", "0"])])
        with pytest.raises(UnknownOp):
            await client.restart("uid-q", "main", 0)
        with pytest.raises(UnknownOp):
            await client.logs("uid-q", "main")
        status = (await client.status("uid-q")).pod.container("main")
        assert status is not None
        assert isinstance(status.state, Terminated)
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.3):
                await client.next_event()  # no events pushed
