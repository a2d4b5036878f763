"""Builders for the pure-core tests: a small office topology and a way to drive `step`."""

from __future__ import annotations

from dataclasses import replace
from types import MappingProxyType
from typing import Any

from baton.core.events import Event
from baton.core.machine import Transition, step
from baton.core.model import OfficeState, Policy, State

# Eight offices, so that two DOWN at once (25 %) stays under the default storm guard.
CHAINS: dict[str, tuple[str, ...]] = {
    "a": ("b", "c"),
    "b": ("a", "c"),
    "c": ("d",),
    "d": ("c",),
    "e": ("f",),
    "f": ("e",),
    "g": ("h",),
    "h": ("g",),
}


def make_state(chains: dict[str, tuple[str, ...]] | None = None, **flags: Any) -> State:
    offices = {name: OfficeState(office=name, alternates=alts) for name, alts in (chains or CHAINS).items()}
    return State(offices=MappingProxyType(offices), **flags)


def with_office(state: State, name: str, **changes: Any) -> State:
    offices = dict(state.offices)
    offices[name] = replace(offices[name], **changes)
    return replace(state, offices=MappingProxyType(offices))


def drive(state: State, policy: Policy, *timed: tuple[float, Event]) -> tuple[State, list[Transition]]:
    """Feed (now, event) pairs in order; the final state and every transition."""
    transitions = []
    for now, event in timed:
        transition = step(state, event, policy, now)
        transitions.append(transition)
        state = transition.state
    return state, transitions
