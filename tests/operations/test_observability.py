"""What an operator watches: /metrics (Prometheus text), /healthz and /readyz, with a real pod, a
device that drops out, and the API server becoming unreachable and coming back."""

from __future__ import annotations

import ssl
import urllib.request
from pathlib import Path
from urllib.parse import urlparse

from helpers import pod_manifest, wait_node_ready, wait_phase
from ops_support import Relay, RunVkpy, base_config, http_get, local_node, metric, stable_port, wait_until

from vkpy.testing.cluster import ControlPlane
from vkpy.testing.pki import write_kubeconfig


def test_metrics_and_readiness_follow_the_node_the_device_and_the_api(
    k8s_cluster: ControlPlane, k8s_namespace: str, run_vkpy: RunVkpy, probe_dir: Path, tmp_path: Path
) -> None:
    relay = Relay(int(urlparse(k8s_cluster.server).port or 443)).start()
    identity = k8s_cluster.node_identity("obs-a")
    through_relay = write_kubeconfig(
        tmp_path / "relay.kubeconfig",
        f"https://127.0.0.1:{relay.port}",
        k8s_cluster.ca.files.cert,
        "system:node:obs-a",
        identity.client,
    )
    metrics_port = stable_port()
    config = base_config(k8s_cluster, serving=k8s_cluster.serving_certificate("vkpy-obs"))
    config["metrics"] = {"address": "127.0.0.1", "port": metrics_port}
    config["nodes"] = [local_node("obs-a", tmp_path / "state", kubeconfig=str(through_relay))]
    run_vkpy(config)
    wait_node_ready(k8s_cluster, "obs-a")
    k8s_cluster.apply(pod_manifest("busy", "obs-a", ["sleep", "300"], k8s_namespace))
    wait_phase(k8s_cluster, "busy", k8s_namespace, "Running")

    base = f"http://127.0.0.1:{metrics_port}"

    def scrape() -> str:
        status, text = http_get(f"{base}/metrics")
        assert status == 200
        return text

    wait_until(
        lambda: metric(scrape(), "vkpy_pods", node="obs-a", phase="Running") == 1,
        timeout=20,
        what="1 running pod",
    )
    text = scrape()
    assert "# TYPE vkpy_hook_duration_seconds histogram" in text
    # The probe device plugin is asked first and defers to the transport: both calls are timed.
    for plugin, outcome in (("probe", "deferred"), ("transport:local", "ok")):
        count = metric(
            text, "vkpy_hook_duration_seconds_count", node="obs-a", hook="create_pod", plugin=plugin
        )
        assert count == 1, plugin
        inf = metric(text, "vkpy_hook_duration_seconds_bucket", hook="create_pod", plugin=plugin, le="+Inf")
        assert inf == 1
        calls = metric(text, "vkpy_hook_calls_total", hook="create_pod", plugin=plugin, outcome=outcome)
        assert calls == 1
    assert metric(text, "vkpy_node_ready", node="obs-a") == 1
    assert metric(text, "vkpy_device_reachable", node="obs-a") == 1
    assert (
        metric(text, "vkpy_api_requests_total", identity="node:obs-a", method="PATCH", code="200") or 0
    ) > 0
    assert metric(text, "vkpy_watch_up", watch="pods:obs-a") == 1
    assert metric(text, "vkpy_watch_restarts_total", watch="pods:obs-a", reason="disconnected") == 0
    lag = metric(text, "vkpy_node_lease_renew_lag_seconds", node="obs-a")
    assert lag is not None
    assert lag < 5
    status, body = http_get(f"{base}/readyz")
    assert status == 200, body
    assert body.splitlines() == ["[+]api ok", "[+]watches ok", "[+]leases ok", "readyz check passed"]
    # The kubelet port answers the same probes without a client certificate.
    insecure = ssl.create_default_context()
    insecure.check_hostname, insecure.verify_mode = False, ssl.CERT_NONE
    with urllib.request.urlopen(
        f"https://127.0.0.1:{config['kubelet']['port']}/readyz", context=insecure, timeout=5
    ) as response:
        assert response.status == 200

    # The device drops out and comes back: counted, and the node's readiness follows.
    flag = probe_dir / "obs-a.unreachable"
    flag.write_text("cable pulled")
    wait_until(
        lambda: metric(scrape(), "vkpy_device_reachable", node="obs-a") == 0, timeout=30, what="unreachable"
    )
    assert metric(scrape(), "vkpy_node_ready", node="obs-a") == 0
    flag.unlink()
    wait_until(
        lambda: metric(scrape(), "vkpy_device_reachable", node="obs-a") == 1, timeout=30, what="reachable"
    )
    text = scrape()
    assert metric(text, "vkpy_device_disconnects_total", node="obs-a") == 1
    assert metric(text, "vkpy_device_reconnects_total", node="obs-a") == 1

    # The API server becomes unreachable: not ready (and why), but alive.
    relay.cut()

    def not_ready() -> str | None:
        status, body = http_get(f"{base}/readyz")
        # The watch notices first (its stream breaks); the next request (a Lease renewal within
        # 10 s) shows the API itself cannot be reached.
        return body if status == 500 and "[-]api failed: node:obs-a: " in body else None

    body = wait_until(not_ready, timeout=30, what="/readyz to fail")
    assert "[-]watches failed: pods:obs-a: " in body
    assert body.endswith("readyz check failed\n")
    assert http_get(f"{base}/healthz") == (200, "ok\n")
    text = scrape()
    errors = [line for line in text.splitlines() if line.startswith("vkpy_api_request_errors_total{")]
    assert errors, "no API errors counted"
    wait_until(
        lambda: (
            (metric(scrape(), "vkpy_watch_restarts_total", watch="pods:obs-a", reason="disconnected") or 0)
            >= 1
        ),
        timeout=30,
        what="the watch to count its disconnection",
    )

    # And back: ready again once requests and watches get through.
    relay.restore()
    wait_until(lambda: http_get(f"{base}/readyz")[0] == 200, timeout=60, what="/readyz to pass again")
    assert metric(scrape(), "vkpy_watch_up", watch="pods:obs-a") == 1
    k8s_cluster.kubectl("delete", "pod", "busy", "-n", k8s_namespace, "--grace-period=1", "--wait=true")
    relay.cut()
