"""The journal: round-trips, replay, unfinished runs, schema versioning, and clear failures."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from baton.core.model import Closure, OfficeState, OfficeVerdict, Phase, RunKind
from baton.journal import (
    SCHEMA_VERSION,
    Flags,
    Journal,
    JournalError,
    StepStatus,
    state_from_json,
    state_to_json,
)
from baton.secrets import Secret


@pytest.fixture
def journal(tmp_path: Path) -> Iterator[Journal]:
    j = Journal.open(tmp_path / "journal.db")
    yield j
    j.close()


def full_state() -> OfficeState:
    return OfficeState(
        office="gc",
        alternates=("bb", "yd"),
        phase=Phase.HANDING_OVER,
        since=120.5,
        verdict=OfficeVerdict.DOWN,
        verdict_since=90.0,
        verdict_detail="6/8 critical devices down",
        closure=Closure(kind="declared", at=100.0, reason="fire drill", who="kim", until=900.0, to="bb"),
        alternate="bb",
        run_id="r-1",
        run_kind=RunKind.HANDOVER,
        blocked_until=3720.0,
        flapping=True,
        history=(OfficeVerdict.HEALTHY, OfficeVerdict.DOWN),
        alerts=frozenset({"flapping", "run_failed"}),
    )


def test_office_state_survives_json() -> None:
    """Every field of an OfficeState, enums and closure included, comes back equal from JSON."""
    state = full_state()
    assert state == state_from_json(state_to_json(state))


@given(
    phase=st.sampled_from(Phase),
    verdict=st.sampled_from(OfficeVerdict),
    history=st.lists(st.sampled_from(OfficeVerdict), max_size=5),
    alerts=st.frozensets(st.text(min_size=1, max_size=8), max_size=3),
    blocked=st.none() | st.floats(allow_nan=False, allow_infinity=False),
)
def test_office_state_json_property(
    phase: Phase,
    verdict: OfficeVerdict,
    history: list[OfficeVerdict],
    alerts: frozenset[str],
    blocked: float | None,
) -> None:
    """Any OfficeState round-trips through its JSON form unchanged."""
    state = OfficeState(
        office="x", phase=phase, verdict=verdict, history=tuple(history), alerts=alerts, blocked_until=blocked
    )
    assert state == state_from_json(state_to_json(state))


def test_last_states_replays_latest_state_per_office(journal: Journal) -> None:
    """Replay gives the state after the last transition of each office."""
    gc0 = OfficeState(office="gc")
    gc1 = OfficeState(office="gc", phase=Phase.SUSPECT, since=10.0)
    gc2 = full_state()
    bb1 = OfficeState(office="bb", phase=Phase.OPEN, verdict=OfficeVerdict.HEALTHY)
    journal.record_transition(None, gc0, "first seen", 0.0)
    journal.record_transition(gc0, gc1, "DOWN", 10.0)
    journal.record_transition(None, bb1, "first seen", 11.0)
    journal.record_transition(gc1, gc2, "declared", 12.0)
    assert {"gc": gc2, "bb": bb1} == journal.last_states()


def test_replay_survives_reopen(tmp_path: Path) -> None:
    """What was journaled before close is what a reopened journal replays."""
    path = tmp_path / "j.db"
    with Journal.open(path) as j:
        j.record_transition(None, full_state(), "declared", 1.0)
        j.record_flags(paused=True, shadow=False, who="kim", reason="maintenance", at=2.0)
    with Journal.open(path) as j:
        assert {"gc": full_state()} == j.last_states()
        assert Flags(paused=True, shadow=False) == j.last_flags()


def test_transition_records_phases_and_reason(journal: Journal) -> None:
    """A transition keeps from/to phases, reason and time; newest first."""
    before = OfficeState(office="gc", phase=Phase.SUSPECT)
    after = OfficeState(office="gc", phase=Phase.CLOSED)
    journal.record_transition(before, after, "held DOWN for 30 s", 42.0)
    [record] = journal.transitions("gc")
    assert (Phase.SUSPECT, Phase.CLOSED, "held DOWN for 30 s", 42.0, after) == (
        record.from_phase,
        record.to_phase,
        record.reason,
        record.at,
        record.state,
    )


def test_transition_between_two_offices_is_refused(journal: Journal) -> None:
    """A transition whose before and after name different offices is a bug, not a record."""
    with pytest.raises(ValueError, match="two offices"):
        journal.record_transition(OfficeState(office="a"), OfficeState(office="b"), "?", 0.0)


def test_flags_default_to_unpaused(journal: Journal) -> None:
    """A fresh journal replays as neither paused nor shadow."""
    assert Flags(paused=False, shadow=False) == journal.last_flags()


def test_last_flags_are_the_latest(journal: Journal) -> None:
    """The last flags record wins."""
    journal.record_flags(True, True, "kim", "x", 1.0)
    journal.record_flags(False, True, "lee", "y", 2.0)
    assert Flags(paused=False, shadow=True) == journal.last_flags()


def test_run_and_steps_round_trip(journal: Journal) -> None:
    """A run with its confirm window and steps reads back exactly as written."""
    journal.start_run("r-1", "gc", RunKind.HANDOVER, "bb", "declared", "kim", 10.0)
    journal.set_confirm("r-1", 310.0, "persist-abc")
    s1 = journal.step_intent("r-1", "gc-core-1", 0, "acl", 11.0)
    journal.step_result(s1, StepStatus.DONE, "ok", 12.0)
    s2 = journal.step_intent("r-1", "gc-core-1", 1, "verify", 13.0, phase="verify", attempt=2)
    journal.step_result(s2, StepStatus.FAILED, "acl entry missing", 14.0)
    journal.finish_run("r-1", "rolled_back", "verify failed on gc-core-1", 20.0)

    run = journal.run("r-1")
    assert run is not None
    assert (
        "gc",
        RunKind.HANDOVER,
        "bb",
        "declared",
        "kim",
        10.0,
        20.0,
        "rolled_back",
        "verify failed on gc-core-1",
        310.0,
        "persist-abc",
    ) == (
        run.office,
        run.kind,
        run.alternate,
        run.reason,
        run.who,
        run.started,
        run.finished,
        run.result,
        run.detail,
        run.confirm_deadline,
        run.persist_id,
    )
    assert [
        ("gc-core-1", 0, "acl", "apply", StepStatus.DONE, 11.0, 12.0, "ok", 1),
        ("gc-core-1", 1, "verify", "verify", StepStatus.FAILED, 13.0, 14.0, "acl entry missing", 2),
    ] == [
        (s.device, s.index, s.name, s.phase, s.status, s.started, s.finished, s.detail, s.attempt)
        for s in run.steps
    ]


def test_unknown_run_reads_as_none(journal: Journal) -> None:
    """Asking for a run that was never started gives None."""
    assert journal.run("nope") is None


def test_unfinished_runs_list_runs_with_their_step_statuses(journal: Journal) -> None:
    """Only runs never finished are listed, with intent-only steps visible for resume/rollback."""
    journal.start_run("done", "yd", RunKind.HANDOVER, "bb", "r", "baton", 1.0)
    journal.finish_run("done", "ok", "", 2.0)
    journal.start_run("half", "gc", RunKind.HANDOVER, "bb", "r", "baton", 3.0)
    s1 = journal.step_intent("half", "d1", 0, "acl", 4.0)
    journal.step_result(s1, StepStatus.DONE, "", 5.0)
    journal.step_intent("half", "d2", 0, "acl", 6.0)

    [run] = journal.unfinished_runs()
    assert ("half", [("d1", StepStatus.DONE), ("d2", StepStatus.INTENT)]) == (
        run.id,
        [(s.device, s.status) for s in run.steps],
    )


def test_step_gets_exactly_one_result(journal: Journal) -> None:
    """A second result for the same step is refused (a step never silently changes outcome)."""
    journal.start_run("r", "gc", RunKind.HANDOVER, "bb", "r", "baton", 1.0)
    step = journal.step_intent("r", "d1", 0, "acl", 2.0)
    journal.step_result(step, StepStatus.DONE, "", 3.0)
    with pytest.raises(JournalError, match="already has a result"):
        journal.step_result(step, StepStatus.ROLLED_BACK, "", 4.0)


def test_step_of_unknown_or_finished_run_is_refused(journal: Journal) -> None:
    """Steps can only be journaled inside a started, unfinished run."""
    with pytest.raises(JournalError, match="unknown run"):
        journal.step_intent("ghost", "d1", 0, "acl", 1.0)
    journal.start_run("r", "gc", RunKind.HANDOVER, "bb", "r", "baton", 1.0)
    journal.finish_run("r", "ok", "", 2.0)
    with pytest.raises(JournalError, match="finished"):
        journal.step_intent("r", "d1", 0, "acl", 3.0)


def test_run_finishes_once(journal: Journal) -> None:
    """Finishing a finished run is refused, not overwritten."""
    journal.start_run("r", "gc", RunKind.HANDOVER, "bb", "r", "baton", 1.0)
    journal.finish_run("r", "ok", "", 2.0)
    with pytest.raises(JournalError, match="already finished"):
        journal.finish_run("r", "failed", "", 3.0)
    run = journal.run("r")
    assert run is not None
    assert "ok" == run.result


def test_runs_lists_newest_first_and_filters_by_office(journal: Journal) -> None:
    """`runs` is newest first, limited, and optionally for one office."""
    for i, office in enumerate(["gc", "bb", "gc", "gc"]):
        journal.start_run(f"r{i}", office, RunKind.HANDOVER, "x", "r", "baton", float(i))
    assert ["r3", "r2"] == [r.id for r in journal.runs(limit=2)]
    assert ["r3", "r2", "r0"] == [r.id for r in journal.runs(office="gc")]


def test_command_round_trip(journal: Journal) -> None:
    """An operator command keeps who, what, why and its arguments."""
    journal.record_command("kim", "handover", {"office": "gc", "to": "bb"}, "fire drill", 5.0)
    [cmd] = journal.commands()
    assert ("kim", "handover", {"office": "gc", "to": "bb"}, "fire drill", 5.0) == (
        cmd.who,
        cmd.command,
        cmd.args,
        cmd.reason,
        cmd.at,
    )


def test_command_with_a_resolved_secret_is_refused_without_echoing_it(journal: Journal) -> None:
    """A `Secret` in command arguments raises, and neither the error nor the journal holds it."""
    with pytest.raises(JournalError) as info:
        journal.record_command("kim", "login", {"password": Secret("hunter2")}, "oops", 1.0)
    assert "hunter2" not in str(info.value)
    assert [] == journal.commands()
    assert b"hunter2" not in Path(journal.path).read_bytes()


def test_active_alerts_follow_raise_and_clear(journal: Journal) -> None:
    """An alert is active when its last record raised it."""
    journal.record_alert("storm_guard", None, True, "3 offices down", 1.0)
    journal.record_alert("run_failed", "gc", True, "run r-1 failed", 2.0)
    journal.record_alert("storm_guard", None, False, "", 3.0)
    assert [("run_failed", "gc")] == [(a.alert, a.office) for a in journal.active_alerts()]


def test_fresh_journal_is_wal_with_current_schema(tmp_path: Path) -> None:
    """A new journal is in WAL mode and stamped with the current schema version."""
    path = tmp_path / "j.db"
    Journal.open(path).close()
    conn = sqlite3.connect(path)
    try:
        assert ("wal", SCHEMA_VERSION) == (
            conn.execute("PRAGMA journal_mode").fetchone()[0],
            conn.execute("PRAGMA user_version").fetchone()[0],
        )
    finally:
        conn.close()


def test_journal_from_newer_baton_is_refused(tmp_path: Path) -> None:
    """A journal with a schema version this Baton does not know is refused with the path."""
    path = tmp_path / "j.db"
    Journal.open(path).close()
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(JournalError, match="newer Baton") as info:
        Journal.open(path)
    assert str(path) == info.value.path


def test_corrupt_journal_is_a_clear_error(tmp_path: Path) -> None:
    """A file that is not a SQLite database gives JournalError naming the path and corruption."""
    path = tmp_path / "j.db"
    path.write_bytes(b"this is not a database, it is a shopping list\n" * 100)
    with pytest.raises(JournalError, match="corrupt") as info:
        Journal.open(path)
    assert str(path) in str(info.value)


def test_unwritable_location_is_a_clear_error(tmp_path: Path) -> None:
    """A journal in a directory that does not exist gives JournalError naming the path."""
    path = tmp_path / "missing" / "j.db"
    with pytest.raises(JournalError, match="writable") as info:
        Journal.open(path)
    assert str(path) == info.value.path


def test_failed_write_leaves_nothing_behind(journal: Journal) -> None:
    """A write refused mid-transaction is rolled back whole (no half record)."""
    journal.start_run("r", "gc", RunKind.HANDOVER, "bb", "r", "baton", 1.0)
    with pytest.raises(JournalError):
        journal.start_run("r", "gc", RunKind.HANDOVER, "bb", "duplicate id", "baton", 2.0)
    assert [("r", "r")] == [(r.id, r.reason) for r in journal.runs()]
