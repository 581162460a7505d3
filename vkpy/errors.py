"""Exceptions plugins raise and the core understands."""

from __future__ import annotations


class VkpyError(Exception):
    """Base of every vkpy error."""


class ConfigError(VkpyError):
    """The configuration is wrong; the message names the file, the key path and the fix."""


class DeviceUnreachable(VkpyError):
    """The device cannot be reached right now. Not the same as "the device has no such pod":
    the core keeps the last known state and retries, and never creates a pod twice because of it."""


class PodRejected(VkpyError):
    """The device will never run this pod as specified (an unknown program, too big for it...).
    The core fails the pod with this message instead of retrying."""

    def __init__(self, message: str, reason: str = "DeviceRejected") -> None:
        super().__init__(message)
        self.reason = reason


class PluginError(VkpyError):
    """A plugin could not be loaded or misbehaved; the message names the plugin."""


class LogsNotAvailable(VkpyError):
    """The requested logs do not exist (no such container, no previous instance...)."""
