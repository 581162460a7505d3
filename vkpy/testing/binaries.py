"""Build and cache the control-plane binaries the test cluster runs.

Kubernetes and etcd are built from Go modules with the machine's ``go``, pinned to the versions
below, into a versioned folder outside any checkout, so a fresh clone (CI) on the same machine finds
them again. Only the standard library is used here: this module runs before anything else is set up
(``python -m vkpy.testing.binaries``).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

KUBERNETES_VERSION = "v1.37.2"
ETCD_VERSION = "v3.6.16"

KUBERNETES_COMMANDS = ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl")
ALL_BINARIES = (*KUBERNETES_COMMANDS, "etcd")

_STAGING_REPLACE = re.compile(r"^\s*(k8s\.io/[A-Za-z0-9._-]+)\s+=>\s+\./staging/", re.MULTILINE)


class BuildError(RuntimeError):
    """A control-plane binary could not be built; the message says which step and why."""


def cache_root() -> Path:
    """Where vkpy keeps what it builds: ``$VKPY_CACHE_DIR``, else the user cache folder."""
    explicit = os.environ.get("VKPY_CACHE_DIR")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "vkpy"


def bin_dir() -> Path:
    """The versioned folder holding the binaries of the pinned versions."""
    return cache_root() / f"control-plane-{KUBERNETES_VERSION}-etcd-{ETCD_VERSION}" / "bin"


def binary(name: str) -> Path:
    return bin_dir() / name


def missing_binaries() -> list[str]:
    return [name for name in ALL_BINARIES if not os.access(binary(name), os.X_OK)]


def _go() -> str:
    go = shutil.which("go")
    if go is None:
        raise BuildError(
            "the control plane is built from Go modules, but `go` is not on PATH: "
            "install Go 1.25 or newer (https://go.dev/doc/install) and try again"
        )
    return go


def _run(cmd: list[str], cwd: Path, step: str, env: dict[str, str] | None = None) -> str:
    full_env = {**os.environ, "GOFLAGS": "-mod=mod", "CGO_ENABLED": "0", **(env or {})}
    proc = subprocess.run(cmd, cwd=cwd, env=full_env, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-30:])
        raise BuildError(f"{step} failed (exit {proc.returncode}): {' '.join(cmd)}\n{tail}")
    return proc.stdout


def _staging_modules(go: str, workdir: Path) -> list[str]:
    """Read the release's own go.mod for the staging modules it replaces with local folders."""
    out = _run(
        [go, "mod", "download", "-json", f"k8s.io/kubernetes@{KUBERNETES_VERSION}"],
        workdir,
        "downloading k8s.io/kubernetes",
    )
    gomod = Path(json.loads(out)["GoMod"]).read_text()
    modules = sorted(set(_STAGING_REPLACE.findall(gomod)))
    if not modules:
        raise BuildError(f"k8s.io/kubernetes {KUBERNETES_VERSION}'s go.mod lists no staging modules")
    return modules


def _go_directive(go: str, workdir: Path) -> str:
    version = _run([go, "env", "GOVERSION"], workdir, "reading go version").strip()
    match = re.match(r"go(\d+\.\d+)", version)
    if not match:
        raise BuildError(f"cannot parse the Go version {version!r}")
    return match.group(1)


def build_kubernetes(go: str, work: Path, out: Path) -> None:
    module = work / "kubernetes"
    module.mkdir()
    (module / "go.mod").write_text(f"module vkpy.invalid/kubernetes-build\n\ngo {_go_directive(go, work)}\n")
    minor = KUBERNETES_VERSION.split(".")[1]
    staging = _staging_modules(go, module)
    replaces = "".join(f"\t{m} => {m} v0.{minor}.{KUBERNETES_VERSION.split('.', 2)[2]}\n" for m in staging)
    with (module / "go.mod").open("a") as f:
        f.write(f"\nrequire k8s.io/kubernetes {KUBERNETES_VERSION}\n\nreplace (\n{replaces})\n")
    major = KUBERNETES_VERSION.lstrip("v").split(".")[0]
    pkg = "k8s.io/component-base/version"
    ldflags = " ".join(
        [
            "-s -w",
            f"-X {pkg}.gitVersion={KUBERNETES_VERSION}",
            f"-X {pkg}.gitMajor={major}",
            f"-X {pkg}.gitMinor={minor}",
            f"-X {pkg}.gitTreeState=clean",
            f"-X {pkg}.buildDate=1970-01-01T00:00:00Z",
        ]
    )
    targets = [f"k8s.io/kubernetes/cmd/{name}" for name in KUBERNETES_COMMANDS]
    _run([go, "mod", "download"], module, "downloading Kubernetes' dependencies")
    _run(
        [go, "build", "-trimpath", "-ldflags", ldflags, "-o", str(out) + os.sep, *targets],
        module,
        f"building Kubernetes {KUBERNETES_VERSION}",
    )


def build_etcd(go: str, work: Path, out: Path) -> None:
    module = work / "etcd"
    module.mkdir()
    (module / "go.mod").write_text(
        f"module vkpy.invalid/etcd-build\n\ngo {_go_directive(go, work)}\n\n"
        f"require go.etcd.io/etcd/server/v3 {ETCD_VERSION}\n"
    )
    (module / "main.go").write_text(
        "package main\n\n"
        'import (\n\t"os"\n\n\t"go.etcd.io/etcd/server/v3/etcdmain"\n)\n\n'
        "func main() { etcdmain.Main(os.Args) }\n"
    )
    _run([go, "mod", "tidy"], module, "resolving etcd's dependencies")
    _run(
        [go, "build", "-trimpath", "-ldflags", "-s -w", "-o", str(out / "etcd"), "."],
        module,
        f"building etcd {ETCD_VERSION}",
    )


def ensure_built(log: bool = True) -> Path:
    """Build whatever binary is missing; return the folder holding all of them."""
    missing = missing_binaries()
    target = bin_dir()
    if not missing:
        return target
    go = _go()
    target.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="vkpy-build-", dir=target.parent) as tmp:
        work = Path(tmp)
        staged = work / "bin"
        staged.mkdir()
        if any(name in KUBERNETES_COMMANDS for name in missing):
            if log:
                print(f"vkpy: building Kubernetes {KUBERNETES_VERSION} (several minutes)", file=sys.stderr)
            build_kubernetes(go, work, staged)
        if "etcd" in missing:
            if log:
                print(f"vkpy: building etcd {ETCD_VERSION}", file=sys.stderr)
            build_etcd(go, work, staged)
        target.mkdir(parents=True, exist_ok=True)
        for built in staged.iterdir():
            # Rename within one filesystem is atomic: a concurrent reader never sees half a binary.
            os.replace(built, target / built.name)
    if log:
        print(
            f"vkpy: control plane built in {time.monotonic() - started:.0f} s into {target}", file=sys.stderr
        )
    still_missing = missing_binaries()
    if still_missing:
        raise BuildError(f"build finished but these are still missing: {', '.join(still_missing)}")
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m vkpy.testing.binaries",
        description="Build (or find) the Kubernetes and etcd binaries that vkpy's test cluster runs.",
    )
    parser.add_argument("command", choices=["build", "path"], nargs="?", default="build")
    args = parser.parse_args(argv)
    if args.command == "path":
        print(bin_dir())
        return 0 if not missing_binaries() else 1
    try:
        print(ensure_built())
    except BuildError as exc:
        print(f"vkpy: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
