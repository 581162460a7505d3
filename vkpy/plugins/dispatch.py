"""Calling hooks on a node's PluginManager: first answer wins for pod hooks, all run for node hooks.

pluggy's ``firstresult`` cannot decide this with coroutines (it would return the first plugin's
coroutine unawaited), so implementations are awaited here one by one, last registered first.
"""

from __future__ import annotations

import inspect
import os
import time
from typing import Any

import pluggy
import structlog

from vkpy.errors import PluginError
from vkpy.types import DEFER

log = structlog.get_logger("vkpy.plugins")

_TRACE = os.environ.get("VKPY_TRACE_HOOKS", "") not in {"", "0", "false"}


class NoImplementation(PluginError):
    """No plugin on the node implements a hook the core needs."""


def _implementations(pm: pluggy.PluginManager, hook_name: str) -> list[Any]:
    caller = getattr(pm.hook, hook_name)
    return list(reversed(caller.get_hookimpls()))


def has_implementation(pm: pluggy.PluginManager, hook_name: str) -> bool:
    return bool(_implementations(pm, hook_name))


async def _call(impl: Any, hook_name: str, kwargs: dict[str, Any]) -> Any:
    """One implementation, timed into the node's metrics when the node keeps them."""
    if _TRACE:
        log.debug("hook.call", hook=hook_name, plugin=impl.plugin_name)
    started = time.perf_counter()
    outcome = "error"
    try:
        result = impl.function(*(kwargs[name] for name in impl.argnames))
        if inspect.isawaitable(result):
            result = await result
        outcome = "deferred" if result is DEFER else "ok"
        return result
    finally:
        metrics = getattr(kwargs.get("node"), "metrics", None)
        if metrics is not None:
            metrics.observe_hook(hook_name, impl.plugin_name, time.perf_counter() - started, outcome)


async def call_first(pm: pluggy.PluginManager, hook_name: str, **kwargs: Any) -> Any:
    """Ask each implementation, most specific first; return the first answer that is not DEFER."""
    for impl in _implementations(pm, hook_name):
        result = await _call(impl, hook_name, kwargs)
        if result is DEFER:
            continue
        return result
    raise NoImplementation(f"no plugin on this node implements {hook_name!r}")


async def call_all(
    pm: pluggy.PluginManager, hook_name: str, *, reverse: bool = False, **kwargs: Any
) -> list[Any]:
    """Run every implementation (transport first, unless ``reverse``); collect non-None results."""
    impls = _implementations(pm, hook_name)
    if not reverse:
        impls.reverse()
    results = []
    for impl in impls:
        result = await _call(impl, hook_name, kwargs)
        if result is not None and result is not DEFER:
            results.append(result)
    return results
