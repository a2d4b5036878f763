"""The audit trail: written with what it describes, hash-chained, and a tampered row is found."""

from __future__ import annotations

import itertools
import sqlite3
import time
from pathlib import Path
from types import MappingProxyType

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from baton.audit import AuditEntry
from baton.controller import Controller, config_event
from baton.core.events import LeaseChanged, OfficeObserved, Ticked
from baton.core.model import OfficeVerdict, Policy, RunKind, State
from baton.journal import Journal, StepStatus
from tests.unit.operator_scenarios import rules
from tests.unit.test_properties import draw_event, policies, topologies
from tests.unit.test_restart import Clock, Recorder

_ids = itertools.count()
CHAINS = {"a": ("b",), "b": ("a",), "c": ("a",), "d": ("c",)}
DEFAULT = Policy()


def _controller(journal: Journal, clock: Clock, policy: Policy = DEFAULT) -> Controller:
    controller = Controller(State(offices=MappingProxyType({})), policy, journal, Recorder(), clock)
    controller.apply(config_event(CHAINS, False, policy))
    controller.apply(LeaseChanged(held=True))
    return controller


def test_who_asked_who_approved_what_baton_decided_and_each_run(tmp_path: Path) -> None:
    """A handover asked, approved, run and finished: one row each, in order, chain intact."""
    clock = Clock()
    with Journal.open(tmp_path / "j.sqlite3") as journal:
        controller = _controller(journal, clock, rules(RunKind.HANDOVER))
        clock.now = 10.0
        asked = controller.declare_closure("a", who="alice", reason="sealed for disinfection")
        assert asked.approval_id == "approval-a-10000"
        clock.now = 20.0
        approved = controller.approve("a", "approval-a-10000", who="bob", reason="checked with the site")
        assert approved.run_id is not None
        journal.step_intent(approved.run_id, "a-core1", 0, "grant-alternate-acl", 21.0)
        [step] = journal.steps_of(approved.run_id)
        journal.step_result(step.id, StepStatus.DONE, "acl granted", 22.0)
        journal.finish_run(approved.run_id, "ok", "", 23.0, done=frozenset({"a-core1"}))
        rows = journal.audit_records(office="a")
        assert [
            ("command", "alice", "handover", "sealed for disinfection"),
            ("command", "bob", "approve", "checked with the site"),
            ("run", "alice", approved.run_id, f"handover run {approved.run_id} of a (b) ended ok"),
        ] == [(r.kind, r.who, r.what, r.reason) for r in rows]
        assert rows[1].detail["decided"].startswith("approval approval-a-10000 by bob (1 of 1, by bob)")
        assert {"a-core1": {"steps": 1, "failed": 0, "last_step": "grant-alternate-acl", "status": "done",
                            "detail": "acl granted"}} == rows[2].detail["devices"]  # fmt: skip
        assert journal.verify_audit().ok


def test_baton_s_own_decisions_are_audited_routine_ones_not(tmp_path: Path) -> None:
    """A closure detected and handed over is a row; an observation that changes nothing is none."""
    clock = Clock()
    with Journal.open(tmp_path / "j.sqlite3") as journal:
        controller = _controller(journal, clock)
        before = len(journal.audit_records())
        controller.apply(OfficeObserved("a", OfficeVerdict.HEALTHY))
        assert before == len(journal.audit_records())
        controller.apply(OfficeObserved("a", OfficeVerdict.DOWN))
        clock.now = 30.0
        controller.apply(Ticked("a"))
        rows = journal.audit_records(office="a")
        assert [("decision", "baton", "OfficeObserved"), ("decision", "baton", "Ticked")] == [
            (r.kind, r.who, r.what) for r in rows
        ]
        assert "handing over to b" in rows[-1].reason


def test_a_refused_request_can_be_audited_on_its_own(tmp_path: Path) -> None:
    with Journal.open(tmp_path / "j.sqlite3") as journal:
        journal.record_audit(AuditEntry(time.time(), "refused", "mallory", "pause", "mallory may not pause"))
        assert ["refused"] == [r.kind for r in journal.audit_records()]
        assert journal.verify_audit().ok


def _filled(tmp_path: Path) -> Path:
    path = tmp_path / f"j-{next(_ids)}.sqlite3"
    clock = Clock()
    with Journal.open(path) as journal:
        controller = _controller(journal, clock)
        for at, office in enumerate(["a", "b", "c", "d"], start=1):
            clock.now = float(at)
            controller.declare_closure(office, who="alice", reason=f"drill {at}")
    return path


TAMPERING = [
    ("UPDATE audit SET reason = 'nothing happened' WHERE id = 3", 3, "was changed after it was written"),
    ("UPDATE audit SET who = 'bob' WHERE id = 2", 2, "was changed after it was written"),
    ("UPDATE audit SET at = at + 1 WHERE id = 4", 4, "was changed after it was written"),
    ("DELETE FROM audit WHERE id = 2", 3, "row 2 is missing"),
    ("UPDATE audit SET id = 100 WHERE id = 1", 2, "does not follow row 1"),
]


@pytest.mark.parametrize(("sql", "row", "why"), TAMPERING)
def test_tampering_shows_at_the_first_broken_row(tmp_path: Path, sql: str, row: int, why: str) -> None:
    """A changed, deleted or moved row breaks the chain at that row (or the next, for a deletion)."""
    path = _filled(tmp_path)
    with sqlite3.connect(path) as conn:
        conn.execute(sql)
    with Journal.open(path) as journal:
        result = journal.verify_audit()
    assert (False, row) == (result.ok, result.broken_id)
    assert why in result.why


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(topology=topologies(), policy=policies, data=st.data())
def test_any_history_chains_and_any_changed_row_is_found(
    topology: State, policy: Policy, data: st.DataObject, tmp_path: Path
) -> None:
    """Whatever Baton decided, the chain verifies; changing any field of any row is found there."""
    path = tmp_path / f"j-{next(_ids)}.sqlite3"
    clock = Clock()
    with Journal.open(path) as journal:
        controller = Controller(State(offices=MappingProxyType({})), policy, journal, Recorder(), clock)
        chains = {name: office.alternates for name, office in topology.offices.items()}
        controller.apply(config_event(chains, False, policy))
        controller.apply(LeaseChanged(held=True))
        for _ in range(data.draw(st.integers(1, 30))):
            clock.now += data.draw(st.sampled_from([0.0, 1.0, 30.0, 700.0]))
            event = draw_event(data, controller.state, clock.now)
            who = getattr(event, "who", None)
            if who is not None:
                controller.command("x", event, who=who, reason="r", args={})
            else:
                controller.apply(event)
        assert journal.verify_audit().ok
        count = len(journal.audit_records())
    if not count:
        return
    row = data.draw(st.integers(1, count))
    column = data.draw(st.sampled_from(["at", "kind", "office", "who", "what", "reason", "detail"]))
    with sqlite3.connect(path) as conn:
        old = conn.execute(f"SELECT {column} FROM audit WHERE id = ?", (row,)).fetchone()[0]  # noqa: S608
        new = (old + 0.5) if isinstance(old, float) else f"{old}!"
        conn.execute(f"UPDATE audit SET {column} = ? WHERE id = ?", (new, row))  # noqa: S608
    with Journal.open(path) as journal:
        result = journal.verify_audit()
    assert (False, row) == (result.ok, result.broken_id)
