"""pytest fixtures for vkpy and its plugins, registered through the ``pytest11`` entry point.

``k8s_cluster`` gives a session-wide real control plane (etcd + kube-apiserver; ``k8s_controllers``
adds the scheduler and controller-manager), ``k8s_namespace`` a fresh namespace for one test.
Under ``CI=true`` a control plane that cannot be built or started fails the run; elsewhere the tests
that need it are skipped with the reason.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from vkpy.testing.cluster import ControlPlane
    from vkpy.testing.sshd import SshServer, TcpRelay

_CLUSTER_KEY = pytest.StashKey["ControlPlane"]()


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def missing_part(what: str) -> None:
    """A real part a test needs is missing: fail under CI, skip elsewhere, saying what is missing."""
    if _in_ci():
        pytest.fail(f"CI=true and a required part is missing: {what}", pytrace=False)
    pytest.skip(f"missing: {what}")


@pytest.fixture(scope="session")
def k8s_cluster(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[ControlPlane]:
    """A real control plane (etcd + kube-apiserver) on loopback for the whole test session."""
    from vkpy.testing.binaries import BuildError
    from vkpy.testing.cluster import ClusterError, ControlPlane

    try:
        plane = ControlPlane.start(tmp_path_factory.mktemp("control-plane"))
    except (BuildError, ClusterError) as exc:
        missing_part(f"the Kubernetes control plane: {exc}")
        raise  # unreachable: missing_part always raises
    request.config.stash[_CLUSTER_KEY] = plane
    try:
        yield plane
    finally:
        plane.stop()


@pytest.fixture(scope="session")
def k8s_controllers(k8s_cluster: ControlPlane) -> ControlPlane:
    """The control plane with kube-scheduler and kube-controller-manager running too."""
    k8s_cluster.start_controllers()
    return k8s_cluster


@pytest.fixture
def k8s_namespace(k8s_cluster: ControlPlane) -> Iterator[str]:
    """A fresh namespace (with its default ServiceAccount), deleted after the test."""
    name = f"t-{uuid.uuid4().hex[:10]}"
    k8s_cluster.create_namespace(name)
    try:
        yield name
    finally:
        k8s_cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


@pytest.fixture
def sshd(tmp_path: Path) -> Iterator[SshServer]:
    """A real OpenSSH sshd on a free loopback port (unprivileged, throw-away host and client keys),
    accepting the current user with ``sshd.client_key``: the "device" of SSH transports."""
    from vkpy.testing import sshd as sshd_module

    reason = sshd_module.missing()
    if reason is not None:
        missing_part(reason)
    server = sshd_module.SshServer(tmp_path / "sshd").start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def relay(sshd: SshServer) -> Iterator[TcpRelay]:
    """A TCP relay in front of ``sshd``: connect to ``relay.port``; ``cut()``, ``stall()`` and
    ``restore()`` simulate a link that drops or goes silent."""
    from vkpy.testing.sshd import TcpRelay

    with TcpRelay(sshd.port) as link:
        yield link


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    plane = item.config.stash.get(_CLUSTER_KEY, None)
    if report.failed and plane is not None and "k8s_cluster" in getattr(item, "fixturenames", ()):
        for name, tail in plane.log_tails():
            report.sections.append((f"{name} log (last lines)", tail))
    return report
