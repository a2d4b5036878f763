"""Catch-up runs: handing over, once they answer again, the devices a handover left pending.

Theory of operation
-------------------
A handover playbook with `unreachable: skip` hands over every device that answers and journals
the others "skipped: unreachable (pending)" (see `baton.playbook.runner`). The office is then
HANDED_OVER, but its alternate does not operate those devices yet. `CatchUps` closes the gap:

* **Pending devices come from the journal**, so they survive a restart: the devices the office's
  handover run (`OfficeState.run_id` of a HANDED_OVER office, finished `ok`) skipped as
  unreachable, minus those a later catch-up run of the office finished `ok` without skipping.
* **On every tick** (`tick(state, verdicts)`), for a HANDED_OVER office whose pending devices the
  monitor now judges UP, one catch-up run starts: the office's handover playbook planned for
  those devices only (`RunPlan.only`), journaled as a run of its own (`catchup-<office>-<ms>`,
  kind handover) and executed by the same runner (confirmed commit, verify, confirm). It is not
  a phase change: the office stays HANDED_OVER and the core never sees the run (a catch-up
  recovered after a crash reaches the core as a result it ignores: not the run in progress).
* **Never two runs for one office**: a catch-up starts only while the office is HANDED_OVER
  (the core has no run in progress for it) and never while another catch-up of the office runs.
  A handback *aborts* a catch-up in progress and waits for it to roll back before its own run
  starts (`settle`): the operator wants the office back, and the handback would undo the
  catch-up anyway. A lost lease aborts catch-ups like the core aborts its runs.
* **Guards**: no catch-up without the lease, while paused, or in shadow mode.
* **Failures**: a catch-up that fails (rolled back) or finds the device unreachable again keeps it
  pending; the office's next try waits a backoff (30 s, doubling, at most 15 min), reset by a
  catch-up that leaves nothing of its devices pending.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

from baton.core.model import DeviceVerdict, Phase, RunKind, State
from baton.journal import Journal
from baton.logs import get_logger
from baton.playbook.plan import RunPlan
from baton.playbook.progress import skipped_unreachable as unreachable_devices
from baton.playbook.runner import RunOutcome

log = get_logger(component="catchup")

# (office, alternate, run id, devices) -> the plan of a catch-up run, or why there is none.
Planner = Callable[[str, str, str, frozenset[str]], RunPlan | str]
# Executes a plan; setting the event aborts it (it rolls back).
Executor = Callable[[RunPlan, asyncio.Event], Awaitable[RunOutcome]]
# Device id -> verdict ("UP", "DOWN"...) for the devices of an office.
Verdicts = Callable[[str], Mapping[str, str]]

PREFIX = "catchup-"
BACKOFF_S = 30.0
MAX_BACKOFF_S = 900.0
_HISTORY = 500  # runs of an office read back to find its catch-ups


def catchup_run_id(office: str, now: float) -> str:
    return f"{PREFIX}{office}-{int(now * 1000)}"


def is_catchup_of(run_id: str, office: str) -> bool:
    rest = run_id.removeprefix(f"{PREFIX}{office}-")
    return rest != run_id and rest.isdigit()


def backoff_s(failures: int, base_s: float = BACKOFF_S, cap_s: float = MAX_BACKOFF_S) -> float:
    """How long an office waits before its next catch-up after `failures` failed ones in a row."""
    return 0.0 if failures <= 0 else min(cap_s, base_s * 2 ** (failures - 1))


def pending_devices(journal: Journal, office: str, handover_run_id: str) -> frozenset[str]:
    """Devices the handover run left unreachable that no later ok catch-up handed over."""
    main = journal.run(handover_run_id)
    if main is None or main.result != "ok" or main.kind is not RunKind.HANDOVER:
        return frozenset()
    pending = set(unreachable_devices(main.steps))
    if not pending:
        return frozenset()
    later = [
        r
        for r in journal.runs(limit=_HISTORY, office=office)
        if is_catchup_of(r.id, office) and r.result == "ok" and r.started >= main.started
    ]
    for run in sorted(later, key=lambda r: r.started):
        steps = journal.steps_of(run.id)
        pending -= {s.device for s in steps} - unreachable_devices(steps)
    return frozenset(pending)


@dataclass(eq=False)
class _Office:
    handover_run_id: str
    pending: frozenset[str]
    task: asyncio.Task[None] | None = None
    abort: asyncio.Event | None = None
    run_id: str | None = None
    failures: int = 0
    not_before: float = 0.0


class CatchUps:
    """Per office: the pending devices and at most one catch-up run (see the module docstring)."""

    def __init__(
        self,
        journal: Journal,
        plan: Planner,
        execute: Executor,
        *,
        clock: Callable[[], float] = time.time,
        base_backoff_s: float = BACKOFF_S,
        max_backoff_s: float = MAX_BACKOFF_S,
    ) -> None:
        self._journal = journal
        self._plan = plan
        self._execute = execute
        self._clock = clock
        self._base_s = base_backoff_s
        self._cap_s = max_backoff_s
        self._offices: dict[str, _Office] = {}
        self.accepting = True

    # --- views -------------------------------------------------------------------------------

    def pending(self, office: str) -> tuple[str, ...]:
        """The office's devices waiting for a catch-up (as of the last tick), sorted."""
        entry = self._offices.get(office)
        return () if entry is None else tuple(sorted(entry.pending))

    def all_pending(self) -> dict[str, list[str]]:
        return {office: sorted(e.pending) for office, e in sorted(self._offices.items()) if e.pending}

    @property
    def running(self) -> tuple[str, ...]:
        """Run ids of the catch-ups in progress."""
        return tuple(e.run_id for e in self._offices.values() if e.task is not None and e.run_id)

    def task_of(self, office: str) -> asyncio.Task[None] | None:
        entry = self._offices.get(office)
        return None if entry is None else entry.task

    # --- decisions ---------------------------------------------------------------------------

    def tick(self, state: State, verdicts: Verdicts) -> list[str]:
        """Refresh pending sets and start the catch-ups that are due; returns the run ids started."""
        now = self._clock()
        started: list[str] = []
        for office_id, office in state.offices.items():
            entry = self._offices.get(office_id)
            if office.phase is not Phase.HANDED_OVER or office.run_id is None or office.alternate is None:
                if entry is not None and entry.task is None:
                    del self._offices[office_id]  # handed back (or never handed over): none pending
                continue
            if entry is None or entry.handover_run_id != office.run_id:
                pending = pending_devices(self._journal, office_id, office.run_id)
                if entry is not None and entry.task is not None:
                    continue  # keep the old entry until its catch-up ends
                entry = _Office(office.run_id, pending)
                self._offices[office_id] = entry
                if pending:
                    log.info("catchup.pending", office=office_id, devices=sorted(pending))
            if entry.task is not None:
                if not state.leader and entry.abort is not None and not entry.abort.is_set():
                    log.warning("catchup.abort", office=office_id, run_id=entry.run_id, reason="lease lost")
                    entry.abort.set()
                continue
            if not entry.pending or not self.accepting or now < entry.not_before:
                continue
            if not state.leader or state.paused or state.shadow:
                continue
            seen = verdicts(office_id)
            ready = frozenset(d for d in entry.pending if seen.get(d) == DeviceVerdict.UP.value)
            if ready:
                run_id = self._start(office_id, office.alternate, entry, ready, now)
                if run_id is not None:
                    started.append(run_id)
        return started

    def _start(
        self, office: str, alternate: str, entry: _Office, devices: frozenset[str], now: float
    ) -> str | None:
        run_id = catchup_run_id(office, now)
        plan = self._plan(office, alternate, run_id, devices)
        if isinstance(plan, str):
            entry.failures += 1
            entry.not_before = now + backoff_s(entry.failures, self._base_s, self._cap_s)
            log.error("catchup.not_started", office=office, devices=sorted(devices), why=plan)
            return None
        abort = asyncio.Event()
        entry.abort = abort
        entry.run_id = run_id
        entry.task = asyncio.get_running_loop().create_task(
            self._run(office, entry, plan, abort), name=f"catch-up {run_id}"
        )
        return run_id

    async def _run(self, office: str, entry: _Office, plan: RunPlan, abort: asyncio.Event) -> None:
        devices = sorted(d.device.id for d in plan.devices)
        bound = log.bind(office=office, run_id=plan.run.id)
        bound.info("catchup.started", alternate=plan.alternate, devices=devices)
        ok, detail = False, ""
        try:
            outcome = await self._execute(plan, abort)
            ok, detail = outcome.ok, outcome.detail
        except asyncio.CancelledError:
            bound.warning("catchup.interrupted")  # the journal holds it; recovery finishes it
            raise
        except Exception as exc:  # a bug must fail the catch-up, never the daemon
            bound.exception("catchup.crashed")
            detail = f"catch-up crashed: {type(exc).__name__}: {exc}"
        finally:
            entry.task = None
            entry.abort = None
        entry.pending = await asyncio.to_thread(pending_devices, self._journal, office, entry.handover_run_id)
        still = sorted(entry.pending.intersection(devices))
        if ok and not still:
            entry.failures = 0
            entry.not_before = 0.0
        else:
            entry.failures += 1
            entry.not_before = self._clock() + backoff_s(entry.failures, self._base_s, self._cap_s)
        bound.info(
            "catchup.finished",
            ok=ok and not still,
            detail=detail,
            still_pending=still,
            retry_in_s=round(max(0.0, entry.not_before - self._clock()), 1) if still else None,
        )

    # --- handback and shutdown ---------------------------------------------------------------

    async def settle(self, office: str, reason: str = "handback requested") -> None:
        """Abort the office's catch-up in progress, if any, and wait until it has rolled back."""
        entry = self._offices.get(office)
        task = None if entry is None else entry.task
        if entry is None or task is None:
            return
        log.info("catchup.abort", office=office, run_id=entry.run_id, reason=reason)
        if entry.abort is not None:
            entry.abort.set()
        await asyncio.wait({task})

    async def shutdown(self, grace_s: float) -> None:
        """Start nothing new; let catch-ups finish within `grace_s`, cancel the rest (like a crash)."""
        self.accepting = False
        tasks = [e.task for e in self._offices.values() if e.task is not None]
        if not tasks:
            return
        _, left = await asyncio.wait(tasks, timeout=grace_s)
        for task in left:
            task.cancel()
        if left:
            await asyncio.wait(left)
