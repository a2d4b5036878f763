"""What can happen to Baton's view of the world: the inputs of `core.machine.step`.

Events are facts, named in the past tense. The service builds them from poll rounds, timers,
operator commands (API) and run results, and feeds them to the machine one at a time.
"""

from __future__ import annotations

from dataclasses import dataclass

from baton.core.model import OfficeVerdict, RunKind


@dataclass(frozen=True, slots=True)
class OfficeObserved:
    """A poll round judged an office (sent every round, changed or not: flap detection counts)."""

    office: str
    verdict: OfficeVerdict
    detail: str = ""  # "6/8 critical devices down"


@dataclass(frozen=True, slots=True)
class Ticked:
    """Time passed for an office: hold-down, declared `until`, handback hold, anti-flap expiry."""

    office: str


@dataclass(frozen=True, slots=True)
class ClosureDeclared:
    """An operator declared an office closed (or asked to hand it over, or retried after FAILED)."""

    office: str
    who: str
    reason: str
    until: float | None = None
    to: str | None = None  # operator's choice of alternate; None: first eligible of the chain


@dataclass(frozen=True, slots=True)
class HandbackRequested:
    office: str
    who: str
    reason: str


@dataclass(frozen=True, slots=True)
class Acked:
    """An operator acknowledged an office: lifts its anti-flap block, or clears FAILED."""

    office: str
    who: str


@dataclass(frozen=True, slots=True)
class RunFinished:
    office: str
    run_id: str
    kind: RunKind
    ok: bool
    detail: str = ""
    pending: frozenset[str] = frozenset()  # devices skipped as unreachable (left for a catch-up)
    done: frozenset[str] = frozenset()  # devices the run handed over (or back) for good


@dataclass(frozen=True, slots=True)
class PauseSet:
    paused: bool
    who: str


@dataclass(frozen=True, slots=True)
class ShadowSet:
    shadow: bool
    who: str


@dataclass(frozen=True, slots=True)
class LeaseChanged:
    held: bool


Event = (
    OfficeObserved
    | Ticked
    | ClosureDeclared
    | HandbackRequested
    | Acked
    | RunFinished
    | PauseSet
    | ShadowSet
    | LeaseChanged
)
