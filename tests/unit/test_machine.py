"""core.machine: the office state machine, driven by events with time as an argument."""

from __future__ import annotations

from dataclasses import replace

import pytest

from baton.core.actions import AbortRun, Alert, ClearAlert, RaiseAlert, StartRun
from baton.core.events import (
    AbortRequested,
    Acked,
    ApprovalDenied,
    ApprovalGiven,
    ClosureDeclared,
    ConfigLoaded,
    Event,
    HandbackRequested,
    LeaseChanged,
    OfficeObserved,
    PauseSet,
    PhaseResolved,
    RoundObserved,
    RunFinished,
    ShadowSet,
    Stopping,
    Ticked,
)
from baton.core.machine import TRANSITIONS, Transition, step
from baton.core.model import Closure, OfficeState, OfficeVerdict, Phase, Policy, RunKind, State
from tests.unit.core_builders import CHAINS, drive, make_state, with_office
from tests.unit.operator_scenarios import OPERATOR_SCENARIOS

P = Policy()  # hold_down_s 30, anti_flap_block_s 3600, handback_hold_s 600, storm > 2 offices / 25 %
D, H = OfficeVerdict.DOWN, OfficeVerdict.HEALTHY
HANDOVER, HANDBACK = RunKind.HANDOVER, RunKind.HANDBACK


def obs(office: str, verdict: OfficeVerdict, detail: str = "") -> OfficeObserved:
    return OfficeObserved(office, verdict, detail)


def office(state: State, name: str = "a") -> OfficeState:
    return state.offices[name]


def suspect(state: State, name: str = "a", **changes: object) -> State:
    """`name` DOWN and SUSPECT since t=0."""
    return with_office(state, name, phase=Phase.SUSPECT, since=0.0, verdict=D, verdict_since=0.0, **changes)


def handed_over(state: State, name: str = "a", **changes: object) -> State:
    """`name` handed over to b by run handover-a-0, HEALTHY since t=0, anti-flap block until 3600."""
    fields: dict[str, object] = {
        "phase": Phase.HANDED_OVER,
        "alternate": "b",
        "run_id": "handover-a-0",
        "run_kind": HANDOVER,
        "closure": Closure("detected", 0.0, "DOWN for 30 s"),
        "verdict": H,
        "verdict_since": 0.0,
        "blocked_until": 3600.0,
    }
    return with_office(state, name, **{**fields, **changes})


def failed(state: State, name: str = "a") -> State:
    """`name` FAILED after handover run handover-a-5000 to b, RUN_FAILED up."""
    return with_office(
        state,
        name,
        phase=Phase.FAILED,
        alternate="b",
        run_id="handover-a-5000",
        run_kind=HANDOVER,
        closure=Closure("detected", 0.0, "DOWN for 30 s"),
        verdict=D,
        alerts=frozenset({Alert.RUN_FAILED}),
    )


def start(
    kind: RunKind, run_id: str, alternate: str, reason: str, name: str = "a", who: str = "baton"
) -> StartRun:
    return StartRun(name, kind, run_id, alternate, reason, who=who)


def healthy(state: State, *names: str) -> State:
    """`names` judged HEALTHY (an operator's --to needs that)."""
    for name in names:
        state = with_office(state, name, verdict=OfficeVerdict.HEALTHY)
    return state


# --- verdicts, hold-down, recovery --------------------------------------------------------


def test_down_held_for_hold_down_hands_over_to_the_first_alternate() -> None:
    """DOWN → SUSPECT; still DOWN after hold_down_s → CLOSED and the handover starts in the same step."""
    state, ts = drive(
        make_state(),
        P,
        (0.0, obs("a", D, "6/8 critical devices down")),
        (20.0, Ticked("a")),
        (30.0, Ticked("a")),
    )
    reason = "office a DOWN for 30 s (6/8 critical devices down); handing over to b"
    assert [
        ((), "office a DOWN (6/8 critical devices down); SUSPECT, closing if DOWN holds for 30 s"),
        ((), "office a DOWN for 20 s (6/8 critical devices down); SUSPECT, closing at 30 s of DOWN"),
        ((start(HANDOVER, "handover-a-30000", "b", reason),), reason),
    ] == [(t.actions, t.reason) for t in ts]
    a = office(state)
    assert (
        Phase.HANDING_OVER,
        "b",
        "handover-a-30000",
        HANDOVER,
        Closure("detected", 30.0, "DOWN for 30 s"),
    ) == (
        a.phase,
        a.alternate,
        a.run_id,
        a.run_kind,
        a.closure,
    )


def test_hold_down_is_checked_on_observations() -> None:
    """An observation after hold_down_s closes the office just like a tick."""
    state, _ = drive(make_state(), P, (0.0, obs("a", D)), (30.0, obs("a", D)))
    assert Phase.HANDING_OVER == office(state).phase


def test_recovery_before_hold_down_reopens() -> None:
    """A SUSPECT office whose verdict recovers goes back to OPEN and says after how long."""
    state, ts = drive(make_state(), P, (0.0, obs("a", D)), (10.0, obs("a", H)))
    assert (Phase.OPEN, (), "office a recovered after 10 s (HEALTHY); OPEN") == (
        office(state).phase,
        ts[-1].actions,
        ts[-1].reason,
    )


@pytest.mark.parametrize(
    "verdict", [OfficeVerdict.UNREACHABLE, OfficeVerdict.DEGRADED, OfficeVerdict.UNKNOWN]
)
def test_only_down_starts_a_closure(verdict: OfficeVerdict) -> None:
    """UNREACHABLE, DEGRADED and UNKNOWN never move an office out of OPEN."""
    state, ts = drive(make_state(), P, *((float(t), obs("a", verdict)) for t in range(0, 300, 10)))
    assert (Phase.OPEN, []) == (office(state).phase, [a for t in ts for a in t.actions])


# --- guards on a detected closure ---------------------------------------------------------


@pytest.mark.parametrize(
    ("state", "policy", "alert", "reason"),
    [
        (
            make_state(leader=False),
            P,
            Alert.AUTOMATION_BLOCKED,
            "CLOSED, not handing over: no lease on this vantage",
        ),
        (make_state(paused=True), P, Alert.AUTOMATION_BLOCKED, "CLOSED, not handing over: automation paused"),
        (
            with_office(make_state(), "a", blocked_until=1000.0),
            P,
            Alert.AUTOMATION_BLOCKED,
            "CLOSED, not handing over: anti-flap block for another 970 s",
        ),
        (
            make_state(),
            Policy(require_approval=True),
            Alert.AWAITING_APPROVAL,
            "CLOSED, awaiting an operator's handover (policy requires approval)",
        ),
        (make_state(shadow=True), P, Alert.WOULD_HAND_OVER, "CLOSED, shadow mode: would hand over to b"),
    ],
    ids=["no-lease", "paused", "anti-flap", "approval", "shadow"],
)
def test_a_blocked_detected_closure_stays_closed_and_alerts(
    state: State, policy: Policy, alert: Alert, reason: str
) -> None:
    """A guard that fails keeps the office CLOSED with one alert naming the blocker, and no run."""
    t = step(suspect(state), Ticked("a"), policy, 30.0)
    expected_reason = f"office a DOWN for 30 s; {reason}"
    assert (Phase.CLOSED, (RaiseAlert(alert, "a", expected_reason),), expected_reason) == (
        office(t.state).phase,
        t.actions,
        t.reason,
    )


@pytest.mark.parametrize(
    ("state", "suppressed_by"),
    [
        (suspect(make_state(), flapping=True), "office is flapping"),
        (
            suspect(make_state(storm=True, recent_down=((10.0, "c"), (10.0, "d"), (10.0, "e")))),
            "storm guard engaged (Baton's own network is suspect)",
        ),
    ],
    ids=["flapping", "storm"],
)
def test_flapping_and_storm_hold_an_office_in_suspect(state: State, suppressed_by: str) -> None:
    """Held DOWN long enough, but flapping or in a storm: no closure, and the reason says why."""
    t = step(state, Ticked("a"), P, 30.0)
    assert (Phase.SUSPECT, (), f"office a DOWN for 30 s; closure suppressed: {suppressed_by}") == (
        office(t.state).phase,
        t.actions,
        t.reason,
    )


@pytest.mark.parametrize(
    ("changes", "flags", "blocker"),
    [
        ({"flapping": True}, {}, "office is flapping"),
        ({}, {"storm": True, "recent_down": ((0.0, "c"), (0.0, "e"), (0.0, "g"))}, "storm guard engaged"),
    ],
    ids=["flapping", "storm"],
)
def test_a_closed_office_that_starts_flapping_or_meets_a_storm_is_not_handed_over(
    changes: dict[str, object], flags: dict[str, object], blocker: str
) -> None:
    """Guards are checked again on retry: flapping or a storm after closing still blocks the handover."""
    closure = Closure("detected", 0.0, "DOWN for 30 s")
    state = with_office(make_state(**flags), "a", phase=Phase.CLOSED, verdict=D, closure=closure, **changes)
    t = step(state, Ticked("a"), P, 40.0)
    reason = f"office a CLOSED (DOWN); CLOSED, not handing over: {blocker}"
    assert (Phase.CLOSED, (RaiseAlert(Alert.AUTOMATION_BLOCKED, "a", reason),)) == (
        office(t.state).phase,
        t.actions,
    )


def test_a_blocked_handover_alerts_once_and_retries_when_guards_clear() -> None:
    """Paused: one alert, silence on later ticks; resumed: the next tick clears it and starts the run."""
    _, ts = drive(
        suspect(make_state(paused=True)),
        P,
        (30.0, Ticked("a")),
        (40.0, Ticked("a")),
        (45.0, PauseSet(False, "bob")),
        (50.0, Ticked("a")),
    )
    blocked = "office a DOWN for 30 s; CLOSED, not handing over: automation paused"
    retried = "office a CLOSED (DOWN); handing over to b"
    assert [
        (RaiseAlert(Alert.AUTOMATION_BLOCKED, "a", blocked),),
        (),
        (),
        (ClearAlert(Alert.AUTOMATION_BLOCKED, "a"), start(HANDOVER, "handover-a-50000", "b", retried)),
    ] == [t.actions for t in ts]
    assert "automation resumed by bob; blocked handovers retry on the next tick" == ts[2].reason


def test_the_blocker_alert_follows_the_blocker() -> None:
    """When what blocks a handover changes, the old alert is cleared and the new one raised."""
    state = suspect(with_office(make_state(paused=True), "b", phase=Phase.HANDED_OVER))
    state = with_office(state, "c", verdict=D)
    state, ts = drive(state, P, (30.0, Ticked("a")), (31.0, PauseSet(False, "bob")), (32.0, Ticked("a")))
    no_alternate = "office a CLOSED (DOWN); CLOSED, no alternate available: b HANDED_OVER, c DOWN"
    assert (
        ClearAlert(Alert.AUTOMATION_BLOCKED, "a"),
        RaiseAlert(Alert.NO_ALTERNATE, "a", no_alternate),
    ) == ts[-1].actions
    assert frozenset({Alert.NO_ALTERNATE}) == office(state).alerts


@pytest.mark.parametrize(
    ("chains", "why"),
    [
        ({"a": ("a", "zz"), "b": ()}, "a not a valid alternate, zz not a valid alternate"),
        ({"a": (), "b": ()}, "no alternates configured"),
        ({"a": ("b",), "b": ()}, "b UNREACHABLE"),
    ],
    ids=["invalid-names", "none-configured", "alternate-unreachable"],
)
def test_no_alternate_is_an_alert_not_an_exception(chains: dict[str, tuple[str, ...]], why: str) -> None:
    """Without an eligible alternate the office stays CLOSED with a NO_ALTERNATE alert saying why."""
    state = with_office(suspect(make_state(chains)), "b", verdict=OfficeVerdict.UNREACHABLE)
    t = step(state, Ticked("a"), P, 30.0)
    reason = f"office a DOWN for 30 s; CLOSED, no alternate available: {why}"
    assert (Phase.CLOSED, (RaiseAlert(Alert.NO_ALTERNATE, "a", reason),)) == (
        office(t.state).phase,
        t.actions,
    )


def test_a_detected_closure_reopens_when_the_office_recovers_before_a_run() -> None:
    """CLOSED by detection but never handed over: a recovered verdict reopens it and clears its alert."""
    state, ts = drive(suspect(make_state(paused=True)), P, (30.0, Ticked("a")), (40.0, obs("a", H)))
    a = office(state)
    assert (Phase.OPEN, None, frozenset(), (ClearAlert(Alert.AUTOMATION_BLOCKED, "a"),)) == (
        a.phase,
        a.closure,
        a.alerts,
        ts[-1].actions,
    )
    assert "office a recovered (HEALTHY) before a handover started; OPEN" == ts[-1].reason


# --- flapping and the storm guard ---------------------------------------------------------


def test_flapping_is_flagged_with_hysteresis() -> None:
    """≥ 50 % state change over ≥ 5 verdicts sets the flag; it clears only below 25 %."""
    verdicts = [H, D, H, D] + [H] * 14
    _, ts = drive(make_state(), P, *((float(i), obs("a", v)) for i, v in enumerate(verdicts)))
    flap_actions = [
        (i, a) for i, t in enumerate(ts) for a in t.actions if isinstance(a, RaiseAlert | ClearAlert)
    ]
    raised = "office a flapping: 100% state change over the last 5 verdicts; automatic closure suppressed"
    # 5th verdict: 4 changes / 4; the 18th: 4 changes / 17 = 23.5 % < 25 %
    assert [
        (4, RaiseAlert(Alert.FLAPPING, "a", raised)),
        (17, ClearAlert(Alert.FLAPPING, "a")),
    ] == flap_actions
    assert [False] * 4 + [True] * 13 + [False] == [t.state.offices["a"].flapping for t in ts]
    assert ts[17].reason.endswith("; office a no longer flapping (24% state change)")


def test_history_is_bounded_by_flap_samples() -> None:
    """Only the last flap_samples verdicts are kept."""
    state, _ = drive(make_state(), Policy(flap_samples=3), *((float(i), obs("a", H)) for i in range(10)))
    assert (H, H, H) == office(state).history


def test_a_storm_freezes_automatic_closures_but_not_declared_ones() -> None:
    """Three offices DOWN within the window engage the guard; SUSPECT holds; a declaration still runs."""
    state, ts = drive(
        make_state(),
        P,
        (0.0, obs("a", D)),
        (0.0, obs("c", D)),
        (0.0, obs("e", D)),
        (30.0, Ticked("a")),
        (40.0, ClosureDeclared("g", "alice", "fire")),
        (100.0, Ticked("a")),
        (200.0, obs("a", H)),
    )
    engaged = "storm guard engaged: 3 of 8 offices DOWN within 120 s (a, c, e); automation frozen"
    assert (RaiseAlert(Alert.STORM_GUARD, None, engaged),) == ts[2].actions
    assert f"office e DOWN; SUSPECT, closing if DOWN holds for 30 s; {engaged}" == ts[2].reason
    assert (Phase.SUSPECT, ()) == (ts[3].state.offices["a"].phase, ts[3].actions)
    assert [StartRun] == [type(a) for a in ts[4].actions]
    assert (True, ()) == (ts[5].state.storm, ts[5].actions)  # window still holds the DOWN offices
    assert (False, (ClearAlert(Alert.STORM_GUARD, None),)) == (state.storm, ts[6].actions)
    assert ts[6].reason.endswith("; storm guard cleared: 2 of 8 offices DOWN, none newly within 120 s")


def test_a_storm_by_ratio_needs_two_offices() -> None:
    """With four offices, two DOWN together (50 % > 25 %) is a storm; one alone never is."""
    chains = {"a": ("b",), "b": ("a",), "c": ("d",), "d": ("c",)}
    _, ts = drive(make_state(chains), P, (0.0, obs("a", D)), (1.0, obs("c", D)))
    assert [False, True] == [t.state.storm for t in ts]


def test_a_storm_stays_while_too_many_offices_are_down() -> None:
    """After the window, the guard holds while the offices DOWN right now exceed the limits."""
    state, ts = drive(
        make_state(),
        P,
        (0.0, obs("a", D)),
        (0.0, obs("c", D)),
        (0.0, obs("e", D)),
        (500.0, Ticked("a")),
        (510.0, obs("e", H)),
    )
    assert [True, False] == [ts[3].state.storm, state.storm]


# --- declared closures --------------------------------------------------------------------


def test_a_declared_closure_bypasses_automation_guards() -> None:
    """Pause, storm, anti-flap, flapping and approval do not hold back an operator's handover."""
    state = make_state(paused=True, storm=True, recent_down=((0.0, "c"), (0.0, "e"), (0.0, "g")))
    state = with_office(state, "a", blocked_until=1e9, flapping=True)
    t = step(state, ClosureDeclared("a", "alice", "fire", until=500.0), Policy(require_approval=True), 5.0)
    reason = "office a declared closed by alice (fire); handing over to b"
    a = office(t.state)
    assert ((start(HANDOVER, "handover-a-5000", "b", reason, who="alice"),), reason) == (t.actions, t.reason)
    assert (Phase.HANDING_OVER, Closure("declared", 5.0, "fire", "alice", 500.0)) == (a.phase, a.closure)


def test_a_declared_closure_without_the_lease_is_recorded_and_honoured_later() -> None:
    """No lease: CLOSED and blocked; once the lease is held a tick hands over to the operator's choice."""
    _, ts = drive(
        healthy(make_state(leader=False), "c"),
        P,
        (5.0, ClosureDeclared("a", "alice", "fire", to="c")),
        (6.0, LeaseChanged(held=True)),
        (7.0, Ticked("a")),
    )
    blocked = "office a declared closed by alice (fire); CLOSED, not handing over: no lease on this vantage"
    retried = "office a declared closed by alice (fire); handing over to c"
    assert [
        (RaiseAlert(Alert.AUTOMATION_BLOCKED, "a", blocked),),
        (),
        (
            ClearAlert(Alert.AUTOMATION_BLOCKED, "a"),
            start(HANDOVER, "handover-a-7000", "c", retried, who="alice"),
        ),
    ] == [t.actions for t in ts]
    assert ["lease held; blocked handovers retry on the next tick"] == [ts[1].reason]


@pytest.mark.parametrize(
    ("event", "asked"),
    [
        (PauseSet(True, "alice"), "pause by alice"),
        (PauseSet(False, "alice"), "resume by alice"),
        (ShadowSet(True, "alice"), "shadow mode on by alice"),
        (Acked("a", "alice"), "ack of a by alice"),
        (ApprovalGiven("a", "approval-a-1", "alice"), "approval approval-a-1 by alice"),
        (ApprovalDenied("a", "approval-a-1", "alice", "no"), "denial of approval-a-1 by alice"),
        (AbortRequested("a", "r1", "alice", "stop"), "abort of run r1 by alice"),
        (PhaseResolved("a", Phase.OPEN, "alice", "checked"), "resolve of a to OPEN by alice"),
    ],
)
def test_a_follower_refuses_every_operator_command_while_another_vantage_leads(
    event: Event, asked: str
) -> None:
    """Decided on a follower, a command would be undone by the leader's next report: refused,
    naming the leader, nothing changed (the API forwards commands to the leader instead)."""
    state = make_state(leader=False, leader_elsewhere="v2")
    t = step(state, event, P, 5.0)
    assert (
        state,
        (),
        f"{asked} refused: this vantage does not hold the lease (vantage v2 leads: ask it, "
        "`baton status` there)",
    ) == (t.state, t.actions, t.reason)
    # With no leader known, nothing changes for them (a declaration is still recorded, as before).
    assert (
        "refused: this vantage does not hold the lease"
        not in step(make_state(leader=False), event, P, 5.0).reason
    )


def test_shadow_mode_never_runs_a_declared_closure() -> None:
    """In shadow mode a declaration closes the office and says what Baton would do, nothing more."""
    t = step(make_state(shadow=True), ClosureDeclared("a", "alice", "fire"), P, 5.0)
    reason = "office a declared closed by alice (fire); CLOSED, shadow mode: would hand over to b"
    assert (Phase.CLOSED, (RaiseAlert(Alert.WOULD_HAND_OVER, "a", reason),)) == (
        office(t.state).phase,
        t.actions,
    )


RUNNING = with_office(
    make_state(), "a", phase=Phase.HANDING_OVER, run_id="r1", run_kind=HANDOVER, alternate="b"
)


@pytest.mark.parametrize(
    ("state", "event", "why"),
    [
        (
            make_state(),
            ClosureDeclared("a", "alice", "fire", to="a"),
            "an office cannot be its own alternate",
        ),
        (make_state(), ClosureDeclared("a", "alice", "fire", to="zz"), "zz is not a known office"),
        (
            with_office(make_state(), "c", phase=Phase.HANDED_OVER),
            ClosureDeclared("a", "alice", "fire", to="c"),
            "c is HANDED_OVER, not OPEN",
        ),
        (make_state(), ClosureDeclared("a", "alice", "fire", until=4.0), "until 4 is not in the future"),
        (RUNNING, ClosureDeclared("a", "alice", "fire"), "handover run r1 in progress"),
        (
            healthy(handed_over(make_state()), "c"),
            ClosureDeclared("a", "alice", "fire", to="c"),
            "already handed over to b; hand back first to move to c",
        ),
        (
            with_office(make_state(), "c", verdict=OfficeVerdict.DEGRADED, verdict_detail="1/2 down"),
            ClosureDeclared("a", "alice", "fire", to="c"),
            "c is DEGRADED (1/2 down), not HEALTHY: it cannot take over",
        ),
    ],
    ids=[
        "to-itself",
        "to-unknown",
        "to-not-open",
        "until-past",
        "run-in-progress",
        "move-handed-over",
        "to-not-healthy",
    ],
)
def test_a_declaration_that_cannot_apply_is_refused(state: State, event: ClosureDeclared, why: str) -> None:
    """A refused declaration leaves the state unchanged and says why."""
    t = step(state, event, P, 5.0)
    assert Transition(state, (), f"closure of a declared by alice (fire) refused: {why}") == t


def test_a_declaration_on_a_handed_over_office_relabels_the_closure() -> None:
    """Declaring a handed-over office closed records who and until, which stops automatic handback."""
    t = step(
        handed_over(make_state()), ClosureDeclared("a", "alice", "fire"), Policy(auto_handback=True), 5000.0
    )
    a = office(t.state)
    assert (Phase.HANDED_OVER, Closure("declared", 5000.0, "fire", "alice"), ()) == (
        a.phase,
        a.closure,
        t.actions,
    )
    later = step(t.state, Ticked("a"), Policy(auto_handback=True), 9000.0)
    assert ((), "office a HANDED_OVER to b; declared closed by alice until an operator hands it back") == (
        later.actions,
        later.reason,
    )


def test_the_operators_alternate_is_rechecked_on_retry() -> None:
    """An operator's choice that is no longer OPEN when the retry comes is not used; NO_ALTERNATE says so."""
    state, _ = drive(
        healthy(make_state(leader=False), "c"), P, (5.0, ClosureDeclared("a", "alice", "fire", to="c"))
    )
    state = with_office(replace(state, leader=True), "c", phase=Phase.SUSPECT)
    t = step(state, Ticked("a"), P, 6.0)
    reason = (
        "office a declared closed by alice (fire); CLOSED, "
        "no alternate available: operator's choice c is SUSPECT"
    )
    assert (
        ClearAlert(Alert.AUTOMATION_BLOCKED, "a"),
        RaiseAlert(Alert.NO_ALTERNATE, "a", reason),
    ) == t.actions


# --- runs ---------------------------------------------------------------------------------


def test_a_successful_handover_blocks_automation_for_anti_flap() -> None:
    """RunFinished ok for the run in progress: HANDED_OVER, anti-flap block from now."""
    t = step(RUNNING, RunFinished("a", "r1", HANDOVER, ok=True), P, 100.0)
    a = office(t.state)
    assert (Phase.HANDED_OVER, 3700.0, "b") == (a.phase, a.blocked_until, a.alternate)
    assert "handover run r1 of a to b succeeded; HANDED_OVER, automation on it blocked for 3600 s" == t.reason


def test_a_failed_run_needs_an_operator() -> None:
    """RunFinished not ok: FAILED with a RUN_FAILED alert carrying the detail."""
    t = step(RUNNING, RunFinished("a", "r1", HANDOVER, ok=False, detail="verify failed on agg-1"), P, 100.0)
    reason = (
        "handover run r1 of a failed (verify failed on agg-1) and was rolled back; FAILED, needs an operator"
    )
    assert (Phase.FAILED, (RaiseAlert(Alert.RUN_FAILED, "a", reason),), reason) == (
        office(t.state).phase,
        t.actions,
        t.reason,
    )


@pytest.mark.parametrize(
    "event",
    [RunFinished("a", "r0", HANDOVER, ok=True), RunFinished("a", "r1", HANDBACK, ok=True)],
    ids=["other-run", "other-kind"],
)
def test_a_result_for_another_run_is_ignored(event: RunFinished) -> None:
    """A stale or mismatched run result changes nothing."""
    t = step(RUNNING, event, P, 100.0)
    assert (RUNNING, ()) == (t.state, t.actions)
    assert t.reason.endswith("ignored: not the run in progress (HANDING_OVER, run r1)")


def test_a_successful_handback_reopens_the_office() -> None:
    """Handback ok: OPEN, closure and alternate cleared, anti-flap block from now."""
    state = handed_over(make_state(), phase=Phase.HANDING_BACK, run_id="r2", run_kind=HANDBACK)
    t = step(state, RunFinished("a", "r2", HANDBACK, ok=True), P, 5000.0)
    a = office(t.state)
    assert (Phase.OPEN, None, None, 8600.0) == (a.phase, a.closure, a.alternate, a.blocked_until)
    assert "handback run r2 of a from b succeeded; OPEN, automation on it blocked for 3600 s" == t.reason


def test_a_retry_in_the_same_millisecond_gets_a_new_run_id() -> None:
    """Two runs of one office never share an id, even at the same `now`."""
    t = step(failed(make_state()), ClosureDeclared("a", "alice", "retry"), P, 5.0)
    assert "handover-a-5000.1" == office(t.state).run_id


def test_losing_the_lease_aborts_every_run_in_progress() -> None:
    """Lease lost: AbortRun per running office; phases stay until the results arrive."""
    state = with_office(RUNNING, "c", phase=Phase.HANDING_BACK, run_id="r9", run_kind=HANDBACK, alternate="d")
    t = step(state, LeaseChanged(held=False), P, 10.0)
    assert (AbortRun("a", "r1", "lease lost"), AbortRun("c", "r9", "lease lost")) == t.actions
    assert (False, Phase.HANDING_OVER) == (t.state.leader, office(t.state).phase)
    assert "lease lost; aborting run(s) r1, r9 (phases stay until their results arrive)" == t.reason
    idle = step(make_state(), LeaseChanged(held=False), P, 10.0)
    assert ((), "lease lost; no run in progress") == (idle.actions, idle.reason)


# --- handback -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("state", "phase", "run", "reason_tail"),
    [
        (handed_over(make_state()), Phase.HANDING_BACK, True, "handing back from b"),
        (failed(make_state()), Phase.HANDING_BACK, True, "handing back from b"),
        (
            with_office(make_state(), "a", phase=Phase.CLOSED, closure=Closure("detected", 0.0, "x")),
            Phase.OPEN,
            False,
            "nothing was handed over, OPEN without a run",
        ),
        (make_state(), Phase.OPEN, False, "refused: OPEN, nothing is handed over"),
        (RUNNING, Phase.HANDING_OVER, False, "refused: handover run r1 in progress"),
        (
            handed_over(make_state(shadow=True)),
            Phase.HANDED_OVER,
            False,
            "refused: shadow mode never runs a handback",
        ),
        (
            handed_over(make_state(leader=False)),
            Phase.HANDED_OVER,
            False,
            "refused: this vantage does not hold the lease",
        ),
        (handed_over(make_state(paused=True, storm=True)), Phase.HANDING_BACK, True, "handing back from b"),
    ],
    ids=[
        "handed-over",
        "failed",
        "closed-untouched",
        "open",
        "running",
        "shadow",
        "no-lease",
        "paused-storm",
    ],
)
def test_an_operator_handback(state: State, phase: Phase, run: bool, reason_tail: str) -> None:
    """An operator handback bypasses anti-flap, pause and storm, never the lease or shadow mode."""
    t = step(state, HandbackRequested("a", "bob", "building reopened"), P, 100.0)
    reason = "handback of a requested by bob (building reopened)" + (
        f" {reason_tail}" if reason_tail.startswith("refused") else f"; {reason_tail}"
    )
    starts = [a for a in t.actions if isinstance(a, StartRun)]
    assert (phase, run, reason) == (office(t.state).phase, bool(starts), t.reason)


def test_a_handback_is_proposed_once_and_withdrawn_when_health_drops() -> None:
    """Without auto_handback: proposed once after handback_hold_s HEALTHY, withdrawn when not HEALTHY."""
    _, ts = drive(
        handed_over(make_state()),
        P,
        (500.0, Ticked("a")),
        (600.0, Ticked("a")),
        (700.0, Ticked("a")),
        (800.0, obs("a", OfficeVerdict.DEGRADED, "1/8 devices down or unreachable: acc-3")),
    )
    proposed = "office a HEALTHY for 600 s; handback proposed (policy: operator hands back)"
    assert [
        (),
        (RaiseAlert(Alert.HANDBACK_PROPOSED, "a", proposed),),
        (),
        (ClearAlert(Alert.HANDBACK_PROPOSED, "a"),),
    ] == [t.actions for t in ts]
    assert (
        "office a HANDED_OVER to b; DEGRADED (1/8 devices down or unreachable: acc-3), "
        "handback proposed to an operator once HEALTHY for 600 s" == ts[-1].reason
    )
    _, ts = drive(handed_over(make_state()), Policy(auto_handback=True), (100.0, Ticked("a")))
    assert ts[-1].reason.endswith(", handback once HEALTHY for 600 s"), ts[-1].reason


def test_automatic_handback_waits_for_the_anti_flap_block() -> None:
    """With auto_handback: proposed while the anti-flap block holds, run once it has expired."""
    policy = Policy(auto_handback=True)
    _, ts = drive(handed_over(make_state()), policy, (1000.0, Ticked("a")), (3600.0, Ticked("a")))
    proposed = (
        "office a HEALTHY for 1000 s; handback proposed, "
        "automatic handback blocked: anti-flap block for another 2600 s"
    )
    handback = "office a HEALTHY for 3600 s; handing back from b"
    assert [
        (RaiseAlert(Alert.HANDBACK_PROPOSED, "a", proposed),),
        (ClearAlert(Alert.HANDBACK_PROPOSED, "a"), start(HANDBACK, "handback-a-3600000", "b", handback)),
    ] == [t.actions for t in ts]


@pytest.mark.parametrize(
    ("flags", "blocker"),
    [({"shadow": True}, "shadow mode"), ({"leader": False}, "this vantage does not hold the lease")],
    ids=["shadow", "no-lease"],
)
def test_automatic_handback_is_never_run_in_shadow_mode_or_without_the_lease(
    flags: dict[str, bool], blocker: str
) -> None:
    """Shadow mode or a missing lease turns an automatic handback into a proposal."""
    state = handed_over(make_state(**flags), blocked_until=None)
    t = step(state, Ticked("a"), Policy(auto_handback=True), 600.0)
    reason = f"office a HEALTHY for 600 s; handback proposed, automatic handback blocked: {blocker}"
    assert (Phase.HANDED_OVER, (RaiseAlert(Alert.HANDBACK_PROPOSED, "a", reason),)) == (
        office(t.state).phase,
        t.actions,
    )


def test_a_declared_closure_is_kept_until_its_until() -> None:
    """A declared closure with `until` is not handed back before it passes, and proposed after."""
    state = handed_over(make_state(), closure=Closure("declared", 0.0, "fire", "alice", until=2000.0))
    _, ts = drive(state, P, (1000.0, Ticked("a")), (2000.0, Ticked("a")))
    assert "office a HANDED_OVER to b; declared closed by alice until 2000" == ts[0].reason
    assert [RaiseAlert] == [type(a) for a in ts[1].actions]


@pytest.mark.parametrize(
    ("policy", "phase", "alerts"),
    [
        (Policy(auto_handback=True), Phase.OPEN, frozenset()),
        (P, Phase.CLOSED, frozenset({Alert.NO_ALTERNATE, Alert.HANDBACK_PROPOSED})),
    ],
    ids=["auto", "propose"],
)
def test_a_declared_closure_never_handed_over_reopens_after_until(
    policy: Policy, phase: Phase, alerts: frozenset[Alert]
) -> None:
    """Declared CLOSED, never run: after `until`, HEALTHY long enough, it reopens or is proposed."""
    chains = {"a": ("b",), "b": ()}
    state, _ = drive(
        make_state(chains),
        policy,
        (0.0, obs("b", D)),
        (1.0, ClosureDeclared("a", "alice", "fire", until=100.0)),
        (10.0, obs("a", H)),
        (700.0, Ticked("a")),
    )
    assert (phase, alerts) == (office(state).phase, office(state).alerts)


# --- operator acknowledgement and global switches -----------------------------------------


def test_ack_of_a_failed_office_reopens_it() -> None:
    """Acked in FAILED: OPEN, RUN_FAILED cleared, closure and alternate forgotten."""
    t = step(failed(make_state()), Acked("a", "bob"), P, 100.0)
    a = office(t.state)
    assert ((ClearAlert(Alert.RUN_FAILED, "a"),), Phase.OPEN, None, None) == (
        t.actions,
        a.phase,
        a.closure,
        a.alternate,
    )
    assert "office a acknowledged by bob after failed handover run handover-a-5000; OPEN" == t.reason


def test_a_declaration_after_failure_retries_and_clears_the_alert() -> None:
    """ClosureDeclared in FAILED clears RUN_FAILED and starts a new handover."""
    t = step(healthy(failed(make_state()), "c"), ClosureDeclared("a", "bob", "retry", to="c"), P, 100.0)
    reason = "office a declared closed by bob (retry); handing over to c"
    expected = (
        ClearAlert(Alert.RUN_FAILED, "a"),
        start(HANDOVER, "handover-a-100000", "c", reason, who="bob"),
    )
    assert expected == t.actions


@pytest.mark.parametrize(
    ("blocked_until", "expected", "reason"),
    [
        (3600.0, None, "office a acknowledged by bob: anti-flap block lifted (3500 s early)"),
        (50.0, 50.0, "office a acknowledged by bob: nothing to lift"),
        (None, None, "office a acknowledged by bob: nothing to lift"),
    ],
)
def test_ack_lifts_the_anti_flap_block(
    blocked_until: float | None, expected: float | None, reason: str
) -> None:
    """Acked outside FAILED lifts an active anti-flap block and nothing else."""
    t = step(with_office(make_state(), "a", blocked_until=blocked_until), Acked("a", "bob"), P, 100.0)
    assert (expected, (), reason) == (office(t.state).blocked_until, t.actions, t.reason)


@pytest.mark.parametrize(
    ("state", "event", "flags", "reason"),
    [
        (make_state(), PauseSet(True, "bob"), (True, False), "automation paused by bob"),
        (
            make_state(paused=True),
            PauseSet(True, "bob"),
            (True, False),
            "automation already paused; bob changed nothing",
        ),
        (
            make_state(),
            ShadowSet(True, "bob"),
            (False, True),
            "shadow mode on by bob: Baton decides and alerts but runs nothing",
        ),
        (
            make_state(shadow=True),
            ShadowSet(False, "bob"),
            (False, False),
            "shadow mode off by bob: Baton acts again",
        ),
        (
            make_state(),
            ShadowSet(False, "bob"),
            (False, False),
            "shadow mode already off; bob changed nothing",
        ),
    ],
)
def test_pause_and_shadow_switches(state: State, event: Event, flags: tuple[bool, bool], reason: str) -> None:
    """Pause and shadow flags toggle and say who did it; repeating a switch changes nothing."""
    t = step(state, event, P, 1.0)
    assert (flags, (), reason) == ((t.state.paused, t.state.shadow), t.actions, t.reason)


@pytest.mark.parametrize(
    "event",
    [
        OfficeObserved("zz", D),
        Ticked("zz"),
        ClosureDeclared("zz", "bob", "x"),
        HandbackRequested("zz", "bob", "x"),
        Acked("zz", "bob"),
        RunFinished("zz", "r1", HANDOVER, ok=True),
    ],
    ids=lambda e: type(e).__name__,
)
def test_an_event_for_an_unknown_office_is_ignored(event: Event) -> None:
    """Unknown office: state unchanged, no action, a reason naming the office."""
    state = make_state()
    assert Transition(state, (), f"{type(event).__name__} for unknown office 'zz' ignored") == step(
        state, event, P, 1.0
    )


@pytest.mark.parametrize(
    ("state", "reason"),
    [
        (make_state(), "office a UNKNOWN; OPEN"),
        (RUNNING, "office a UNKNOWN; handover run r1 in progress for 10 s"),
        (
            failed(make_state()),
            "office a DOWN; FAILED since 10 s ago, waiting for an operator (ack, handover or handback)",
        ),
    ],
    ids=["open", "running", "failed"],
)
def test_a_tick_with_nothing_to_do_says_so(state: State, reason: str) -> None:
    """Every outcome has a sentence, including 'nothing to do'."""
    t = step(state, Ticked("a"), P, 10.0)
    assert (state, (), reason) == (t.state, t.actions, t.reason)


# --- the transition table -----------------------------------------------------------------

AUTO = Policy(auto_handback=True, anti_flap_block_s=100.0)


def _fail_then_declare_without_lease(*, trigger: Event) -> list[tuple[float, Event]]:
    """a handed over to b fails; declared closed (until 100) without the lease; healthy; lease back."""
    return [
        (0.0, obs("a", D)),
        (30.0, Ticked("a")),
        (40.0, RunFinished("a", "handover-a-30000", HANDOVER, ok=False)),
        (41.0, LeaseChanged(held=False)),
        (42.0, ClosureDeclared("a", "alice", "fire", until=100.0)),
        (50.0, obs("a", H)),
        (700.0, LeaseChanged(held=True)),
        (700.0, trigger),
    ]


def _to_handed_over() -> list[tuple[float, Event]]:
    return [
        (0.0, obs("a", D)),
        (30.0, Ticked("a")),
        (40.0, RunFinished("a", "handover-a-30000", HANDOVER, ok=True)),
    ]


def _cascade(trigger: Event) -> list[tuple[float, Event]]:
    """a handed over to b; b closes and is handed over to c; a is re-homed (to c)."""
    return [
        *_to_handed_over(),
        (50.0, obs("c", H)),
        (50.0, obs("b", D)),
        (80.0, Ticked("b")),
        (81.0, trigger),
    ]


def _not_started(run_id: str, kind: RunKind = HANDOVER) -> RunFinished:
    return RunFinished("a", run_id, kind, ok=False, detail="restart", started=False)


_HANDING_BACK = [*_to_handed_over(), (50.0, HandbackRequested("a", "bob", "x"))]
_QUICK = Policy(auto_handback=True, anti_flap_block_s=0.0, handback_hold_s=0.0)

# (policy, initial state, events): together they make every phase change in TRANSITIONS.
SCENARIOS: list[tuple[Policy, State, list[tuple[float, Event]]]] = [
    # runs decided but never started (the process died first): decided again from now
    (
        P,
        make_state(),
        [
            (0.0, obs("a", D)),
            (30.0, Ticked("a")),
            (31.0, PauseSet(True, "b")),
            (32.0, _not_started("handover-a-30000")),
        ],
    ),
    (P, make_state(), [(0.0, obs("a", D)), (30.0, Ticked("a")), (32.0, _not_started("handover-a-30000"))]),
    (
        P,
        make_state(),
        [
            (0.0, obs("a", D)),
            (30.0, Ticked("a")),
            (31.0, obs("a", H)),
            (32.0, _not_started("handover-a-30000")),
        ],
    ),
    (
        P,
        make_state(),
        [*_cascade(Ticked("a")), (82.0, PauseSet(True, "x")), (83.0, _not_started("handover-a-81000"))],
    ),
    (P, make_state(), [*_HANDING_BACK, (51.0, _not_started("handback-a-50000", HANDBACK))]),
    (
        _QUICK,
        make_state(),
        [
            *_to_handed_over(),
            (50.0, obs("a", H)),
            (51.0, obs("a", H)),
            (52.0, _not_started("handback-a-50000", HANDBACK)),
        ],
    ),
    (
        P,
        make_state(),
        [
            *_HANDING_BACK,
            (50.0, obs("c", H)),
            (50.0, obs("b", D)),
            (80.0, Ticked("b")),
            (81.0, _not_started("handback-a-50000", HANDBACK)),
        ],
    ),
    # cascades, by observation and by tick
    (P, make_state(), _cascade(obs("a", H))),
    (P, make_state(), _cascade(Ticked("a"))),
    # a catch-up in progress when a handback is asked: the handback follows its result
    (
        P,
        make_state(),
        [
            (0.0, obs("a", D)),
            (30.0, Ticked("a")),
            (40.0, RunFinished("a", "handover-a-30000", HANDOVER, ok=True, pending=frozenset({"a1"}))),
            (50.0, OfficeObserved("a", H, answering=frozenset({"a1"}))),
            (51.0, HandbackRequested("a", "bob", "reopened")),
            (52.0, RunFinished("a", "catchup-a-50000", HANDOVER, ok=False)),
        ],
    ),
    # drills end with shadow mode, by command and by baton.yaml
    (
        P,
        make_state(shadow=True),
        [(0.0, ClosureDeclared("a", "alice", "drill")), (1.0, ShadowSet(False, "bob"))],
    ),
    (
        P,
        make_state(shadow=True, config_shadow=True),
        [(0.0, ClosureDeclared("a", "alice", "drill")), (1.0, ConfigLoaded(CHAINS, shadow=False))],
    ),
    # OPEN → SUSPECT → HANDING_OVER → HANDED_OVER → HANDING_BACK → OPEN (still DOWN) → SUSPECT by tick
    (
        P,
        make_state(),
        [
            *_to_handed_over(),
            (50.0, HandbackRequested("a", "bob", "test")),
            (60.0, RunFinished("a", "handback-a-50000", HANDBACK, ok=True)),
            (70.0, Ticked("a")),
            (80.0, obs("a", H)),
        ],
    ),
    (P, make_state(), [(0.0, obs("a", D)), (30.0, obs("a", D))]),
    (P, make_state(paused=True), [(0.0, obs("a", D)), (30.0, obs("a", D)), (40.0, obs("a", H))]),
    (
        P,
        make_state(paused=True),
        [(0.0, obs("a", D)), (30.0, Ticked("a")), (31.0, PauseSet(False, "b")), (32.0, Ticked("a"))],
    ),
    (
        P,
        make_state(paused=True),
        [(0.0, obs("a", D)), (30.0, Ticked("a")), (31.0, PauseSet(False, "b")), (32.0, obs("a", D))],
    ),
    (
        P,
        make_state(paused=True),
        [(0.0, obs("a", D)), (30.0, Ticked("a")), (31.0, HandbackRequested("a", "bob", "x"))],
    ),
    # declared closure with nothing handed over reopens after `until` (b is SUSPECT: no alternate)
    *(
        (
            AUTO,
            make_state({"a": ("b",), "b": ()}),
            [
                (0.0, obs("b", D)),
                (1.0, ClosureDeclared("a", "alice", "x", until=100.0)),
                (10.0, obs("a", H)),
                (700.0, trigger),
            ],
        )
        for trigger in (Ticked("a"), obs("a", H))
    ),
    (AUTO, make_state(), _fail_then_declare_without_lease(trigger=Ticked("a"))),
    (AUTO, make_state(), _fail_then_declare_without_lease(trigger=obs("a", H))),
    (P, make_state(), [*_fail_then_declare_without_lease(trigger=HandbackRequested("a", "bob", "x"))]),
    # automatic handback by observation and by tick
    (AUTO, make_state(), [*_to_handed_over(), (50.0, obs("a", H)), (700.0, obs("a", H))]),
    (AUTO, make_state(), [*_to_handed_over(), (50.0, obs("a", H)), (700.0, Ticked("a"))]),
    # declarations from every phase that allows one
    (P, make_state(), [(0.0, ClosureDeclared("a", "alice", "x"))]),
    (P, make_state(shadow=True), [(0.0, ClosureDeclared("a", "alice", "x"))]),
    (P, make_state(), [(0.0, obs("a", D)), (1.0, ClosureDeclared("a", "alice", "x"))]),
    (P, make_state(shadow=True), [(0.0, obs("a", D)), (1.0, ClosureDeclared("a", "alice", "x"))]),
    (
        Policy(require_approval=True),
        make_state(),
        [(0.0, obs("a", D)), (30.0, Ticked("a")), (31.0, ClosureDeclared("a", "alice", "ok"))],
    ),
    # failures and what an operator does about them
    (
        P,
        make_state(),
        [
            (0.0, obs("a", D)),
            (30.0, Ticked("a")),
            (40.0, RunFinished("a", "handover-a-30000", HANDOVER, ok=False)),
            (50.0, ClosureDeclared("a", "bob", "retry")),
        ],
    ),
    (
        P,
        make_state(),
        [
            (0.0, obs("a", D)),
            (30.0, Ticked("a")),
            (40.0, RunFinished("a", "handover-a-30000", HANDOVER, ok=False)),
            (50.0, HandbackRequested("a", "bob", "x")),
        ],
    ),
    (
        P,
        make_state(),
        [
            (0.0, obs("a", D)),
            (30.0, Ticked("a")),
            (40.0, RunFinished("a", "handover-a-30000", HANDOVER, ok=False)),
            (50.0, Acked("a", "bob")),
        ],
    ),
    (
        P,
        make_state(),
        [
            *_to_handed_over(),
            (50.0, HandbackRequested("a", "bob", "x")),
            (60.0, RunFinished("a", "handback-a-50000", HANDBACK, ok=False)),
            (61.0, LeaseChanged(held=False)),
            (62.0, ClosureDeclared("a", "bob", "x")),
        ],
    ),
]
# approvals and resolves (tests/unit/operator_scenarios.py)
SCENARIOS += OPERATOR_SCENARIOS


def phase_changes(
    policy: Policy, state: State, events: list[tuple[float, Event]]
) -> set[tuple[Phase, str, Phase]]:
    changes = set()
    for now, event in events:
        after = step(state, event, policy, now).state
        for name, before in state.offices.items():
            if before.phase is not after.offices[name].phase:
                if hasattr(event, "office") and not isinstance(event, RoundObserved):
                    assert name == event.office, f"{event} changed office {name}"
                changes.add((before.phase, type(event).__name__, after.offices[name].phase))
        state = after
    return changes


def as_round(event: Event) -> Event:
    """The same observation as one vantage of several would send it."""
    if not isinstance(event, OfficeObserved):
        return event
    return RoundObserved(
        {event.office: {"v1": (event.verdict, event.detail)}},
        quorum=1,
        answering={event.office: event.answering},
    )


def test_the_transition_table_and_the_code_agree() -> None:
    """Every phase change the scenarios make is in TRANSITIONS, and every row of TRANSITIONS is
    made (the scenarios run twice: observed by one vantage, and as rounds of several). A
    follower's adoption of the leader's phases (any phase but a running one) is checked in
    tests/unit/test_vantages.py."""
    observed: set[tuple[Phase, str, Phase]] = set()
    for policy, state, events in SCENARIOS:
        observed |= phase_changes(policy, state, events)
        observed |= phase_changes(policy, state, [(t, as_round(e)) for t, e in events])
    followers = ("LeaderReported", "LeaseChanged")
    assert sorted(t for t in TRANSITIONS if t[1] not in followers) == sorted(observed)


# --- cascades, catch-ups, drills, the shadow rule, stopping ------------------------------


def test_an_office_operated_by_a_closed_office_is_re_homed() -> None:
    """a handed over to b; b closes and goes to c; a's next tick re-homes a to c (by a run)."""
    state, ts = drive(make_state(), P, *_cascade(Ticked("a")))
    reason = "office a HANDED_OVER to b, which is HANDING_OVER; re-homing to c"
    expected = StartRun("a", HANDOVER, "handover-a-81000", "c", reason, previous="b")
    assert (expected,) == tuple(a for a in ts[-1].actions if isinstance(a, StartRun))
    a = office(state)
    assert (Phase.HANDING_OVER, "c", "b") == (a.phase, a.alternate, a.previous_alternate)


def test_a_cascade_with_nowhere_to_go_raises_an_alert_naming_the_office() -> None:
    """a's only alternate is the office that closed: no run, one alert that says so."""
    chains = {"a": ("b",), "b": ("a", "c"), "c": (), "d": (), "e": (), "f": (), "g": (), "h": ()}
    state, _ = drive(make_state(chains), P, *_to_handed_over(), (50.0, obs("c", H)), (50.0, obs("b", D)))
    state, ts = drive(state, P, (80.0, Ticked("b")), (81.0, Ticked("a")), (82.0, Ticked("a")))
    reason = (
        "office a HANDED_OVER to b, which is HANDING_OVER; not re-homed: no alternate available: "
        "b is the office that closed"
    )
    assert (RaiseAlert(Alert.OPERATED_BY_CLOSED, "a", reason),) == ts[1].actions
    assert () == ts[2].actions  # raised once


def test_devices_left_pending_are_caught_up_when_they_answer() -> None:
    """A handover leaves a1 pending; a1 answers; a catch-up hands it over; nothing pending after."""
    state, ts = drive(
        make_state(),
        P,
        (0.0, obs("a", D)),
        (30.0, Ticked("a")),
        (40.0, RunFinished("a", "handover-a-30000", HANDOVER, ok=True, pending=frozenset({"a1", "a2"}))),
        (50.0, OfficeObserved("a", D, answering=frozenset())),
        (60.0, OfficeObserved("a", D, answering=frozenset({"a1"}))),
    )
    assert () == ts[3].actions
    [catchup] = ts[4].actions
    assert isinstance(catchup, StartRun)
    assert ("catchup-a-60000", frozenset({"a1"}), "b") == (catchup.run_id, catchup.devices, catchup.alternate)
    state, ts = drive(
        state, P, (70.0, RunFinished("a", "catchup-a-60000", HANDOVER, ok=True, done=frozenset({"a1"})))
    )
    a = office(state)
    assert (Phase.HANDED_OVER, frozenset({"a2"}), None) == (a.phase, a.pending, a.catchup_id)


def test_a_failed_catch_up_waits_a_growing_backoff() -> None:
    state, _ = drive(
        make_state(),
        P,
        (0.0, obs("a", D)),
        (30.0, Ticked("a")),
        (40.0, RunFinished("a", "handover-a-30000", HANDOVER, ok=True, pending=frozenset({"a1"}))),
        (60.0, OfficeObserved("a", D, answering=frozenset({"a1"}))),
        (61.0, RunFinished("a", "catchup-a-60000", HANDOVER, ok=False)),
        (70.0, OfficeObserved("a", D, answering=frozenset({"a1"}))),
    )
    a = office(state)
    assert (None, 1, 91.0) == (a.catchup_id, a.catchup_failures, a.catchup_not_before)
    state, _ = drive(state, P, (92.0, OfficeObserved("a", D, answering=frozenset({"a1"}))))
    assert "catchup-a-92000" == office(state).catchup_id


def test_catch_ups_respect_pause_storm_and_shadow() -> None:
    base, _ = drive(
        make_state(),
        P,
        (0.0, obs("a", D)),
        (30.0, Ticked("a")),
        (40.0, RunFinished("a", "handover-a-30000", HANDOVER, ok=True, pending=frozenset({"a1"}))),
    )
    for flags in ({"paused": True}, {"storm": True}, {"shadow": True}, {"leader": False}):
        t = step(replace(base, **flags), OfficeObserved("a", D, answering=frozenset({"a1"})), P, 60.0)
        assert not [a for a in t.actions if isinstance(a, StartRun)], flags


def test_a_drill_never_becomes_a_real_handover() -> None:
    """Declared in shadow mode, the closure ends with shadow mode: nothing runs unless asked again."""
    state, ts = drive(
        make_state(shadow=True),
        P,
        (0.0, ClosureDeclared("a", "alice", "drill")),
        (10.0, ShadowSet(False, "bob")),
        (11.0, Ticked("a")),
    )
    assert office(state).closure is None
    assert Phase.OPEN is office(state).phase
    assert (
        "shadow mode off by bob: Baton acts again; drill closure(s) ended, declare again to hand over: a"
        == ts[1].reason
    )
    assert not [a for t in ts for a in t.actions if isinstance(a, StartRun)]


def test_the_shadow_rule_baton_yaml_applies_when_it_changes() -> None:
    """baton.yaml's shadow applies when it differs from the value last loaded; a command stands
    until then (a restart with the same file changes nothing)."""
    _, ts = drive(
        make_state(),
        P,
        (0.0, ConfigLoaded(CHAINS, shadow=True)),
        (1.0, ShadowSet(False, "bob")),
        (2.0, ConfigLoaded(CHAINS, shadow=True)),  # a restart, same file
        (3.0, ConfigLoaded(CHAINS, shadow=False)),  # the file changed: it applies (already off)
        (4.0, ConfigLoaded(CHAINS, shadow=True)),
    )
    assert [True, False, False, False, True] == [t.state.shadow for t in ts]


def test_stopping_starts_nothing() -> None:
    """Once stopping, neither a detected nor a declared closure starts a run; the closure stays."""
    state, ts = drive(
        make_state(),
        P,
        (0.0, Stopping()),
        (1.0, obs("a", D)),
        (31.0, Ticked("a")),
        (32.0, ClosureDeclared("c", "alice", "fire")),
    )
    assert not [a for t in ts for a in t.actions if isinstance(a, StartRun)]
    assert (Phase.CLOSED, Phase.CLOSED) == (office(state).phase, office(state, "c").phase)


def test_a_handback_leaves_its_unreachable_devices_for_a_catch_up() -> None:
    """A handback skips a1 (not answering): the office is OPEN with a1 pending; when a1 answers,
    a catch-up hands it back from b too; then nothing is left with the alternate."""
    state, ts = drive(
        handed_over(make_state()),
        P,
        (4000.0, HandbackRequested("a", "alice", "reopened")),
        (4010.0, RunFinished("a", "handback-a-4000000", HANDBACK, ok=True, pending=frozenset({"a1"}))),
        (4020.0, OfficeObserved("a", H, answering=frozenset())),
        (4030.0, OfficeObserved("a", H, answering=frozenset({"a1"}))),
    )
    assert "1 device(s) pending until they answer" in ts[1].reason
    assert () == ts[2].actions
    [catchup] = ts[3].actions
    assert isinstance(catchup, StartRun)
    assert (HANDBACK, frozenset({"a1"}), "b") == (catchup.kind, catchup.devices, catchup.alternate)
    state, _ = drive(
        state, P, (4040.0, RunFinished("a", catchup.run_id, HANDBACK, ok=True, done=frozenset({"a1"})))
    )
    a = office(state)
    assert (Phase.OPEN, frozenset(), None, None) == (a.phase, a.pending, a.pending_kind, a.catchup_id)


def test_an_alternate_that_closes_while_a_handover_to_it_runs() -> None:
    """a is being handed over to b when b closes: b goes to its own next alternate (c, not a, which
    is not OPEN); a's run ends HANDED_OVER to b, and the next settle re-homes a to c."""
    state = make_state()
    for name in "abcd":
        state, _ = drive(state, P, (0.0, obs(name, H)))
    state, ts = drive(state, P, (1.0, obs("a", D, "dark")), (40.0, Ticked("a")))
    [to_b] = [a for a in ts[-1].actions if isinstance(a, StartRun)]
    assert "b" == to_b.alternate
    state, ts = drive(state, P, (41.0, obs("b", D, "dark")), (80.0, Ticked("b")), (81.0, Ticked("a")))
    [b_to_c] = [a for a in ts[1].actions if isinstance(a, StartRun)]
    assert ("b", "c") == (b_to_c.office, b_to_c.alternate)
    assert () == ts[2].actions  # a's run goes on: never two runs for one office
    state, ts = drive(state, P, (90.0, RunFinished("a", to_b.run_id, HANDOVER, ok=True)), (91.0, Ticked("a")))
    [rehome] = [a for a in ts[-1].actions if isinstance(a, StartRun)]
    assert ("a", "c", "b") == (rehome.office, rehome.alternate, rehome.previous)
    assert "re-homing to c" in ts[-1].reason
