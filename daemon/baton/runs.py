"""The run manager: the core's StartRun/AbortRun become playbook runs, their results events.

Theory of operation. A `StartRun` becomes a task: the run is planned (the office's playbook
for the kind, `playbook.choice`; a catch-up narrowed to its devices; a re-home given the office
it leaves as `inventory.previous_alternate`) and executed by the runner, whose progress is
journaled step by step. Its outcome comes back as a `RunFinished` event through `report`, like
every other fact. The run row itself was written with the decision that started the run.

At start, before anything new, `recover` finishes every run the journal shows unfinished (the
runner's `resume`: forward if it had decided so, else back), and `reconcile` turns each run the
core still believes in progress into the event it is waiting for: the run's journaled result if
it finished, or "never touched a device" when the process died between the decision and the
first step — then the core decides again from the facts of now.

`shutdown` starts nothing new; runs in flight get a grace period to reach their end, and are
then cancelled at a safe point (a cancelled run is a crash the journal holds: the next start
recovers it; pending confirmed commits revert on their own).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from baton.core.actions import AbortRun, StartRun
from baton.core.events import RunFinished
from baton.core.model import Inventory, Phase, RunKind, State
from baton.journal import Journal, JournalError, RunRecord, StepRecord
from baton.logs import get_logger
from baton.playbook.plan import RunInfo, RunPlan, plan_run
from baton.playbook.render import office_context
from baton.playbook.runner import FenceLost, RunOutcome, execute, resume
from baton.playbook.schema import Playbook
from baton.playbook.steps import Connectors

log = get_logger()

NOT_STARTED = "not_started"  # a run's result when the process died before its first step

# (kind, office) -> the playbook, or why there is none
ChoosePlaybook = Callable[[RunKind, str], Playbook | str]


@dataclass(frozen=True, slots=True)
class RunSettings:
    """What runs take from the configuration (swapped on reload)."""

    inventory: Inventory
    choose: ChoosePlaybook
    policy_window_s: float
    run_timeout_s: float | None


def plan_for_action(action: StartRun, settings: RunSettings) -> RunPlan | str:
    """The plan of a run the core started, or why it cannot be planned."""
    chosen = settings.choose(action.kind, action.office)
    if isinstance(chosen, str):
        return chosen
    inventory = settings.inventory
    info = RunInfo(id=action.run_id, kind=action.kind, reason=action.reason, who=action.who)
    variables: dict[str, Any] = {}
    if action.previous is not None and action.previous in inventory.offices:
        variables["previous_alternate"] = office_context(inventory.offices[action.previous])
    plan = plan_run(chosen, inventory, action.office, action.alternate, info, variables)
    if action.devices is not None:
        plan = plan.only(action.devices)
        if not plan.devices:
            return f"{', '.join(sorted(action.devices))} are no longer targets of playbook {chosen.name}"
    return plan


def _finished(record: RunRecord) -> RunFinished:
    return RunFinished(
        record.office,
        record.id,
        record.kind,
        ok=record.result == "ok",
        detail=record.detail,
        pending=record.pending,
        done=record.done,
        started=record.result != NOT_STARTED,
    )


class RunManager:
    """Turns StartRun/AbortRun actions into tasks, and their results into RunFinished events."""

    def __init__(
        self,
        journal: Journal,
        connectors: Connectors,
        settings: RunSettings,
        report: Callable[[RunFinished], None],
        *,
        clock: Callable[[], float] = time.time,
        fatal: Callable[[str], None] | None = None,
        fence: Callable[[int], bool] | None = None,
        fenced: Callable[[str, int], None] | None = None,
    ) -> None:
        self.journal = journal
        self.connectors = connectors
        self.settings = settings
        self._report = report
        self._fatal = fatal
        self._fence = fence
        self._fenced = fenced
        self.epoch = 0  # the epoch this vantage leads with (recovery runs under it)
        self._clock = clock
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._aborts: dict[str, asyncio.Event] = {}
        self._progress: dict[str, dict[str, dict[str, str]]] = {}
        self.accepting = True

    @property
    def running(self) -> tuple[str, ...]:
        return tuple(self._tasks)

    def progress(self, run_id: str) -> dict[str, Any] | None:
        found = self._progress.get(run_id)
        return None if found is None else dict(found)

    # --- the actuator -----------------------------------------------------------------------

    def start_run(self, action: StartRun) -> None:
        if not self.accepting:
            # The core decides nothing new once stopping; a run decided just before is left to
            # the next start (its row is journaled; it never touched a device).
            log.warning("run.not_started", run_id=action.run_id, office=action.office, why="stopping")
            return
        abort = asyncio.Event()
        self._aborts[action.run_id] = abort
        task = asyncio.get_running_loop().create_task(self._run(action, abort), name=f"run {action.run_id}")
        self._tasks[action.run_id] = task

    def abort_run(self, action: AbortRun) -> None:
        abort = self._aborts.get(action.run_id)
        if abort is not None:
            log.warning("run.abort", run_id=action.run_id, office=action.office, reason=action.reason)
            abort.set()

    async def _run(self, action: StartRun, abort: asyncio.Event) -> None:
        bound = log.bind(run_id=action.run_id, office=action.office, kind=action.kind.value)
        bound.info("run.started", alternate=action.alternate, reason=action.reason, devices=action.devices)
        event: RunFinished
        try:
            outcome = await self._execute(action, abort)
            if isinstance(outcome, str):
                await self.journal.call(
                    self.journal.finish_run, action.run_id, "refused", outcome, self._clock()
                )
                event = RunFinished(action.office, action.run_id, action.kind, False, outcome)
            else:
                event = outcome.to_event()
        except asyncio.CancelledError:
            bound.warning("run.interrupted")  # like a crash: the journal holds it, recovery finishes it
            raise
        except FenceLost as exc:
            # Not ours to act on any more: left unfinished for the leader (or for us, once we lead).
            bound.warning("run.fenced", why=str(exc))
            if exc.seen_epoch is not None and self._fenced is not None:
                self._fenced(str(exc), exc.seen_epoch)
            return
        except JournalError as exc:
            # The run cannot record what it does: it stops where it is (as in a crash), and so
            # does the daemon; the next start finishes the run from what the journal holds.
            bound.critical("run.journal_failed", error=str(exc))
            if self._fatal is not None:
                self._fatal(str(exc))
            return
        except Exception as exc:  # a bug in Baton: the devices are wherever the run left them
            bound.exception("run.crashed", error=type(exc).__name__)
            event = await self._recover_one(action, f"run crashed: {type(exc).__name__}: {exc}")
        finally:
            self._tasks.pop(action.run_id, None)
            self._aborts.pop(action.run_id, None)
        bound.info("run.finished", ok=event.ok, detail=event.detail)
        self._report(event)

    async def _execute(self, action: StartRun, abort: asyncio.Event) -> RunOutcome | str:
        plan = plan_for_action(action, self.settings)
        if isinstance(plan, str):
            return f"cannot plan the run: {plan}"
        progress = self._progress.setdefault(action.run_id, {})

        def on_step(outcome: StepRecord) -> None:
            progress[outcome.device] = {
                "step": outcome.name,
                "phase": outcome.phase,
                "status": outcome.status.value,
                "detail": outcome.detail,
            }

        try:
            return await execute(
                plan,
                journal=self.journal,
                connectors=self.connectors,
                confirm_window_s=plan.playbook.window_for(self.settings.policy_window_s),
                run_timeout_s=self.settings.run_timeout_s,
                progress=on_step,
                abort=abort,
                clock=self._clock,
                fence=self._fence_for(action.epoch),
                epoch=action.epoch,
            )
        finally:
            # Keep the last runs' progress for `baton run ID`; the journal has it all anyway.
            while len(self._progress) > 20:
                self._progress.pop(next(iter(self._progress)))

    async def _recover_one(self, action: StartRun, why: str) -> RunFinished:
        """A run that stopped on a bug is brought to a safe end at once, as a restart would."""
        record = await self.journal.call(self.journal.run, action.run_id)
        if record is None or record.is_finished:
            return RunFinished(action.office, action.run_id, action.kind, False, why)
        try:
            outcome = await resume(
                record, journal=self.journal, connectors=self.connectors, inventory=self.settings.inventory
            )
        except Exception:
            log.exception("run.recovery_crashed", run_id=action.run_id)
            return RunFinished(
                action.office, action.run_id, action.kind, False, f"{why}; recovery failed too"
            )
        event = outcome.to_event()
        return RunFinished(
            event.office,
            event.run_id,
            event.kind,
            event.ok,
            f"{why}; {event.detail}",
            event.pending,
            event.done,
        )

    def _fence_for(self, epoch: int) -> Callable[[], bool] | None:
        check = self._fence
        return None if check is None else (lambda: check(epoch))

    # --- start and stop ---------------------------------------------------------------------

    async def recover(self) -> list[RunFinished]:
        """Finish every run the journal shows unfinished; their results, oldest first."""
        events = []
        for record in await self.journal.call(self.journal.unfinished_runs):
            if record.id in self._tasks:
                continue  # running in this process: not for recovery
            log.warning("recovery.started", run_id=record.id, office=record.office, steps=len(record.steps))
            if not record.steps:
                # Decided and journaled, but the process died before the run touched anything:
                # the core decides again from the facts of now (nothing to undo).
                detail = "interrupted by a restart before it touched any device"
                await self.journal.call(
                    self.journal.finish_run, record.id, NOT_STARTED, detail, self._clock()
                )
                events.append(
                    RunFinished(record.office, record.id, record.kind, False, detail, started=False)
                )
                continue

            def plan_for(run: RunRecord) -> RunPlan | None:
                action = StartRun(run.office, run.kind, run.id, run.alternate, run.reason, who=run.who)
                plan = plan_for_action(action, self.settings)
                return None if isinstance(plan, str) else plan

            try:
                outcome = await resume(
                    record,
                    journal=self.journal,
                    connectors=self.connectors,
                    inventory=self.settings.inventory,
                    plan_for=plan_for,
                    clock=self._clock,
                    fence=self._fence_for(self.epoch),
                    epoch=self.epoch,
                )
            except FenceLost as exc:
                log.warning("recovery.fenced", run_id=record.id, why=str(exc))
                continue
            log.warning("recovery.done", run_id=outcome.run_id, office=outcome.office, result=outcome.result)
            events.append(outcome.to_event())
        return events

    def reconcile(self, state: State) -> list[RunFinished]:
        """The results the core is waiting for, of runs the journal shows finished."""
        events = []
        for office in state.offices.values():
            waiting = [office.catchup_id] if office.catchup_id else []
            if office.phase in (Phase.HANDING_OVER, Phase.HANDING_BACK) and office.run_id:
                waiting.append(office.run_id)
            for run_id in waiting:
                if run_id in self._tasks:
                    continue
                record = self.journal.run(run_id)
                if record is None:
                    kind = office.run_kind or RunKind.HANDOVER
                    detail = "the run left no record (journaled before runs were kept with their decision)"
                    events.append(RunFinished(office.office, run_id, kind, False, detail, started=False))
                elif record.is_finished:
                    events.append(_finished(record))
        return events

    async def settle(self) -> None:
        """Wait for the runs in flight to end (fenced runs end at their next action)."""
        tasks = list(self._tasks.values())
        if tasks:
            await asyncio.wait(tasks)

    async def shutdown(self, grace_s: float) -> None:
        """Start nothing new; let runs in flight finish (a safe point), cancel what outlasts `grace_s`."""
        self.accepting = False
        tasks = list(self._tasks.values())
        if not tasks:
            return
        log.info("runs.draining", runs=len(tasks), grace_s=grace_s)
        _, pending = await asyncio.wait(tasks, timeout=grace_s)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending)


def chains_of(inventory: Inventory) -> Mapping[str, tuple[str, ...]]:
    return {office.id: office.alternates for office in inventory.offices.values()}
