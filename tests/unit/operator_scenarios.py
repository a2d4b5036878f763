"""Scenarios that make every phase change of approvals and resolves (test_machine's table check).

(policy, initial state, events) triples, like `test_machine.SCENARIOS`, which adds them.
"""

from __future__ import annotations

from baton.core.events import (
    ApprovalGiven,
    ClosureDeclared,
    Event,
    HandbackRequested,
    LeaseChanged,
    OfficeObserved,
    PhaseResolved,
    RunFinished,
    Ticked,
)
from baton.core.model import ApprovalRule, OfficeVerdict, Phase, Policy, RunKind, State
from tests.unit.core_builders import CHAINS, make_state

D = OfficeVerdict.DOWN
HANDOVER, HANDBACK = RunKind.HANDOVER, RunKind.HANDBACK
EVERY_OFFICE = tuple(sorted(CHAINS))


def rules(*kinds: RunKind, required: int = 1, ttl_s: float = 600.0, auto_s: float | None = None) -> Policy:
    """Every office's `kinds` runs need `required` approvals within `ttl_s`."""
    rule = ApprovalRule(EVERY_OFFICE, kinds, required, ttl_s, auto_s, "operators.approvals[0]")
    return Policy(approvals=(rule,))


ON_HANDOVER = rules(HANDOVER)
ON_HANDBACK = rules(HANDBACK)
ON_BOTH = rules(HANDOVER, HANDBACK)

Timed = list[tuple[float, Event]]


def approve(at: float, asked_at: float, who: str = "bob") -> tuple[float, Event]:
    """`who` approves the request of office a asked at `asked_at` (its id says when)."""
    return (at, ApprovalGiven("a", f"approval-a-{int(asked_at * 1000)}", who))


def declared(at: float) -> tuple[float, Event]:
    return (at, ClosureDeclared("a", "alice", "sealed for disinfection"))


def _to_handed_over() -> Timed:
    """a handed over to b by run handover-a-30000 (no approval rule on handovers)."""
    return [
        (0.0, OfficeObserved("a", D)),
        (30.0, Ticked("a")),
        (40.0, RunFinished("a", "handover-a-30000", HANDOVER, ok=True)),
    ]


def _to_failed() -> Timed:
    return [
        (0.0, OfficeObserved("a", D)),
        (30.0, Ticked("a")),
        (40.0, RunFinished("a", "handover-a-30000", HANDOVER, ok=False)),
    ]


def _reach(phase: Phase) -> tuple[State, Timed]:
    """A state and events that bring office a to `phase` without approval rules."""
    if phase is Phase.OPEN:
        return make_state(), []
    if phase is Phase.SUSPECT:
        return make_state(), [(0.0, OfficeObserved("a", D))]
    if phase is Phase.CLOSED:
        return make_state(paused=True), [(0.0, OfficeObserved("a", D)), (30.0, Ticked("a"))]
    if phase is Phase.HANDED_OVER:
        return make_state(), _to_handed_over()
    return make_state(), _to_failed()


_RESOLVED = [
    (
        Policy(),
        start,
        [*events, (100.0, PhaseResolved("a", target, "root", "checked by hand", alternate="b"))],
    )
    for was in (Phase.OPEN, Phase.SUSPECT, Phase.CLOSED, Phase.HANDED_OVER, Phase.FAILED)
    for target in (Phase.OPEN, Phase.CLOSED, Phase.HANDED_OVER)
    if was is not target
    for start, events in [_reach(was)]
]

OPERATOR_SCENARIOS: list[tuple[Policy, State, Timed]] = [
    # an operator's declaration waits, then is carried out (or blocked: no lease)
    (ON_HANDOVER, make_state(), [declared(0.0), approve(1.0, 0.0)]),
    (ON_HANDOVER, make_state(leader=False), [declared(0.0), approve(1.0, 0.0)]),
    (ON_HANDOVER, make_state(), [(0.0, OfficeObserved("a", D)), declared(1.0), approve(2.0, 1.0)]),
    (
        ON_HANDOVER,
        make_state(leader=False),
        [(0.0, OfficeObserved("a", D)), declared(1.0), approve(2.0, 1.0)],
    ),
    # a detected closure asks Baton's own request, and goes once approved
    (ON_HANDOVER, make_state(), [(0.0, OfficeObserved("a", D)), (30.0, Ticked("a")), approve(31.0, 30.0)]),
    # after a failed run, a declaration that waits (then runs, or is blocked)
    (
        ON_HANDOVER,
        make_state(),
        [
            declared(0.0),
            approve(1.0, 0.0),
            (2.0, RunFinished("a", "handover-a-1000", HANDOVER, ok=False)),
            declared(3.0),
            approve(4.0, 3.0),
        ],
    ),
    (
        ON_HANDOVER,
        make_state(),
        [
            declared(0.0),
            approve(1.0, 0.0),
            (2.0, RunFinished("a", "handover-a-1000", HANDOVER, ok=False)),
            declared(3.0),
            (3.5, LeaseChanged(held=False)),
            approve(4.0, 3.0),
        ],
    ),
    # handbacks that wait: from HANDED_OVER, FAILED and a CLOSED office that a run touched
    (
        ON_HANDBACK,
        make_state(),
        [*_to_handed_over(), (50.0, HandbackRequested("a", "alice", "x")), approve(51.0, 50.0)],
    ),
    (
        ON_HANDBACK,
        make_state(),
        [*_to_failed(), (50.0, HandbackRequested("a", "alice", "x")), approve(51.0, 50.0)],
    ),
    (
        ON_HANDBACK,
        make_state(),
        [
            *_to_failed(),
            (41.0, LeaseChanged(held=False)),
            (42.0, ClosureDeclared("a", "alice", "sealed")),
            (43.0, LeaseChanged(held=True)),
            (50.0, HandbackRequested("a", "alice", "x")),
            approve(51.0, 50.0),
        ],
    ),
    *_RESOLVED,
]
