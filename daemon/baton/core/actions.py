"""What `core.machine.step` asks the service to do. Imperative names; the service journals the
transition first, then carries these out."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from baton.core.model import RunKind


class Alert(StrEnum):
    STORM_GUARD = "storm_guard"  # too many offices DOWN at once: automation frozen
    NO_ALTERNATE = "no_alternate"  # closed, but no office of the chain can take over
    RUN_FAILED = "run_failed"  # a handover/handback failed (and was rolled back): needs an operator
    FLAPPING = "flapping"  # office verdict flaps: automatic closure suppressed
    AWAITING_APPROVAL = "awaiting_approval"  # detected closure waits for an operator (policy)
    AUTOMATION_BLOCKED = "automation_blocked"  # closed, but paused / anti-flap / no lease
    WOULD_HAND_OVER = "would_hand_over"  # shadow mode: what Baton would have done
    HANDBACK_PROPOSED = "handback_proposed"  # reopened office healthy long enough
    OPERATED_BY_CLOSED = "operated_by_closed"  # its alternate closed: re-homing, or nowhere to go
    SPLIT_VIEW = "split_view"  # some vantages see the office DOWN, others do not: not closing
    APPROVAL_EXPIRED = "approval_expired"  # a run waited for approvals and nobody gave them in time
    PHASE_RESOLVED = "phase_resolved"  # an admin set the office's phase by hand (until an ack)


@dataclass(frozen=True, slots=True)
class StartRun:
    office: str
    kind: RunKind
    run_id: str
    alternate: str  # handover: the office taking over; handback: the office handing back
    reason: str
    who: str = "baton"  # the operator who asked, or baton for an automatic decision
    devices: frozenset[str] | None = None  # a catch-up: only these devices (None: every target)
    previous: str | None = None  # a re-home: the office that operated it until now
    epoch: int = 0  # the leader's epoch: every change the run makes carries it to the device


@dataclass(frozen=True, slots=True)
class AbortRun:
    office: str
    run_id: str
    reason: str


@dataclass(frozen=True, slots=True)
class RaiseAlert:
    alert: Alert
    office: str | None
    message: str


@dataclass(frozen=True, slots=True)
class ClearAlert:
    alert: Alert
    office: str | None


Action = StartRun | AbortRun | RaiseAlert | ClearAlert
