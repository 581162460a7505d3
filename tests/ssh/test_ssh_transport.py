"""The ssh transport against a real OpenSSH sshd: pods as supervised process groups on the "device"."""

from __future__ import annotations

import asyncio
import datetime
import os
import stat
from pathlib import Path

import pytest
from ssh_helpers import Device, eventually, make_pod, sh, terminated

from vkpy import (
    Container,
    LogOptions,
    LogsNotAvailable,
    PodRejected,
    Running,
    Terminated,
    Volume,
    VolumeFile,
    VolumeMount,
    Waiting,
)


async def test_the_device_is_prepared_and_reports_its_capacity(device: Device) -> None:
    transport, node = device.transport, device.node
    assert node.health is not None
    assert node.health.reachable
    assert (await transport.node_health(node)).reachable
    capacity = await transport.node_capacity(node)
    assert capacity is not None
    assert capacity["pods"] == "110"
    assert int(capacity["cpu"]) >= 1
    assert capacity["memory"].endswith("Ki")
    script = Path(transport.script)
    assert stat.S_IMODE(script.stat().st_mode) == 0o700
    state = Path(device.options.state_dir)
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    assert await transport.list_pods(node) == []


async def test_init_containers_run_in_order_then_the_app_with_its_exit_code(
    device: Device, tmp_path: Path
) -> None:
    order = tmp_path / "order"
    pod = make_pod(
        sh("main", f"echo main >> {order}; echo out; echo err >&2; exit 3"),
        init=(sh("first", f"sleep 0.3; echo first >> {order}"), sh("second", f"echo second >> {order}")),
    )
    await device.transport.create_pod(device.node, pod)
    await device.transport.create_pod(device.node, pod)  # idempotent
    report = await eventually(lambda: device.status(pod), lambda r: terminated(r) is not None)
    assert report is not None
    main = terminated(report)
    assert main is not None
    assert main.exit_code == 3
    assert main.reason == "Error"
    assert main.started_at is not None
    assert main.finished_at is not None
    for name in ("first", "second"):
        state = report.init_containers[name]
        assert isinstance(state, Terminated)
        assert state.exit_code == 0
        assert state.reason == "Completed"
    assert order.read_text().split() == ["first", "second", "main"]
    assert sorted((await device.text(pod)).split()) == ["err", "out"]
    streams = {line.data: line.stream for line in await device.logs(pod)}
    assert streams == {b"out\n": "stdout", b"err\n": "stderr"}
    assert pod.uid in device.node.reports  # pushed, not only polled
    # The second create found the pod in place and left nothing of its attempt behind.
    assert [p.name for p in Path(device.transport.pods_root).iterdir()] == [pod.uid]


async def test_a_failed_init_container_stops_the_pod_until_restarted(device: Device, tmp_path: Path) -> None:
    flag = tmp_path / "ok"
    pod = make_pod(sh("main", "echo app"), init=(sh("setup", f"test -e {flag}"),), restart_policy="OnFailure")
    await device.transport.create_pod(device.node, pod)
    report = await eventually(lambda: device.status(pod), lambda r: terminated(r, "setup") is not None)
    assert report is not None
    assert "setup" in report.message
    assert "exit code 1" in report.message
    assert report.containers["main"] == Waiting("PodInitializing")
    flag.touch()
    await device.transport.restart_container(device.node, pod, "setup")
    report = await eventually(lambda: device.status(pod), lambda r: terminated(r) is not None)
    assert terminated(report) == Terminated(
        exit_code=0,
        reason="Completed",
        started_at=terminated(report).started_at,  # type: ignore[union-attr]
        finished_at=terminated(report).finished_at,  # type: ignore[union-attr]
    )


async def test_arguments_and_env_arrive_verbatim_and_nothing_is_executed(
    device: Device, tmp_path: Path
) -> None:
    canary = tmp_path / "pwned"
    nasty = [
        f"; touch {canary}",
        f"$(touch {canary})",
        f"`touch {canary}`",
        'it\'s "quoted" \\ back',
        "two\nlines",
        "${HOME} $PATH * ?",
        "-n",
        "",
    ]
    env = (("NASTY", f"$(touch {canary}); `id` 'x' \"y\"\nz"), ("WEIRD_1", "a=b=c"))
    pod = make_pod(
        Container(name="main", command=("printf", "[%s]\\n"), args=tuple(nasty), env=env),
        Container(name="env", command=("sh", "-c", 'printf "%s|" "$NASTY" "$WEIRD_1"')),
    )
    # The second container reads its own env: give it the same one.
    pod = make_pod(
        pod.containers[0],
        Container(name="env", command=pod.containers[1].command, env=env),
    )
    await device.transport.create_pod(device.node, pod)
    for name in ("main", "env"):
        await eventually(lambda n=name: device.status(pod), lambda r, n=name: terminated(r, n) is not None)  # type: ignore[misc]
    out = await device.text(pod, "main")
    assert out == "".join(f"[{word}]\n" for word in nasty)
    assert await device.text(pod, "env") == f"{env[0][1]}|a=b=c|"
    assert not canary.exists()
    run_file = device.pod_dir(pod) / "main.run"
    assert stat.S_IMODE(run_file.stat().st_mode) == 0o600


async def test_a_program_named_with_an_equals_sign_or_missing(device: Device, tmp_path: Path) -> None:
    program = tmp_path / "a=b"
    program.write_text("#!/bin/sh\necho ran $0\n")
    program.chmod(0o755)
    pod = make_pod(
        Container(name="main", command=(str(program),)),
        Container(name="missing", command=("no-such-program-vkpy",)),
        Container(name="nowhere", command=("true",), working_dir=str(tmp_path / "absent")),
    )
    await device.transport.create_pod(device.node, pod)
    report = await eventually(
        lambda: device.status(pod), lambda r: all(terminated(r, n) for n in ("main", "missing", "nowhere"))
    )
    assert (await device.text(pod)).startswith("ran ")
    missing = terminated(report, "missing")
    assert missing is not None
    assert missing.exit_code == 127
    nowhere = terminated(report, "nowhere")
    assert nowhere is not None
    assert nowhere.exit_code == 128
    assert nowhere.reason == "ContainerCannotRun"
    assert "working directory" in nowhere.message


async def test_pods_that_cannot_run_here_are_rejected(device: Device) -> None:
    with pytest.raises(PodRejected, match="neither command nor args"):
        await device.transport.create_pod(device.node, make_pod(Container(name="main", image="nginx")))
    traversal = Volume("cfg", "configMap", files=(VolumeFile("../../escape", b"x"),))
    with pytest.raises(PodRejected, match="stay inside"):
        await device.transport.create_pod(device.node, make_pod(sh("main", "true"), volumes=(traversal,)))
    mount = VolumeMount("cfg", "../up")
    cfg = Volume("cfg", "configMap")
    with pytest.raises(PodRejected, match="stay inside"):
        await device.transport.create_pod(
            device.node, make_pod(sh("main", "true", volume_mounts=(mount,)), volumes=(cfg,))
        )
    assert await device.transport.list_pods(device.node) == []


async def test_volumes_land_in_the_pod_folder_with_tight_modes(device: Device) -> None:
    secret = Volume("creds", "secret", files=(VolumeFile("token", b"s3cr3t"),), secret=True)
    config = Volume(
        "app-config",
        "configMap",
        files=(VolumeFile("app.ini", b"[a]\n"), VolumeFile("bin/run.sh", b"x", 0o755)),
    )
    scratch = Volume("scratch", "emptyDir")
    pod = make_pod(
        sh(
            "main",
            'cat "$VKPY_VOLUME_CREDS/token"; echo; cat conf/app.ini; ls -d "$VKPY_VOLUME_SCRATCH"',
            volume_mounts=(
                VolumeMount("creds", "/run/secrets/creds"),
                VolumeMount("app-config", "conf"),
                VolumeMount("scratch", "/tmp/scratch"),
            ),
        ),
        volumes=(secret, config, scratch),
    )
    await device.transport.create_pod(device.node, pod)
    await eventually(lambda: device.status(pod), lambda r: terminated(r) is not None)
    root = device.pod_dir(pod)
    assert (await device.text(pod)).splitlines() == ["s3cr3t", "[a]", str(root / "volumes" / "scratch")]
    mode = lambda p: stat.S_IMODE(os.lstat(p).st_mode)  # noqa: E731
    assert mode(root) == 0o700
    assert mode(root / "volumes") == 0o700
    assert mode(root / "volumes" / "creds" / "token") == 0o600
    assert mode(root / "volumes" / "app-config" / "app.ini") == 0o644
    assert mode(root / "volumes" / "app-config" / "bin" / "run.sh") == 0o744
    assert os.readlink(root / "work" / "conf") == str(root / "volumes" / "app-config")
    assert not Path("/run/secrets/creds").exists()


async def test_logs_tail_since_and_previous_after_a_restart(device: Device) -> None:
    pod = make_pod(sh("main", "for i in 1 2 3 4 5; do echo line $i; done; exit 1"), restart_policy="Always")
    await device.transport.create_pod(device.node, pod)
    await eventually(lambda: device.status(pod), lambda r: terminated(r) is not None)
    assert (await device.text(pod, tail_lines=2)).splitlines() == ["line 4", "line 5"]
    assert await device.text(pod, tail_lines=0) == ""
    future = datetime.datetime.now(datetime.UTC) + datetime.timedelta(hours=1)
    assert await device.text(pod, since=future) == ""
    with pytest.raises(LogsNotAvailable):
        await device.logs(pod, previous=True)
    await device.transport.restart_container(device.node, pod, "main")
    assert (await device.text(pod, previous=True)).splitlines()[-1] == "line 5"
    await eventually(lambda: device.status(pod), lambda r: terminated(r) is not None)
    assert len((await device.text(pod)).splitlines()) == 5
    with pytest.raises(LogsNotAvailable):
        await device.logs(pod, container="nope")


async def test_follow_streams_until_the_container_exits(device: Device) -> None:
    pod = make_pod(sh("main", "for i in 1 2 3 4; do echo tick $i; sleep 0.3; done; printf tail"))
    await device.transport.create_pod(device.node, pod)
    await eventually(lambda: device.status(pod), lambda r: isinstance(r and r.containers["main"], Running))
    lines = await asyncio.wait_for(device.logs(pod, follow=True), 20)
    assert [line.data for line in lines] == [b"tick 1\n", b"tick 2\n", b"tick 3\n", b"tick 4\n", b"tail"]
    times = [line.time for line in lines]
    assert times == sorted(times)
    assert times[-1] - times[0] >= datetime.timedelta(seconds=0.8)  # stamped as written, not as read


async def test_a_follower_closed_early_releases_its_file(device: Device) -> None:
    pod = make_pod(sh("main", "while :; do echo x; sleep 0.1; done"))
    await device.transport.create_pod(device.node, pod)
    await eventually(lambda: device.status(pod), lambda r: isinstance(r and r.containers["main"], Running))
    stream = device.transport.get_container_logs(device.node, pod, "main", LogOptions(follow=True))
    first = await asyncio.wait_for(anext(stream), 10)
    assert first.data == b"x\n"
    await stream.aclose()
    assert device.transport.link.connected


async def test_delete_stops_the_process_group_and_removes_the_folder(device: Device) -> None:
    pod = make_pod(
        sh("main", "trap '' TERM; sleep 1001 & sleep 1002 & wait"),
        sh("polite", "trap 'echo bye; exit 0' TERM; while :; do sleep 0.1; done"),
        grace=1,
    )
    await device.transport.create_pod(device.node, pod)
    await eventually(
        lambda: device.status(pod),
        lambda r: r is not None and all(isinstance(s, Running) for s in r.containers.values()),
    )
    assert "sleep 1001" in device.run("ps -eo args")
    root = device.pod_dir(pod)
    await device.transport.delete_pod(device.node, pod, 1)
    await device.transport.delete_pod(device.node, pod, 1)  # a second request changes nothing
    await eventually(lambda: device.status(pod), lambda r: r is None, timeout=20)
    assert not root.exists()
    processes = device.run("ps -eo args")
    assert "sleep 1001" not in processes
    assert "sleep 1002" not in processes
    # Deleting what the device does not hold is not an error.
    await device.transport.delete_pod(device.node, pod, 0)


async def test_a_lost_supervisor_is_reported_and_a_restart_runs_once(device: Device) -> None:
    pod = make_pod(sh("main", "echo started; exec sleep 1003"), restart_policy="Always")
    await device.transport.create_pod(device.node, pod)
    await eventually(lambda: device.status(pod), lambda r: isinstance(r and r.containers["main"], Running))
    supervisor = int((device.pod_dir(pod) / "main.sup").read_text().split()[0])
    os.kill(supervisor, 9)
    report = await eventually(lambda: device.status(pod), lambda r: terminated(r) is not None)
    lost = terminated(report)
    assert lost is not None
    assert lost.reason == "ContainerStatusUnknown"
    assert lost.exit_code == 137
    await device.transport.restart_container(device.node, pod, "main")
    await eventually(lambda: device.status(pod), lambda r: isinstance(r and r.containers["main"], Running))
    assert device.run("ps -eo args").count("sleep 1003") == 1


async def test_a_burst_of_pods_is_read_by_shared_sweeps_never_pod_by_pod(device: Device) -> None:
    transport, node = device.transport, device.node
    commands: list[str] = []
    for channel in {transport.sweeps, *transport.control.channels}:
        call = channel.call

        async def counted(command: str, *words: str, _call=call, **kwargs):  # type: ignore[no-untyped-def]
            commands.append(command)
            return await _call(command, *words, **kwargs)

        channel.call = counted  # type: ignore[method-assign]
    pods = [make_pod(Container(name="main", command=("sleep", "30"))) for _ in range(12)]

    async def create_then_read(pod: object) -> object:
        await transport.create_pod(node, pod)  # type: ignore[arg-type]
        # Asked right after the change: answered by a sweep that started after it, never older.
        return await transport.get_pod_status(node, pod)  # type: ignore[arg-type]

    reports = await asyncio.gather(*(create_then_read(pod) for pod in pods))
    assert all(report is not None for report in reports)
    assert commands.count("start") == len(pods)
    assert "status" not in commands
    sweeps = commands.count("sweep")
    assert 1 <= sweeps < len(pods)
    # Asked together again with nothing changed: the latest sweep answers (the sweeper's own
    # rounds may go on meanwhile).
    before = len(commands)
    await asyncio.gather(*(transport.get_pod_status(node, pod) for pod in pods))
    assert commands[before:] in ([], ["sweep"])
    for pod in pods:
        await eventually(
            lambda p=pod: transport.get_pod_status(node, p),  # type: ignore[misc]
            lambda r: isinstance(r and r.containers["main"], Running),
        )
