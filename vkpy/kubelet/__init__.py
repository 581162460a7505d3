"""The kubelet HTTPS API that the kube-apiserver calls for ``kubectl logs``: one server for every node
of the process. See docs/kubelet-api.md."""

from __future__ import annotations

from vkpy.kubelet.query import QueryError, parse_log_options, parse_stream
from vkpy.kubelet.server import ANONYMOUS_REFUSED, KubeletBackend, KubeletServer
from vkpy.kubelet.tls import PemCertificate, self_signed_certificate

__all__ = [
    "ANONYMOUS_REFUSED",
    "KubeletBackend",
    "KubeletServer",
    "PemCertificate",
    "QueryError",
    "parse_log_options",
    "parse_stream",
    "self_signed_certificate",
]
