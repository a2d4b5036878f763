"""The controller: where the core's decisions are journaled, then carried out.

Theory of operation. The controller owns the current `State` snapshot. Everything that happens
(a poll round judged an office, time passed, an operator typed a command, a run finished, the
lease changed, the configuration was loaded) arrives as one core event through `apply`, which

1. asks the pure core for the next state: `core.machine.step(state, event, policy, now)`;
2. journals the decision in ONE transaction (`Journal.record_decision`): the input event, the
   resulting state of every office it changed and the global flags (storm bookkeeping
   included), the actions, the run rows of the runs it starts, and the operator command that
   asked for it. A decision that changes nothing is not journaled (replaying it would change
   nothing either). A write that fails is retried; if it keeps failing, `JournalFailed` is
   raised and the service stops loudly — nothing is acted on that is not on disk, and no
   decision is silently dropped;
3. only then adopts the new state and hands the actions to the `Actuator` (start or abort a
   playbook run; alerts are part of the state and the journal);
4. logs the decision's one-sentence reason under a fixed event name.

`restore` rebuilds the state from the journal after a restart: every office's last journaled
state and the last decision's flags, exactly as they were (the property tests step an event
sequence whole, and split by a restart, and compare). The `stopping` flag belongs to one process
and the lease to whoever holds it now: both start cleared.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields, replace
from types import MappingProxyType
from typing import Any, Protocol

from baton import codec
from baton.audit import AuditEntry
from baton.core.actions import AbortRun, Action, ClearAlert, RaiseAlert, StartRun
from baton.core.events import (
    AbortRequested,
    Acked,
    ApprovalDenied,
    ApprovalGiven,
    ClosureDeclared,
    ConfigLoaded,
    Event,
    HandbackRequested,
    OfficeObserved,
    PauseSet,
    PhaseResolved,
    ShadowSet,
    Ticked,
)
from baton.core.machine import Transition, step
from baton.core.model import OfficeState, Phase, Policy, State
from baton.journal import Decision, Journal, JournalError, state_to_json
from baton.logs import get_logger

log = get_logger()

# OfficeState fields whose change alone does not make a row of the office's phase history
# (`transitions`): every poll round appends to the flap history and refreshes the detail text.
_VOLATILE = frozenset({"history", "verdict_detail", "verdict_since", "ready"})
WRITE_ATTEMPTS = 3  # each waits up to the journal's busy timeout


class JournalFailed(Exception):
    """The journal cannot record a decision: nothing more may be decided or done."""


class Actuator(Protocol):
    """Carries out the run actions the core decides (the run manager behind it)."""

    def start_run(self, action: StartRun) -> None: ...

    def abort_run(self, action: AbortRun) -> None: ...


@dataclass(frozen=True, slots=True)
class CommandOutcome:
    """What an operator command did: the core's sentence, and whether anything changed."""

    accepted: bool
    reason: str
    run_id: str | None = None
    approval_id: str | None = None  # the request the command made, waiting for approvals


def _significant(before: OfficeState | None, after: OfficeState) -> bool:
    if before is None:
        return False  # an office appearing with the configuration: no decision about it yet
    return any(
        getattr(before, f.name) != getattr(after, f.name)
        for f in fields(OfficeState)
        if f.name not in _VOLATILE
    )


def restore(journal: Journal) -> State:
    """The state the journal holds (an empty one for a new journal)."""
    flags, offices = journal.last_state()
    if flags is None:
        # A journal from before decisions were journaled: its flags table has pause and shadow.
        legacy = journal.last_flags()
        flags = {"paused": legacy.paused, "shadow": legacy.shadow}
    state = codec.state_from_parts(flags, offices)
    return replace(state, leader=False, stopping=False)


class Controller:
    def __init__(
        self,
        state: State,
        policy: Policy,
        journal: Journal,
        actuator: Actuator,
        clock: Callable[[], float],
        on_transition: Callable[[Transition], None] | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._state = state
        self._policy = policy
        self._journal = journal
        self._actuator = actuator
        self._clock = clock
        self._on_transition = on_transition
        self._sleep = sleep
        self.last_reason: dict[str, str] = {}  # office -> reason of its last significant transition

    @property
    def state(self) -> State:
        return self._state

    @property
    def policy(self) -> Policy:
        return self._policy

    def apply(
        self,
        event: Event,
        *,
        who: str = "baton",
        command: tuple[str, Mapping[str, Any], str] | None = None,
    ) -> Transition:
        """Decide on `event`, journal the decision, then act on it (see the module docstring).

        command: (name, args, reason) of the operator command that asked, journaled with it.
        """
        now = self._clock()
        before = self._state
        transition = step(before, event, self._policy, now)
        after = transition.state
        changed = {
            office_id: office
            for office_id, office in after.offices.items()
            if before.offices.get(office_id) != office
        }
        dropped = [office_id for office_id in before.offices if office_id not in after.offices]
        flags_before, flags_after = codec.flags_to_dict(before), codec.flags_to_dict(after)
        # Stopping changes only a process's flag, but what is decided after it depends on it.
        stopping = before.stopping != after.stopping
        # A new policy changes nothing yet, but every later decision is made with it.
        repolicy = isinstance(event, ConfigLoaded) and event.policy != self._policy
        inputs = stopping or repolicy or command is not None
        if changed or dropped or transition.actions or flags_before != flags_after or inputs:
            self._journal_decision(event, transition, before, changed, dropped, who, command, now)
        self._state = after
        if isinstance(event, ConfigLoaded):
            self._policy = event.policy
        significant = [o for o, office in changed.items() if _significant(before.offices.get(o), office)]
        for office_id in significant:
            self.last_reason[office_id] = transition.reason
        if significant or transition.actions or before.storm != after.storm or before.paused != after.paused:
            log.info(
                "decision",
                trigger=type(event).__name__,
                offices=significant,
                reason=transition.reason,
                actions=[_describe(a) for a in transition.actions],
            )
        for action in transition.actions:
            if isinstance(action, StartRun):
                self._actuator.start_run(action)
            elif isinstance(action, AbortRun):
                self._actuator.abort_run(action)
        if self._on_transition is not None:
            self._on_transition(transition)
        return transition

    def _journal_decision(
        self,
        event: Event,
        transition: Transition,
        before: State,
        changed: Mapping[str, OfficeState],
        dropped: list[str],
        who: str,
        command: tuple[str, Mapping[str, Any], str] | None,
        now: float,
    ) -> None:
        after = transition.state
        states = {office_id: state_to_json(office) for office_id, office in changed.items()}
        offices: dict[str, str | None] = {**states, **dict.fromkeys(dropped)}
        history = tuple(
            (
                office_id,
                old.phase.value if (old := before.offices.get(office_id)) is not None else None,
                office.phase.value,
                states[office_id],
            )
            for office_id, office in changed.items()
            if _significant(before.offices.get(office_id), office)
        )
        alerts = tuple(
            (
                a.alert.value,
                a.office,
                isinstance(a, RaiseAlert),
                a.message if isinstance(a, RaiseAlert) else "",
            )
            for a in transition.actions
            if isinstance(a, RaiseAlert | ClearAlert)
        )
        runs = tuple(
            (a.run_id, a.office, a.kind, a.alternate, a.reason, a.who)
            for a in transition.actions
            if isinstance(a, StartRun)
        )
        flags = (
            (after.paused, after.shadow)
            if (before.paused, before.shadow) != (after.paused, after.shadow)
            else None
        )
        routine = isinstance(event, OfficeObserved | Ticked) and not transition.actions and not history
        decision = Decision(
            at=now,
            event=codec.dumps(codec.event_to_dict(event)),
            reason=transition.reason,
            actions=codec.dumps([codec.action_to_dict(a) for a in transition.actions]),
            flags=codec.dumps(codec.flags_to_dict(after)),
            offices=offices,
            transitions=history,
            alerts=alerts,
            flags_changed=flags,
            runs=runs,
            command=None if command is None else (who, command[0], command[1], command[2]),
            who=who,
            durable=not routine,
            audit=_audit_entry(event, transition, before, history, who, command, now),
        )
        for attempt in range(1, WRITE_ATTEMPTS + 1):
            try:
                self._journal.record_decision(decision)
                return
            except JournalError as exc:
                if attempt == WRITE_ATTEMPTS:
                    log.critical("journal.decision_lost", error=str(exc), trigger=type(event).__name__)
                    raise JournalFailed(str(exc)) from exc
                log.error(
                    "journal.write_failed", error=str(exc), attempt=attempt, trigger=type(event).__name__
                )
                self._sleep(0.05 * 2**attempt)

    def command(
        self,
        name: str,
        event: Event,
        *,
        who: str,
        reason: str,
        args: Mapping[str, Any],
        via: str | None = None,
    ) -> CommandOutcome:
        """An operator command: decided by the core like any event, journaled with who/why/what.
        `via`: the vantage that forwarded it from its operator (journaled and audited with it)."""
        if via is not None:
            args = {**args, "via": via}
        before = self._state
        transition = self.apply(event, who=who, command=(name, args, reason))
        run_id = next((a.run_id for a in transition.actions if isinstance(a, StartRun)), None)
        asked = [
            office.approval.id
            for office_id, office in transition.state.offices.items()
            if office.approval is not None
            and (
                (old := before.offices.get(office_id)) is None
                or old.approval is None
                or old.approval.id != office.approval.id
            )
        ]
        return CommandOutcome(
            accepted=transition.state != before,
            reason=transition.reason,
            run_id=run_id,
            approval_id=asked[0] if asked else None,
        )

    # Convenience wrappers the API calls; each is one core event.

    def declare_closure(
        self,
        office: str,
        *,
        who: str,
        reason: str,
        until: float | None = None,
        to: str | None = None,
        grant: str | None = None,
        via: str | None = None,
    ) -> CommandOutcome:
        event = ClosureDeclared(office=office, who=who, reason=reason, until=until, to=to, grant=grant)
        args = {"office": office, "until": until, "to": to}
        return self.command("handover", event, who=who, reason=reason, args=args, via=via)

    def request_handback(
        self, office: str, *, who: str, reason: str, grant: str | None = None, via: str | None = None
    ) -> CommandOutcome:
        event = HandbackRequested(office=office, who=who, reason=reason, grant=grant)
        return self.command("handback", event, who=who, reason=reason, args={"office": office}, via=via)

    def approve(
        self, office: str, approval_id: str, *, who: str, reason: str = "", via: str | None = None
    ) -> CommandOutcome:
        event = ApprovalGiven(office=office, approval_id=approval_id, who=who)
        args = {"office": office, "approval": approval_id}
        return self.command("approve", event, who=who, reason=reason, args=args, via=via)

    def deny(
        self, office: str, approval_id: str, *, who: str, reason: str, via: str | None = None
    ) -> CommandOutcome:
        event = ApprovalDenied(office=office, approval_id=approval_id, who=who, reason=reason)
        args = {"office": office, "approval": approval_id}
        return self.command("deny", event, who=who, reason=reason, args=args, via=via)

    def abort(
        self, office: str, run_id: str, *, who: str, reason: str, via: str | None = None
    ) -> CommandOutcome:
        event = AbortRequested(office=office, run_id=run_id, who=who, reason=reason)
        args = {"office": office, "run": run_id}
        return self.command("abort", event, who=who, reason=reason, args=args, via=via)

    def resolve(
        self,
        office: str,
        phase: Phase,
        *,
        who: str,
        reason: str,
        alternate: str | None = None,
        via: str | None = None,
    ) -> CommandOutcome:
        event = PhaseResolved(office=office, phase=phase, who=who, reason=reason, alternate=alternate)
        args = {"office": office, "phase": phase.value, "alternate": alternate}
        return self.command("resolve", event, who=who, reason=reason, args=args, via=via)

    def ack(self, office: str, *, who: str, reason: str = "", via: str | None = None) -> CommandOutcome:
        event = Acked(office=office, who=who)
        return self.command("ack", event, who=who, reason=reason, args={"office": office}, via=via)

    def set_paused(
        self, paused: bool, *, who: str, reason: str = "", via: str | None = None
    ) -> CommandOutcome:
        name = "pause" if paused else "resume"
        event = PauseSet(paused=paused, who=who)
        return self.command(name, event, who=who, reason=reason, args={}, via=via)

    def set_shadow(
        self, shadow: bool, *, who: str, reason: str = "", via: str | None = None
    ) -> CommandOutcome:
        name = "shadow-on" if shadow else "shadow-off"
        event = ShadowSet(shadow=shadow, who=who)
        return self.command(name, event, who=who, reason=reason, args={}, via=via)


def config_event(offices: Mapping[str, tuple[str, ...]], shadow: bool, policy: Policy) -> ConfigLoaded:
    return ConfigLoaded(MappingProxyType(dict(offices)), shadow=shadow, policy=policy)


def _audit_entry(
    event: Event,
    transition: Transition,
    before: State,
    history: tuple[tuple[str, str | None, str, str], ...],
    who: str,
    command: tuple[str, Mapping[str, Any], str] | None,
    now: float,
) -> AuditEntry | None:
    """The audit trail's row for a decision: every operator command (with what the core made of
    it), and every decision of Baton's own that changed a phase, acted, alerted or ended a grant."""
    after = transition.state
    actions = [_describe(a) for a in transition.actions]
    phases = [[office, old, new] for office, old, new, _ in history if old != new]
    event_office = getattr(event, "office", None)
    if command is not None:
        name, args, reason = command
        office = event_office if isinstance(event_office, str) else args.get("office")
        detail = {
            "args": dict(args),
            "accepted": after != before,
            "decided": transition.reason,
            "actions": actions,
            "phases": phases,
        }
        return AuditEntry(
            now, "command", who, name, reason, office if isinstance(office, str) else None, detail
        )
    flags = ("paused", "shadow", "storm", "leader", "expired_grants")
    changed = [f for f in flags if getattr(before, f) != getattr(after, f)]
    if not (transition.actions or phases or changed):
        return None
    touched = {str(p[0]) for p in phases} | {a.office for a in transition.actions if a.office is not None}
    offices = sorted(touched)
    detail = {"offices": offices, "phases": phases, "actions": actions, "flags": changed}
    if "expired_grants" in changed:
        detail["expired_grants"] = list(after.expired_grants)
    office = offices[0] if len(offices) == 1 else None
    return AuditEntry(now, "decision", "baton", type(event).__name__, transition.reason, office, detail)


def _describe(action: Action) -> str:
    if isinstance(action, StartRun):
        return f"start {action.kind.value} run {action.run_id} ({action.office} → {action.alternate})"
    if isinstance(action, AbortRun):
        return f"abort run {action.run_id}"
    if isinstance(action, RaiseAlert):
        return f"raise {action.alert.value}" + (f" for {action.office}" if action.office else "")
    return f"clear {action.alert.value}" + (f" for {action.office}" if action.office else "")
