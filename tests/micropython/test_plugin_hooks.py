"""The micropython plugin's hooks called directly, as the core calls them, in front of a real
SerialTransport in raw mode and the fake board as a separate process on a real pty: pods as
scripts, their logs, one script at a time, deletion as Ctrl-C, a dropped link, and the board's
health. No cluster (tests/micropython/test_micropython_cluster.py has the end-to-end view)."""

from __future__ import annotations

import asyncio
import datetime
import uuid
from collections.abc import AsyncIterator
from typing import Any

import attrs
import pytest
import vkpy_micropython as plugin
from board_support import FakeBoard, RecordingNode, StartBoard, eventually
from conftest import MakeTransport
from vkpy_micropython.board import Board, Settings
from vkpy_micropython.plugin import board_of
from vkpy_micropython.script import Script, preamble, script_for
from vkpy_serial import SerialOptions, SerialTransport

from vkpy import (
    DEFER,
    Container,
    ContainerState,
    DeviceHealth,
    LogOptions,
    LogsNotAvailable,
    Pod,
    PodRejected,
    PodStatusReport,
    Running,
    Terminated,
    Volume,
    VolumeFile,
    VolumeMount,
    Waiting,
)

FOREVER = "import time\nwhile True:\n    print('tick')\n    time.sleep(0.1)\n"


def make_pod(*argv: str, name: str = "script", **container: Any) -> Pod:
    volumes = container.pop("volumes", ())
    return Pod(
        uid=str(uuid.uuid4()),
        namespace="default",
        name=name,
        node_name="mpy-test",
        containers=(Container(name="main", image="micropython", command=argv, **container),),
        restart_policy="Never",
        volumes=volumes,
    )


def inline(source: str, name: str = "script", **container: Any) -> Pod:
    return make_pod("python", "-c", source, name=name, **container)


@attrs.define
class Rig:
    board: FakeBoard
    transport: SerialTransport
    node: RecordingNode
    seen: list[tuple[str, ContainerState | None]]

    async def state(self, pod: Pod) -> ContainerState | None:
        report = await plugin.get_pod_status(self.node, pod)
        assert report is None or isinstance(report, PodStatusReport)
        return None if report is None else report.containers["main"]

    async def until(self, pod: Pod, kind: type, timeout: float = 15) -> Any:
        return await eventually(lambda: self.state(pod), lambda s: isinstance(s, kind), timeout)

    async def logs(self, pod: Pod, **options: Any) -> bytes:
        lines = await plugin.get_container_logs(self.node, pod, "main", LogOptions(**options))
        return b"".join([line.data async for line in lines])  # type: ignore[union-attr]


@pytest.fixture
async def rig(start_board: StartBoard, raw_transport: MakeTransport) -> AsyncIterator[Rig]:
    board = start_board()
    transport, node = await raw_transport(board.path)
    seen: list[tuple[str, ContainerState | None]] = []

    def record(uid: str) -> None:
        # What the core would read at once when the plugin reports a change.
        mine = board_of(node)
        report = mine.status(uid) if mine is not None else None
        seen.append((uid, None if report is None else next(iter(report.containers.values()))))

    node.on_report = record
    await plugin.node_start(node)
    yield Rig(board, transport, node, seen)
    await plugin.node_stop(node)


# -- which pods, which scripts ---------------------------------------------------------------------


async def test_nodes_that_are_not_serial_in_raw_mode_are_left_to_their_transport() -> None:
    pod = inline("print(1)")
    for transport in (SerialTransport(RecordingNode(), SerialOptions(port="/dev/ttyACM0")), object()):
        node = RecordingNode()
        node.transport = transport
        await plugin.node_start(node)  # a warning in the log, nothing else
        assert await plugin.create_pod(node, pod) is DEFER
        assert await plugin.update_pod(node, pod) is DEFER
        assert await plugin.delete_pod(node, pod, 30) is DEFER
        assert await plugin.restart_container(node, pod, "main") is DEFER
        assert await plugin.get_pod_status(node, pod) is DEFER
        assert await plugin.get_container_logs(node, pod, "main", LogOptions()) is DEFER
        assert await plugin.list_pods(node) is DEFER
        assert await plugin.node_health(node) is None
        await plugin.node_stop(node)


def test_a_script_is_inline_source_or_a_file_of_a_mounted_configmap() -> None:
    assert script_for(make_pod("python", "-c", "print(1)", "a")) == Script("main", b"print(1)", ("-c", "a"))
    code = Volume(
        "code", "configMap", files=(VolumeFile("main.py", b"print(2)"), VolumeFile("lib/x.py", b"x"))
    )
    mounted: dict[str, Any] = {"volumes": (code,), "volume_mounts": (VolumeMount("code", "/app"),)}
    assert script_for(make_pod("micropython", "/app/main.py", "--fast", **mounted)) == Script(
        "main", b"print(2)", ("/app/main.py", "--fast")
    )
    assert script_for(make_pod("python3", "lib/x.py", working_dir="/app", **mounted)).source == b"x"
    one_file: dict[str, Any] = {
        "volumes": (code,),
        "volume_mounts": (VolumeMount("code", "/main.py", sub_path="main.py"),),
    }
    assert script_for(make_pod("python", "/main.py", **one_file)).source == b"print(2)"
    secret = Volume("creds", "secret", files=(VolumeFile("run.py", b"print(3)"),), secret=True)
    from_secret: dict[str, Any] = {"volumes": (secret,), "volume_mounts": (VolumeMount("creds", "/s"),)}
    assert script_for(make_pod("python", "/s/run.py", **from_secret)).source == b"print(3)"


@pytest.mark.parametrize(
    ("pod", "reason", "text"),
    [
        (make_pod(), "InvalidScript", "has no command"),
        (make_pod("sh", "-c", "echo"), "InvalidScript", "not a Python interpreter"),
        (make_pod("python"), "InvalidScript", "names no script"),
        (make_pod("python", "-c"), "InvalidScript", "-c needs the source"),
        (make_pod("python", "-u", "x.py"), "InvalidScript", "option '-u' is not supported"),
        (make_pod("python", "/app/main.py"), "ScriptNotFound", "/app/main.py is not a file"),
        (inline("print('\x04')"), "InvalidScript", "0x04"),
        (
            attrs.evolve(inline("1"), containers=(Container("a"), Container("b"))),
            "OneContainerPerPod",
            "2 containers",
        ),
        (
            attrs.evolve(inline("1"), init_containers=(Container("setup"),)),
            "InitContainersNotSupported",
            "setup",
        ),
    ],
)
def test_pods_a_board_cannot_run_are_rejected(pod: Pod, reason: str, text: str) -> None:
    with pytest.raises(PodRejected, match=text) as rejected:
        script_for(pod)
    assert rejected.value.reason == reason


# -- running ---------------------------------------------------------------------------------------


async def test_a_script_runs_its_output_is_the_log_and_env_arrives_exactly(rig: Rig) -> None:
    tricky = {
        "GREETING": "hello",
        "QUOTES": 'it\'s "quoted"',
        "CODE": "'); import os; os.system('reboot') #",
        "LINES": "one\ntwo\\n",
        "CONTROL": "\x04\x03",
        "UNICODE": "grüße ✓",
    }
    script = (
        "import os\n"
        "for name in sorted(ENV):\n"
        "    print(name, repr(ENV[name]), os.environ[name] == ENV[name])\n"
        "print('argv', ARGV)\n"
    )
    pod = inline(script, env=tuple(tricky.items()))
    assert await plugin.create_pod(rig.node, pod) is None
    assert await plugin.create_pod(rig.node, pod) is None  # idempotent
    done = await rig.until(pod, Terminated)
    assert (done.exit_code, done.reason) == (0, "Completed")
    assert done.started_at is not None
    assert done.finished_at is not None
    expected = "".join(f"{name} {tricky[name]!r} True\n" for name in sorted(tricky)) + "argv ['-c']\n"
    assert (await rig.logs(pod)).decode() == expected
    assert await plugin.list_pods(rig.node) == [pod.uid]
    assert await plugin.update_pod(rig.node, pod) is None


async def test_the_preamble_is_a_separate_execution_so_line_numbers_are_the_scripts(rig: Rig) -> None:
    pod = inline("x = 1\n\nraise ValueError('boom')\n")
    await plugin.create_pod(rig.node, pod)
    failed = await rig.until(pod, Terminated)
    assert (failed.exit_code, failed.reason, failed.message) == (1, "Error", "ValueError: boom")
    log = await rig.logs(pod)
    assert log == (
        b'Traceback (most recent call last):\n  File "<stdin>", line 3, in <module>\nValueError: boom\n'
    )
    assert preamble(script_for(pod)).startswith(b"ENV = {}\nARGV = ['-c']\n")


async def test_one_script_at_a_time_the_next_pod_waits_with_board_busy(rig: Rig) -> None:
    first = inline("import time\ntime.sleep(1.5)\nprint('first')\n", name="first")
    second = inline("print('second')\n", name="second")
    await plugin.create_pod(rig.node, first)
    await rig.until(first, Running)
    await plugin.create_pod(rig.node, second)
    waiting = await rig.state(second)
    assert waiting == Waiting("BoardBusy", "the board is running the script of pod default/first")
    with pytest.raises(LogsNotAvailable, match="is waiting to start: BoardBusy"):
        await plugin.get_container_logs(rig.node, second, "main", LogOptions())
    ended = await rig.until(second, Terminated)
    before = await rig.state(first)
    assert isinstance(before, Terminated)
    assert before.finished_at is not None
    assert ended.started_at is not None
    assert before.finished_at <= ended.started_at
    assert await rig.logs(second) == b"second\n"
    # The queued pod was told when the board became free.
    assert any(uid == second.uid and isinstance(s, Running) for uid, s in rig.seen)


async def test_logs_follow_tail_since_and_the_previous_run_after_a_restart(rig: Rig) -> None:
    pod = inline("import time\nfor i in range(3):\n    print('line', i)\n    time.sleep(0.3)\n")
    await plugin.create_pod(rig.node, pod)
    await rig.until(pod, Running)
    arrivals: list[tuple[float, bytes]] = []
    loop = asyncio.get_running_loop()
    lines = await plugin.get_container_logs(rig.node, pod, "main", LogOptions(follow=True))
    async with asyncio.timeout(10):
        async for line in lines:  # type: ignore[union-attr]
            arrivals.append((loop.time(), line.data))
    assert [data for _, data in arrivals] == [b"line 0\n", b"line 1\n", b"line 2\n"]
    assert arrivals[-1][0] - arrivals[0][0] > 0.4  # they came one by one, while the script ran
    assert isinstance(await rig.state(pod), Terminated)  # the follow ended with the script
    assert await rig.logs(pod, tail_lines=1) == b"line 2\n"
    future = datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=5)
    assert await rig.logs(pod, since=future) == b""
    with pytest.raises(LogsNotAvailable, match="previous terminated container"):
        await plugin.get_container_logs(rig.node, pod, "main", LogOptions(previous=True))

    assert await plugin.restart_container(rig.node, pod, "main") is None
    await rig.until(pod, Running)
    await plugin.restart_container(rig.node, pod, "main")  # not terminated: nothing happens
    await rig.until(pod, Terminated)
    assert await rig.logs(pod, previous=True) == b"line 0\nline 1\nline 2\n"
    assert await rig.logs(pod) == b"line 0\nline 1\nline 2\n"
    with pytest.raises(LogsNotAvailable, match="not part of pod"):
        await plugin.get_container_logs(rig.node, pod, "other", LogOptions())


async def test_delete_is_ctrl_c_exit_130_and_the_pod_is_forgotten_once_the_script_ended(rig: Rig) -> None:
    pod = inline(FOREVER)
    await plugin.create_pod(rig.node, pod)
    await rig.until(pod, Running)
    await eventually(lambda: rig.logs(pod), lambda log: b"tick" in log)
    assert await plugin.delete_pod(rig.node, pod, 30) is None
    await eventually(lambda: rig.state(pod), lambda s: s is None, timeout=5)
    ended = [s for uid, s in rig.seen if uid == pod.uid and isinstance(s, Terminated)]
    assert ended[-1] == Terminated(
        130,
        "Interrupted",
        "KeyboardInterrupt:",
        started_at=ended[-1].started_at,
        finished_at=ended[-1].finished_at,
    )
    assert await plugin.list_pods(rig.node) == []
    await plugin.delete_pod(rig.node, pod, 30)  # a second delete is harmless

    # A script that catches the interrupt cleans up and ends normally within its grace period.
    tidy = inline(
        "import time\ntry:\n    while True:\n        time.sleep(0.1)\n"
        "except KeyboardInterrupt:\n    print('cleaning up')\n    time.sleep(0.2)\n",
        name="tidy",
    )
    await plugin.create_pod(rig.node, tidy)
    await rig.until(tidy, Running)
    await asyncio.sleep(0.3)
    await plugin.delete_pod(rig.node, tidy, 30)
    await eventually(lambda: rig.state(tidy), lambda s: s is None, timeout=5)
    tidy_end = [s for uid, s in rig.seen if uid == tidy.uid and isinstance(s, Terminated)][-1]
    assert (tidy_end.exit_code, tidy_end.reason) == (0, "Completed")

    # A pod still waiting for the board is simply dropped.
    await plugin.create_pod(rig.node, pod := inline(FOREVER, name="again"))
    await rig.until(pod, Running)
    queued = inline("print('never')", name="queued")
    await plugin.create_pod(rig.node, queued)
    await plugin.delete_pod(rig.node, queued, 30)
    assert await rig.state(queued) is None
    await plugin.delete_pod(rig.node, pod, 0)
    await eventually(lambda: rig.state(pod), lambda s: s is None, timeout=5)
    assert not [s for uid, s in rig.seen if uid == queued.uid and not isinstance(s, Waiting | None)]


async def test_a_dropped_link_ends_the_running_script_as_link_lost(rig: Rig) -> None:
    pod = inline(FOREVER)
    await plugin.create_pod(rig.node, pod)
    await rig.until(pod, Running)
    await eventually(lambda: rig.logs(pod), lambda log: b"tick" in log)
    rig.board.kill()
    lost = await rig.until(pod, Terminated, timeout=5)
    assert (lost.exit_code, lost.reason) == (255, "LinkLost")
    assert "hung up" in lost.message
    assert b"tick\n" in await rig.logs(pod)  # what arrived before is kept
    health = await eventually(lambda: rig.transport.node_health(rig.node), lambda h: not h.reachable)
    assert health.reason == "DeviceDisconnected"
    assert await plugin.node_health(rig.node) is None  # the port is closed: the transport's to say


async def test_a_board_without_raw_paste_is_remembered_per_board(
    start_board: StartBoard, raw_transport: MakeTransport
) -> None:
    board = start_board("--raw-paste", "absent")
    transport, node = await raw_transport(board.path)
    rig = Rig(board, transport, node, [])
    for name in ("one", "two"):
        pod = inline(f"print({name!r})", name=name)
        await plugin.create_pod(node, pod)
        assert (await rig.until(pod, Terminated)).exit_code == 0
        assert await rig.logs(pod) == f"{name}\n".encode()
    mine = board_of(node)
    assert mine is not None
    assert mine.raw_paste is False
    # Two executions per pod (ENV, then the script), all plain; raw-paste was asked once.
    assert board.log_text().count("raw_submission") == 4
    await plugin.node_stop(node)


# -- a board that does not answer ------------------------------------------------------------------

QUICK = Settings(
    reply_timeout=0.4, abandon_after=0.5, interrupt_repeat=0.1, retry_initial=0.2, probe_timeout=1.5
)
IGNORES_CTRL_C = (
    "import micropython, time\n"
    "micropython.kbd_intr(-1)\n"
    "print('deaf to ctrl-c')\n"
    "while True:\n"
    "    time.sleep(0.1)\n"
)


async def test_a_script_that_ignores_ctrl_c_is_abandoned_and_the_board_reported_unresponsive(
    start_board: StartBoard, raw_transport: MakeTransport
) -> None:
    fake = start_board()
    transport, node = await raw_transport(fake.path)
    board = Board(node, transport, QUICK)
    ends: list[ContainerState] = []

    def record(uid: str) -> None:
        report = board.status(uid)
        if report is not None and isinstance(state := report.containers["main"], Terminated):
            ends.append(state)

    node.on_report = record
    assert await board.health() == DeviceHealth(True)
    stubborn = inline(IGNORES_CTRL_C)
    board.create(stubborn, script_for(stubborn))
    await eventually(lambda: _state(board, stubborn), lambda s: isinstance(s, Running))

    async def printed() -> bytes:
        return b"".join([line.data async for line in board.logs(stubborn, "main", LogOptions())])

    # Running comes as the script starts: a Ctrl-C before its kbd_intr(-1) would still stop it.
    await eventually(printed, lambda out: b"deaf to ctrl-c" in out)
    board.delete(stubborn.uid, 0)
    await eventually(lambda: _state(board, stubborn), lambda s: s is None, 5)
    abandoned = ends[-1]
    assert isinstance(abandoned, Terminated)
    assert (abandoned.exit_code, abandoned.reason) == (137, "NotInterruptible")
    assert "the board may still be running it" in abandoned.message

    # The board still runs it: the next pod waits, and the node is told.
    after = inline("print('after')", name="after")
    board.create(after, script_for(after))
    waiting = await eventually(
        lambda: _state(board, after),
        lambda s: isinstance(s, Waiting) and s.reason == "BoardNotResponding",
        10,
    )
    assert isinstance(waiting, Waiting)
    assert "no MicroPython raw REPL answers" in waiting.message
    assert node.healths[-1].reason == "BoardNotResponding"
    health = await board.health()
    assert health is not None
    assert health.reason == "BoardNotResponding"
    await board.stop()


async def test_health_asks_an_idle_board_once_per_opening_of_the_port(
    start_board: StartBoard, raw_transport: MakeTransport
) -> None:
    fake = start_board()
    transport, node = await raw_transport(fake.path)
    board = Board(node, transport, QUICK)
    assert await board.health() == DeviceHealth(True)
    assert await board.health() == DeviceHealth(True)
    # One probe: Ctrl-C twice and Ctrl-A, no soft reset.
    assert "soft_reboot" not in fake.log_text()


async def _state(board: Board, pod: Pod) -> ContainerState | None:
    report: PodStatusReport | None = board.status(pod.uid)
    return None if report is None else report.containers["main"]
