"""Shared fixtures of the protocol tests: the reference device program, as a module and as a process."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import signal
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from vkpy.protocol import AsyncioStreams, ByteStream, DeviceClient

ROOT = Path(__file__).resolve().parents[2]
DEVICE_PROGRAM = ROOT / "examples" / "device" / "vkpy_device.py"
SPEC = ROOT / "docs" / "protocol.md"


@pytest.fixture(scope="session")
def device_program() -> Path:
    return DEVICE_PROGRAM


@pytest.fixture(scope="session")
def spec_path() -> Path:
    return SPEC


@pytest.fixture(scope="session")
def device_module() -> ModuleType:
    """The reference device program imported as a module (its main() does not run)."""
    spec = importlib.util.spec_from_file_location("vkpy_reference_device", DEVICE_PROGRAM)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class DeviceProcess:
    """A running reference device with a DeviceClient on its stdin/stdout pipes."""

    def __init__(self, proc: asyncio.subprocess.Process, client: DeviceClient) -> None:
        self.proc = proc
        self.client = client
        self.stderr = b""

    def write_raw(self, data: bytes) -> None:
        """Write bytes straight into the device's stdin, bypassing the client."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(data)

    def pause(self) -> None:
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        self.proc.send_signal(signal.SIGCONT)


SpawnDevice = Callable[..., contextlib.AbstractAsyncContextManager[DeviceProcess]]


@pytest.fixture
def spawn_device() -> SpawnDevice:
    """``async with spawn_device("--pods", "2", wrap=..., timeout=...) as dev:`` runs the device program
    as a subprocess (``python vkpy_device.py ARGS`` on pipes) and connects a DeviceClient to it.
    ``wrap`` may wrap the byte stream; other keywords go to DeviceClient. On exit the client is closed,
    the device must exit by itself (end of stdin) and must not have written a traceback."""

    @contextlib.asynccontextmanager
    async def spawn(
        *args: str, wrap: Callable[[ByteStream], ByteStream] | None = None, **client_options: Any
    ) -> AsyncIterator[DeviceProcess]:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            str(DEVICE_PROGRAM),
            *args,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        assert proc.stdout is not None
        assert proc.stdin is not None
        assert proc.stderr is not None
        stream: ByteStream = AsyncioStreams(proc.stdout, proc.stdin)
        if wrap is not None:
            stream = wrap(stream)
        client_options.setdefault("keepalive", None)
        client = DeviceClient(stream, **client_options)
        device = DeviceProcess(proc, client)
        stderr_task = asyncio.ensure_future(proc.stderr.read())
        try:
            async with client:
                yield device
        finally:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGCONT)
            try:
                await asyncio.wait_for(proc.wait(), 5)
            except TimeoutError:
                proc.kill()
                await proc.wait()
            device.stderr = await stderr_task
        assert b"Traceback" not in device.stderr, device.stderr.decode(errors="replace")

    return spawn
