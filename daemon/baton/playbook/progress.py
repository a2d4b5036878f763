"""A run's progress, as one pure model: journaled step records in, what to do next out.

Theory of operation
-------------------
Every call a run makes to a device is journaled twice: at `intent` before it goes out, and with
its result after (done, failed — the device answered that it did not happen —, unknown — it may
have happened —, rolled_back, skipped). A device's progress is `fold`ed from those records and
nothing else: the runner folds each record as it writes it, and recovery folds the same records
after a restart (or a takeover). One pure function, `next_action`, then says what happens next to
the device, given its plan, its progress and the run's direction. The runner is a loop around it;
recovery is the same loop, started from the journal.

The run's direction is journaled too (`Journal.decide`): "forward" once every device passed its
verify steps (office-wide, before any confirm), "back" once the run turned to rolling back.
Before either, a restart turns back: the verify results were taken by a process that no longer
watches the window.

Recovery rules, and why:

* **Back** (any failure, an abort, a lost lease, a timeout, or a restart before "forward"):
  every device is undone. An uncommitted candidate is discarded. A confirmed commit that may be
  pending — committed, or a commit whose outcome is unknown — is cancelled with the persist id
  (an rpc-error means nothing is pending under it: never committed, or reverted on its own).
  Edits committed for good (no `:confirmed-commit`; or confirmed) are undone by their
  `compensate` steps; where a confirm's outcome is unknown and nothing is pending, the device is
  asked (`Do.CHECK`: the verify steps, read-only, on running) before compensating. Every other
  change that ran — or was left at intent, so it may have run — is compensated, newest first. A
  step at intent is never simply run again: compensations are the only repeated calls, and they
  must be safe to repeat.
* **Forward** (every device passed verify): the handover took effect, so a restart finishes it:
  each pending confirmed commit is confirmed with the persist id, from a new session. When the
  device answers that nothing is pending, it is asked whether running holds the change (`Do.CHECK`)
  before anything is assumed from the clock: held → it was confirmed; not held → it reverted
  (the window ran out), and the device is handed over again (`Do.REAPPLY`: its candidate-only steps
  run again — re-applying a declarative edit is harmless — with a new confirmed commit). A
  device whose changes are not all in the candidate cannot be re-applied without running a step
  twice: the run then turns back, compensating the confirmed devices too, so the office never
  stays mixed; the outcome says which devices went which way.
* Undo actions that fail are not retried for ever: each is tried once more at most, then left,
  and the run ends `failed` naming what an operator must check.

Termination: every action either changes the progress so that it is not chosen again, or is
counted (confirm tries, reapplies, failed undo), so `next_action` returns None after finitely
many calls whatever the devices answer. The unit tests check this as a property.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Literal, cast

from baton.journal import StepRecord, StepStatus
from baton.playbook.plan import DevicePlan, PlannedStep
from baton.playbook.schema import RESERVED_STEP_NAMES


class Do(StrEnum):
    """The runner's own steps: each is an action `next_action` returns and the name of the
    record the runner journals for it (reserved: a playbook step may not take these names)."""

    PREPARE = "prepare-candidate"  # lock the candidate and discard it (a clean start)
    COMMIT = "commit"  # a confirmed commit with the run's persist id where supported
    CONFIRM = "confirm"  # confirm the pending confirmed commit (<commit><persist-id>)
    CHECK = "check-running"  # ask the device: do the verify steps hold on running? (read-only)
    CANCEL = "cancel-commit"  # <cancel-commit> with the persist id
    DISCARD = "discard-candidate"  # discard the candidate (and unlock it)
    REAPPLY = "reapply"  # start the device over: it reverted after the decision to go forward


RUNNER_STEPS = frozenset(Do)
assert RUNNER_STEPS == RESERVED_STEP_NAMES, "the names playbooks may not use"
COMPENSATE = "compensate:"

MAX_CONFIRM_TRIES = 3  # confirms whose outcome stayed unknown, before the device is asked
MAX_REAPPLIES = 1
MAX_UNDO_TRIES = 2

Direction = Literal["forward", "back"]


class Sent(StrEnum):
    """What became of a call that may change the device."""

    NO = "no"  # not sent
    DONE = "done"
    REFUSED = "refused"  # the device answered: it did not happen
    UNKNOWN = "unknown"  # it may have happened


@dataclass(frozen=True, slots=True)
class DeviceProgress:
    """One device in one run, as its journaled records say (see `fold`)."""

    device: str
    pos: int = 0  # playbook steps finished, in order (done or skipped)
    prepared: bool = False  # candidate locked and discarded by this run (session-bound lock)
    cc: bool | None = None  # the device has :confirmed-commit (known once prepared)
    persist: bool | None = None  # ...and :confirmed-commit:1.1 (outlives the session)
    edits: tuple[str, ...] = ()  # candidate edits sent (in running once committed)
    changes: tuple[str, ...] = ()  # other changing steps that ran, or may have, in order
    commit: Sent = Sent.NO
    confirm: Sent = Sent.NO
    confirm_tries: int = 0
    pending: bool | None = None  # the device said whether our confirmed commit is pending
    running: Literal["changed", "original"] | None = None  # the device said (Do.CHECK)
    cancelled: bool = False  # nothing of ours pending any more
    discarded: bool = False
    undone: frozenset[str] = frozenset()  # steps whose compensation went through
    undo_tries: Mapping[str, int] = field(default_factory=dict)  # failed undo actions, by key
    failed: str | None = None  # why the device failed (it is then rolled back)
    unreachable: str | None = None  # did not answer at first contact (skipped, pending)
    reapplied: int = 0
    backup: str | None = None  # digest of running's edited subtrees before the run (kept beside the journal)

    def tried(self, key: str) -> bool:
        return self.undo_tries.get(key, 0) >= MAX_UNDO_TRIES

    @property
    def touched(self) -> bool:
        return bool(self.edits or self.changes or self.prepared or self.commit is not Sent.NO)

    @property
    def may_be_pending(self) -> bool:
        """A confirmed commit of ours may be pending on the device."""
        return (
            self.cc is not False
            and self.commit in (Sent.DONE, Sent.UNKNOWN)
            and not self.cancelled
            and self.confirm is not Sent.DONE
            and self.pending is not False
            and self.running != "original"
        )

    @property
    def for_good(self) -> bool | None:
        """Are the committed edits in running for good? None: only the device can say."""
        if self.commit not in (Sent.DONE, Sent.UNKNOWN) or self.running == "original":
            return False
        if self.cc is False or self.confirm is Sent.DONE or self.running == "changed":
            return True
        if self.persist is False and self.confirm is not Sent.NO:
            return None  # died with its session, unless a confirm landed first: ask
        if self.pending is False and self.confirm is not Sent.NO:
            return None  # nothing pending, and a confirm may have landed
        return False


# --- actions -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RunStep:
    pos: int  # position in the device's planned steps


@dataclass(frozen=True, slots=True)
class Compensate:
    names: tuple[str, ...]  # the committed edits to undo, newest first (in one commit), or one change


@dataclass(frozen=True, slots=True)
class GiveUp:
    """Forward, but the device cannot be reached to finish: it is left pending (it reverts on
    its own when its window ends) for a catch-up, as a device that never answered would be."""

    reason: str


@dataclass(frozen=True, slots=True)
class TurnBack:
    """The run cannot go forward for this device: turn the whole run back."""

    reason: str


Action = Do | RunStep | Compensate | GiveUp | TurnBack


@dataclass(frozen=True, slots=True)
class RunFacts:
    """What the whole run says, as far as one device's next action depends on it."""

    direction: Direction | None = None  # the journaled decision
    phase: int = 1 << 30  # devices may run steps of this phase and below (barriers)
    skip_unreachable: bool = False  # the playbook's `unreachable: skip`


# --- the fold ------------------------------------------------------------------------------


def commit_position(steps: Sequence[PlannedStep]) -> int | None:
    """Position of the device's last candidate edit: the commit follows it."""
    return max((pos for pos, ps in enumerate(steps) if ps.step.IN_CANDIDATE), default=None)


def fold(
    dp: DevicePlan, records: Iterable[StepRecord], start: DeviceProgress | None = None
) -> DeviceProgress:
    """The device's progress after `records` (its own, in journal order)."""
    p = start if start is not None else DeviceProgress(dp.device.id)
    for r in records:
        p = _apply(dp, p, r)
    return p


def _apply(dp: DevicePlan, p: DeviceProgress, r: StepRecord) -> DeviceProgress:
    """One journal row folded into the progress (see `fold`).

    A row is a call: journaled at intent, then updated with its result. Folding the finished
    row includes what its intent said (an edit sent, a change that may have run, a confirm
    tried), so the runner, which folds each row once it has its result, and recovery, which
    folds what the journal holds, agree. A row still at intent (a crash caught it) counts as
    a call whose outcome is unknown (`resume` journals it so before folding).
    """
    if r.status is StepStatus.INTENT:
        r = replace(r, status=StepStatus.UNKNOWN)
    st, facts = r.status, r.facts
    done, undone = st is StepStatus.DONE, st in (StepStatus.DONE, StepStatus.ROLLED_BACK)
    nothing_pending = st is StepStatus.FAILED and facts.get("pending") is False  # the device said
    match r.name:
        case _ if st is StepStatus.SKIPPED:  # one row skips the rest: the device did not answer
            return replace(p, pos=len(dp.steps), unreachable=p.unreachable or r.detail)
        case Do.PREPARE if done:
            cc, persist = bool(facts.get("cc", p.cc)), bool(facts.get("persist", p.persist))
            backup = p.backup or cast("str | None", facts.get("backup"))
            return replace(p, prepared=True, discarded=False, cc=cc, persist=persist, backup=backup)
        case Do.COMMIT if done:
            cc = facts.get("cc", p.cc)
            return replace(p, commit=Sent.DONE, prepared=False, cc=None if cc is None else bool(cc))
        case Do.COMMIT if st is StepStatus.FAILED:  # refused (rpc-error), or never sent
            return _failed(replace(p, commit=Sent.REFUSED), r)
        case Do.COMMIT:
            return _failed(replace(p, commit=Sent.UNKNOWN, prepared=False), r)
        case Do.CONFIRM:
            tried = replace(p, confirm_tries=p.confirm_tries + 1)
            if done:
                return replace(tried, confirm=Sent.DONE, pending=False)
            if nothing_pending:
                return replace(
                    tried, confirm=Sent.REFUSED if p.confirm is Sent.NO else p.confirm, pending=False
                )
            if st is StepStatus.FAILED and facts.get("sent") is False:
                return tried  # no session: nothing was sent
            return replace(tried, confirm=Sent.UNKNOWN)
        case Do.CHECK if done and facts.get("running") in ("changed", "original"):
            return replace(p, running=cast('Literal["changed", "original"]', facts["running"]))
        case Do.CANCEL if undone:
            return replace(p, cancelled=True, pending=False, running="original")
        case Do.CANCEL if nothing_pending:  # never committed, or reverted on its own
            return replace(p, cancelled=True, pending=False)
        case Do.DISCARD if undone:
            return replace(p, discarded=True, prepared=False)
        case Do.DISCARD:
            return _undo_failed(replace(p, prepared=False), r.name)
        case Do.REAPPLY if done:
            # Start over; what was sent before may still sit in the candidate: kept for the undo.
            fresh = DeviceProgress(p.device, cc=p.cc, persist=p.persist, edits=p.edits, changes=p.changes)
            return replace(fresh, undone=p.undone, reapplied=p.reapplied + 1, backup=p.backup)
        case Do.PREPARE | Do.REAPPLY:  # a re-apply that failed: the run cannot go forward (TurnBack)
            return _failed(p, r)
        case Do.CHECK | Do.CANCEL:
            return _undo_failed(p, r.name)
        case _ if r.name.startswith(COMPENSATE):
            names = frozenset(r.name.removeprefix(COMPENSATE).split(","))
            return replace(p, undone=p.undone | names) if undone else _undo_failed(p, r.name)
    pos = next((pos for pos, ps in enumerate(dp.steps) if ps.name == r.name), None)
    if pos is None:
        return p  # not a step of this plan (the journal knows more than the plan): ignored
    step = dp.steps[pos].step
    # What the intent says: the call went out, or may have.
    if step.IN_CANDIDATE:
        p = replace(p, edits=_with(p.edits, r.name))
    elif step.CHANGES:
        p = replace(p, changes=_with(p.changes, r.name))
    if done:
        return replace(p, pos=max(p.pos, pos + 1))
    return p if facts.get("retry") else _failed(p, r)  # retry: an idempotent step tried again


def _with(names: tuple[str, ...], name: str) -> tuple[str, ...]:
    return names if name in names else (*names, name)


def _failed(p: DeviceProgress, r: StepRecord) -> DeviceProgress:
    detail = r.detail or f"{r.name} {r.status}"
    return p if p.failed is not None else replace(p, failed=f"{r.name}: {detail}")  # the first cause


def _undo_failed(p: DeviceProgress, key: str) -> DeviceProgress:
    return replace(p, undo_tries={**p.undo_tries, key: p.undo_tries.get(key, 0) + 1})


# --- what next -----------------------------------------------------------------------------


def next_action(
    dp: DevicePlan, p: DeviceProgress, run: RunFacts, *, commit_session: bool = False
) -> Action | None:
    """What the device does next; None: nothing now (done, waiting at a barrier or for the
    office-wide decision, or nothing left that could be done).

    commit_session: the session that made the device's confirmed commit is still open. Without
    :confirmed-commit:1.1 only that session can confirm it (a plain <commit> elsewhere would
    commit the candidate instead), and once it is gone the commit has reverted.
    """
    if run.direction == "back" or p.failed is not None:
        return undo_action(dp, p)
    if p.unreachable is not None:
        return None
    if run.direction == "forward" and p.commit is Sent.UNKNOWN:
        return _finish(dp, p, run, commit_session)  # a re-apply's commit cut short
    forward = _forward(dp, p, run.phase)
    if forward is not None or run.direction is None:
        return forward
    return _finish(dp, p, run, commit_session)


def _forward(dp: DevicePlan, p: DeviceProgress, phase: int) -> Action | None:
    commit_at = commit_position(dp.steps)
    if commit_at is not None and p.pos > commit_at and p.commit is Sent.NO:
        return Do.COMMIT
    if p.pos >= len(dp.steps):
        return None
    ps = dp.steps[p.pos]
    if ps.phase > phase:
        return None
    if ps.step.IN_CANDIDATE and not p.prepared:
        return Do.PREPARE
    return RunStep(p.pos)


def can_reapply(dp: DevicePlan) -> bool:
    """Only a device whose every change is in the candidate can run its steps again safely."""
    return all(ps.step.IN_CANDIDATE or not ps.step.CHANGES for ps in dp.steps)


def _finish(dp: DevicePlan, p: DeviceProgress, run: RunFacts, commit_session: bool) -> Action | None:
    """Forward, after the decision: bring the device to confirmed."""
    if commit_position(dp.steps) is None or p.commit not in (Sent.DONE, Sent.UNKNOWN) or p.cc is False:
        return None
    if p.confirm is Sent.DONE:
        # Without persist, a confirming <commit> that comes after the window ran out is a plain
        # commit — and succeeds. Only running can tell: look.
        if p.persist is False and p.running is None and bool(verify_steps(dp)):
            if not p.tried(Do.CHECK):
                return Do.CHECK
            why = f"{p.device}: confirmed, but running could not be read back to see it held"
            return GiveUp(why) if run.skip_unreachable else TurnBack(why)
        if p.running != "original":
            return None
    # Without :confirmed-commit:1.1 a confirmed commit dies with the session that made it: once
    # that session is gone, nothing of ours can be pending (reverted, or confirmed).
    nothing_pending = p.pending is False or (p.persist is False and not commit_session)
    if nothing_pending:  # ask the device about running before believing anything
        if p.running == "changed":
            return None  # confirmed (by an earlier confirm whose answer was lost)
        if p.running is None and not p.tried(Do.CHECK):
            return Do.CHECK
        if p.running is None:  # it cannot be asked: neither confirmed nor reverted is known
            why = (
                f"{p.device}: nothing pending, and running could not be read to tell confirmed from reverted"
            )
            return GiveUp(why) if run.skip_unreachable else TurnBack(why)
    elif p.confirm_tries < MAX_CONFIRM_TRIES:
        return Do.CONFIRM
    else:
        why = f"{p.device}: no answer to {p.confirm_tries} confirm(s)"
        return GiveUp(why) if run.skip_unreachable else TurnBack(why)
    # Reverted: running does not hold the change.
    if p.reapplied < MAX_REAPPLIES and can_reapply(dp):
        return Do.REAPPLY
    why = "its steps cannot run twice" if not can_reapply(dp) else "it reverted again after a re-apply"
    return TurnBack(f"{p.device}: its confirmed commit reverted and {why}")


def undo_action(dp: DevicePlan, p: DeviceProgress) -> Action | None:
    """Back: the next thing that undoes what the run did to the device (None: nothing left)."""
    if p.may_be_pending and not p.tried(Do.CANCEL):
        return Do.CANCEL
    for_good = p.for_good
    if for_good is None and not p.tried(Do.CHECK) and bool(verify_steps(dp)):
        return Do.CHECK
    if p.edits and for_good is not False:
        todo = tuple(n for n in reversed(p.edits) if n not in p.undone)
        key = COMPENSATE + ",".join(todo)
        if todo and not p.tried(key):
            return Compensate(todo)
    for name in reversed(p.changes):
        if name not in p.undone and not p.tried(COMPENSATE + name):
            return Compensate((name,))
    # Last: a candidate that may still hold the run's edits (never committed; or running was
    # reverted under it, which not every server follows with the candidate) is discarded, or
    # anyone's next commit would send them out.
    if p.edits and not p.discarded and not p.tried(Do.DISCARD):
        return Do.DISCARD
    return None


def verify_steps(dp: DevicePlan) -> tuple[PlannedStep, ...]:
    """The read-only steps after the commit: what `Do.CHECK` runs on running."""
    commit_at = commit_position(dp.steps)
    if commit_at is None:
        return ()
    return tuple(ps for ps in dp.steps[commit_at + 1 :] if not ps.step.CHANGES)


def decide(devices: Sequence[tuple[DevicePlan, DeviceProgress]], rollback_all: bool) -> tuple[Direction, str]:
    """The office-wide decision, once no device can go further before it: forward when every
    device passed verify (those skipped as unreachable aside, and with `on_failure:
    rollback_device` those that failed, which are rolled back on their own); else back."""
    waiting = [
        p.device
        for dp, p in devices
        if p.unreachable is None
        and not (p.failed is not None and not rollback_all)
        and not is_verified(dp, p)
    ]
    if waiting:
        return "back", f"{len(waiting)} device(s) did not pass: {', '.join(waiting[:5])}"
    return "forward", "every device passed verify"


# --- what the progress says ---------------------------------------------------------------


def is_verified(dp: DevicePlan, p: DeviceProgress) -> bool:
    """Every step done (and committed, when it edits): ready for the office-wide decision."""
    return (
        p.failed is None
        and p.pos >= len(dp.steps)
        and (commit_position(dp.steps) is None or p.commit is Sent.DONE)
    )


def is_handed_over(dp: DevicePlan, p: DeviceProgress) -> bool:
    """Forward and complete: every step done, the change in running for good."""
    if not is_verified(dp, p) or p.unreachable is not None:
        return False
    if commit_position(dp.steps) is None or p.cc is False:
        return True
    if p.running == "original":
        return False
    if p.confirm is Sent.DONE:
        # (a 1.0 confirm is believed once running holds it)
        return p.persist is not False or p.running == "changed" or not bool(verify_steps(dp))
    return p.running == "changed" and (p.pending is False or p.persist is False)


def leftovers(dp: DevicePlan, p: DeviceProgress) -> tuple[str, ...]:
    """What of the run may still be on the device after undoing (empty: clean)."""
    left: list[str] = []
    if p.may_be_pending:
        left.append("a confirmed commit that may still be pending (it reverts when its window ends)")
    if p.edits and p.for_good is not False:
        left.extend(f"edit {n}" for n in p.edits if n not in p.undone)
    left.extend(f"step {n}" for n in p.changes if n not in p.undone)
    if p.edits and not p.discarded and not set(p.edits) <= p.undone:
        left.append("a candidate that may hold the run's edits (discard it before anyone commits)")
    return tuple(left)


class DeviceStatus(StrEnum):
    PENDING = "pending"  # not reached (the run stopped before it)
    RUNNING = "running"
    COMMITTED = "committed"  # committed; the confirm is still to come
    CONFIRMED = "confirmed"  # handed over (confirmed, or committed for good without one)
    FAILED = "failed"  # failed, or could not be fully undone
    ROLLED_BACK = "rolled_back"  # touched, then undone completely
    UNREACHABLE = "unreachable"  # did not answer at first contact: skipped, pending


def status_of(dp: DevicePlan, p: DeviceProgress, direction: Direction | None) -> DeviceStatus:
    if p.unreachable is not None:
        return DeviceStatus.UNREACHABLE
    back = direction == "back" or p.failed is not None
    if back:
        if leftovers(dp, p):
            return DeviceStatus.FAILED
        if p.failed is not None and not p.touched:
            return DeviceStatus.FAILED
        return DeviceStatus.ROLLED_BACK if p.touched else DeviceStatus.PENDING
    if is_handed_over(dp, p):
        return DeviceStatus.CONFIRMED
    if p.commit is Sent.DONE:
        return DeviceStatus.COMMITTED
    return DeviceStatus.RUNNING if p.touched or p.pos else DeviceStatus.PENDING
