"""Fixtures for the ssh transport's tests: an SshTransport connected to the real sshd (the `sshd`
fixture from vkpy.testing) through the cuttable `relay`."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from ssh_helpers import Device, RecordingNode, clean_up, ssh_options
from vkpy_ssh import SshTransport

from vkpy.testing.sshd import SshServer, TcpRelay


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
