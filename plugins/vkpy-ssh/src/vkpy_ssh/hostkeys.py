"""Host key verification against an OpenSSH known_hosts file, with an opt-in trust on first use.

asyncssh checks the offered key against the keys we match for the host; a key it does not trust is
handed to :meth:`HostKeyPolicy.validate`, which records it (for the error message) and accepts it
only when the host has no recorded key at all and ``trust_on_first_use`` is on. A key that differs
from a recorded one is always refused: that is what a man in the middle looks like.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import asyncssh
import attrs

from vkpy_ssh.options import SshOptions


class HostKeyRefused(Exception):
    """The device's host key is unknown or does not match; ``reason`` becomes the node's condition."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


def read_known_hosts(path: Path) -> asyncssh.SSHKnownHosts:
    """The known_hosts file's entries (none when it does not exist). Runs in a thread."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        text = ""
    return asyncssh.import_known_hosts(text)


def fingerprint(key: asyncssh.SSHKey) -> str:
    return f"{key.get_algorithm()} {key.get_fingerprint('sha256')}"


def known_hosts_line(options: SshOptions, key: asyncssh.SSHKey) -> str:
    data: bytes = key.export_public_key("openssh")
    return f"{options.known_hosts_pattern} {data.decode('ascii').strip()}\n"


def record_key(path: Path, line: str) -> None:
    """Append a host key to known_hosts, creating it (0600, folder 0700) when missing."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, line.encode("ascii"))
    finally:
        os.close(fd)


@attrs.define
class HostKeyPolicy:
    """One connection attempt's view of the host's keys."""

    options: SshOptions
    known: asyncssh.SSHKnownHosts
    had_entries: bool = False
    offered: asyncssh.SSHKey | None = None
    accepted_first_use: bool = False

    def match(self, host: str, addr: str, port: int | None) -> Any:
        """The ``known_hosts`` callable asyncssh calls with the host it connects to."""
        result = self.known.match(host, addr, port)
        trusted, cas, revoked = result[0], result[1], result[2]
        self.had_entries = bool(trusted or cas or revoked)
        return result

    def validate(self, key: asyncssh.SSHKey) -> bool:
        """Called for a key that matches no trusted entry."""
        self.offered = key
        if self.options.trust_on_first_use and not self.had_entries:
            self.accepted_first_use = True
            return True
        return False

    def refusal(self) -> HostKeyRefused:
        """Explain why the host key was not accepted, naming the host, the key and the fix."""
        options = self.options
        pattern = options.known_hosts_pattern
        offered = fingerprint(self.offered) if self.offered is not None else "(no key seen)"
        scan = f"ssh-keyscan -p {options.port} {options.host} >> {options.known_hosts}"
        if self.had_entries:
            return HostKeyRefused(
                "SSHHostKeyMismatch",
                f"host key of {options.address} does not match {options.known_hosts}: the device offered "
                f"{offered}, not the key recorded for {pattern}. Someone may be intercepting the connection, "
                f"or the device was reinstalled. If you know it was, check the fingerprint on the device "
                f"(ssh-keygen -lf /etc/ssh/ssh_host_*_key.pub), remove the old entry "
                f"(ssh-keygen -R '{pattern}' -f {options.known_hosts}) and add the new key ({scan}).",
            )
        return HostKeyRefused(
            "SSHHostKeyUnknown",
            f"host key of {options.address} is unknown: {options.known_hosts} has no entry for {pattern}; "
            f"the device offered {offered}. Check that fingerprint on the device "
            f"(ssh-keygen -lf /etc/ssh/ssh_host_*_key.pub), then add it ({scan}), "
            f"or set trust_on_first_use: true to record the first key seen.",
        )


class PolicyClient(asyncssh.SSHClient):
    """asyncssh's client callbacks: host key decisions go to the policy; the reason a connection
    ended is kept for the health message."""

    def __init__(self, policy: HostKeyPolicy) -> None:
        self.policy = policy
        self.lost: Exception | None = None

    def validate_host_public_key(self, host: str, addr: str, port: int, key: asyncssh.SSHKey) -> bool:
        return self.policy.validate(key)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = exc
