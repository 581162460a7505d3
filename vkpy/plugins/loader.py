"""Finding plugins by entry point (group ``vkpy``), each loaded on its own so that one broken plugin
is reported by name and does not stop the others, and building a node's PluginManager."""

from __future__ import annotations

import functools
import importlib.metadata
import os
import types
from collections.abc import Callable, Iterable
from typing import Any

import attrs
import pluggy
import structlog

from vkpy import hookspecs
from vkpy.errors import PluginError
from vkpy.plugins.transport import Transport

ENTRY_POINT_GROUP = "vkpy"
log = structlog.get_logger("vkpy.plugins")

_HOOK_NAMES = frozenset(name for name in dir(hookspecs) if hasattr(getattr(hookspecs, name), "vkpy_spec"))


@attrs.frozen
class PluginInfo:
    name: str
    module: str
    distribution: str
    version: str
    hooks: tuple[str, ...]
    transports: tuple[str, ...]


@attrs.define
class PluginRegistry:
    """Every plugin installed (and loadable), the transports they provide, and those that broke."""

    plugins: dict[str, Any] = attrs.Factory(dict)
    infos: dict[str, PluginInfo] = attrs.Factory(dict)
    transports: dict[str, type[Transport]] = attrs.Factory(dict)
    transport_owner: dict[str, str] = attrs.Factory(dict)
    errors: dict[str, str] = attrs.Factory(dict)

    def device_plugins(self) -> list[str]:
        return sorted(name for name, info in self.infos.items() if not info.transports)

    def node_plugin_manager(
        self, transport: Transport, device_plugins: Iterable[str]
    ) -> pluggy.PluginManager:
        """A PluginManager holding exactly the node's transport and its device plugins, in order."""
        pm = pluggy.PluginManager("vkpy")
        pm.add_hookspecs(hookspecs)
        pm.register(transport, name=f"transport:{type(transport).name or type(transport).__name__}")
        for name in device_plugins:
            if name not in self.plugins:
                raise PluginError(f"plugin {name!r} is not installed or failed to load")
            pm.register(self.plugins[name], name=name)
        return pm


def _hook_names(plugin: Any) -> list[str]:
    names = []
    for attr in dir(plugin):
        value = getattr(plugin, attr, None)
        if callable(value) and hasattr(value, "vkpy_impl"):
            names.append(attr)
    return names


def _identity(value: Any) -> Any:
    return value


def load_plugins(extra: Iterable[tuple[str, Any]] = ()) -> PluginRegistry:
    """Load every ``vkpy`` entry point (limited by ``$VKPY_LOAD_PLUGINS``, a comma list, if set),
    plus ``extra`` (name, module) pairs registered by hand (tests, embedding)."""
    registry = PluginRegistry()
    allowed_env = os.environ.get("VKPY_LOAD_PLUGINS")
    allowed = {n.strip() for n in allowed_env.split(",") if n.strip()} if allowed_env is not None else None
    candidates: list[tuple[str, Callable[[], Any], str, str, str]] = []
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        if allowed is not None and ep.name not in allowed:
            continue
        dist = ep.dist.name if ep.dist else "?"
        version = ep.dist.version if ep.dist else "?"
        candidates.append((ep.name, ep.load, ep.value, dist, version))
    for name, module in extra:
        candidates.append(
            (
                name,
                functools.partial(_identity, module),
                getattr(module, "__name__", repr(module)),
                "(registered)",
                "-",
            )
        )

    for name, load, module_name, dist, version in candidates:
        if name in registry.plugins or name in registry.errors:
            registry.errors[name] = (
                f"plugin name {name!r} is provided twice ({module_name} and "
                f"{registry.infos[name].module if name in registry.infos else '?'}); uninstall one"
            )
            registry.plugins.pop(name, None)
            registry.infos.pop(name, None)
            continue
        try:
            plugin = load()
        except Exception as exc:  # a broken plugin must not stop the others
            registry.errors[name] = (
                f"plugin {name!r} ({module_name}) failed to import: {type(exc).__name__}: {exc}"
            )
            log.error("plugin.load_failed", plugin=name, module=module_name, error=str(exc))
            continue
        hooks = _hook_names(plugin)
        unknown = [h for h in hooks if h not in _HOOK_NAMES]
        if unknown:
            registry.errors[name] = (
                f"plugin {name!r} ({module_name}) implements unknown hook(s) {', '.join(unknown)}; "
                f"known hooks: {', '.join(sorted(_HOOK_NAMES))}"
            )
            continue
        provided: list[str] = []
        if "register_transports" in hooks:

            def register(
                transport_name: str,
                cls: type[Transport],
                _plugin: str = name,
                _provided: list[str] = provided,
            ) -> None:
                if not (isinstance(cls, type) and issubclass(cls, Transport)):
                    raise PluginError(f"plugin {_plugin!r} registered {cls!r}, which is not a vkpy.Transport")
                if transport_name in registry.transports:
                    raise PluginError(
                        f"transport {transport_name!r} is registered by both "
                        f"{registry.transport_owner[transport_name]!r} and {_plugin!r}"
                    )
                cls.name = transport_name
                registry.transports[transport_name] = cls
                registry.transport_owner[transport_name] = _plugin
                _provided.append(transport_name)

            try:
                plugin.register_transports(register=register)
            except Exception as exc:
                registry.errors[name] = f"plugin {name!r} failed in register_transports: {exc}"
                continue
        registry.plugins[name] = plugin
        registry.infos[name] = PluginInfo(
            name=name,
            module=module_name,
            distribution=dist,
            version=version,
            hooks=tuple(sorted(h for h in hooks if h != "register_transports")),
            transports=tuple(provided),
        )
    return registry


def is_module(plugin: Any) -> bool:
    return isinstance(plugin, types.ModuleType)
