"""What can happen to Baton's view of the world: the inputs of `core.machine.step`.

Events are facts, named in the past tense. The service builds them from poll rounds, timers,
operator commands (API) and run results, and feeds them to the machine one at a time.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from baton.core.model import OfficeState, OfficeVerdict, Phase, Policy, RunKind, frozen_map


@dataclass(frozen=True, slots=True)
class OfficeObserved:
    """A poll round judged an office (sent every round, changed or not: flap detection counts)."""

    office: str
    verdict: OfficeVerdict
    detail: str = ""  # "6/8 critical devices down"
    # Of the office's devices left pending by a run (unreachable then), those that answer now.
    answering: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class ConfigLoaded:
    """The daemon started, or reloaded: the offices and their alternate chains, baton.yaml's
    `shadow`, and the policy in force from now on (kept with the inputs, so `baton replay`
    decides with the policy each decision was made with)."""

    offices: Mapping[str, tuple[str, ...]] = field(default_factory=frozen_map)
    shadow: bool = False
    policy: Policy = field(default_factory=Policy)


@dataclass(frozen=True, slots=True)
class Stopping:
    """The daemon is stopping: start nothing it could not finish."""


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
    grant: str | None = None  # the grant the operator asked under (`baton.core.grants`)


@dataclass(frozen=True, slots=True)
class HandbackRequested:
    office: str
    who: str
    reason: str
    grant: str | None = None


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
    # False: the process died between the decision and the run's first step; nothing changed
    started: bool = True


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
    """Leadership among vantages changed. `epoch` (held) only grows from one leader to the
    next: it fences every run this vantage starts (see `baton.leadership`)."""

    held: bool
    epoch: int = 0
    leader: str | None = None  # the vantage that leads now, when known


@dataclass(frozen=True, slots=True)
class RoundObserved:
    """Every vantage's latest verdict of every office (published in etcd), combined in the core:
    office -> vantage -> (verdict, detail). `quorum`: how many vantages must see an office DOWN.
    `answering`: of each office's pending devices, those answering this vantage."""

    votes: Mapping[str, Mapping[str, tuple[OfficeVerdict, str]]] = field(default_factory=frozen_map)
    quorum: int = 1
    answering: Mapping[str, frozenset[str]] = field(default_factory=frozen_map)


@dataclass(frozen=True, slots=True)
class ApprovalGiven:
    """An operator approved the run that waits for approval `approval_id` of `office`."""

    office: str
    approval_id: str
    who: str


@dataclass(frozen=True, slots=True)
class ApprovalDenied:
    """An operator denied it (the requester denying their own request withdraws it)."""

    office: str
    approval_id: str
    who: str
    reason: str


@dataclass(frozen=True, slots=True)
class AbortRequested:
    """An operator asked to stop a run: it stops at the next safe point and rolls back."""

    office: str
    run_id: str
    who: str
    reason: str


@dataclass(frozen=True, slots=True)
class PhaseResolved:
    """An admin checked the devices by hand and sets the office's phase (`alternate`: the office
    that operates it, for HANDED_OVER)."""

    office: str
    phase: Phase
    who: str
    reason: str
    alternate: str | None = None


@dataclass(frozen=True, slots=True)
class LeaderReported:
    """What the leading vantage published in etcd of its state (only what changed since the
    last report): a follower adopts it, so that whoever leads next knows every office's story
    (`baton.vantages`). A run under way there is adopted as its intent: HANDING_OVER as CLOSED
    (the next leader hands over, again), HANDING_BACK as HANDED_OVER."""

    leader: str
    epoch: int
    offices: Mapping[str, OfficeState] = field(default_factory=frozen_map)
    paused: bool = False
    shadow: bool = False
    storm: bool = False
    recent_down: tuple[tuple[float, str], ...] = ()


Event = (
    RoundObserved
    | LeaderReported
    | ConfigLoaded
    | Stopping
    | OfficeObserved
    | Ticked
    | ClosureDeclared
    | HandbackRequested
    | Acked
    | RunFinished
    | PauseSet
    | ShadowSet
    | LeaseChanged
    | ApprovalGiven
    | ApprovalDenied
    | AbortRequested
    | PhaseResolved
)
