"""Approvals, grant expiry, abort and resolve: core decisions with time as an argument."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from baton.core.actions import AbortRun, Alert, ClearAlert, RaiseAlert, StartRun
from baton.core.events import (
    AbortRequested,
    Acked,
    ApprovalDenied,
    ApprovalGiven,
    ClosureDeclared,
    Event,
    HandbackRequested,
    OfficeObserved,
    PhaseResolved,
    RunFinished,
    Ticked,
)
from baton.core.machine import step
from baton.core.model import (
    Closure,
    GrantTerm,
    OfficeState,
    OfficeVerdict,
    Phase,
    Policy,
    RunKind,
    State,
)
from tests.unit.core_builders import drive, make_state
from tests.unit.operator_scenarios import ON_HANDBACK, ON_HANDOVER, rules

D, H = OfficeVerdict.DOWN, OfficeVerdict.HEALTHY
HANDOVER, HANDBACK = RunKind.HANDOVER, RunKind.HANDBACK
TWO = rules(HANDOVER, HANDBACK, required=2, ttl_s=600.0, auto_s=300.0)


def a(state: State) -> OfficeState:
    return state.offices["a"]


def closed_waiting(policy: Policy = TWO) -> State:
    """a DOWN since 0, CLOSED at 30 with Baton's request approval-a-30000 waiting."""
    state, _ = drive(make_state(), policy, (0.0, OfficeObserved("a", D)), (30.0, Ticked("a")))
    assert a(state).approval is not None
    return state


def declared_waiting(policy: Policy = TWO, **declared: object) -> State:
    """alice declared a closed at 0 (c HEALTHY, so it may be chosen); approval-a-0 waits."""
    start = make_state()
    start = replace(start, offices={**start.offices, "c": replace(start.offices["c"], verdict=H)})
    event = ClosureDeclared("a", "alice", "sealed", **declared)  # type: ignore[arg-type]
    state, _ = drive(start, policy, (0.0, event))
    return state


# --- asking ---------------------------------------------------------------------------------


def test_a_detected_closure_under_a_rule_asks_for_approval_and_runs_nothing() -> None:
    """CLOSED, one AWAITING_APPROVAL alert with the id to approve, no run, the closure stays detected."""
    t = step(drive(make_state(), TWO, (0.0, OfficeObserved("a", D)))[0], Ticked("a"), TWO, 30.0)
    reason = (
        "office a DOWN for 30 s; CLOSED, would hand over to b: the handover needs 2 approval(s) from any "
        "operator within 600 s: `baton approve approval-a-30000`; it proceeds on its own in 300 s if the "
        "office is still DOWN"
    )
    assert reason == t.reason
    assert (RaiseAlert(Alert.AWAITING_APPROVAL, "a", reason),) == t.actions
    office = a(t.state)
    assert (Phase.CLOSED, "detected", "approval-a-30000") == (
        office.phase,
        office.closure.kind if office.closure else None,
        office.approval.id if office.approval else None,
    )


def test_an_operators_declaration_under_a_rule_changes_nothing_until_approved() -> None:
    """OPEN stays OPEN: the declaration is kept in the request and applied once approved."""
    state = declared_waiting(until=5000.0, to="c")
    office = a(state)
    assert (Phase.OPEN, None) == (office.phase, office.closure)
    assert office.approval is not None
    assert (HANDOVER, "alice", True, 5000.0, "c") == (
        office.approval.kind,
        office.approval.requester,
        office.approval.declared,
        office.approval.until,
        office.approval.to,
    )


def test_an_operators_handback_under_a_rule_waits() -> None:
    """HANDED_OVER stays: the handback waits for its approvals."""
    state, _ = drive(
        make_state(),
        ON_HANDBACK,
        (0.0, OfficeObserved("a", D)),
        (30.0, Ticked("a")),
        (40.0, RunFinished("a", "handover-a-30000", HANDOVER, ok=True)),
        (50.0, HandbackRequested("a", "alice", "reopened")),
    )
    office = a(state)
    assert Phase.HANDED_OVER == office.phase
    assert office.approval is not None
    assert (HANDBACK, "alice") == (office.approval.kind, office.approval.requester)


def test_automatic_handback_under_a_rule_is_only_proposed() -> None:
    """Baton never asks for its own handback: healthy long enough, it proposes one."""
    policy = replace(ON_HANDBACK, auto_handback=True, anti_flap_block_s=0.0, handback_hold_s=0.0)
    state, ts = drive(
        make_state(),
        policy,
        (0.0, OfficeObserved("a", D)),
        (30.0, Ticked("a")),
        (40.0, RunFinished("a", "handover-a-30000", HANDOVER, ok=True)),
        (50.0, OfficeObserved("a", H)),
    )
    assert not [x for x in ts[-1].actions if isinstance(x, StartRun)]
    assert Alert.HANDBACK_PROPOSED in a(state).alerts
    assert "a handback needs approvals" in ts[-1].reason


# --- approving ------------------------------------------------------------------------------

REFUSALS = [
    (
        "own request",
        declared_waiting(),
        [ApprovalGiven("a", "approval-a-0", "alice")],
        "approval approval-a-0 by alice refused: alice asked for it; approvals come from other people",
    ),
    (
        "twice",
        declared_waiting(),
        [ApprovalGiven("a", "approval-a-0", "bob"), ApprovalGiven("a", "approval-a-0", "bob")],
        "approval approval-a-0 by bob refused: bob already approved it",
    ),
    (
        "unknown id",
        declared_waiting(),
        [ApprovalGiven("a", "approval-a-99", "bob")],
        "approval approval-a-99 by bob refused: no approval approval-a-99 waits for office a",
    ),
    (
        "after expiry",
        declared_waiting(),
        [Ticked("a"), ApprovalGiven("a", "approval-a-0", "bob")],
        "approval approval-a-0 by bob refused: approval approval-a-0 expired at 1970-01-01T00:10:00Z",
    ),
    (
        "after the office recovered",
        closed_waiting(),
        [OfficeObserved("a", H), ApprovalGiven("a", "approval-a-30000", "bob")],
        "approval approval-a-30000 by bob refused: approval approval-a-30000 withdrawn: office a reopened",
    ),
    (
        "after a denial",
        closed_waiting(),
        [
            ApprovalDenied("a", "approval-a-30000", "carol", "not yet"),
            ApprovalGiven("a", "approval-a-30000", "bob"),
        ],
        "approval approval-a-30000 by bob refused: approval approval-a-30000 denied by carol (not yet)",
    ),
]


@pytest.mark.parametrize(
    ("state", "events", "reason"), [r[1:] for r in REFUSALS], ids=[r[0] for r in REFUSALS]
)
def test_approvals_that_cannot_count_are_refused_with_the_reason(
    state: State, events: list[Event], reason: str
) -> None:
    """Approving one's own request, twice, after expiry, after recovery or a denial: refused, nothing runs."""
    before_last = state
    t = None
    for i, event in enumerate(events):
        t = step(before_last, event, TWO, 100.0 + 600.0 * (isinstance(event, Ticked)) + i)
        if i < len(events) - 1:
            before_last = t.state
    assert t is not None
    assert (reason, (), before_last) == (t.reason, t.actions, t.state)


def test_the_last_approval_carries_out_the_declaration_as_asked() -> None:
    """Two people other than the requester: the declaration is applied (until, to) and the run starts."""
    state = declared_waiting(until=5000.0)
    state, ts = drive(
        state,
        TWO,
        (10.0, ApprovalGiven("a", "approval-a-0", "bob")),
        (20.0, ApprovalGiven("a", "approval-a-0", "carol")),
    )
    assert (
        "approval approval-a-0 by bob (1 of 2) for the handover of a asked by alice; 1 more needed before "
        "1970-01-01T00:10:00Z"
    ) == ts[0].reason
    assert (
        "approval approval-a-0 by carol (2 of 2, by bob, carol): office a declared closed by alice (sealed); "
        "handing over to b"
    ) == ts[1].reason
    [run] = [x for x in ts[1].actions if isinstance(x, StartRun)]
    assert ("alice", "b") == (run.who, run.alternate)
    closure = a(state).closure
    assert closure is not None
    assert ("declared", "alice", 5000.0, ("bob", "carol")) == (
        closure.kind,
        closure.who,
        closure.until,
        closure.approved_by,
    )
    assert (None, "approval-a-0 approved by bob, carol") == (a(state).approval, a(state).approval_ended)


def test_approving_a_detected_closure_keeps_it_detected() -> None:
    """The issue's bug: an approval used to relabel a detected closure as declared (no auto handback)."""
    state, ts = drive(
        closed_waiting(),
        TWO,
        (31.0, ApprovalGiven("a", "approval-a-30000", "bob")),
        (32.0, ApprovalGiven("a", "approval-a-30000", "carol")),
    )
    closure = a(state).closure
    assert closure is not None
    assert ("detected", ("bob", "carol")) == (closure.kind, closure.approved_by)
    assert [StartRun] == [type(x) for x in ts[-1].actions if isinstance(x, StartRun)]


def test_a_request_expires_with_an_alert_and_the_closure_is_not_asked_again() -> None:
    """At its TTL the request ends (alert); Baton does not ask again for the same closure."""
    state, ts = drive(
        closed_waiting(replace(TWO, approvals=(replace(TWO.approvals[0], auto_proceed_s=None),))),
        TWO,
        (630.0, Ticked("a")),
    )
    expired = ts[-1]
    assert (
        "office a: the handover asked by baton got 0 of 2 approval(s) within 600 s; approval "
        "approval-a-30000 expired and the request ended"
    ) == expired.reason
    assert [
        ClearAlert(Alert.AWAITING_APPROVAL, "a"),
        RaiseAlert(Alert.APPROVAL_EXPIRED, "a", expired.reason),
    ] == list(expired.actions)
    _, later = drive(state, TWO, (631.0, Ticked("a")))
    assert later[-1].reason.endswith(
        "not handing over: approval-a-30000 expired at 1970-01-01T00:10:30Z (`baton handover a` asks again)"
    )
    assert not [x for x in later[-1].actions if isinstance(x, StartRun)]


def test_auto_proceed_hands_over_a_detected_closure_still_down() -> None:
    """Nobody answered within auto_proceed_s and the office is still DOWN: the handover goes on."""
    state, ts = drive(closed_waiting(), TWO, (330.0, Ticked("a")))
    assert [StartRun] == [type(x) for x in ts[-1].actions if isinstance(x, StartRun)]
    closure = a(state).closure
    assert closure is not None
    assert ("detected", ("auto-proceed",)) == (closure.kind, closure.approved_by)


def test_auto_proceed_never_applies_to_an_operators_declaration() -> None:
    """A declared closure waits for people: at auto_proceed_s nothing happens, at the TTL it ends."""
    state, ts = drive(declared_waiting(), TWO, (300.0, Ticked("a")), (600.0, Ticked("a")))
    assert [(), True] == [ts[0].actions, any(isinstance(x, RaiseAlert) for x in ts[1].actions)]
    assert Phase.OPEN == a(state).phase


def test_a_denial_ends_the_request_and_the_requester_may_withdraw() -> None:
    """Denied by someone else, or withdrawn by its requester: the request ends, nothing runs."""
    _, denied = drive(
        declared_waiting(), TWO, (1.0, ApprovalDenied("a", "approval-a-0", "bob", "not sealed"))
    )
    _, withdrawn = drive(declared_waiting(), TWO, (1.0, ApprovalDenied("a", "approval-a-0", "alice", "typo")))
    assert (
        "the handover of a asked by alice denied by bob (not sealed): approval approval-a-0 ended; nothing "
        "runs; a stays OPEN"
    ) == denied[0].reason
    assert "withdrawn by its requester (typo)" in withdrawn[0].reason
    assert [(ClearAlert(Alert.AWAITING_APPROVAL, "a"),)] * 2 == [denied[0].actions, withdrawn[0].actions]


def test_one_request_at_a_time() -> None:
    """While a request waits, another declaration or handback of the office is refused with its id."""
    t = step(declared_waiting(), ClosureDeclared("a", "bob", "again"), TWO, 1.0)
    assert (
        "closure of a declared by bob (again) refused: a handover waits for approval approval-a-0 (asked by "
        "alice, 0 of 2): approve or deny it first"
    ) == t.reason


# --- grants ---------------------------------------------------------------------------------


def test_a_grant_ends_on_time_journaled_and_withdraws_what_was_asked_under_it() -> None:
    """At its `until` the grant is recorded ended (a decision) and the request asked under it ends."""
    policy = replace(TWO, grant_terms=(GrantTerm("group:reserve/operator/region:capital", 100.0),))
    state, _ = drive(
        make_state(),
        policy,
        (0.0, ClosureDeclared("a", "park", "sealed", grant="group:reserve/operator/region:capital")),
    )
    t = step(state, Ticked("c"), policy, 100.0)
    assert ("group:reserve/operator/region:capital",) == t.state.expired_grants
    assert t.reason.endswith(
        "grant(s) ended: group:reserve/operator/region:capital; "
        "request(s) withdrawn with them: approval-a-0 (a)"
    )
    assert (ClearAlert(Alert.AWAITING_APPROVAL, "a"),) == t.actions
    assert None is a(t.state).approval
    renewed = step(t.state, Ticked("c"), replace(policy, grant_terms=()), 101.0)
    assert () == renewed.state.expired_grants
    assert "no longer ended (extended or removed)" in renewed.reason


# --- abort ----------------------------------------------------------------------------------


def running() -> State:
    state, _ = drive(make_state(), Policy(), (0.0, ClosureDeclared("a", "alice", "sealed")))
    assert Phase.HANDING_OVER == a(state).phase
    return state


def test_abort_stops_the_run_at_the_next_safe_point() -> None:
    """AbortRun for the run in progress; once its (failed) result arrives, FAILED and the flag clears."""
    t = step(running(), AbortRequested("a", "handover-a-0", "bob", "wrong office"), Policy(), 5.0)
    assert (AbortRun("a", "handover-a-0", "aborted by bob: wrong office"),) == t.actions
    assert (
        "abort of run handover-a-0 of a requested by bob (wrong office): the handover run stops at the "
        "next safe point and rolls back"
    ) == t.reason
    again = step(t.state, AbortRequested("a", "handover-a-0", "carol", "me too"), Policy(), 6.0)
    assert (t.state, ()) == (again.state, again.actions)
    done = step(
        t.state, RunFinished("a", "handover-a-0", HANDOVER, ok=False, detail="run aborted"), Policy(), 9.0
    )
    assert (Phase.FAILED, None) == (a(done.state).phase, a(done.state).aborting)


@pytest.mark.parametrize("run_id", ["handover-a-1", "stale"])
def test_abort_of_a_run_not_in_progress_is_refused(run_id: str) -> None:
    t = step(running(), AbortRequested("a", run_id, "bob", "x"), Policy(), 5.0)
    assert ((), True) == (
        t.actions,
        "refused: it is not in progress (office HANDING_OVER, running: handover-a-0)" in t.reason,
    )


# --- resolve --------------------------------------------------------------------------------


def failed() -> State:
    state, _ = drive(
        make_state(),
        Policy(),
        (0.0, ClosureDeclared("a", "alice", "sealed")),
        (5.0, RunFinished("a", "handover-a-0", HANDOVER, ok=False)),
    )
    assert Phase.FAILED == a(state).phase
    return state


@pytest.mark.parametrize(
    ("phase", "alternate", "expected"),
    [
        (Phase.OPEN, None, (Phase.OPEN, None, None)),
        (Phase.CLOSED, None, (Phase.CLOSED, None, "declared")),
        (Phase.HANDED_OVER, None, (Phase.HANDED_OVER, "b", "declared")),
        (Phase.HANDED_OVER, "c", (Phase.HANDED_OVER, "c", "declared")),
    ],
)
def test_resolve_sets_the_phase_loudly(
    phase: Phase, alternate: str | None, expected: tuple[Phase, str | None, str | None]
) -> None:
    """An admin's resolve sets the phase, clears the office's work alerts and raises PHASE_RESOLVED."""
    t = step(failed(), PhaseResolved("a", phase, "root", "devices checked", alternate), Policy(), 10.0)
    office = a(t.state)
    assert expected == (office.phase, office.alternate, office.closure.kind if office.closure else None)
    raised = [x for x in t.actions if isinstance(x, RaiseAlert)]
    assert [Alert.PHASE_RESOLVED] == [x.alert for x in raised]
    assert ClearAlert(Alert.RUN_FAILED, "a") in t.actions
    assert t.reason.startswith(f"office a set from FAILED to {phase}")
    acked = step(t.state, Acked("a", "root"), Policy(), 11.0)
    assert Alert.PHASE_RESOLVED not in a(acked.state).alerts


def test_an_office_resolved_closed_is_not_handed_over_until_asked() -> None:
    """CLOSED by hand means held: ticks hand nothing over; an operator's handover does."""
    state = step(failed(), PhaseResolved("a", Phase.CLOSED, "root", "devices checked"), Policy(), 10.0).state
    ticked = step(state, Ticked("a"), Policy(), 20.0)
    assert not [x for x in ticked.actions if isinstance(x, StartRun)]
    assert "set CLOSED by root's resolve" in ticked.reason
    asked = step(ticked.state, ClosureDeclared("a", "bob", "hand it over"), Policy(), 21.0)
    assert [StartRun] == [type(x) for x in asked.actions if isinstance(x, StartRun)]


@pytest.mark.parametrize(
    ("state", "event", "why"),
    [
        (
            running(),
            PhaseResolved("a", Phase.OPEN, "root", "x"),
            "run handover-a-0 is in progress: abort it first",
        ),
        (make_state(), PhaseResolved("a", Phase.OPEN, "root", "x"), "it is OPEN already"),
        (
            make_state(),
            PhaseResolved("a", Phase.SUSPECT, "root", "x"),
            "only OPEN, CLOSED, HANDED_OVER can be set",
        ),
        (
            make_state(),
            PhaseResolved("a", Phase.HANDED_OVER, "root", "x"),
            "say which office operates it now",
        ),
        (make_state(), PhaseResolved("a", Phase.HANDED_OVER, "root", "x", "zz"), "zz is not another office"),
    ],
)
def test_resolves_that_cannot_apply_are_refused(state: State, event: PhaseResolved, why: str) -> None:
    t = step(state, event, Policy(), 10.0)
    assert (state, ()) == (t.state, t.actions)
    assert why in t.reason


# --- properties -----------------------------------------------------------------------------


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    approvers=st.lists(st.sampled_from(["alice", "bob", "carol", "dave"]), max_size=6),
    required=st.integers(1, 3),
    elapsed=st.lists(st.floats(0, 200), max_size=6),
)
def test_a_run_starts_exactly_when_enough_distinct_others_approved_in_time(
    approvers: list[str], required: int, elapsed: list[float]
) -> None:
    """Any approvals: the run starts at the first moment `required` distinct people other than
    alice approved before the TTL, and never otherwise."""
    policy = rules(HANDOVER, required=required, ttl_s=500.0)
    state = step(make_state(), ClosureDeclared("a", "alice", "sealed"), policy, 0.0).state
    now, counted, started = 0.0, set[str](), False
    for who, step_s in zip(approvers, elapsed + [0.0] * len(approvers), strict=False):
        now += step_s
        t = step(state, ApprovalGiven("a", "approval-a-0", who), policy, now)
        if not started and who != "alice" and now < 500.0:
            counted.add(who)
        runs = [x for x in t.actions if isinstance(x, StartRun)]
        should_start = not started and len(counted) >= required and who in counted and now < 500.0
        assert should_start == bool(runs), t.reason
        started = started or bool(runs)
        state = t.state


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(events=st.lists(st.sampled_from(["tick", "approve", "down", "up"]), max_size=12), data=st.data())
def test_an_approval_never_changes_the_kind_of_a_detected_closure(
    events: list[str], data: st.DataObject
) -> None:
    """Whatever happens to a detected closure's request, its closure never becomes declared."""
    state = closed_waiting(ON_HANDOVER)
    now = 30.0
    for what in events:
        now += data.draw(st.sampled_from([1.0, 100.0, 700.0]))
        office = a(state)
        event: Event
        if what == "tick":
            event = Ticked("a")
        elif what == "approve":
            rid = office.approval.id if office.approval else "approval-none"
            event = ApprovalGiven("a", rid, data.draw(st.sampled_from(["bob", "carol"])))
        else:
            event = OfficeObserved("a", D if what == "down" else H)
        state = step(state, event, ON_HANDOVER, now).state
        closure = a(state).closure
        assert closure is None or closure.kind == "detected"


def test_handover_rule_does_not_apply_to_re_homes_and_catch_ups() -> None:
    """A re-home (the alternate closed) follows an approved handover: no new request."""
    policy = ON_HANDOVER
    state = make_state()
    state = replace(
        state,
        offices={
            **state.offices,
            "a": replace(
                state.offices["a"],
                phase=Phase.HANDED_OVER,
                alternate="b",
                run_id="handover-a-0",
                run_kind=HANDOVER,
                closure=Closure("detected", 0.0, "DOWN", approved_by=("bob",)),
                verdict=D,
            ),
            "b": replace(state.offices["b"], phase=Phase.CLOSED, verdict=D),
            "c": replace(state.offices["c"], verdict=H),
        },
    )
    t = step(state, Ticked("a"), policy, 50.0)
    [run] = [x for x in t.actions if isinstance(x, StartRun)]
    assert ("c", "b") == (run.alternate, run.previous)
