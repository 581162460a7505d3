"""The serial transport in-process (a SerialTransport with a recording node) against the reference
device as a real process on a real pty link: the pod lifecycle, logs, and the link's life."""

from __future__ import annotations

import asyncio
import datetime
import typing
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import pytest
from serial_support import MakeTransport, RecordingNode, SerialLink, StartDevice, make_pod, program
from vkpy_serial import SerialOptions, SerialTransport

from vkpy import (
    DeviceHealth,
    DeviceUnreachable,
    LogLine,
    LogOptions,
    LogsNotAvailable,
    Pod,
    PodRejected,
    PodStatusReport,
    Running,
    Terminated,
    Waiting,
)
from vkpy.protocol import DeviceRequestFailed

T = TypeVar("T")


async def eventually(
    probe: Callable[[], Awaitable[T]], check: Callable[[T], bool], timeout: float = 15.0
) -> T:
    """Ask ``probe`` until ``check`` accepts the answer (exceptions count as "not yet")."""
    last: Any = None
    try:
        async with asyncio.timeout(timeout):
            while True:
                try:
                    last = await probe()
                except (DeviceUnreachable, DeviceRequestFailed) as exc:
                    last = exc
                else:
                    if check(last):
                        return typing.cast(T, last)
                await asyncio.sleep(0.05)
    except TimeoutError:
        raise AssertionError(f"condition not met in {timeout}s; last answer: {last!r}") from None


async def state(transport: SerialTransport, node: RecordingNode, pod: Pod, name: str = "main") -> Any:
    report = await transport.get_pod_status(node, pod)
    return None if report is None else report.containers.get(name)


async def wait_state(
    transport: SerialTransport, node: RecordingNode, pod: Pod, kind: type, name: str = "main"
) -> Any:
    async def probe() -> Any:
        return await state(transport, node, pod, name)

    return await eventually(probe, lambda s: isinstance(s, kind))


async def wait_health(node: RecordingNode, reachable: bool, timeout: float = 15.0) -> DeviceHealth:
    async def probe() -> DeviceHealth:
        return node.health

    return await eventually(probe, lambda h: h.reachable == reachable, timeout)


async def logs(
    transport: SerialTransport, node: RecordingNode, pod: Pod, name: str = "main", **options: Any
) -> list[LogLine]:
    lines = transport.get_container_logs(node, pod, name, LogOptions(**options))
    return [line async for line in lines]


def text(lines: list[LogLine]) -> str:
    return b"".join(line.data for line in lines).decode()


# --- connecting -------------------------------------------------------------------------------------


async def test_the_node_takes_the_devices_capacity_and_identity(
    link: SerialLink, start_device: StartDevice, make_transport: MakeTransport
) -> None:
    start_device(link, "--device-id", "board-7", "--pods", "3", "--memory", "512Ki")
    transport, node = await make_transport(link)
    assert node.health.reachable
    assert await transport.node_capacity(node) == {"cpu": "1", "memory": "512Ki", "pods": "3"}
    hello = transport.hello
    assert hello is not None
    assert hello.device_id == "board-7"
    assert {"events", "logs", "restart"} <= set(hello.capabilities)
    assert (await transport.node_health(node)).reachable
    assert list(await transport.list_pods(node)) == []


async def test_an_absent_device_makes_the_node_not_ready_without_holding_it_back(
    link: SerialLink, start_device: StartDevice, make_transport: MakeTransport
) -> None:
    link.unplug()
    loop = asyncio.get_running_loop()
    began = loop.time()
    transport, node = await make_transport(link, startup_wait=10)
    assert loop.time() - began < 3, "node_start waited for a device that is not there"
    health = await transport.node_health(node)
    assert not health.reachable
    assert health.reason == "DeviceDisconnected"
    assert health.message.startswith(str(link.host_path))
    assert "does not exist" in health.message
    assert await transport.node_capacity(node) is None
    pod = make_pod(program("main", "sleep", "1"))
    with pytest.raises(DeviceUnreachable, match=str(link.host_path)):
        await transport.get_pod_status(node, pod)

    link.plug()
    start_device(link)
    await wait_health(node, True)
    assert await transport.get_pod_status(node, pod) is None


async def test_a_device_that_does_not_answer_is_not_ready(
    link: SerialLink, make_transport: MakeTransport
) -> None:
    # The port exists, but nothing runs behind it.
    _transport, node = await make_transport(link, request_timeout=0.2, attempts=2, connect_timeout=2)
    health = await wait_health(node, False)
    assert health.reason == "DeviceDisconnected"
    assert "does not answer" in health.message


async def test_another_device_on_the_port_is_refused(
    link: SerialLink, start_device: StartDevice, make_transport: MakeTransport
) -> None:
    start_device(link, "--device-id", "intruder")
    _, node = await make_transport(link, device_id="board-1")
    health = await wait_health(node, False)
    assert health.reason == "DeviceMismatch"
    assert "'intruder'" in health.message
    assert "'board-1'" in health.message


# --- pods -------------------------------------------------------------------------------------------


async def test_a_pod_runs_and_reports_its_exit_code_and_times(
    link: SerialLink, start_device: StartDevice, make_transport: MakeTransport
) -> None:
    start_device(link)
    transport, node = await make_transport(link)
    before = datetime.datetime.now(datetime.UTC)
    pod = make_pod(program("main", "count", "3", "0.2"), program("side", "exit", "3"))
    await transport.create_pod(node, pod)
    await transport.create_pod(node, pod)  # idempotent: the same pod
    running = await wait_state(transport, node, pod, Running)
    assert before - datetime.timedelta(seconds=1) <= running.started_at <= datetime.datetime.now(datetime.UTC)
    done = await wait_state(transport, node, pod, Terminated)
    assert (done.exit_code, done.reason) == (0, "Completed")
    assert done.finished_at is not None
    assert done.started_at is not None
    assert 0.3 <= (done.finished_at - done.started_at).total_seconds() <= 3
    side = await state(transport, node, pod, "side")
    assert (side.exit_code, side.reason) == (3, "Error")
    assert pod.uid in node.reports  # the device pushed container_exited
    assert list(await transport.list_pods(node)) == [pod.uid]
    assert text(await logs(transport, node, pod)) == "1\n2\n3\n"


async def test_unknown_programs_and_bad_pods(
    link: SerialLink, start_device: StartDevice, make_transport: MakeTransport
) -> None:
    start_device(link, "--pods", "1")
    transport, node = await make_transport(link)
    pod = make_pod(program("main", "no-such-program"))
    await transport.create_pod(node, pod)
    gone = await wait_state(transport, node, pod, Terminated)
    assert (gone.exit_code, gone.reason) == (127, "ProgramNotFound")

    full = make_pod(program("main", "sleep", "1"))
    with pytest.raises(PodRejected, match="maximum number of pods") as rejected:
        await transport.create_pod(node, full)
    assert rejected.value.reason == "OutOfpods"

    init = Pod(
        uid="i-1",
        namespace="default",
        name="init",
        node_name="n",
        containers=(program("main", "echo"),),
        init_containers=(program("setup", "echo"),),
    )
    with pytest.raises(PodRejected, match="init containers") as rejected:
        await transport.create_pod(node, init)
    assert rejected.value.reason == "InitContainersNotSupported"

    huge = make_pod(program("main", "echo", "x" * 8000))
    with pytest.raises(PodRejected, match="does not fit in one protocol frame"):
        await transport.create_pod(node, huge)


async def test_env_and_working_dir_reach_the_program(
    link: SerialLink, start_device: StartDevice, make_transport: MakeTransport
) -> None:
    start_device(link)
    transport, node = await make_transport(link)
    pod = make_pod(
        program("main", "env", env=(("GREETING", "hello"), ("SECRET", "s3cr3t"))),
        program("where", "pwd", working_dir="/data"),
    )
    await transport.create_pod(node, pod)
    await wait_state(transport, node, pod, Terminated)
    await wait_state(transport, node, pod, Terminated, "where")
    assert text(await logs(transport, node, pod)) == "GREETING=hello\nSECRET=s3cr3t\n"
    assert text(await logs(transport, node, pod, "where")) == "/data\n"


async def test_delete_honours_the_grace_period(
    link: SerialLink, start_device: StartDevice, make_transport: MakeTransport
) -> None:
    start_device(link)
    transport, node = await make_transport(link)
    polite = make_pod(program("main", "sleep", "100"))
    stubborn = make_pod(program("main", "stubborn"))
    for pod in (polite, stubborn):
        await transport.create_pod(node, pod)
        await wait_state(transport, node, pod, Running)

    await transport.delete_pod(node, polite, 30)
    assert await eventually(lambda: transport.get_pod_status(node, polite), lambda r: r is None) is None

    await transport.delete_pod(node, stubborn, 1)
    report = await transport.get_pod_status(node, stubborn)
    assert report is not None
    assert report.message == "being deleted on the device"
    assert await eventually(lambda: transport.get_pod_status(node, stubborn), lambda r: r is None) is None
    await transport.delete_pod(node, stubborn, 0)  # gone already: no error
    assert list(await transport.list_pods(node)) == []


async def test_restart_container_starts_a_new_instance_once(
    link: SerialLink, start_device: StartDevice, make_transport: MakeTransport
) -> None:
    start_device(link)
    transport, node = await make_transport(link)
    pod = make_pod(program("main", "fail", "attempt"))
    await transport.create_pod(node, pod)
    first = await wait_state(transport, node, pod, Terminated)
    assert first.exit_code == 1
    await transport.restart_container(node, pod, "main")
    client = transport.client
    assert client is not None
    # A retransmitted restart (same count) never starts a third instance, even after the second ended.
    second = await wait_state(transport, node, pod, Terminated)
    repeat = await client.restart(pod.uid, "main", 0)
    assert not repeat.restarted
    status = repeat.pod.container("main")
    assert status is not None
    assert status.restarts == 1
    assert second.exit_code == 1
    assert text(await logs(transport, node, pod)) == "attempt\n"
    assert text(await logs(transport, node, pod, previous=True)) == "attempt\n"

    fresh = make_pod(program("main", "sleep", "0.1"))
    await transport.create_pod(node, fresh)
    await wait_state(transport, node, fresh, Terminated)
    with pytest.raises(LogsNotAvailable, match="previous"):
        await logs(transport, node, fresh, previous=True)


async def test_status_of_unknown_pods_and_containers(
    link: SerialLink, start_device: StartDevice, make_transport: MakeTransport
) -> None:
    start_device(link)
    transport, node = await make_transport(link)
    pod = make_pod(program("main", "sleep", "5"))
    assert await transport.get_pod_status(node, pod) is None
    with pytest.raises(LogsNotAvailable, match="not on the device"):
        await logs(transport, node, pod)
    with pytest.raises(LogsNotAvailable, match="not part of pod"):
        await logs(transport, node, pod, "nope")


# --- logs -------------------------------------------------------------------------------------------


async def test_logs_tail_since_and_lost_bytes(
    link: SerialLink, start_device: StartDevice, make_transport: MakeTransport
) -> None:
    start_device(link, "--log-buffer", "300")
    transport, node = await make_transport(link, log_chunk=64)
    pod = make_pod(program("main", "count", "200", "0"))
    await transport.create_pod(node, pod)
    done = await wait_state(transport, node, pod, Terminated)
    everything = "".join(f"{i}\n" for i in range(1, 201))

    tail = await logs(transport, node, pod, tail_lines=5)
    assert text(tail) == "196\n197\n198\n199\n200\n"
    assert text(await logs(transport, node, pod, tail_lines=0)) == ""
    # More lines than the device holds: what it holds, from the first whole line on.
    held = text(await logs(transport, node, pod, tail_lines=1000))
    assert everything.endswith(held)
    assert len(held) <= 300

    full = await logs(transport, node, pod)
    first = full[0].data.decode()
    assert first.startswith("[vkpy: ")
    assert "bytes of output lost" in first
    lost = int(first.split()[1])
    assert lost == len(everything) - 300
    assert text(full[1:]) == everything[lost:]

    # Lines read only after the container ended are stamped at most at its end.
    assert done.finished_at is not None
    assert all(line.time <= done.finished_at for line in full)
    later = done.finished_at + datetime.timedelta(seconds=1)
    assert await logs(transport, node, pod, since=later) == []
    assert text(
        await logs(transport, node, pod, since=done.finished_at - datetime.timedelta(seconds=60))
    ) == text(full)


async def test_follow_streams_lines_as_they_come_and_ends_with_the_container(
    link: SerialLink, start_device: StartDevice, make_transport: MakeTransport
) -> None:
    start_device(link)
    transport, node = await make_transport(link)
    pod = make_pod(program("main", "count", "5", "0.3"))
    await transport.create_pod(node, pod)
    await wait_state(transport, node, pod, Running)
    seen: list[tuple[float, LogLine]] = []
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(15):
        async for line in transport.get_container_logs(node, pod, "main", LogOptions(follow=True)):
            seen.append((loop.time(), line))
    assert text([line for _, line in seen]) == "1\n2\n3\n4\n5\n"
    # Streamed: the lines came over more than a second, not all at the end.
    assert seen[-1][0] - seen[0][0] >= 0.8
    times = [line.time for _, line in seen]
    assert times == sorted(times)
    # Lines seen live keep their time when read again (at most the container's end).
    done = await wait_state(transport, node, pod, Terminated)
    again = await logs(transport, node, pod, timestamps=True)
    assert [line.time for line in again] == [min(t, done.finished_at) for t in times]


async def test_follow_with_tail_continues_a_partial_line(
    link: SerialLink, start_device: StartDevice, make_transport: MakeTransport
) -> None:
    start_device(link)
    transport, node = await make_transport(link)
    pod = make_pod(program("main", "sensor", "4", "0.4"))
    await transport.create_pod(node, pod)
    await wait_state(transport, node, pod, Running)
    await asyncio.sleep(0.5)
    lines = await logs(transport, node, pod, follow=True, tail_lines=1)
    numbers = [int(line.data.split(b" ")[1].split(b"=")[1]) for line in lines]
    # The last line written before the call, then every line after it, each whole.
    assert numbers == list(range(numbers[0], 5))
    assert numbers[0] in (1, 2)
    assert all(line.data.endswith(b"\n") for line in lines)


async def test_follow_ends_when_the_pod_is_deleted(
    link: SerialLink, start_device: StartDevice, make_transport: MakeTransport
) -> None:
    start_device(link)
    transport, node = await make_transport(link)
    pod = make_pod(program("main", "sensor", "0", "0.2"))
    await transport.create_pod(node, pod)
    await wait_state(transport, node, pod, Running)

    async def read() -> list[LogLine]:
        return await logs(transport, node, pod, follow=True)

    reader = asyncio.ensure_future(read())
    await asyncio.sleep(0.7)
    await transport.delete_pod(node, pod, 0)
    lines = await asyncio.wait_for(reader, 10)
    assert len(lines) >= 2
    assert all(b"reading=" in line.data for line in lines)


# --- the link ---------------------------------------------------------------------------------------


async def test_unplug_and_replug_keeps_the_pods_and_the_log_offsets(
    link: SerialLink, start_device: StartDevice, make_transport: MakeTransport
) -> None:
    device = start_device(link)
    transport, node = await make_transport(link)
    pod = make_pod(program("main", "count", "8", "0.3"))
    await transport.create_pod(node, pod)
    await wait_state(transport, node, pod, Running)

    async def follow() -> list[LogLine]:
        return await logs(transport, node, pod, follow=True)

    follower = asyncio.ensure_future(follow())
    await asyncio.sleep(0.5)

    # The adapter's cable comes out (the device, on its own power, keeps running).
    link.unplug_host()
    health = await wait_health(node, False)
    assert health.reason == "DeviceDisconnected"
    assert health.message.startswith(str(link.host_path))
    with pytest.raises(DeviceUnreachable):
        await transport.get_pod_status(node, pod)
    await asyncio.sleep(0.6)
    link.plug_host()
    await wait_health(node, True)
    assert pod.uid in node.reports
    assert device.running

    lines = await asyncio.wait_for(follower, 15)
    assert text(lines) == "".join(f"{i}\n" for i in range(1, 9))
    done = await wait_state(transport, node, pod, Terminated)
    assert done.exit_code == 0


async def test_a_device_that_rebooted_has_lost_its_pods(
    link: SerialLink, start_device: StartDevice, make_transport: MakeTransport
) -> None:
    device = start_device(link)
    transport, node = await make_transport(link)
    pod = make_pod(program("main", "sleep", "100"))
    await transport.create_pod(node, pod)
    await wait_state(transport, node, pod, Running)

    # Reset button: the device restarts behind an adapter that stays plugged in.
    device.kill()
    start_device(link)
    report: PodStatusReport | None = await eventually(
        lambda: transport.get_pod_status(node, pod), lambda r: r is None
    )
    assert report is None
    assert node.health.reachable

    # And a device that comes back after an unplug with another boot id.
    survivor = make_pod(program("main", "sleep", "100"))
    await transport.create_pod(node, survivor)
    link.unplug()
    await wait_health(node, False)
    link.plug()
    start_device(link)
    await wait_health(node, True)
    assert await transport.get_pod_status(node, survivor) is None


async def test_a_device_without_events_restart_or_logs(
    link: SerialLink, start_device: StartDevice, make_transport: MakeTransport
) -> None:
    start_device(link, "--without", "events,restart,logs")
    transport, node = await make_transport(link, poll_interval=0.2)
    assert transport.capabilities() == {"env", "working_dir", "grace"}
    pod = make_pod(program("main", "sleep", "0.6"))
    await transport.create_pod(node, pod)
    await wait_state(transport, node, pod, Terminated)

    # No events: listing now and then notices the start and the exit, and tells the node.
    async def reported() -> int:
        return node.reports.count(pod.uid)

    await eventually(reported, lambda n: n >= 2)
    with pytest.raises(DeviceRequestFailed, match="no 'restart' capability"):
        await transport.restart_container(node, pod, "main")
    with pytest.raises(LogsNotAvailable, match="keeps no logs"):
        await logs(transport, node, pod)


def test_protocol_states_map_to_vkpy_states() -> None:
    from vkpy.protocol import ContainerStatus, PodStatus
    from vkpy.protocol import Running as WireRunning
    from vkpy.protocol import Terminated as WireTerminated
    from vkpy.protocol import Waiting as WireWaiting

    transport = SerialTransport(RecordingNode(), SerialOptions(port="/dev/null"))
    pod = PodStatus(
        "u",
        "ns",
        "n",
        (
            ContainerStatus("a", WireWaiting("ContainerCreating", "flashing")),
            ContainerStatus("b", WireRunning(1000)),
            ContainerStatus(
                "c", WireTerminated(127, "ProgramNotFound", finished_at=1500, message="no program")
            ),
        ),
        deleting=True,
    )
    report = transport._report(pod, 2000)
    assert report.containers["a"] == Waiting("ContainerCreating", "flashing")
    running = report.containers["b"]
    assert isinstance(running, Running)
    ended = report.containers["c"]
    assert isinstance(ended, Terminated)
    assert (ended.exit_code, ended.reason, ended.message) == (127, "ProgramNotFound", "no program")
    # Never started: it started when it ended, as the kubelet shows it.
    assert ended.started_at == ended.finished_at
    assert ended.finished_at is not None
    started = running.started_at
    assert started is not None
    assert (ended.finished_at - started).total_seconds() == pytest.approx(0.5, abs=0.01)
    assert report.message == "being deleted on the device"
    # The same device time maps to the same host time every time (the core compares states).
    assert transport._report(pod, 2500) == report
