"""The controller: core decisions journaled before they are acted on, commands recorded with who/why."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from types import MappingProxyType

import pytest

from baton.controller import Controller, config_event, restore
from baton.core.actions import AbortRun, StartRun
from baton.core.events import LeaseChanged, OfficeObserved, RunFinished
from baton.core.model import Inventory, Office, OfficeState, OfficeVerdict, Phase, Policy, RunKind, State
from baton.journal import Journal


class RecordingActuator:
    """Collects the run actions, and checks each was journaled before it reached us."""

    def __init__(self, journal: Journal) -> None:
        self.journal = journal
        self.started: list[StartRun] = []
        self.aborted: list[AbortRun] = []

    def start_run(self, action: StartRun) -> None:
        # Journaled first, in one transaction: the office's phase, and the run's own row.
        assert self.journal.last_state()[1][action.office].phase is Phase.HANDING_OVER
        assert self.journal.run(action.run_id) is not None
        self.started.append(action)

    def abort_run(self, action: AbortRun) -> None:
        self.aborted.append(action)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


INVENTORY = Inventory(
    offices={
        "gc": Office("gc", "Geumcheon", "seoul", ("bb", "sw")),
        "bb": Office("bb", "Bangbae", "seoul", ("gc",)),
        "sw": Office("sw", "Suwon", "seoul", ("gc",)),
    },
    devices={},
)


@pytest.fixture
def journal(tmp_path: Path) -> Iterator[Journal]:
    j = Journal.open(tmp_path / "journal.sqlite3")
    yield j
    j.close()


def chains(inventory: Inventory) -> dict[str, tuple[str, ...]]:
    return {o.id: o.alternates for o in inventory.offices.values()}


def make(journal: Journal) -> tuple[Controller, RecordingActuator, Clock]:
    clock = Clock()
    actuator = RecordingActuator(journal)
    controller = Controller(State(offices=MappingProxyType({})), Policy(), journal, actuator, clock)
    controller.apply(config_event(chains(INVENTORY), False, Policy()))
    controller.apply(LeaseChanged(held=True))
    return controller, actuator, clock


def test_declared_closure_is_journaled_then_starts_one_run(journal: Journal) -> None:
    """An operator's handover journals the command and the transition, then starts exactly one run."""
    controller, actuator, _ = make(journal)
    outcome = controller.declare_closure("gc", who="alice", reason="sealed for disinfection")
    assert outcome.accepted
    assert [("gc", RunKind.HANDOVER, "bb")] == [(a.office, a.kind, a.alternate) for a in actuator.started]
    assert outcome.run_id == actuator.started[0].run_id
    [command] = journal.commands()
    assert ("alice", "handover", "sealed for disinfection") == (command.who, command.command, command.reason)
    assert Phase.HANDING_OVER == journal.last_state()[1]["gc"].phase


def test_refused_command_changes_nothing_and_says_why(journal: Journal) -> None:
    """A handback of an office that is open is refused with the core's reason, and still journaled."""
    controller, actuator, _ = make(journal)
    outcome = controller.request_handback("gc", who="bob", reason="reopened")
    assert not outcome.accepted
    assert outcome.reason
    assert [] == actuator.started
    assert 1 == len(journal.commands())


def test_run_result_moves_the_office_and_replay_restores_it(journal: Journal) -> None:
    """After a run finishes, a controller rebuilt from the journal has the same office phase."""
    controller, actuator, clock = make(journal)
    controller.declare_closure("gc", who="alice", reason="fire")
    run_id = actuator.started[0].run_id
    clock.now += 5
    controller.apply(RunFinished("gc", run_id, RunKind.HANDOVER, ok=True, detail="3/3 devices confirmed"))
    replayed = restore(journal)
    assert Phase.HANDED_OVER == replayed.offices["gc"].phase
    assert "bb" == replayed.offices["gc"].alternate


def test_routine_observations_are_not_journaled(journal: Journal) -> None:
    """Repeated HEALTHY rounds write one transition (the verdict change), not one per round."""
    controller, _, clock = make(journal)
    for _ in range(5):
        clock.now += 10
        controller.apply(OfficeObserved("sw", OfficeVerdict.HEALTHY, "3/3 critical devices up"))
    assert 1 == len(journal.transitions(office="sw"))


def test_pause_is_journaled_as_a_flag_change_with_who(journal: Journal) -> None:
    """Pausing records the flags and who paused."""
    controller, _, _ = make(journal)
    controller.set_paused(True, who="carol", reason="maintenance window")
    assert (True, False) == (journal.last_flags().paused, journal.last_flags().shadow)
    assert controller.state.paused


def test_inventory_reload_keeps_phases_and_adopts_new_chains(journal: Journal) -> None:
    """A reloaded inventory keeps an office's phase and takes its new alternate chain."""
    controller, _, _ = make(journal)
    controller.declare_closure("gc", who="alice", reason="flood")
    offices = dict(INVENTORY.offices)
    offices["gc"] = Office("gc", "Geumcheon", "seoul", ("sw",))
    offices["gw"] = Office("gw", "Gwacheon", "seoul", ())
    controller.apply(config_event(chains(Inventory(offices=offices, devices={})), False, Policy()))
    assert Phase.HANDING_OVER == controller.state.offices["gc"].phase
    assert ("sw",) == controller.state.offices["gc"].alternates
    assert OfficeState(office="gw") == controller.state.offices["gw"]


def test_a_decision_is_one_row_with_its_input_and_the_run_it_starts(journal: Journal) -> None:
    """The decision row holds the event, the reason, the actions; the run row came with it."""
    controller, actuator, _ = make(journal)
    controller.declare_closure("gc", who="alice", reason="fire")
    last = journal.decisions()[-1]
    assert '"type":"ClosureDeclared"' in last.event
    assert "StartRun" in last.actions
    assert "office gc declared closed by alice (fire); handing over to bb" == last.reason
    run = journal.run(actuator.started[0].run_id)
    assert run is not None
    assert ("gc", "bb", "alice") == (run.office, run.alternate, run.who)
