"""Devices that do not answer during a handover (`unreachable: skip`), and their catch-up, on the lab.

One lab (2 offices x 3 devices: two routers each, which the shipped playbooks target) serves all
tests of this module; every test leaves the devices as it found them (powered, accepting commits,
the closed office's own configuration).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from types import MappingProxyType

import pytest

from baton.controller import Controller, config_event
from baton.core.events import LeaseChanged, OfficeObserved, RunFinished
from baton.core.model import Inventory, OfficeState, OfficeVerdict, Phase, Policy, RunKind, SecretRef, State
from baton.inventory.loader import load_inventory
from baton.journal import Journal, StepRecord, StepStatus
from baton.lab.inventory_writer import write_inventory
from baton.lab.network import noc_source
from baton.playbook.plan import RunInfo, RunPlan, plan_run
from baton.playbook.progress import DeviceStatus
from baton.playbook.runner import UNREACHABLE, execute
from baton.playbook.schema import Playbook, load_playbook
from baton.playbook.steps import Connectors
from baton.runs import RunManager, RunSettings, chains_of
from baton.secrets import resolve
from tests.integration.runner_helpers import PLAYBOOKS
from tests.lab_fixtures import RunningLab

CLOSED = "seoul-geumcheon"
ALTERNATE = "seoul-bangbae"
AGG = f"{CLOSED}-agg1"
CORE = f"{CLOSED}-core1"


class Site:
    def __init__(self, running: RunningLab, inv_dir: Path) -> None:
        self.running = running
        self.inv_dir = inv_dir
        self.inventory: Inventory = load_inventory(inv_dir)
        self.connectors = Connectors(self.resolve, connect_timeout_s=10)

    def resolve(self, ref: SecretRef) -> str:
        return resolve(ref, base_dir=self.inv_dir)

    def plan(self, playbook: Playbook, run_id: str, kind: RunKind = RunKind.HANDOVER) -> RunPlan:
        plan = plan_run(playbook, self.inventory, CLOSED, ALTERNATE, RunInfo(run_id, kind, "test", "pytest"))
        assert () == plan.problems
        return plan

    def admits_alternate(self, device_id: str) -> bool:
        """Does the device's running ACL admit the alternate office's NOC?"""
        source = noc_source(self.running.lab.plan, ALTERNATE)
        return bool(self.running.lab.device(device_id).mgmt.allows(source))

    def down(self, device_id: str) -> None:
        self.running.call(lambda lab: lab.device_down(device_id))

    def up(self, device_id: str) -> None:
        self.running.call(lambda lab: lab.device_up(device_id))


def unreachable_devices(records: Iterable[StepRecord]) -> frozenset[str]:
    """The devices a run skipped as unreachable, as its journaled records say."""
    return frozenset(
        r.device for r in records if r.status is StepStatus.SKIPPED and r.facts.get("unreachable")
    )


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    running = RunningLab(tmp_path_factory.mktemp("lab"), f"{CLOSED},{ALTERNATE}", 3, netconf=True)
    try:
        yield Site(running, write_inventory(running.lab))
    finally:
        running.stop()


@pytest.fixture
def journal(tmp_path: Path) -> Iterator[Journal]:
    with Journal.open(tmp_path / "journal.sqlite3") as opened:
        yield opened


def handover() -> Playbook:
    return load_playbook(PLAYBOOKS / "handover.yaml")


def handback() -> Playbook:
    return load_playbook(PLAYBOOKS / "handback.yaml")


def handed_over(run_id: str) -> State:
    office = OfficeState(CLOSED, (ALTERNATE,), Phase.HANDED_OVER, alternate=ALTERNATE, run_id=run_id)
    return State({CLOSED: office, ALTERNATE: OfficeState(ALTERNATE, (CLOSED,))})


class Daemon:
    """The core, the journal and the run manager, wired as the service wires them, on the lab."""

    def __init__(self, site: Site, journal: Journal) -> None:
        self.site = site
        settings = RunSettings(site.inventory, self.choose, 300.0, None)
        self.runs = RunManager(journal, site.connectors, settings, self.finished)
        self.controller = Controller(
            State(offices=MappingProxyType({})), Policy(), journal, self.runs, time.time
        )
        self.controller.apply(config_event(chains_of(site.inventory), False, Policy()))
        self.controller.apply(LeaseChanged(held=True))
        self.results: list[RunFinished] = []

    @staticmethod
    def choose(kind: RunKind, office: str) -> Playbook | str:
        return handover() if kind is RunKind.HANDOVER else handback()

    def finished(self, event: RunFinished) -> None:
        self.results.append(event)
        self.controller.apply(event)

    def office(self) -> OfficeState:
        return self.controller.state.offices[CLOSED]

    async def idle(self, timeout_s: float = 120.0) -> None:
        """Until no run is in progress (a safety net, not a timing assertion)."""
        deadline = time.monotonic() + timeout_s
        while self.runs.running:
            assert time.monotonic() < deadline, "runs never ended"
            await asyncio.sleep(0.05)

    def observe(self, *answering: str) -> None:
        self.controller.apply(OfficeObserved(CLOSED, OfficeVerdict.DOWN, "test", frozenset(answering)))


async def test_unreachable_device_is_skipped_then_caught_up(site: Site, journal: Journal) -> None:
    """A powered-off router is skipped (pending), the other handed over; back UP, the core starts a
    catch-up that hands it over; the handback returns both."""
    assert "skip" == handover().unreachable
    daemon = Daemon(site, journal)
    site.down(AGG)
    try:
        daemon.controller.declare_closure(CLOSED, who="pytest", reason="power cut")
        await daemon.idle()
    finally:
        site.up(AGG)
    [first] = daemon.results
    assert (True, frozenset({AGG})) == (first.ok, first.pending)
    assert "ok: 1 device(s) handed over, 1 unreachable (pending)" == first.detail
    assert (Phase.HANDED_OVER, frozenset({AGG})) == (daemon.office().phase, daemon.office().pending)
    assert [True, False] == [site.admits_alternate(CORE), site.admits_alternate(AGG)]
    record = journal.run(first.run_id)
    assert record is not None
    assert {StepStatus.SKIPPED} == {s.status for s in record.steps if s.device == AGG}
    assert all(s.detail.startswith(UNREACHABLE) for s in record.steps if s.device == AGG)
    assert frozenset({AGG}) == unreachable_devices(record.steps)

    daemon.observe()  # still silent: nothing starts
    assert not daemon.runs.running
    daemon.observe(AGG)  # it answers: a catch-up of that device alone
    catchup_id = daemon.office().catchup_id
    assert catchup_id is not None
    assert catchup_id.startswith(f"catchup-{CLOSED}-")
    daemon.observe(AGG)  # never two runs for one office
    assert (catchup_id,) == daemon.runs.running
    await daemon.idle()
    catchup = journal.run(catchup_id)
    assert catchup is not None
    assert ("ok", RunKind.HANDOVER, CLOSED) == (catchup.result, catchup.kind, catchup.office)
    assert {AGG} == {s.device for s in catchup.steps}
    assert [True, True] == [site.admits_alternate(CORE), site.admits_alternate(AGG)]
    assert (frozenset(), None) == (daemon.office().pending, daemon.office().catchup_id)

    daemon.controller.request_handback(CLOSED, who="pytest", reason="power back")
    await daemon.idle()
    assert Phase.OPEN is daemon.office().phase
    assert [False, False] == [site.admits_alternate(CORE), site.admits_alternate(AGG)]


async def test_handback_tolerates_a_device_never_handed_over(site: Site, journal: Journal) -> None:
    """Handback after a partial handover: the device that missed the handover is handed back cleanly."""
    site.down(AGG)
    try:
        over = await execute(site.plan(handover(), "run-1"), journal=journal, connectors=site.connectors)
    finally:
        site.up(AGG)
    assert "ok" == over.result, over.detail

    back = await execute(
        site.plan(handback(), "run-2", RunKind.HANDBACK), journal=journal, connectors=site.connectors
    )

    assert "ok" == back.result, back.detail
    assert [DeviceStatus.CONFIRMED] * 2 == [back.device(d).status for d in (AGG, CORE)]
    assert [False, False] == [site.admits_alternate(CORE), site.admits_alternate(AGG)]


async def test_unreachable_fail_is_still_the_default(site: Site, journal: Journal) -> None:
    """Without `unreachable: skip`, a device that does not answer fails the run, which rolls back."""
    playbook = handover().model_copy(update={"unreachable": "fail"})
    site.down(AGG)
    try:
        outcome = await execute(site.plan(playbook, "run-1"), journal=journal, connectors=site.connectors)
    finally:
        site.up(AGG)

    assert "rolled_back" == outcome.result, outcome.detail
    assert DeviceStatus.FAILED == outcome.device(AGG).status
    assert () == outcome.unreachable
    assert [False, False] == [site.admits_alternate(CORE), site.admits_alternate(AGG)]
    record = journal.run("run-1")
    assert record is not None
    assert frozenset() == unreachable_devices(record.steps)


async def test_a_device_refusing_commits_still_fails_with_skip(site: Site, journal: Journal) -> None:
    """`skip` covers only devices that do not answer: one that rejects the commit fails the run."""
    site.down(AGG)
    site.running.call(lambda lab: lab.refuse_commits(CORE, True))
    try:
        outcome = await execute(site.plan(handover(), "run-1"), journal=journal, connectors=site.connectors)
    finally:
        site.running.call(lambda lab: lab.refuse_commits(CORE, False))
        site.up(AGG)

    assert "rolled_back" == outcome.result, outcome.detail
    assert "rpc-error" in (outcome.device(CORE).error or "")
    assert DeviceStatus.ROLLED_BACK == outcome.device(CORE).status
    assert DeviceStatus.UNREACHABLE == outcome.device(AGG).status
    assert [False, False] == [site.admits_alternate(CORE), site.admits_alternate(AGG)]
    # A failed handover leaves nothing pending: the office is FAILED, not HANDED_OVER.
    assert frozenset() == outcome.to_event().done


async def test_no_device_reachable_is_ok_with_all_pending(site: Site, journal: Journal) -> None:
    """A fully powered-off office: the run is ok, nothing handed over, every device pending."""
    site.down(AGG)
    site.down(CORE)
    try:
        outcome = await execute(site.plan(handover(), "run-1"), journal=journal, connectors=site.connectors)
    finally:
        site.up(CORE)
        site.up(AGG)

    assert "ok" == outcome.result, outcome.detail
    assert "ok: 0 device(s) handed over, 2 unreachable (pending)" == outcome.detail
    assert frozenset({AGG, CORE}) == outcome.to_event().pending
    record = journal.run("run-1")
    assert record is not None
    assert frozenset({AGG, CORE}) == record.pending  # kept with the run: reconciled after a restart
    assert [False, False] == [site.admits_alternate(CORE), site.admits_alternate(AGG)]


async def test_a_handback_waits_for_the_catch_up_it_stops(site: Site, journal: Journal) -> None:
    """A handback asked while a catch-up runs: the catch-up is aborted (rolled back), then the
    handback runs — one run at a time for the office."""
    daemon = Daemon(site, journal)
    site.down(AGG)
    try:
        daemon.controller.declare_closure(CLOSED, who="pytest", reason="power cut")
        await daemon.idle()
    finally:
        site.up(AGG)
    site.running.call(lambda lab: lab.slow(AGG, 2.0))  # the catch-up is still running when asked
    try:
        daemon.observe(AGG)
        catchup_id = daemon.office().catchup_id
        assert catchup_id is not None
        await asyncio.sleep(0.5)
        outcome = daemon.controller.request_handback(CLOSED, who="pytest", reason="power back")
        assert "stopping catch-up run" in outcome.reason
        await daemon.idle()
    finally:
        site.running.call(lambda lab: lab.slow(AGG, 0.0))
    catchup = journal.run(catchup_id)
    assert catchup is not None
    assert "ok" != catchup.result
    kinds = [(r.kind, r.ok) for r in daemon.results]
    assert [(RunKind.HANDOVER, True), (RunKind.HANDOVER, False), (RunKind.HANDBACK, True)] == kinds
    assert Phase.OPEN is daemon.office().phase
    assert [False, False] == [site.admits_alternate(CORE), site.admits_alternate(AGG)]


async def test_a_run_that_crashes_is_recovered_and_listed(
    site: Site, journal: Journal, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bug in Baton mid-run (here: the decision raises): the run is recovered at once from its
    journal rows (the devices back as they were), finished, and listed with the office's runs."""
    from baton.playbook import runner

    async def broken(self: object) -> None:
        raise RuntimeError("a bug in the decision")

    monkeypatch.setattr(runner._Run, "_decide", broken)
    daemon = Daemon(site, journal)
    daemon.controller.declare_closure(CLOSED, who="pytest", reason="power cut")
    await daemon.idle()
    [event] = daemon.results
    assert not event.ok
    assert "run crashed: RuntimeError: a bug in the decision" in event.detail
    [listed] = [r for r in journal.runs(office=CLOSED) if r.id == event.run_id]
    assert listed.finished is not None
    assert [False, False] == [site.admits_alternate(CORE), site.admits_alternate(AGG)]
    assert daemon.office().phase is Phase.FAILED
