"""``kubectl logs`` from the CRI log files on the device, read over the connection's one SFTP channel.

Reads go by byte offset, so ``--follow`` is a polling loop of reads (no channel per follower, none
of OpenSSH's ``MaxSessions`` used up, nothing lost across a reconnect: the reader waits for the link
and goes on from its offset). ``tail_lines`` is found by reading the file backwards in blocks.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import cast

import asyncssh

from vkpy import DeviceUnreachable, LogLine, LogOptions, LogsNotAvailable
from vkpy.logs import parse_cri_line
from vkpy_ssh.link import Link

BLOCK = 64 * 1024
# Forward reads ask for more at once: asyncssh splits a large read into parallel requests, so a
# long log arrives in fewer round trips. A read returns what there is; followers are not delayed.
READ_SIZE = 256 * 1024
FOLLOW_POLL_SECONDS = 0.25


async def _tail_offset(file: asyncssh.SFTPClientFile, size: int, count: int) -> int:
    """The offset of the first of the last ``count`` complete records. Bytes after the last newline
    are a record still being written and are not counted."""
    if count <= 0:
        return size
    needed = count + 1
    position = size
    while position > 0:
        length = min(BLOCK, position)
        position -= length
        block = cast(bytes, await file.read(length, position))
        index = len(block)
        while True:
            index = block.rfind(b"\n", 0, index)
            if index < 0:
                break
            needed -= 1
            if needed == 0:
                return position + index + 1
    return 0


class _Reader:
    """An open log file on the device, reopened after a reconnect."""

    def __init__(self, link: Link, path: str) -> None:
        self.link = link
        self.path = path
        self.file: asyncssh.SFTPClientFile | None = None
        self.generation = -1

    async def open(self) -> asyncssh.SFTPClientFile:
        if self.file is not None and self.generation == self.link.generation and self.link.connected:
            return self.file
        await self.close()
        generation = self.link.generation

        async def do_open(sftp: asyncssh.SFTPClient) -> asyncssh.SFTPClientFile:
            return await sftp.open(self.path, "rb")

        try:
            self.file = await self.link.sftp_call(do_open, what="opening a log")
        except asyncssh.SFTPNoSuchFile:
            raise FileNotFoundError(self.path) from None
        self.generation = generation
        return self.file

    async def size(self) -> int:
        file = await self.open()

        async def do_stat(sftp: asyncssh.SFTPClient) -> int:
            return (await file.stat()).size or 0

        return await self.link.sftp_call(do_stat, what="reading a log")

    async def read(self, offset: int) -> bytes:
        file = await self.open()

        async def do_read(sftp: asyncssh.SFTPClient) -> bytes:
            return cast(bytes, await file.read(READ_SIZE, offset))

        return await self.link.sftp_call(do_read, what="reading a log")

    async def path_size(self) -> int | None:
        """The size of whatever ``path`` names now; None when nothing does (rotated or deleted)."""

        async def do_stat(sftp: asyncssh.SFTPClient) -> int | None:
            try:
                return (await sftp.stat(self.path)).size or 0
            except asyncssh.SFTPNoSuchFile:
                return None

        return await self.link.sftp_call(do_stat, what="reading a log")

    async def tail_offset(self, count: int) -> int:
        file = await self.open()
        size = await self.size()

        async def do_tail(sftp: asyncssh.SFTPClient) -> int:
            return await _tail_offset(file, size, count)

        return await self.link.sftp_call(do_tail, what="reading a log")

    async def close(self) -> None:
        file, self.file = self.file, None
        if file is not None and self.link.connected:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(2):
                    await file.close()


def _take_records(buffer: bytearray) -> list[bytes]:
    end = buffer.rfind(b"\n")
    if end < 0:
        return []
    records = bytes(buffer[: end + 1]).split(b"\n")[:-1]
    del buffer[: end + 1]
    return records


async def read_device_log(
    link: Link,
    path: str,
    options: LogOptions,
    *,
    finished: Callable[[], Awaitable[bool]],
    missing_message: str,
) -> AsyncIterator[LogLine]:
    """The records of a CRI log file on the device, honouring tail_lines, since and follow.

    Following ends once ``finished()`` (the container ended, or the pod is gone) is true and the
    file is read to its end, or when ``path`` stops naming a file at least as long as what was read
    (rotated by a restart, or deleted with its pod). Link failures end a plain read with
    DeviceUnreachable; a follower waits for the link instead and goes on from where it was.
    """
    reader = _Reader(link, path)
    since = options.since
    if since is not None and since.tzinfo is None:
        since = since.replace(tzinfo=datetime.UTC)
    try:
        try:
            await reader.open()
            offset = await reader.tail_offset(options.tail_lines) if options.tail_lines is not None else 0
        except FileNotFoundError:
            raise LogsNotAvailable(missing_message) from None
        buffer = bytearray()
        while True:
            try:
                chunk = await reader.read(offset)
                if not chunk:
                    if not options.follow:
                        return
                    # Ask before the last read: output written before the end is then surely seen.
                    done = await finished()
                    chunk = await reader.read(offset)
                    if not chunk:
                        current = await reader.path_size()
                        if done or current is None or current < offset:
                            return
                        await asyncio.sleep(FOLLOW_POLL_SECONDS)
                        continue
            except DeviceUnreachable:
                if not options.follow:
                    raise
                await link.wait_connected()
                continue
            except FileNotFoundError:
                return
            offset += len(chunk)
            buffer += chunk
            for raw in _take_records(buffer):
                line = parse_cri_line(raw)
                if line is None or (since is not None and line.time < since):
                    continue
                yield line
    finally:
        await reader.close()
