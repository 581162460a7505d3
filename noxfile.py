"""Developer tasks: `nox -s tests`, `lint`, `typecheck`, `docs`, `demo`, `bench`."""

from __future__ import annotations

from pathlib import Path

import nox

nox.options.default_venv_backend = "venv"
nox.options.reuse_existing_virtualenvs = True
nox.options.sessions = ["tests", "lint", "typecheck", "docs"]

ROOT = Path(__file__).parent
# The interpreter nox itself runs on (3.11 or newer): pinning one version would make nox skip
# every session, and still exit 0, on a machine that has another.
PYTHON = None


def plugin_dirs() -> list[str]:
    """Every plugin under plugins/, found by its pyproject.toml: a new plugin needs no nox edit."""
    return [str(p.parent) for p in sorted(ROOT.glob("plugins/*/pyproject.toml"))]


def test_support_dirs() -> list[str]:
    """Plugins the tests load: test-only ones (fault injection, call recording) and the examples."""
    found = [*ROOT.glob("tests/support/*/pyproject.toml"), *ROOT.glob("examples/*/pyproject.toml")]
    return [str(p.parent) for p in sorted(found)]


def install_project(session: nox.Session, *extra: str) -> None:
    editable = ["-e", ".[testing]"]
    for plugin in plugin_dirs() + test_support_dirs():
        editable += ["-e", plugin]
    session.install(*editable, *extra)


def build_control_plane(session: nox.Session) -> None:
    session.run("python", "-m", "vkpy.testing.binaries", "build")


@nox.session(python=PYTHON)
def tests(session: nox.Session) -> None:
    """The whole test suite against a real control plane (built once, then cached)."""
    install_project(session)
    build_control_plane(session)
    session.run("pytest", *session.posargs)


@nox.session(python=PYTHON)
def lint(session: nox.Session) -> None:
    """ruff, and the import contracts (core never imports a plugin; plugins use the public API)."""
    install_project(session, "ruff", "import-linter")
    session.run("ruff", "check", "vkpy", "plugins", "tests", "examples", "benchmarks", "noxfile.py")
    session.run("lint-imports")


@nox.session(python=PYTHON)
def typecheck(session: nox.Session) -> None:
    """mypy --strict over the core and every plugin."""
    install_project(session, "mypy", "types-PyYAML")
    packages = [f"-p={Path(d).name.replace('-', '_')}" for d in plugin_dirs()]
    session.run("mypy", "--strict", "-p=vkpy", *packages)


@nox.session(python=PYTHON)
def docs(session: nox.Session) -> None:
    """Build the documentation; any warning is an error."""
    session.install("sphinx>=8,<10", "myst-parser>=4", "furo")
    session.run("sphinx-build", "-W", "--keep-going", "-b", "html", "docs", "docs/_build/html")


@nox.session(python=PYTHON)
def bench(session: nox.Session) -> None:
    """vkpy beside the Go virtual-kubelet and kwok (`nox -s bench -- --quick` for a smoke run)."""
    install_project(session)
    session.install("-e", "benchmarks/vkpy-instant")
    if "--profile" in session.posargs:
        session.install("py-spy")
    build_control_plane(session)
    session.run("python", "benchmarks/contenders.py", "build")
    session.run("python", "benchmarks/run.py", *session.posargs)


@nox.session(python=PYTHON)
def demo(session: nox.Session) -> None:
    """A local control plane, a vkpy node on the local transport, a pod and a Job on it."""
    install_project(session)
    build_control_plane(session)
    session.run("python", "examples/00-demo/demo.py", *session.posargs)
