"""The run-progress model: records folded into progress, what each progress does next, and the
promise as a property — whatever the devices answer and wherever the process dies, a run ends
with every device handed over or every device back, never a step run twice, and its outcome
says which device went which way."""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import pytest
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from baton.core.model import Device, Inventory, Office, RunKind
from baton.journal import StepRecord, StepStatus
from baton.playbook import progress as pg
from baton.playbook.plan import DevicePlan, RunInfo, plan_run
from baton.playbook.progress import DeviceProgress, Direction, Do, RunFacts
from baton.playbook.schema import Playbook

EDIT = {
    "kind": "netconf.edit",
    "config": "<a xmlns='urn:x'/>",
    "compensate": {"kind": "netconf.edit", "config": "<b xmlns='urn:x'/>"},
}
BARE_EDIT = {"kind": "netconf.edit", "config": "<a xmlns='urn:x'/>"}
SSH = {
    "kind": "ssh.command",
    "command": "announce",
    "compensate": {"kind": "ssh.command", "command": "retract"},
}
VERIFY = {"kind": "netconf.get", "filter": "<a xmlns='urn:x'/>", "phase": 1}


def device_plan(*steps: dict[str, Any], names: tuple[str, ...] = ()) -> DevicePlan:
    pb = Playbook.model_validate(
        {
            "name": "t",
            "kind": "handover",
            "targets": {"office": "closed"},
            "barriers": True,
            "steps": [{"name": names[i] if i < len(names) else f"s{i}", **s} for i, s in enumerate(steps)],
        }
    )
    inventory = Inventory(
        {"a": Office("a", "A", "r", ("b",)), "b": Office("b", "B", "r", ("a",))},
        {"d1": Device("d1", "a", "core", "127.0.0.1")},
    )
    plan = plan_run(pb, inventory, "a", "b", RunInfo("r1", RunKind.HANDOVER, "t", "me"))
    assert () == plan.problems
    return plan.devices[0]


STANDARD = device_plan(EDIT, EDIT, VERIFY, names=("e1", "e2", "v"))
WITH_SSH = device_plan(EDIT, SSH, VERIFY, names=("e1", "x", "v"))

_ids = itertools.count(1)


def row(name: str, status: StepStatus, **facts: Any) -> StepRecord:
    return StepRecord(next(_ids), "r1", "d1", 0, name, "apply", status, 0.0, 1.0, "", 1, facts)


D, F, U, R = StepStatus.DONE, StepStatus.FAILED, StepStatus.UNKNOWN, StepStatus.ROLLED_BACK
PREPARED = [row(Do.PREPARE, D, cc=True, persist=True)]
EDITED = [*PREPARED, row("e1", D), row("e2", D)]
COMMITTED = [*EDITED, row(Do.COMMIT, D, cc=True, persist=True)]
VERIFIED = [*COMMITTED, row("v", D)]
NON_CC = [row(Do.PREPARE, D, cc=False, persist=False), row("e1", D), row("e2", D)]


@pytest.mark.parametrize(
    ("records", "direction", "expected"),
    [
        ([], None, pg.Do.PREPARE),
        (PREPARED, None, pg.RunStep(0)),
        ([*PREPARED, row("e1", D)], None, pg.RunStep(1)),
        (EDITED, None, pg.Do.COMMIT),
        (COMMITTED, None, pg.RunStep(2)),
        (VERIFIED, None, None),  # waits for the office-wide decision
        (VERIFIED, "forward", pg.Do.CONFIRM),
        ([*VERIFIED, row(Do.CONFIRM, D)], "forward", None),
        # the device answers that nothing is pending: ask it before believing anything
        ([*VERIFIED, row(Do.CONFIRM, F, pending=False)], "forward", pg.Do.CHECK),
        (
            [*VERIFIED, row(Do.CONFIRM, F, pending=False), row(Do.CHECK, D, running="changed")],
            "forward",
            None,
        ),
        (
            [*VERIFIED, row(Do.CONFIRM, F, pending=False), row(Do.CHECK, D, running="original")],
            "forward",
            pg.Do.REAPPLY,
        ),
        # a confirm lost in flight is sent again, at most three times
        ([*VERIFIED, row(Do.CONFIRM, U)], "forward", pg.Do.CONFIRM),
        ([*VERIFIED, *[row(Do.CONFIRM, U)] * 3], "forward", pg.TurnBack("d1: no answer to 3 confirm(s)")),
        # back: a pending confirmed commit is cancelled, then the candidate discarded (not every
        # server resets it with running), then nothing is left
        (COMMITTED, "back", pg.Do.CANCEL),
        ([*COMMITTED, row(Do.CANCEL, R)], "back", pg.Do.DISCARD),
        ([*COMMITTED, row(Do.CANCEL, R), row(Do.DISCARD, R)], "back", None),
        ([*COMMITTED, row(Do.CANCEL, F, pending=False)], "back", pg.Do.DISCARD),  # reverted on its own
        # a commit whose outcome is unknown is treated as applied
        ([*EDITED, row(Do.COMMIT, U)], "back", pg.Do.CANCEL),
        ([*EDITED, row(Do.COMMIT, U), row(Do.CANCEL, R)], "back", pg.Do.DISCARD),
        # without :confirmed-commit a commit is for good: the edits are compensated, newest first
        ([*NON_CC, row(Do.COMMIT, D, cc=False)], "back", pg.Compensate(("e2", "e1"))),
        ([*NON_CC, row(Do.COMMIT, U)], "back", pg.Compensate(("e2", "e1"))),
        ([*NON_CC, row(Do.COMMIT, U), row("compensate:e2,e1", R)], "back", pg.Do.DISCARD),
        # confirmed, then the run turned back (another device reverted): compensated too
        ([*VERIFIED, row(Do.CONFIRM, D)], "back", pg.Compensate(("e2", "e1"))),
        # a confirm whose answer was lost, nothing pending: the device is asked first
        ([*VERIFIED, row(Do.CONFIRM, U), row(Do.CANCEL, F, pending=False)], "back", pg.Do.CHECK),
        (
            [
                *VERIFIED,
                row(Do.CONFIRM, U),
                row(Do.CANCEL, F, pending=False),
                row(Do.CHECK, D, running="original"),
            ],
            "back",
            pg.Do.DISCARD,
        ),
        # uncommitted edits are discarded
        ([*PREPARED, row("e1", D)], "back", pg.Do.DISCARD),
        ([*PREPARED, row("e1", D), row(Do.DISCARD, R)], "back", None),
        # nothing touched: nothing to undo
        ([], "back", None),
    ],
)
def test_next_action(
    records: list[StepRecord], direction: Direction | None, expected: pg.Action | None
) -> None:
    """From the journaled records alone, the device's next action."""
    progress = pg.fold(STANDARD, records)
    assert expected == pg.next_action(STANDARD, progress, RunFacts(direction))


def test_a_step_left_at_intent_is_compensated_never_run_again() -> None:
    """An ssh command a crash caught at intent may have run: undone, not repeated."""
    records = [*PREPARED, row("e1", D), row("x", StepStatus.INTENT)]
    progress = pg.fold(WITH_SSH, records)
    assert ("x",) == progress.changes
    assert pg.Compensate(("x",)) == pg.next_action(WITH_SSH, progress, RunFacts("back"))
    progress = pg.fold(WITH_SSH, [*records, row("compensate:x", R)])
    assert pg.Do.DISCARD == pg.next_action(WITH_SSH, progress, RunFacts("back"))


@pytest.mark.parametrize(
    "name",
    [
        Do.PREPARE,
        "e1",
        "x",
        Do.COMMIT,
        "v",
        Do.CONFIRM,
        Do.CHECK,
        Do.CANCEL,
        Do.DISCARD,
        Do.REAPPLY,
        "compensate:e1",
    ],
)
@pytest.mark.parametrize("before", [[], PREPARED, [*PREPARED, row("e1", D), row("x", D)]])
def test_a_row_a_crash_left_at_intent_folds_as_unknown(name: str, before: list[StepRecord]) -> None:
    """`resume` journals such a row as unknown before folding; the fold agrees, wherever it is."""
    for direction in (None, "forward", "back"):
        at_intent = pg.fold(WITH_SSH, [*before, row(name, StepStatus.INTENT)])
        unknown = pg.fold(WITH_SSH, [*before, row(name, U)])
        assert unknown == at_intent
        facts = RunFacts(direction)  # type: ignore[arg-type]
        assert pg.next_action(WITH_SSH, unknown, facts) == pg.next_action(WITH_SSH, at_intent, facts)


def test_a_device_whose_changes_are_not_all_in_the_candidate_is_never_reapplied() -> None:
    """Re-applying would run the ssh command twice: the run turns back instead."""
    records = [
        *PREPARED,
        row("e1", D),
        row("x", D),
        row(Do.COMMIT, D, cc=True, persist=True),
        row("v", D),
        row(Do.CONFIRM, F, pending=False),
        row(Do.CHECK, D, running="original"),
    ]
    action = pg.next_action(WITH_SSH, pg.fold(WITH_SSH, records), RunFacts("forward"))
    assert isinstance(action, pg.TurnBack)


def test_a_confirmed_commit_without_persist_dies_with_its_session() -> None:
    """:confirmed-commit 1.0 only: confirmed on the session that made it; once that session is
    gone the device is asked whether the change held (a confirm may have landed) or reverted."""
    records = [
        row(Do.PREPARE, D, cc=True, persist=False),
        row("e1", D),
        row("e2", D),
        row(Do.COMMIT, D, cc=True, persist=False),
        row("v", D),
    ]
    progress = pg.fold(STANDARD, records)
    assert pg.Do.CONFIRM == pg.next_action(STANDARD, progress, RunFacts("forward"), commit_session=True)
    # Its session gone: reverted, unless a confirm landed first: the device is asked.
    assert pg.Do.CHECK == pg.next_action(STANDARD, progress, RunFacts("forward"), commit_session=False)
    reverted = pg.fold(STANDARD, [*records, row(Do.CHECK, D, running="original")])
    assert pg.Do.REAPPLY == pg.next_action(STANDARD, reverted, RunFacts("forward"))
    confirmed = pg.fold(STANDARD, [*records, row(Do.CONFIRM, U), row(Do.CHECK, D, running="changed")])
    assert pg.next_action(STANDARD, confirmed, RunFacts("forward")) is None
    assert pg.is_handed_over(STANDARD, confirmed)


def test_a_reapply_starts_the_device_over() -> None:
    records = [
        *VERIFIED,
        row(Do.CONFIRM, F, pending=False),
        row(Do.CHECK, D, running="original"),
        row(Do.REAPPLY, D),
    ]
    progress = pg.fold(STANDARD, records)
    assert (0, 1) == (progress.pos, progress.reapplied)
    assert pg.Do.PREPARE == pg.next_action(STANDARD, progress, RunFacts("forward"))


def test_the_office_goes_forward_only_when_every_device_passed() -> None:
    verified = pg.fold(STANDARD, VERIFIED)
    waiting = pg.fold(STANDARD, COMMITTED)
    failed = pg.fold(STANDARD, [*COMMITTED, row("v", F)])
    unreachable = pg.fold(STANDARD, [row("e1", StepStatus.SKIPPED, unreachable=True)])
    assert "forward" == pg.decide([(STANDARD, verified), (STANDARD, unreachable)], True)[0]
    assert "back" == pg.decide([(STANDARD, verified), (STANDARD, waiting)], True)[0]
    assert "back" == pg.decide([(STANDARD, verified), (STANDARD, failed)], True)[0]
    # on_failure rollback_device: the failed device is rolled back alone, the others go on
    assert "forward" == pg.decide([(STANDARD, verified), (STANDARD, failed)], False)[0]


# --- the promise, as a property --------------------------------------------------------------
#
# A simulated device with the semantics that matter (a shared candidate, running, a confirmed
# commit that is pending until confirmed, cancelled, expired or — without persist — its session
# dies), and a simulated process that drives `next_action` exactly as the runner does, journals
# rows, and may die at any call. Faults are drawn by hypothesis; once they run out, every call
# succeeds, so recovery can finish.

Fault = Literal["ok", "refused", "lost", "lost-applied", "crash-before", "crash-after", "expire"]
FAULTS: list[Fault] = ["ok", "refused", "lost", "lost-applied", "crash-before", "crash-after", "expire"]


class Crash(Exception):
    pass


@dataclass
class SimDevice:
    cc: bool
    persist: bool
    plan: DevicePlan
    resets_candidate: bool = True  # a revert resets the candidate too (the lab and many servers)
    running: frozenset[str] = frozenset()
    candidate: frozenset[str] = frozenset()
    pending: frozenset[str] | None = None  # running before the confirmed commit, while pending
    pending_session: int = 0
    applied: set[str] = field(default_factory=set)  # non-candidate changes in effect
    ran: Counter[str] = field(default_factory=Counter)  # executions of each changing step

    @property
    def edits(self) -> frozenset[str]:
        return frozenset(ps.name for ps in self.plan.steps if ps.step.IN_CANDIDATE)

    @property
    def changes(self) -> frozenset[str]:
        return frozenset(ps.name for ps in self.plan.steps if ps.step.CHANGES and not ps.step.IN_CANDIDATE)

    def expire(self) -> None:
        if self.pending is not None:
            self.running, self.pending = self.pending, None
            if self.resets_candidate:
                self.candidate = self.running

    def session_died(self, session: int) -> None:
        if self.pending is not None and not self.persist and self.pending_session == session:
            self.expire()

    @property
    def handed_over(self) -> bool:
        return self.running == self.edits and self.pending is None and self.applied == set(self.changes)

    @property
    def clean(self) -> bool:
        # A candidate left holding the run's edits would go out with anyone's next commit.
        return not self.running and not self.candidate and self.pending is None and not self.applied


class Process:
    """One life of Baton: the runner's loop around `next_action`, with the journal `rows`."""

    def __init__(
        self,
        sims: dict[str, SimDevice],
        rows: dict[str, list[StepRecord]],
        direction: list[Direction | None],
        faults: Iterator[Fault],
        session: int,
    ) -> None:
        self.sims = sims
        self.rows = rows
        self.direction = direction  # journaled, one cell: survives the process
        self.faults = faults
        self.session = session
        self.commit_session: set[str] = set()
        # As `runner.resume` does: rows a crash left at intent are closed as unknown first.
        for device_rows in rows.values():
            device_rows[:] = [
                replace(r, status=StepStatus.UNKNOWN) if r.status is StepStatus.INTENT else r
                for r in device_rows
            ]
        self.progress = {d: replace(pg.fold(sim.plan, rows[d]), prepared=False) for d, sim in sims.items()}
        self.actions = 0

    def fault(self) -> Fault:
        return next(self.faults, "ok")

    def journal(self, device: str, name: str, status: StepStatus, **facts: Any) -> None:
        record = StepRecord(next(_ids), "r1", device, 0, name, "apply", status, 0.0, 1.0, name, 1, facts)
        self.rows[device].append(record)
        plan = self.sims[device].plan
        self.progress[device] = pg.fold(plan, (record,), self.progress[device])

    def perform(self, device: str, action: pg.Action) -> None:
        sim = self.sims[device]
        fault = self.fault()
        if fault == "expire":
            sim.expire()
            fault = "ok"
        if fault == "crash-before":
            self.rows[device].append(
                StepRecord(
                    next(_ids),
                    "r1",
                    device,
                    0,
                    _name(sim.plan, action),
                    "apply",
                    StepStatus.INTENT,
                    0.0,
                    None,
                    "",
                    1,
                    {},
                )
            )
            raise Crash
        effect = _effect(sim, action, self.session, fault, self.progress[device])
        if fault == "crash-after":
            self.rows[device].append(
                StepRecord(
                    next(_ids),
                    "r1",
                    device,
                    0,
                    _name(sim.plan, action),
                    "apply",
                    StepStatus.INTENT,
                    0.0,
                    None,
                    "",
                    1,
                    {},
                )
            )
            raise Crash
        status, facts = effect
        if action is Do.COMMIT and status is StepStatus.DONE and sim.cc:
            self.commit_session.add(device)
        if status is StepStatus.UNKNOWN:
            self.commit_session.discard(device)
            sim.session_died(self.session)
        self.journal(device, _name(sim.plan, action), status, **facts)

    def run(self, max_actions: int = 400) -> None:
        if self.direction[0] is None and self.session > 1:
            self.direction[0] = "back"  # a restart before the decision turns back
        phases = sorted({ps.phase for sim in self.sims.values() for ps in sim.plan.steps})
        phase_i = 0
        while True:
            acted = False
            phase = phases[phase_i] if self.direction[0] is None and phases else 1 << 30
            for device, sim in self.sims.items():
                while True:
                    if self.progress[device].failed is not None and self.direction[0] != "back":
                        self.direction[0] = "back"
                    facts = RunFacts(self.direction[0], phase)
                    action = pg.next_action(
                        sim.plan, self.progress[device], facts, commit_session=device in self.commit_session
                    )
                    if action is None:
                        break
                    self.actions += 1
                    assert self.actions < max_actions, "the run does not terminate"
                    acted = True
                    if isinstance(action, pg.TurnBack):
                        self.journal(device, Do.REAPPLY, StepStatus.FAILED)
                    else:
                        self.perform(device, action)
            if self.direction[0] is not None:
                if not acted:
                    return
                continue
            if phase_i < len(phases) - 1:
                phase_i += 1
                continue
            self.direction[0] = pg.decide([(s.plan, self.progress[d]) for d, s in self.sims.items()], True)[0]


def _name(plan: DevicePlan, action: pg.Action) -> str:
    if isinstance(action, pg.RunStep):
        return plan.steps[action.pos].name
    if isinstance(action, pg.Compensate):
        return pg.COMPENSATE + ",".join(action.names)
    if isinstance(action, pg.GiveUp):
        return Do.CONFIRM
    assert isinstance(action, Do)
    return action


def _effect(
    sim: SimDevice, action: pg.Action, session: int, fault: Fault, p: DeviceProgress
) -> tuple[StepStatus, dict[str, Any]]:
    """Carry the action out on the simulated device; what the runner would journal."""
    applies = fault in ("ok", "lost-applied", "crash-after")
    answer_lost = fault in ("lost", "lost-applied")
    ok = StepStatus.DONE

    def done(status: StepStatus = ok, **facts: Any) -> tuple[StepStatus, dict[str, Any]]:
        return (StepStatus.UNKNOWN, {}) if answer_lost else (status, facts)

    if fault == "refused":
        if action in (Do.CONFIRM, Do.CANCEL):
            return StepStatus.FAILED, {"pending": False} if sim.pending is None else {"sent": False}
        return StepStatus.FAILED, {}
    if action is Do.PREPARE:
        if applies:
            sim.candidate = sim.running
        return done(cc=sim.cc, persist=sim.persist)
    if isinstance(action, pg.RunStep):
        ps = sim.plan.steps[action.pos]
        if ps.step.IN_CANDIDATE:
            if applies:
                sim.candidate |= {ps.name}
        elif ps.step.CHANGES:
            if applies:
                sim.ran[ps.name] += 1
                sim.applied.add(ps.name)
        elif applies and not sim.edits <= sim.running:
            return StepStatus.FAILED, {}  # the verify step sees the change missing
        return done()
    if action is Do.COMMIT:
        if applies:
            if sim.cc and sim.pending is None:
                sim.pending, sim.pending_session = sim.running, session
            sim.running = sim.candidate
        return done(cc=sim.cc, persist=sim.persist)
    if action is Do.CONFIRM:
        if not sim.persist and (sim.pending is None or sim.pending_session != session):
            # Without persist a confirming <commit> is a plain commit on any other session: it
            # commits whatever the candidate holds (RFC 6241 8.4). Never to be sent there.
            if applies:
                sim.running = sim.candidate
            return done()
        if sim.pending is None:
            return (StepStatus.UNKNOWN, {}) if answer_lost else (StepStatus.FAILED, {"pending": False})
        if applies:
            sim.pending = None
        return done()
    if action is Do.CANCEL:
        if sim.pending is None:
            return (StepStatus.UNKNOWN, {}) if answer_lost else (StepStatus.FAILED, {"pending": False})
        if applies:
            sim.expire()
        return done(StepStatus.ROLLED_BACK)
    if action is Do.CHECK:
        if answer_lost:
            return StepStatus.UNKNOWN, {}
        return ok, {"running": "changed" if sim.edits <= sim.running and sim.running else "original"}
    if action is Do.DISCARD:
        if applies:
            sim.candidate = sim.running
        return done(StepStatus.ROLLED_BACK)
    if isinstance(action, pg.Compensate) and action.names[0] in sim.edits:
        if applies:
            sim.running -= set(action.names)
            sim.candidate = sim.running
        return done(StepStatus.ROLLED_BACK)
    if isinstance(action, pg.Compensate):
        if applies:
            sim.applied.difference_update(action.names)
        return done(StepStatus.ROLLED_BACK)
    if action is Do.REAPPLY:
        return ok, {}
    assert isinstance(action, pg.GiveUp)
    return StepStatus.SKIPPED, {"unreachable": True}


# Device kinds by name (readable falsifying examples): confirmed-commit with persist (1.1),
# without (1.0 only), or none; playbook steps all in the candidate, or one ssh change too.
KINDS: dict[str, tuple[bool, bool, DevicePlan]] = {
    "cc11": (True, True, STANDARD),
    "cc10": (True, False, STANDARD),
    "nocc": (False, False, STANDARD),
    "cc11+ssh": (True, True, WITH_SSH),
    "nocc+ssh": (False, False, WITH_SSH),
}
DEVICE_KINDS = st.sampled_from(sorted(KINDS))


@settings(max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
# The cases that matter most, always tried: reverted after the decision (re-applied, or — with a
# step outside the candidate — the run turns back); a confirm that landed but whose answer was
# lost, with and without persist; a crash at the confirm; confirms that never get an answer.
@example(kinds=["cc11"], faults={5: "expire"}, resets=True)
@example(kinds=["cc11+ssh"], faults={5: "expire"}, resets=True)
@example(kinds=["cc11", "cc11+ssh"], faults={10: "expire"}, resets=True)
@example(kinds=["cc10"], faults={5: "lost-applied"}, resets=True)
@example(kinds=["cc11"], faults={5: "lost-applied"}, resets=True)
@example(kinds=["cc11", "nocc+ssh"], faults={10: "crash-after"}, resets=True)
@example(kinds=["cc10", "cc11"], faults={10: "crash-before"}, resets=True)
@example(kinds=["cc11"], faults={5: "lost", 6: "lost", 7: "lost"}, resets=True)
@example(kinds=["nocc+ssh"], faults={3: "lost-applied"}, resets=True)
@given(
    kinds=st.lists(DEVICE_KINDS, min_size=1, max_size=3),
    resets=st.booleans(),
    # A few faults at chosen calls (the n-th call of the whole run, across lives); every other
    # call succeeds.
    faults=st.dictionaries(st.integers(0, 45), st.sampled_from(FAULTS[1:]), max_size=4),
)
def test_every_device_handed_over_or_every_device_back(
    kinds: list[str], faults: dict[int, Fault], resets: bool
) -> None:
    """Whatever the devices answer and wherever the process dies: the run ends with every
    device handed over, or every device back; a device is left changed only when undoing it
    failed repeatedly, and then the outcome says so; a changing step outside the candidate
    never runs twice."""
    sims = {f"d{i}": SimDevice(*KINDS[kind], resets) for i, kind in enumerate(kinds)}
    rows: dict[str, list[StepRecord]] = {d: [] for d in sims}
    direction: list[Direction | None] = [None]
    stream = (faults.get(n, "ok") for n in itertools.count())
    for life in range(1, 12):
        process = Process(sims, rows, direction, stream, life)
        try:
            process.run()
        except Crash:
            for sim in sims.values():
                sim.session_died(life)  # the process is gone, and its sessions with it
            continue
        break
    else:
        pytest.fail("still crashing after 11 lives with faults left")
    progress = process.progress
    event(f"direction {direction[0]}, {life} li(f/v)e(s)")
    for device, sim in sims.items():
        assert sim.ran["x"] <= 1, f"{device} ran its ssh step twice"
        p = progress[device]
        gave_up = any(n >= pg.MAX_UNDO_TRIES for n in p.undo_tries.values())
        if direction[0] == "forward":
            if p.unreachable is None:
                assert pg.is_handed_over(sim.plan, p), (device, p)
                assert sim.handed_over, (device, sim)
            else:
                assert p.confirm_tries >= pg.MAX_CONFIRM_TRIES or p.pos == 0, (device, p)
        else:
            left = pg.leftovers(sim.plan, p)
            if left:
                assert gave_up, (device, sim, p)  # left changed only when undoing kept failing
            else:
                assert sim.clean, (device, sim, p)  # what the outcome calls clean is clean
