"""The node's ``ssh:`` section: where the device is, how to log in, how to check its host key, and the
timings of the link. Validated by :func:`vkpy.config.structure`, so every error names its key path
(``nodes[0].ssh.identity_file``)."""

from __future__ import annotations

import re
from pathlib import Path

import attrs

from vkpy.config import Backoff, InvalidValue, Port, PositiveDuration, describe

_HOST = re.compile(r"[A-Za-z0-9._:%\[\]-]+")
DEFAULT_STATE_DIR = "~/.vkpy"


def _default_known_hosts() -> Path:
    return Path.home() / ".ssh" / "known_hosts"


def _default_reconnect() -> Backoff:
    return Backoff(initial=1.0, max=30.0)


@attrs.frozen(kw_only=True)
class SshAuth:
    """How vkpy logs in. At least one method; OpenSSH tries the keys first, then the password.

    In a cluster, mount these files from a Secret; the password is read from its file at every
    connection attempt and never logged.
    """

    identity_file: Path | None = None
    """A private key file (OpenSSH, PEM or PKCS#8 format, not encrypted: use the agent for those)."""
    use_agent: bool = False
    """Use the keys of the ssh-agent at ``$SSH_AUTH_SOCK``."""
    password_file: Path | None = None
    """A file holding the password (one trailing newline is ignored)."""

    def __attrs_post_init__(self) -> None:
        if self.identity_file is None and not self.use_agent and self.password_file is None:
            raise InvalidValue(
                "no authentication method",
                hint="set identity_file (a private key), use_agent: true, or password_file",
            )


@attrs.frozen(kw_only=True)
class SshOptions:
    """A node reached over SSH. See docs/transports/ssh.md."""

    host: str
    """The device's host name or IP address."""
    user: str
    """The account on the device that runs the pods."""
    identity_file: Path | None = None
    """A private key file (OpenSSH, PEM or PKCS#8 format, not encrypted: use the agent for those)."""
    use_agent: bool = False
    """Use the keys of the ssh-agent at ``$SSH_AUTH_SOCK``."""
    password_file: Path | None = None
    """A file holding the password (one trailing newline is ignored). In a cluster, mount the key
    or password file from a Secret."""
    port: Port = 22
    known_hosts: Path = attrs.field(factory=_default_known_hosts)
    """The OpenSSH known_hosts file the device's host key is checked against."""
    trust_on_first_use: bool = False
    """Accept an unknown host key once and record it in known_hosts (logged as a warning). A key
    that differs from a recorded one is always refused."""
    state_dir: str = DEFAULT_STATE_DIR
    """On the device: where pods live (``<state_dir>/pods/<node>/<pod uid>/``); ``~`` is the
    login user's home."""
    connect_timeout: PositiveDuration = 10.0
    command_timeout: PositiveDuration = 30.0
    """The longest any single remote command or file operation may take before the device is
    reported unreachable."""
    keepalive_interval: PositiveDuration = 15.0
    keepalive_count_max: int = 3
    """The link is declared dead after this many keepalives go unanswered."""
    reconnect_backoff: Backoff = attrs.field(factory=_default_reconnect)
    """Delay between reconnection attempts: doubles from ``initial`` up to ``max``."""
    status_interval: PositiveDuration = 2.0
    """How often one command reads the state of every pod on the device, to push changes."""
    max_sessions: int = 10
    """The device's ``MaxSessions`` (OpenSSH's default is 10): channels open at once on the link."""
    max_pods: int = 110
    """The pod capacity to advertise."""

    def __attrs_post_init__(self) -> None:
        if self.identity_file is None and not self.use_agent and self.password_file is None:
            raise InvalidValue(
                "no authentication method",
                hint="set identity_file (a private key), use_agent: true, or password_file",
                key="identity_file",
            )
        if not self.host or not _HOST.fullmatch(self.host):
            raise InvalidValue(f"not a host name or address: {describe(self.host)}", key="host")
        if not self.user or any(c in self.user for c in " \t\n\0@:/"):
            raise InvalidValue(f"not a user name: {describe(self.user)}", key="user")
        if not _valid_remote_dir(self.state_dir):
            raise InvalidValue(
                f"not a usable folder on the device: {describe(self.state_dir)}",
                hint="an absolute path, or one starting with ~/ (the login user's home)",
                key="state_dir",
            )
        if self.keepalive_count_max < 1:
            raise InvalidValue(
                f"must be at least 1, got {self.keepalive_count_max}", key="keepalive_count_max"
            )
        if self.max_sessions < 3:
            raise InvalidValue(
                f"must be at least 3 (file transfers, pod commands, one more), got {self.max_sessions}",
                key="max_sessions",
            )
        if self.max_pods < 1:
            raise InvalidValue(f"must be at least 1, got {self.max_pods}", key="max_pods")

    @property
    def command_channels(self) -> int:
        """Long-lived ``device.sh serve`` channels for pod commands (start, delete, restart), besides
        the one for status sweeps: reading every pod then never waits behind the forks of a burst
        of starts, and two channels keep two device cores busy. None (the sweep channel serves
        both) when ``max_sessions`` leaves no room; one short command channel always remains."""
        return max(0, min(2, self.max_sessions - 3))

    @property
    def control_channels(self) -> int:
        """Every long-lived ``device.sh serve`` channel: the sweep channel and the command ones."""
        return 1 + self.command_channels

    @property
    def auth(self) -> SshAuth:
        """The login methods, together."""
        return SshAuth(
            identity_file=self.identity_file, use_agent=self.use_agent, password_file=self.password_file
        )

    @property
    def address(self) -> str:
        """``host:port`` (``[host]:port`` for IPv6), for messages."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @property
    def known_hosts_pattern(self) -> str:
        """How OpenSSH names this host in known_hosts."""
        return self.host if self.port == 22 else f"[{self.host}]:{self.port}"


def _valid_remote_dir(path: str) -> bool:
    if not path or any(c in path for c in "\0\n\r"):
        return False
    if not (path.startswith("/") or path == "~" or path.startswith("~/")):
        return False
    return ".." not in path.split("/")


def remote_path(path: str, home: str) -> str:
    """``path`` on the device with a leading ``~`` replaced by the login user's ``home``."""
    if path == "~":
        return home
    if path.startswith("~/"):
        return home.rstrip("/") + "/" + path[2:]
    return path
