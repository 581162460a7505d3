"""The benchmark's control plane: vkpy.testing's, plus an audit log (to count every contender's API
requests by user agent) and the scheduler's and controller-manager's client limits raised, so the
Deployment scenario measures the node agents rather than client-go's default 20-50 requests/s."""

from __future__ import annotations

import collections
import json
from collections.abc import Sequence
from pathlib import Path
from typing import cast

from vkpy.testing.cluster import Component, ControlPlane

AUDIT_POLICY = """\
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived, ResponseStarted]
rules:
  - level: Metadata
"""

_COMPONENT_LIMITS = ("--kube-api-qps=1000", "--kube-api-burst=2000")

WRITE_VERBS = frozenset({"create", "update", "patch", "delete", "deletecollection"})


class BenchControlPlane(ControlPlane):
    @classmethod
    def launch(cls, workdir: Path, *, controllers: bool = False) -> BenchControlPlane:
        return cast(BenchControlPlane, cls.start(workdir, controllers=controllers))

    @property
    def audit_log(self) -> Path:
        return self.workdir / "audit.log"

    def _spawn(self, name: str, argv: Sequence[str]) -> Component:
        extra: tuple[str, ...] = ()
        if name == "kube-apiserver":
            policy = self.workdir / "audit-policy.yaml"
            policy.write_text(AUDIT_POLICY)
            # Never rotated (the default rotates at 100 MB, which a run with --repeat passes, and a
            # mark into the old file would count nothing).
            extra = (
                f"--audit-policy-file={policy}",
                f"--audit-log-path={self.audit_log}",
                "--audit-log-maxsize=1000000",
            )
        elif name in {"kube-controller-manager", "kube-scheduler"}:
            extra = _COMPONENT_LIMITS
        return super()._spawn(name, [*argv, *extra])

    def audit_mark(self) -> int:
        """A position in the audit log; pass it to :meth:`requests_since`."""
        try:
            return self.audit_log.stat().st_size
        except FileNotFoundError:
            return 0

    def requests_since(self, mark: int, user_agent_prefix: str) -> collections.Counter[str]:
        """Requests completed since ``mark`` by clients whose user agent starts with the prefix,
        counted by ``verb resource[/subresource]``."""
        counts: collections.Counter[str] = collections.Counter()
        with self.audit_log.open("rb") as log:
            log.seek(mark)
            for line in log:
                try:
                    event = json.loads(line)
                except ValueError:
                    continue  # a line being written
                if not str(event.get("userAgent", "")).startswith(user_agent_prefix):
                    continue
                ref = event.get("objectRef") or {}
                resource = ref.get("resource", event.get("requestURI", "?"))
                if ref.get("subresource"):
                    resource += "/" + ref["subresource"]
                counts[f"{event.get('verb', '?')} {resource}"] += 1
        return counts


def writes(counts: collections.Counter[str]) -> int:
    return sum(n for key, n in counts.items() if key.split(" ", 1)[0] in WRITE_VERBS)


def pod_writes(counts: collections.Counter[str]) -> int:
    """Writes about pods: pod and pod-status writes, and events (about pods in these scenarios)."""
    return sum(
        n
        for key, n in counts.items()
        if key.split(" ", 1)[0] in WRITE_VERBS and key.split(" ", 1)[1].split("/")[0] in {"pods", "events"}
    )
