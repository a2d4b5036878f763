"""Re-deriving every journaled decision offline: `baton replay`.

Every decision the controller made is in the journal with its input (the event), its time, the
resulting state of every office it changed, the flags and its actions. Replay starts from the
journal's first row (a snapshot, when old rows were compacted away) and steps each input through
the same pure core with the policy in force at that time (`ConfigLoaded` inputs carry it). Each
replayed decision is compared with the journaled one — reason, actions, office states, flags —
and a difference is reported, as Pacemaker's `crm_simulate` does with saved inputs, but for
every decision. Inputs that changed nothing were never journaled: replaying them would change
nothing either.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, replace
from types import MappingProxyType
from typing import Any

from baton import codec
from baton.core.events import ConfigLoaded
from baton.core.machine import step
from baton.core.model import Policy, State
from baton.journal import DecisionRecord, Journal, state_from_json

SNAPSHOT = "Snapshot"


@dataclass(frozen=True, slots=True)
class Replayed:
    record: DecisionRecord
    trigger: str  # the event's type
    offices: tuple[str, ...]  # the offices the decision concerned
    reason: str  # what the core says now
    differences: tuple[str, ...]  # empty: the same decision as journaled


def replay(journal: Journal) -> Iterator[Replayed]:
    """Every journaled decision, oldest first, re-derived and compared."""
    state = State(offices=MappingProxyType({}))
    policy = Policy()
    for record in journal.decisions():
        data = json.loads(record.event)
        changed: dict[str, str | None] = json.loads(record.offices)
        if data.get("type") == SNAPSHOT:
            offices = {o: state_from_json(s) for o, s in changed.items() if s is not None}
            state = replace(
                codec.state_from_parts(json.loads(record.flags), offices), stopping=bool(data.get("stopping"))
            )
            policy = codec.policy_from_dict(data["policy"])
            continue
        event = codec.event_from_dict(data)
        transition = step(state, event, policy, record.at)
        differences: list[str] = []
        if transition.reason != record.reason:
            differences.append(f"reason: journaled {record.reason!r}, now {transition.reason!r}")
        actions = [codec.action_to_dict(a) for a in transition.actions]
        if actions != json.loads(record.actions):
            differences.append(f"actions: journaled {record.actions}, now {codec.dumps(actions)}")
        journaled_flags = json.loads(record.flags)
        now_flags = codec.flags_to_dict(transition.state)
        for key in sorted(set(journaled_flags) | set(now_flags)):
            if key != "leader" and journaled_flags.get(key) != now_flags.get(key):
                differences.append(
                    f"{key}: journaled {journaled_flags.get(key)!r}, now {now_flags.get(key)!r}"
                )
        for office_id, text in changed.items():
            now = transition.state.offices.get(office_id)
            then = None if text is None else state_from_json(text)
            if now != then:
                differences.append(f"office {office_id}: state differs ({_diff(then, now)})")
        # Follow the journal, not the replay: one difference must not cascade into every row.
        offices = dict(transition.state.offices)
        for office_id, text in changed.items():
            if text is None:
                offices.pop(office_id, None)
            else:
                offices[office_id] = state_from_json(text)
        state = replace(
            codec.state_from_parts(journaled_flags, offices),
            leader=transition.state.leader,
            stopping=transition.state.stopping,
        )
        if isinstance(event, ConfigLoaded):
            policy = event.policy
        concerned = tuple(sorted(changed)) or ((str(event.office),) if hasattr(event, "office") else ())
        yield Replayed(record, type(event).__name__, concerned, transition.reason, tuple(differences))


def _diff(then: Any, now: Any) -> str:
    if then is None or now is None:
        return (
            f"journaled {'none' if then is None else 'a state'}, now {'none' if now is None else 'a state'}"
        )
    fields = [f for f in then.__dataclass_fields__ if getattr(then, f) != getattr(now, f)]
    return ", ".join(f"{f}: {getattr(then, f)!r} → {getattr(now, f)!r}" for f in fields[:5])
