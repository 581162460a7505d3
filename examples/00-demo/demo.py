"""vkpy's demo: a local control plane, one vkpy node on the `local` transport, a pod and a Job.

Run it with `nox -s demo` (or `python examples/00-demo/demo.py` where vkpy is installed). It leaves
the cluster running and prints how to reach it with kubectl, until Ctrl-C.
"""

from __future__ import annotations

import os
import signal
import tempfile
import textwrap
import time
from pathlib import Path

from vkpy.testing import wait_for
from vkpy.testing.cluster import ControlPlane, free_port
from vkpy.testing.runner import VkpyProcess

NODE = "demo-device-01"

MANIFESTS = textwrap.dedent(
    f"""
    apiVersion: v1
    kind: Pod
    metadata:
      name: hello
    spec:
      nodeSelector: {{kubernetes.io/hostname: {NODE}}}
      tolerations: [{{key: virtual-kubelet.io/provider, operator: Exists}}]
      restartPolicy: Never
      containers:
        - name: hello
          image: none  # no runtime meaning on a bare device: the command runs as a process
          command: [sh, -c, 'for i in 1 2 3; do echo "hello from $(hostname) on $NODE ($i)"; sleep 1; done']
          env: [{{name: NODE, valueFrom: {{fieldRef: {{fieldPath: spec.nodeName}}}}}}]
    ---
    apiVersion: batch/v1
    kind: Job
    metadata:
      name: count
    spec:
      backoffLimit: 1
      template:
        spec:
          nodeSelector: {{kubernetes.io/hostname: {NODE}}}
          tolerations: [{{key: virtual-kubelet.io/provider, operator: Exists}}]
          restartPolicy: Never
          containers:
            - name: count
              image: none
              command: [sh, -c, 'for i in 1 2 3 4 5; do echo "count $i"; sleep 0.5; done']
    """
)


def step(text: str) -> None:
    print(f"\n\033[1m==> {text}\033[0m", flush=True)


def main() -> int:
    workdir = Path(tempfile.mkdtemp(prefix="vkpy-demo-"))
    step(f"starting a local control plane (etcd, kube-apiserver, scheduler, controller-manager) in {workdir}")
    plane = ControlPlane.start(workdir / "cluster", controllers=True)
    vkpy: VkpyProcess | None = None
    try:
        identity = plane.node_identity(NODE)
        serving = plane.serving_certificate(NODE)
        config = {
            "log": {"level": "info", "format": "console"},
            "kubelet": {
                "address": "127.0.0.1",
                "port": free_port(),
                "tls_cert": str(serving.cert),
                "tls_key": str(serving.key),
                "client_ca": str(plane.ca.files.cert),
            },
            "nodes": [
                {
                    "name": NODE,
                    "transport": "local",
                    "kubeconfig": str(identity.kubeconfig),
                    "capacity": {"cpu": "2", "memory": "2Gi", "pods": "10"},
                    "labels": {"demo": "true"},
                    "local": {"state_dir": str(workdir / "device-state")},
                }
            ],
        }
        step(f"starting vkpy with node {NODE} on the local transport (log: {workdir / 'vkpy' / 'vkpy.log'})")
        vkpy = VkpyProcess(config, workdir / "vkpy").start()
        wait_for(
            lambda: (
                "True"
                in plane.kubectl(
                    "get",
                    "node",
                    NODE,
                    "-o",
                    "jsonpath={.status.conditions[?(@.type=='Ready')].status}",
                    check=False,
                ).stdout
            ),
            timeout=60,
            what=f"node {NODE} to be Ready",
        )
        print(plane.kubectl("get", "nodes", "-o", "wide").stdout)

        step("kubectl apply: a pod and a Job that tolerate the node's taint")
        print(plane.apply(MANIFESTS))
        wait_for(
            lambda: (
                plane.kubectl("get", "pod", "hello", "-o", "jsonpath={.status.phase}").stdout == "Succeeded"
            ),
            timeout=60,
            what="pod hello to succeed",
        )
        wait_for(
            lambda: plane.kubectl("get", "job", "count", "-o", "jsonpath={.status.succeeded}").stdout == "1",
            timeout=90,
            what="job count to complete",
        )

        step("kubectl get pods -o wide")
        print(plane.kubectl("get", "pods", "-o", "wide").stdout)
        step("kubectl logs hello")
        print(plane.kubectl("logs", "hello").stdout)
        step("kubectl logs job/count")
        print(plane.kubectl("logs", "job/count").stdout)

        step("the cluster stays up: try it yourself")
        print(f"  export KUBECONFIG={plane.admin_kubeconfig}")
        print(f"  export PATH={plane.bin_dir}:$PATH   # the kubectl built for this cluster")
        print("  kubectl get nodes,pods -o wide")
        print("Press Ctrl-C to stop.", flush=True)
        if os.environ.get("VKPY_DEMO_EXIT"):
            return 0
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        return 0
    finally:
        step("stopping")
        if vkpy is not None:
            vkpy.stop()
        plane.stop()


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    raise SystemExit(main())
