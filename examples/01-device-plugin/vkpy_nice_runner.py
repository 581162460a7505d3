"""nice-runner: run the containers of some pods at a lower CPU priority.

A pod asks for it with an annotation; its containers then start under ``nice -n <level>`` on the
device. Pods without the annotation are left to the node's transport, untouched::

    metadata:
      annotations:
        example.vkpy.io/nice: "10"

Everything else (status, logs, delete) stays the transport's job: this plugin implements only the
two hooks that start a container, and hands each of them to the transport with a rewritten argv.
"""

from __future__ import annotations

import re

import attrs

import vkpy
from vkpy import DEFER, Container, NodeHandle, Pod, PodRejected

ANNOTATION = "example.vkpy.io/nice"
_LEVEL = re.compile(r"[0-9]{1,2}")


def niceness(pod: Pod) -> int | None:
    """The niceness the pod asks for, or None when it has no annotation."""
    value = pod.annotations.get(ANNOTATION)
    if value is None:
        return None
    if not _LEVEL.fullmatch(value) or not 1 <= int(value) <= 19:
        # Retrying cannot fix a pod spec: PodRejected fails the pod with this reason and message.
        raise PodRejected(
            f"{ANNOTATION} must be a whole number from 1 to 19, got {value!r}", reason="InvalidNiceness"
        )
    return int(value)


def with_nice(container: Container, level: int) -> Container:
    if not container.argv:  # nothing to run: the transport reports that, not nice
        return container
    # nice executes the argv as given: still no shell between the pod spec and the program.
    return attrs.evolve(container, command=("nice", "-n", str(level), *container.argv), args=())


def niced(pod: Pod, level: int) -> Pod:
    return attrs.evolve(
        pod,
        containers=tuple(with_nice(c, level) for c in pod.containers),
        init_containers=tuple(with_nice(c, level) for c in pod.init_containers),
    )


@vkpy.hookimpl
async def create_pod(node: NodeHandle, pod: Pod) -> object:
    level = niceness(pod)
    if level is None:
        return DEFER  # not ours: the transport creates the pod as it is
    node.log.info("nice_runner.create", pod=pod.key, niceness=level)
    await node.transport.create_pod(node=node, pod=niced(pod, level))
    return None


@vkpy.hookimpl
async def restart_container(node: NodeHandle, pod: Pod, container_name: str) -> object:
    # The core passes the pod as the API has it; a transport that rebuilds the command from it
    # must get the niced argv here too, or a restarted container would lose its priority.
    level = niceness(pod)
    if level is None:
        return DEFER
    await node.transport.restart_container(node=node, pod=niced(pod, level), container_name=container_name)
    return None
