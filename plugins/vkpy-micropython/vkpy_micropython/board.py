"""One MicroPython board behind a serial transport in raw mode: the pods it runs, one script at a
time, and whether it answers.

Each pod gets a task that waits for the board (the transport's channel: first come, first served),
then enters the raw REPL with a soft reset, runs the environment preamble and the script, and
records how the script ended. While it waits its container is ``Waiting`` (``BoardBusy`` while
another pod's script runs). Deleting a running pod is Ctrl-C, repeated once the grace period is
over; a script that still does not stop is abandoned (the board may go on running it).
"""

from __future__ import annotations

import asyncio
import datetime
from collections.abc import AsyncIterator
from typing import Any

import attrs
import structlog

from vkpy import (
    ContainerState,
    DeviceHealth,
    DeviceUnreachable,
    LogLine,
    LogOptions,
    LogsNotAvailable,
    NodeHandle,
    Pod,
    PodStatusReport,
    Running,
    Terminated,
    Waiting,
)

from .logs import RunLog
from .repl import BoardNotResponding, Outcome, RawRepl, ReplError
from .script import Script, preamble

log = structlog.get_logger("vkpy.micropython")

EXIT_INTERRUPTED = 130
"""A script ended by Ctrl-C (KeyboardInterrupt), as a shell reports a program ended by SIGINT."""
EXIT_UNRESPONSIVE = 137
"""A script that ignored Ctrl-C past the grace period and was abandoned."""
EXIT_LINK_LOST = 255
"""The serial link dropped while the script ran: how it ended is unknown."""

__all__ = ["EXIT_INTERRUPTED", "EXIT_LINK_LOST", "EXIT_UNRESPONSIVE", "Board", "Settings", "ended_state"]


@attrs.frozen(kw_only=True)
class Settings:
    """Timings of the conversation with a board."""

    reply_timeout: float = 2.0
    """How long the board may take to answer a step of the raw REPL protocol."""
    reboot_timeout: float = 15.0
    """How long a soft reset (with ``boot.py``) may take."""
    interrupt_repeat: float = 0.5
    """After the grace period, Ctrl-C is sent again this often."""
    abandon_after: float = 5.0
    """Seconds of repeated Ctrl-C after the grace period before the script is given up."""
    retry_initial: float = 1.0
    retry_max: float = 30.0
    """A board that does not answer is tried again after delays doubling from the first to the second."""
    probe_timeout: float = 4.0
    """``node_health`` checks an idle board's raw REPL within this (the core allows 5 s)."""


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


@attrs.define(eq=False)
class Run:
    """A pod on the board: its script, its container's state and the logs of its runs."""

    pod: Pod
    script: Script
    state: ContainerState = attrs.field(factory=Waiting)
    log: RunLog | None = None
    previous: RunLog | None = None
    task: asyncio.Task[None] | None = None
    stop: asyncio.Event = attrs.field(factory=asyncio.Event)
    grace: float = 30.0
    deleting: bool = False


def ended_state(outcome: Outcome, started: datetime.datetime) -> Terminated:
    """How a script's end shows in the container status."""
    finished = _now()
    if outcome.soft_reset:
        return Terminated(
            0, "Completed", "sys.exit(): the board soft-reset", started_at=started, finished_at=finished
        )
    if not outcome.error:
        return Terminated(0, "Completed", started_at=started, finished_at=finished)
    line = outcome.exception
    if line.startswith("KeyboardInterrupt"):
        return Terminated(EXIT_INTERRUPTED, "Interrupted", line, started_at=started, finished_at=finished)
    return Terminated(1, "Error", line, started_at=started, finished_at=finished)


class Board:
    """The board behind ``transport`` (a ``SerialTransport`` in raw mode)."""

    def __init__(self, node: NodeHandle, transport: Any, settings: Settings | None = None) -> None:
        self.node = node
        self.transport = transport
        self.settings = settings or Settings()
        self.runs: dict[str, Run] = {}
        self.current: Run | None = None
        self.raw_paste: bool | None = None  # None: not known yet; False once the board lacked it
        self._answered: int | None = None  # the port opening on which the raw REPL last answered
        self._problem: DeviceHealth | None = None
        self._log = log.bind(node=node.name, port=transport.describe())

    # -- pods --------------------------------------------------------------------------------------

    def create(self, pod: Pod, script: Script) -> None:
        if pod.uid in self.runs:
            return  # idempotent: the core may ask again after an error
        run = Run(pod=pod, script=script)
        self.runs[pod.uid] = run
        self._start(run)
        self._log.info("micropython.pod_queued", pod=pod.key, busy=self.current is not None)

    def restart(self, uid: str) -> None:
        run = self.runs.get(uid)
        if run is None or not isinstance(run.state, Terminated):
            return  # gone, or running again already
        run.previous, run.log = run.log, None
        run.state = Waiting()
        run.stop = asyncio.Event()
        self._start(run)
        self._log.info("micropython.pod_restart", pod=run.pod.key)

    def delete(self, uid: str, grace: float) -> None:
        run = self.runs.get(uid)
        if run is None:
            return
        run.deleting = True
        if isinstance(run.state, Running):
            # Ctrl-C now, again after the grace period; the run is forgotten once the script ended.
            run.grace = max(0.0, grace)
            run.stop.set()
            self._log.info("micropython.pod_interrupt", pod=run.pod.key, grace=run.grace)
            return
        if run.task is not None:
            run.task.cancel()
        del self.runs[uid]
        self.node.report_status(uid)

    def status(self, uid: str) -> PodStatusReport | None:
        run = self.runs.get(uid)
        if run is None:
            return None
        state = run.state
        if isinstance(state, Waiting) and state.reason == "ContainerCreating":
            current = self.current
            if current is not None and current is not run:
                state = Waiting("BoardBusy", f"the board is running the script of pod {current.pod.key}")
        return PodStatusReport(containers={run.script.container: state})

    def logs(self, pod: Pod, container: str, options: LogOptions) -> AsyncIterator[LogLine]:
        run = self.runs.get(pod.uid)
        if run is None:
            raise LogsNotAvailable(f"pod {pod.key} is not on the board")
        if container != run.script.container:
            raise LogsNotAvailable(f"container {container!r} is not part of pod {pod.key}")
        if options.previous:
            if run.previous is None:
                raise LogsNotAvailable(
                    f'previous terminated container "{container}" in pod "{pod.name}" not found'
                )
            return run.previous.read(options)
        if run.log is None:
            report = self.status(pod.uid)
            waiting = report.containers.get(container) if report is not None else None
            why = waiting.reason if isinstance(waiting, Waiting) else "ContainerCreating"
            raise LogsNotAvailable(f'container "{container}" in pod "{pod.name}" is waiting to start: {why}')
        return run.log.read(options)

    async def stop(self) -> None:
        """vkpy stops: the tasks end; a script running on the board goes on (the next vkpy
        interrupts it when it first talks to the board)."""
        tasks = [run.task for run in self.runs.values() if run.task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # -- health ------------------------------------------------------------------------------------

    async def health(self) -> DeviceHealth | None:
        """Does a MicroPython raw REPL answer on the open port? Asked once per opening of the port
        (and again while it does not answer); never while a script runs."""
        connection = self.transport.connection
        if connection is None:
            return None  # the port is closed: the transport says so
        if self._answered == connection:
            return DeviceHealth(True)
        if self.transport.channel_busy:
            return self._problem  # someone is talking to the board: keep the last verdict
        try:
            async with asyncio.timeout(self.settings.probe_timeout):
                async with self.transport.channel() as channel:
                    repl = RawRepl(channel, timeout=self.settings.probe_timeout / 3)
                    await repl.enter(soft_reset=False, attempts=2)
        except (ReplError, TimeoutError) as exc:
            return self._not_answering(str(exc) or "no answer in time")
        except (DeviceUnreachable, ConnectionError):
            return None
        self._answering(connection)
        return DeviceHealth(True)

    def _answering(self, connection: int) -> None:
        self._answered = connection
        if self._problem is not None:
            self._problem = None
            self.node.set_health(DeviceHealth(True))

    def _not_answering(self, why: str) -> DeviceHealth:
        self._answered = None
        self._problem = DeviceHealth(
            False,
            "BoardNotResponding",
            f"{self.transport.describe()}: no MicroPython raw REPL answers ({why})",
        )
        self.node.set_health(self._problem)
        return self._problem

    # -- running -----------------------------------------------------------------------------------

    def _start(self, run: Run) -> None:
        run.task = asyncio.get_running_loop().create_task(self._serve(run), name=f"micropython:{run.pod.key}")

    def _set(self, run: Run, state: ContainerState) -> None:
        run.state = state
        self.node.report_status(run.pod.uid)

    def _wake_waiting(self, run: Run) -> None:
        """The board was taken or freed: the pods queued behind ``run`` show another Waiting reason."""
        for other in self.runs.values():
            if other is not run and isinstance(other.state, Waiting):
                self.node.report_status(other.pod.uid)

    async def _serve(self, run: Run) -> None:
        delay = self.settings.retry_initial
        try:
            while True:
                await self.transport.wait_connected()
                try:
                    async with self.transport.channel() as channel:
                        self.current = run
                        self._wake_waiting(run)
                        try:
                            await self._run(run, channel)
                        finally:
                            self.current = None
                    break
                except BoardNotResponding as exc:
                    self._set(run, Waiting("BoardNotResponding", self._not_answering(str(exc)).message))
                    self._log.warning("micropython.board_not_responding", pod=run.pod.key, error=str(exc))
                except (DeviceUnreachable, ConnectionError) as exc:
                    # The port closed before the script started: start over on its next opening.
                    self._log.info("micropython.port_closed", pod=run.pod.key, error=str(exc))
                    self._set(run, Waiting())
                    await asyncio.sleep(0.2)
                    continue
                except ReplError as exc:
                    self._set(run, Waiting("ContainerCreating", f"the board's raw REPL misbehaved: {exc}"))
                    self._log.warning("micropython.repl_error", pod=run.pod.key, error=str(exc))
                except Exception as exc:
                    self._log.exception("micropython.run_failed", pod=run.pod.key)
                    if not isinstance(run.state, Running):
                        self._set(run, Waiting("ContainerCreating", f"starting the script failed: {exc}"))
                    else:
                        now = _now()
                        message = f"the micropython plugin failed while the script ran: {exc}"
                        self._set(run, Terminated(EXIT_LINK_LOST, "PluginError", message, finished_at=now))
                        break
                await asyncio.sleep(delay)
                delay = min(self.settings.retry_max, delay * 2)
        finally:
            self._wake_waiting(run)
        if run.deleting and self.runs.get(run.pod.uid) is run:
            del self.runs[run.pod.uid]
            self.node.report_status(run.pod.uid)

    async def _run(self, run: Run, channel: Any) -> None:
        s = self.settings
        repl = RawRepl(
            channel, timeout=s.reply_timeout, reboot_timeout=s.reboot_timeout, raw_paste=self.raw_paste
        )
        # A fresh interpreter for every script, as a container starts from its image.
        await repl.enter(soft_reset=True)
        self._answering(channel.connection)
        setup = await repl.execute(preamble(run.script))
        self.raw_paste = repl.raw_paste
        run.log = RunLog()
        if setup.error or setup.soft_reset:
            now = _now()
            run.log.feed(setup.error, "stderr")
            run.log.close()
            message = f"setting ENV and ARGV failed: {setup.exception or 'the board soft-reset'}"
            self._set(run, Terminated(1, "Error", message, started_at=now, finished_at=now))
            return
        started = _now()
        self._set(run, Running(started_at=started))
        self._log.info("micropython.script_started", pod=run.pod.key, raw_paste=repl.raw_paste)
        submitted = asyncio.Event()
        execution = asyncio.ensure_future(repl.execute(run.script.source, run.log.feed, submitted.set))
        stopper = asyncio.ensure_future(self._stopper(run, repl, submitted))
        try:
            await asyncio.wait({execution, stopper}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (execution, stopper):
                if not task.done():
                    task.cancel()
            await asyncio.gather(execution, stopper, return_exceptions=True)
        if not execution.done() or execution.cancelled():
            state = Terminated(
                EXIT_UNRESPONSIVE,
                "NotInterruptible",
                f"the script ignored Ctrl-C for {run.grace + s.abandon_after:g}s and was abandoned; "
                "the board may still be running it",
                started_at=started,
                finished_at=_now(),
            )
        elif (error := execution.exception()) is not None:
            if not isinstance(error, ConnectionError | ReplError):
                raise error
            state = Terminated(
                EXIT_LINK_LOST,
                "LinkLost",
                f"the conversation with the board broke while the script ran: {error}",
                started_at=started,
                finished_at=_now(),
            )
        else:
            outcome = execution.result()
            if outcome.error:
                run.log.feed(outcome.error, "stderr")
            state = ended_state(outcome, started)
        run.log.close()
        self._set(run, state)
        self._log.info(
            "micropython.script_ended", pod=run.pod.key, exit_code=state.exit_code, reason=state.reason
        )

    async def _stopper(self, run: Run, repl: RawRepl, submitted: asyncio.Event) -> None:
        """Delete: Ctrl-C once the board has all the code (a Ctrl-C in the middle of a transfer
        would cut it), again and again after the grace period; returns to abandon the script."""
        await run.stop.wait()
        await submitted.wait()
        try:
            await repl.interrupt()
            await asyncio.sleep(run.grace)
            loop = asyncio.get_running_loop()
            give_up = loop.time() + self.settings.abandon_after
            while loop.time() < give_up:
                await repl.interrupt()
                await asyncio.sleep(self.settings.interrupt_repeat)
        except ConnectionError:
            # The link is gone: the execution notices it too, and tells how the run ended.
            await asyncio.get_running_loop().create_future()
