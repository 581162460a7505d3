"""vkpy: a virtual kubelet in Python that schedules Kubernetes pods onto devices.

The public API for plugin authors is what this module exports; everything else is internal.
"""

from __future__ import annotations

import pluggy

from vkpy.errors import (
    ConfigError,
    DeviceUnreachable,
    LogsNotAvailable,
    PluginError,
    PodRejected,
    VkpyError,
)
from vkpy.plugins.transport import Transport
from vkpy.types import (
    DEFER,
    Container,
    ContainerState,
    DeviceHealth,
    LogLine,
    LogOptions,
    NodeHandle,
    Pod,
    PodStatusReport,
    Running,
    Terminated,
    Volume,
    VolumeFile,
    VolumeMount,
    Waiting,
)

__version__ = "0.1.0"

hookimpl = pluggy.HookimplMarker("vkpy")
"""Decorate hook implementations with this: ``@vkpy.hookimpl``."""

__all__ = [
    "DEFER",
    "ConfigError",
    "Container",
    "ContainerState",
    "DeviceHealth",
    "DeviceUnreachable",
    "LogLine",
    "LogOptions",
    "LogsNotAvailable",
    "NodeHandle",
    "PluginError",
    "Pod",
    "PodRejected",
    "PodStatusReport",
    "Running",
    "Terminated",
    "Transport",
    "VkpyError",
    "Volume",
    "VolumeFile",
    "VolumeMount",
    "Waiting",
    "__version__",
    "hookimpl",
]
