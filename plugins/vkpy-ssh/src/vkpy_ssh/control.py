"""Control channels: long-lived ``device.sh serve`` processes answering pod commands (start,
restart, delete, status, sweep), each one request at a time. The transport keeps one for status
sweeps and a :class:`ControlPool` of one or two for pod commands (see ``SshOptions.command_channels``).

Why not one ``exec`` per command: each exec opens an SSH session and starts the login user's shell,
which reads its rc files; on a small board (or a shell that runs ``pyenv init``) that is hundreds of
milliseconds per command, and a status sweep every few seconds would keep a core busy. Requests
carry only validated words (UIDs, container names, numbers); paths are built on the device from the
pods folder the process was started with.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import re
import shlex

import asyncssh

from vkpy import DeviceUnreachable
from vkpy_ssh.link import LINK_ERRORS, Completed, Link

_WORD = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]*")
_SENTINEL = b"@@\t"


class Control:
    """Sends requests down the connection's control process, starting it when needed."""

    def __init__(self, link: Link) -> None:
        self.link = link
        self.script = ""
        self.pods_root = ""
        self._process: asyncssh.SSHClientProcess[bytes] | None = None
        self._generation = -1
        self._lock = asyncio.Lock()
        self._ids = itertools.count(1)
        self.pending = 0
        """Calls waiting for or holding the channel."""

    def configure(self, script: str, pods_root: str) -> None:
        self.script = script
        self.pods_root = pods_root

    async def call(self, command: str, *words: str, what: str, timeout: float | None = None) -> Completed:
        """Run one device command; its output and exit status. DeviceUnreachable when the link is
        down or the answer does not come within ``timeout`` (then the channel is replaced)."""
        for word in words:
            if not _WORD.fullmatch(word):
                raise ValueError(f"not a control word: {word!r}")
        limit = timeout if timeout is not None else self.link.options.command_timeout
        self.pending += 1
        try:
            return await self._call(command, words, what=what, limit=limit)
        finally:
            self.pending -= 1

    async def _call(self, command: str, words: tuple[str, ...], *, what: str, limit: float) -> Completed:
        async with self._lock:
            request_id = next(self._ids)
            try:
                async with asyncio.timeout(limit):
                    process = await self._ensure()
                    process.stdin.write(" ".join([str(request_id), command, *words]).encode() + b"\n")
                    return await self._answer(process, request_id)
            except TimeoutError:
                self._close()
                raise DeviceUnreachable(
                    f"{self.link.options.address}: {what} got no answer within {limit:g}s"
                ) from None
            except (*LINK_ERRORS, asyncssh.Error) as exc:
                self._close()
                raise DeviceUnreachable(f"{self.link.options.address}: {what} failed: {exc}") from None

    async def _ensure(self) -> asyncssh.SSHClientProcess[bytes]:
        process = self._process
        if process is not None and self._generation == self.link.generation and self.link.connected:
            return process
        self._close()
        generation = self.link.generation
        command = shlex.join(["sh", self.script, "serve", self.pods_root])
        self._process = await self.link.open_process(command, what="opening the control channel")
        self._generation = generation
        return self._process

    async def _answer(self, process: asyncssh.SSHClientProcess[bytes], request_id: int) -> Completed:
        output: list[bytes] = []
        while True:
            line = await process.stdout.readline()
            if not line:
                raise ConnectionError("the control channel closed")
            if line.startswith(_SENTINEL):
                fields = line.rstrip(b"\n").split(b"\t")
                if len(fields) == 3 and fields[1] == str(request_id).encode():
                    status = int(fields[2]) if fields[2].isdigit() else 255
                    return Completed(status, b"".join(output), b"")
                output.clear()  # the end of an earlier request that timed out
                continue
            output.append(line)

    def _close(self) -> None:
        process, self._process = self._process, None
        if process is not None:
            with contextlib.suppress(Exception):
                process.close()

    def close(self) -> None:
        self._close()


class ControlPool:
    """Pod commands spread over a few control channels, each call to the least busy one. The core
    sends one command at a time for a given pod, and the device script locks each pod anyway."""

    def __init__(self, channels: list[Control]) -> None:
        if not channels:
            raise ValueError("a control pool needs a channel")
        self.channels = channels

    def configure(self, script: str, pods_root: str) -> None:
        for channel in self.channels:
            channel.configure(script, pods_root)

    async def call(self, command: str, *words: str, what: str, timeout: float | None = None) -> Completed:
        channel = min(self.channels, key=lambda c: c.pending)
        return await channel.call(command, *words, what=what, timeout=timeout)

    def close(self) -> None:
        for channel in self.channels:
            channel.close()
