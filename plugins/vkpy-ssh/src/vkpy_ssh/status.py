"""Reading the device script's status lines (``device.sh status`` / ``sweep``) into reports (pure).

Lines are tab-separated::

    P  <uid>  present|absent  <deleting 0|1>
    C  <uid>  init|app  <name>  waiting|starting|running|exited|lost  <exit code>  <reason>
       <started at>  <finished at>  <message>
    END

``END`` proves the output is complete: a listing cut short by a dropped link must not make pods
look absent.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterable, Mapping

import attrs

from vkpy import ContainerState, PodStatusReport, Running, Terminated, Waiting

LOST_EXIT_CODE = 137
LOST_REASON = "ContainerStatusUnknown"


class IncompleteStatus(ValueError):
    """The device's answer was cut short."""


@attrs.frozen
class ContainerLine:
    kind: str
    name: str
    state: str
    exit_code: str = "-"
    reason: str = "-"
    started_at: str = "-"
    finished_at: str = "-"
    message: str = ""


@attrs.frozen
class PodLine:
    """One pod as the device described it. ``lines`` doubles as a fingerprint for change detection."""

    uid: str
    present: bool
    deleting: bool = False
    containers: tuple[ContainerLine, ...] = ()

    def report(self) -> PodStatusReport | None:
        return to_report(self) if self.present else None

    def container(self, name: str) -> ContainerLine | None:
        for line in self.containers:
            if line.name == name:
                return line
        return None


def parse(text: str) -> dict[str, PodLine]:
    """Every pod in a status or sweep answer, by UID. Raises IncompleteStatus without ``END``."""
    pods: dict[str, PodLine] = {}
    containers: dict[str, list[ContainerLine]] = {}
    complete = False
    for raw in text.splitlines():
        fields = raw.split("\t")
        if fields[0] == "END":
            complete = True
        elif fields[0] == "P" and len(fields) >= 4:
            pods[fields[1]] = PodLine(
                uid=fields[1], present=fields[2] == "present", deleting=fields[3] == "1"
            )
            containers.setdefault(fields[1], [])
        elif fields[0] == "C" and len(fields) >= 10:
            containers.setdefault(fields[1], []).append(
                ContainerLine(
                    kind=fields[2],
                    name=fields[3],
                    state=fields[4],
                    exit_code=fields[5],
                    reason=fields[6],
                    started_at=fields[7],
                    finished_at=fields[8],
                    message="\t".join(fields[9:]),
                )
            )
    if not complete:
        raise IncompleteStatus("the device's status answer is incomplete")
    return {uid: attrs.evolve(pod, containers=tuple(containers.get(uid, ()))) for uid, pod in pods.items()}


def _time(value: str) -> datetime.datetime | None:
    if not value or value == "-":
        return None
    try:
        parsed = datetime.datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=datetime.UTC)


def _exit_code(value: str) -> int:
    try:
        return int(value)
    except ValueError:
        return -1


def container_state(line: ContainerLine, waiting_reason: str) -> ContainerState:
    if line.state == "exited":
        return Terminated(
            exit_code=_exit_code(line.exit_code),
            reason="" if line.reason == "-" else line.reason,
            message=line.message,
            started_at=_time(line.started_at),
            finished_at=_time(line.finished_at),
        )
    if line.state == "running":
        started = _time(line.started_at)
        return Running(started_at=started) if started else Waiting("ContainerCreating")
    if line.state == "lost":
        # The supervisor vanished without an exit record: killed, or the device rebooted.
        return Terminated(exit_code=LOST_EXIT_CODE, reason=LOST_REASON, message=line.message)
    if line.state == "starting":
        return Waiting("ContainerCreating")
    return Waiting(waiting_reason)


def to_report(pod: PodLine) -> PodStatusReport:
    """Kubelet semantics: app containers wait (PodInitializing) until every init container has
    succeeded; a failed init container is named in the message."""
    init: dict[str, ContainerState] = {}
    message = ""
    initialized = True
    for line in _of_kind(pod.containers, "init"):
        state = container_state(line, "PodInitializing")
        init[line.name] = state
        if initialized and isinstance(state, Terminated) and not state.succeeded:
            message = f"init container {line.name!r} failed with exit code {state.exit_code}"
        initialized = initialized and isinstance(state, Terminated) and state.succeeded
    waiting = "ContainerCreating" if initialized else "PodInitializing"
    app = {line.name: container_state(line, waiting) for line in _of_kind(pod.containers, "app")}
    return PodStatusReport(containers=app, init_containers=init, message=message)


def _of_kind(lines: Iterable[ContainerLine], kind: str) -> list[ContainerLine]:
    return [line for line in lines if line.kind == kind]


def running_names(pods: Mapping[str, PodLine], uid: str) -> set[str]:
    pod = pods.get(uid)
    if pod is None:
        return set()
    return {line.name for line in pod.containers if line.state in {"running", "starting"}}
