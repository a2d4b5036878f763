"""The playbook runner: drives every device of a run with `progress.next_action`.

Theory of operation
-------------------
A run is a loop around the pure model of `baton.playbook.progress`: for each device, ask
`next_action(plan, progress, run facts)`, perform it, journal it (intent before, result after)
and fold the record into the device's progress — the same fold recovery applies to the journal
after a restart. `execute` starts a run; `resume` continues one found unfinished in the journal
(a restart, or a takeover): it is the same loop, started from the journaled progress, after the
run's direction is settled (no "forward" decision journaled: the run turns back).

The run, as the loop plays it out:

1. Refusals before any device is touched (`RunPlan.refusal`, which validation applies too):
   an invalid plan; a run that cannot fit in its confirmed-commit window (the worst case from
   the first commit to the last confirm, from the office's size, the concurrency and the
   timeouts, with the numbers and the fix); SNMP steps without SNMP access.
2. Devices run with bounded concurrency, their steps in order; with `barriers`, every device
   finishes phase k before any starts k+1. Before a candidate edit the candidate is locked and
   discarded (`Do.PREPARE`; a device without :confirmed-commit whose edits lack `compensate` fails
   here, before any edit: nothing could undo them). Right after a device's last edit its
   candidate is committed with `<confirmed/>`, the window, and the run's `<persist>` id (the id
   and the deadline are journaled before the first commit). Then the verify steps.
3. When every device passed (skipped-as-unreachable ones aside), and enough of the window is
   left to confirm them all, the run decides "forward" (journaled), and confirms every device.
   Otherwise — any failure (with `on_failure: rollback`), an abort, a lost lease, the run's
   own timeout (`run_timeout_s`), the window running short — it decides "back" and undoes every
   device. Every call's timeout is capped by what is left of the window.
4. `unreachable: skip`: a device that does not answer at first contact (`AdapterError.
   unreachable`) is skipped with one record and left pending for a catch-up; the run is ok
   when every device that answered succeeded.

One NETCONF session per device for the whole run while file descriptors allow (`held_sessions`);
beyond that budget sessions close between phases unless one must stay open (a held lock, or a
confirmed commit without :confirmed-commit:1.1, which dies with its session). A session whose
last call had an unknown outcome is closed: the next call starts on a fresh one. Cancelling
`execute` behaves like a crash: the journal holds the truth and `resume` finishes the run.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import resource
import secrets
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import cast

import structlog
from lxml import etree  # type: ignore[import-untyped]  # no lxml-stubs in the env

from baton.adapters.errors import AdapterError, NetconfError, NetconfRpcError
from baton.adapters.netconf import NetconfClient
from baton.core.events import RunFinished
from baton.core.model import Inventory, RunKind
from baton.journal import Journal, RunRecord, StepRecord, StepStatus
from baton.playbook import progress as pg
from baton.playbook.plan import DevicePlan, PlannedStep, RunPlan, confirm_margin, plan_from_json
from baton.playbook.schema import FenceMarker, retry_backoff_s
from baton.playbook.steps import (
    Connectors,
    DeviceSession,
    StepFailed,
    backup_filter,
    edit_roots,
    restore_config,
    run_step,
    wrap_config,
)

log = structlog.get_logger("baton.runner")

UNREACHABLE = "unreachable (pending)"  # how a skipped device's record starts its detail
Progress = Callable[[StepRecord], None]  # called with every step's journaled record
PlanFor = Callable[[RunRecord], RunPlan | None]

_BACKSTOP_S = 2.0  # over a call's own timeout, in case an adapter does not honour it
_UNDO_TIMEOUT_S = 30.0  # undo calls (discard, cancel, compensate) when nothing else says
# File descriptors one open NETCONF session takes (its TCP socket; asyncssh needs no pipe or
# thread), with room to spare: sessions are held across barriers only while they fit in half
# of what is left under the process's RLIMIT_NOFILE (the rest stays for probes, journal, API).
FDS_PER_SESSION = 2


@dataclass(frozen=True, slots=True)
class DeviceOutcome:
    device: str
    status: pg.DeviceStatus
    error: str | None  # why it failed, was skipped, or what was left on it


@dataclass(frozen=True, slots=True)
class RunOutcome:
    run_id: str
    office: str
    alternate: str
    kind: RunKind
    result: str  # ok | rolled_back | failed | refused
    detail: str  # one sentence for operators
    devices: tuple[DeviceOutcome, ...] = ()
    persist_id: str | None = None
    duration_s: float = 0.0

    @property
    def ok(self) -> bool:
        return self.result == "ok"

    def device(self, device_id: str) -> DeviceOutcome:
        return next(d for d in self.devices if d.device == device_id)

    @property
    def unreachable(self) -> tuple[str, ...]:
        """Devices skipped because they did not answer (pending a catch-up)."""
        return tuple(d.device for d in self.devices if d.status is pg.DeviceStatus.UNREACHABLE)

    @property
    def handed(self) -> tuple[str, ...]:
        """Devices the run handed over (or back) for good."""
        return tuple(d.device for d in self.devices if d.status is pg.DeviceStatus.CONFIRMED)

    def to_event(self) -> RunFinished:
        return RunFinished(
            office=self.office,
            run_id=self.run_id,
            kind=self.kind,
            ok=self.ok,
            detail=self.detail,
            pending=frozenset(self.unreachable),
            done=frozenset(self.handed),
        )


# --- small pure rules ----------------------------------------------------------------------------


def retry_delays(retries: int, idempotent: bool) -> tuple[float, ...]:
    """Backoff before each retry; none for a step that is not idempotent (never run twice)."""
    return tuple(retry_backoff_s(k) for k in range(retries)) if idempotent else ()


def held_sessions(fd_limit: int, fds_open: int = 0) -> int:
    """How many devices may keep their session open across barriers: half of the file
    descriptors left under RLIMIT_NOFILE (soft limit `fd_limit`, -1 for none)."""
    if fd_limit < 0:  # RLIM_INFINITY
        return 1 << 30
    return max(0, (fd_limit - fds_open) // 2 // FDS_PER_SESSION)


def _fds_open() -> int:
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:  # no /proc: count none
        return 0


def summarize(
    result: str, devices: Sequence[DeviceOutcome], reason: str = "", kind: RunKind = RunKind.HANDOVER
) -> str:
    """One sentence for the journal, logs and the RunFinished event."""
    unreachable = sum(1 for d in devices if d.status is pg.DeviceStatus.UNREACHABLE)
    if result == "ok" and unreachable:
        done = "handed over" if kind is RunKind.HANDOVER else "handed back"
        text = f"ok: {len(devices) - unreachable} device(s) {done}, {unreachable} unreachable (pending)"
    else:
        tally = ", ".join(f"{n} {s}" for s, n in sorted(Counter(d.status.value for d in devices).items()))
        text = f"{result}: {len(devices)} device(s)" + (f" ({tally})" if tally else "")
    return f"{text}; {reason}" if reason else text


def _describe(exc: AdapterError | StepFailed | TimeoutError, timeout_s: float | None = None) -> str:
    if isinstance(exc, StepFailed):
        return exc.detail
    if isinstance(exc, TimeoutError):
        return f"no result within {timeout_s:g} s" if timeout_s is not None else "timed out"
    return str(exc)


class FenceLost(Exception):
    """This vantage may not change devices any more (its lease is gone, or a device has seen a
    newer leader's epoch): the run stops where it is, unfinished, for whoever leads to finish."""

    def __init__(self, why: str, seen_epoch: int | None = None) -> None:
        self.seen_epoch = seen_epoch  # a device's epoch above ours: this vantage must step down
        super().__init__(why)


# May a change go to a device now? (the leadership's fence, for the run's epoch)
Fence = Callable[[], bool]


@dataclass(eq=False)
class _Answer(Exception):
    """A call's result other than the action's ok status (carried as data); also a record with
    no call behind it (a skip, a re-apply), given to `_journaled` in place of the call."""

    status: StepStatus
    detail: str
    facts: Mapping[str, object] = field(default_factory=dict)


# --- execution -----------------------------------------------------------------------------------


@dataclass(eq=False)
class _Dev:
    plan: DevicePlan
    session: DeviceSession
    progress: pg.DeviceProgress
    hold: bool = False  # keep the session open across barriers (one session for the whole run)
    commit_session: bool = False  # the session that made its confirmed commit is open
    commit_at: float | None = None  # monotonic time of its (latest) confirmed commit

    @property
    def id(self) -> str:
        return self.plan.device.id

    def index_of(self, name: str) -> int:
        """Where a record sits among the device's steps: its own step's (a compensation: the
        first step it undoes), the commit's for the commit and what follows it."""
        steps = self.plan.steps
        if name == pg.Do.PREPARE:
            at = self.progress.pos
        elif name in pg.RUNNER_STEPS:
            at = pg.commit_position(steps) or 0
        else:
            first = name.removeprefix(pg.COMPENSATE).split(",")[0]  # a compensation: what it undoes first
            at = next((pos for pos, ps in enumerate(steps) if ps.name == first), 0)
        return steps[at].index if at < len(steps) else 0


class _Run:
    def __init__(
        self,
        plan: RunPlan,
        journal: Journal,
        connectors: Connectors,
        *,
        window_s: int,
        concurrency: int,
        persist_id: str,
        direction: pg.Direction | None = None,
        margin_s: float | None = None,
        run_timeout_s: float | None = None,
        progress: Progress | None = None,
        abort: asyncio.Event | None = None,
        clock: Callable[[], float] = time.time,
        fence: Fence | None = None,
        epoch: int = 0,
    ) -> None:
        self.plan, self.journal, self.run_id = plan, journal, plan.run.id
        self.window_s, self.concurrency, self.persist_id = window_s, concurrency, persist_id
        self.margin_s = confirm_margin(window_s) if margin_s is None else margin_s
        self.direction, self.reason = direction, ""
        self.progress, self.abort, self.clock = progress, abort or asyncio.Event(), clock
        self.fence, self.epoch = fence, epoch
        # Resumed after deciding forward: its confirms carry this leader's epoch (claim the devices).
        self.claim = direction == "forward"
        # Why every device stops before its next action: a lost fence, a journal that fails, a
        # bug in one device's drive (siblings must not go on changing devices without it).
        self.stopped: BaseException | None = None
        self.sem = asyncio.Semaphore(concurrency)
        self.started = time.monotonic()
        self.deadline = None if run_timeout_s is None else self.started + run_timeout_s
        self.skip_unreachable = plan.playbook.unreachable == "skip"
        self.rollback_all = plan.playbook.on_failure == "rollback"
        self._deciding = asyncio.Lock()
        self._turned = asyncio.Event()  # set when the run turns back (wakes devices gone idle)
        self._confirm_journaled = direction is not None
        held = held_sessions(resource.getrlimit(resource.RLIMIT_NOFILE)[0], _fds_open())
        self.devs = [
            _Dev(dp, DeviceSession(dp.device, connectors), pg.DeviceProgress(dp.device.id), hold=k < held)
            for k, dp in enumerate(plan.devices)
        ]
        self.log = log.bind(office=plan.office, run_id=self.run_id)

    # --- the loop ------------------------------------------------------------------------------

    async def go(self) -> tuple[str, str]:
        try:
            for phase in self.plan.phases if self.plan.playbook.barriers else (1 << 30,):
                if self.direction is None:  # before the decision: phase by phase (barriers)
                    await self._pass(phase)
            if self.direction is None:
                await self._decide()
            while await self._pass(1 << 30):  # then every device to its end
                pass
        finally:
            await asyncio.gather(*(d.session.close() for d in self.devs), return_exceptions=True)
        return self._result()

    async def _pass(self, phase: int) -> bool:
        """Drive every device as far as it can go now; True if any device did anything. When the
        run turns back during the pass, the devices already idle start undoing at once: their
        confirmed commits are cancelled while the window is open, not after the slowest device."""
        forward = self.direction is None
        drives = {asyncio.ensure_future(self._drive(dev, phase)): dev for dev in self.devs}
        turned = asyncio.ensure_future(self._turned.wait())
        idle: list[_Dev] = []
        acted, failed = False, list[BaseException]()
        try:
            while drives:
                # Once the run has turned (or was back from the start), the done `turned` must
                # leave the wait: it would return at once, and the pass would spin the loop.
                waiting = [*drives, turned] if forward else list(drives)
                done, _ = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
                for task in done - {turned}:
                    dev = drives.pop(task)
                    if (exc := task.exception()) is not None:
                        failed.append(exc)
                    else:
                        acted = task.result() or acted
                        idle.append(dev)
                if forward and self._turned.is_set():
                    forward = False
                    drives.update({asyncio.ensure_future(self._drive(dev, 1 << 30)): dev for dev in idle})
        finally:
            turned.cancel()
            for task in drives:  # cancelled from outside: no drive goes on alone
                task.cancel()
        if failed:
            raise next((f for f in failed if isinstance(f, FenceLost)), failed[0])
        return acted

    async def _drive(self, dev: _Dev, phase: int) -> bool:
        acted = False
        async with self.sem:
            try:
                while True:
                    await self._check_limits()
                    if self.rollback_all and dev.progress.failed is not None and self.direction != "back":
                        await self.turn_back(f"{dev.id} failed: {dev.progress.failed}")
                    facts = pg.RunFacts(self.direction, phase, self.skip_unreachable)
                    action = pg.next_action(dev.plan, dev.progress, facts, commit_session=dev.commit_session)
                    if action is None:
                        break
                    acted = True
                    if self.stopped is not None:
                        raise self.stopped
                    try:
                        await self._perform(dev, action)
                    except Exception as exc:
                        if self.stopped is None:
                            self.stopped = exc
                        raise
            finally:
                keep = dev.hold and dev.progress.failed is None and dev.progress.unreachable is None
                if not keep and not self._must_hold(dev):
                    await self._close(dev)
        return acted

    def _must_hold(self, dev: _Dev) -> bool:
        # A held lock, and a confirmed commit without <persist>, live only as long as the session.
        p = dev.progress
        return p.prepared or (dev.commit_session and p.persist is False and self.direction != "back")

    async def _close(self, dev: _Dev) -> None:
        await dev.session.close()
        dev.commit_session = False
        dev.progress = replace(dev.progress, prepared=False)  # the lock died with the session

    async def _check_limits(self) -> None:
        if self.direction == "back":
            return
        if self.abort.is_set():
            await self.turn_back("run aborted")
        elif self.direction is None and self.deadline is not None and time.monotonic() > self.deadline:
            await self.turn_back("the run took longer than its run_timeout_s")

    async def turn_back(self, reason: str) -> None:
        async with self._deciding:
            if self.direction == "back":
                return
            self.reason = reason
            await self.journal.call(self.journal.decide, self.run_id, "back", reason, self.clock())
            self.direction = "back"
            self._turned.set()
            self.log.warning("runner.turned_back", reason=reason)

    async def _decide(self) -> None:
        """Every device has gone as far as it can before the decision: forward, or back."""
        direction, reason = pg.decide([(d.plan, d.progress) for d in self.devs], self.rollback_all)
        if direction == "back":
            await self.turn_back(reason)
            return
        left = self._window_left()
        if left is not None:
            confirms = sum(1 for d in self.devs if d.commit_at is not None and d.progress.cc)
            need = math.ceil(confirms / self.concurrency) * self.plan.playbook.confirm_timeout_s
            if left - self.margin_s < need:
                await self.turn_back(
                    f"only {max(0.0, left):.0f} s of the {self.window_s} s window left, and confirming "
                    f"{confirms} device(s) may take {need:g} s: not confirming late"
                )
                return
        async with self._deciding:
            if self.direction is None:
                await self.journal.call(self.journal.decide, self.run_id, "forward", reason, self.clock())
                self.direction = "forward"
                self.log.info("runner.decided_forward")

    def _result(self) -> tuple[str, str]:
        if self.direction == "back":
            unclean = [d.id for d in self.devs if pg.leftovers(d.plan, d.progress)]
            if unclean:
                return (
                    "failed",
                    f"{self.reason}; rollback incomplete, an operator must check {', '.join(unclean[:10])}",
                )
            return "rolled_back", self.reason
        failed = [d.id for d in self.devs if d.progress.failed is not None]
        unfinished = [
            d.id
            for d in self.devs
            if d.progress.unreachable is None
            and d.progress.failed is None
            and not pg.is_handed_over(d.plan, d.progress)
        ]
        if unfinished:
            return "failed", f"not confirmed: {', '.join(unfinished[:10])}"
        if failed:
            return "failed", f"failed device(s) rolled back, the others handed over: {', '.join(failed[:10])}"
        return "ok", ""

    # --- journal -------------------------------------------------------------------------------

    async def _journaled(
        self,
        dev: _Dev,
        name: str,
        phase: str,
        call: Callable[[], Awaitable[tuple[str, Mapping[str, object]]]] | _Answer,
        *,
        ok: StepStatus = StepStatus.DONE,
        attempt: int = 1,
    ) -> StepStatus:
        """Journal intent, run `call`, journal the result; fold both into the progress."""
        at, index = self.clock(), dev.index_of(name)
        step_id = await self.journal.call(
            self.journal.step_intent, self.run_id, dev.id, index, name, at, phase, attempt
        )
        status = ok
        try:
            if isinstance(call, _Answer):
                raise call
            detail, facts = await call()
        except _Answer as answer:
            status, detail, facts = answer.status, answer.detail, answer.facts
        except (AdapterError, StepFailed, TimeoutError) as exc:
            unknown = isinstance(exc, TimeoutError) or (isinstance(exc, AdapterError) and exc.outcome_unknown)
            status = StepStatus.UNKNOWN if unknown else StepStatus.FAILED
            detail, facts = _describe(exc), {}
            if isinstance(exc, AdapterError) and exc.operation == "connect":
                facts = {"sent": False}
        if status is StepStatus.UNKNOWN:
            await self._close(dev)  # whatever state that session is in, the next call starts fresh
        done = self.clock()
        await self.journal.call(self.journal.step_result, step_id, status, detail, done, facts)
        record = StepRecord(
            step_id, self.run_id, dev.id, index, name, phase, status, at, done, detail, attempt, facts
        )
        dev.progress = pg.fold(dev.plan, (record,), dev.progress)
        emit = self.log.warning if status in (StepStatus.FAILED, StepStatus.UNKNOWN) else self.log.info
        emit(
            f"runner.step_{status.value}",
            device=dev.id,
            step=name,
            phase=phase,
            attempt=attempt,
            detail=detail,
        )
        if self.progress is not None:
            self.progress(record)
        return status

    # --- actions -------------------------------------------------------------------------------

    async def _perform(self, dev: _Dev, action: pg.Action) -> None:
        if self.fence is not None and not self.fence():
            raise FenceLost("this vantage does not hold the lease any more: leaving the run to the leader")
        first = dev.progress.pos == 0 and not dev.progress.touched  # a step, or the prepare before it
        if first and self.skip_unreachable and not await self._first_contact(dev):
            return
        match action:
            case pg.RunStep(pos):
                await self._run_step(dev, dev.plan.steps[pos])
            case pg.Do.PREPARE:
                await self._prepare(dev)
            case pg.Do.COMMIT:
                await self._commit(dev)
            case pg.Do.CONFIRM:
                await self._confirm(dev)
            case pg.Do.CHECK:
                await self._check(dev)
            case pg.Do.DISCARD:
                await self._discard(dev)
            case pg.Do.CANCEL:
                await self._cancel(dev)
            case pg.Compensate(names):
                await self._compensate(dev, names)
            case pg.Do.REAPPLY:
                await self._close(dev)
                dev.commit_at = None
                detail = "reverted after the decision: handing it over again"
                await self._journaled(dev, pg.Do.REAPPLY, "apply", _Answer(StepStatus.DONE, detail))
            case pg.GiveUp(reason):
                skip = _Answer(StepStatus.SKIPPED, f"{UNREACHABLE}: {reason}", {"unreachable": True})
                await self._journaled(dev, pg.Do.CONFIRM, "confirm", skip)
            case pg.TurnBack(reason):
                await self._journaled(dev, pg.Do.REAPPLY, "confirm", _Answer(StepStatus.FAILED, reason))

    def _window_left(self) -> float | None:
        """What is left of the window of the run's first confirmed commit (None: none yet)."""
        starts = [d.commit_at for d in self.devs if d.commit_at is not None]
        return None if not starts else min(starts) + self.window_s - time.monotonic()

    def _capped(self, timeout_s: float) -> float:
        """A forward call's timeout, capped by the window left (minus the margin); raises when
        there is no time left for it."""
        left = self._window_left()
        if left is None:
            return timeout_s
        if left - self.margin_s <= 0:
            raise _Answer(StepStatus.FAILED, "confirm window nearly over: not running further steps")
        return min(timeout_s, left - self.margin_s)

    async def _first_contact(self, dev: _Dev) -> bool:
        """Open the session the device's first step needs; False (and skip the device) when it
        does not answer at all. Any other connect error is left for the step to meet."""
        first = dev.plan.steps[0]
        try:
            if first.step.session == "netconf":
                await dev.session.netconf()
            elif first.step.session == "ssh":
                await dev.session.ssh()
        except AdapterError as exc:
            if not exc.unreachable:
                return True
            self.log.warning("runner.device_unreachable", device=dev.id, detail=str(exc))
            skip = _Answer(StepStatus.SKIPPED, f"{UNREACHABLE}: {exc}", {"unreachable": True})
            await self._journaled(dev, first.name, "apply", skip)
            return False
        return True

    async def _run_step(self, dev: _Dev, ps: PlannedStep) -> None:
        step = ps.step
        phase = "verify" if dev.progress.commit is pg.Sent.DONE else "apply"
        delays = retry_delays(step.retries, step.is_idempotent)
        for attempt in range(1, len(delays) + 2):
            retry = attempt <= len(delays)

            async def call(retry: bool = retry) -> tuple[str, Mapping[str, object]]:
                timeout = self._capped(step.attempt_s)
                try:
                    detail = await asyncio.wait_for(
                        run_step(step, dev.session, timeout), timeout + _BACKSTOP_S
                    )
                except (AdapterError, StepFailed, TimeoutError) as exc:
                    if retry and self.direction is None and not self.abort.is_set():
                        raise _Answer(
                            StepStatus.FAILED, f"{_describe(exc, timeout)} (retrying)", {"retry": True}
                        ) from None
                    raise
                return detail, {}

            status = await self._journaled(dev, ps.name, phase, call, attempt=attempt)
            if status is not StepStatus.FAILED or dev.progress.failed is not None or not retry:
                return
            await asyncio.sleep(delays[attempt - 1])

    async def _prepare(self, dev: _Dev) -> None:
        async def prepare() -> tuple[str, Mapping[str, object]]:
            nc = await dev.session.netconf()
            if not nc.supports_candidate:
                raise StepFailed("device has no :candidate datastore; edits go to candidate only")
            cc, persist = nc.supports_confirmed_commit, nc.supports_persist
            try:
                await nc.lock("candidate", rpc_timeout_s=self._capped(_UNDO_TIMEOUT_S))
            except NetconfRpcError:
                # A candidate left dirty (by a dead session) refuses the lock: clear it, try once more.
                await nc.discard_changes()
                await nc.lock("candidate", rpc_timeout_s=self._capped(_UNDO_TIMEOUT_S))
            await nc.discard_changes(rpc_timeout_s=self._capped(_UNDO_TIMEOUT_S))
            text = "candidate locked and clean" + ("" if cc else " (no :confirmed-commit)")
            facts: dict[str, object] = {"cc": cc, "persist": persist}
            marker = self.plan.playbook.fence
            if marker is not None:
                seen = await self._claim(dev, nc, marker, self._capped(_UNDO_TIMEOUT_S))
                text += f"; epoch {self.epoch} (device had {seen})"
                facts["epoch"] = self.epoch
            if dev.progress.backup is None:
                # What running holds of every subtree the edits touch, before any edit: undoing
                # committed edits restores exactly this (cancel-commit needs none, but a device
                # confirmed and then rolled back with the office does).
                roots = _edit_roots(dev)
                saved = await nc.get_config(
                    "running", backup_filter(roots), rpc_timeout_s=self._capped(_UNDO_TIMEOUT_S)
                )
                facts["backup"] = await self.journal.call(
                    self.journal.save_backup, self.run_id, dev.id, saved
                )
                text += f"; running of {len(roots)} subtree(s) saved"
            return text, facts

        await self._journaled(dev, pg.Do.PREPARE, "apply", prepare)

    async def _claim(self, dev: _Dev, nc: NetconfClient, marker: FenceMarker, timeout_s: float) -> int:
        """The device's epoch in running (0: none yet), refused when newer than ours; ours is
        then put in the candidate, for the commit to come."""
        reply = await nc.get_config("running", marker.filter, rpc_timeout_s=timeout_s)
        root = etree.fromstring(reply.encode())
        text = str(root.xpath(f"string({marker.xpath})", namespaces=marker.namespaces or None)).strip()
        seen = int(text) if text.isdigit() else 0
        if seen > self.epoch:
            raise FenceLost(f"{dev.id} has seen epoch {seen}, newer than ours ({self.epoch})", seen)
        await self._fence_candidate(nc, timeout_s)
        return seen

    async def _fence_candidate(self, nc: NetconfClient, timeout_s: float = _UNDO_TIMEOUT_S) -> None:
        """Every commit of the run carries its epoch: an undo restores running as it was before
        the run, epoch leaf included, and a device refuses a commit that lowers its epoch."""
        marker = self.plan.playbook.fence
        if marker is not None:
            fenced = wrap_config(marker.config.replace("{epoch}", str(self.epoch)))
            await nc.edit_config("candidate", fenced, rpc_timeout_s=timeout_s)

    async def _commit(self, dev: _Dev) -> None:
        cc, persist = bool(dev.progress.cc), bool(dev.progress.persist)
        if cc:
            async with self._deciding:
                if not self._confirm_journaled:
                    # Journaled before any commit goes out, so a restart can always cancel or confirm.
                    deadline = self.clock() + self.window_s
                    await self.journal.call(self.journal.set_confirm, self.run_id, deadline, self.persist_id)
                    self._confirm_journaled = True

        async def commit() -> tuple[str, Mapping[str, object]]:
            nc = await dev.session.netconf()
            timeout = self._capped(self.plan.playbook.commit_timeout_s)
            # No separate <validate>: <commit> validates the candidate anyway (RFC 6241 8.3), and
            # yuma123 netconfd 2.13 commits *nothing* after an explicit <validate> (measured).
            started = time.monotonic()
            if cc:
                await nc.commit(
                    confirmed=True,
                    timeout_s=self.window_s,
                    persist=self.persist_id if persist else None,
                    rpc_timeout_s=timeout,
                )
                dev.commit_at = dev.commit_at or started
                dev.commit_session = True
                text = f"confirmed commit, confirm-timeout {self.window_s} s" + (
                    ", persist" if persist else ", session held (no :confirmed-commit:1.1)"
                )
            else:
                await nc.commit(rpc_timeout_s=timeout)
                text = "committed (no :confirmed-commit: undo by compensating steps)"
            with contextlib.suppress(NetconfError):
                await nc.unlock("candidate", rpc_timeout_s=5.0)
            deadline = self.clock() + self.window_s if cc else None
            return text, {"cc": cc, "persist": persist, "deadline": deadline}

        await self._journaled(dev, pg.Do.COMMIT, "commit", commit)

    async def _confirm(self, dev: _Dev) -> None:
        persist = bool(dev.progress.persist)
        marker = self.plan.playbook.fence

        async def confirm() -> tuple[str, Mapping[str, object]]:
            nc = await dev.session.netconf()
            left = self._window_left()
            timeout = self.plan.playbook.confirm_timeout_s
            if left is not None:
                timeout = max(1.0, min(timeout, left))

            async def confirming_commit() -> None:
                try:
                    await nc.commit(persist_id=self.persist_id if persist else None, rpc_timeout_s=timeout)
                except NetconfRpcError as exc:
                    raise _Answer(
                        StepStatus.FAILED, f"nothing pending to confirm: {exc.cause}", {"pending": False}
                    ) from None

            if not (self.claim and persist and marker is not None):
                await confirming_commit()
                return "confirmed", {}
            # Finishing another leader's run (a takeover, or this vantage in a later term): the
            # confirming commit carries this leader's epoch, read and written under the lock, so
            # the device stops the leader it replaced (a confirming commit commits the candidate).
            async with nc.locked("candidate"):
                await nc.discard_changes(rpc_timeout_s=timeout)
                seen = await self._claim(dev, nc, marker, timeout)
                await confirming_commit()
            return f"confirmed, with epoch {self.epoch} (device had {seen})", {"epoch": self.epoch}

        await self._journaled(dev, pg.Do.CONFIRM, "confirm", confirm)
        if dev.progress.confirm is pg.Sent.DONE and not dev.hold:
            await self._close(dev)

    async def _check(self, dev: _Dev) -> None:
        checks = pg.verify_steps(dev.plan)

        async def check() -> tuple[str, Mapping[str, object]]:
            if not checks:
                raise StepFailed("no verify steps to check running with")
            for ps in checks:
                try:
                    await asyncio.wait_for(
                        run_step(ps.step, dev.session, ps.step.timeout_s), ps.step.timeout_s + _BACKSTOP_S
                    )
                except StepFailed as exc:
                    return f"running does not hold the change ({ps.name}: {exc.detail})", {
                        "running": "original"
                    }
            return "running holds the change (every verify step passed)", {"running": "changed"}

        await self._journaled(dev, pg.Do.CHECK, "check", check)

    async def _discard(self, dev: _Dev) -> None:
        held = dev.progress.prepared

        async def discard() -> tuple[str, Mapping[str, object]]:
            nc = await dev.session.netconf()
            if held:
                await nc.discard_changes(rpc_timeout_s=_UNDO_TIMEOUT_S)
                with contextlib.suppress(NetconfError):
                    await nc.unlock("candidate", rpc_timeout_s=5.0)
            else:
                async with nc.locked("candidate"):
                    await nc.discard_changes(rpc_timeout_s=_UNDO_TIMEOUT_S)
            return "candidate discarded, running untouched", {}

        await self._journaled(dev, pg.Do.DISCARD, "rollback", discard, ok=StepStatus.ROLLED_BACK)

    async def _cancel(self, dev: _Dev) -> None:
        persist = dev.progress.persist is not False

        async def cancel() -> tuple[str, Mapping[str, object]]:
            nc = await dev.session.netconf()
            try:
                await nc.cancel_commit(
                    persist_id=self.persist_id if persist else None, rpc_timeout_s=_UNDO_TIMEOUT_S
                )
            except NetconfRpcError as exc:
                raise _Answer(
                    StepStatus.FAILED,
                    f"nothing pending to cancel (never committed, or reverted on its own): {exc.cause}",
                    {"pending": False},
                ) from None
            return "confirmed commit cancelled: running is back to before the run", {}

        await self._journaled(dev, pg.Do.CANCEL, "rollback", cancel, ok=StepStatus.ROLLED_BACK)

    async def _compensate(self, dev: _Dev, names: tuple[str, ...]) -> None:
        """Undo steps that ran: committed edits (all at once), or one other change."""
        steps = {ps.name: ps for ps in dev.plan.steps}
        committed = names[0] in dev.progress.edits  # else one change, undone by its own kind of step
        digest = dev.progress.backup if committed else None
        backup = (
            None
            if digest is None
            else await self.journal.call(self.journal.load_backup, self.run_id, dev.id, digest)
        )

        async def undo() -> tuple[str, Mapping[str, object]]:
            if backup is not None:
                roots = _edit_roots(dev)
                await self._commit_undo(dev, [(restore_config(backup, roots), None, _UNDO_TIMEOUT_S)])
                return f"running restored as it was before the run ({len(roots)} subtree(s))", {}
            comps = {n: comp for n in names if n in steps and (comp := steps[n].compensate) is not None}
            if len(comps) < len(names):
                raise StepFailed(
                    f"no compensate for {', '.join(n for n in names if n not in comps)}: left as is"
                )
            edits = {n: edit for n, comp in comps.items() if (edit := comp.candidate_edit()) is not None}
            if not committed and not edits:
                comp = comps[names[0]]
                return await asyncio.wait_for(
                    run_step(comp, dev.session, comp.timeout_s), comp.timeout_s + _BACKSTOP_S
                ), {}
            if len(edits) < len(names):
                raise StepFailed(
                    f"no compensating edit for {', '.join(n for n in names if n not in edits)}: left as is"
                )
            # Undone in the candidate, in one commit.
            await self._commit_undo(
                dev, [(wrap_config(e[0]), e[1], comps[n].timeout_s) for n, e in edits.items()]
            )
            return f"compensating edits committed ({', '.join(names)})", {}

        await self._journaled(
            dev, pg.COMPENSATE + ",".join(names), "rollback", undo, ok=StepStatus.ROLLED_BACK
        )

    async def _commit_undo(self, dev: _Dev, edits: Sequence[tuple[str, str | None, float]]) -> None:
        """(config, default operation, timeout) edits committed for good in one commit, under
        the candidate lock and with the run's epoch: how a change committed for good is undone."""
        nc = await dev.session.netconf()
        async with nc.locked("candidate"):
            await nc.discard_changes(rpc_timeout_s=_UNDO_TIMEOUT_S)
            for config, operation, timeout_s in edits:
                await nc.edit_config("candidate", config, operation, rpc_timeout_s=timeout_s)
            await self._fence_candidate(nc)
            await nc.commit(rpc_timeout_s=self.plan.playbook.commit_timeout_s)

    # --- the end -------------------------------------------------------------------------------

    async def finish(self, recovered: bool = False) -> RunOutcome:
        result, reason = await self.go()
        if recovered:
            reason = "recovered after a restart" + (f": {reason}" if reason else "")
        devices = []
        for dev in self.devs:
            p = dev.progress
            left = pg.leftovers(dev.plan, p) if self.direction == "back" or p.failed else ()
            error = p.failed or p.unreachable
            if left:
                error = (error + "; " if error else "") + "left on the device: " + ", ".join(left)
            devices.append(DeviceOutcome(dev.id, pg.status_of(dev.plan, p, self.direction), error))
        run = self.plan.run
        outcome = RunOutcome(
            run.id,
            self.plan.office,
            self.plan.alternate,
            run.kind,
            result,
            summarize(result, devices, reason, run.kind),
            tuple(devices),
            self.persist_id if self._confirm_journaled else None,
            time.monotonic() - self.started,
        )
        await self.journal.call(
            self.journal.finish_run,
            run.id,
            result,
            outcome.detail,
            self.clock(),
            done=frozenset(outcome.handed),
            pending=frozenset(outcome.unreachable),
        )
        await self.journal.call(self.journal.drop_backups, run.id)
        self.log.info(
            "runner.finished", result=result, detail=outcome.detail, duration_s=round(outcome.duration_s, 3)
        )
        return outcome


def _edit_roots(dev: _Dev) -> tuple[str, ...]:
    edits = (ps.step.candidate_edit() for ps in dev.plan.steps)
    return edit_roots([edit[0] for edit in edits if edit is not None])


# --- entry points --------------------------------------------------------------------------------


async def execute(
    plan: RunPlan,
    *,
    journal: Journal,
    connectors: Connectors,
    concurrency: int | None = None,
    confirm_window_s: float | None = None,
    confirm_margin_s: float | None = None,
    run_timeout_s: float | None = None,
    progress: Progress | None = None,
    abort: asyncio.Event | None = None,
    clock: Callable[[], float] = time.time,
    fence: Fence | None = None,
    epoch: int = 0,
) -> RunOutcome:
    """Execute `plan` (see the module docstring); never raises for a device's failure
    (`FenceLost` when the leadership is lost: the run is left unfinished for the leader).

    confirm_window_s: the window (default: the playbook's, else 300 s; the service passes the
    one `Playbook.window_for` says); confirm_margin_s: how much of the window must be left to go
    on (default `confirm_margin`); run_timeout_s: the run turns back when it takes longer before
    its decision; progress: called with every step result; abort: set it to roll the run back.
    """
    pb, run = plan.playbook, plan.run
    window = max(1, math.ceil(confirm_window_s if confirm_window_s is not None else pb.window_for(300.0)))
    workers = concurrency or pb.concurrency
    existing = await journal.call(journal.run, run.id)
    if existing is None:
        await journal.call(
            journal.start_run, run.id, plan.office, run.kind, plan.alternate, run.reason, run.who, clock()
        )
    elif existing.steps or existing.is_finished:
        raise ValueError(f"run {run.id} has already started: resume it instead")
    why = plan.refusal(window, workers, confirm_margin_s)
    if why is None and connectors.snmp is None and (snmp := plan.needing("snmp")):
        why = f"steps {', '.join(snmp)} need SNMP access, and none is configured"
    if why is not None:
        why = f"refused: {why}"
        await journal.call(journal.finish_run, run.id, "refused", why, clock())
        log.warning("runner.refused", office=plan.office, run_id=run.id, reason=why)
        return RunOutcome(run.id, plan.office, plan.alternate, run.kind, "refused", why)
    await journal.call(journal.set_plan, run.id, plan.to_json(), float(window))
    state = _Run(
        plan,
        journal,
        connectors,
        window_s=window,
        concurrency=workers,
        persist_id=f"baton-{run.id}-{secrets.token_hex(4)}",
        margin_s=confirm_margin_s,
        run_timeout_s=run_timeout_s,
        progress=progress,
        abort=abort,
        clock=clock,
        fence=fence,
        epoch=epoch,
    )
    state.log.info("runner.started", devices=len(plan.devices), window_s=window, concurrency=workers)
    return await state.finish()


async def resume(
    record: RunRecord,
    *,
    journal: Journal,
    connectors: Connectors,
    inventory: Inventory,
    plan_for: PlanFor | None = None,
    concurrency: int = 8,
    progress: Progress | None = None,
    clock: Callable[[], float] = time.time,
    fence: Fence | None = None,
    epoch: int = 0,
) -> RunOutcome:
    """Finish a run the journal shows unfinished (a restart, or a takeover) by the rules of
    `baton.playbook.progress`: forward if it had decided so, else back. Never raises for a
    device's failure. `plan_for` re-plans runs journaled before plans were (schema 1)."""
    plan = plan_from_json(record.plan, inventory) if record.plan else (plan_for(record) if plan_for else None)
    if plan is None:
        detail = "recovered after a restart: the run's plan is unknown, an operator must check its devices"
        await journal.call(journal.finish_run, record.id, "failed", detail, clock())
        return RunOutcome(record.id, record.office, record.alternate, record.kind, "failed", detail)
    # Steps the crash caught in flight: their outcome is unknown. Closed first (so the journal
    # never shows them running, and a crash of this recovery folds the same records again).
    by_device: dict[str, list[StepRecord]] = {}
    for step in record.steps:
        if step.status is StepStatus.INTENT:
            detail = "interrupted by a restart before its result was journaled; handled by recovery"
            await journal.call(journal.step_result, step.id, StepStatus.UNKNOWN, detail, clock())
            step = replace(step, status=StepStatus.UNKNOWN, detail=detail)
        by_device.setdefault(step.device, []).append(step)
    direction = cast(
        "pg.Direction | None", record.decision if record.decision in ("forward", "back") else None
    )
    state = _Run(
        plan,
        journal,
        connectors,
        window_s=max(1, math.ceil(record.window_s or plan.playbook.window_for(300.0))),
        concurrency=concurrency,
        persist_id=record.persist_id or f"baton-{record.id}-recovered",
        direction=direction,
        progress=progress,
        clock=clock,
        fence=fence,
        epoch=epoch,
    )
    for dev in state.devs:  # every session of the crashed process is gone, and its locks with them
        dev.progress = replace(pg.fold(dev.plan, by_device.get(dev.id, ())), prepared=False)
    state.reason = record.decision_reason
    if direction is None:
        await state.turn_back("interrupted before every device passed verify")
    state.log.info("recovery.started", direction=state.direction)
    return await state.finish(recovered=True)
