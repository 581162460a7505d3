"""Micro-benchmark of ``kubectl logs`` through vkpy's kubelet API (hot spot 8 in README.md).

    python benchmarks/logs_bench.py [--lines 200000] [--size 100] [--rounds 3]

Writes a CRI log file of ``--lines`` lines of ``--size`` bytes, then measures:

- ``parse_cri_line`` alone, per record;
- ``read_log_file`` alone (no server), CPU seconds for the whole file;
- the whole file streamed by a real :class:`~vkpy.kubelet.KubeletServer` over TLS on loopback, read by
  an aiohttp client in a separate process (so the server's CPU figure is the server's alone), with
  the backend iterating ``read_log_file`` through two more async generators as the pod controller
  and the local transport do.

Prints figures only; nothing is asserted (the machine may be shared: compare CPU seconds first).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import aiohttp

from vkpy import Container, LogLine, LogOptions, Pod
from vkpy.kubelet import KubeletServer
from vkpy.logs import format_cri_line, parse_cri_line, read_log_file
from vkpy.testing.pki import CertificateAuthority, CertPair

T0 = datetime.datetime(2026, 11, 28, 8, 0, 0, tzinfo=datetime.UTC)


def write_log(path: Path, lines: int, size: int) -> int:
    # Every line its own time (37 µs apart): the worst case for parsing, where a real container's
    # lines of one output read share theirs.
    body = b"x" * (size - 1)
    with path.open("wb") as file:
        for start in range(0, lines, 1000):
            records = [
                format_cri_line(T0 + datetime.timedelta(microseconds=index * 37), "stdout", body + b"\n")
                for index in range(start, min(lines, start + 1000))
            ]
            file.write(b"".join(records))
    return path.stat().st_size


class Backend:
    """One pod whose container's log is ``path``; lines pass through the same generator layers as in
    vkpy run (pod controller, transport plugin, file reader). With ``link``, the file is read over
    SFTP by the ssh transport's reader (sshd runs on this machine, so its files are ours)."""

    def __init__(self, path: Path, link: Any = None) -> None:
        self.path = path
        self.link = link
        self.pod = Pod(
            uid="uid-talker",
            namespace="default",
            name="talker",
            node_name="bench",
            containers=(Container("app"),),
            manifest={"apiVersion": "v1", "kind": "Pod"},
        )

    def find_pod(self, namespace: str, name: str) -> Pod | None:
        return self.pod if (namespace, name) == ("default", "talker") else None

    async def container_logs(self, pod: Pod, container: str, options: LogOptions) -> AsyncIterator[LogLine]:
        async with contextlib.aclosing(self._plugin(options)) as lines:
            async for line in lines:
                yield line

    async def _plugin(self, options: LogOptions) -> AsyncGenerator[LogLine]:
        if self.link is not None:
            from vkpy_ssh.logs import read_device_log

            async def finished() -> bool:
                return True

            lines = read_device_log(self.link, str(self.path), options, finished=finished, missing_message="")
        else:
            lines = read_log_file(self.path, options, finished=lambda: True)
        async for line in lines:
            yield line

    def pods_manifests(self) -> list[Mapping[str, Any]]:
        return [self.pod.manifest]

    def healthy(self) -> bool:
        return True


def bench_parse(path: Path, count: int) -> None:
    with path.open("rb") as file:
        records = [file.readline() for _ in range(count)]
    shared = [records[0]] * count
    for name, sample in (("own times", records), ("one shared time", shared)):
        best = float("inf")
        for _ in range(3):
            started = time.process_time()
            for record in sample:
                parse_cri_line(record)
            best = min(best, time.process_time() - started)
        print(f"parse_cri_line, {name}: {best / count * 1e6:.2f} µs/record (best of 3, {count} records)")


async def bench_reader(path: Path, size: int) -> None:
    started = time.process_time()
    wall = time.perf_counter()
    count = 0
    async for _ in read_log_file(path, LogOptions(), finished=lambda: True):
        count += 1
    seconds = time.process_time() - started
    wall = time.perf_counter() - wall
    print(
        f"read_log_file: {count} lines, {seconds:.2f} s CPU, {wall:.2f} s wall, "
        f"{size / 1e6 / seconds:.1f} MB/s of file per CPU second"
    )


async def client_main(url: str, ca: str, cert: str, key: str) -> None:
    import ssl

    context = ssl.create_default_context(cafile=ca)
    context.load_cert_chain(cert, key)
    connector = aiohttp.TCPConnector(ssl=context)
    async with aiohttp.ClientSession(connector=connector) as session:
        started = time.perf_counter()
        received = chunks = 0
        async with session.get(url) as response:
            async for data, end_of_chunk in response.content.iter_chunks():
                received += len(data)
                chunks += end_of_chunk
        seconds = time.perf_counter() - started
    print(json.dumps({"status": response.status, "bytes": received, "chunks": chunks, "seconds": seconds}))


async def bench_server(
    path: Path, pki: dict[str, CertPair], query: str, rounds: int, link: Any = None
) -> None:
    server = KubeletServer(
        Backend(path, link),
        "127.0.0.1",
        0,
        tls_cert=pki["server"].cert,
        tls_key=pki["server"].key,
        client_ca=pki["ca"].cert,
    )
    await server.start()
    try:
        url = f"https://127.0.0.1:{server.port}/containerLogs/default/talker/app" + (
            f"?{query}" if query else ""
        )
        for _ in range(rounds):
            cpu = time.process_time()
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                __file__,
                "--client",
                url,
                str(pki["ca"].cert),
                str(pki["client"].cert),
                str(pki["client"].key),
                stdout=subprocess.PIPE,
            )
            out, _ = await process.communicate()
            cpu = time.process_time() - cpu
            result = json.loads(out)
            megabytes = result["bytes"] / 1e6
            print(
                f"{'ssh' if link else 'local'} {query or 'plain':<28} "
                f"{megabytes:6.1f} MB in {result['chunks']:6d} chunks: "
                f"{result['seconds']:5.2f} s wall, {megabytes / result['seconds']:6.1f} MB/s, "
                f"server CPU {cpu:5.2f} s ({megabytes / cpu:6.1f} MB per CPU s)"
            )
    finally:
        await server.stop()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lines", type=int, default=200_000)
    parser.add_argument("--size", type=int, default=100, help="bytes per line, newline included")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--ssh", action="store_true", help="also read the file over SFTP, as vkpy-ssh does")
    parser.add_argument("--client", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.client:
        await client_main(*args.client)
        return
    with tempfile.TemporaryDirectory(prefix="vkpy-logs-bench-") as work:
        directory = Path(work)
        path = directory / "app.log"
        size = write_log(path, args.lines, args.size)
        print(f"log file: {args.lines} lines of {args.size} bytes, {size / 1e6:.1f} MB of CRI records")
        ca = CertificateAuthority.create(directory / "ca", "bench-ca")
        pki = {
            "ca": ca.files,
            "server": ca.issue(directory, "server", "kubelet", server=True, ip_addresses=["127.0.0.1"]),
            "client": ca.issue(directory, "client", "kube-apiserver-kubelet-client", client=True),
        }
        bench_parse(path, min(args.lines, 100_000))
        await bench_reader(path, size)
        for query in ("", "timestamps=true", "follow=true", "sinceTime=2026-11-28T08:00:01Z"):
            await bench_server(path, pki, query, args.rounds)
        if args.ssh:
            async with ssh_link(directory) as link:
                for query in ("", "follow=true"):
                    await bench_server(path, pki, query, args.rounds, link)


@contextlib.asynccontextmanager
async def ssh_link(directory: Path) -> AsyncIterator[Any]:
    """A vkpy-ssh Link to a throw-away sshd on loopback."""
    from vkpy_ssh import SshOptions
    from vkpy_ssh.link import Link

    from vkpy.config import structure
    from vkpy.testing.sshd import SshServer

    sshd = SshServer(directory / "sshd").start()
    try:
        known_hosts = sshd.write_known_hosts(directory / "known_hosts")
        options = structure(
            SshOptions,
            {
                "host": sshd.host,
                "port": sshd.port,
                "user": sshd.user,
                "identity_file": str(sshd.client_key),
                "known_hosts": str(known_hosts),
                "state_dir": str(directory / "device-state"),
            },
            "ssh",
        )

        async def setup(*_: object) -> None:
            pass

        link = Link(options, setup=setup, on_health=lambda _: None, node_name="bench")
        await link.start()
        await asyncio.wait_for(link.wait_connected(), 15)
        try:
            yield link
        finally:
            await link.stop()
    finally:
        sshd.stop()


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    asyncio.run(main())
