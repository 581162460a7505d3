"""Fixtures for the ssh transport's tests: a real unprivileged OpenSSH sshd (the "device"), a TCP
relay in front of it that a test can cut, and an SshTransport connected through that relay."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from ssh_helpers import Device, RecordingNode, clean_up, ssh_options
from vkpy_ssh import SshTransport

from vkpy.testing import sshd as sshd_mod
from vkpy.testing.pytest_plugin import missing_part
from vkpy.testing.sshd import SshServer, TcpRelay


@pytest.fixture
def sshd(tmp_path: Path) -> Iterator[SshServer]:
    """An OpenSSH sshd on a free loopback port, accepting the current user with a test key."""
    reason = sshd_mod.missing()
    if reason is not None:
        missing_part(reason)
    server = SshServer(tmp_path / "sshd").start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def relay(sshd: SshServer) -> Iterator[TcpRelay]:
    """A relay in front of sshd: vkpy connects here, the test cuts or stalls the link."""
    with TcpRelay(sshd.port) as link:
        yield link


@pytest.fixture
async def device(sshd: SshServer, relay: TcpRelay, tmp_path: Path) -> AsyncIterator[Device]:
    """An SshTransport for one node, connected to sshd through the relay."""
    node = RecordingNode("ssh-test")
    options = ssh_options(sshd, tmp_path, port=relay.port)
    transport = SshTransport(node, options)
    await transport.node_start(node)
    try:
        yield Device(transport, node, sshd, relay, options)
    finally:
        await clean_up(transport, node)
