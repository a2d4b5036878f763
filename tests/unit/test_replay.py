"""`baton replay`: every journaled decision re-derived from its journaled input, offline."""

from __future__ import annotations

import itertools
import sqlite3
from pathlib import Path
from types import MappingProxyType

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from baton.cli import main
from baton.controller import Controller, config_event
from baton.core.events import LeaseChanged, Stopping
from baton.core.model import Policy, State
from baton.journal import Journal
from baton.replay import replay
from baton.tables import safe_text
from tests.unit.test_properties import draw_event, policies, topologies
from tests.unit.test_restart import Clock, Recorder

_ids = itertools.count()


def _journal(tmp_path: Path, topology: State, policy: Policy, data: st.DataObject) -> Path:
    path = tmp_path / f"journal-{next(_ids)}.sqlite3"
    clock = Clock()
    with Journal.open(path) as journal:
        controller = Controller(State(offices=MappingProxyType({})), policy, journal, Recorder(), clock)
        chains = {name: office.alternates for name, office in topology.offices.items()}
        controller.apply(config_event(chains, False, policy))
        controller.apply(LeaseChanged(held=True))
        for _ in range(data.draw(st.integers(1, 40))):
            clock.now += data.draw(st.sampled_from([0.0, 1.0, 10.0, 30.0, 700.0, 4000.0]))
            controller.apply(draw_event(data, controller.state, clock.now))
    return path


@settings(
    max_examples=80,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(topology=topologies(), policy=policies, data=st.data())
def test_every_decision_is_reproduced(
    topology: State, policy: Policy, data: st.DataObject, tmp_path: Path
) -> None:
    """Any sequence of events: each journaled decision re-derived is the same decision."""
    path = _journal(tmp_path, topology, policy, data)
    with Journal.open(path) as journal:
        results = list(replay(journal))
    assert results
    assert [] == [(r.trigger, r.differences) for r in results if r.differences]


@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(topology=topologies(), policy=policies, data=st.data())
def test_compaction_keeps_replay_exact(
    topology: State, policy: Policy, data: st.DataObject, tmp_path: Path
) -> None:
    """Old decisions compacted into a snapshot: the rest still replays without a difference."""
    path = _journal(tmp_path, topology, policy, data)
    with Journal.open(path) as journal:
        rows = journal.decisions()
        cut = rows[data.draw(st.integers(0, len(rows) - 1))].at
        journal.compact(cut)
        assert [] == [(r.trigger, r.differences) for r in replay(journal) if r.differences]


def test_a_tampered_decision_is_flagged(tmp_path: Path) -> None:
    """A journaled reason that the core would not give is reported, and the exit code says so."""
    path = tmp_path / "journal.sqlite3"
    with Journal.open(path) as journal:
        controller = Controller(State(offices=MappingProxyType({})), Policy(), journal, Recorder(), Clock())
        controller.apply(config_event({"a": ("b",), "b": ("a",)}, False, Policy()))
        controller.declare_closure("a", who="alice", reason="fire")
        controller.apply(Stopping())
    assert 0 == main(["replay", "--journal", str(path)])
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE decisions SET reason = 'nothing happened' WHERE event LIKE '%ClosureDeclared%'")
    assert 1 == main(["replay", "--journal", str(path)])


def test_terminal_output_escapes_control_characters() -> None:
    assert "a\\x1b[2Jb\\u202ec\\x00" == safe_text("a\x1b[2Jb\u202ec\x00")
    assert "plain text" == safe_text("plain text")
