"""The core's values as JSON, and back: what the journal keeps of every decision.

Events, actions and office states are the core's frozen dataclasses; pydantic's TypeAdapter
turns them into plain JSON and validates them back (enums by value, frozensets as lists), so a
journaled decision can be re-derived offline (`baton replay`) and compared with what was done.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from pydantic import TypeAdapter

from baton.core import actions as core_actions
from baton.core import events as core_events
from baton.core.model import OfficeState, Policy, State

_EVENTS: dict[str, type[Any]] = {
    cls.__name__: cls
    for cls in (
        core_events.ConfigLoaded,
        core_events.Stopping,
        core_events.OfficeObserved,
        core_events.Ticked,
        core_events.ClosureDeclared,
        core_events.HandbackRequested,
        core_events.Acked,
        core_events.RunFinished,
        core_events.PauseSet,
        core_events.ShadowSet,
        core_events.LeaseChanged,
        core_events.RoundObserved,
        core_events.LeaderReported,
        core_events.ApprovalGiven,
        core_events.ApprovalDenied,
        core_events.AbortRequested,
        core_events.PhaseResolved,
    )
}
_ACTIONS: dict[str, type[Any]] = {
    cls.__name__: cls
    for cls in (
        core_actions.StartRun,
        core_actions.AbortRun,
        core_actions.RaiseAlert,
        core_actions.ClearAlert,
    )
}
_ADAPTERS: dict[type[Any], TypeAdapter[Any]] = {
    cls: TypeAdapter(cls) for cls in (*_EVENTS.values(), *_ACTIONS.values(), OfficeState, Policy)
}


def _plain(value: object) -> object:
    if isinstance(value, MappingProxyType):
        return dict(value)
    raise TypeError(f"cannot encode a {type(value).__name__}")


def _dump(value: object) -> dict[str, Any]:
    data = _ADAPTERS[type(value)].dump_python(value, mode="json", fallback=_plain, warnings=False)
    assert isinstance(data, dict)
    return data


def event_to_dict(event: core_events.Event) -> dict[str, Any]:
    return {"type": type(event).__name__, **_dump(event)}


def event_from_dict(data: Mapping[str, Any]) -> core_events.Event:
    fields = dict(data)
    cls = _EVENTS[fields.pop("type")]
    event: core_events.Event = _ADAPTERS[cls].validate_python(fields)
    return event


def action_to_dict(action: core_actions.Action) -> dict[str, Any]:
    return {"type": type(action).__name__, **_dump(action)}


def action_from_dict(data: Mapping[str, Any]) -> core_actions.Action:
    fields = dict(data)
    cls = _ACTIONS[fields.pop("type")]
    action: core_actions.Action = _ADAPTERS[cls].validate_python(fields)
    return action


def office_to_dict(office: OfficeState) -> dict[str, Any]:
    return _dump(office)


def office_from_dict(data: Mapping[str, Any]) -> OfficeState:
    office: OfficeState = _ADAPTERS[OfficeState].validate_python(dict(data))
    return office


def policy_to_dict(policy: Policy) -> dict[str, Any]:
    return _dump(policy)


def policy_from_dict(data: Mapping[str, Any]) -> Policy:
    policy: Policy = _ADAPTERS[Policy].validate_python(dict(data))
    return policy


def flags_to_dict(state: State) -> dict[str, Any]:
    """The state beside its offices (the `stopping` flag belongs to one process: not kept)."""
    return {
        "paused": state.paused,
        "shadow": state.shadow,
        "leader": state.leader,
        "leader_elsewhere": state.leader_elsewhere,
        "storm": state.storm,
        "recent_down": [list(entry) for entry in state.recent_down],
        "config_shadow": state.config_shadow,
        "epoch": state.epoch,
        "expired_grants": list(state.expired_grants),
    }


def state_from_parts(flags: Mapping[str, Any], offices: Mapping[str, OfficeState]) -> State:
    return State(
        offices=MappingProxyType(dict(offices)),
        paused=bool(flags.get("paused", False)),
        shadow=bool(flags.get("shadow", False)),
        leader=bool(flags.get("leader", True)),
        leader_elsewhere=flags.get("leader_elsewhere"),
        storm=bool(flags.get("storm", False)),
        recent_down=tuple((float(at), str(office)) for at, office in flags.get("recent_down", ())),
        config_shadow=flags.get("config_shadow"),
        epoch=int(flags.get("epoch", 0)),
        expired_grants=tuple(str(g) for g in flags.get("expired_grants", ())),
    )


def dumps(data: object) -> str:
    return json.dumps(data, sort_keys=True, allow_nan=False, separators=(",", ":"))
