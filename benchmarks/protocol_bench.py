"""Figures for the vkpy device protocol over a serial line: bytes on the wire per operation,
round-trip latency, and log throughput, over a pty to the reference device, unthrottled and paced
like a 115200-baud UART (8N1: 10 bits per byte).

    python benchmarks/protocol_bench.py            # a fuller run (about twenty seconds)
    python benchmarks/protocol_bench.py --quick    # a few seconds

Needs vkpy and pyserial-asyncio-fast (``pip install -e plugins/vkpy-serial``). Nothing is
asserted: the output is a table to read and compare between changes.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import os
import select
import statistics
import subprocess
import sys
import threading
import time
import tty
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import serial_asyncio_fast

from vkpy.protocol import (
    AsyncioStreams,
    ContainerSpec,
    Create,
    DeviceClient,
    Hello,
    Logs,
    Ping,
    Status,
    encode_frame,
    encode_request,
)

ROOT = Path(__file__).resolve().parent.parent
DEVICE = ROOT / "examples" / "device" / "vkpy_device.py"
UID = "6f1c2a9e-3b4d-4e5f-8a7b-1c2d3e4f5a6b"
BAUD = 115200
BITS_PER_BYTE = 10


def device_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("vkpy_reference_device_bench", DEVICE)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def table(title: str, header: list[str], rows: list[list[Any]]) -> None:
    cells = [header, *[[str(c) for c in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    print(f"\n{title}")
    for index, row in enumerate(cells):
        print(
            "  "
            + "  ".join(
                c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))
            )
        )
        if index == 0:
            print("  " + "  ".join("-" * w for w in widths))


# --- 1. bytes on the wire --------------------------------------------------------------------------


def wire_size(body: bytes) -> int:
    """A frame as both reference implementations send it: a leading 0x00, COBS, CRC, 0x00."""
    return 1 + len(encode_frame(body))


def overhead(chunks: list[int]) -> None:
    dev = device_module()
    device = dev.Device(log_buffer=1 << 20)
    device.handle_body(encode_request(2, Hello(max_frame=65536)))
    hello_reply = device.take_output()[0]

    def exchange(request_body: bytes) -> tuple[int, int]:
        device.handle_body(request_body)
        replies = [f for f in device.take_output() if b'"id"' in dev.decode_frame(f[:-1])]
        return wire_size(request_body), 1 + len(replies[-1])

    spec = ContainerSpec("main", command=["count", "4000", "0"], env={"SENSOR_NAME": "lab-3"}, image="sensor")
    create = encode_request(3, Create(uid=UID, namespace="default", name="counter-7d9f", containers=[spec]))
    rows: list[list[Any]] = []
    req, rep = exchange(encode_request(1, Ping()))
    rows.append(["ping", req, rep, req + rep, 0, "-"])
    hello_request = wire_size(encode_request(2, Hello(max_frame=65536)))
    hello_total = hello_request + 1 + len(hello_reply)
    rows.append(["hello", hello_request, 1 + len(hello_reply), hello_total, 0, "-"])
    req, rep = exchange(create)
    rows.append(["create (1 container)", req, rep, req + rep, 0, "-"])
    req, rep = exchange(encode_request(4, Status(uid=UID)))
    rows.append(["status (1 container)", req, rep, req + rep, 0, "-"])
    for _ in range(max(chunks) // 4):  # the program writes one line per step
        device.tick()
    for chunk in chunks:
        req, rep = exchange(encode_request(5, Logs(uid=UID, container="main", offset=0, max_bytes=chunk)))
        total = req + rep
        rows.append(
            [f"logs, {chunk} B chunk", req, rep, total, chunk, f"{100 * (total - chunk) / total:.0f} %"]
        )
    table(
        "Bytes on the wire per exchange (frames with delimiters; reply of the reference device)",
        ["operation", "request", "reply", "total", "payload", "overhead"],
        rows,
    )


# --- the link: a pty pair per side, paced like a UART ----------------------------------------------


class PacedLink:
    """Two pty pairs and one relay thread per direction; ``baud`` None relays as fast as possible."""

    def __init__(self, baud: int | None) -> None:
        self.baud = baud
        self.device_master, device_slave = os.openpty()
        self.host_master, host_slave = os.openpty()
        for fd in (device_slave, host_slave):
            tty.setraw(fd)
        self.keepers = [device_slave, host_slave]
        self.device_path = os.ttyname(device_slave)
        self.host_path = os.ttyname(host_slave)
        self.stop_r, self.stop_w = os.pipe()
        self.threads = [
            threading.Thread(target=self._pump, args=(self.device_master, self.host_master), daemon=True),
            threading.Thread(target=self._pump, args=(self.host_master, self.device_master), daemon=True),
        ]
        for thread in self.threads:
            thread.start()

    def _pump(self, source: int, target: int) -> None:
        due = time.monotonic()
        while True:
            readable, _, _ = select.select([source, self.stop_r], [], [])
            if self.stop_r in readable:
                return
            try:
                data = os.read(source, 4096)
            except OSError:
                continue
            if self.baud is None:
                os.write(target, data)
                continue
            # A UART delivers each byte one character time after the previous one.
            for start in range(0, len(data), 32):
                piece = data[start : start + 32]
                due = max(due, time.monotonic()) + len(piece) * BITS_PER_BYTE / self.baud
                delay = due - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                os.write(target, piece)

    def close(self) -> None:
        os.write(self.stop_w, b"x")
        for thread in self.threads:
            thread.join(2)
        for fd in (self.device_master, self.host_master, *self.keepers, self.stop_r, self.stop_w):
            with contextlib.suppress(OSError):
                os.close(fd)


@contextlib.contextmanager
def device_on(link: PacedLink) -> Iterator[subprocess.Popen[bytes]]:
    process = subprocess.Popen(
        [
            sys.executable,
            str(DEVICE),
            "--port",
            link.device_path,
            "--log-buffer",
            "262144",
            "--max-frame",
            "65536",
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
    )
    try:
        yield process
    finally:
        process.kill()
        process.wait()


async def connect(link: PacedLink) -> DeviceClient:
    reader, writer = await serial_asyncio_fast.open_serial_connection(url=link.host_path, baudrate=BAUD)
    client = DeviceClient(AsyncioStreams(reader, writer), keepalive=None, timeout=5.0, event_queue_size=None)
    for _ in range(50):
        try:
            await client.hello(attempt_timeout=0.2, attempts=1)
            return client
        except Exception:  # the device program is still starting
            await asyncio.sleep(0.05)
    raise RuntimeError("the reference device did not answer")


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def timed(call: Callable[[], Awaitable[Any]], count: int) -> list[float]:
    samples = []
    for _ in range(count):
        began = time.perf_counter()
        await call()
        samples.append((time.perf_counter() - began) * 1000)
    return samples


async def link_figures(
    label: str, baud: int | None, rounds: int, lines: int, chunks: list[int]
) -> tuple[list[list[Any]], list[list[Any]]]:
    link = PacedLink(baud)
    latency: list[list[Any]] = []
    throughput: list[list[Any]] = []
    try:
        with device_on(link):
            client = await connect(link)
            try:
                await client.create(UID, [ContainerSpec("main", command=["count", str(lines), "0"])])
                for name, call in (
                    ("ping", client.ping),
                    ("status", lambda: client.status(UID)),
                    ("logs 64 B", lambda: client.logs(UID, "main", 0, 64)),
                ):
                    samples = await timed(call, rounds)
                    latency.append(
                        [
                            label,
                            name,
                            rounds,
                            f"{statistics.median(samples):.2f}",
                            f"{percentile(samples, 0.99):.2f}",
                            f"{max(samples):.2f}",
                        ]
                    )
                for chunk in chunks:
                    began = time.perf_counter()
                    offset = total = 0
                    while True:
                        reply = await client.logs(UID, "main", offset, chunk)
                        total += len(reply.data)
                        offset = reply.next_offset
                        if reply.eof or not reply.data:
                            break
                    seconds = time.perf_counter() - began
                    rate = total / seconds
                    line_rate = f"{100 * rate * BITS_PER_BYTE / baud:.0f} %" if baud else "-"
                    throughput.append(
                        [label, chunk, total, f"{seconds:.2f}", f"{rate / 1024:.1f}", line_rate]
                    )
            finally:
                await client.close()
    finally:
        link.close()
    return latency, throughput


async def main(quick: bool) -> None:
    rounds = 30 if quick else 300
    lines_fast = 2000 if quick else 20000
    lines_slow = 600 if quick else 3000
    chunks = [512, 2048] if quick else [128, 512, 2048, 8192]
    overhead(chunks)
    latency: list[list[Any]] = []
    throughput: list[list[Any]] = []
    for label, baud, lines, count in (
        ("unthrottled pty", None, lines_fast, rounds),
        ("115200 baud", BAUD, lines_slow, max(10, rounds // 5)),
    ):
        lat, thr = await link_figures(label, baud, count, lines, chunks)
        latency += lat
        throughput += thr
    table(
        "Round trip, request sent to reply decoded (ms), over pyserial-asyncio-fast",
        ["link", "request", "n", "p50", "p99", "max"],
        latency,
    )
    table(
        "Log throughput reading a finished container's log from offset 0 (one request at a time)",
        ["link", "max_bytes", "bytes", "seconds", "KiB/s", "of line rate"],
        throughput,
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a few seconds instead of about twenty")
    asyncio.run(main(parser.parse_args().quick))
