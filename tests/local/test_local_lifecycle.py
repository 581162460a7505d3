"""Deleting with a grace period, restarting containers, container logs, and adoption after a restart."""

from __future__ import annotations

import asyncio
import datetime
import json
import os
import signal
import sys
import time
from pathlib import Path

import pytest
from local_helpers import Local, clean_up, eventually, make_pod, new_transport, sh

from vkpy import LogOptions, LogsNotAvailable, Pod, Running, Terminated, Waiting
from vkpy.plugins.local import LOST_EXIT_CODE, LOST_REASON, ContainerFiles
from vkpy.plugins.local_supervisor import write_json_atomic


async def logs_of(local: Local, pod: Pod, container: str, **options: object) -> bytes:
    lines = local.transport.get_container_logs(local.node, pod, container, LogOptions(**options))  # type: ignore[arg-type]
    return b"".join([line.data async for line in lines])


async def gone(local: Local, pod: Pod, timeout: float = 10.0) -> None:
    await eventually(lambda: local.status(pod), lambda report: report is None, timeout)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def main_pid(local: Local, pod: Pod, container: str) -> int:
    return int(json.loads((local.transport.pod_dir(pod.uid) / f"{container}.pid").read_text())["pid"])


# --- delete ------------------------------------------------------------------------------------


async def test_delete_a_process_that_exits_on_term(local: Local, tmp_path: Path) -> None:
    marker = tmp_path / "terminated"
    pod = make_pod(sh("main", f"trap 'echo bye > {marker}; exit 0' TERM; while :; do sleep 0.1; done"))
    await local.transport.create_pod(local.node, pod)
    await local.wait_state(pod, "main", Running)
    pid = main_pid(local, pod, "main")
    started = time.monotonic()
    await local.transport.delete_pod(local.node, pod, 30)
    assert time.monotonic() - started < 1  # returns at once, well before the grace period
    await local.node.next_report(pod.uid)
    await gone(local, pod)
    assert time.monotonic() - started < 5
    assert marker.read_text() == "bye\n"
    assert not alive(pid)
    assert not local.transport.pod_dir(pod.uid).exists()
    assert await local.transport.list_pods(local.node) == []


async def test_delete_kills_a_process_ignoring_term_after_the_grace_period(local: Local) -> None:
    pod = make_pod(sh("stubborn", "trap '' TERM; sleep 60"), sh("polite", "sleep 60"))
    await local.transport.create_pod(local.node, pod)
    await local.wait_state(pod, "stubborn", Running)
    await local.wait_state(pod, "polite", Running)
    stubborn, polite = main_pid(local, pod, "stubborn"), main_pid(local, pod, "polite")
    started = time.monotonic()
    await local.transport.delete_pod(local.node, pod, 1)
    await eventually(lambda: _alive_async(polite), lambda is_alive: not is_alive)
    assert time.monotonic() - started < 0.9
    assert alive(stubborn)  # TERM is ignored: it lives until the grace period is over
    await gone(local, pod)
    elapsed = time.monotonic() - started
    assert 0.9 < elapsed < 4, elapsed
    assert not alive(stubborn)


async def test_the_supervisor_stops_its_container_as_the_kubelet(tmp_path: Path) -> None:
    """The supervisor alone: TERM to the group, KILL after the grace period, exit recorded."""
    files = ContainerFiles(tmp_path, "main")
    write_json_atomic(
        files.spec, {"argv": ["sh", "-c", "trap '' TERM; echo up; sleep 60"], "env": {}}, durable=False
    )
    files.grace.write_text("1\n")
    supervisor = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "vkpy.plugins.local_supervisor", str(tmp_path), "main"
    )
    await eventually(lambda: _text(files.log), lambda text: "stdout F up" in text)
    started = time.monotonic()
    supervisor.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(supervisor.wait(), 5) == 0
    assert 0.9 < time.monotonic() - started < 3
    record = json.loads(files.exit.read_text())
    assert record["exit_code"] == 137
    assert record["reason"] == "Error"
    assert record["message"] == "killed by SIGKILL after the grace period of 1s"
    assert record["started_at"] < record["finished_at"]


async def test_delete_also_kills_what_the_container_started(local: Local, tmp_path: Path) -> None:
    pidfile = tmp_path / "child"
    pod = make_pod(sh("main", f"sleep 60 & echo $! > {pidfile}; wait"))
    await local.transport.create_pod(local.node, pod)
    await local.wait_state(pod, "main", Running)
    await eventually(lambda: _text(pidfile), lambda text: text.endswith("\n"))
    child = int(pidfile.read_text())
    assert alive(child)
    await local.transport.delete_pod(local.node, pod, 5)
    await gone(local, pod)
    await eventually(lambda: _alive_async(child), lambda is_alive: not is_alive)


async def _text(path: Path) -> str:
    return path.read_text() if path.exists() else ""


async def _alive_async(pid: int) -> bool:
    return alive(pid)


async def test_deleting_an_unknown_pod_is_a_no_op(local: Local) -> None:
    pod = make_pod(sh("main", "true"))
    await local.transport.delete_pod(local.node, pod, 0)
    assert await local.status(pod) is None
    assert local.node.reports == []


async def test_a_deleted_pod_is_not_started_further(local: Local) -> None:
    pod = make_pod(sh("app", "sleep 60"), init=(sh("init", "sleep 0.5"),))
    await local.transport.create_pod(local.node, pod)
    await local.wait_state(pod, "init", Running, init=True)
    await local.transport.delete_pod(local.node, pod, 5)
    await gone(local, pod)
    await asyncio.sleep(0.3)
    assert await local.status(pod) is None
    assert await local.transport.list_pods(local.node) == []


# --- restart and logs ----------------------------------------------------------------------------


async def test_restart_container_keeps_the_previous_log(local: Local) -> None:
    pod = make_pod(sh("main", "echo run at $(date +%s%N); exit 1"))
    await local.transport.create_pod(local.node, pod)
    await local.wait_state(pod, "main", Terminated)
    first = await logs_of(local, pod, "main")
    with pytest.raises(LogsNotAvailable, match="previous"):
        await logs_of(local, pod, "main", previous=True)

    await local.transport.restart_container(local.node, pod, "main")
    await local.node.next_report(pod.uid)
    await local.wait_state(pod, "main", Terminated)
    second = await logs_of(local, pod, "main")
    assert second.startswith(b"run at ")
    assert second != first
    assert await logs_of(local, pod, "main", previous=True) == first

    await local.transport.restart_container(local.node, pod, "main")
    await local.wait_state(pod, "main", Terminated)
    assert await logs_of(local, pod, "main", previous=True) == second  # an older previous is replaced


async def test_restart_of_a_running_container_does_nothing(local: Local) -> None:
    pod = make_pod(sh("main", "echo once; sleep 60"))
    await local.transport.create_pod(local.node, pod)
    await local.wait_state(pod, "main", Running)
    pid = main_pid(local, pod, "main")
    await local.transport.restart_container(local.node, pod, "main")
    assert main_pid(local, pod, "main") == pid
    assert isinstance(await local.state(pod, "main"), Running)


async def test_logs_tail_since_and_unknown_containers(local: Local) -> None:
    pod = make_pod(sh("main", "for i in 1 2 3 4 5; do echo line $i; done; sleep 0.3; echo late"))
    await local.transport.create_pod(local.node, pod)
    await local.wait_state(pod, "main", Terminated)
    assert await logs_of(local, pod, "main", tail_lines=2) == b"line 5\nlate\n"
    lines = [line async for line in local.transport.get_container_logs(local.node, pod, "main", LogOptions())]
    assert lines[-1].time - lines[0].time >= datetime.timedelta(seconds=0.25)
    assert await logs_of(local, pod, "main", since=lines[-1].time) == b"late\n"
    with pytest.raises(LogsNotAvailable, match="not part of pod"):
        await logs_of(local, pod, "nope")


async def test_logs_of_a_container_not_started_yet(local: Local) -> None:
    pod = make_pod(sh("app", "true"), init=(sh("init", "sleep 1"),))
    await local.transport.create_pod(local.node, pod)
    with pytest.raises(LogsNotAvailable, match="has not started"):
        await logs_of(local, pod, "app")


async def test_follow_ends_when_the_container_exits(local: Local) -> None:
    pod = make_pod(sh("main", "echo start; sleep 1; echo end"))
    await local.transport.create_pod(local.node, pod)
    await local.wait_state(pod, "main", Running)
    received: list[tuple[float, bytes]] = []
    started = time.monotonic()
    async with asyncio.timeout(10):
        async for line in local.transport.get_container_logs(
            local.node, pod, "main", LogOptions(follow=True)
        ):
            received.append((time.monotonic() - started, line.data))
    assert [data for _, data in received] == [b"start\n", b"end\n"]
    assert received[0][0] < 0.8  # streamed as written, not at the end
    assert isinstance(await local.state(pod, "main"), Terminated)


async def test_follow_of_a_finished_container_or_previous_ends_at_once(local: Local) -> None:
    pod = make_pod(sh("main", "echo done"))
    await local.transport.create_pod(local.node, pod)
    await local.wait_state(pod, "main", Terminated)
    async with asyncio.timeout(2):
        assert await logs_of(local, pod, "main", follow=True) == b"done\n"
    await local.transport.restart_container(local.node, pod, "main")
    await local.wait_state(pod, "main", Terminated)
    async with asyncio.timeout(2):
        assert await logs_of(local, pod, "main", follow=True, previous=True) == b"done\n"


async def test_follow_ends_when_the_pod_is_deleted(local: Local) -> None:
    pod = make_pod(sh("main", "echo up; sleep 60"))
    await local.transport.create_pod(local.node, pod)
    await local.wait_state(pod, "main", Running)

    async def follow() -> bytes:
        return await logs_of(local, pod, "main", follow=True)

    task = asyncio.create_task(follow())
    await asyncio.sleep(0.5)
    assert not task.done()
    await local.transport.delete_pod(local.node, pod, 1)
    assert await asyncio.wait_for(task, 5) == b"up\n"


# --- adoption after a vkpy restart ---------------------------------------------------------------


async def test_a_new_transport_adopts_running_pods(tmp_path: Path) -> None:
    state = tmp_path / "state"
    first, first_node = new_transport(state)
    await first.node_start(first_node)
    pod = make_pod(sh("main", "echo before; sleep 1.5; echo after; exit 4"))
    try:
        await first.create_pod(first_node, pod)
        await eventually(
            lambda: first.get_pod_status(first_node, pod),
            lambda r: r is not None and isinstance(r.containers["main"], Running),
        )
        await first.node_stop(first_node)  # vkpy stops; the container keeps running

        second, second_node = new_transport(state)
        report = await second.get_pod_status(second_node, pod)  # from the files alone
        assert report is not None
        assert isinstance(report.containers["main"], Running)
        assert await second.list_pods(second_node) == [pod.uid]
        await second.node_start(second_node)

        lines = second.get_container_logs(second_node, pod, "main", LogOptions(follow=True))
        async with asyncio.timeout(10):
            assert [line.data async for line in lines] == [b"before\n", b"after\n"]
        # The follow ended because the adopted supervisor's end was seen, and pushed.
        assert pod.uid in second_node.reports
        report = await second.get_pod_status(second_node, pod)
        assert report is not None
        state_after = report.containers["main"]
        assert isinstance(state_after, Terminated)
        assert state_after.exit_code == 4
    finally:
        await clean_up(*new_transport(state))


async def test_adoption_resumes_the_init_sequence(tmp_path: Path) -> None:
    state = tmp_path / "state"
    first, first_node = new_transport(state)
    await first.node_start(first_node)
    pod = make_pod(sh("app", "echo app"), init=(sh("init", "sleep 1"),))
    try:
        await first.create_pod(first_node, pod)
        await eventually(
            lambda: first.get_pod_status(first_node, pod),
            lambda r: r is not None and isinstance(r.init_containers["init"], Running),
        )
        await first.node_stop(first_node)

        second, second_node = new_transport(state)
        await second.node_start(second_node)
        report = await eventually(
            lambda: second.get_pod_status(second_node, pod),
            lambda r: r is not None and isinstance(r.containers["app"], Terminated),
        )
        assert report is not None
        assert report.containers["app"] == Terminated(
            exit_code=0,
            reason="Completed",
            started_at=report.containers["app"].started_at,  # type: ignore[union-attr]
            finished_at=report.containers["app"].finished_at,  # type: ignore[union-attr]
        )
        await second.node_stop(second_node)
    finally:
        await clean_up(*new_transport(state))


async def test_a_lost_supervisor_is_reported_and_its_process_cleaned_up(local: Local) -> None:
    pod = make_pod(sh("main", "trap '' PIPE; sleep 60"))
    await local.transport.create_pod(local.node, pod)
    await local.wait_state(pod, "main", Running)
    supervisor = int(json.loads((local.transport.pod_dir(pod.uid) / "main.supervisor").read_text())["pid"])
    child = main_pid(local, pod, "main")
    os.kill(supervisor, signal.SIGKILL)  # as an OOM killer or a careless admin would
    await local.node.next_report(pod.uid)
    state = await local.wait_state(pod, "main", Terminated)
    assert (state.exit_code, state.reason) == (LOST_EXIT_CODE, LOST_REASON)
    assert alive(child)  # orphaned, still running
    await local.transport.delete_pod(local.node, pod, 1)
    await gone(local, pod)
    await eventually(lambda: _alive_async(child), lambda is_alive: not is_alive)


async def test_waiting_until_the_supervisor_runs(local: Local) -> None:
    pod = make_pod(sh("main", "sleep 60"))
    await local.transport.create_pod(local.node, pod)
    report = await local.status(pod)
    assert report is not None
    assert isinstance(report.containers["main"], Waiting | Running)


async def test_a_deletion_interrupted_by_a_vkpy_restart_is_finished(tmp_path: Path) -> None:
    state = tmp_path / "state"
    first, first_node = new_transport(state)
    await first.node_start(first_node)
    pod = make_pod(sh("main", "trap 'sleep 1; exit 0' TERM; while :; do sleep 0.1; done"))
    try:
        await first.create_pod(first_node, pod)
        await eventually(
            lambda: first.get_pod_status(first_node, pod),
            lambda r: r is not None and isinstance(r.containers["main"], Running),
        )
        await first.delete_pod(first_node, pod, 10)
        await first.node_stop(first_node)  # vkpy stops before the pod is gone
        assert await first.get_pod_status(first_node, pod) is not None

        second, second_node = new_transport(state)
        await second.node_start(second_node)
        await eventually(lambda: second.get_pod_status(second_node, pod), lambda r: r is None)
        assert pod.uid in second_node.reports
        assert await second.list_pods(second_node) == []
        await second.node_stop(second_node)
    finally:
        await clean_up(*new_transport(state))


async def test_concurrent_deletes_are_one(local: Local) -> None:
    pod = make_pod(sh("main", "sleep 60"))
    await local.transport.create_pod(local.node, pod)
    await local.node.next_report(pod.uid)  # running
    before = len(local.node.reports)
    await asyncio.gather(*(local.transport.delete_pod(local.node, pod, 1) for _ in range(3)))
    await gone(local, pod)
    await asyncio.sleep(0.2)
    assert local.node.reports[before:] == [pod.uid, pod.uid]  # the container ended, the pod went: once
