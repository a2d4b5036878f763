"""Several vantages: verdicts combined in the core by quorum, abstention, split views."""

from __future__ import annotations

from dataclasses import replace
from types import MappingProxyType

import pytest
from hypothesis import given
from hypothesis import strategies as st

from baton.core.actions import Alert, RaiseAlert, StartRun
from baton.core.events import (
    ClosureDeclared,
    HandbackRequested,
    LeaderReported,
    LeaseChanged,
    OfficeObserved,
    RoundObserved,
    RunFinished,
    Ticked,
)
from baton.core.machine import TRANSITIONS, abstaining, combine, step
from baton.core.model import OfficeVerdict, Phase, Policy, RunKind
from tests.unit.core_builders import make_state

D, H, G = OfficeVerdict.DOWN, OfficeVerdict.HEALTHY, OfficeVerdict.DEGRADED


@pytest.mark.parametrize(
    ("votes", "quorum", "expected"),
    [
        ({"a": (D, "6/8"), "b": (D, "8/8"), "c": (H, "")}, 2, D),
        ({"a": (D, "6/8"), "b": (H, ""), "c": (H, "")}, 2, OfficeVerdict.UNREACHABLE),  # a minority
        ({"a": (D, "6/8")}, 1, D),  # one vantage alone
        ({"a": (H, ""), "b": (G, "1/8"), "c": (G, "1/8")}, 2, G),  # the majority's verdict
        ({"a": (H, ""), "b": (G, "1/8")}, 2, H),  # a tie: the better one
    ],
)
def test_an_office_is_down_only_when_a_quorum_says_so(
    votes: dict[str, tuple[OfficeVerdict, str]], quorum: int, expected: OfficeVerdict
) -> None:
    assert expected == combine(votes, quorum)[0]


def test_a_split_view_names_who_sees_what() -> None:
    verdict, detail, split = combine({"a": (D, "8/8"), "b": (H, ""), "c": (H, "")}, 2)
    assert (OfficeVerdict.UNREACHABLE, True) == (verdict, split)
    assert "DOWN from a only (quorum 2); HEALTHY from b, HEALTHY from c" == detail


def test_a_vantage_that_sees_most_offices_down_abstains() -> None:
    votes = {
        "o1": {"a": (D, ""), "b": (H, ""), "c": (H, "")},
        "o2": {"a": (D, ""), "b": (H, ""), "c": (H, "")},
        "o3": {"a": (H, ""), "b": (H, ""), "c": (H, "")},
    }
    assert frozenset({"a"}) == abstaining(votes)
    assert (H, False) == combine(votes["o1"], 2, abstaining(votes))[::2]


verdicts = st.sampled_from(list(OfficeVerdict))


@given(
    votes=st.dictionaries(st.sampled_from("abcde"), st.tuples(verdicts, st.just("")), min_size=1),
    quorum=st.integers(1, 5),
)
def test_fewer_than_a_quorum_never_make_an_office_down(
    votes: dict[str, tuple[OfficeVerdict, str]], quorum: int
) -> None:
    """DOWN ⇔ at least `quorum` vantages say DOWN; a DOWN minority is a split, never DOWN."""
    verdict, _, split = combine(votes, quorum)
    down = sum(1 for v, _ in votes.values() if v is D)
    assert (verdict is D) == (down >= quorum)
    assert split == (0 < down < quorum)


def test_a_round_closes_an_office_only_with_a_quorum() -> None:
    """Two of three vantages see it dark: SUSPECT, then handed over; one of three: an alert."""
    state = step(make_state(), LeaseChanged(held=True, epoch=7), Policy(), 0.0).state
    assert 7 == state.epoch
    minority = RoundObserved({"a": {"v1": (D, "8/8 down"), "v2": (H, ""), "v3": (H, "")}}, quorum=2)
    t = step(state, minority, Policy(), 1.0)
    assert Phase.OPEN is t.state.offices["a"].phase
    assert [Alert.SPLIT_VIEW] == [a.alert for a in t.actions if isinstance(a, RaiseAlert)]
    majority = RoundObserved({"a": {"v1": (D, "8/8 down"), "v2": (D, "8/8 down"), "v3": (H, "")}}, quorum=2)
    t = step(t.state, majority, Policy(), 2.0)
    assert Phase.SUSPECT is t.state.offices["a"].phase
    t = step(t.state, Ticked("a"), Policy(), 40.0)
    [run] = [a for a in t.actions if isinstance(a, StartRun)]
    assert (Phase.HANDING_OVER, 7) == (t.state.offices["a"].phase, run.epoch)


def test_no_run_starts_with_a_stale_epoch_after_the_lease_is_lost() -> None:
    state = step(make_state(), LeaseChanged(held=True, epoch=3), Policy(), 0.0).state
    state = step(state, LeaseChanged(held=False), Policy(), 1.0).state
    assert (False, 3) == (state.leader, state.epoch)
    state = step(state, LeaseChanged(held=True, epoch=5), Policy(), 2.0).state
    assert 5 == state.epoch
    state = step(state, LeaseChanged(held=True, epoch=4), Policy(), 3.0).state
    assert 5 == state.epoch  # only grows
    assert MappingProxyType is type(state.offices)


@pytest.mark.parametrize(("leader", "alerted"), [("v2", False), (None, True)])
def test_a_follower_closes_the_office_and_leaves_the_handover_to_the_leader(
    leader: str | None, alerted: bool
) -> None:
    """A follower starts nothing. Knowing the leader, it decides nothing either (rounds and time
    move no phase: the leader's reports do); with no vantage known to lead it closes the office
    and raises the automation-blocked alert (then nobody acts: that is an emergency)."""
    state = step(make_state(), LeaseChanged(held=False, leader=leader), Policy(), 0.0).state
    assert (False, leader) == (state.leader, state.leader_elsewhere)
    down = RoundObserved({"a": {"v1": (D, "8/8 down"), "v2": (D, "8/8 down")}}, quorum=2)
    state = step(state, down, Policy(), 1.0).state
    t = step(state, Ticked("a"), Policy(), 40.0)
    assert (Phase.OPEN if leader else Phase.CLOSED) is t.state.offices["a"].phase
    assert not [a for a in t.actions if isinstance(a, StartRun)]
    raised = [a.alert for a in t.actions if isinstance(a, RaiseAlert)]
    assert ([Alert.AUTOMATION_BLOCKED] if alerted else []) == raised
    if leader:
        assert f"as reported by the leading vantage {leader}" in t.reason
    # It leads next: its round closes the office, the handover starts with its epoch.
    t = step(t.state, LeaseChanged(held=True, epoch=9, leader="v1"), Policy(), 41.0)
    rounded = step(t.state, down, Policy(), 42.0)
    t = step(rounded.state, Ticked("a"), Policy(), 80.0)
    [run] = [a for a in rounded.actions + t.actions if isinstance(a, StartRun)]
    assert (Phase.HANDING_OVER, 9, None) == (t.state.offices["a"].phase, run.epoch, t.state.leader_elsewhere)


def test_a_follower_refuses_a_handover_request_naming_the_leader() -> None:
    state = step(make_state(), LeaseChanged(held=False, leader="v2"), Policy(), 0.0).state
    t = step(state, ClosureDeclared("a", who="alice", reason="fire"), Policy(), 1.0)
    assert "refused: this vantage does not hold the lease (vantage v2 leads" in t.reason
    assert Phase.OPEN is t.state.offices["a"].phase  # not recorded where nobody would act on it
    t = step(t.state, _reported(Phase.HANDED_OVER), Policy(), 2.0)  # the leader handed it over
    assert Phase.HANDED_OVER is t.state.offices["a"].phase
    t = step(t.state, HandbackRequested("a", who="alice", reason="office reopened"), Policy(), 61.0)
    assert "refused: this vantage does not hold the lease (vantage v2 leads" in t.reason


def _reported(phase: Phase, alternate: str | None = "b", **changes: object) -> LeaderReported:
    theirs = replace(make_state().offices["a"], phase=phase, alternate=alternate, run_id="r-1", **changes)
    return LeaderReported("v2", 11, {"a": theirs}, paused=True)


@pytest.mark.parametrize(
    ("theirs", "adopted"),
    [
        (Phase.OPEN, Phase.OPEN),
        (Phase.SUSPECT, Phase.SUSPECT),
        (Phase.CLOSED, Phase.CLOSED),
        (Phase.HANDING_OVER, Phase.CLOSED),  # its run under way: the next leader hands over again
        (Phase.HANDED_OVER, Phase.HANDED_OVER),
        (Phase.HANDING_BACK, Phase.HANDED_OVER),  # ...and hands back again
        (Phase.FAILED, Phase.FAILED),
    ],
)
def test_a_follower_adopts_the_leaders_phases_as_intents(theirs: Phase, adopted: Phase) -> None:
    state = step(make_state(), LeaseChanged(held=False, leader="v2"), Policy(), 0.0).state
    t = step(state, _reported(theirs), Policy(), 1.0)
    a = t.state.offices["a"]
    assert (adopted, "b", None) == (a.phase, a.alternate, a.run_id)
    assert (True, 11, "v2") == (t.state.paused, t.state.epoch, t.state.leader_elsewhere)
    assert () == t.actions


def test_the_leader_ignores_reports() -> None:
    state = step(make_state(), LeaseChanged(held=True, epoch=3), Policy(), 0.0).state
    t = step(state, _reported(Phase.HANDED_OVER), Policy(), 1.0)
    assert t.state == state
    assert "ignored: this vantage leads" in t.reason


def test_a_follower_that_takes_over_finishes_the_leaders_story() -> None:
    """The leader reported the office handed over, then died: the next leader hands it back
    (epoch 12) once it is healthy for the hold, as the leader would have."""
    state = step(make_state(), LeaseChanged(held=False, leader="v2"), Policy(), 0.0).state
    report = replace(_reported(Phase.HANDED_OVER, verdict=H, verdict_since=1.0), paused=False)
    state = step(state, report, Policy(), 1.0).state
    state = step(state, LeaseChanged(held=True, epoch=12, leader="v1"), Policy(), 5.0).state
    t = step(state, Ticked("a"), Policy(auto_handback=True), 700.0)
    [run] = [a for a in t.actions if isinstance(a, StartRun)]
    assert (Phase.HANDING_BACK, "b", 12) == (t.state.offices["a"].phase, run.alternate, run.epoch)


@pytest.mark.parametrize(
    ("theirs", "kind"), [(Phase.HANDING_OVER, "handover"), (Phase.HANDING_BACK, "handback")]
)
def test_a_leader_that_died_mid_run_has_its_run_taken_over(theirs: Phase, kind: str) -> None:
    """The run's records are shared (`baton.runmirror`): the new leader waits on that same run,
    which its takeover recovers; its result decides the office, as the leader's would have."""
    state = step(make_state(), LeaseChanged(held=False, leader="v2"), Policy(), 0.0).state
    report = replace(_reported(theirs, verdict=D, run_kind=RunKind(kind)), paused=False)
    state = step(state, report, Policy(), 1.0).state
    following = state.offices["a"]
    assert (f"{kind} run r-1 on v2", "r-1") == (following.remote_run, following.remote_run_id)
    t = step(state, LeaseChanged(held=True, epoch=12, leader="v1"), Policy(), 5.0)
    office = t.state.offices["a"]
    assert (theirs, "r-1", RunKind(kind)) == (office.phase, office.run_id, office.run_kind)
    assert office.remote_run is None
    assert not [a for a in t.actions if isinstance(a, StartRun | RaiseAlert)]  # no second run, no alert
    t = step(t.state, RunFinished("a", "r-1", RunKind(kind), True, "recovered"), Policy(), 6.0)
    assert {"handover": Phase.HANDED_OVER, "handback": Phase.OPEN}[kind] is t.state.offices["a"].phase
    # The same result again (the run reported by its recovery and by an adoption, or the dead
    # leader's own result arriving late, even as a failure): nothing changes.
    for late in (True, False):
        again = step(t.state, RunFinished("a", "r-1", RunKind(kind), late, "late"), Policy(), 7.0)
        assert (t.state, ()) == (again.state, again.actions)
        assert "ignored: not the run in progress" in again.reason


def test_a_catch_up_under_way_on_the_dead_leader_is_waited_on_not_run_again() -> None:
    """The leader was catching up a device its handover had left pending, and died: the next
    leader waits on that catch-up (its takeover finishes it) and starts no other for it."""
    state = step(make_state(), LeaseChanged(held=False, leader="v2"), Policy(), 0.0).state
    report = _reported(
        Phase.HANDED_OVER,
        verdict=H,
        pending=frozenset({"a-olt1"}),
        pending_kind=RunKind.HANDOVER,
        pending_alternate="b",
        ready=frozenset({"a-olt1"}),
        catchup_id="catchup-1",
    )
    state = step(state, replace(report, paused=False), Policy(), 1.0).state
    t = step(state, LeaseChanged(held=True, epoch=12, leader="v1"), Policy(), 5.0)
    assert "catchup-1" == t.state.offices["a"].catchup_id
    t = step(t.state, Ticked("a"), Policy(), 6.0)
    assert not [a for a in t.actions if isinstance(a, StartRun)]
    done = RunFinished("a", "catchup-1", RunKind.HANDOVER, True, "recovered", done=frozenset({"a-olt1"}))
    t = step(t.state, done, Policy(), 7.0)
    office = t.state.offices["a"]
    assert (Phase.HANDED_OVER, None, frozenset()) == (office.phase, office.catchup_id, office.pending)


@pytest.mark.parametrize(
    ("theirs", "kind"), [(Phase.HANDING_OVER, "handover"), (Phase.HANDING_BACK, "handback")]
)
def test_a_leader_that_died_mid_run_it_never_shared_leaves_the_office_failed_for_an_operator(
    theirs: Phase, kind: str
) -> None:
    """A state journaled before runs were shared names the run but not its id: its devices are
    where it left them, not guessed at. FAILED, one alert that says what to do; `baton
    handover` finishes it."""
    state = step(make_state(), LeaseChanged(held=False, leader="v2"), Policy(), 0.0).state
    report = replace(_reported(theirs, verdict=D, run_kind=RunKind(kind)), paused=False)
    state = step(state, report, Policy(), 1.0).state
    office = replace(state.offices["a"], remote_run_id=None, remote_run_kind=None)
    state = replace(state, offices=MappingProxyType({**state.offices, "a": office}))
    t = step(state, LeaseChanged(held=True, epoch=12, leader="v1"), Policy(), 5.0)
    assert Phase.FAILED is t.state.offices["a"].phase
    [alert] = [a for a in t.actions if isinstance(a, RaiseAlert)]
    assert Alert.RUN_FAILED is alert.alert
    assert f"{kind} run r-1 on v2 was under way" in alert.message
    t = step(t.state, Ticked("a"), Policy(), 60.0)
    assert not [a for a in t.actions if isinstance(a, StartRun)]  # nothing guessed
    t = step(t.state, ClosureDeclared("a", who="alice", reason="finish it"), Policy(), 61.0)
    assert Phase.HANDING_OVER is t.state.offices["a"].phase


@pytest.mark.parametrize(
    ("theirs", "kind"), [(Phase.HANDING_OVER, RunKind.HANDBACK), (Phase.HANDING_BACK, RunKind.HANDOVER)]
)
def test_a_reported_run_whose_kind_disagrees_with_its_phase_is_not_taken_over(
    theirs: Phase, kind: RunKind
) -> None:
    """A report that says HANDING_OVER with a handback run (or the reverse) cannot be placed: the
    next leader does not guess which it was (hypothesis found CLOSED -> HANDING_BACK here)."""
    state = step(make_state(), LeaseChanged(held=False, leader="v2"), Policy(), 0.0).state
    state = step(
        state, replace(_reported(theirs, verdict=D, run_kind=kind), paused=False), Policy(), 1.0
    ).state
    t = step(state, LeaseChanged(held=True, epoch=12, leader="v1"), Policy(), 5.0)
    assert (Phase.FAILED, None) == (t.state.offices["a"].phase, t.state.offices["a"].run_id)
    [alert] = [a for a in t.actions if isinstance(a, RaiseAlert)]
    assert Alert.RUN_FAILED is alert.alert


@pytest.mark.parametrize("phase", [Phase.OPEN, Phase.SUSPECT, Phase.CLOSED, Phase.HANDED_OVER])
def test_a_remote_run_without_a_kind_is_never_taken_over(phase: Phase) -> None:
    """A run id with no kind cannot be placed in any phase (an OPEN office has no intent at all,
    so `_UNDER_WAY` has no kind for it either: None must not match None)."""
    state = step(make_state(), LeaseChanged(held=False, leader="v2"), Policy(), 0.0).state
    report = replace(_reported(Phase.HANDING_OVER, verdict=D), paused=False)
    state = step(state, report, Policy(), 1.0).state
    office = replace(state.offices["a"], phase=phase, remote_run_kind=None)
    state = replace(state, offices=MappingProxyType({**state.offices, "a": office}))
    t = step(state, LeaseChanged(held=True, epoch=12, leader="v1"), Policy(), 5.0)
    assert Phase.FAILED is t.state.offices["a"].phase


def test_a_run_that_ended_there_is_no_longer_remote() -> None:
    state = step(make_state(), LeaseChanged(held=False, leader="v2"), Policy(), 0.0).state
    state = step(state, replace(_reported(Phase.HANDING_OVER, verdict=D), paused=False), Policy(), 1.0).state
    state = step(state, replace(_reported(Phase.HANDED_OVER, verdict=D), paused=False), Policy(), 2.0).state
    t = step(state, LeaseChanged(held=True, epoch=12, leader="v1"), Policy(), 5.0)
    assert (Phase.HANDED_OVER, None) == (t.state.offices["a"].phase, t.state.offices["a"].remote_run)
    assert () == t.actions


@given(phase=st.sampled_from(list(Phase)), alternate=st.sampled_from(["b", "c", None]))
def test_a_report_never_makes_a_follower_act_or_run(phase: Phase, alternate: str | None) -> None:
    state = step(make_state(), LeaseChanged(held=False, leader="v2"), Policy(), 0.0).state
    t = step(state, _reported(phase, alternate), Policy(), 1.0)
    assert () == t.actions
    assert t.state.offices["a"].phase not in (Phase.HANDING_OVER, Phase.HANDING_BACK)
    assert (state.offices["a"].phase, "LeaderReported", t.state.offices["a"].phase) in TRANSITIONS or (
        state.offices["a"].phase is t.state.offices["a"].phase
    )


def test_a_round_raises_or_clears_the_storm_guard_once() -> None:
    """Found by the invariant property: within one round an office that recovers lifted the
    storm guard and the next offices DOWN engaged it again: two alerts for no change."""
    chains = {"o0": (), "o1": (), "o2": ("o0",), "o3": ()}
    policy = Policy(failures_to_down=1, hold_down_s=0.0, anti_flap_block_s=0.0, handback_hold_s=0.0)
    state = make_state(chains)
    for office in ("o0", "o1"):
        state = step(state, OfficeObserved(office, D, "down"), policy, 0.0).state
    assert state.storm
    votes = {
        "o2": {"v1": (H, ""), "v2": (D, ""), "v3": (D, "")},
        "o0": {"v1": (H, ""), "v2": (H, ""), "v3": (D, "")},
        "o3": {"v1": (D, ""), "v2": (H, ""), "v3": (D, "")},
    }
    t = step(state, RoundObserved(votes, quorum=1), policy, 700.0)
    storm = [a for a in t.actions if getattr(a, "alert", None) is Alert.STORM_GUARD]
    assert len(storm) <= 1
    assert bool(storm) == (t.state.storm != state.storm)
