"""Devices that do not answer during a handover (`unreachable: skip`), and their catch-up, on the lab.

One lab (2 offices x 3 devices: two routers each, which the shipped playbooks target) serves all
tests of this module; every test leaves the devices as it found them (powered, accepting commits,
the closed office's own configuration).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from baton.catchup import CatchUps, is_catchup_of, pending_devices
from baton.core.model import Inventory, OfficeState, Phase, RunKind, SecretRef, State
from baton.inventory.loader import load_inventory
from baton.journal import Journal, StepStatus
from baton.lab.inventory_writer import write_inventory
from baton.lab.network import noc_source
from baton.playbook.plan import RunInfo, RunPlan, plan_run
from baton.playbook.progress import skipped_unreachable as unreachable_devices
from baton.playbook.runner import UNREACHABLE, DeviceStatus, RunOutcome, execute
from baton.playbook.schema import Playbook, load_playbook
from baton.playbook.steps import Connectors
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


async def test_unreachable_device_is_skipped_then_caught_up(site: Site, journal: Journal) -> None:
    """A powered-off router is skipped (pending), the other handed over; back UP, a catch-up hands it over."""
    assert "skip" == handover().unreachable
    site.down(AGG)
    try:
        outcome = await execute(site.plan(handover(), "run-1"), journal=journal, connectors=site.connectors)
    finally:
        site.up(AGG)

    assert "ok" == outcome.result, outcome.detail
    assert "ok: 1 device(s) handed over, 1 unreachable (pending)" == outcome.detail
    assert (AGG,) == outcome.unreachable
    assert DeviceStatus.CONFIRMED == outcome.device(CORE).status
    assert [True, False] == [site.admits_alternate(CORE), site.admits_alternate(AGG)]
    record = journal.run("run-1")
    assert record is not None
    assert {StepStatus.SKIPPED} == {s.status for s in record.steps if s.device == AGG}
    assert all(s.detail.startswith(UNREACHABLE) for s in record.steps if s.device == AGG)
    assert frozenset({AGG}) == unreachable_devices(record.steps)
    assert frozenset({AGG}) == pending_devices(journal, CLOSED, "run-1")

    async def run_catchup(plan: RunPlan, abort: asyncio.Event) -> RunOutcome:
        return await execute(plan, journal=journal, connectors=site.connectors, abort=abort)

    def plan_catchup(office: str, alternate: str, run_id: str, devices: frozenset[str]) -> RunPlan:
        assert (CLOSED, ALTERNATE) == (office, alternate)
        return site.plan(handover(), run_id).only(devices)

    catchups = CatchUps(journal, plan_catchup, run_catchup)
    state = handed_over("run-1")
    # Still DOWN in the monitor's eyes: nothing starts, the device shows as pending.
    assert [] == catchups.tick(state, lambda office: {AGG: "DOWN", CORE: "UP"})
    assert (AGG,) == catchups.pending(CLOSED)
    started = catchups.tick(state, lambda office: {AGG: "UP", CORE: "UP"})
    assert 1 == len(started)
    assert is_catchup_of(started[0], CLOSED)
    # Never two catch-ups for one office at once.
    assert [] == catchups.tick(state, lambda office: {AGG: "UP", CORE: "UP"})
    task = catchups.task_of(CLOSED)
    assert task is not None
    await task

    catchup = journal.run(started[0])
    assert catchup is not None
    assert ("ok", RunKind.HANDOVER, CLOSED) == (catchup.result, catchup.kind, catchup.office)
    assert {AGG} == {s.device for s in catchup.steps}
    assert [True, True] == [site.admits_alternate(CORE), site.admits_alternate(AGG)]
    assert frozenset() == pending_devices(journal, CLOSED, "run-1")
    assert () == catchups.pending(CLOSED)

    back = await execute(
        site.plan(handback(), "run-2", RunKind.HANDBACK), journal=journal, connectors=site.connectors
    )
    assert "ok" == back.result, back.detail
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
    assert frozenset() == pending_devices(journal, CLOSED, "run-1")


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
    assert frozenset({AGG, CORE}) == pending_devices(journal, CLOSED, "run-1")
    assert [False, False] == [site.admits_alternate(CORE), site.admits_alternate(AGG)]


async def test_handback_aborts_a_catchup_in_progress(site: Site, journal: Journal) -> None:
    """`settle` (what a handback does first) aborts a catch-up in progress; it rolls back."""
    site.down(AGG)
    try:
        over = await execute(site.plan(handover(), "run-1"), journal=journal, connectors=site.connectors)
    finally:
        site.up(AGG)
    assert "ok" == over.result, over.detail
    began = asyncio.Event()

    async def run_catchup(plan: RunPlan, abort: asyncio.Event) -> RunOutcome:
        return await execute(
            plan, journal=journal, connectors=site.connectors, abort=abort, progress=lambda _: began.set()
        )

    catchups = CatchUps(
        journal, lambda o, a, r, d: site.plan(handover(), r).only(d), run_catchup, base_backoff_s=3600
    )
    started = catchups.tick(handed_over("run-1"), lambda office: {AGG: "UP"})
    assert 1 == len(started)
    await asyncio.wait_for(began.wait(), 30)  # a safety net, not a timing assertion
    await catchups.settle(CLOSED)

    record = journal.run(started[0])
    assert record is not None
    assert record.result in ("rolled_back", "failed")
    assert "ok" != record.result
    assert frozenset({AGG}) == pending_devices(journal, CLOSED, "run-1")
    assert (AGG,) == catchups.pending(CLOSED)
    # A failed catch-up backs off: not retried at once.
    assert [] == catchups.tick(handed_over("run-1"), lambda office: {AGG: "UP"})

    back = await execute(
        site.plan(handback(), "run-2", RunKind.HANDBACK), journal=journal, connectors=site.connectors
    )
    assert "ok" == back.result, back.detail
    assert [False, False] == [site.admits_alternate(CORE), site.admits_alternate(AGG)]
