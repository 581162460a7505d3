"""The few numbers the kubelet API keeps about itself, in the Prometheus text format (no client
library: three series do not justify a dependency)."""

from __future__ import annotations

import collections

import attrs

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


@attrs.define
class KubeletMetrics:
    """Counters of one :class:`~vkpy.kubelet.server.KubeletServer`. ``route`` is a route name we chose
    (``containerLogs``, ``pods``, ``other``...), never a raw path: pod names would make every series
    unique."""

    requests: collections.Counter[tuple[str, int]] = attrs.field(factory=collections.Counter)
    log_bytes: int = 0
    log_streams: int = 0

    def count_request(self, route: str, code: int) -> None:
        self.requests[(route, code)] += 1

    def render(self) -> str:
        lines = [
            "# HELP vkpy_kubelet_requests_total Requests to the kubelet API, by route and status code.",
            "# TYPE vkpy_kubelet_requests_total counter",
        ]
        for (route, code), count in sorted(self.requests.items()):
            lines.append(f'vkpy_kubelet_requests_total{{route="{route}",code="{code}"}} {count}')
        lines += [
            "# HELP vkpy_kubelet_log_bytes_total Container log bytes sent to clients.",
            "# TYPE vkpy_kubelet_log_bytes_total counter",
            f"vkpy_kubelet_log_bytes_total {self.log_bytes}",
            "# HELP vkpy_kubelet_log_streams Container log responses being streamed now.",
            "# TYPE vkpy_kubelet_log_streams gauge",
            f"vkpy_kubelet_log_streams {self.log_streams}",
        ]
        return "\n".join(lines) + "\n"
