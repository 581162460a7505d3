"""The link: host keys, credentials, a cut or silent link, reconnection, and OpenSSH's session limit."""

from __future__ import annotations

import asyncio
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from ssh_helpers import Device, RecordingNode, eventually, make_pod, sh, ssh_options, terminated
from vkpy_ssh import SshOptions, SshTransport

from vkpy import DeviceHealth, DeviceUnreachable, LogOptions, Running
from vkpy.config import ConfigValidationError, structure
from vkpy.testing.sshd import SshServer, generate_key


def fingerprint(public_key: Path) -> str:
    return subprocess.run(
        ["ssh-keygen", "-lf", str(public_key)], capture_output=True, text=True, check=True
    ).stdout.split()[1]


async def _health_after_start(node: RecordingNode, options: SshOptions) -> DeviceHealth:
    transport = SshTransport(node, options)
    await transport.node_start(node)
    try:
        return await transport.node_health(node)
    finally:
        await transport.node_stop(node)


# -- configuration ------------------------------------------------------------------------------------


def test_options_errors_name_the_key_path() -> None:
    with pytest.raises(ConfigValidationError) as caught:
        structure(SshOptions, {"host": "pi", "user": "pi", "port": 70000, "tmeout": 1}, "nodes[0].ssh")
    text = str(caught.value)
    assert "nodes[0].ssh.port: a port must be between 1 and 65535" in text
    assert "nodes[0].ssh.tmeout: unknown key" in text
    with pytest.raises(ConfigValidationError, match=r"nodes\[0\]\.ssh\.state_dir: not a usable folder"):
        structure(
            SshOptions,
            {"host": "pi", "user": "pi", "use_agent": True, "state_dir": "rel/dir"},
            "nodes[0].ssh",
        )
    with pytest.raises(
        ConfigValidationError, match=r"nodes\[0\]\.ssh\.identity_file: no authentication method"
    ):
        structure(SshOptions, {"host": "pi", "user": "pi"}, "nodes[0].ssh")
    with pytest.raises(ConfigValidationError, match=r"ssh\.host: missing required key"):
        structure(SshOptions, {"user": "pi", "use_agent": True}, "ssh")


def test_options_defaults() -> None:
    options = structure(SshOptions, {"host": "pi.local", "user": "pi", "identity_file": "~/.ssh/id"})
    assert options.port == 22
    assert options.known_hosts == Path.home() / ".ssh" / "known_hosts"
    assert options.trust_on_first_use is False
    assert options.state_dir == "~/.vkpy"
    assert options.identity_file == Path.home() / ".ssh" / "id"
    assert options.known_hosts_pattern == "pi.local"
    assert (
        structure(
            SshOptions, {"host": "10.0.0.2", "user": "pi", "port": 2222, "use_agent": True}
        ).known_hosts_pattern
        == "[10.0.0.2]:2222"
    )


@pytest.mark.parametrize(("max_sessions", "commands"), [(3, 0), (4, 1), (5, 2), (10, 2)])
def test_long_lived_channels_leave_a_session_for_short_commands(max_sessions: int, commands: int) -> None:
    options = structure(
        SshOptions, {"host": "pi.local", "user": "pi", "use_agent": True, "max_sessions": max_sessions}
    )
    assert options.command_channels == commands
    # SFTP, the sweep channel, the command channels, and at least one exec channel.
    assert 1 + options.control_channels + 1 <= max_sessions


# -- host keys ----------------------------------------------------------------------------------------


async def test_an_unknown_host_key_is_refused_naming_host_fingerprint_and_fix(
    sshd: SshServer, tmp_path: Path
) -> None:
    known = tmp_path / "known_hosts"
    known.write_text("")
    node = RecordingNode("hostkey-unknown")
    health = await _health_after_start(node, ssh_options(sshd, tmp_path))
    assert not health.reachable
    assert health.reason == "SSHHostKeyUnknown"
    assert f"127.0.0.1:{sshd.port}" in health.message
    assert fingerprint(Path(f"{sshd.host_key}.pub")) in health.message
    assert "ssh-keyscan" in health.message
    assert "trust_on_first_use" in health.message
    assert known.read_text() == ""


async def test_a_changed_host_key_is_refused_even_with_trust_on_first_use(
    sshd: SshServer, tmp_path: Path
) -> None:
    other = generate_key(tmp_path / "other_host_key")
    known = tmp_path / "known_hosts"
    entry = f"[127.0.0.1]:{sshd.port} {' '.join(Path(f'{other}.pub').read_text().split()[:2])}\n"
    known.write_text(entry)
    node = RecordingNode("hostkey-mismatch")
    health = await _health_after_start(node, ssh_options(sshd, tmp_path, trust_on_first_use=True))
    assert health.reason == "SSHHostKeyMismatch"
    assert fingerprint(Path(f"{sshd.host_key}.pub")) in health.message
    assert f"ssh-keygen -R '[127.0.0.1]:{sshd.port}'" in health.message
    assert known.read_text() == entry


async def test_trust_on_first_use_records_the_key(sshd: SshServer, tmp_path: Path) -> None:
    known = tmp_path / "ssh" / "known_hosts"
    node = RecordingNode("hostkey-tofu")
    options = ssh_options(sshd, tmp_path, trust_on_first_use=True, known_hosts=str(known))
    health = await _health_after_start(node, options)
    assert health.reachable
    assert known.read_text().split()[:3] == f"[127.0.0.1]:{sshd.port} {sshd.host_public_key}".split()
    assert oct(known.stat().st_mode & 0o777) == "0o600"
    # The recorded key is now required: a second start connects through it.
    assert (await _health_after_start(RecordingNode("hostkey-tofu-2"), options)).reachable


# -- credentials --------------------------------------------------------------------------------------


async def test_wrong_or_missing_credentials_are_named(sshd: SshServer, tmp_path: Path) -> None:
    stranger = generate_key(tmp_path / "stranger")
    health = await _health_after_start(
        RecordingNode("auth-wrong"), ssh_options(sshd, tmp_path, auth={"identity_file": str(stranger)})
    )
    assert health.reason == "SSHAuthFailed"
    assert f"{sshd.user}@127.0.0.1:{sshd.port}" in health.message
    missing = tmp_path / "no-such-key"
    health = await _health_after_start(
        RecordingNode("auth-missing"), ssh_options(sshd, tmp_path, auth={"identity_file": str(missing)})
    )
    assert health.reason == "SSHCredentialsUnavailable"
    assert str(missing) in health.message


@pytest.fixture
def agent(sshd: SshServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A real ssh-agent holding the test key, announced through $SSH_AUTH_SOCK."""
    socket_path = str(tmp_path / "agent.sock")
    process = subprocess.Popen(
        ["ssh-agent", "-D", "-a", socket_path], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        from vkpy.testing import wait_for

        wait_for(lambda: os.path.exists(socket_path), timeout=10, what="ssh-agent socket")
        subprocess.run(
            ["ssh-add", "-q", str(sshd.client_key)],
            env={**os.environ, "SSH_AUTH_SOCK": socket_path},
            check=True,
            capture_output=True,
        )
        monkeypatch.setenv("SSH_AUTH_SOCK", socket_path)
        yield socket_path
    finally:
        process.terminate()
        process.wait(10)


async def test_the_agent_can_log_in(sshd: SshServer, tmp_path: Path, agent: str) -> None:
    health = await _health_after_start(
        RecordingNode("auth-agent"), ssh_options(sshd, tmp_path, auth={"use_agent": True})
    )
    assert health.reachable


# -- losing the link ----------------------------------------------------------------------------------


async def test_a_cut_link_makes_the_node_unreachable_pods_keep_running_and_logs_lose_nothing(
    device: Device,
) -> None:
    transport, node = device.transport, device.node
    pod = make_pod(sh("main", "i=0; while [ $i -lt 40 ]; do i=$((i+1)); echo tick $i; sleep 0.1; done"))
    await transport.create_pod(node, pod)
    await eventually(lambda: device.status(pod), lambda r: isinstance(r and r.containers["main"], Running))
    follower = asyncio.create_task(device.logs(pod, follow=True))
    await asyncio.sleep(0.5)

    device.relay.cut()
    await eventually(lambda: asyncio.sleep(0, node.health), lambda h: h is not None and not h.reachable)
    assert node.health is not None
    assert node.health.reason == "SSHDisconnected"
    assert not (await transport.node_health(node)).reachable
    with pytest.raises(DeviceUnreachable):
        await transport.get_pod_status(node, pod)
    # The pod lives on the device, whatever happens to the link.
    assert "tick" in (device.pod_dir(pod) / "main.log").read_text()
    assert "sleep 0.1" in device.run("ps -eo args") or (device.pod_dir(pod) / "main.exit").exists()
    await asyncio.sleep(1.5)

    device.relay.restore()
    await eventually(lambda: asyncio.sleep(0, node.health), lambda h: h is not None and h.reachable)
    report = await eventually(lambda: device.status(pod), lambda r: terminated(r) is not None)
    assert terminated(report) is not None
    assert terminated(report).exit_code == 0  # type: ignore[union-attr]
    lines = await asyncio.wait_for(follower, 20)
    assert [line.data.decode() for line in lines] == [f"tick {i}\n" for i in range(1, 41)]
    assert transport.link.generation == 2


async def test_a_silent_link_is_detected_by_keepalives(device: Device) -> None:
    node = device.node
    device.relay.stall()
    await eventually(
        lambda: asyncio.sleep(0, node.health), lambda h: h is not None and not h.reachable, timeout=20
    )
    with pytest.raises(DeviceUnreachable):
        await device.transport.list_pods(node)
    device.relay.restore()
    await eventually(
        lambda: asyncio.sleep(0, node.health), lambda h: h is not None and h.reachable, timeout=20
    )
    assert await device.transport.list_pods(node) == []


# -- OpenSSH's MaxSessions ----------------------------------------------------------------------------


@pytest.fixture
def sshd_few_sessions(tmp_path: Path) -> Iterator[SshServer]:
    from vkpy.testing import sshd as sshd_mod
    from vkpy.testing.pytest_plugin import missing_part

    reason = sshd_mod.missing()
    if reason is not None:
        missing_part(reason)
    server = SshServer(tmp_path / "sshd-few", options={"MaxSessions": "3"}).start()
    try:
        yield server
    finally:
        server.stop()


async def test_many_followers_and_commands_fit_in_three_sessions(
    sshd_few_sessions: SshServer, tmp_path: Path
) -> None:
    node = RecordingNode("few-sessions")
    transport = SshTransport(node, ssh_options(sshd_few_sessions, tmp_path, max_sessions=3))
    await transport.node_start(node)
    try:
        pods = [
            make_pod(sh("main", "for i in 1 2 3 4 5 6 7 8; do echo $i; sleep 0.2; done")) for _ in range(3)
        ]
        for pod in pods:
            await transport.create_pod(node, pod)
        for pod in pods:
            await eventually(
                lambda p=pod: transport.get_pod_status(node, p),  # type: ignore[misc]
                lambda r: isinstance(r and r.containers["main"], Running),
            )

        async def follow(pod: object) -> list[bytes]:
            stream = transport.get_container_logs(node, pod, "main", LogOptions(follow=True))  # type: ignore[arg-type]
            return [line.data async for line in stream]

        async def poll(pod: object) -> None:
            for _ in range(5):
                await transport.get_pod_status(node, pod)  # type: ignore[arg-type]
                await asyncio.sleep(0.1)

        results = await asyncio.wait_for(
            asyncio.gather(
                *(follow(p) for p in pods * 4), *(poll(p) for p in pods), transport.list_pods(node)
            ),
            40,
        )
        for lines in results[: len(pods) * 4]:
            assert lines == [f"{i}\n".encode() for i in range(1, 9)]
        assert "no more sessions" not in sshd_few_sessions.log_text()
        assert transport.link.generation == 1
    finally:
        from ssh_helpers import clean_up

        await clean_up(transport, node)
