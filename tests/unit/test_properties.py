"""Properties of the pure core, over random topologies, policies and event sequences."""

from __future__ import annotations

from dataclasses import replace
from types import MappingProxyType

from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st

from baton.core.actions import AbortRun, Action, Alert, ClearAlert, RaiseAlert, StartRun
from baton.core.events import (
    AbortRequested,
    Acked,
    ApprovalDenied,
    ApprovalGiven,
    ClosureDeclared,
    ConfigLoaded,
    Event,
    HandbackRequested,
    LeaderReported,
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
from baton.core.health import (
    DeviceHealth,
    Observation,
    device_verdict,
    judge_devices,
    judge_office,
    observe,
)
from baton.core.machine import TRANSITIONS, rule_for, step
from baton.core.model import (
    ApprovalRule,
    Device,
    DeviceVerdict,
    GrantTerm,
    Inventory,
    Office,
    OfficeState,
    OfficeVerdict,
    Phase,
    Policy,
    Protocol,
    RunKind,
    State,
)

RUNNING = (Phase.HANDING_OVER, Phase.HANDING_BACK)
SETTINGS = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])

OFFICE_NAMES = [f"o{i}" for i in range(6)]  # the names `topologies` gives offices
approval_rules = st.builds(
    ApprovalRule,
    offices=st.lists(st.sampled_from(OFFICE_NAMES), min_size=1, unique=True).map(tuple),
    kinds=st.sampled_from([(RunKind.HANDOVER,), (RunKind.HANDBACK,), tuple(RunKind)]),
    required=st.integers(1, 2),
    ttl_s=st.sampled_from([60.0, 600.0]),
    auto_proceed_s=st.sampled_from([None, 30.0, 300.0]),
)
grant_terms = st.lists(
    st.builds(
        GrantTerm, grant=st.sampled_from(["g1", "g2"]), until=st.sampled_from([0.0, 50.0, 500.0, 5000.0])
    ),
    max_size=2,
    unique_by=lambda t: t.grant,
).map(lambda terms: tuple(sorted(terms)))
PEOPLE = ["op", "alice", "bob", "baton"]

policies = st.builds(
    Policy,
    approvals=st.one_of(st.just(()), st.lists(approval_rules, min_size=1, max_size=2).map(tuple)),
    grant_terms=grant_terms,
    failures_to_down=st.integers(1, 4),
    hold_down_s=st.sampled_from([0.0, 30.0]),
    anti_flap_block_s=st.sampled_from([0.0, 100.0, 3600.0]),
    handback_hold_s=st.sampled_from([0.0, 60.0, 600.0]),
    auto_handback=st.booleans(),
    require_approval=st.booleans(),
    flap_samples=st.sampled_from([1, 5, 21]),
)


@st.composite
def topologies(draw: st.DrawFn) -> State:
    names = [f"o{i}" for i in range(draw(st.integers(4, 6)))]
    offices = {}
    for name in names:
        others = [n for n in names if n != name] + ["zz"]  # "zz": an alternate missing from the inventory
        alternates = draw(st.lists(st.sampled_from(others), max_size=3, unique=True))
        offices[name] = OfficeState(office=name, alternates=tuple(alternates))
    return State(offices=MappingProxyType(offices))


def draw_event(data: st.DataObject, state: State, now: float) -> Event:
    names = sorted(state.offices)
    office = data.draw(st.sampled_from([*names * 4, "zz"]))
    current = state.offices.get(office)
    kind = data.draw(
        st.sampled_from(
            ["observed"] * 6
            + ["ticked"] * 4
            + ["declared", "handback", "acked", "finished"] * 2
            + ["pause", "shadow", "lease", "stopping", "config", "round", "reported"]
            + ["approve"] * 4
            + ["deny", "abort", "resolve"]
        )
    )
    if kind == "observed":
        verdicts = [OfficeVerdict.DOWN] * 3 + [OfficeVerdict.HEALTHY] * 3 + list(OfficeVerdict)
        pending = sorted(current.pending) if current is not None else []
        answering = data.draw(st.sets(st.sampled_from(pending))) if pending else set()
        return OfficeObserved(office, data.draw(st.sampled_from(verdicts)), "detail", frozenset(answering))
    if kind == "stopping":
        return Stopping()
    if kind == "round":
        verdicts = [OfficeVerdict.DOWN] * 3 + [OfficeVerdict.HEALTHY] * 3 + list(OfficeVerdict)
        chosen = data.draw(st.lists(st.sampled_from(names), max_size=3, unique=True))
        votes = {
            o: {v: (data.draw(st.sampled_from(verdicts)), "detail") for v in ("v1", "v2", "v3")}
            for o in chosen
        }
        return RoundObserved(MappingProxyType(votes), quorum=data.draw(st.integers(1, 3)))
    if kind == "reported":
        # What a leading vantage published: any phase, any alternate, a run there or not.
        chosen = data.draw(st.lists(st.sampled_from(names), max_size=3, unique=True))
        offices = {
            o: replace(
                state.offices[o],
                phase=data.draw(st.sampled_from(list(Phase))),
                alternate=data.draw(st.sampled_from([None, *names, "zz"])),
                run_id=data.draw(st.sampled_from([None, "their-run"])),
                run_kind=data.draw(st.sampled_from([None, *RunKind])),
                verdict=data.draw(st.sampled_from(list(OfficeVerdict))),
            )
            for o in chosen
        }
        return LeaderReported(
            "v2", data.draw(st.integers(0, 9)), MappingProxyType(offices), paused=data.draw(st.booleans())
        )
    if kind == "config":
        chains = {name: o.alternates for name, o in state.offices.items()}
        return ConfigLoaded(MappingProxyType(chains), shadow=data.draw(st.booleans()))
    if kind == "ticked":
        return Ticked(office)
    if kind == "declared":
        until = data.draw(st.one_of(st.none(), st.floats(now - 10, now + 1000)))
        to = data.draw(st.one_of(st.none(), st.none(), st.sampled_from([*names, "zz"])))
        who = data.draw(st.sampled_from(PEOPLE))
        grant = data.draw(st.sampled_from([None, "g1", "g2"]))
        return ClosureDeclared(office, who, "drill", until=until, to=to, grant=grant)
    if kind == "handback":
        who = data.draw(st.sampled_from(PEOPLE))
        return HandbackRequested(office, who, "reopened", data.draw(st.sampled_from([None, "g1", "g2"])))
    if kind in ("approve", "deny"):
        pending = (
            current.approval.id if current is not None and current.approval is not None else "approval-x"
        )
        approval_id = data.draw(st.sampled_from([pending, pending, pending, "approval-x"]))
        who = data.draw(st.sampled_from(PEOPLE))
        if kind == "approve":
            return ApprovalGiven(office, approval_id, who)
        return ApprovalDenied(office, approval_id, who, "no")
    if kind == "abort":
        running = [r for r in (current.run_id, current.catchup_id) if r] if current is not None else []
        return AbortRequested(office, data.draw(st.sampled_from([*running, "stale"])), "op", "stop")
    if kind == "resolve":
        alternate = data.draw(st.sampled_from([None, *names, "zz"]))
        return PhaseResolved(office, data.draw(st.sampled_from(list(Phase))), "root", "checked", alternate)
    if kind == "acked":
        return Acked(office, "op")
    if kind == "finished":
        run_id = current.run_id if current is not None and current.run_id else "stale"
        catchup = current.catchup_id if current is not None and current.catchup_id else run_id
        run_id = data.draw(st.sampled_from([run_id, run_id, catchup, catchup, "stale"]))
        run_kind = current.run_kind if current is not None and current.run_kind else RunKind.HANDOVER
        run_kind = data.draw(st.sampled_from([run_kind, run_kind, *RunKind]))
        devices = [f"{office}-d{i}" for i in range(3)]
        pending = frozenset(data.draw(st.sets(st.sampled_from(devices))))
        done = frozenset(data.draw(st.sets(st.sampled_from(devices)))) - pending
        return RunFinished(office, run_id, run_kind, ok=data.draw(st.booleans()), pending=pending, done=done)
    flag = data.draw(st.booleans())
    if kind == "pause":
        return PauseSet(flag, "op")
    if kind == "shadow":
        return ShadowSet(flag, "op")
    return LeaseChanged(
        held=data.draw(st.sampled_from([True, True, False])),
        epoch=data.draw(st.integers(0, 9)),
        leader=data.draw(st.sampled_from([None, "v2", "v3"])),
    )


def eligible_alternate(state: State, office: OfficeState) -> bool:
    return any(
        (alt := state.offices.get(name)) is not None
        and name != office.office
        and alt.phase is Phase.OPEN
        and alt.verdict not in (OfficeVerdict.DOWN, OfficeVerdict.UNREACHABLE)
        for name in office.alternates
    )


def check_alerts_raised_once(before: State, after: State, actions: tuple[Action, ...]) -> None:
    """Office alerts are raised only when down, cleared only when up; `alerts` follows them."""
    expected = {name: set(o.alerts) for name, o in before.offices.items()}
    for action in actions:
        if isinstance(action, RaiseAlert | ClearAlert) and action.office is None:
            assert Alert.STORM_GUARD == action.alert
            assert isinstance(action, RaiseAlert) == after.storm != before.storm
            continue
        if isinstance(action, RaiseAlert):
            assert action.office is not None
            assert action.alert not in expected[action.office], f"{action.alert} raised twice"
            expected[action.office].add(action.alert)
        elif isinstance(action, ClearAlert):
            assert action.office is not None
            assert action.alert in expected[action.office], f"{action.alert} cleared while not up"
            expected[action.office].discard(action.alert)
    assert expected == {name: set(o.alerts) for name, o in after.offices.items()}


def check_step(before: State, event: Event, policy: Policy, now: float) -> State:
    t = step(before, event, policy, now)
    after = t.state
    assert t.reason, "every transition has a reason"
    assert t == step(before, event, policy, now), "step is deterministic"

    for name, was in before.offices.items():
        if name not in after.offices:
            assert isinstance(event, ConfigLoaded), "only a configuration drops an office"
            continue
        now_phase = after.offices[name].phase
        if was.phase is not now_phase:
            if hasattr(event, "office"):
                assert name == event.office, "only the event's office changes phase"
            assert (was.phase, type(event).__name__, now_phase) in TRANSITIONS
    if not isinstance(event, ConfigLoaded):
        check_alerts_raised_once(before, after, t.actions)

    starts = [a for a in t.actions if isinstance(a, StartRun)]
    assert len(starts) == len({s.office for s in starts}) <= 1, "at most one run started per step"
    for run in starts:
        was, now_office = before.offices[run.office], after.offices[run.office]
        assert was.phase not in RUNNING, "never two runs for one office"
        assert was.catchup_id is None, "never two runs for one office (a catch-up is one)"
        assert not before.stopping, "nothing starts while Baton is stopping"
        assert before.leader, "nothing runs without the lease"
        assert not before.shadow, "shadow mode never emits a run"
        if run.devices is not None:  # a catch-up: the phase stays, the office knows its run
            assert (now_office.catchup_id, now_office.phase) == (run.run_id, was.phase)
            assert run.devices <= was.pending, "a catch-up hands over only pending devices"
            assert not before.paused, "catch-ups respect pause"
            assert not before.storm, "catch-ups respect the storm guard"
            continue
        assert (now_office.phase in RUNNING, now_office.run_id) == (True, run.run_id)
        operator = isinstance(event, ClosureDeclared | HandbackRequested)
        declared_handover = (
            run.kind is RunKind.HANDOVER
            and now_office.closure is not None
            and now_office.closure.kind == "declared"
        )
        if run.kind is RunKind.HANDOVER:
            assert run.alternate != run.office, "an office is never its own alternate"
            assert Phase.OPEN is before.offices[run.alternate].phase, (
                "the alternate is OPEN (not closed, not handed over)"
            )
        rehome = run.previous is not None and was.phase is Phase.HANDED_OVER
        if after.storm:
            assert operator or declared_handover, "a storm freezes automatic runs"
        if not operator and not declared_handover:
            assert not before.paused, "automatic runs respect pause"
            if not rehome:  # a re-home moves a handover whose alternate closed: urgent, not a flap
                assert not now_office.flapping, "automatic runs respect flapping"
                assert was.blocked_until is None or was.blocked_until <= now, (
                    "automatic runs respect anti-flap"
                )

    # Cascades: an office operated by a closed (or handed-over, or failed) office is never left
    # so without a run or an alert, once it is settled (its own observation or tick).
    settled = before.offices.get(getattr(event, "office", ""))
    # A follower that knows the leader mirrors it: time moves no phase there, and cascades and
    # TTLs are the leader's to act on (what it reports is adopted).
    following = not before.leader and before.leader_elsewhere is not None
    if following and isinstance(event, Ticked):
        assert {n: o.phase for n, o in before.offices.items()} == {
            n: o.phase for n, o in after.offices.items()
        }, "a follower's clock decides nothing"
    if isinstance(event, OfficeObserved | Ticked) and settled is not None and not following:
        office_after = after.offices[settled.office]
        operator_office = after.offices.get(office_after.alternate or "")
        lost = operator_office is None or operator_office.phase in (
            Phase.CLOSED,
            Phase.HANDING_OVER,
            Phase.HANDED_OVER,
            Phase.FAILED,
        )
        if office_after.phase is Phase.HANDED_OVER and lost:
            aborts = [a for a in t.actions if isinstance(a, AbortRun)]
            assert Alert.OPERATED_BY_CLOSED in office_after.alerts or aborts, (
                f"{settled.office} left operated by {office_after.alternate}: {t.reason}"
            )

    # An operator's declaration with the lease, outside shadow mode, with an eligible alternate always runs.
    if (
        isinstance(event, ClosureDeclared)
        and (office := before.offices.get(event.office)) is not None
        and office.phase in (Phase.OPEN, Phase.SUSPECT, Phase.CLOSED, Phase.FAILED)
        and event.to is None
        and (event.until is None or event.until > now)
        and before.leader
        and not before.shadow
        and not before.stopping
        and office.catchup_id is None
        and office.approval is None
        and rule_for(policy, office.office, RunKind.HANDOVER) is None
        and eligible_alternate(before, office)
    ):
        assert starts, f"declared closure did not run: {t.reason}"
    check_approvals(before, event, policy, now, t.state, starts)
    return after


def check_approvals(
    before: State, event: Event, policy: Policy, now: float, after: State, starts: list[StartRun]
) -> None:
    """Approvals: never skipped, never from the requester, never twice, never past their TTL,
    never a change of the kind of closure; grants end when their term says."""
    following = not before.leader and before.leader_elsewhere is not None  # the leader expires TTLs
    for run in starts:
        if run.devices is not None or run.previous is not None:
            continue  # catch-ups and re-homes follow a run that was approved (or needed none)
        if rule_for(policy, run.office, run.kind) is None:
            continue
        if run.kind is RunKind.HANDOVER:
            closure = after.offices[run.office].closure
            assert closure is not None
            assert closure.approved_by, f"handover without approval: {run.reason}"
        else:
            assert isinstance(event, ApprovalGiven | RunFinished), f"handback without approval: {run.reason}"
    for office in after.offices.values():
        request = office.approval
        if request is not None:
            assert request.requester not in request.approvers, "a requester never approves their own"
            assert len(set(request.approvers)) == len(request.approvers), "approvers are distinct"
            assert len(request.approvers) < request.required, "a complete approval is carried out at once"
        if office.aborting is not None:
            assert office.aborting in (office.run_id, office.catchup_id), "an abort names a run in progress"
    if isinstance(event, Ticked) and event.office in after.offices and not following:
        office = after.offices[event.office]
        assert office.approval is None or office.approval.expires > now, "a TTL really expires"
        assert after.expired_grants == tuple(
            sorted({t.grant for t in policy.grant_terms if t.until <= now})
        ), "grants end on time"
    if isinstance(event, ApprovalGiven | ApprovalDenied) and event.office in before.offices:
        was, now_office = before.offices[event.office], after.offices[event.office]
        request = was.approval
        if request is not None and not request.declared and was.closure and now_office.closure:
            assert was.closure.kind == now_office.closure.kind, (
                "an approval never changes the kind of closure"
            )


@SETTINGS
@given(state=topologies(), policy=policies, data=st.data())
def test_machine_invariants_hold_for_any_event_sequence(
    state: State, policy: Policy, data: st.DataObject
) -> None:
    """Safety holds at every step of any event sequence (the checks and their messages: `check_step`)."""
    now = 0.0
    for _ in range(data.draw(st.integers(1, 60))):
        now += data.draw(st.sampled_from([0.0, 1.0, 10.0, 30.0, 100.0, 700.0, 4000.0]))
        event = draw_event(data, state, now)
        note(f"{now}: {event}")
        state = check_step(state, event, policy, now)


# --- health ---------------------------------------------------------------------------------

PROTOCOLS = list(Protocol)


@st.composite
def capped_results(draw: st.DrawFn, threshold: int) -> list[bool]:
    """Probe results with no run of `threshold` or more failures in a row."""
    results: list[bool] = []
    for _ in range(draw(st.integers(0, 8))):
        results += [False] * draw(st.integers(0, threshold - 1)) + [True]
    return results + [False] * draw(st.integers(0, threshold - 1))


@SETTINGS
@given(
    results=st.lists(st.tuples(st.sampled_from(PROTOCOLS), st.booleans()), max_size=30),
    threshold=st.integers(1, 4),
)
def test_a_device_is_down_exactly_when_every_protocol_failed_enough(
    results: list[tuple[Protocol, bool]], threshold: int
) -> None:
    """DOWN ⇔ every probed protocol has ≥ failures_to_down consecutive failures."""
    health = DeviceHealth()
    for at, (protocol, ok) in enumerate(results):
        health = observe(health, Observation("d", protocol, ok, float(at), reason="timeout"))
    policy = Policy(failures_to_down=threshold)
    expected = bool(health.probes) and all(
        p.consecutive_failures >= threshold for p in health.probes.values()
    )
    assert expected == (device_verdict(health, policy).verdict is DeviceVerdict.DOWN)


INVENTORY = Inventory(
    offices=MappingProxyType({"o": Office("o", "o", "r", alternates=("p",)), "p": Office("p", "p", "r")}),
    devices=MappingProxyType(
        {
            "core": Device("core", "o", "core", "10.0.0.1", critical=True),
            "acc-1": Device("acc-1", "o", "access", "10.0.0.2", critical=True, parent="core"),
            "acc-2": Device("acc-2", "o", "access", "10.0.0.3", parent="core"),
        }
    ),
)


@SETTINGS
@given(data=st.data(), threshold=st.integers(1, 4))
def test_fewer_failures_than_the_threshold_never_start_a_run(data: st.DataObject, threshold: int) -> None:
    """Probes that never fail failures_to_down times in a row: no device DOWN, no office DOWN, no run."""
    policy = Policy(failures_to_down=threshold, hold_down_s=0.0)
    streams = {
        (device, protocol): data.draw(capped_results(threshold))
        for device in INVENTORY.devices
        for protocol in (Protocol.SNMP, Protocol.NETCONF)
    }
    healths = {device: DeviceHealth() for device in INVENTORY.devices}
    state = State(offices=MappingProxyType({"o": OfficeState("o", ("p",)), "p": OfficeState("p")}))
    for at in range(max(map(len, streams.values()), default=0)):
        for (device, protocol), results in streams.items():
            if at < len(results):
                obs = Observation(device, protocol, results[at], float(at), reason="timeout")
                healths[device] = observe(healths[device], obs)
        devices = judge_devices(INVENTORY, healths, policy)
        assert DeviceVerdict.DOWN not in {j.verdict for j in devices.values()}
        office = judge_office("o", INVENTORY, devices, policy)
        assert OfficeVerdict.DOWN is not office.verdict
        for event in (OfficeObserved("o", office.verdict, office.detail), Ticked("o")):
            t = step(state, event, policy, float(at) * 10)
            assert not any(isinstance(a, StartRun) for a in t.actions)
            state = t.state
        assert Phase.OPEN is state.offices["o"].phase
