"""Restart changes nothing: one journal transaction per decision, restored exactly.

For random event sequences, stepping them all through a controller equals stepping a prefix,
restarting from the journal (a new process: `restore`), and stepping the rest — the same final
state, flags, storm bookkeeping, flap history, blocks and alerts, and the same actions after the
restart. And no sequence of events, restarts and failed journal writes leaves an office in a
running phase without its run row in the journal.
"""

from __future__ import annotations

import itertools
from dataclasses import replace
from pathlib import Path
from types import MappingProxyType

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from baton.controller import Controller, JournalFailed, config_event, restore
from baton.core.actions import AbortRun, Action, StartRun
from baton.core.events import ConfigLoaded, Event, LeaseChanged, Stopping
from baton.core.model import Phase, Policy, State
from baton.journal import Journal, JournalError
from tests.unit.test_properties import draw_event, policies, topologies

RUNNING = (Phase.HANDING_OVER, Phase.HANDING_BACK)
_ids = itertools.count()


class Recorder:
    """The actuator: remembers what it was told to do."""

    def __init__(self) -> None:
        self.actions: list[Action] = []

    def start_run(self, action: StartRun) -> None:
        self.actions.append(action)

    def abort_run(self, action: AbortRun) -> None:
        self.actions.append(action)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def journal_in(tmp_path: Path) -> Journal:
    return Journal.open(tmp_path / f"journal-{next(_ids)}.sqlite3")


def comparable(state: State) -> State:
    """Leadership and stopping belong to a process, not to the journal."""
    return replace(state, leader=True, stopping=False)


@settings(
    max_examples=120,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(topology=topologies(), policy=policies, data=st.data())
def test_a_restart_changes_nothing(
    topology: State, policy: Policy, data: st.DataObject, tmp_path: Path
) -> None:
    """All events in one process == a prefix, a restart from the journal, then the rest."""
    chains = {name: office.alternates for name, office in topology.offices.items()}
    load = config_event(chains, False, policy)
    count = data.draw(st.integers(1, 40))
    split = data.draw(st.integers(0, count))

    whole_clock, whole = Clock(), Recorder()
    timed: list[tuple[float, Event]] = []
    acted_before_split = 0
    with journal_in(tmp_path) as journal:
        controller = Controller(State(offices=MappingProxyType({})), policy, journal, whole, whole_clock)
        controller.apply(load)
        controller.apply(LeaseChanged(held=True))
        for i in range(count):
            if i == split:
                acted_before_split = len(whole.actions)
            whole_clock.now += data.draw(st.sampled_from([0.0, 1.0, 10.0, 30.0, 100.0, 700.0, 4000.0]))
            event = draw_event(data, controller.state, whole_clock.now)
            if isinstance(event, Stopping):
                event = LeaseChanged(held=controller.state.leader)  # a process's own flag: not kept
            timed.append((whole_clock.now, event))
            controller.apply(event)
        if split == count:
            acted_before_split = len(whole.actions)
        expected = controller.state

    clock = Clock()
    with journal_in(tmp_path) as journal:
        controller = Controller(State(offices=MappingProxyType({})), policy, journal, Recorder(), clock)
        controller.apply(load)
        controller.apply(LeaseChanged(held=True))
        for at, event in timed[:split]:
            clock.now = at
            controller.apply(event)
        leader, elsewhere = controller.state.leader, controller.state.leader_elsewhere
        # A new process: the state from the journal, the configuration loaded again (the same
        # file), the lease and who holds it as the leadership says.
        second = Recorder()
        last_load = next((e for _, e in reversed(timed[:split]) if isinstance(e, ConfigLoaded)), load)
        restarted = Controller(restore(journal), last_load.policy, journal, second, clock)
        restarted.apply(last_load)
        restarted.apply(LeaseChanged(held=leader, leader=elsewhere))
        on_restart = len(second.actions)
        for at, event in timed[split:]:
            clock.now = at
            restarted.apply(event)
    assert comparable(expected) == comparable(restarted.state)
    # After the restart the same decisions are acted on (a lost lease's aborts are re-sent by
    # LeaseChanged, harmlessly: left out of the comparison).
    assert [a for a in whole.actions[acted_before_split:] if not isinstance(a, AbortRun)] == [
        a for a in second.actions[on_restart:] if not isinstance(a, AbortRun)
    ]


class _NullJournal:
    """For generating events only: accepts everything, keeps nothing."""

    def record_decision(self, decision: object) -> int:
        return 0


@settings(
    max_examples=80,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(topology=topologies(), policy=policies, data=st.data())
def test_no_office_is_ever_running_without_its_run(
    topology: State, policy: Policy, data: st.DataObject, tmp_path: Path
) -> None:
    """Whatever fails — a journal write, the process — a HANDING_* office (or a catch-up) in the
    journal always has its run row: the run is found and finished at the next start."""
    chains = {name: office.alternates for name, office in topology.offices.items()}
    clock = Clock()
    with journal_in(tmp_path) as journal:
        # Writes from the third on may fail: the first two set the process up (config, lease).
        failing = FlakyJournal(journal, data.draw(st.sets(st.integers(3, 60), max_size=6)))
        controller = Controller(
            State(offices=MappingProxyType({})), policy, failing, Recorder(), clock, sleep=lambda _: None
        )
        controller.apply(config_event(chains, False, policy))
        controller.apply(LeaseChanged(held=True))
        view = controller.state
        for _ in range(data.draw(st.integers(1, 50))):
            clock.now += data.draw(st.sampled_from([0.0, 1.0, 30.0, 700.0]))
            event = draw_event(data, view, clock.now)
            try:
                controller.apply(event)
            except JournalFailed:
                # The service stops here: a new process restores what the journal holds.
                controller = Controller(restore(journal), policy, journal, Recorder(), clock)
                controller.apply(LeaseChanged(held=True))
            view = controller.state
            _check_runs(journal)
        _check_runs(journal)


def _check_runs(journal: Journal) -> None:
    _, offices = journal.last_state()
    for office in offices.values():
        for run_id in (office.run_id if office.phase in RUNNING else None, office.catchup_id):
            if run_id is not None:
                assert journal.run(run_id) is not None, f"{office.office} {office.phase} without run {run_id}"


class FlakyJournal:
    """A journal whose writes fail on chosen calls (database locked, disk full)."""

    def __init__(self, journal: Journal, failing: set[int]) -> None:
        self._journal = journal
        self._failing = failing
        self._calls = 0

    def record_decision(self, decision: object) -> int:
        self._calls += 1
        if self._calls in self._failing:
            raise JournalError(self._journal.path, "database is locked")
        return self._journal.record_decision(decision)  # type: ignore[arg-type]


def test_stopping_is_not_kept(tmp_path: Path) -> None:
    """A process that was stopping restarts able to act (and nothing it refused is lost)."""
    with journal_in(tmp_path) as journal:
        controller = Controller(State(offices=MappingProxyType({})), Policy(), journal, Recorder(), Clock())
        controller.apply(config_event({"a": ("b",), "b": ("a",)}, False, Policy()))
        controller.apply(Stopping())
        assert controller.state.stopping
        assert not restore(journal).stopping


def test_a_journal_write_that_keeps_failing_stops_the_decision(tmp_path: Path) -> None:
    """Retried, then JournalFailed: the state is not changed and nothing is acted on."""
    with journal_in(tmp_path) as journal:
        recorder = Recorder()
        flaky = FlakyJournal(journal, set(range(2, 20)))  # every write after the first
        controller = Controller(
            State(offices=MappingProxyType({})), Policy(), flaky, recorder, Clock(), sleep=lambda _: None
        )  # type: ignore[arg-type]
        controller.apply(config_event({"a": ("b",), "b": ("a",)}, False, Policy()))
        controller.apply(LeaseChanged(held=True))
        before = controller.state
        from baton.core.events import ClosureDeclared

        with pytest.raises(JournalFailed):
            controller.apply(ClosureDeclared("a", "alice", "fire"))
        assert (before, []) == (controller.state, recorder.actions)
