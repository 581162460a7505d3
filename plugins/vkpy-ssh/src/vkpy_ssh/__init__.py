"""vkpy's ``ssh`` transport: run pods on any device you can ssh to.

Installed with ``pip install vkpy-ssh``; found by vkpy through the entry point ``ssh = "vkpy_ssh"``
in the ``vkpy`` group. Select it per node with ``transport: ssh`` and an ``ssh:`` section (see
docs/transports/ssh.md).
"""

from __future__ import annotations

from vkpy_ssh.options import SshAuth, SshOptions
from vkpy_ssh.transport import SshTransport, register_transports

__all__ = ["SshAuth", "SshOptions", "SshTransport", "register_transports"]
