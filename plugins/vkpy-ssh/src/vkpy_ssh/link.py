"""The node's one SSH connection: connect, verify the host key, keep alive, reconnect with capped
backoff, and report the link's health. Every remote call goes through :meth:`Link.run` or
:meth:`Link.sftp_call`, which fail fast with :class:`vkpy.DeviceUnreachable` when the link is down
and never wait longer than ``command_timeout`` on a half-dead one.

Channels: the connection holds its long-lived channels for its whole life, SFTP (file transfers and
every log read, followers included) and the control channels (see :mod:`vkpy_ssh.control`: one
for status sweeps and one for pod commands, or one for both when ``max_sessions`` is 3), and the
rest of ``max_sessions`` for short command channels, so it stays within OpenSSH's ``MaxSessions``
and one connection is always enough.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import asyncssh
import attrs
import structlog

from vkpy import DeviceHealth, DeviceUnreachable
from vkpy_ssh.hostkeys import HostKeyPolicy, HostKeyRefused, PolicyClient, known_hosts_line, read_known_hosts
from vkpy_ssh.hostkeys import record_key as record_host_key
from vkpy_ssh.options import SshOptions

T = TypeVar("T")
log = structlog.get_logger("vkpy.ssh")

# Errors that mean "the link failed", as opposed to "the remote file or command failed".
LINK_ERRORS = (
    asyncssh.DisconnectError,
    asyncssh.ChannelOpenError,
    asyncssh.ConnectionLost,
    ConnectionError,
    OSError,
    EOFError,
)


@attrs.frozen
class Completed:
    """A finished remote command."""

    exit_status: int
    stdout: bytes
    stderr: bytes

    @property
    def ok(self) -> bool:
        return self.exit_status == 0

    def error_text(self) -> str:
        text = self.stderr or self.stdout
        return text.decode("utf-8", "replace").strip()[-500:]


class SetupFailed(Exception):
    """The device answered but cannot host pods (a missing tool, no SFTP, an unwritable folder)."""


CONNECT_ERRORS = (TimeoutError, asyncssh.Error, ValueError, ConnectionError, OSError, EOFError)
SETUP_ERRORS = (
    TimeoutError,
    SetupFailed,
    DeviceUnreachable,
    asyncssh.Error,
    ConnectionError,
    OSError,
    EOFError,
)


class CredentialsUnavailable(Exception):
    """A configured credential (key file, agent, password file) cannot be used."""


Setup = Callable[[asyncssh.SSHClientConnection, asyncssh.SFTPClient], Awaitable[None]]


def _read_secret(path: Path) -> str:
    text = path.read_text(encoding="utf-8")
    return text[:-1] if text.endswith("\n") else text


class Link:
    """One persistent connection to one device, re-established whenever it drops."""

    def __init__(
        self,
        options: SshOptions,
        *,
        setup: Setup,
        on_health: Callable[[DeviceHealth], None],
        node_name: str,
    ) -> None:
        self.options = options
        self._setup = setup
        self._on_health = on_health
        self.log = log.bind(node=node_name, device=options.address)
        self.health = DeviceHealth(False, "SSHConnecting", f"connecting to {options.address}")
        self.generation = 0
        """Counts successful connections, so that callers can tell a new link from the old one."""
        self._conn: asyncssh.SSHClientConnection | None = None
        self._sftp: asyncssh.SFTPClient | None = None
        self._up = asyncio.Event()
        self._first_attempt = asyncio.Event()
        # Sessions open for the connection's life: SFTP and the control channels.
        self._sessions = asyncio.Semaphore(options.max_sessions - 1 - options.control_channels)
        self._task: asyncio.Task[None] | None = None

    # -- state ---------------------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._conn is not None and self._up.is_set()

    def _set_health(self, health: DeviceHealth) -> None:
        if health != self.health:
            self.health = health
            self._on_health(health)

    async def wait_connected(self) -> None:
        await self._up.wait()

    def unreachable(self) -> DeviceUnreachable:
        return DeviceUnreachable(self.health.message or f"no SSH connection to {self.options.address}")

    # -- lifecycle -----------------------------------------------------------------------------------

    async def start(self) -> None:
        """Start connecting; return after the first attempt (or ``connect_timeout`` and a margin)."""
        self._task = asyncio.get_running_loop().create_task(self._run(), name=f"ssh:{self.options.address}")
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.options.connect_timeout + self.options.command_timeout):
                await self._first_attempt.wait()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self._drop()

    def abort(self, why: str) -> None:
        """Give up on the current connection (it answers no more); the loop reconnects."""
        conn = self._conn
        if conn is not None:
            self.log.warning("ssh.link_aborted", reason=why)
            conn.abort()

    async def _drop(self) -> None:
        self._up.clear()
        conn, self._conn = self._conn, None
        sftp, self._sftp = self._sftp, None
        if sftp is not None:
            sftp.exit()
        if conn is not None:
            conn.close()
            with contextlib.suppress(Exception):
                async with asyncio.timeout(2):
                    await conn.wait_closed()

    async def _run(self) -> None:
        attempt = 0
        while True:
            lost_reason = await self._connect_once()
            self._first_attempt.set()
            if lost_reason is None:  # was connected, then the link dropped: try again at once
                attempt = 0
                continue
            backoff = self.options.reconnect_backoff
            ceiling = min(backoff.max, backoff.initial * 2**attempt)
            attempt += 1
            await asyncio.sleep(ceiling * random.uniform(0.5, 1.0))  # noqa: S311 - jitter, not crypto

    async def _connect_once(self) -> str | None:
        """One connection's life. Returns None after a connection that worked, else why it failed."""
        options = self.options
        try:
            conn, client = await self._connect()
        except HostKeyRefused as exc:
            self.log.error("ssh.host_key_refused", reason=exc.reason, message=exc.message)
            self._set_health(DeviceHealth(False, exc.reason, exc.message))
            return exc.reason
        except asyncssh.PermissionDenied as exc:
            message = f"{options.user}@{options.address} refused the credentials: {exc.reason}"
            self.log.error("ssh.auth_failed", message=message)
            self._set_health(DeviceHealth(False, "SSHAuthFailed", message))
            return "auth"
        except CredentialsUnavailable as exc:
            self.log.error("ssh.credentials_unavailable", message=str(exc))
            self._set_health(DeviceHealth(False, "SSHCredentialsUnavailable", str(exc)))
            return "credentials"
        except CONNECT_ERRORS as exc:
            message = f"cannot connect to {options.address}: {_describe(exc)}"
            self.log.warning("ssh.connect_failed", error=_describe(exc))
            self._set_health(DeviceHealth(False, "SSHDisconnected", message))
            return "connect"
        try:
            async with asyncio.timeout(options.command_timeout * 2):
                sftp = await conn.start_sftp_client()
                await self._setup(conn, sftp)
        except SETUP_ERRORS as exc:
            message = f"{options.address}: cannot prepare the device: {_describe(exc)}"
            self.log.error("ssh.setup_failed", error=_describe(exc))
            self._set_health(DeviceHealth(False, "DeviceSetupFailed", message))
            conn.abort()
            return "setup"
        self._conn, self._sftp = conn, sftp
        self.generation += 1
        self._up.set()
        self.log.info("ssh.connected", generation=self.generation)
        self._set_health(DeviceHealth(True))
        self._first_attempt.set()
        try:
            await conn.wait_closed()
        except asyncio.CancelledError:
            sftp.exit()
            conn.close()
            raise
        finally:
            self._up.clear()
            self._conn = self._sftp = None
        why = _describe(client.lost) if client.lost is not None else "closed by the device"
        self.log.warning("ssh.disconnected", reason=why)
        self._set_health(
            DeviceHealth(
                False, "SSHDisconnected", f"the SSH connection to {options.address} was lost ({why})"
            )
        )
        return None

    async def _connect(self) -> tuple[asyncssh.SSHClientConnection, PolicyClient]:
        options = self.options
        known = await asyncio.to_thread(read_known_hosts, options.known_hosts)
        policy = HostKeyPolicy(options, known)
        client = PolicyClient(policy)
        keys: list[Any] = []
        agent: asyncssh.SSHAgentClient | None = None
        password: str | None = None
        auth = options.auth
        if auth.identity_file is not None:
            try:
                keys.append(await asyncio.to_thread(asyncssh.read_private_key, str(auth.identity_file)))
            except (OSError, asyncssh.KeyImportError) as exc:
                raise CredentialsUnavailable(f"ssh.auth.identity_file {auth.identity_file}: {exc}") from None
        if auth.use_agent:
            try:
                agent = await asyncssh.connect_agent()
                keys.extend(await agent.get_keys())
            except (OSError, ValueError, asyncssh.Error) as exc:
                if agent is not None:
                    agent.close()
                raise CredentialsUnavailable(
                    f"ssh.auth.use_agent: no usable ssh-agent ($SSH_AUTH_SOCK): {exc}"
                ) from None
        if auth.password_file is not None:
            try:
                password = await asyncio.to_thread(_read_secret, auth.password_file)
            except OSError as exc:
                raise CredentialsUnavailable(
                    f"ssh.auth.password_file {auth.password_file}: {exc.strerror}"
                ) from None
        try:
            conn = await asyncio.wait_for(
                asyncssh.connect(
                    options.host,
                    options.port,
                    username=options.user,
                    client_factory=lambda: client,
                    known_hosts=policy.match,
                    client_keys=keys or None,
                    agent_path=None,
                    password=password,
                    config=[],
                    gss_auth=False,
                    gss_kex=False,
                    x509_trusted_certs=None,
                    connect_timeout=options.connect_timeout,
                    keepalive_interval=options.keepalive_interval,
                    keepalive_count_max=options.keepalive_count_max,
                ),
                timeout=options.connect_timeout + 5,
            )
        except asyncssh.HostKeyNotVerifiable:
            raise policy.refusal() from None
        finally:
            if agent is not None:
                agent.close()
        if policy.accepted_first_use and policy.offered is not None:
            line = known_hosts_line(options, policy.offered)
            try:
                await asyncio.to_thread(record_host_key, options.known_hosts, line)
            except OSError as exc:
                conn.abort()
                raise HostKeyRefused(
                    "SSHHostKeyUnknown",
                    f"trust_on_first_use: cannot record the host key of {options.address} in "
                    f"{options.known_hosts} ({exc.strerror}); the key is not trusted unrecorded",
                ) from None
            self.log.warning(
                "ssh.host_key_trusted_on_first_use",
                fingerprint=f"{policy.offered.get_algorithm()} {policy.offered.get_fingerprint('sha256')}",
                known_hosts=str(options.known_hosts),
            )
        return conn, client

    # -- remote calls --------------------------------------------------------------------------------

    async def run(
        self,
        command: str,
        *,
        timeout: float | None = None,
        what: str = "command",
        conn: asyncssh.SSHClientConnection | None = None,
    ) -> Completed:
        """Run ``command`` (already quoted) through the login shell and collect its output.
        Raises DeviceUnreachable when the link is down, fails, or the command overruns. ``conn``
        is for the setup step only, before the link counts as up."""
        if conn is None:
            conn = self._conn
            if conn is None or not self._up.is_set():
                raise self.unreachable()
        limit = timeout if timeout is not None else self.options.command_timeout
        try:
            async with asyncio.timeout(limit):
                async with self._sessions:
                    process = await conn.create_process(command, encoding=None, stdin=asyncssh.DEVNULL)
                    try:
                        result = await process.wait(check=False)
                    finally:
                        process.close()
        except TimeoutError:
            raise DeviceUnreachable(
                f"{self.options.address}: {what} got no answer within {limit:g}s"
            ) from None
        except LINK_ERRORS as exc:
            raise DeviceUnreachable(f"{self.options.address}: {what} failed: {_describe(exc)}") from None
        status = result.exit_status
        if status is None or status < 0:
            status = 255
        stdout = result.stdout if isinstance(result.stdout, bytes) else b""
        stderr = result.stderr if isinstance(result.stderr, bytes) else b""
        return Completed(status, stdout, stderr)

    async def open_process(self, command: str, *, what: str) -> asyncssh.SSHClientProcess[bytes]:
        """Start a long-lived remote process (bytes in, bytes out) on the current connection."""
        conn = self._conn
        if conn is None or not self._up.is_set():
            raise self.unreachable()
        try:
            async with asyncio.timeout(self.options.command_timeout):
                return await conn.create_process(command, encoding=None)
        except TimeoutError:
            raise DeviceUnreachable(f"{self.options.address}: {what} got no answer") from None
        except LINK_ERRORS as exc:
            raise DeviceUnreachable(f"{self.options.address}: {what} failed: {_describe(exc)}") from None

    async def sftp_call(
        self,
        operation: Callable[[asyncssh.SFTPClient], Awaitable[T]],
        *,
        timeout: float | None = None,
        what: str = "file operation",
    ) -> T:
        """Run ``operation`` with the connection's SFTP client. SFTP errors (no such file...) pass
        through; link failures and overruns become DeviceUnreachable."""
        sftp = self._sftp
        if sftp is None or not self._up.is_set():
            raise self.unreachable()
        limit = timeout if timeout is not None else self.options.command_timeout
        try:
            async with asyncio.timeout(limit):
                return await operation(sftp)
        except TimeoutError:
            raise DeviceUnreachable(
                f"{self.options.address}: {what} got no answer within {limit:g}s"
            ) from None
        except (asyncssh.SFTPConnectionLost, asyncssh.SFTPNoConnection) as exc:
            raise DeviceUnreachable(f"{self.options.address}: {what} failed: {exc.reason}") from None
        except asyncssh.SFTPError:
            raise
        except LINK_ERRORS as exc:
            raise DeviceUnreachable(f"{self.options.address}: {what} failed: {_describe(exc)}") from None


def _describe(exc: BaseException) -> str:
    if isinstance(exc, asyncssh.DisconnectError):
        return exc.reason or type(exc).__name__
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__
