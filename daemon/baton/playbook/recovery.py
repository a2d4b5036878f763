"""Finishing the runs a previous Baton left unfinished (it crashed, was killed, lost power).

Policy, applied to every run of `journal.unfinished_runs()` at daemon start, before any new run:

* **Every device that committed was confirmed** (a `confirm` step done on each): the handover
  took effect and nothing is pending on any device, so the run is finished as it would have
  been: `ok`, or `failed` when some device had failed (on_failure rollback_device).
* **Otherwise the run is rolled back** - never resumed: its confirm window was started by a
  process that no longer watches it, and the verify results it was based on are gone.
  - a device whose confirmed commit may be pending (`commit` done, or left at `intent`) gets
    `<cancel-commit>` with the journaled persist id. An error is expected when the window is
    already over (the device reverted on its own) or the commit never happened (intent): it is
    recorded as "already reverted" / "nothing to cancel", not as a failure. When the `confirm`
    was left at `intent` and the cancel finds nothing pending, the device was confirmed: its
    edits are undone by their compensating steps, like an already confirmed device's.
  - a device whose candidate was edited but never committed gets its candidate discarded.
  - an ssh/snmp/rpc step that ran - or was left at `intent`, so it may have run - is undone by
    its `compensate` step. A step at `intent` is never simply re-run.
  - the run is finished `rolled_back` when every undo worked, else `failed` with what an
    operator must look at.
Undo steps are journaled like the runner's (intent, then rolled_back/failed), so a crash during
recovery is recovered in turn; undo already journaled as rolled_back is not repeated. Steps the
crash left at `intent` are closed as failed ("interrupted ..., outcome unknown") when the run is
finished, after recovery has decided from them.

Compensating steps need the rendered playbook: `plan_for(run)` re-plans the run (same playbook,
inventory and run info; rendering is deterministic). Without it, cancel-commit and discard still
work, and any step that needs compensating leaves the run `failed` for an operator.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

import structlog

from baton.adapters.errors import AdapterError, NetconfRpcError
from baton.core.model import Device, Inventory
from baton.journal import Journal, RunRecord, StepRecord, StepStatus
from baton.playbook.plan import PlannedStep, RunPlan
from baton.playbook.runner import CANCEL, COMMIT, COMPENSATE, CONFIRM, DISCARD, PREPARE
from baton.playbook.schema import NetconfEdit, NetconfGet, SnmpGet, Wait
from baton.playbook.steps import Connectors, DeviceSession, StepFailed, run_step, wrap_config

log = structlog.get_logger("baton.recovery")

PlanFor = Callable[[RunRecord], RunPlan | None]
_RAN = frozenset({StepStatus.DONE, StepStatus.INTENT, StepStatus.FAILED})
_RUNNER_STEPS = frozenset({PREPARE, COMMIT, CONFIRM, CANCEL, DISCARD})


@dataclass(frozen=True, slots=True)
class DeviceState:
    """What the journal says happened to one device in one run (pure reading of step rows)."""

    device: str
    committed: bool  # commit done
    commit_unknown: bool  # commit left at intent (or failed by timeout): may have happened
    confirmed: bool
    confirm_unknown: bool
    cancelled: bool  # cancel-commit already rolled_back
    candidate_touched: bool  # prepare/edit ran, and neither a commit nor a discard followed
    discarded: bool
    ran_steps: tuple[str, ...]  # playbook steps (by name) that ran or may have, in order
    compensated: frozenset[str]
    failed: bool

    @property
    def may_be_pending(self) -> bool:
        return (self.committed or self.commit_unknown) and not self.confirmed and not self.cancelled


def device_states(steps: Sequence[StepRecord]) -> dict[str, DeviceState]:
    by_device: dict[str, list[StepRecord]] = {}
    for s in steps:
        by_device.setdefault(s.device, []).append(s)
    states: dict[str, DeviceState] = {}
    for device, rows in by_device.items():

        def has(name: str, *wanted: StepStatus, rows: list[StepRecord] = rows) -> bool:
            return any(r.name == name and r.status in wanted for r in rows)

        committed = has(COMMIT, StepStatus.DONE)
        commit_unknown = not committed and (
            has(COMMIT, StepStatus.INTENT) or any(r.name == COMMIT and "no answer" in r.detail for r in rows)
        )
        discarded = has(DISCARD, StepStatus.ROLLED_BACK)
        played = [r for r in rows if r.name not in _RUNNER_STEPS and not r.name.startswith(COMPENSATE)]
        touched = has(PREPARE, *_RAN) or any(r.status in _RAN for r in played)
        ran: list[str] = []
        for r in played:
            if r.status in _RAN and r.name not in ran:
                ran.append(r.name)
        compensated = frozenset(
            part
            for r in rows
            if r.name.startswith(COMPENSATE) and r.status is StepStatus.ROLLED_BACK
            for part in r.name.removeprefix(COMPENSATE).split(",")
        )
        states[device] = DeviceState(
            device=device,
            committed=committed,
            commit_unknown=commit_unknown,
            confirmed=has(CONFIRM, StepStatus.DONE),
            confirm_unknown=has(CONFIRM, StepStatus.INTENT),
            cancelled=has(CANCEL, StepStatus.ROLLED_BACK),
            candidate_touched=touched and not committed and not commit_unknown and not discarded,
            discarded=discarded,
            ran_steps=tuple(ran),
            compensated=compensated,
            failed=any(r.status is StepStatus.FAILED and "(retrying)" not in r.detail for r in rows),
        )
    return states


def is_fully_confirmed(states: dict[str, DeviceState]) -> bool:
    """Every device that committed was confirmed, and at least one committed."""
    committed = [s for s in states.values() if s.committed or s.commit_unknown]
    return bool(committed) and all(s.confirmed for s in committed)


@dataclass(slots=True)
class RecoveryOutcome:
    run_id: str
    office: str
    result: str  # ok | failed | rolled_back
    detail: str
    actions: list[str] = field(default_factory=list)  # "device: what was done"


async def recover(
    journal: Journal,
    *,
    connectors: Connectors,
    inventory: Inventory | None = None,
    plan_for: PlanFor | None = None,
    concurrency: int = 8,
    clock: Callable[[], float] = time.time,
) -> list[RecoveryOutcome]:
    """Finish every unfinished run (see the module docstring); returns what was done per run."""
    outcomes = []
    for run in await asyncio.to_thread(journal.unfinished_runs):
        outcomes.append(await _recover_run(journal, run, connectors, inventory, plan_for, concurrency, clock))
    return outcomes


async def _recover_run(
    journal: Journal,
    run: RunRecord,
    connectors: Connectors,
    inventory: Inventory | None,
    plan_for: PlanFor | None,
    concurrency: int,
    clock: Callable[[], float],
) -> RecoveryOutcome:
    bound = log.bind(office=run.office, run_id=run.id)
    states = device_states(run.steps)
    outcome = RecoveryOutcome(run.id, run.office, "", "")
    if is_fully_confirmed(states):
        failed = sorted(s.device for s in states.values() if s.failed and not s.confirmed)
        outcome.result = "failed" if failed else "ok"
        confirmed = sum(1 for s in states.values() if s.confirmed)
        outcome.detail = (
            f"recovered after a restart: all {confirmed} committed device(s) had been confirmed"
            + (f"; failed: {', '.join(failed)}" if failed else "")
        )
    else:
        plan = plan_for(run) if plan_for is not None else None
        steps_of = {dp.device.id: {ps.name: ps for ps in dp.steps} for dp in plan.devices} if plan else {}
        devices = {dp.device.id: dp.device for dp in plan.devices} if plan else {}
        if inventory is not None:
            devices = {**{k: v for k, v in inventory.devices.items() if k in states}, **devices}
        sem = asyncio.Semaphore(concurrency)
        undo = _Undo(journal, run, connectors, clock, outcome)

        async def one(state: DeviceState) -> bool:
            async with sem:
                device = devices.get(state.device)
                if device is None:
                    outcome.actions.append(f"{state.device}: not in the inventory, cannot undo")
                    return False
                return await undo.device(device, state, steps_of.get(state.device))

        results = await asyncio.gather(*(one(s) for s in states.values()))
        if not states:
            outcome.result, outcome.detail = "rolled_back", "recovered after a restart: no step had run"
        elif all(results):
            outcome.result = "rolled_back"
            outcome.detail = f"recovered after a restart: rolled back {len(states)} device(s)"
        else:
            outcome.result = "failed"
            outcome.detail = (
                "recovered after a restart: rollback incomplete, an operator must check: "
                + "; ".join(a for a in outcome.actions if "cannot" in a or "failed" in a)
            )
    # Close the steps the crash caught in flight: their outcome is unknown, and what recovery did
    # about their device is in the rows after them. Left at `intent`, they would read as running.
    for step in run.steps:
        if step.status is StepStatus.INTENT:
            await asyncio.to_thread(
                journal.step_result,
                step.id,
                StepStatus.FAILED,
                "interrupted by a restart before its result was journaled; outcome unknown, "
                "handled by recovery (see the steps after it)",
                clock(),
            )
    await asyncio.to_thread(journal.finish_run, run.id, outcome.result, outcome.detail, clock())
    bound.info("recovery.finished", result=outcome.result, detail=outcome.detail)
    return outcome


class _Undo:
    def __init__(
        self,
        journal: Journal,
        run: RunRecord,
        connectors: Connectors,
        clock: Callable[[], float],
        outcome: RecoveryOutcome,
    ) -> None:
        self.journal = journal
        self.run = run
        self.connectors = connectors
        self.clock = clock
        self.outcome = outcome
        self.log = log.bind(office=run.office, run_id=run.id)

    async def _step(self, device: str, index: int, name: str, action: Callable[[], Awaitable[str]]) -> bool:
        step_id = await asyncio.to_thread(
            self.journal.step_intent, self.run.id, device, index, name, self.clock(), "rollback"
        )
        try:
            detail = await action()
        except (AdapterError, StepFailed, TimeoutError) as exc:
            cause = exc.detail if isinstance(exc, StepFailed) else str(exc) or "timed out"
            await asyncio.to_thread(self.journal.step_result, step_id, StepStatus.FAILED, cause, self.clock())
            self.outcome.actions.append(f"{device}: {name} failed: {cause}")
            self.log.warning("recovery.step_failed", device=device, step=name, detail=cause)
            return False
        await asyncio.to_thread(
            self.journal.step_result, step_id, StepStatus.ROLLED_BACK, detail, self.clock()
        )
        self.outcome.actions.append(f"{device}: {name}: {detail}")
        self.log.info("recovery.step_rolled_back", device=device, step=name, detail=detail)
        return True

    async def device(self, device: Device, state: DeviceState, steps: dict[str, PlannedStep] | None) -> bool:
        session = DeviceSession(device, self.connectors)
        ok = True
        try:
            confirmed = state.confirmed
            if state.may_be_pending:
                result = await self._cancel(session, state)
                ok = result is not None and ok
                confirmed = confirmed or result == "confirmed"
            elif state.candidate_touched:
                ok = await self._discard(session, state) and ok
            if confirmed:
                ok = await self._compensate_edits(session, state, steps) and ok
            for name in reversed(state.ran_steps):
                if name in state.compensated:
                    continue
                ps = steps.get(name) if steps is not None else None
                if ps is not None and isinstance(ps.step, NetconfEdit | NetconfGet | SnmpGet | Wait):
                    continue  # edits are undone above (cancel/discard/compensate); reads change nothing
                if ps is None:
                    if steps is None and not (state.committed or state.candidate_touched):
                        self.outcome.actions.append(f"{device.id}: cannot compensate {name} without the plan")
                        ok = False
                    elif steps is not None:
                        self.outcome.actions.append(f"{device.id}: cannot compensate {name}: not in the plan")
                        ok = False
                    continue
                ok = await self._compensate(session, ps) and ok
        finally:
            await session.close()
        return ok

    async def _cancel(self, session: DeviceSession, state: DeviceState) -> str | None:
        """cancel-commit; returns a word for what was found, None when it failed."""
        found = "cancelled"
        run = self.run

        async def cancel() -> str:
            nonlocal found
            nc = await session.netconf()
            try:
                await nc.cancel_commit(persist_id=run.persist_id)
            except NetconfRpcError as exc:
                expired = run.confirm_deadline is not None and self.clock() >= run.confirm_deadline
                if expired:
                    found = "reverted"
                    return f"already reverted (the confirm window ended): {exc.cause}"
                if state.commit_unknown:
                    found = "nothing"
                    return f"nothing to cancel (the commit had not happened): {exc.cause}"
                if state.confirm_unknown:
                    found = "confirmed"
                    return f"nothing pending: the confirm had gone through ({exc.cause})"
                raise
            return "confirmed commit cancelled: running is back to before the run"

        index = _index_of(self.run, state.device, COMMIT)
        if not await self._step(state.device, index, CANCEL, cancel):
            return None
        return found

    async def _discard(self, session: DeviceSession, state: DeviceState) -> bool:
        async def discard() -> str:
            nc = await session.netconf()
            async with nc.locked("candidate"):
                await nc.discard_changes()
            return "candidate discarded, running untouched"

        return await self._step(state.device, _index_of(self.run, state.device, PREPARE), DISCARD, discard)

    async def _compensate_edits(
        self, session: DeviceSession, state: DeviceState, steps: dict[str, PlannedStep] | None
    ) -> bool:
        if steps is None:
            self.outcome.actions.append(f"{state.device}: cannot compensate confirmed edits without the plan")
            return False
        edits = [
            steps[n]
            for n in reversed(state.ran_steps)
            if n in steps and isinstance(steps[n].step, NetconfEdit) and n not in state.compensated
        ]
        if not edits:
            return True
        if any(ps.compensate is None for ps in edits):
            self.outcome.actions.append(
                f"{state.device}: cannot compensate confirmed edits: no compensate step"
            )
            return False

        async def apply() -> str:
            nc = await session.netconf()
            async with nc.locked("candidate"):
                await nc.discard_changes()
                for ps in edits:
                    comp = ps.compensate
                    assert isinstance(comp, NetconfEdit)
                    await nc.edit_config("candidate", wrap_config(comp.config), comp.operation)
                await nc.commit()
            return "compensating edits committed"

        name = COMPENSATE + ",".join(ps.name for ps in edits)
        return await self._step(state.device, edits[0].index, name, apply)

    async def _compensate(self, session: DeviceSession, ps: PlannedStep) -> bool:
        comp = ps.compensate
        device = session.device.id
        if comp is None:
            self.outcome.actions.append(f"{device}: cannot compensate {ps.name}: no compensate step")
            return False

        async def run() -> str:
            if isinstance(comp, NetconfEdit):
                nc = await session.netconf()
                async with nc.locked("candidate"):
                    await nc.discard_changes()
                    await nc.edit_config("candidate", wrap_config(comp.config), comp.operation)
                    await nc.commit()
                return "compensating edit committed"
            return await asyncio.wait_for(run_step(comp, session, comp.timeout_s), comp.timeout_s + 2.0)

        return await self._step(device, ps.index, COMPENSATE + ps.name, run)


def _index_of(run: RunRecord, device: str, name: str) -> int:
    for s in run.steps:
        if s.device == device and s.name == name:
            return s.index
    return next((s.index for s in run.steps if s.device == device), 0)
