"""The local transport's files and threads: a pod folder is flushed before it is published, file work
runs in the transport's own threads, and the supervisor starts light and writes vkpy's log format."""

from __future__ import annotations

import asyncio
import datetime
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from local_helpers import clean_up, make_pod, new_transport, sh

from vkpy import Volume, VolumeFile
from vkpy.logs import format_cri_line, parse_cri_line
from vkpy.plugins.local_supervisor import MAX_RECORD_BYTES, SUPERVISOR_COMMAND, cri_records, main

# --- Watching file operations through audit hooks (they observe the real calls, change nothing) ---

_events: list[tuple[str, tuple[Any, ...], threading.Thread]] | None = None
_hooked = False


def _hook(event: str, args: tuple[Any, ...]) -> None:
    events = _events
    if events is not None and event in ("open", "os.mkdir", "os.rename"):
        events.append((event, args, threading.current_thread()))


@pytest.fixture
def file_events() -> Iterator[list[tuple[str, tuple[Any, ...], threading.Thread]]]:
    """The open, mkdir and rename calls made, in any thread, while the test runs."""
    global _events, _hooked
    if not _hooked:  # an audit hook stays for the process's life: one, idle between tests
        sys.addaudithook(_hook)
        _hooked = True
    _events = []
    try:
        yield _events
    finally:
        _events = None


async def test_a_pod_folder_is_flushed_before_it_is_published(
    tmp_path: Path, file_events: list[tuple[str, tuple[Any, ...], threading.Thread]]
) -> None:
    transport, node = new_transport(tmp_path / "state")
    await transport.node_start(node)
    pod = make_pod(
        sh("main", "sleep 60"),
        init=(sh("setup", "true"),),
        volumes=(
            Volume("config", "configMap", (VolumeFile("app.ini", b"[app]\n"), VolumeFile("a/b/c", b"deep"))),
            Volume("scratch", "emptyDir"),
        ),
    )
    threads: set[threading.Thread] = set()
    try:
        await transport.create_pod(node, pod)
        final = os.fspath(transport.pod_dir(pod.uid))
        renames = [(i, args) for i, (event, args, _) in enumerate(file_events) if event == "os.rename"]
        published, (building, _, *_) = next((i, a) for i, a in renames if os.fspath(a[1]) == final)
        building = os.fspath(building)

        def inside(path: Any) -> str | None:
            path = os.fspath(path)
            return path if path == building or path.startswith(building + "/") else None

        created = {building}
        synced: dict[str, int] = {}  # path: when it was opened read-only to be flushed
        for i, (event, args, _) in enumerate(file_events[:published]):
            path = inside(args[0])
            if path is None:
                continue
            if event == "os.mkdir" or (event == "open" and args[2] & os.O_CREAT):
                created.add(path)
            elif event == "open" and args[2] & os.O_ACCMODE == os.O_RDONLY:
                synced[path] = i
        names = {os.path.relpath(p, building) for p in created}
        assert names == {
            ".",
            "pod.json",
            "setup.spec.json",
            "main.spec.json",
            "volumes",
            "volumes/config",
            "volumes/config/app.ini",
            "volumes/config/a",
            "volumes/config/a/b",
            "volumes/config/a/b/c",
            "volumes/scratch",
        }
        assert created <= synced.keys()
        for path in created - {building}:
            assert synced[path] < synced[os.path.dirname(path)], path  # a folder after its entries
        # The building and the publishing happen in the transport's own threads.
        threads = {thread for _, args, thread in file_events if inside(args[0])}
        assert threads
        assert all(t.name.startswith("vkpy-local") for t in threads), threads
        assert not [p for p in (tmp_path / "state").iterdir() if p.name.startswith(".")]
    finally:
        await clean_up(transport, node)
    for thread in threads:  # node_stop ended the transport's threads
        thread.join(5)
        assert not thread.is_alive()


async def test_a_pod_without_volumes_has_no_volumes_folder(tmp_path: Path) -> None:
    transport, node = new_transport(tmp_path / "state")
    await transport.node_start(node)
    try:
        pod = make_pod(sh("main", "true"))
        await transport.create_pod(node, pod)
        assert not (transport.pod_dir(pod.uid) / "volumes").exists()
    finally:
        await clean_up(transport, node)


async def test_a_pod_folder_left_half_built_is_removed_at_start(tmp_path: Path) -> None:
    state = tmp_path / "state"
    leftover = state / ".creating-0a1b-1234abcd"
    leftover.mkdir(parents=True)
    (leftover / "pod.json").write_text("{}")
    transport, node = new_transport(state)
    await transport.node_start(node)
    try:
        assert not leftover.exists()
        assert list(await transport.list_pods(node)) == []
    finally:
        await clean_up(transport, node)


async def test_the_transport_works_again_after_a_stop(tmp_path: Path) -> None:
    transport, node = new_transport(tmp_path / "state")
    await transport.node_start(node)
    await transport.node_stop(node)
    await transport.node_start(node)
    try:
        pod = make_pod(sh("main", "true"))
        await transport.create_pod(node, pod)
        assert list(await transport.list_pods(node)) == [pod.uid]
    finally:
        await clean_up(transport, node)


# --- The supervisor -------------------------------------------------------------------------------


def _reference(time: datetime.datetime, stream: str, data: bytes) -> bytes:
    # What the supervisor wrote when it used vkpy.logs: each line through format_cri_line.
    out = []
    for line in data.splitlines(keepends=True):
        while len(line) > MAX_RECORD_BYTES:
            out.append(format_cri_line(time, stream, line[:MAX_RECORD_BYTES]))
            line = line[MAX_RECORD_BYTES:]
        out.append(format_cri_line(time, stream, line))
    return b"".join(out)


@pytest.mark.parametrize(
    "data",
    [
        b"hi\n",
        b"a\nb\n\n",
        b"partial",
        b"line\npartial",
        b"a\r\nb\rc",
        b"x" * 40000 + b"\ntail",
        b"y" * MAX_RECORD_BYTES + b"\n",
        b"z" * (2 * MAX_RECORD_BYTES),
        b"",
    ],
)
@pytest.mark.parametrize(
    "time",
    [
        datetime.datetime(2026, 11, 28, 8, 0, 0, 123456, tzinfo=datetime.UTC),
        datetime.datetime(2026, 11, 28, 8, 0, 0),
        datetime.datetime(2026, 11, 28, 9, 30, 5, 7, tzinfo=datetime.timezone(datetime.timedelta(hours=2))),
    ],
)
def test_the_supervisor_writes_the_cri_records_of_vkpy_logs(time: datetime.datetime, data: bytes) -> None:
    records = cri_records(time, "stderr", data)
    assert records == _reference(time, "stderr", data)
    for raw in records.splitlines():
        line = parse_cri_line(raw)
        assert line is not None
        assert line.stream == "stderr"
        assert line.time == (time if time.tzinfo else time.replace(tzinfo=datetime.UTC))


def test_the_supervisor_starts_on_the_standard_library_alone() -> None:
    """Its start is paid for every container: no vkpy, attrs, typing, pathlib or argparse."""
    command = [SUPERVISOR_COMMAND[0], "-X", "importtime", *SUPERVISOR_COMMAND[1:], "--help"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode == 0, result.stderr
    assert "POD_DIR CONTAINER" in result.stdout
    imported = {line.rsplit("|", 1)[1].strip() for line in result.stderr.splitlines() if "|" in line}
    assert "local_supervisor" in imported
    heavy = {"vkpy", "attr", "attrs", "typing", "pathlib", "argparse", "asyncio", "structlog", "pluggy"}
    assert not imported & heavy


def test_the_supervisor_command_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    assert "POD_DIR CONTAINER" in capsys.readouterr().out
    assert main(["only-a-folder"]) == 2
    assert main(["pod", "main", "--ready-fd=x"]) == 2
    assert "bad arguments" in capsys.readouterr().err


async def test_the_supervisor_runs_from_a_pod_folder_holding_stdlib_names(tmp_path: Path) -> None:
    """The pod folder is its working directory and containers write there: nothing in it is
    imported by the supervisor, even a file named after a standard module."""
    (tmp_path / "json.py").write_text("raise SystemExit('the wrong json')\n")
    (tmp_path / "main.spec.json").write_text('{"argv": ["sh", "-c", "echo ok"], "env": {}}')
    process = await asyncio.create_subprocess_exec(
        *SUPERVISOR_COMMAND, str(tmp_path), "main", cwd=tmp_path, env={"LANG": "C.UTF-8"}
    )
    assert await asyncio.wait_for(process.wait(), 10) == 0
    assert b"stdout F ok\n" in (tmp_path / "main.log").read_bytes()
    assert b'"exit_code": 0' in (tmp_path / "main.exit").read_bytes()
