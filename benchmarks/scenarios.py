"""The measured scenarios. Each runs one contender alone on the shared control plane, then stops it
and deletes its nodes, so contenders never compete with each other for the machine's two cores."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import statistics
import time
from pathlib import Path

import attrs
from agents import Agent
from cluster_io import LeaseAges, NodeTimes, PodTimes, Tracked, create_all, percentile
from plane import BenchControlPlane, pod_writes, writes
from procstats import Sampler, Usage, load_average
from profiles import Profiler

from vkpy.kube import JSON, KubeClient, KubeError

MiB = 1024 * 1024


class ScenarioFailed(RuntimeError):
    """A contender did not reach the awaited state in time; the message carries its log tail."""


@attrs.define
class Result:
    """One contender's figures in one scenario (missing figures are None)."""

    agent: str
    figures: dict[str, float | None]
    load: str = ""
    counts: dict[str, int] = attrs.Factory(dict)
    """API requests by ``verb resource``: over the pods' lifecycle, or at rest for the node scenario."""
    rest_counts: dict[str, int] = attrs.Factory(dict)
    """API requests while pods were held Running (steady state)."""
    note: str = ""


def combine(results: list[Result]) -> Result:
    """One contender's rounds of a scenario as one result: the median of each figure (rounds that
    failed or lack it are left out), the mean of each request count, every load and note."""
    if len(results) == 1:
        return results[0]
    figures: dict[str, float | None] = {}
    for key in dict.fromkeys(k for r in results for k in r.figures):
        values = [v for r in results if (v := r.figures.get(key)) is not None]
        figures[key] = statistics.median(values) if values else None
    counted = [r.counts for r in results if r.figures]
    counts = {
        key: round(sum(c.get(key, 0) for c in counted) / len(counted))
        for key in dict.fromkeys(k for c in counted for k in c)
    }
    return Result(
        results[0].agent,
        figures,
        load=" / ".join(r.load for r in results if r.load),
        counts=counts,
        note="; ".join(dict.fromkeys(r.note for r in results if r.note)),
    )


def pod_body(name: str, node: str | None, labels: dict[str, str] | None = None) -> JSON:
    spec: JSON = {
        "containers": [{"name": "main", "image": "busybox:1", "command": ["sleep", "3600"]}],
        "tolerations": [{"operator": "Exists"}],
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
    }
    if node is not None:
        spec["nodeName"] = node
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": labels or {}},
        "spec": spec,
    }


def deployment_body(name: str, node: str, replicas: int) -> JSON:
    template = pod_body("", None, {"app": name})
    del template["metadata"]["name"]
    # Through the scheduler, pinned to the contender's node whatever labels its agent sets.
    template["spec"]["affinity"] = {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [
                    {"matchFields": [{"key": "metadata.name", "operator": "In", "values": [node]}]}
                ]
            }
        }
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": template["metadata"], "spec": template["spec"]},
        },
    }


def _timeout_for(count: int) -> float:
    return 120 + count * 0.5


async def _wait_nodes_ready(client: KubeClient, agent: Agent, nodes: list[str], timeout: float) -> NodeTimes:
    times = NodeTimes(nodes)
    query = {"fieldSelector": f"metadata.name={nodes[0]}"} if len(nodes) == 1 else {}
    async with Tracked(client, "/api/v1/nodes", query, times.seen) as tracked:
        # An agent that exits (a configuration error...) fails at once, not at the timeout.
        await tracked.until(lambda: times.all_ready() or agent.exited() is not None, timeout)
        if not times.all_ready():
            raise ScenarioFailed(
                f"{agent.name}: {len(times.ready)}/{len(nodes)} nodes Ready "
                f"({agent.exited() or f'after {timeout:.0f} s'})\n"
                f"{agent.log_tail()}"
            )
    return times


async def _namespace(plane: BenchControlPlane, name: str) -> str:
    await asyncio.to_thread(plane.create_namespace, name)
    return name


async def _delete_namespace(plane: BenchControlPlane, client: KubeClient, name: str) -> None:
    """Delete the namespace and, on a plane with a namespace controller, wait (at most a minute)
    until it has removed what is left in it (Events...), so that the next contender starts on a
    quiet API server."""
    # Best effort: the control plane is thrown away at the end anyway.
    with contextlib.suppress(Exception):
        await client.delete(f"/api/v1/namespaces/{name}")
        if "kube-controller-manager" not in plane.components:
            return
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                await client.get(f"/api/v1/namespaces/{name}")
            except KubeError as exc:
                if exc.not_found:
                    return
                raise
            await asyncio.sleep(0.5)


async def _settled_requests(
    plane: BenchControlPlane, mark: int, user_agent: str, quiet: float = 2.0, limit: float = 60.0
) -> collections.Counter[str]:
    """The agent's requests since ``mark``, once its pod writes have stopped for ``quiet`` seconds:
    Events an agent sends after its pods are gone (queued during the burst) count too."""
    counts = await asyncio.to_thread(plane.requests_since, mark, user_agent)
    started = stable_since = time.monotonic()
    while time.monotonic() - started < limit:
        await asyncio.sleep(0.5)
        fresh = await asyncio.to_thread(plane.requests_since, mark, user_agent)
        if pod_writes(fresh) != pod_writes(counts):
            stable_since = time.monotonic()
        counts = fresh
        if time.monotonic() - stable_since >= quiet:
            break
    return counts


@attrs.define
class PodRun:
    """Timings of one batch of pods on one node."""

    count: int
    created: dict[str, float]
    times: PodTimes
    started: float
    all_running: float | None = None
    delete_started: float = 0.0
    all_gone: float | None = None
    usage: Usage = attrs.Factory(Usage)
    hold_usage: Usage | None = None
    counts: collections.Counter[str] = attrs.Factory(collections.Counter)
    hold_counts: collections.Counter[str] = attrs.Factory(collections.Counter)

    def latencies(self) -> list[float]:
        # From the create call's return (pods with nodeName) or the first sight of the pod (a
        # Deployment's pods, created by the controller-manager) to the first sight of Running.
        return [
            at - self.created.get(name, self.times.first_seen.get(name, at))
            for name, at in self.times.running.items()
        ]

    def agent_latencies(self) -> list[float]:
        """The node agent's own part: from the first sight of the pod bound to its node (at once
        for pods with nodeName; after the scheduler for a Deployment's) to the first sight of
        Running."""
        return [at - self.times.bound.get(name, at) for name, at in self.times.running.items()]

    def delete_latencies(self) -> list[float]:
        return [at - self.delete_started for at in self.times.deleted.values()]


async def pod_batch(
    plane: BenchControlPlane,
    client: KubeClient,
    agent: Agent,
    node: str,
    count: int,
    *,
    via_deployment: bool,
    hold: float = 0.0,
    profile: Path | None = None,
    hold_profile: Path | None = None,
) -> PodRun:
    """Create ``count`` pods on the agent's (running, Ready) node, wait until all are Running, keep
    them ``hold`` seconds, delete them all and wait until they are gone."""
    namespace = await _namespace(plane, f"b-{agent.name}-{count}-{'deploy' if via_deployment else 'pods'}")
    times = PodTimes()
    try:
        async with Tracked(client, f"/api/v1/namespaces/{namespace}/pods", {}, times.seen) as tracked:
            mark = plane.audit_mark()
            async with Sampler(agent.pids) as sampler, Profiler(agent.python_pid(), profile):
                run = PodRun(count=count, created={}, times=times, started=time.monotonic())
                if via_deployment:
                    await client.create(
                        f"/apis/apps/v1/namespaces/{namespace}/deployments",
                        deployment_body("bench", node, count),
                    )
                else:
                    bodies = [pod_body(f"p{i:05d}", node) for i in range(count)]
                    run.created = await create_all(client, f"/api/v1/namespaces/{namespace}/pods", bodies)
                if not await tracked.until(lambda: len(times.running) >= count, _timeout_for(count)):
                    raise ScenarioFailed(
                        f"{agent.name}: {len(times.running)}/{count} pods Running after "
                        f"{_timeout_for(count):.0f} s\n{agent.log_tail()}"
                    )
                run.all_running = max(times.running.values())
            run.usage = sampler.usage
            if hold > 0:
                hold_mark = plane.audit_mark()
                async with Sampler(agent.pids) as held, Profiler(agent.python_pid(), hold_profile):
                    await asyncio.sleep(hold)
                run.hold_usage = held.usage
                run.hold_counts = plane.requests_since(hold_mark, agent.user_agent)
            run.delete_started = time.monotonic()
            if via_deployment:
                await client.delete(
                    f"/apis/apps/v1/namespaces/{namespace}/deployments/bench",
                    {"apiVersion": "v1", "kind": "DeleteOptions", "propagationPolicy": "Background"},
                )
            else:
                # One request that marks every pod: under load it outlasts the client's default 30 s.
                await client.request(
                    "DELETE", f"/api/v1/namespaces/{namespace}/pods", timeout=_timeout_for(count)
                )
            if not await tracked.until(
                lambda: len(times.deleted) >= count and not times.present, _timeout_for(count)
            ):
                raise ScenarioFailed(
                    f"{agent.name}: {len(times.present)} pods still present "
                    f"{_timeout_for(count):.0f} s after deletion\n{agent.log_tail()}"
                )
            run.all_gone = max(times.deleted.values())
            run.counts = await _settled_requests(plane, mark, agent.user_agent)
    finally:
        await _delete_namespace(plane, client, namespace)
    return run


def burst_figures(run: PodRun) -> dict[str, float | None]:
    latencies = run.latencies()
    assert run.all_running is not None
    assert run.all_gone is not None
    to_running = run.all_running - run.started
    lifecycle = run.counts
    return {
        "all Running s": to_running,
        "pods/s": run.count / to_running if to_running > 0 else None,
        "p50 ms": percentile(latencies, 50) * 1000,
        "p99 ms": percentile(latencies, 99) * 1000,
        "bound→Running p50 ms": percentile(run.agent_latencies(), 50) * 1000,
        "bound→Running p99 ms": percentile(run.agent_latencies(), 99) * 1000,
        "all gone s": run.all_gone - run.delete_started,
        "delete p99 ms": percentile(run.delete_latencies(), 99) * 1000,
        "writes/pod": pod_writes(lifecycle) / run.count,
        "agent CPU s": run.usage.cpu_seconds,
        "agent RSS MiB": run.usage.rss_peak / MiB,
    }


async def start_agent(client: KubeClient, agent: Agent, nodes: list[str], timeout: float) -> float:
    """Start the agent for its nodes; return the seconds until all were Ready."""
    started = time.monotonic()
    await agent.start(nodes, client)
    times = await _wait_nodes_ready(client, agent, nodes, timeout)
    return max(times.ready.values()) - started


async def run_burst(
    plane: BenchControlPlane,
    client: KubeClient,
    agent: Agent,
    count: int,
    *,
    via_deployment: bool,
    profile: Path | None = None,
) -> Result:
    node = f"{agent.name}-burst"
    try:
        await start_agent(client, agent, [node], 120)
        load = load_average()
        run = await pod_batch(
            plane, client, agent, node, count, via_deployment=via_deployment, profile=profile
        )
        return Result(agent.name, burst_figures(run), load=load, counts=dict(run.counts))
    finally:
        await agent.stop(client)


async def run_nodes(
    plane: BenchControlPlane, client: KubeClient, agent: Agent, count: int, window: float
) -> Result:
    """``count`` nodes in one agent (one process per node for the Go virtual-kubelet): time to all
    Ready, then CPU, memory and Lease punctuality at rest over ``window`` seconds."""
    # Names of their own per size: Leases outlive their nodes on a plane without controllers.
    nodes = [f"{agent.name}-m{count}-n{i:04d}" for i in range(count)]
    leases = LeaseAges(nodes)
    try:
        async with Tracked(
            client, "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases", {}, leases.seen
        ):
            async with Sampler(agent.pids) as startup:
                ready_after = await start_agent(client, agent, nodes, 120 + count * 0.5)
            load = load_average()
            mark = plane.audit_mark()
            async with Sampler(agent.pids) as rest:
                await asyncio.sleep(window)
            counts = plane.requests_since(mark, agent.user_agent)
            worst = leases.worst_age()
        return Result(
            agent.name,
            {
                "nodes": count,
                "processes": len(agent.pids()),
                "all Ready s": ready_after,
                "startup CPU s": startup.usage.cpu_seconds,
                "RSS MiB": rest.usage.rss_peak / MiB,
                "RSS/node MiB": rest.usage.rss_peak / MiB / count,
                "CPU cores at rest": rest.usage.cores,
                "worst lease age s": worst,
                "writes/node/min": writes(counts) / count / (window / 60),
            },
            load=load,
            counts=dict(counts),
        )
    finally:
        await agent.stop(client)


async def run_steady(
    plane: BenchControlPlane,
    client: KubeClient,
    agent: Agent,
    count: int,
    window: float,
    *,
    profile: Path | None = None,
) -> Result:
    """``count`` pods Running on one node for ``window`` seconds: the agent's cost at rest, and the
    API requests of the whole lifecycle (create → Running → held → deleted → gone)."""
    node = f"{agent.name}-steady"
    try:
        await start_agent(client, agent, [node], 120)
        load = load_average()
        run = await pod_batch(
            plane, client, agent, node, count, via_deployment=False, hold=window, hold_profile=profile
        )
        held = run.hold_usage or Usage()
        figures = burst_figures(run)
        return Result(
            agent.name,
            {
                "pods": count,
                "all Running s": figures["all Running s"],
                "CPU cores at rest": held.cores,
                "RSS MiB": held.rss_peak / MiB,
                "requests/min at rest": sum(run.hold_counts.values()) / (window / 60),
                "writes/pod": figures["writes/pod"],
                "status writes/pod": _per_pod(run.counts, "patch pods/status", "update pods/status", n=count),
                "events/pod": _per_pod(run.counts, "create events", n=count),
                "deletes/pod": _per_pod(run.counts, "delete pods", n=count),
                "reads/pod": _reads(run.counts) / count,
            },
            load=load,
            counts=dict(run.counts),
            rest_counts=dict(run.hold_counts),
        )
    finally:
        await agent.stop(client)


def _per_pod(counts: collections.Counter[str], *keys: str, n: int) -> float:
    return sum(counts.get(k, 0) for k in keys) / n


def _reads(counts: collections.Counter[str]) -> int:
    return sum(n for key, n in counts.items() if key.split(" ", 1)[0] in {"get", "list"})


LOG_LINE = "0123456789" * 9 + "abcdefghi"  # 99 characters and a newline: 100 bytes a line


def log_pod_body(name: str, node: str, lines: int) -> JSON:
    body = pod_body(name, node)
    container = body["spec"]["containers"][0]
    container["command"] = ["sh", "-c", f"yes {LOG_LINE} | head -n {lines}"]
    body["spec"]["restartPolicy"] = "Never"
    return body


async def run_logs(
    plane: BenchControlPlane,
    client: KubeClient,
    agent: Agent,
    lines: int,
    pods: int,
    *,
    profile: Path | None = None,
    logs_profile: Path | None = None,
) -> Result:
    """Pod throughput on a device (``pods`` pods with spec.nodeName, create → Running → gone), then
    one pod writing ``lines`` lines of 100 bytes, read back whole with ``kubectl logs`` (API server
    → kubelet API → transport)."""
    node = f"{agent.name}-logs"
    try:
        await start_agent(client, agent, [node], 120)
        load = load_average()
        run = await pod_batch(plane, client, agent, node, pods, via_deployment=False, profile=profile)
        figures = burst_figures(run)
        namespace = await _namespace(plane, f"logs-{agent.name}")
        times = PodTimes()
        async with Tracked(client, f"/api/v1/namespaces/{namespace}/pods", {}, times.seen) as tracked:
            await client.create(f"/api/v1/namespaces/{namespace}/pods", log_pod_body("talker", node, lines))
            if not await tracked.until(lambda: "talker" in times.finished, 300):
                raise ScenarioFailed(f"{agent.name}: the log pod did not finish\n{agent.log_tail()}")
        async with Profiler(agent.python_pid(), logs_profile):
            started = time.monotonic()
            out = await asyncio.to_thread(plane.kubectl, "logs", "talker", "-n", namespace, timeout=300)
            seconds = time.monotonic() - started
        received = len(out.stdout.encode())
        await _delete_namespace(plane, client, namespace)
        return Result(
            agent.name,
            {
                "pods": pods,
                "all Running s": figures["all Running s"],
                "pods/s": figures["pods/s"],
                "p50 ms": figures["p50 ms"],
                "p99 ms": figures["p99 ms"],
                "all gone s": figures["all gone s"],
                "log MB": received / 1e6,
                "complete": 1.0 if received == lines * 100 else received / (lines * 100),
                "logs MB/s": received / 1e6 / seconds if seconds > 0 else None,
            },
            load=load,
            counts=dict(run.counts),
        )
    finally:
        await agent.stop(client)
