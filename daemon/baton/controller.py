"""The controller: Baton's one place where decisions meet the world.

Theory of operation. The controller owns the current `State` snapshot. Everything that happens
(a poll round judged an office, a second passed, an operator typed a command, a run finished, the
lease changed) arrives as a core event through `apply`, which

1. asks the pure core for the next state: `core.machine.step(state, event, policy, now)`;
2. journals what changed (office transitions, flags, alerts) *before* anything is acted on, so a
   crash after this point replays to the same state and never repeats or loses a decision;
3. hands the actions to the `Actuator` (start or abort a playbook run) and records alerts;
4. logs the transition's one-sentence reason under a fixed event name.

Operator commands go through `command`, which also journals who asked, what and why, and answers
with the core's sentence (accepted or refused, and why). The controller does no network I/O
itself and never blocks for long: the journal's writes are one small SQLite transaction each.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields, replace
from types import MappingProxyType
from typing import Any, Protocol

from baton.core.actions import AbortRun, Action, ClearAlert, RaiseAlert, StartRun
from baton.core.events import (
    Acked,
    ClosureDeclared,
    Event,
    HandbackRequested,
    PauseSet,
    ShadowSet,
)
from baton.core.machine import Transition, step
from baton.core.model import Inventory, OfficeState, Policy, State
from baton.journal import Journal
from baton.logs import get_logger

log = get_logger()

# OfficeState fields whose change alone is not worth a journal row: every poll round appends to
# the flap history and refreshes the detail text.
_VOLATILE = frozenset({"history", "verdict_detail", "verdict_since"})


class Actuator(Protocol):
    """Carries out the run actions the core decides (the playbook runner behind it)."""

    def start_run(self, action: StartRun) -> None: ...

    def abort_run(self, action: AbortRun) -> None: ...


@dataclass(frozen=True, slots=True)
class CommandOutcome:
    """What an operator command did: the core's sentence, and whether anything changed."""

    accepted: bool
    reason: str
    run_id: str | None = None


def _significant(before: OfficeState | None, after: OfficeState) -> bool:
    if before is None:
        return True
    return any(
        getattr(before, f.name) != getattr(after, f.name)
        for f in fields(OfficeState)
        if f.name not in _VOLATILE
    )


def initial_state(
    inventory: Inventory, journaled: Mapping[str, OfficeState], *, paused: bool, shadow: bool, leader: bool
) -> State:
    """The state to start from: the journal's last word on each office, the inventory's chains.

    Offices new in the inventory start OPEN; offices the inventory dropped are forgotten unless a
    run is still recorded in progress for them (then they stay, so the run can be finished).
    """
    offices: dict[str, OfficeState] = {}
    for office_id, office in inventory.offices.items():
        known = journaled.get(office_id)
        base = known if known is not None else OfficeState(office=office_id)
        offices[office_id] = replace(base, alternates=office.alternates)
    for office_id, known in journaled.items():
        if office_id not in offices and known.run_id is not None and known.phase.value.startswith("HANDING"):
            offices[office_id] = known
    return State(offices=MappingProxyType(offices), paused=paused, shadow=shadow, leader=leader)


class Controller:
    def __init__(
        self,
        state: State,
        policy: Policy,
        journal: Journal,
        actuator: Actuator,
        clock: Callable[[], float],
        on_transition: Callable[[Transition], None] | None = None,
    ) -> None:
        self._state = state
        self._policy = policy
        self._journal = journal
        self._actuator = actuator
        self._clock = clock
        self._on_transition = on_transition
        self.last_reason: dict[str, str] = {}  # office -> reason of its last significant transition

    @property
    def state(self) -> State:
        return self._state

    @property
    def policy(self) -> Policy:
        return self._policy

    def reconfigure(self, inventory: Inventory, policy: Policy) -> None:
        """Adopt a reloaded inventory and policy, keeping every office's phase."""
        self._policy = policy
        s = self._state
        self._state = initial_state(inventory, s.offices, paused=s.paused, shadow=s.shadow, leader=s.leader)
        self._state = replace(self._state, storm=s.storm, recent_down=s.recent_down)

    def apply(self, event: Event, *, who: str = "baton") -> Transition:
        now = self._clock()
        before = self._state
        transition = step(before, event, self._policy, now)
        after = transition.state
        # Journal first: what is acted on must already be on disk.
        changed = []
        for office_id, office in after.offices.items():
            old = before.offices.get(office_id)
            if old is not office and _significant(old, office):
                self._journal.record_transition(old, office, transition.reason, now)
                self.last_reason[office_id] = transition.reason
                changed.append(office_id)
        if (before.paused, before.shadow) != (after.paused, after.shadow):
            self._journal.record_flags(after.paused, after.shadow, who, transition.reason, now)
        for action in transition.actions:
            if isinstance(action, RaiseAlert | ClearAlert):
                self._journal.record_alert(
                    action.alert.value,
                    action.office,
                    isinstance(action, RaiseAlert),
                    action.message if isinstance(action, RaiseAlert) else "",
                    now,
                )
        self._state = after
        if changed or transition.actions or before.storm != after.storm or before.paused != after.paused:
            log.info(
                "decision",
                trigger=type(event).__name__,
                offices=changed,
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

    def command(
        self, name: str, event: Event, *, who: str, reason: str, args: Mapping[str, Any]
    ) -> CommandOutcome:
        """An operator command: journaled with who/why, then decided by the core like any event."""
        self._journal.record_command(who, name, args, reason, self._clock())
        before = self._state
        transition = self.apply(event, who=who)
        run_id = next((a.run_id for a in transition.actions if isinstance(a, StartRun)), None)
        return CommandOutcome(accepted=transition.state != before, reason=transition.reason, run_id=run_id)

    # Convenience wrappers the API calls; each is one core event.

    def declare_closure(
        self, office: str, *, who: str, reason: str, until: float | None = None, to: str | None = None
    ) -> CommandOutcome:
        event = ClosureDeclared(office=office, who=who, reason=reason, until=until, to=to)
        return self.command(
            "handover", event, who=who, reason=reason, args={"office": office, "until": until, "to": to}
        )

    def request_handback(self, office: str, *, who: str, reason: str) -> CommandOutcome:
        event = HandbackRequested(office=office, who=who, reason=reason)
        return self.command("handback", event, who=who, reason=reason, args={"office": office})

    def ack(self, office: str, *, who: str, reason: str = "") -> CommandOutcome:
        return self.command(
            "ack", Acked(office=office, who=who), who=who, reason=reason, args={"office": office}
        )

    def set_paused(self, paused: bool, *, who: str, reason: str = "") -> CommandOutcome:
        name = "pause" if paused else "resume"
        return self.command(name, PauseSet(paused=paused, who=who), who=who, reason=reason, args={})

    def set_shadow(self, shadow: bool, *, who: str, reason: str = "") -> CommandOutcome:
        name = "shadow-on" if shadow else "shadow-off"
        return self.command(name, ShadowSet(shadow=shadow, who=who), who=who, reason=reason, args={})


def _describe(action: Action) -> str:
    if isinstance(action, StartRun):
        return f"start {action.kind.value} run {action.run_id} ({action.office} → {action.alternate})"
    if isinstance(action, AbortRun):
        return f"abort run {action.run_id}"
    if isinstance(action, RaiseAlert):
        return f"raise {action.alert.value}" + (f" for {action.office}" if action.office else "")
    return f"clear {action.alert.value}" + (f" for {action.office}" if action.office else "")
