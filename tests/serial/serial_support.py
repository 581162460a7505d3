"""Real serial links for the serial transport's tests, without hardware.

:class:`SerialLink` is a USB-serial adapter in software: two pseudo-terminal pairs and a relay
thread copying bytes between their master sides. The reference device program opens the slave
of one pair (``device_path``), vkpy the slave of the other through a symlink (``host_path``,
named like a ``/dev/serial/by-id/`` entry). The relay can corrupt, drop and duplicate bytes at
set rates and inject bytes of its own; ``unplug()`` closes the pairs (both ends see a hang-up
and the symlink disappears), ``plug()`` makes new ones (the symlink then points to a new pty).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import itertools
import os
import random
import select
import signal
import subprocess
import sys
import threading
import tty
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import attrs
import structlog

from vkpy import Container, DeviceHealth, Pod

ROOT = Path(__file__).resolve().parents[2]
DEVICE_PROGRAM = ROOT / "examples" / "device" / "vkpy_device.py"


@attrs.define
class Faults:
    """Per-byte probabilities, applied to both directions."""

    corrupt: float = 0.0
    drop: float = 0.0
    duplicate: float = 0.0
    seed: int = 1

    @property
    def any(self) -> bool:
        return bool(self.corrupt or self.drop or self.duplicate)


class SerialLink:
    def __init__(self, directory: Path, name: str = "usb-vkpy_Reference_Device_0001-if00") -> None:
        self.directory = directory
        (directory / "by-id").mkdir(parents=True, exist_ok=True)
        self.host_path = directory / "by-id" / name
        self.device_path = ""
        self.faults = Faults()
        self._rng = random.Random(1)
        self._device: tuple[int, int] | None = None  # (master, our slave keeper)
        self._host: tuple[int, int] | None = None
        self._thread: threading.Thread | None = None
        self._wake: tuple[int, int] | None = None
        self._lock = threading.Lock()
        self._to_host: list[bytes] = []
        self._to_device: list[bytes] = []
        self.stats = {"to_host": 0, "to_device": 0, "dropped_full": 0}

    # -- plugging ----------------------------------------------------------------------------------

    def plug(self) -> SerialLink:
        """A new adapter with a freshly powered board: both sides get new ptys."""
        self._pause()
        self._device = self._pair()
        self.device_path = os.ttyname(self._device[1])
        self._host = self._pair()
        self._link_host()
        self._resume()
        return self

    def unplug(self) -> None:
        """The cable is pulled: both sides see a hang-up, the by-id name disappears."""
        self._pause()
        self._unlink_host()
        for pair in (self._host, self._device):
            self._close(pair)
        self._host = self._device = None

    def unplug_host(self) -> None:
        """Only the host's side goes (a USB-serial adapter unplugged from a board on its own
        power): vkpy sees a hang-up, the device keeps running and keeps its pods."""
        self._pause()
        self._unlink_host()
        self._close(self._host)
        self._host = None
        self._resume()

    def plug_host(self) -> None:
        self._pause()
        self._host = self._pair()
        self._link_host()
        self._resume()

    @property
    def plugged(self) -> bool:
        return self._device is not None or self._host is not None

    def _pair(self) -> tuple[int, int]:
        master, slave = os.openpty()
        tty.setraw(slave)
        os.set_blocking(master, False)
        # Our own slave descriptor keeps the pty alive while its user (device, vkpy) reopens it.
        return master, slave

    def _close(self, pair: tuple[int, int] | None) -> None:
        for fd in pair or ():
            with contextlib.suppress(OSError):
                os.close(fd)

    def _link_host(self) -> None:
        assert self._host is not None
        temporary = self.host_path.with_name(self.host_path.name + ".new")
        with contextlib.suppress(FileNotFoundError):
            temporary.unlink()
        temporary.symlink_to(os.ttyname(self._host[1]))
        temporary.replace(self.host_path)

    def _unlink_host(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.host_path.unlink()

    def _pause(self) -> None:
        # Descriptors change only while the relay thread is stopped: it never selects on a closed one.
        if self._thread is not None:
            assert self._wake is not None
            os.write(self._wake[1], b"x")
            self._thread.join(5)
            self._thread = None
        if self._wake is not None:
            self._close(self._wake)
            self._wake = None

    def _resume(self) -> None:
        self._wake = os.pipe()
        self._thread = threading.Thread(target=self._relay, name="serial-link-relay", daemon=True)
        self._thread.start()

    # -- traffic -----------------------------------------------------------------------------------

    def set_faults(self, faults: Faults) -> None:
        with self._lock:
            self.faults = faults
            self._rng = random.Random(faults.seed)

    def inject_to_host(self, data: bytes) -> None:
        """Bytes that seem to come from the device (garbage, oversize frames...)."""
        with self._lock:
            self._to_host.append(data)
        self._poke()

    def inject_to_device(self, data: bytes) -> None:
        with self._lock:
            self._to_device.append(data)
        self._poke()

    def _poke(self) -> None:
        if self._wake is not None:
            with contextlib.suppress(OSError):
                os.write(self._wake[1], b"p")

    def _mangle(self, data: bytes) -> bytes:
        faults = self.faults
        if not faults.any:
            return data
        rng = self._rng
        out = bytearray()
        for byte in data:
            roll = rng.random()
            if roll < faults.drop:
                continue
            if roll < faults.drop + faults.corrupt:
                byte ^= 1 << rng.randrange(8)
            out.append(byte)
            if rng.random() < faults.duplicate:
                out.append(byte)
        return bytes(out)

    def _write(self, fd: int | None, data: bytes) -> None:
        # A UART with nobody reading loses bytes; so does this relay when a pty stays full.
        if fd is None:
            return
        view = memoryview(data)
        while view:
            try:
                written = os.write(fd, view)
            except BlockingIOError:
                _, writable, _ = select.select([], [fd], [], 2.0)
                if not writable:
                    self.stats["dropped_full"] += len(view)
                    return
                continue
            except OSError:
                return
            view = view[written:]

    def _relay(self) -> None:
        assert self._wake is not None
        wake = self._wake[0]
        device = self._device[0] if self._device else None
        host = self._host[0] if self._host else None
        watched = [fd for fd in (device, host, wake) if fd is not None]
        while True:
            with self._lock:
                to_host, self._to_host = self._to_host, []
                to_device, self._to_device = self._to_device, []
            for data in to_host:
                self._write(host, data)
            for data in to_device:
                self._write(device, data)
            readable, _, _ = select.select(watched, [], [], 0.5)
            if wake in readable and b"x" in os.read(wake, 64):
                return
            for source, target, counter in ((device, host, "to_host"), (host, device, "to_device")):
                if source is None or source not in readable:
                    continue
                try:
                    data = os.read(source, 4096)
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError as exc:
                    if exc.errno == errno.EIO:
                        continue
                    raise
                with self._lock:
                    mangled = self._mangle(data)
                self.stats[counter] += len(data)
                self._write(target, mangled)


class DeviceProcess:
    """The reference device program on a tty path, as a separate process."""

    def __init__(self, path: str, *args: str, log_path: Path | None = None) -> None:
        self.path = path
        self.args = args
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> DeviceProcess:
        stderr: Any = subprocess.DEVNULL
        if self.log_path is not None:
            stderr = self.log_path.open("ab")
        try:
            self.process = subprocess.Popen(
                [sys.executable, str(DEVICE_PROGRAM), "--port", self.path, "--verbose", *self.args],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
            )
        finally:
            if self.log_path is not None:
                stderr.close()
        return self

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)

    def stop(self) -> None:
        self.kill()


class RecordingNode:
    """The smallest NodeHandle for in-process transport tests: records pushes."""

    def __init__(self, name: str = "serial-test") -> None:
        self.name = name
        self.transport: Any = None
        self.log = structlog.get_logger("tests.serial").bind(node=name)
        self.reports: list[str] = []
        self.healths: list[DeviceHealth] = [DeviceHealth(True)]
        self._changed = asyncio.Event()

    def report_status(self, pod_uid: str) -> None:
        self.reports.append(pod_uid)
        self._changed.set()

    def set_health(self, health: DeviceHealth) -> None:
        self.healths.append(health)
        self._changed.set()

    @property
    def health(self) -> DeviceHealth:
        return self.healths[-1]


@contextlib.contextmanager
def plugged(link: SerialLink) -> Iterator[SerialLink]:
    link.plug()
    try:
        yield link
    finally:
        if link.plugged:
            link.unplug()


StartDevice = Callable[..., DeviceProcess]
"""``start_device(link, *args)``: the reference device on a link (the fixture of that name)."""
MakeTransport = Callable[..., Awaitable[tuple[Any, RecordingNode]]]
"""``await make_transport(link, **options)``: a started SerialTransport (the fixture of that name)."""


_names = itertools.count()


def make_pod(*containers: Container, name: str | None = None) -> Pod:
    return Pod(
        uid=str(uuid.uuid4()),
        namespace="default",
        name=name or f"pod-{next(_names)}",
        node_name="serial-test",
        containers=containers,
    )


def program(name: str, *argv: str, **kwargs: Any) -> Container:
    """A container that runs one of the reference device's programs."""
    return Container(name=name, image="vkpy/reference-device", command=argv, **kwargs)
