"""The office state machine: `step(state, event, policy, now) -> Transition`.

Theory of operation
-------------------
`State` is one immutable snapshot: a phase per office plus the global flags (paused, shadow,
lease held, storm). `step` takes one event and returns the next snapshot, the actions the service
must carry out (after journaling the transition) and one human sentence saying what was decided
and why — including "nothing to do" outcomes. It never raises for bad input: an event for an
unknown office, a stale run result or an operator command that does not apply leaves the state
unchanged and says so. No I/O, no clock: `now` is an argument, so the same inputs always give
the same output (journal replay rebuilds the same state).

Phases (`TRANSITIONS` below lists every phase change the code makes, keyed by event name)::

    OPEN ──verdict DOWN──▶ SUSPECT ──held for hold_down_s──▶ CLOSED
    OPEN/SUSPECT ──declared by operator──▶ CLOSED
    SUSPECT ──verdict recovers──▶ OPEN
    CLOSED ──(approval if required) + alternate chosen──▶ HANDING_OVER ──run ok──▶ HANDED_OVER
    HANDING_OVER ──run failed → rolled back──▶ FAILED (needs an operator)
    HANDED_OVER ──handback (operator, or policy after healthy for handback_hold_s)──▶ HANDING_BACK
    HANDING_BACK ──ok──▶ OPEN

`OfficeObserved` records the verdict (history for flap detection, storm bookkeeping); then, like
`Ticked`, it *settles* the office: whatever depends on time or on guards (hold-down elapsed, a
blocked handover whose guards cleared, a handback hold elapsed, a declared `until` passed) is
re-evaluated on every observation and every tick. Entering CLOSED tries the handover in the same
step, so SUSPECT can go straight to HANDING_OVER with a `StartRun`.

Guards. An automatic (detected) action needs: the lease, not paused, storm guard off, no
anti-flap block, office not flapping, and for a handover no `require_approval`; shadow mode
turns the would-be `StartRun` into a WOULD_HAND_OVER alert. Operator commands (declared closure,
handback) bypass hold-down, anti-flap, flapping, approval, storm and pause, but never the lease and
never shadow mode. A blocked handover stays CLOSED with one alert naming the blocker; it is
retried on every settle.

Operators. Under an approval rule (`Policy.approvals`) a run waits as an `Approval` on its
office: Baton asks once per detected closure; an operator's declaration or handback asks and
changes nothing until approved. The last of N approvals from distinct people other than the
requester carries out exactly what was asked (the kind of closure never changes); a request
ends at its TTL (an alert), when denied, or when withdrawn (its office reopened, a run overtook
it, its requester's grant ended, an admin set the phase). `auto_proceed_s` lets a detected
closure still DOWN go on unanswered. Grants that end (`Policy.grant_terms`) are recorded on
`Ticked`. `AbortRequested` sends `AbortRun` (the run rolls back at a safe point); an admin's
`PhaseResolved` sets OPEN, CLOSED (held: no handover until asked) or HANDED_OVER, loudly.

Choices the design left open, taken as a NOC operator would want them:
- Alerts are raised once and cleared once (`OfficeState.alerts` remembers which are up); the
  blocker alert of a CLOSED office is replaced when the blocker changes, and a handback proposal
  is withdrawn when the office stops being HEALTHY.
- A declared closure without `until` is never handed back automatically (nor proposed): the
  building is closed until an operator says otherwise. With `until` in the past it is refused.
- A declared closure without the lease is still recorded (CLOSED): it is a fact, and the vantage
  acts on it once it holds the lease — unless another vantage is known to lead: then it is
  refused, naming that vantage (recorded here, nobody would act on it). A handback request
  without the lease is refused. So is every other operator command (pause, shadow, ack, approve,
  deny, abort, resolve) while another vantage is known to lead: the leader's next report would
  undo it here; the API forwards commands to the leader instead.
- In HANDED_OVER a new declaration re-labels the closure (e.g. detected → declared, which stops
  automatic handback); moving to a different alternate needs a handback first.
- Handback of a CLOSED office that no run ever touched reopens it without a run.
- Lost lease: `AbortRun` for every run in progress; the phase stays until its `RunFinished`.
- Storm: an office whose verdict *becomes* DOWN is recorded; the guard engages when the offices
  recorded within `storm_window_s` exceed the limits and clears only once the window holds none
  and the offices DOWN right now are within the limits. Storms hold offices in SUSPECT (Baton's
  own network is the suspect), and block automatic handovers and handbacks.
- Flapping needs at least `FLAP_MIN_SAMPLES` verdicts (or `flap_samples`, if smaller, and ≥ 2).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from itertools import pairwise
from types import MappingProxyType

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
from baton.core.grants import when as grants_when
from baton.core.model import (
    Approval,
    ApprovalRule,
    Closure,
    OfficeState,
    OfficeVerdict,
    Phase,
    Policy,
    RunKind,
    State,
)

FLAP_MIN_SAMPLES = 5

_OBSERVED = OfficeObserved.__name__
_ROUND = RoundObserved.__name__  # several vantages: observations combined, then as above
_REPORTED = LeaderReported.__name__  # a follower adopts the leader's phases
_TICKED = Ticked.__name__
_DECLARED = ClosureDeclared.__name__
_HANDBACK = HandbackRequested.__name__
_FINISHED = RunFinished.__name__
_ACKED = Acked.__name__
_APPROVED = ApprovalGiven.__name__
_RESOLVED = PhaseResolved.__name__
# The phases an admin may set by hand (`baton resolve`): runs set the others.
RESOLVABLE = (Phase.OPEN, Phase.CLOSED, Phase.HANDED_OVER)

_SETTLE_CHANGES = (
    (Phase.OPEN, Phase.SUSPECT),  # verdict DOWN
    (Phase.SUSPECT, Phase.CLOSED),  # DOWN held for hold_down_s, handover blocked
    (Phase.SUSPECT, Phase.HANDING_OVER),  # ...and handed over at once
    (Phase.CLOSED, Phase.OPEN),  # detected closure recovered; declared `until` passed, nothing handed over
    (Phase.CLOSED, Phase.HANDING_OVER),  # guards cleared
    (Phase.CLOSED, Phase.HANDING_BACK),  # declared `until` passed after a run touched the office
    (Phase.HANDED_OVER, Phase.HANDING_BACK),  # automatic handback
    (Phase.HANDED_OVER, Phase.HANDING_OVER),  # its alternate closed: re-homed (a cascade)
)

_RUNNING_PHASES = (Phase.HANDING_OVER, Phase.HANDING_BACK)

# Every phase change `step` can make: (from phase, event name, to phase).
TRANSITIONS: frozenset[tuple[Phase, str, Phase]] = frozenset(
    {
        # verdicts and time: settling runs on both observations and ticks
        *((p, t, q) for t in (_OBSERVED, _ROUND, _TICKED) for (p, q) in _SETTLE_CHANGES),
        # a SUSPECT office has a DOWN verdict until an observation says otherwise
        (Phase.SUSPECT, _OBSERVED, Phase.OPEN),
        (Phase.SUSPECT, _ROUND, Phase.OPEN),
        # operator commands
        *((p, _DECLARED, Phase.CLOSED) for p in (Phase.OPEN, Phase.SUSPECT, Phase.FAILED)),
        *(
            (p, _DECLARED, Phase.HANDING_OVER)
            for p in (Phase.OPEN, Phase.SUSPECT, Phase.CLOSED, Phase.FAILED)
        ),
        (Phase.CLOSED, _HANDBACK, Phase.OPEN),
        *((p, _HANDBACK, Phase.HANDING_BACK) for p in (Phase.CLOSED, Phase.HANDED_OVER, Phase.FAILED)),
        (Phase.FAILED, _ACKED, Phase.OPEN),
        # shadow mode ends (by command or baton.yaml): drill closures end with it
        *((Phase.CLOSED, e, Phase.OPEN) for e in (ShadowSet.__name__, ConfigLoaded.__name__)),
        # run results
        (Phase.HANDED_OVER, _FINISHED, Phase.HANDING_BACK),  # a catch-up ended, a handback waited
        # a run that never started (the process died first): decided again at once
        *((Phase.HANDING_OVER, _FINISHED, q) for q in (Phase.CLOSED, Phase.HANDED_OVER, Phase.OPEN)),
        *((Phase.HANDING_BACK, _FINISHED, q) for q in (Phase.HANDED_OVER, Phase.HANDING_OVER)),
        (Phase.HANDING_OVER, _FINISHED, Phase.HANDED_OVER),
        (Phase.HANDING_BACK, _FINISHED, Phase.OPEN),
        *((p, _FINISHED, Phase.FAILED) for p in (Phase.HANDING_OVER, Phase.HANDING_BACK)),
        # the last approval carries out what was asked: a declaration, a handover, a handback
        *(
            (p, _APPROVED, q)
            for p in (Phase.OPEN, Phase.SUSPECT, Phase.FAILED)
            for q in (Phase.CLOSED, Phase.HANDING_OVER)
        ),
        (Phase.CLOSED, _APPROVED, Phase.HANDING_OVER),
        *((p, _APPROVED, Phase.HANDING_BACK) for p in (Phase.CLOSED, Phase.HANDED_OVER, Phase.FAILED)),
        # a follower adopts the leader's view (a run there as its intent: never a running phase)
        *((p, _REPORTED, q) for p in Phase for q in Phase if q not in _RUNNING_PHASES and p is not q),
        # ...and comes to lead while that run was under way there: it takes the run over (its
        # records are shared), or, a run it knows nothing of, leaves the office to an operator
        (Phase.CLOSED, LeaseChanged.__name__, Phase.HANDING_OVER),
        (Phase.HANDED_OVER, LeaseChanged.__name__, Phase.HANDING_BACK),
        *(
            (p, LeaseChanged.__name__, Phase.FAILED)
            for p in (Phase.OPEN, Phase.SUSPECT, Phase.CLOSED, Phase.HANDED_OVER)
        ),
        # an admin's resolve, after checking the devices by hand
        *(
            (p, _RESOLVED, q)
            for p in (Phase.OPEN, Phase.SUSPECT, Phase.CLOSED, Phase.HANDED_OVER, Phase.FAILED)
            for q in RESOLVABLE
            if p is not q
        ),
    }
)

# Alerts that say why a CLOSED office is not handed over: at most one is up at a time.
_BLOCKER_ALERTS = (
    Alert.AUTOMATION_BLOCKED,
    Alert.AWAITING_APPROVAL,
    Alert.NO_ALTERNATE,
    Alert.WOULD_HAND_OVER,
)
# Alerts about the office's closure or runs: all cleared when a run starts or the office reopens.
_WORK_ALERTS = (*_BLOCKER_ALERTS, Alert.HANDBACK_PROPOSED, Alert.RUN_FAILED, Alert.APPROVAL_EXPIRED)
_RUNNING = (Phase.HANDING_OVER, Phase.HANDING_BACK)
_NOT_ELIGIBLE = (OfficeVerdict.DOWN, OfficeVerdict.UNREACHABLE)


@dataclass(frozen=True, slots=True)
class Transition:
    state: State
    actions: tuple[Action, ...]
    # one sentence, e.g. "office seoul-geumcheon DOWN for 30 s (6/8 critical devices down);
    # handing over to seoul-bangbae": the log line, the journal entry, what tests assert on
    reason: str


@dataclass(frozen=True, slots=True)
class _Ctx:
    state: State
    policy: Policy
    now: float


@dataclass(frozen=True, slots=True)
class _Outcome:
    office: OfficeState
    actions: tuple[Action, ...]
    reason: str


def step(state: State, event: Event, policy: Policy, now: float) -> Transition:
    """The next state, the actions to carry out and why, for one event at time `now`."""
    refused = _heard_by_the_leader(state, event)
    if refused is not None:
        return Transition(state, (), refused)
    if isinstance(event, PauseSet):
        return _on_pause(state, event)
    if isinstance(event, ShadowSet):
        return _on_shadow(
            state, event.shadow, f"shadow mode {'on' if event.shadow else 'off'} by {event.who}", now
        )
    if isinstance(event, LeaseChanged):
        return _on_lease(state, event, now)
    if isinstance(event, RoundObserved):
        return _on_round(state, event, policy, now)
    if isinstance(event, LeaderReported):
        return _on_reported(state, event)
    if isinstance(event, ConfigLoaded):
        return _on_config(state, event, now)
    if isinstance(event, Stopping):
        return Transition(
            replace(state, stopping=True),
            (),
            "stopping: no new run starts; runs in progress reach a safe point",
        )
    office = state.offices.get(event.office)
    if office is None:
        return Transition(state, (), f"{type(event).__name__} for unknown office {event.office!r} ignored")
    ctx = _Ctx(state, policy, now)
    if isinstance(event, OfficeObserved):
        return _on_observed(ctx, office, event)
    if isinstance(event, Ticked):
        state, grant_actions, grant_note = _track_grants(state, policy, now)
        office = state.offices[event.office]
        storm_state, storm_actions, storm_note = _track_storm(state, policy, now, None)
        ctx = _Ctx(storm_state, policy, now)
        outcome = _follow(ctx, office) or _approval_clock(ctx, office) or _settle(ctx, office)
        note = "; ".join(n for n in (grant_note, storm_note) if n)
        return _finish(ctx.state, outcome, grant_actions + storm_actions, note)
    if isinstance(event, ClosureDeclared):
        outcome = _on_declared(ctx, office, event)
    elif isinstance(event, HandbackRequested):
        outcome = _on_handback(ctx, office, event)
    elif isinstance(event, Acked):
        outcome = _on_acked(ctx, office, event)
    elif isinstance(event, ApprovalGiven):
        outcome = _on_approval_given(ctx, office, event)
    elif isinstance(event, ApprovalDenied):
        outcome = _on_approval_denied(ctx, office, event)
    elif isinstance(event, AbortRequested):
        outcome = _on_abort_requested(ctx, office, event)
    elif isinstance(event, PhaseResolved):
        outcome = _on_resolved(ctx, office, event)
    else:
        if office.aborting is not None and office.aborting == event.run_id:
            office = replace(office, aborting=None)  # the run it asked to stop has ended
        outcome = _on_run_finished(ctx, office, event)
    return _finish(state, outcome)


def _finish(state: State, outcome: _Outcome, extra: tuple[Action, ...] = (), note: str = "") -> Transition:
    offices = MappingProxyType({**state.offices, outcome.office.office: outcome.office})
    reason = f"{outcome.reason}; {note}" if note else outcome.reason
    return Transition(replace(state, offices=offices), extra + outcome.actions, reason)


# --- formatting ----------------------------------------------------------------------------


def _secs(seconds: float) -> str:
    return f"{seconds:.0f} s"


def _name(office: OfficeState) -> str:
    return f"office {office.office}"


def _verdict_text(office: OfficeState) -> str:
    detail = f" ({office.verdict_detail})" if office.verdict_detail else ""
    return f"{office.verdict}{detail}"


# --- alerts --------------------------------------------------------------------------------


def _raise(office: OfficeState, alert: Alert, message: str) -> tuple[OfficeState, tuple[Action, ...]]:
    if alert in office.alerts:
        return office, ()
    return replace(office, alerts=office.alerts | {alert}), (RaiseAlert(alert, office.office, message),)


def _clear(office: OfficeState, *alerts: Alert) -> tuple[OfficeState, tuple[Action, ...]]:
    up = sorted(a for a in alerts if a in office.alerts)
    if not up:
        return office, ()
    return replace(office, alerts=office.alerts - set(up)), tuple(ClearAlert(a, office.office) for a in up)


def _blocked(office: OfficeState, alert: Alert, reason: str) -> _Outcome:
    """CLOSED and not handed over, for `reason`: `alert` is the one blocker alert up."""
    office, cleared = _clear(office, *(a for a in _BLOCKER_ALERTS if a is not alert))
    office, raised = _raise(office, alert, reason)
    return _Outcome(office, cleared + raised, reason)


# --- global events -------------------------------------------------------------------------


def _heard_by_the_leader(state: State, event: Event) -> str | None:
    """Why an operator command is refused on a follower while another vantage leads (None: it is
    not). Decided here it would be undone by the leader's next report (`LeaderReported`): the
    leading vantage must hear it (the API forwards it there). Declarations and handbacks say the
    same in their own handlers."""
    if state.leader or not state.leader_elsewhere:
        return None
    if isinstance(event, PauseSet):
        asked = f"{'pause' if event.paused else 'resume'} by {event.who}"
    elif isinstance(event, ShadowSet):
        asked = f"shadow mode {'on' if event.shadow else 'off'} by {event.who}"
    elif isinstance(event, Acked):
        asked = f"ack of {event.office} by {event.who}"
    elif isinstance(event, ApprovalGiven):
        asked = f"approval {event.approval_id} by {event.who}"
    elif isinstance(event, ApprovalDenied):
        asked = f"denial of {event.approval_id} by {event.who}"
    elif isinstance(event, AbortRequested):
        asked = f"abort of run {event.run_id} by {event.who}"
    elif isinstance(event, PhaseResolved):
        asked = f"resolve of {event.office} to {event.phase} by {event.who}"
    else:
        return None
    return f"{asked} refused: {_no_lease(state)}"


def _on_pause(state: State, event: PauseSet) -> Transition:
    word = "paused" if event.paused else "resumed"
    if state.paused == event.paused:
        return Transition(state, (), f"automation already {word}; {event.who} changed nothing")
    tail = "" if event.paused else "; blocked handovers retry on the next tick"
    return Transition(replace(state, paused=event.paused), (), f"automation {word} by {event.who}{tail}")


def _on_shadow(state: State, shadow: bool, said: str, now: float) -> Transition:
    word = "on" if shadow else "off"
    if state.shadow == shadow:
        return Transition(state, (), f"shadow mode already {word}; {said.split(' by ')[-1]} changed nothing")
    if shadow:
        return Transition(
            replace(state, shadow=True), (), f"{said}: Baton decides and alerts but runs nothing"
        )
    # Shadow means drill: nothing decided in shadow mode is carried out once it ends.
    offices = dict(state.offices)
    actions: list[Action] = []
    ended = []
    for office in state.offices.values():
        if office.phase is Phase.CLOSED and office.closure is not None and office.closure.drill:
            reopened, cleared = _clear(
                replace(office, phase=Phase.OPEN, since=now, closure=None, alternate=None), *_WORK_ALERTS
            )
            offices[office.office] = reopened
            actions.extend(cleared)
            ended.append(office.office)
    tail = "; drill closure(s) ended, declare again to hand over: " + ", ".join(ended) if ended else ""
    return Transition(
        replace(state, shadow=False, offices=MappingProxyType(offices)),
        tuple(actions),
        f"{said}: Baton acts again{tail}",
    )


def _on_config(state: State, event: ConfigLoaded, now: float) -> Transition:
    """Start or reload: the inventory's offices and chains, and the rule for `shadow`: the value
    in baton.yaml applies when it differs from the one last loaded; otherwise the last operator
    command stands (a restart changes nothing)."""
    offices: dict[str, OfficeState] = {}
    added = []
    for office_id, alternates in event.offices.items():
        known = state.offices.get(office_id)
        if known is None:
            added.append(office_id)
        offices[office_id] = replace(known or OfficeState(office=office_id), alternates=tuple(alternates))
    dropped = []
    for office_id, known in state.offices.items():
        if office_id in offices:
            continue
        if known.phase in _RUNNING or known.catchup_id is not None:
            offices[office_id] = known  # kept until its run is finished
        else:
            dropped.append(office_id)
    notes = [f"{len(offices)} office(s)"]
    if added and state.offices:
        notes.append("new: " + ", ".join(sorted(added)))
    if dropped:
        notes.append("no longer in the inventory: " + ", ".join(sorted(dropped)))
    loaded = replace(state, offices=MappingProxyType(offices), stopping=False)
    reason = "configuration loaded: " + "; ".join(notes)
    if state.config_shadow == event.shadow:
        return Transition(loaded, (), reason)
    loaded = replace(loaded, config_shadow=event.shadow)
    shadowed = _on_shadow(
        loaded, event.shadow, f"shadow mode {'on' if event.shadow else 'off'} by baton.yaml", now
    )
    return Transition(shadowed.state, shadowed.actions, f"{reason}; {shadowed.reason}")


def _on_lease(state: State, event: LeaseChanged, now: float) -> Transition:
    if event.held:
        epoch = max(state.epoch, event.epoch)
        said = f" (epoch {epoch})" if event.epoch else ""
        offices = dict(state.offices)
        alerts: list[Action] = []
        failed: list[str] = []
        taken_over: list[str] = []
        for office in state.offices.values():
            if office.remote_run is None or state.leader or office.phase in _RUNNING:
                continue
            gone = replace(office, since=now, remote_run=None, remote_run_id=None, remote_run_kind=None)
            kind = office.remote_run_kind
            # Only a handover can be under way from CLOSED, a handback from HANDED_OVER: a report
            # whose kind disagrees with its phase names a run this vantage cannot place.
            if office.remote_run_id is not None and kind is not None and kind is _UNDER_WAY.get(office.phase):
                # The leader stopped in the middle of a run it shared: this vantage finishes that
                # run (the takeover recovers it from etcd's records and reports its result).
                running = Phase.HANDING_OVER if kind is RunKind.HANDOVER else Phase.HANDING_BACK
                run_id = office.remote_run_id
                offices[office.office] = replace(gone, phase=running, run_id=run_id, run_kind=kind)
                taken_over.append(f"{office.office} ({office.remote_run})")
                continue
            # A run this vantage cannot know: its devices are where that run left them. Not
            # guessed at: FAILED, for an operator.
            why = (
                f"{_name(office)}: {office.remote_run} was under way when that vantage stopped leading; "
                "the devices are where it left them: check them, then `baton handover` or "
                "`baton handback` finishes it"
            )
            offices[office.office], raised = _raise(replace(gone, phase=Phase.FAILED), Alert.RUN_FAILED, why)
            alerts.extend(raised)
            failed.append(office.office)
        taken = f"; FAILED (a run of the last leader under way): {', '.join(failed)}" if failed else ""
        if taken_over:
            taken += f"; the last leader's runs taken over: {', '.join(taken_over)}"
        return Transition(
            replace(
                state, offices=MappingProxyType(offices), leader=True, leader_elsewhere=None, epoch=epoch
            ),
            tuple(alerts),
            f"lease held{said}; blocked handovers retry on the next tick{taken}",
        )
    elsewhere = event.leader
    if not state.leader and elsewhere != state.leader_elsewhere:
        # Following: who leads changed (nothing of ours was running).
        who = f"vantage {elsewhere} leads" if elsewhere else "no vantage leads"
        return Transition(replace(state, leader_elsewhere=elsewhere), (), f"lease not held; {who}")
    # Re-sent even if the lease was already lost: aborting twice is harmless, a run left going is not.
    aborts = tuple(
        AbortRun(o.office, run_id, "lease lost")
        for o in state.offices.values()
        for run_id in (o.run_id if o.phase in _RUNNING else None, o.catchup_id)
        if run_id is not None
    )
    if not aborts:
        return Transition(
            replace(state, leader=False, leader_elsewhere=elsewhere), (), "lease lost; no run in progress"
        )
    runs = ", ".join(a.run_id for a in aborts)
    return Transition(
        replace(state, leader=False, leader_elsewhere=elsewhere),
        aborts,
        f"lease lost; aborting run(s) {runs} (phases stay until their results arrive)",
    )


# --- observations, flapping and the storm guard -------------------------------------------


def _on_observed(ctx: _Ctx, office: OfficeState, event: OfficeObserved) -> Transition:
    policy, now = ctx.policy, ctx.now
    changed = event.verdict is not office.verdict
    office = replace(
        office,
        verdict=event.verdict,
        verdict_since=now if changed else office.verdict_since,
        verdict_detail=event.detail,
        history=(*office.history, event.verdict)[-max(1, policy.flap_samples) :],
        ready=office.pending & event.answering,
    )
    office, flap_actions, flap_note = _track_flapping(office, policy)
    state = replace(ctx.state, offices=MappingProxyType({**ctx.state.offices, office.office: office}))
    newly_down = office.office if changed and event.verdict is OfficeVerdict.DOWN else None
    state, storm_actions, storm_note = _track_storm(state, policy, now, newly_down)
    note = "; ".join(n for n in (flap_note, storm_note) if n)
    return _finish(state, _settle(_Ctx(state, policy, now), office), flap_actions + storm_actions, note)


# --- several vantages: quorum verdicts -----------------------------------------------------

_RANK = {
    OfficeVerdict.HEALTHY: 0,
    OfficeVerdict.DEGRADED: 1,
    OfficeVerdict.UNREACHABLE: 2,
    OfficeVerdict.UNKNOWN: 3,
    OfficeVerdict.DOWN: 4,
}


def abstaining(votes: Mapping[str, Mapping[str, tuple[OfficeVerdict, str]]]) -> frozenset[str]:
    """Vantages that see most offices DOWN (at least two): the likelier culprit is their own
    network, not the offices (memberlist's Lifeguard: suspect yourself first)."""
    seen: dict[str, list[OfficeVerdict]] = {}
    for by_vantage in votes.values():
        for vantage, (verdict, _) in by_vantage.items():
            seen.setdefault(vantage, []).append(verdict)
    return frozenset(
        v
        for v, verdicts in seen.items()
        if (down := verdicts.count(OfficeVerdict.DOWN)) >= 2 and down * 2 > len(verdicts)
    )


def combine(
    by_vantage: Mapping[str, tuple[OfficeVerdict, str]], quorum: int, abstain: frozenset[str] = frozenset()
) -> tuple[OfficeVerdict, str, bool]:
    """One office's verdict from the vantages that watch it: DOWN only when a quorum of them says
    so; DOWN from some while the others see it up is UNREACHABLE from those (no closure, split);
    else the best verdict a majority gives. Returns (verdict, detail, split)."""
    voting = {v: vd for v, vd in by_vantage.items() if v not in abstain}
    if not voting:
        return OfficeVerdict.UNKNOWN, "no vantage's verdict (all abstain: they see most offices down)", False
    down = sorted(v for v, (verdict, _) in voting.items() if verdict is OfficeVerdict.DOWN)
    up = sorted(v for v, (verdict, _) in voting.items() if verdict is not OfficeVerdict.DOWN)
    skipped = (
        f"; abstaining: {', '.join(sorted(abstain & set(by_vantage)))}" if abstain & set(by_vantage) else ""
    )
    if len(down) >= quorum:
        detail = next(d for v, (verdict, d) in sorted(voting.items()) if verdict is OfficeVerdict.DOWN)
        return (
            OfficeVerdict.DOWN,
            f"{detail} (DOWN from {len(down)}/{len(voting)} vantages: {', '.join(down)}){skipped}",
            False,
        )
    if down:
        views = ", ".join(f"{voting[v][0]} from {v}" for v in up)
        return (
            OfficeVerdict.UNREACHABLE,
            f"DOWN from {', '.join(down)} only (quorum {quorum}); {views}{skipped}",
            True,
        )
    best = sorted(up, key=lambda v: (_RANK[voting[v][0]], v))
    verdicts = [voting[v][0] for v in best]
    chosen = max(set(verdicts), key=lambda verdict: (verdicts.count(verdict), -_RANK[verdict]))
    detail = next(d for v in best if voting[v][0] is chosen for d in (voting[v][1],))
    return chosen, detail + skipped, False


def _on_round(state: State, event: RoundObserved, policy: Policy, now: float) -> Transition:
    """Every office judged from every vantage's verdict, then observed as one verdict each."""
    if not state.leader and state.leader_elsewhere:
        there = state.leader_elsewhere
        return Transition(state, (), f"round ignored: vantage {there} leads, its reported state is adopted")
    before = state
    abstain = abstaining(event.votes)
    actions: list[Action] = []
    reasons: list[str] = []
    for office_id in sorted(event.votes):
        office = state.offices.get(office_id)
        if office is None:
            continue
        verdict, detail, split = combine(event.votes[office_id], event.quorum, abstain)
        office, alerted = (
            _raise(office, Alert.SPLIT_VIEW, f"office {office_id}: {detail}; not closing")
            if split
            else _clear(office, Alert.SPLIT_VIEW)
        )
        state = replace(state, offices=MappingProxyType({**state.offices, office_id: office}))
        answering = event.answering.get(office_id, frozenset())
        t = _on_observed(
            _Ctx(state, policy, now), office, OfficeObserved(office_id, verdict, detail, answering)
        )
        if alerted or t.actions or t.state.offices[office_id].phase is not office.phase:
            reasons.append(t.reason)
        actions.extend(alerted)
        actions.extend(t.actions)
        state = t.state
    reason = (
        "; ".join(reasons)
        if reasons
        else f"round of {len(event.votes)} office(s) from the vantages: nothing changes"
    )
    # One office may clear the storm guard and the next engage it again within the round: the
    # alert is raised or cleared once, by what the round did as a whole.
    storm = [a for a in actions if isinstance(a, RaiseAlert | ClearAlert) and a.alert is Alert.STORM_GUARD]
    if len(storm) > 1:
        actions = [a for a in actions if a not in storm]
        if state.storm != before.storm:
            actions.append(storm[-1])
    return Transition(state, tuple(actions), reason)


_INTENT = {Phase.HANDING_OVER: Phase.CLOSED, Phase.HANDING_BACK: Phase.HANDED_OVER}
_UNDER_WAY = {Phase.CLOSED: RunKind.HANDOVER, Phase.HANDED_OVER: RunKind.HANDBACK}  # by the intent


def _on_reported(state: State, event: LeaderReported) -> Transition:
    """A follower takes the leader's view of every office it reported (see `LeaderReported`)."""
    if state.leader:
        return Transition(state, (), f"state reported by {event.leader} ignored: this vantage leads")
    offices = dict(state.offices)
    changed = []
    for office_id, theirs in sorted(event.offices.items()):
        mine = offices.get(office_id)
        if mine is None:
            continue
        running = theirs.phase in _INTENT
        adopted = replace(
            theirs,
            alternates=mine.alternates,  # the chain is this vantage's configuration
            phase=_INTENT.get(theirs.phase, theirs.phase),
            remote_run=f"{theirs.run_kind} run {theirs.run_id} on {event.leader}" if running else None,
            remote_run_id=theirs.run_id if running else None,
            remote_run_kind=theirs.run_kind if running else None,
            # Runs live in the leader's journal (and etcd); alerts are raised and cleared by this
            # journal. A catch-up under way there is kept: if this vantage comes to lead before it
            # ends, it waits on that run, which its takeover finishes (`baton.runmirror`).
            run_id=None,
            run_kind=None,
            aborting=None,
            alerts=mine.alerts,
        )
        if adopted != mine:
            offices[office_id] = adopted
            said = f" ({theirs.phase} there)" if running else ""
            changed.append(f"{office_id} {adopted.phase}{said}")
    new = replace(
        state,
        offices=MappingProxyType(offices),
        paused=event.paused,
        shadow=event.shadow,
        storm=event.storm,
        recent_down=event.recent_down,
        leader_elsewhere=event.leader,
        epoch=max(state.epoch, event.epoch),  # the floor of this vantage's own next term
    )
    what = "; ".join(changed) if changed else "no office changes"
    return Transition(new, (), f"state reported by the leading vantage {event.leader}: {what}")


def _track_flapping(office: OfficeState, policy: Policy) -> tuple[OfficeState, tuple[Action, ...], str]:
    history = office.history
    if len(history) < max(2, min(FLAP_MIN_SAMPLES, policy.flap_samples)):
        return office, (), ""
    changes = sum(1 for a, b in pairwise(history) if a is not b)
    pct = changes / (len(history) - 1) * 100
    if not office.flapping and pct >= policy.flap_high_pct:
        message = (
            f"{_name(office)} flapping: {pct:.0f}% state change over the last {len(history)} verdicts; "
            "automatic closure suppressed"
        )
        office, raised = _raise(replace(office, flapping=True), Alert.FLAPPING, message)
        return office, raised, message
    if office.flapping and pct < policy.flap_low_pct:
        office, cleared = _clear(replace(office, flapping=False), Alert.FLAPPING)
        return office, cleared, f"{_name(office)} no longer flapping ({pct:.0f}% state change)"
    return office, (), ""


def _is_storm(count: int, total: int, policy: Policy) -> bool:
    return count > policy.storm_max_offices or (count >= 2 and count / total > policy.storm_max_ratio)


def _track_storm(
    state: State, policy: Policy, now: float, newly_down: str | None
) -> tuple[State, tuple[Action, ...], str]:
    recent = tuple((at, o) for at, o in state.recent_down if now - at <= policy.storm_window_s)
    if newly_down is not None:
        recent = (*recent, (now, newly_down))
    total = len(state.offices)
    in_window = sorted({o for _, o in recent})
    if not state.storm:
        if _is_storm(len(in_window), total, policy):
            message = (
                f"storm guard engaged: {len(in_window)} of {total} offices DOWN within "
                f"{_secs(policy.storm_window_s)} ({', '.join(in_window)}); automation frozen"
            )
            return (
                replace(state, storm=True, recent_down=recent),
                (RaiseAlert(Alert.STORM_GUARD, None, message),),
                message,
            )
        return replace(state, recent_down=recent), (), ""
    down_now = sum(1 for o in state.offices.values() if o.verdict is OfficeVerdict.DOWN)
    if not recent and not _is_storm(down_now, total, policy):
        return (
            replace(state, storm=False, recent_down=recent),
            (ClearAlert(Alert.STORM_GUARD, None),),
            f"storm guard cleared: {down_now} of {total} offices DOWN, none newly within "
            f"{_secs(policy.storm_window_s)}",
        )
    return replace(state, recent_down=recent), (), ""


# --- settling: what time and guards allow now ---------------------------------------------


def _follow(ctx: _Ctx, office: OfficeState) -> _Outcome | None:
    """A follower that knows the leader takes its offices' phases from the leader's reports:
    time settles nothing here (a hold-down ending on two vantages would be two decisions)."""
    there = ctx.state.leader_elsewhere
    if ctx.state.leader or not there:
        return None
    office, cleared = _clear(office, *_BLOCKER_ALERTS)
    return _Outcome(
        office, cleared, f"{_name(office)} {office.phase}, as reported by the leading vantage {there}"
    )


def _settle(ctx: _Ctx, office: OfficeState) -> _Outcome:
    phase = office.phase
    if phase is Phase.OPEN:
        return _settle_open(ctx, office)
    if phase is Phase.SUSPECT:
        return _settle_suspect(ctx, office)
    if phase is Phase.CLOSED:
        return _settle_closed(ctx, office)
    if phase is Phase.HANDED_OVER:
        return _settle_handed_over(ctx, office)
    if phase in _RUNNING:
        return _Outcome(
            office,
            (),
            f"{_name(office)} {_verdict_text(office)}; {office.run_kind} run {office.run_id} in progress "
            f"for {_secs(ctx.now - office.since)}",
        )
    return _Outcome(
        office,
        (),
        f"{_name(office)} {_verdict_text(office)}; FAILED since {_secs(ctx.now - office.since)} ago, "
        "waiting for an operator (ack, handover or handback)",
    )


def _settle_open(ctx: _Ctx, office: OfficeState) -> _Outcome:
    if office.verdict is not OfficeVerdict.DOWN:
        caught = _try_catchup(ctx, office)
        if caught is not None:
            return caught
        return _Outcome(office, (), f"{_name(office)} {_verdict_text(office)}; OPEN")
    return _Outcome(
        replace(office, phase=Phase.SUSPECT, since=ctx.now),
        (),
        f"{_name(office)} {_verdict_text(office)}; SUSPECT, closing if DOWN holds for "
        f"{_secs(ctx.policy.hold_down_s)}",
    )


def _settle_suspect(ctx: _Ctx, office: OfficeState) -> _Outcome:
    held = ctx.now - office.since
    if office.verdict is not OfficeVerdict.DOWN:
        return _Outcome(
            replace(office, phase=Phase.OPEN, since=ctx.now),
            (),
            f"{_name(office)} recovered after {_secs(held)} ({_verdict_text(office)}); OPEN",
        )
    down_for = f"{_name(office)} DOWN for {_secs(held)}" + (
        f" ({office.verdict_detail})" if office.verdict_detail else ""
    )
    if held < ctx.policy.hold_down_s:
        return _Outcome(
            office, (), f"{down_for}; SUSPECT, closing at {_secs(ctx.policy.hold_down_s)} of DOWN"
        )
    if office.flapping:
        return _Outcome(office, (), f"{down_for}; closure suppressed: office is flapping")
    if ctx.state.storm:
        return _Outcome(
            office,
            (),
            f"{down_for}; closure suppressed: storm guard engaged (Baton's own network is suspect)",
        )
    closure = Closure(kind="detected", at=ctx.now, reason=f"DOWN for {_secs(held)}", drill=ctx.state.shadow)
    return _try_handover(ctx, replace(office, phase=Phase.CLOSED, since=ctx.now, closure=closure), down_for)


def _settle_closed(ctx: _Ctx, office: OfficeState) -> _Outcome:
    closure = office.closure
    if closure is None or closure.kind == "detected":
        if office.verdict is not OfficeVerdict.DOWN:
            return _reopen(
                ctx,
                office,
                f"{_name(office)} recovered ({_verdict_text(office)}) before a handover started; OPEN",
            )
        return _try_handover(ctx, office, f"{_name(office)} CLOSED ({_verdict_text(office)})")
    if closure.until is not None and closure.until <= ctx.now and _healthy_for(ctx, office) is not None:
        return _offer_handback(ctx, office)
    return _try_handover(ctx, office, f"{_name(office)} declared closed by {closure.who} ({closure.reason})")


def _settle_handed_over(ctx: _Ctx, office: OfficeState) -> _Outcome:
    where = f"{_name(office)} HANDED_OVER to {office.alternate}"
    rehomed = _rehome(ctx, office, where)
    if rehomed is not None:
        return rehomed
    caught = _try_catchup(ctx, office)
    if caught is not None:
        return caught
    closure = office.closure
    if (
        closure is not None
        and closure.kind == "declared"
        and (closure.until is None or closure.until > ctx.now)
    ):
        until = "until an operator hands it back" if closure.until is None else f"until {closure.until:.0f}"
        return _Outcome(office, (), f"{where}; declared closed by {closure.who} {until}")
    if _healthy_for(ctx, office) is None:
        then = "handback" if ctx.policy.auto_handback else "handback proposed to an operator"
        office, cleared = _clear(office, Alert.HANDBACK_PROPOSED)
        return _Outcome(
            office,
            cleared,
            f"{where}; {_verdict_text(office)}, {then} once HEALTHY for {_secs(ctx.policy.handback_hold_s)}",
        )
    return _offer_handback(ctx, office)


_LOST = (Phase.CLOSED, Phase.HANDING_OVER, Phase.HANDED_OVER, Phase.FAILED)


def _rehome(ctx: _Ctx, office: OfficeState, where: str) -> _Outcome | None:
    """The office that operates this one closed (a cascade): hand it over to the next eligible
    alternate of its own chain, by a run, under the automatic guards — or alert where to."""
    operator = ctx.state.offices.get(office.alternate or "")
    if operator is not None and operator.phase not in _LOST:
        return _clear_outcome(office, Alert.OPERATED_BY_CLOSED)
    state_of = "gone from the inventory" if operator is None else str(operator.phase)
    lost = f"{where}, which is {state_of}"
    if office.catchup_id is not None:
        # One run at a time: the catch-up (to the closed office) is stopped first.
        return _Outcome(
            office,
            (AbortRun(office.office, office.catchup_id, f"{office.alternate} is {state_of}: re-homing"),),
            f"{lost}; stopping catch-up run {office.catchup_id} before re-homing",
        )
    blocker = _guard_blocker(ctx)
    if blocker is not None:
        return _alert_outcome(office, Alert.OPERATED_BY_CLOSED, f"{lost}; not re-homing: {blocker}")
    skipped = {office.alternate} if office.alternate else set()
    alternate, why_none = _choose_alternate(ctx, replace(office, closure=None), exclude=skipped)
    if alternate is None:
        return _alert_outcome(office, Alert.OPERATED_BY_CLOSED, f"{lost}; not re-homed: {why_none}")
    if ctx.state.shadow:
        return _alert_outcome(
            office, Alert.OPERATED_BY_CLOSED, f"{lost}; shadow mode: would re-home to {alternate}"
        )
    outcome = _start_run(
        ctx,
        office,
        RunKind.HANDOVER,
        alternate,
        f"{lost}; re-homing to {alternate}",
        previous=office.alternate,
    )
    office2, cleared = _clear(outcome.office, Alert.OPERATED_BY_CLOSED)
    return _Outcome(office2, cleared + outcome.actions, outcome.reason)


def _clear_outcome(office: OfficeState, alert: Alert) -> _Outcome | None:
    """Nothing to do about `alert`; its clearing, if it was up (else None: carry on)."""
    if alert not in office.alerts:
        return None
    office, cleared = _clear(office, alert)
    return _Outcome(office, cleared, f"{_name(office)}: {alert.value} cleared")


def _alert_outcome(office: OfficeState, alert: Alert, reason: str) -> _Outcome:
    office, raised = _raise(office, alert, reason)
    return _Outcome(office, raised, reason)


CATCHUP_BACKOFF_S = 30.0
CATCHUP_MAX_BACKOFF_S = 900.0


def catchup_backoff_s(failures: int) -> float:
    """How long an office waits before its next catch-up after `failures` failed ones in a row."""
    return 0.0 if failures <= 0 else min(CATCHUP_MAX_BACKOFF_S, CATCHUP_BACKOFF_S * 2 ** (failures - 1))


def _try_catchup(ctx: _Ctx, office: OfficeState) -> _Outcome | None:
    """Devices a run left pending answer again: hand them over (or back) by a run of their own,
    under the automatic guards. None: nothing to catch up now."""
    if not office.ready or office.catchup_id is not None or office.pending_kind is None:
        return None
    if office.catchup_not_before is not None and ctx.now < office.catchup_not_before:
        return None
    if _guard_blocker(ctx) is not None or ctx.state.shadow or office.pending_alternate is None:
        return None
    devices = sorted(office.ready)
    run_id = f"catchup-{office.office}-{int(ctx.now * 1000)}"
    done = "handed over" if office.pending_kind is RunKind.HANDOVER else "handed back"
    reason = (
        f"{_name(office)}: {', '.join(devices[:10])} answer(s) again; catch-up run {run_id} to get "
        f"{len(devices)} of {len(office.pending)} pending device(s) {done}"
    )
    action = StartRun(
        office.office,
        office.pending_kind,
        run_id,
        office.pending_alternate,
        reason,
        devices=frozenset(devices),
        epoch=ctx.state.epoch,
    )
    return _Outcome(replace(office, catchup_id=run_id), (action,), reason)


def _healthy_for(ctx: _Ctx, office: OfficeState) -> float | None:
    """How long the office has been HEALTHY, if at least `handback_hold_s`."""
    if office.verdict is not OfficeVerdict.HEALTHY:
        return None
    held = ctx.now - office.verdict_since
    return held if held >= ctx.policy.handback_hold_s else None


def _offer_handback(ctx: _Ctx, office: OfficeState) -> _Outcome:
    """Healthy long enough: hand back on our own if policy and guards allow, else propose it once."""
    prefix = f"{_name(office)} HEALTHY for {_secs(ctx.now - office.verdict_since)}"
    if not ctx.policy.auto_handback:
        why = f"{prefix}; handback proposed (policy: operator hands back)"
    else:
        blocker = _automation_blocker(ctx, office) or ("shadow mode" if ctx.state.shadow else None)
        if blocker is None and office.alternate and rule_for(ctx.policy, office.office, RunKind.HANDBACK):
            # Two people decide a handback: Baton proposes it, an operator's request asks them.
            blocker = "a handback needs approvals (`baton handback` asks for them)"
        if blocker is None:
            return _hand_back(ctx, office, prefix)
        why = f"{prefix}; handback proposed, automatic handback blocked: {blocker}"
    office, raised = _raise(office, Alert.HANDBACK_PROPOSED, why)
    return _Outcome(office, raised, why)


def _no_lease(state: State) -> str:
    there = state.leader_elsewhere
    return "this vantage does not hold the lease" + (
        f" (vantage {there} leads: ask it, `baton status` there)" if there else ""
    )


def _guard_blocker(ctx: _Ctx) -> str | None:
    """Why no automatic run may start anywhere now (None: it may)."""
    if not ctx.state.leader:
        return _no_lease(ctx.state)
    if ctx.state.stopping:
        return "Baton is stopping"
    if ctx.state.paused:
        return "automation paused"
    if ctx.state.storm:
        return "storm guard engaged"
    return None


def _automation_blocker(ctx: _Ctx, office: OfficeState) -> str | None:
    """Why an automatic action on this office may not run now (None: it may)."""
    blocker = _guard_blocker(ctx)
    if blocker is not None:
        return blocker
    if office.blocked_until is not None and office.blocked_until > ctx.now:
        return f"anti-flap block for another {_secs(office.blocked_until - ctx.now)}"
    if office.flapping:
        return "office is flapping"
    return None


# --- handover and handback ----------------------------------------------------------------


def _try_handover(ctx: _Ctx, office: OfficeState, prefix: str) -> _Outcome:
    """A CLOSED office: start the handover if the guards allow, else say (and alert) why not."""
    declared = office.closure is not None and office.closure.kind == "declared"
    if office.closure is not None and office.closure.held:
        return _blocked(
            office,
            Alert.AUTOMATION_BLOCKED,
            f"{prefix}; CLOSED, not handing over: set CLOSED by {office.closure.who}'s resolve "
            f"(`baton handover {office.office}` hands it over)",
        )
    if not ctx.state.leader and ctx.state.leader_elsewhere:
        # Not blocked: the leader acts on its own view of the same votes (no alert from followers).
        office, cleared = _clear(office, *_BLOCKER_ALERTS)
        why = f"{prefix}; CLOSED, handed over by the leading vantage ({ctx.state.leader_elsewhere})"
        return _Outcome(office, cleared, why)
    if not ctx.state.leader:
        return _blocked(
            office, Alert.AUTOMATION_BLOCKED, f"{prefix}; CLOSED, not handing over: no lease on this vantage"
        )
    if ctx.state.stopping:
        return _blocked(
            office, Alert.AUTOMATION_BLOCKED, f"{prefix}; CLOSED, not handing over: Baton is stopping"
        )
    if not declared:
        blocker = _automation_blocker(ctx, office)
        if blocker is not None:
            return _blocked(
                office, Alert.AUTOMATION_BLOCKED, f"{prefix}; CLOSED, not handing over: {blocker}"
            )
        if ctx.policy.require_approval:
            return _blocked(
                office,
                Alert.AWAITING_APPROVAL,
                f"{prefix}; CLOSED, awaiting an operator's handover (policy requires approval)",
            )
    alternate, why_none = _choose_alternate(ctx, office)
    if alternate is None:
        return _blocked(office, Alert.NO_ALTERNATE, f"{prefix}; CLOSED, {why_none}")
    if ctx.state.shadow:
        return _blocked(
            office, Alert.WOULD_HAND_OVER, f"{prefix}; CLOSED, shadow mode: would hand over to {alternate}"
        )
    gate = _handover_gate(ctx, office, prefix, alternate)
    if gate is not None:
        return gate
    if office.catchup_id is not None:
        reason = f"{prefix}; CLOSED, stopping catch-up run {office.catchup_id} before handing over"
        return _Outcome(office, (AbortRun(office.office, office.catchup_id, "office closed again"),), reason)
    who = office.closure.who if declared and office.closure is not None and office.closure.who else "baton"
    return _start_run(
        ctx, office, RunKind.HANDOVER, alternate, f"{prefix}; handing over to {alternate}", who=who
    )


def choose_alternate(state: State, office_id: str, to: str | None = None) -> tuple[str | None, str]:
    """The alternate a handover of `office_id` would go to now (the operator's `to`, if any),
    or None and why: the same rule the machine decides with (dry runs ask this)."""
    office = state.offices.get(office_id)
    if office is None:
        return None, f"{office_id} is not a known office"
    closure = Closure(kind="declared", at=0.0, reason="plan", to=to)
    return _choose_alternate(_Ctx(state, Policy(), 0.0), replace(office, closure=closure))


def _choose_alternate(
    ctx: _Ctx, office: OfficeState, exclude: frozenset[str] | set[str] = frozenset()
) -> tuple[str | None, str]:
    """The first office of the chain that is OPEN and not DOWN or UNREACHABLE (the operator's
    choice, if any, instead), or None and why."""
    offices = ctx.state.offices
    chosen = office.closure.to if office.closure is not None else None
    if chosen is not None:
        other = offices.get(chosen)
        if other is None or other.phase is not Phase.OPEN:
            state_of = "unknown" if other is None else str(other.phase)
            return None, f"no alternate available: operator's choice {chosen} is {state_of}"
        return chosen, ""
    skipped: list[str] = []
    for name in office.alternates:
        other = offices.get(name)
        if name in exclude:
            skipped.append(f"{name} is the office that closed")
        elif other is None or name == office.office:
            skipped.append(f"{name} not a valid alternate")
        elif other.phase is not Phase.OPEN:
            skipped.append(f"{name} {other.phase}")
        elif other.verdict in _NOT_ELIGIBLE:
            skipped.append(f"{name} {other.verdict}")
        else:
            return name, ""
    return None, "no alternate available: " + (", ".join(skipped) or "no alternates configured")


def _start_run(
    ctx: _Ctx,
    office: OfficeState,
    kind: RunKind,
    alternate: str,
    reason: str,
    *,
    who: str = "baton",
    previous: str | None = None,
) -> _Outcome:
    base = f"{kind}-{office.office}-{int(ctx.now * 1000)}"
    # Two runs in the same millisecond (a retry right after a failure) must not share an id.
    run_id = base if base != office.run_id else f"{base}.1"
    phase = Phase.HANDING_OVER if kind is RunKind.HANDOVER else Phase.HANDING_BACK
    office = replace(
        office,
        phase=phase,
        since=ctx.now,
        run_id=run_id,
        run_kind=kind,
        alternate=alternate,
        previous_alternate=previous,
        # A run of the whole office supersedes whatever an earlier one left pending.
        pending=frozenset(),
        pending_kind=None,
        pending_alternate=None,
        ready=frozenset(),
        catchup_failures=0,
        catchup_not_before=None,
    )
    if office.approval is not None:  # whatever waited for approvals is overtaken by this run
        office = replace(
            office, approval=None, approval_ended=f"{office.approval.id} withdrawn: run {run_id} started"
        )
    office, cleared = _clear(office, *_WORK_ALERTS)
    action = StartRun(
        office.office, kind, run_id, alternate, reason, who=who, previous=previous, epoch=ctx.state.epoch
    )
    return _Outcome(office, (*cleared, action), reason)


def _hand_back(ctx: _Ctx, office: OfficeState, prefix: str, who: str = "baton") -> _Outcome:
    if office.alternate is None:
        return _reopen(ctx, office, f"{prefix}; nothing was handed over, OPEN without a run")
    if office.catchup_id is not None:
        # One run at a time: the catch-up is stopped (rolled back) first; the handback follows
        # when its result arrives.
        reason = f"{prefix}; stopping catch-up run {office.catchup_id} first, then handing back"
        return _Outcome(
            replace(office, handback_waiting=who),
            (AbortRun(office.office, office.catchup_id, "handback requested"),),
            reason,
        )
    return _start_run(
        ctx,
        office,
        RunKind.HANDBACK,
        office.alternate,
        f"{prefix}; handing back from {office.alternate}",
        who=who,
        previous=office.previous_alternate,
    )


def _reopen(ctx: _Ctx, office: OfficeState, reason: str) -> _Outcome:
    office = replace(office, phase=Phase.OPEN, since=ctx.now, closure=None, alternate=None)
    request = office.approval
    keep = request is not None and request.declared  # an operator's declaration still waits
    if request is not None and not keep:
        office = replace(
            office, approval=None, approval_ended=f"{request.id} withdrawn: {_name(office)} reopened"
        )
    office, cleared = _clear(
        office, *(a for a in _WORK_ALERTS if not (keep and a is Alert.AWAITING_APPROVAL))
    )
    return _Outcome(office, cleared, reason)


# --- operator commands and run results ----------------------------------------------------


def _on_declared(
    ctx: _Ctx, office: OfficeState, event: ClosureDeclared, approved_by: tuple[str, ...] = ()
) -> _Outcome:
    asked = f"closure of {office.office} declared by {event.who} ({event.reason})"

    def refuse(why: str) -> _Outcome:
        return _Outcome(office, (), f"{asked} refused: {why}")

    if not ctx.state.leader and ctx.state.leader_elsewhere:
        # Recorded here, nobody would act on it: the leading vantage must hear it.
        return refuse(_no_lease(ctx.state))
    if office.phase in _RUNNING:
        return refuse(f"{office.run_kind} run {office.run_id} in progress")
    if office.approval is not None:
        return refuse(_pending_text(office.approval))
    if event.until is not None and event.until <= ctx.now:
        return refuse(f"until {event.until:.0f} is not in the future")
    if event.to is not None:
        other = ctx.state.offices.get(event.to)
        if event.to == office.office:
            return refuse("an office cannot be its own alternate")
        if other is None:
            return refuse(f"{event.to} is not a known office")
        if other.phase is not Phase.OPEN:
            return refuse(f"{event.to} is {other.phase}, not OPEN")
        if other.verdict is not OfficeVerdict.HEALTHY:
            return refuse(f"{event.to} is {_verdict_text(other)}, not HEALTHY: it cannot take over")
    closure = Closure(
        kind="declared",
        at=ctx.now,
        reason=event.reason,
        who=event.who,
        until=event.until,
        to=event.to,
        drill=ctx.state.shadow,
        approved_by=approved_by,
    )
    if office.phase is Phase.HANDED_OVER:
        if event.to is not None and event.to != office.alternate:
            return refuse(f"already handed over to {office.alternate}; hand back first to move to {event.to}")
        return _Outcome(
            replace(office, closure=closure),
            (),
            f"{asked}: already HANDED_OVER to {office.alternate}, closure recorded as declared",
        )
    if not approved_by:
        asked_for = _ask_to_declare(ctx, office, event, asked)
        if asked_for is not None:
            return asked_for
    since = office.since if office.phase is Phase.CLOSED else ctx.now
    office, cleared = _clear(
        replace(office, phase=Phase.CLOSED, since=since, closure=closure), Alert.RUN_FAILED
    )
    outcome = _try_handover(ctx, office, f"{_name(office)} declared closed by {event.who} ({event.reason})")
    return replace(outcome, actions=cleared + outcome.actions)


def _on_handback(
    ctx: _Ctx, office: OfficeState, event: HandbackRequested, approved_by: tuple[str, ...] = ()
) -> _Outcome:
    asked = f"handback of {office.office} requested by {event.who} ({event.reason})"
    if office.phase in (Phase.OPEN, Phase.SUSPECT):
        return _Outcome(office, (), f"{asked} refused: {office.phase}, nothing is handed over")
    if office.phase in _RUNNING:
        return _Outcome(office, (), f"{asked} refused: {office.run_kind} run {office.run_id} in progress")
    if office.approval is not None:
        return _Outcome(office, (), f"{asked} refused: {_pending_text(office.approval)}")
    if ctx.state.shadow:
        return _Outcome(office, (), f"{asked} refused: shadow mode never runs a handback")
    if not ctx.state.leader:
        return _Outcome(office, (), f"{asked} refused: {_no_lease(ctx.state)}")
    if ctx.state.stopping:
        return _Outcome(office, (), f"{asked} refused: Baton is stopping (ask again once it is back)")
    if not approved_by and office.alternate is not None:
        rule = rule_for(ctx.policy, office.office, RunKind.HANDBACK)
        if rule is not None:
            request = _new_request(
                ctx, office, rule, RunKind.HANDBACK, event.who, event.reason, grant=event.grant
            )
            return _asked(office, request, f"{asked}: {_asking_text(request)}")
    return _hand_back(ctx, office, asked, event.who)


def _on_acked(ctx: _Ctx, office: OfficeState, event: Acked) -> _Outcome:
    office, cleared = _clear(office, Alert.PHASE_RESOLVED, Alert.APPROVAL_EXPIRED)
    if cleared:
        outcome = _on_acked(ctx, office, event)
        tail = ", ".join(a.alert.value for a in cleared if isinstance(a, ClearAlert))
        return _Outcome(
            outcome.office, cleared + outcome.actions, f"{outcome.reason}; alert(s) cleared: {tail}"
        )
    if office.phase is Phase.FAILED:
        return _reopen(
            ctx,
            office,
            f"{_name(office)} acknowledged by {event.who} after failed {office.run_kind} run "
            f"{office.run_id}; OPEN",
        )
    if office.blocked_until is not None and office.blocked_until > ctx.now:
        return _Outcome(
            replace(office, blocked_until=None),
            (),
            f"{_name(office)} acknowledged by {event.who}: anti-flap block lifted "
            f"({_secs(office.blocked_until - ctx.now)} early)",
        )
    return _Outcome(office, (), f"{_name(office)} acknowledged by {event.who}: nothing to lift")


def _on_run_finished(ctx: _Ctx, office: OfficeState, event: RunFinished) -> _Outcome:
    run = f"{event.kind} run {event.run_id} of {office.office}"
    if event.run_id == office.catchup_id and event.run_id is not None:
        return _on_catchup_finished(ctx, office, event)
    expected = Phase.HANDING_OVER if event.kind is RunKind.HANDOVER else Phase.HANDING_BACK
    if event.run_id != office.run_id or office.phase is not expected:
        return _Outcome(
            office,
            (),
            f"result of {run} ignored: not the run in progress ({office.phase}, run {office.run_id})",
        )
    detail = f" ({event.detail})" if event.detail else ""
    if not event.started:
        return _not_started(ctx, office, f"{run} never touched a device{detail}")
    if not event.ok:
        reason = f"{run} failed{detail} and was rolled back; FAILED, needs an operator"
        failed, raised = _raise(replace(office, phase=Phase.FAILED, since=ctx.now), Alert.RUN_FAILED, reason)
        return _Outcome(failed, raised, reason)
    blocked_until = ctx.now + ctx.policy.anti_flap_block_s
    block = f"automation on it blocked for {_secs(ctx.policy.anti_flap_block_s)}"
    pending = frozenset(event.pending)
    left = f", {len(pending)} device(s) pending until they answer" if pending else ""
    if event.kind is RunKind.HANDOVER:
        handed = replace(
            office,
            phase=Phase.HANDED_OVER,
            since=ctx.now,
            blocked_until=blocked_until,
            pending=pending,
            pending_kind=RunKind.HANDOVER if pending else None,
            pending_alternate=office.alternate if pending else None,
        )
        return _Outcome(
            handed, (), f"{run} to {office.alternate} succeeded{detail}; HANDED_OVER{left}, {block}"
        )
    reopened = _reopen(
        ctx,
        replace(office, blocked_until=blocked_until),
        f"{run} from {office.alternate} succeeded{detail}; OPEN{left}, {block}",
    )
    return replace(
        reopened,
        office=replace(
            reopened.office,
            pending=pending,
            pending_kind=RunKind.HANDBACK if pending else None,
            pending_alternate=office.alternate if pending else None,
            previous_alternate=None,
        ),
    )


def _not_started(ctx: _Ctx, office: OfficeState, why: str) -> _Outcome:
    """A run decided but never begun (the process died in between): back where the office was,
    and decided again from the facts of now, by the same rules and guards."""
    if office.phase is Phase.HANDING_BACK:
        back = replace(office, phase=Phase.HANDED_OVER, since=ctx.now)
    elif office.previous_alternate is not None:  # a re-home: still with the office it was leaving
        back = replace(
            office,
            phase=Phase.HANDED_OVER,
            since=ctx.now,
            alternate=office.previous_alternate,
            previous_alternate=None,
        )
    else:
        back = replace(office, phase=Phase.CLOSED, since=ctx.now, alternate=None)
    decided = _settle(ctx, back)
    return replace(decided, reason=f"{why}; {back.phase} again, deciding afresh: {decided.reason}")


def _on_catchup_finished(ctx: _Ctx, office: OfficeState, event: RunFinished) -> _Outcome:
    """A catch-up ended: what it handed over is no longer pending; a failure (rolled back) or
    devices silent again wait a growing backoff; a handback asked for meanwhile starts now."""
    still = office.pending - event.done
    tried = office.ready | event.done | event.pending
    clean = event.ok and not (still & tried)
    failures = 0 if clean else office.catchup_failures + 1
    office = replace(
        office,
        catchup_id=None,
        pending=still,
        pending_kind=office.pending_kind if still else None,
        pending_alternate=office.pending_alternate if still else None,
        ready=office.ready & still if clean else frozenset(),
        catchup_failures=failures,
        catchup_not_before=None if clean else ctx.now + catchup_backoff_s(failures),
    )
    done = f"catch-up run {event.run_id} of {office.office} {'succeeded' if event.ok else 'failed'}"
    tail = (
        f"; {len(still)} device(s) still pending"
        + ("" if clean else f", next try in {_secs(catchup_backoff_s(failures))}")
        if still
        else "; nothing pending"
    )
    reason = f"{done} ({event.detail}){tail}" if event.detail else done + tail
    if office.handback_waiting is not None:
        who = office.handback_waiting
        return _hand_back(ctx, replace(office, handback_waiting=None), reason, who)
    return _Outcome(office, (), reason)


# --- approvals, grants, abort and resolve -------------------------------------------------
#
# A run under an approval rule (`Policy.approvals`) waits as an `Approval` on its office: asked by
# Baton for a detected closure (once per closure), or by an operator's declaration or handback
# (nothing changes until approved). The last approval carries out exactly what was asked; the
# kind of closure never changes. A request ends when approved, denied, withdrawn (its office
# reopened, a run overtook it, its requester's grant ended, an admin set the phase) or at its
# TTL (an alert). `auto_proceed_s`: a detected closure still DOWN that long after asking goes on.


def rule_for(policy: Policy, office: str, kind: RunKind) -> ApprovalRule | None:
    """The approval rule for a `kind` run of `office` (the first that names it), if any."""
    return next((r for r in policy.approvals if office in r.offices and kind in r.kinds), None)


def _new_request(
    ctx: _Ctx,
    office: OfficeState,
    rule: ApprovalRule,
    kind: RunKind,
    requester: str,
    reason: str,
    *,
    declared: bool = False,
    until: float | None = None,
    to: str | None = None,
    grant: str | None = None,
    auto_proceed: bool = False,
) -> Approval:
    base = f"approval-{office.office}-{int(ctx.now * 1000)}"
    last = office.approval_ended.split(" ", 1)[0]
    # Ids are unique: a request asked in the same millisecond as the last one ended counts on.
    if last == base or last.startswith(base + "."):
        base = f"{base}.{int(last.rsplit('.', 1)[1]) + 1 if last != base else 1}"
    auto_at = ctx.now + rule.auto_proceed_s if auto_proceed and rule.auto_proceed_s is not None else None
    return Approval(
        id=base,
        kind=kind,
        requester=requester,
        reason=reason,
        at=ctx.now,
        expires=ctx.now + rule.ttl_s,
        required=rule.required,
        auto_proceed_at=auto_at,
        declared=declared,
        until=until,
        to=to,
        grant=grant,
    )


def _asking_text(request: Approval) -> str:
    others = "any operator" if request.requester == "baton" else f"people other than {request.requester}"
    auto = (
        f"; it proceeds on its own in {_secs(request.auto_proceed_at - request.at)} if the office is "
        "still DOWN"
        if request.auto_proceed_at is not None
        else ""
    )
    return (
        f"the {request.kind} needs {request.required} approval(s) from {others} within "
        f"{_secs(request.expires - request.at)}: `baton approve {request.id}`{auto}"
    )


def _pending_text(request: Approval) -> str:
    return (
        f"a {request.kind} waits for approval {request.id} (asked by {request.requester}, "
        f"{len(request.approvers)} of {request.required}): approve or deny it first"
    )


def _asked(office: OfficeState, request: Approval, reason: str) -> _Outcome:
    """`request` waits on `office`, with the AWAITING_APPROVAL alert (the expiry alert goes)."""
    office, cleared = _clear(replace(office, approval=request), Alert.APPROVAL_EXPIRED)
    outcome = _blocked(office, Alert.AWAITING_APPROVAL, reason)
    return replace(outcome, actions=cleared + outcome.actions)


def _end_request(office: OfficeState, ended: str) -> tuple[OfficeState, tuple[Action, ...]]:
    return _clear(replace(office, approval=None, approval_ended=ended), Alert.AWAITING_APPROVAL)


def _handover_gate(ctx: _Ctx, office: OfficeState, prefix: str, alternate: str) -> _Outcome | None:
    """None when the handover of this closure may start as far as approvals go; else why not."""
    closure = office.closure
    rule = rule_for(ctx.policy, office.office, RunKind.HANDOVER)
    if rule is None or closure is None or closure.approved_by:
        return None
    request = office.approval
    if request is not None:
        return _blocked(
            office,
            Alert.AWAITING_APPROVAL,
            f"{prefix}; CLOSED, the {request.kind} waits for approval {request.id} "
            f"({len(request.approvers)} of {request.required}, asked by {request.requester})",
        )
    if closure.approval is not None:
        ended = office.approval_ended or f"{closure.approval} ended"
        return _blocked(
            office,
            Alert.AUTOMATION_BLOCKED,
            f"{prefix}; CLOSED, not handing over: {ended} (`baton handover {office.office}` asks again)",
        )
    requester = closure.who if closure.kind == "declared" and closure.who else "baton"
    request = _new_request(
        ctx,
        office,
        rule,
        RunKind.HANDOVER,
        requester,
        closure.reason,
        auto_proceed=closure.kind == "detected",
    )
    office = replace(office, closure=replace(closure, approval=request.id))
    return _asked(
        office, request, f"{prefix}; CLOSED, would hand over to {alternate}: {_asking_text(request)}"
    )


def _ask_to_declare(ctx: _Ctx, office: OfficeState, event: ClosureDeclared, asked: str) -> _Outcome | None:
    """An operator's declaration under an approval rule waits for its approvals, changing nothing."""
    rule = rule_for(ctx.policy, office.office, RunKind.HANDOVER)
    if rule is None:
        return None
    request = _new_request(
        ctx,
        office,
        rule,
        RunKind.HANDOVER,
        event.who,
        event.reason,
        declared=True,
        until=event.until,
        to=event.to,
        grant=event.grant,
    )
    return _asked(office, request, f"{asked}: {_asking_text(request)}")


def _approval_clock(ctx: _Ctx, office: OfficeState) -> _Outcome | None:
    """Time passed for the request waiting on `office`: auto-proceed, or its TTL ran out."""
    request = office.approval
    if request is None:
        return None
    closure = office.closure
    if (
        request.auto_proceed_at is not None
        and ctx.now >= request.auto_proceed_at
        and office.phase is Phase.CLOSED
        and office.verdict is OfficeVerdict.DOWN
        and closure is not None
        and closure.kind == "detected"
    ):
        approvers = (*request.approvers, "auto-proceed")
        office, cleared = _end_request(office, f"{request.id} auto-proceeded at {grants_when(ctx.now)}")
        office = replace(office, closure=replace(closure, approved_by=approvers))
        prefix = (
            f"{_name(office)} still DOWN and approval {request.id} unanswered for "
            f"{_secs(ctx.now - request.at)}: proceeding without it (policy auto_proceed_s)"
        )
        outcome = _try_handover(ctx, office, prefix)
        return replace(outcome, actions=cleared + outcome.actions)
    if ctx.now < request.expires:
        return None
    message = (
        f"{_name(office)}: the {request.kind} asked by {request.requester} got "
        f"{len(request.approvers)} of {request.required} approval(s) within "
        f"{_secs(request.expires - request.at)}; approval {request.id} expired and the request ended"
    )
    office, cleared = _end_request(office, f"{request.id} expired at {grants_when(request.expires)}")
    office, raised = _raise(office, Alert.APPROVAL_EXPIRED, message)
    return _Outcome(office, cleared + raised, message)


def _check_request(ctx: _Ctx, office: OfficeState, approval_id: str) -> Approval | str:
    """The pending request `approval_id` of `office`, or why there is none to answer."""
    request = office.approval
    if request is None or request.id != approval_id:
        if office.approval_ended.startswith(approval_id + " "):
            return f"approval {office.approval_ended}"
        return f"no approval {approval_id} waits for office {office.office}"
    if ctx.now >= request.expires:
        return f"approval {request.id} expired at {grants_when(request.expires)}"
    return request


def _on_approval_given(ctx: _Ctx, office: OfficeState, event: ApprovalGiven) -> _Outcome:
    asked = f"approval {event.approval_id} by {event.who}"
    found = _check_request(ctx, office, event.approval_id)
    if isinstance(found, str):
        return _Outcome(office, (), f"{asked} refused: {found}")
    request = found
    if event.who == request.requester:
        return _Outcome(
            office, (), f"{asked} refused: {event.who} asked for it; approvals come from other people"
        )
    if event.who in request.approvers:
        return _Outcome(office, (), f"{asked} refused: {event.who} already approved it")
    approvers = (*request.approvers, event.who)
    if len(approvers) < request.required:
        return _Outcome(
            replace(office, approval=replace(request, approvers=approvers)),
            (),
            f"{asked} ({len(approvers)} of {request.required}) for the {request.kind} of {office.office} "
            f"asked by {request.requester}; {request.required - len(approvers)} more needed before "
            f"{grants_when(request.expires)}",
        )
    prefix = f"{asked} ({len(approvers)} of {request.required}, by {', '.join(approvers)})"
    office, cleared = _end_request(office, f"{request.id} approved by {', '.join(approvers)}")
    if request.kind is RunKind.HANDBACK:
        back = HandbackRequested(office.office, request.requester, request.reason, request.grant)
        outcome = _on_handback(ctx, office, back, approved_by=approvers)
    elif request.declared:
        declared = ClosureDeclared(
            office.office, request.requester, request.reason, request.until, request.to, request.grant
        )
        outcome = _on_declared(ctx, office, declared, approved_by=approvers)
    elif office.phase is Phase.CLOSED and office.closure is not None:
        closure = replace(office.closure, approved_by=approvers)
        outcome = _try_handover(ctx, replace(office, closure=closure), f"{_name(office)} CLOSED")
    else:
        outcome = _Outcome(office, (), f"{_name(office)} is {office.phase}: nothing to hand over")
    return _Outcome(outcome.office, cleared + outcome.actions, f"{prefix}: {outcome.reason}")


def _on_approval_denied(ctx: _Ctx, office: OfficeState, event: ApprovalDenied) -> _Outcome:
    asked = f"denial of {event.approval_id} by {event.who} ({event.reason})"
    found = _check_request(ctx, office, event.approval_id)
    if isinstance(found, str):
        return _Outcome(office, (), f"{asked} refused: {found}")
    request = found
    how = "withdrawn by its requester" if event.who == request.requester else f"denied by {event.who}"
    office, cleared = _end_request(office, f"{request.id} {how} ({event.reason})")
    if request.kind is RunKind.HANDOVER and not request.declared and office.phase is Phase.CLOSED:
        then = f"{office.office} stays CLOSED, not handed over (`baton handover {office.office}` asks again)"
    else:
        then = f"nothing runs; {office.office} stays {office.phase}"
    return _Outcome(
        office,
        cleared,
        f"the {request.kind} of {office.office} asked by {request.requester} {how} "
        f"({event.reason}): approval {request.id} ended; {then}",
    )


def _track_grants(state: State, policy: Policy, now: float) -> tuple[State, tuple[Action, ...], str]:
    """Grants whose `until` passed, journaled; a request asked under one of them is withdrawn."""
    expired = tuple(sorted({t.grant for t in policy.grant_terms if t.until <= now}))
    if expired == state.expired_grants:
        return state, (), ""
    newly = sorted(set(expired) - set(state.expired_grants))
    back = sorted(set(state.expired_grants) - set(expired))
    offices = dict(state.offices)
    actions: list[Action] = []
    withdrawn = []
    for office in state.offices.values():
        request = office.approval
        if request is not None and request.grant in newly:
            ended = f"{request.id} withdrawn: the grant {request.grant} of {request.requester} ended"
            offices[office.office], cleared = _end_request(office, ended)
            actions.extend(cleared)
            withdrawn.append(f"{request.id} ({office.office})")
    notes = []
    if newly:
        notes.append(f"grant(s) ended: {', '.join(newly)}")
    if withdrawn:
        notes.append(f"request(s) withdrawn with them: {', '.join(withdrawn)}")
    if back:
        notes.append(f"grant(s) no longer ended (extended or removed): {', '.join(back)}")
    new_state = replace(state, expired_grants=expired, offices=MappingProxyType(offices))
    return new_state, tuple(actions), "; ".join(notes)


def _on_abort_requested(ctx: _Ctx, office: OfficeState, event: AbortRequested) -> _Outcome:
    asked = f"abort of run {event.run_id} of {office.office} requested by {event.who} ({event.reason})"
    running = office.run_id if office.phase in _RUNNING else None
    if event.run_id not in (running, office.catchup_id):
        now_running = ", ".join(r for r in (running, office.catchup_id) if r) or "none"
        return _Outcome(
            office,
            (),
            f"{asked} refused: it is not in progress (office {office.phase}, running: {now_running})",
        )
    if office.aborting == event.run_id:
        return _Outcome(office, (), f"{asked} refused: already aborting, it stops at the next safe point")
    kind = "catch-up" if event.run_id == office.catchup_id else str(office.run_kind)
    action = AbortRun(office.office, event.run_id, f"aborted by {event.who}: {event.reason}")
    return _Outcome(
        replace(office, aborting=event.run_id),
        (action,),
        f"{asked}: the {kind} run stops at the next safe point and rolls back",
    )


def _on_resolved(ctx: _Ctx, office: OfficeState, event: PhaseResolved) -> _Outcome:
    asked = f"phase of {office.office} set to {event.phase} by {event.who} ({event.reason})"
    unchanged = office

    def refuse(why: str) -> _Outcome:
        return _Outcome(unchanged, (), f"{asked} refused: {why}")

    if event.phase not in RESOLVABLE:
        return refuse(f"only {', '.join(RESOLVABLE)} can be set by hand (runs set the others)")
    running = office.run_id if office.phase in _RUNNING else office.catchup_id
    if running is not None:
        return refuse(f"run {running} is in progress: abort it first (`baton abort {running}`)")
    if office.phase is event.phase:
        return refuse(f"it is {office.phase} already")
    was = office.phase
    office = replace(
        office,
        phase=event.phase,
        since=ctx.now,
        pending=frozenset(),
        pending_kind=None,
        pending_alternate=None,
        ready=frozenset(),
        catchup_failures=0,
        catchup_not_before=None,
        handback_waiting=None,
        previous_alternate=None,
        aborting=None,
    )
    if event.phase is Phase.OPEN:
        office = replace(office, closure=None, alternate=None)
    elif event.phase is Phase.CLOSED:
        held = Closure("declared", ctx.now, event.reason, who=event.who, drill=ctx.state.shadow, held=True)
        office = replace(office, closure=held, alternate=None)
    else:
        alternate = event.alternate or office.alternate
        if alternate is None:
            return refuse("say which office operates it now (--to ALT)")
        if alternate == office.office or alternate not in ctx.state.offices:
            return refuse(f"{alternate} is not another office of the inventory")
        closure = office.closure or Closure("declared", ctx.now, event.reason, who=event.who)
        office = replace(office, closure=closure, alternate=alternate)
    if office.approval is not None:
        office = replace(
            office,
            approval=None,
            approval_ended=f"{office.approval.id} withdrawn: {event.who} set the phase by hand",
        )
    office, cleared = _clear(office, *_WORK_ALERTS, Alert.OPERATED_BY_CLOSED, Alert.PHASE_RESOLVED)
    where = f" (operated by {office.alternate})" if event.phase is Phase.HANDED_OVER else ""
    message = (
        f"{_name(office)} set from {was} to {event.phase}{where} by {event.who} ({event.reason}) after a "
        "check by hand: Baton's own decision is overridden until an ack"
    )
    office, raised = _raise(office, Alert.PHASE_RESOLVED, message)
    return _Outcome(office, cleared + raised, message)
