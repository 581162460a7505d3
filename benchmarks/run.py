"""vkpy side by side with the Go virtual-kubelet and kwok, on a real control plane.

    python benchmarks/run.py --quick            # every scenario at tiny sizes (CI: keeps it working)
    python benchmarks/run.py                    # full sizes (see benchmarks/README.md)
    python benchmarks/run.py --scenarios burst,nodes --agents vkpy-instant,go-vk --profile --out DIR

Prints one table per scenario; nothing asserts on time. Every process it starts is stopped on the
way out (and the control plane's components die with this process if it is killed).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import attrs

# Run as a script: the sibling modules are importable from this folder.
sys.path.insert(0, str(Path(__file__).resolve().parent))

import contenders
import report
from agents import AGENTS, SSH_AGENTS, Agent, ssh_missing
from cluster_io import open_client
from plane import BenchControlPlane
from procstats import load_average
from profiles import read_profile, render
from scenarios import Result, ScenarioFailed, combine, run_burst, run_logs, run_nodes, run_steady

from vkpy.kube import KubeClient

SCENARIOS = ("burst", "deployment", "nodes", "steady", "ssh")


@attrs.frozen
class Sizes:
    burst: tuple[int, ...]
    nodes: tuple[int, ...]
    steady_pods: int
    window: float
    """Seconds at rest for the node and steady-state scenarios."""
    local_max_pods: int
    """The local transport runs a real process (and its supervisor) per pod: capped for memory."""
    vk_max_nodes: int
    """The Go virtual-kubelet runs a process per node."""
    ssh_pods: int
    log_lines: int
    """Lines of 100 bytes the log pod writes."""


QUICK = Sizes(
    burst=(10,),
    nodes=(3,),
    steady_pods=10,
    window=20,
    local_max_pods=10,
    vk_max_nodes=3,
    ssh_pods=5,
    log_lines=10_000,
)
FULL = Sizes(
    burst=(100, 1000),
    nodes=(10, 100, 1000),
    steady_pods=1000,
    window=180,
    local_max_pods=100,
    vk_max_nodes=100,
    ssh_pods=100,
    log_lines=200_000,
)


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(v) for v in text.split(",") if v.strip())


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python benchmarks/run.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run in a few minutes")
    parser.add_argument("--scenarios", default=",".join(SCENARIOS), help=f"subset of {','.join(SCENARIOS)}")
    parser.add_argument("--agents", default=",".join(AGENTS), help=f"subset of {','.join(AGENTS)}")
    parser.add_argument("--burst-sizes", type=_ints, help="pods per burst, e.g. 100,1000")
    parser.add_argument("--node-counts", type=_ints, help="nodes per process, e.g. 10,100,1000")
    parser.add_argument("--steady-pods", type=int)
    parser.add_argument("--window", type=float, help="seconds at rest (nodes, steady)")
    parser.add_argument("--local-max-pods", type=int)
    parser.add_argument("--vk-max-nodes", type=int)
    parser.add_argument("--ssh-pods", type=int, help="pods in the SSH scenario")
    parser.add_argument("--log-lines", type=int, help="100-byte lines the log pod writes")
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="run each burst N times, contenders in a rotated order each round; report the medians",
    )
    parser.add_argument("--profile", action="store_true", help="py-spy vkpy during burst and steady state")
    parser.add_argument("--out", type=Path, help="write results.md, results.json and profiles here")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (logs, audit log)")
    return parser.parse_args(argv)


def sizes_from(args: argparse.Namespace) -> Sizes:
    base = QUICK if args.quick else FULL
    return Sizes(
        burst=args.burst_sizes or base.burst,
        nodes=args.node_counts or base.nodes,
        steady_pods=args.steady_pods or base.steady_pods,
        window=args.window or base.window,
        local_max_pods=args.local_max_pods or base.local_max_pods,
        vk_max_nodes=args.vk_max_nodes or base.vk_max_nodes,
        ssh_pods=args.ssh_pods or base.ssh_pods,
        log_lines=args.log_lines or base.log_lines,
    )


class Bench:
    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.args = args
        self.sizes = sizes_from(args)
        self.workdir = workdir
        self.agents = [a for a in args.agents.split(",") if a]
        unknown = set(self.agents) - set(AGENTS)
        if unknown:
            raise SystemExit(f"unknown agents {sorted(unknown)}; known: {', '.join(AGENTS)}")
        self.sections: list[str] = []
        self.raw: list[dict[str, object]] = []
        self.out: Path | None = args.out
        self.failures = 0

    def emit(self, text: str) -> None:
        print(text, flush=True)
        self.sections.append(text)

    def profile_path(self, name: str) -> Path | None:
        if not self.args.profile:
            return None
        return (self.out or self.workdir) / "profiles" / f"{name}.txt"

    def show_profile(self, title: str, path: Path | None) -> None:
        profile = read_profile(path) if path else None
        if profile is not None:
            self.emit(render(title, profile))

    def _agent(self, name: str, tag: str, pod_capacity: int) -> Agent:
        return AGENTS[name](self.plane, self.workdir / f"{tag}-{name}", pod_capacity)

    async def _each_repeated(
        self, title: str, names: list[str], run: Callable[[str, int], Awaitable[Result | None]]
    ) -> list[Result]:
        """``--repeat`` rounds, each contender once per round, the order rotated from round to round
        (so that none always runs on the API server the previous one has just loaded); then the
        median of each figure and the mean of each request count."""
        rounds = max(1, self.args.repeat)
        by_agent: dict[str, list[Result]] = {name: [] for name in names}
        for number in range(rounds):
            shift = number % len(names)
            order = names[shift:] + names[:shift]
            label = f"{title} (round {number + 1}/{rounds})" if rounds > 1 else title

            async def this_round(name: str, number: int = number) -> Result | None:
                return await run(name, number)

            for result in await self._each(label, order, this_round):
                by_agent[result.agent].append(result)
        return [combine(results) for results in by_agent.values() if results]

    async def _each(
        self, title: str, names: list[str], run: Callable[[str], Awaitable[Result | None]]
    ) -> list[Result]:
        results: list[Result] = []
        for name in names:
            print(f"bench: {title}: {name} (load {load_average()})", file=sys.stderr, flush=True)
            try:
                result = await run(name)
            except ScenarioFailed as exc:
                self.failures += 1
                print(f"bench: {title}: {name} FAILED: {exc}", file=sys.stderr, flush=True)
                results.append(Result(name, {}, note=f"failed: {str(exc).splitlines()[0]}"))
                continue
            if result is not None:
                results.append(result)
                self.raw.append({"scenario": title, **attrs.asdict(result)})
        return results

    # -- scenarios ---------------------------------------------------------------------------------
    async def burst(self, client: KubeClient, via_deployment: bool) -> None:
        kind = "Deployment through the scheduler" if via_deployment else "pods with spec.nodeName"
        tag = "deploy" if via_deployment else "burst"
        for count in self.sizes.burst:
            title = f"Burst: {count} {kind}"

            async def one(name: str, number: int, count: int = count, title: str = title) -> Result | None:
                if AGENTS[name].runs_processes and count > self.sizes.local_max_pods:
                    return Result(
                        name, {}, note=f"skipped: over --local-max-pods {self.sizes.local_max_pods}"
                    )
                profiled = name.startswith("vkpy-") and number == 0
                profile = self.profile_path(f"{tag}-{count}-{name}") if profiled else None
                agent = self._agent(name, f"{tag}-{count}", count + 10)
                result = await run_burst(
                    self.plane, client, agent, count, via_deployment=via_deployment, profile=profile
                )
                self.show_profile(f"{name}, {title}", profile)
                return result

            results = await self._each_repeated(title, self.agents, one)
            if self.args.repeat > 1:
                title += f" (median of {self.args.repeat} rounds)"
            self.emit(report.table(title, results))
            self.emit(report.request_breakdown(f"API requests per pod ({title})", results, count))

    async def nodes(self, client: KubeClient) -> None:
        for count in self.sizes.nodes:
            title = f"Many nodes: {count} nodes, {self.sizes.window:.0f} s at rest"

            async def one(name: str, count: int = count) -> Result | None:
                if AGENTS[name].runs_processes:
                    return None  # the transport does not matter with no pods: vkpy-instant covers it
                if name == "go-vk" and count > self.sizes.vk_max_nodes:
                    return Result(name, {}, note=f"skipped: over --vk-max-nodes {self.sizes.vk_max_nodes}")
                agent = self._agent(name, f"nodes-{count}", 110)
                return await run_nodes(self.plane, client, agent, count, self.sizes.window)

            results = await self._each(title, self.agents, one)
            self.emit(report.table(title, results))
            per = f"API requests per node per minute at rest ({title})"
            self.emit(report.request_breakdown(per, results, count * self.sizes.window / 60))

    async def steady(self, client: KubeClient) -> None:
        count = self.sizes.steady_pods
        title = f"Steady state: {count} pods Running on one node for {self.sizes.window:.0f} s"

        async def one(name: str) -> Result | None:
            if AGENTS[name].runs_processes and count > self.sizes.local_max_pods:
                return Result(name, {}, note=f"skipped: over --local-max-pods {self.sizes.local_max_pods}")
            profile = self.profile_path(f"steady-{count}-{name}") if name.startswith("vkpy-") else None
            agent = self._agent(name, "steady", count + 10)
            result = await run_steady(self.plane, client, agent, count, self.sizes.window, profile=profile)
            self.show_profile(f"{name}, {title} (the hold only)", profile)
            return result

        results = await self._each(title, self.agents, one)
        self.emit(report.table(title, results))
        self.emit(report.request_breakdown(f"API requests per pod lifecycle ({title})", results, count))
        minutes = self.sizes.window / 60
        self.emit(
            report.request_breakdown(f"API requests per minute at rest ({title})", results, minutes, True)
        )

    async def ssh(self, client: KubeClient) -> None:
        title = (
            f"SSH: {self.sizes.ssh_pods} pods on one SSH device (local sshd), then "
            f"`kubectl logs` of {self.sizes.log_lines * 100 / 1e6:.0f} MB"
        )
        reason = ssh_missing()
        if reason is not None:
            self.emit(f"### {title}\n\nNot measured: the ssh transport cannot run here ({reason}).\n")
            return

        async def one(name: str) -> Result | None:
            agent = SSH_AGENTS[name](self.plane, self.workdir / f"ssh-{name}", self.sizes.ssh_pods + 10)
            profile = self.profile_path(f"ssh-pods-{name}")
            logs_profile = self.profile_path(f"ssh-logs-{name}")
            result = await run_logs(
                self.plane,
                client,
                agent,
                self.sizes.log_lines,
                self.sizes.ssh_pods,
                profile=profile,
                logs_profile=logs_profile,
            )
            self.show_profile(f"{name}, {self.sizes.ssh_pods} pods", profile)
            self.show_profile(f"{name}, kubectl logs", logs_profile)
            return result

        results = await self._each(title, list(SSH_AGENTS), one)
        self.emit(report.table(title, results))

    async def run(self) -> None:
        scenarios = [s for s in self.args.scenarios.split(",") if s]
        unknown = set(scenarios) - set(SCENARIOS)
        if unknown:
            raise SystemExit(f"unknown scenarios {sorted(unknown)}; known: {', '.join(SCENARIOS)}")
        mode = "quick" if self.args.quick else "full"
        self.emit(
            f"## vkpy benchmark ({mode} mode, {time.strftime('%Y-%m-%d %H:%M')} UTC)\n\n"
            f"virtual-kubelet {contenders.VIRTUAL_KUBELET_VERSION} (mock provider), kwok "
            f"{contenders.KWOK_VERSION}; load average at start {load_average()}\n"
        )
        groups = [
            (True, [s for s in scenarios if s in {"burst", "deployment"}]),
            (False, [s for s in scenarios if s in {"nodes", "steady", "ssh"}]),
        ]
        for controllers, wanted in groups:
            if not wanted:
                continue
            folder = self.workdir / ("plane-controllers" if controllers else "plane")
            self.plane = await asyncio.to_thread(BenchControlPlane.launch, folder, controllers=controllers)
            client = await open_client(self.plane.admin_kubeconfig)
            try:
                if "burst" in wanted:
                    await self.burst(client, via_deployment=False)
                if "deployment" in wanted:
                    await self.burst(client, via_deployment=True)
                if "nodes" in wanted:
                    await self.nodes(client)
                if "steady" in wanted:
                    await self.steady(client)
                if "ssh" in wanted:
                    await self.ssh(client)
            finally:
                await client.close()
                await asyncio.to_thread(self.plane.stop)

    def write(self) -> None:
        if self.out is None:
            return
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "results.md").write_text("\n".join(self.sections))
        (self.out / "results.json").write_text(json.dumps(self.raw, indent=2, default=str))
        print(f"bench: results written to {self.out}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if {"go-vk", "kwok"} & set(args.agents.split(",")):
        print(f"bench: contenders in {contenders.ensure_built()}", file=sys.stderr)
    workdir = Path(tempfile.mkdtemp(prefix="vkpy-bench-"))
    bench = Bench(args, workdir)
    try:
        asyncio.run(bench.run())
    finally:
        bench.write()
        if args.keep:
            print(f"bench: work folder kept: {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return 1 if bench.failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
