"""The base class of transports: one instance per node, holding the link to that node's device."""

from __future__ import annotations

from typing import Any, ClassVar

from vkpy.types import NodeHandle


class Transport:
    """Subclass it, decorate the pod and node hooks you implement with ``@vkpy.hookimpl``, and
    register the class from your plugin module's ``register_transports(register)`` hook.

    ``options_class`` is an attrs class: the node's YAML section under the transport's name is
    validated into it (errors name the key path) and handed to ``__init__`` as ``options``.
    """

    name: ClassVar[str] = ""
    options_class: ClassVar[type[Any] | None] = None
    pushes_status: ClassVar[bool] = False
    """True when the transport calls ``node.report_status(uid)`` whenever a container starts or
    ends: the core then polls each pod only rarely, as a safety net."""

    def __init__(self, node: NodeHandle, options: Any) -> None:
        self.node = node
        self.options = options
