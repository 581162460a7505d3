"""The local transport runs real processes: lifecycle, env, argv, volumes, init containers, errors."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
from local_helpers import Local, RecordingNode, eventually, make_pod, sh

from vkpy import (
    Container,
    LogOptions,
    PodRejected,
    Running,
    Terminated,
    Volume,
    VolumeFile,
    VolumeMount,
    Waiting,
)
from vkpy.logs import parse_cri_line
from vkpy.plugins import local as local_module
from vkpy.plugins.loader import load_plugins
from vkpy.plugins.local import LocalOptions, LocalTransport, volume_env_name


async def logs_of(local: Local, pod: object, container: str, **options: object) -> bytes:
    lines = local.transport.get_container_logs(local.node, pod, container, LogOptions(**options))  # type: ignore[arg-type]
    return b"".join([line.data async for line in lines])


def test_the_plugin_registers_the_local_transport(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VKPY_LOAD_PLUGINS", "local")
    registry = load_plugins()
    assert registry.errors == {}
    assert registry.transports["local"] is LocalTransport
    assert registry.infos["local"].transports == ("local",)
    assert registry.infos["local"].module == local_module.__name__


async def test_a_pod_runs_to_its_exit_and_the_end_is_pushed(local: Local) -> None:
    pod = make_pod(sh("main", "echo hi; echo err >&2; sleep 0.5; exit 3"))
    await local.transport.create_pod(local.node, pod)
    await local.node.next_report(pod.uid)  # pushed once the program runs
    running = await local.state(pod, "main")
    assert isinstance(running, Running)
    assert running.started_at is not None
    await local.node.next_report(pod.uid)  # pushed when it ends
    state = await local.state(pod, "main")
    assert isinstance(state, Terminated)
    assert (state.exit_code, state.reason) == (3, "Error")
    assert state.started_at == running.started_at
    assert state.finished_at is not None
    assert state.finished_at > state.started_at

    records = [
        parse_cri_line(raw)
        for raw in (local.transport.pod_dir(pod.uid) / "main.log").read_bytes().splitlines()
    ]
    # stdout and stderr are separate pipes: their relative order is not defined.
    assert sorted((r.stream, r.data) for r in records if r) == [("stderr", b"err\n"), ("stdout", b"hi\n")]
    assert len(records) == 2
    logs = await logs_of(local, pod, "main")
    assert sorted(logs.splitlines(keepends=True)) == [b"err\n", b"hi\n"]


async def test_create_pod_is_idempotent(local: Local) -> None:
    pod = make_pod(sh("main", "echo once; sleep 30"))
    await local.transport.create_pod(local.node, pod)
    await local.wait_state(pod, "main", Running)
    supervisor = (local.transport.pod_dir(pod.uid) / "main.supervisor").read_text()
    await local.transport.create_pod(local.node, pod)
    await local.transport.update_pod(local.node, pod)
    assert (local.transport.pod_dir(pod.uid) / "main.supervisor").read_text() == supervisor
    assert await local.transport.list_pods(local.node) == [pod.uid]
    # Running means started: the output reaches the log a moment later, and only once.
    await eventually(lambda: logs_of(local, pod, "main"), lambda logs: logs == b"once\n")


async def test_env_and_working_dir_are_applied_and_vkpy_env_does_not_leak(
    local: Local, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KUBECONFIG", "/secret/kubeconfig")
    monkeypatch.setenv("VKPY_LEAK_CHECK", "leaked")
    workdir = tmp_path / "work"
    workdir.mkdir()
    pod = make_pod(
        Container(
            name="main",
            command=("sh", "-c", "pwd; env"),
            env=(("GREETING", "hello world"),),
            working_dir=str(workdir),
        ),
        Container(name="default-dir", command=("pwd",)),
    )
    await local.transport.create_pod(local.node, pod)
    await local.wait_state(pod, "main", Terminated)
    await local.wait_state(pod, "default-dir", Terminated)
    lines = (await logs_of(local, pod, "main")).decode().splitlines()
    assert lines[0] == str(workdir)
    env = dict(line.split("=", 1) for line in lines[1:] if "=" in line)
    assert env["GREETING"] == "hello world"
    assert env["HOSTNAME"] == pod.name
    assert env["HOME"]
    assert env["PATH"]
    assert "KUBECONFIG" not in env
    assert "VKPY_LEAK_CHECK" not in env
    assert (await logs_of(local, pod, "default-dir")).decode().strip() == str(
        local.transport.pod_dir(pod.uid)
    )


async def test_argv_is_not_interpreted_by_a_shell(local: Local, tmp_path: Path) -> None:
    marker = tmp_path / "x"
    hostile = f"$(touch {marker}); rm -rf `pwd` && echo *"
    pod = make_pod(Container(name="main", command=("echo",), args=(hostile, "'quoted'")))
    await local.transport.create_pod(local.node, pod)
    state = await local.wait_state(pod, "main", Terminated)
    assert state.exit_code == 0
    assert await logs_of(local, pod, "main") == f"{hostile} 'quoted'\n".encode()
    assert not marker.exists()


async def test_args_alone_are_the_argv(local: Local) -> None:
    pod = make_pod(Container(name="main", args=("echo", "from args")))
    await local.transport.create_pod(local.node, pod)
    await local.wait_state(pod, "main", Terminated)
    assert await logs_of(local, pod, "main") == b"from args\n"


async def test_unknown_executable_cannot_run(local: Local) -> None:
    pod = make_pod(
        Container(name="missing", command=("no-such-program-vkpy",)),
        Container(name="empty"),
        Container(name="bad-dir", command=("true",), working_dir="/no/such/dir"),
    )
    await local.transport.create_pod(local.node, pod)
    missing = await local.wait_state(pod, "missing", Terminated)
    assert (missing.exit_code, missing.reason) == (127, "ContainerCannotRun")
    assert "no-such-program-vkpy" in missing.message
    assert "not found" in missing.message
    empty = await local.wait_state(pod, "empty", Terminated)
    assert (empty.exit_code, empty.reason) == (128, "ContainerCannotRun")
    assert "neither command nor args" in empty.message
    bad_dir = await local.wait_state(pod, "bad-dir", Terminated)
    assert (bad_dir.exit_code, bad_dir.reason) == (128, "ContainerCannotRun")
    assert "/no/such/dir" in bad_dir.message


async def test_exit_by_signal_is_128_plus_the_signal(local: Local) -> None:
    pod = make_pod(sh("main", "kill -KILL $$"))
    await local.transport.create_pod(local.node, pod)
    state = await local.wait_state(pod, "main", Terminated)
    assert (state.exit_code, state.reason) == (137, "Error")
    assert "SIGKILL" in state.message


async def test_long_lines_are_split_into_partial_records(local: Local) -> None:
    pod = make_pod(sh("main", "head -c 40000 /dev/zero | tr '\\0' a; echo; printf tail"))
    await local.transport.create_pod(local.node, pod)
    await local.wait_state(pod, "main", Terminated)
    raw = (local.transport.pod_dir(pod.uid) / "main.log").read_bytes().splitlines()
    tags = [record.split(b" ")[2] for record in raw]
    assert tags[-1] == b"P"  # output ended without a newline
    assert b"F" in tags
    assert tags.count(b"P") >= 3
    assert await logs_of(local, pod, "main") == b"a" * 40000 + b"\ntail"


async def test_init_containers_run_in_order_before_the_app(local: Local, tmp_path: Path) -> None:
    trace = tmp_path / "trace"
    pod = make_pod(
        sh("app", f"echo app >> {trace}; sleep 30"),
        init=(
            sh("first", f"sleep 0.3; echo first >> {trace}"),
            sh("second", f"echo second >> {trace}"),
        ),
    )
    await local.transport.create_pod(local.node, pod)
    report = await local.status(pod)
    assert report is not None
    assert report.containers["app"] == Waiting("PodInitializing")
    await local.wait_state(pod, "app", Running)
    report = await local.status(pod)
    assert report is not None
    assert all(isinstance(s, Terminated) and s.exit_code == 0 for s in report.init_containers.values())
    await eventually(lambda: _read(trace), lambda text: text.count("\n") == 3)
    assert trace.read_text().split() == ["first", "second", "app"]


async def _read(path: Path) -> str:
    return path.read_text() if path.exists() else ""


async def test_a_failing_init_container_stops_the_pod_and_a_restart_resumes_it(
    local: Local, tmp_path: Path
) -> None:
    flag = tmp_path / "ok"
    pod = make_pod(
        sh("app", "echo app"),
        init=(sh("check", f"test -e {flag}"), sh("after", "true")),
    )
    await local.transport.create_pod(local.node, pod)
    check = await local.wait_state(pod, "check", Terminated, init=True)
    assert check.exit_code == 1
    report = await local.status(pod)
    assert report is not None
    assert report.init_containers["after"] == Waiting("PodInitializing")
    assert report.containers["app"] == Waiting("PodInitializing")
    assert "check" in report.message
    assert not (local.transport.pod_dir(pod.uid) / "after.log").exists()

    flag.touch()  # the core restarts the init container (restartPolicy); now it succeeds
    await local.transport.restart_container(local.node, pod, "check")
    app = await local.wait_state(pod, "app", Terminated)
    assert app.exit_code == 0
    assert await logs_of(local, pod, "app") == b"app\n"


async def test_volumes_are_files_with_tight_permissions(local: Local) -> None:
    pod = make_pod(
        sh(
            "main",
            'cat "$VKPY_VOLUME_CREDS/token" "$VKPY_VOLUME_APP_CONFIG/conf/app.ini"; '
            '"$VKPY_VOLUME_APP_CONFIG/run.sh"',
            volume_mounts=(VolumeMount("creds", "/var/run/creds"), VolumeMount("app-config", "/etc/app")),
        ),
        volumes=(
            Volume("creds", "secret", (VolumeFile("token", b"s3cret\n", 0o644),), secret=True),
            Volume(
                "app-config",
                "configMap",
                (
                    VolumeFile("conf/app.ini", b"[app]\n"),
                    VolumeFile("run.sh", b"#!/bin/sh\necho ran\n", 0o755),
                ),
            ),
            Volume("scratch", "emptyDir"),
        ),
    )
    await local.transport.create_pod(local.node, pod)
    state = await local.wait_state(pod, "main", Terminated)
    assert state.exit_code == 0, state
    assert await logs_of(local, pod, "main") == b"s3cret\n[app]\nran\n"
    pod_dir = local.transport.pod_dir(pod.uid)

    def mode(path: Path) -> int:
        return stat.S_IMODE(path.stat().st_mode)

    assert mode(pod_dir) == 0o700
    assert mode(pod_dir / "volumes" / "creds") == 0o700
    assert mode(pod_dir / "volumes" / "creds" / "token") == 0o600
    assert mode(pod_dir / "volumes" / "app-config" / "conf" / "app.ini") == 0o644
    assert mode(pod_dir / "volumes" / "app-config" / "run.sh") == 0o744
    assert (pod_dir / "volumes" / "scratch").is_dir()
    assert mode(pod_dir / "main.log") == 0o600
    assert mode(pod_dir / "main.exit") == 0o600
    assert mode(pod_dir / "main.spec.json") == 0o600
    assert volume_env_name("app-config") == "VKPY_VOLUME_APP_CONFIG"


@pytest.mark.parametrize("path", ["../escape", "/etc/passwd", "a/../../b", ""])
async def test_volume_paths_cannot_escape(local: Local, path: str) -> None:
    pod = make_pod(sh("main", "true"), volumes=(Volume("v", "configMap", (VolumeFile(path, b"x"),)),))
    with pytest.raises(PodRejected, match="inside the volume"):
        await local.transport.create_pod(local.node, pod)
    assert await local.status(pod) is None
    assert await local.transport.list_pods(local.node) == []


async def test_names_that_are_not_file_safe_are_rejected(local: Local) -> None:
    with pytest.raises(PodRejected, match="container name"):
        await local.transport.create_pod(local.node, make_pod(sh("../x", "true")))
    with pytest.raises(PodRejected, match="volume name"):
        await local.transport.create_pod(
            local.node, make_pod(sh("c", "true"), volumes=(Volume("a/b", "emptyDir"),))
        )


async def test_max_pods_is_enforced_and_advertised(tmp_path: Path) -> None:
    node = RecordingNode()
    transport = LocalTransport(node, LocalOptions(state_dir=str(tmp_path / "s"), max_pods=1))
    await transport.node_start(node)
    try:
        capacity = await transport.node_capacity(node)
        assert capacity["pods"] == "1"
        assert int(capacity["cpu"]) == os.cpu_count()
        assert capacity["memory"].endswith("Ki")
        await transport.create_pod(node, make_pod(sh("main", "true")))
        with pytest.raises(PodRejected, match="max_pods") as rejected:
            await transport.create_pod(node, make_pod(sh("main", "true")))
        assert rejected.value.reason == "OutOfpods"
    finally:
        from local_helpers import clean_up

        await clean_up(transport, node)


async def test_node_health_and_state_dir(tmp_path: Path) -> None:
    node = RecordingNode()
    state_dir = tmp_path / "deep" / "state"
    transport = LocalTransport(node, LocalOptions(state_dir=str(state_dir)))
    assert (await transport.node_health(node)).reachable is False
    await transport.node_start(node)
    assert stat.S_IMODE(state_dir.stat().st_mode) == 0o700
    assert (await transport.node_health(node)).reachable is True
    await transport.node_stop(node)


def test_default_state_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
    transport = LocalTransport(RecordingNode("edge-1"), LocalOptions())
    assert transport.state_dir == tmp_path / "vkpy" / "local" / "edge-1"
    monkeypatch.delenv("XDG_STATE_HOME")
    transport = LocalTransport(RecordingNode("edge-1"), LocalOptions())
    assert transport.state_dir == Path.home() / ".local" / "state" / "vkpy" / "local" / "edge-1"


async def test_pod_json_describes_the_pod(local: Local) -> None:
    pod = make_pod(sh("main", "true"), init=(sh("setup", "true"),))
    await local.transport.create_pod(local.node, pod)
    meta = json.loads((local.transport.pod_dir(pod.uid) / "pod.json").read_text())
    assert meta["uid"] == pod.uid
    assert (meta["namespace"], meta["name"]) == (pod.namespace, pod.name)
    assert meta["init_containers"] == ["setup"]
    assert meta["containers"] == ["main"]
