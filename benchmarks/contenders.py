"""Build and cache the benchmark's contenders: the Go virtual-kubelet (mock provider) and kwok.

Like the control plane (``vkpy.testing.binaries``), both are built from Go modules with the
machine's ``go``, pinned to the versions below, into a versioned folder of the user cache, and built
again only when missing (``python benchmarks/contenders.py build``).

The virtual-kubelet v1.14 command has no flag for its client-side rate limit (client-go's default,
5 requests/s with bursts of 10), none for its work queues' rate limit (10 items/s, bursts of 100)
and listens on every interface. The build copies the released module and adds one small file to
it, so that environment variables, read only when set, change that: ``VK_KUBE_API_QPS`` /
``VK_KUBE_API_BURST`` (a negative QPS disables the limiter, as vkpy and kwok have none),
``VK_QUEUE_QPS`` / ``VK_QUEUE_BURST`` and ``VK_LISTEN_HOST``. Unset, the binary behaves as
released, but for one fix: a lock around the mock provider, whose unguarded map crashes the process
under concurrent pod calls. kwok builds unchanged: it already disables client-side limits. Only the
standard library is used here.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

VIRTUAL_KUBELET_MODULE = "github.com/virtual-kubelet/virtual-kubelet"
VIRTUAL_KUBELET_VERSION = "v1.14.1"
PATCH_LEVEL = "bench4"
"""Bumped whenever the virtual-kubelet patch below changes, so that the cache is rebuilt."""
KWOK_MODULE = "sigs.k8s.io/kwok"
KWOK_VERSION = "v0.8.0"

# The stages kwok plays (from its own kustomize/stage/fast set): nodes become Ready and keep their
# Lease; pods become Running at once, complete and are deleted. Copied next to the binary at build.
KWOK_STAGE_FILES = (
    "kustomize/stage/node/fast/node-initialize.yaml",
    "kustomize/stage/node/heartbeat-with-lease/node-heartbeat-with-lease.yaml",
    "kustomize/stage/pod/fast/pod-ready.yaml",
    "kustomize/stage/pod/fast/pod-complete.yaml",
    "kustomize/stage/pod/fast/pod-delete.yaml",
)
KWOK_STAGES = "kwok-stages.yaml"

_VK_CLIENT_FILE = "node/nodeutil/client.go"
_VK_CLIENT_ANCHOR = "\treturn kubernetes.NewForConfig(config)\n"
_VK_ROOT_FILE = "cmd/virtual-kubelet/internal/commands/root/root.go"
_VK_ROOT_ANCHOR = "\t\treturn p, nil, nil\n"
_VK_LOCKED_PROVIDER_SOURCE = """\
package root

// Added by vkpy's benchmark build: the mock provider keeps its pods in a map without a lock, and once
// the work queues are not rate limited its concurrent calls crash the process ("concurrent map read
// and map write"). Every pod call into the provider is serialised here; each takes microseconds.

import (
\t"context"
\t"sync"

\tdto "github.com/prometheus/client_model/go"
\t"github.com/virtual-kubelet/virtual-kubelet/node"
\t"github.com/virtual-kubelet/virtual-kubelet/node/nodeutil"
\tcorev1 "k8s.io/api/core/v1"
\tstats "k8s.io/kubelet/pkg/apis/stats/v1alpha1"
)

type lockedProvider struct {
\tnodeutil.Provider
\tmu sync.Mutex
}

func lockProvider(p nodeutil.Provider) nodeutil.Provider { return &lockedProvider{Provider: p} }

func (l *lockedProvider) CreatePod(ctx context.Context, pod *corev1.Pod) error {
\tl.mu.Lock()
\tdefer l.mu.Unlock()
\treturn l.Provider.CreatePod(ctx, pod)
}

func (l *lockedProvider) UpdatePod(ctx context.Context, pod *corev1.Pod) error {
\tl.mu.Lock()
\tdefer l.mu.Unlock()
\treturn l.Provider.UpdatePod(ctx, pod)
}

func (l *lockedProvider) DeletePod(ctx context.Context, pod *corev1.Pod) error {
\tl.mu.Lock()
\tdefer l.mu.Unlock()
\treturn l.Provider.DeletePod(ctx, pod)
}

func (l *lockedProvider) GetPod(ctx context.Context, namespace, name string) (*corev1.Pod, error) {
\tl.mu.Lock()
\tdefer l.mu.Unlock()
\treturn l.Provider.GetPod(ctx, namespace, name)
}

func (l *lockedProvider) GetPodStatus(ctx context.Context, ns, name string) (*corev1.PodStatus, error) {
\tl.mu.Lock()
\tdefer l.mu.Unlock()
\treturn l.Provider.GetPodStatus(ctx, ns, name)
}

func (l *lockedProvider) GetPods(ctx context.Context) ([]*corev1.Pod, error) {
\tl.mu.Lock()
\tdefer l.mu.Unlock()
\treturn l.Provider.GetPods(ctx)
}

func (l *lockedProvider) GetStatsSummary(ctx context.Context) (*stats.Summary, error) {
\tl.mu.Lock()
\tdefer l.mu.Unlock()
\treturn l.Provider.GetStatsSummary(ctx)
}

func (l *lockedProvider) GetMetricsResource(ctx context.Context) ([]*dto.MetricFamily, error) {
\tl.mu.Lock()
\tdefer l.mu.Unlock()
\treturn l.Provider.GetMetricsResource(ctx)
}

func (l *lockedProvider) NotifyPods(ctx context.Context, notify func(*corev1.Pod)) {
\tif notifier, ok := l.Provider.(node.PodNotifier); ok {
\t\tnotifier.NotifyPods(ctx, notify)
\t}
}
"""
_VK_HTTP_FILE = "cmd/virtual-kubelet/internal/commands/root/http.go"
_VK_HTTP_ANCHOR = '\tconfig.Addr = fmt.Sprintf(":%d", c.ListenPort)\n'
_VK_CONTROLLER_FILE = "node/nodeutil/controller.go"
_VK_CONTROLLER_ANCHOR = "\tfor _, o := range cfg.PodControllerConfigOpts {\n"
_VK_LIMITS_SOURCE = """\
package nodeutil

// Added by vkpy's benchmark build: v1.14 has no flag for client-go's rate limit nor for its work
// queues' (client-go's default controller limiter: 10 items/s, bursts of 100).

import (
\t"os"
\t"strconv"
\t"time"

\t"github.com/virtual-kubelet/virtual-kubelet/node"
\t"golang.org/x/time/rate"
\t"k8s.io/client-go/rest"
\t"k8s.io/client-go/util/workqueue"
)

func applyBenchmarkClientLimits(config *rest.Config) {
\tif qps, err := strconv.ParseFloat(os.Getenv("VK_KUBE_API_QPS"), 32); err == nil {
\t\tconfig.QPS = float32(qps)
\t}
\tif burst, err := strconv.Atoi(os.Getenv("VK_KUBE_API_BURST")); err == nil {
\t\tconfig.Burst = burst
\t}
}

func applyBenchmarkQueueLimits(c *node.PodControllerConfig) {
\tqps, err := strconv.ParseFloat(os.Getenv("VK_QUEUE_QPS"), 64)
\tif err != nil {
\t\treturn
\t}
\tburst, err := strconv.Atoi(os.Getenv("VK_QUEUE_BURST"))
\tif err != nil {
\t\tburst = int(qps)
\t}
\tlimiter := func() workqueue.TypedRateLimiter[any] {
\t\t// The default's per-item backoff, with the overall bucket raised.
\t\treturn workqueue.NewTypedMaxOfRateLimiter[any](
\t\t\tworkqueue.NewTypedItemExponentialFailureRateLimiter[any](5*time.Millisecond, 1000*time.Second),
\t\t\t&workqueue.TypedBucketRateLimiter[any]{Limiter: rate.NewLimiter(rate.Limit(qps), burst)},
\t\t)
\t}
\tc.SyncPodsFromKubernetesRateLimiter = limiter()
\tc.DeletePodsFromKubernetesRateLimiter = limiter()
\tc.SyncPodStatusFromProviderRateLimiter = limiter()
}
"""


class BuildError(RuntimeError):
    """A contender could not be built; the message says which step and why."""


def cache_root() -> Path:
    """The folder vkpy builds into: ``$VKPY_CACHE_DIR``, else the user cache (as the control plane)."""
    explicit = os.environ.get("VKPY_CACHE_DIR")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "vkpy"


def contenders_dir() -> Path:
    return cache_root() / f"contenders-vk-{VIRTUAL_KUBELET_VERSION}-{PATCH_LEVEL}-kwok-{KWOK_VERSION}"


def virtual_kubelet_binary() -> Path:
    return contenders_dir() / "bin" / "virtual-kubelet"


def kwok_binary() -> Path:
    return contenders_dir() / "bin" / "kwok"


def kwok_stages() -> Path:
    return contenders_dir() / KWOK_STAGES


def missing() -> list[str]:
    wanted = {
        "virtual-kubelet": virtual_kubelet_binary(),
        "kwok": kwok_binary(),
        KWOK_STAGES: kwok_stages(),
    }
    return [name for name, path in wanted.items() if not path.is_file()]


def _go() -> str:
    go = shutil.which("go")
    if go is None:
        raise BuildError("the contenders are built from Go modules, but `go` is not on PATH")
    return go


def _run(cmd: list[str], cwd: Path, step: str, env: dict[str, str] | None = None) -> str:
    full_env = {**os.environ, "GOFLAGS": "-mod=mod", "CGO_ENABLED": "0", **(env or {})}
    proc = subprocess.run(cmd, cwd=cwd, env=full_env, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-30:])
        raise BuildError(f"{step} failed (exit {proc.returncode}): {' '.join(cmd)}\n{tail}")
    return proc.stdout


def _module_dir(go: str, work: Path, module: str, version: str) -> Path:
    out = _run([go, "mod", "download", "-json", f"{module}@{version}"], work, f"downloading {module}")
    return Path(json.loads(out)["Dir"])


def _patch(path: Path, anchor: str, replacement: str) -> None:
    text = path.read_text()
    if text.count(anchor) != 1:
        raise BuildError(f"{path.name}: expected exactly one {anchor.strip()!r}; has the release changed?")
    path.write_text(text.replace(anchor, replacement))


def build_virtual_kubelet(go: str, work: Path, out: Path) -> None:
    source = work / "virtual-kubelet"
    shutil.copytree(_module_dir(go, work, VIRTUAL_KUBELET_MODULE, VIRTUAL_KUBELET_VERSION), source)
    for folder, _, files in os.walk(source):  # the module cache is read-only
        os.chmod(folder, 0o755)
        for name in files:
            os.chmod(Path(folder) / name, stat.S_IRUSR | stat.S_IWUSR | stat.S_IRGRP | stat.S_IROTH)
    (source / "node/nodeutil/zz_vkpy_benchmark_limits.go").write_text(_VK_LIMITS_SOURCE)
    _patch(
        source / _VK_CLIENT_FILE,
        _VK_CLIENT_ANCHOR,
        "\tapplyBenchmarkClientLimits(config)\n" + _VK_CLIENT_ANCHOR,
    )
    _patch(
        source / _VK_CONTROLLER_FILE,
        _VK_CONTROLLER_ANCHOR,
        "\tapplyBenchmarkQueueLimits(&podControllerConfig)\n" + _VK_CONTROLLER_ANCHOR,
    )
    (source / "cmd/virtual-kubelet/internal/commands/root/zz_vkpy_locked_provider.go").write_text(
        _VK_LOCKED_PROVIDER_SOURCE
    )
    _patch(source / _VK_ROOT_FILE, _VK_ROOT_ANCHOR, "\t\treturn lockProvider(p), nil, nil\n")
    _patch(
        source / _VK_HTTP_FILE,
        _VK_HTTP_ANCHOR,
        '\tconfig.Addr = fmt.Sprintf("%s:%d", os.Getenv("VK_LISTEN_HOST"), c.ListenPort)\n',
    )
    ldflags = f"-s -w -X main.buildVersion={VIRTUAL_KUBELET_VERSION}"
    _run(
        [
            go,
            "build",
            "-trimpath",
            "-ldflags",
            ldflags,
            "-o",
            str(out / "virtual-kubelet"),
            "./cmd/virtual-kubelet",
        ],
        source,
        f"building virtual-kubelet {VIRTUAL_KUBELET_VERSION}",
    )


def build_kwok(go: str, work: Path, out: Path) -> None:
    # kwok's go.mod has no replace directive: `go install module@version` builds it as released.
    _run(
        [go, "install", "-trimpath", "-ldflags", "-s -w", f"{KWOK_MODULE}/cmd/kwok@{KWOK_VERSION}"],
        work,
        f"building kwok {KWOK_VERSION}",
        env={"GOBIN": str(out)},
    )
    source = _module_dir(go, work, KWOK_MODULE, KWOK_VERSION)
    documents = [(source / name).read_text().strip() for name in KWOK_STAGE_FILES]
    (out / KWOK_STAGES).write_text("\n---\n".join(documents) + "\n")


def ensure_built(log: bool = True) -> Path:
    """Build whatever is missing; return the contenders' folder."""
    absent = missing()
    target = contenders_dir()
    if not absent:
        return target
    go = _go()
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="vkpy-contenders-", dir=target.parent) as tmp:
        work = Path(tmp)
        staged = work / "out"
        staged.mkdir()
        if "virtual-kubelet" in absent:
            started = time.monotonic()
            if log:
                print(f"bench: building virtual-kubelet {VIRTUAL_KUBELET_VERSION}", file=sys.stderr)
            build_virtual_kubelet(go, work, staged)
            if log:
                print(f"bench: virtual-kubelet built in {time.monotonic() - started:.0f} s", file=sys.stderr)
        if "kwok" in absent or KWOK_STAGES in absent:
            started = time.monotonic()
            if log:
                print(f"bench: building kwok {KWOK_VERSION}", file=sys.stderr)
            build_kwok(go, work, staged)
            if log:
                print(f"bench: kwok built in {time.monotonic() - started:.0f} s", file=sys.stderr)
        (target / "bin").mkdir(parents=True, exist_ok=True)
        for built in staged.iterdir():
            # Renames within one filesystem are atomic: a concurrent run never sees half a binary.
            destination = target / KWOK_STAGES if built.name == KWOK_STAGES else target / "bin" / built.name
            os.replace(built, destination)
    still_missing = missing()
    if still_missing:
        raise BuildError(f"build finished but these are still missing: {', '.join(still_missing)}")
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python benchmarks/contenders.py",
        description="Build (or find) the Go virtual-kubelet and kwok binaries the benchmark compares with.",
    )
    parser.add_argument("command", choices=["build", "path"], nargs="?", default="build")
    args = parser.parse_args(argv)
    if args.command == "path":
        print(contenders_dir())
        return 0 if not missing() else 1
    try:
        print(ensure_built())
    except BuildError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
