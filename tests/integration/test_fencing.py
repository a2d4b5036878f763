"""Fencing: a run changes devices only while its vantage leads, and a device refuses the edits of
a leader older than the one that last changed it (the epoch travels in the commit).

Real lab devices over NETCONF (in-process, loopback), the shipped playbooks and their `fence:`.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from baton.core.model import RunKind, SecretRef
from baton.inventory.loader import load_inventory
from baton.journal import Journal
from baton.lab.inventory_writer import write_inventory
from baton.lab.network import noc_source
from baton.playbook.plan import RunInfo, RunPlan, plan_run
from baton.playbook.progress import DeviceStatus
from baton.playbook.runner import FenceLost, execute, resume
from baton.playbook.schema import Targets, load_playbook
from baton.playbook.steps import Connectors
from baton.secrets import resolve
from tests.integration.runner_helpers import PLAYBOOKS
from tests.lab_fixtures import RunningLab

CLOSED = "seoul-geumcheon"
ALTERNATE = "seoul-bangbae"


@pytest.fixture
def lab(handover_lab: RunningLab) -> RunningLab:
    return handover_lab


def _plan(lab: RunningLab, kind: RunKind, run_id: str) -> tuple[RunPlan, Connectors]:
    inv_dir = write_inventory(lab.lab)
    inventory = load_inventory(inv_dir)
    name = "handover.yaml" if kind is RunKind.HANDOVER else "handback.yaml"
    playbook = load_playbook(PLAYBOOKS / name).model_copy(update={"targets": Targets(office="closed")})
    info = RunInfo(run_id, kind, "test", "pytest")
    plan = plan_run(playbook, inventory, CLOSED, ALTERNATE, info)
    assert () == plan.problems

    def resolve_ref(ref: SecretRef) -> str:
        return resolve(ref, base_dir=inv_dir)

    return plan, Connectors(resolve_ref, connect_timeout_s=10)


def _epochs(lab: RunningLab, plan: RunPlan) -> list[int]:
    return [lab.lab.device(d.device.id).datastore.running_epoch() for d in plan.devices]


def _admitted(lab: RunningLab, plan: RunPlan) -> list[bool]:
    source = noc_source(lab.lab.plan, ALTERNATE)
    return [lab.lab.device(d.device.id).mgmt.allows(source) for d in plan.devices]


async def test_a_run_leaves_its_epoch_on_every_device(lab: RunningLab, tmp_path: Path) -> None:
    plan, connectors = _plan(lab, RunKind.HANDOVER, "run-e7")
    assert [0] * len(plan.devices) == _epochs(lab, plan)
    with Journal.open(tmp_path / "journal.sqlite3") as journal:
        outcome = await execute(plan, journal=journal, connectors=connectors, epoch=7, fence=lambda: True)
    assert "ok" == outcome.result, outcome.detail
    assert [7] * len(plan.devices) == _epochs(lab, plan)
    assert all(_admitted(lab, plan))


async def test_an_older_leader_is_refused_by_the_devices(lab: RunningLab, tmp_path: Path) -> None:
    """The leader of epoch 9 handed the office over; a deposed leader (epoch 4) that still believes
    it leads tries to hand it back: stopped at the first device, before any edit is committed."""
    plan, connectors = _plan(lab, RunKind.HANDOVER, "run-new")
    with Journal.open(tmp_path / "new.sqlite3") as journal:
        assert "ok" == (await execute(plan, journal=journal, connectors=connectors, epoch=9)).result
    back, connectors = _plan(lab, RunKind.HANDBACK, "run-old")
    with Journal.open(tmp_path / "old.sqlite3") as journal:
        with pytest.raises(FenceLost) as lost:
            await execute(back, journal=journal, connectors=connectors, epoch=4, fence=lambda: True)
        record = journal.run("run-old")
    assert 9 == lost.value.seen_epoch
    assert "epoch 9" in str(lost.value)
    assert record is not None
    assert record.finished is None
    assert [9] * len(plan.devices) == _epochs(lab, plan)
    assert all(_admitted(lab, plan)), "the deposed leader changed a device"
    for d in back.devices:  # nothing left behind: no lock, no dirty candidate, no pending confirm
        store = lab.lab.device(d.device.id).datastore
        assert not store.locks
        assert not store.is_candidate_dirty
        assert not store.confirm_pending


@pytest.mark.parametrize("allowed", [1, 6, 14])
async def test_a_lost_lease_stops_the_run_and_the_next_leader_finishes_it(
    lab: RunningLab, tmp_path: Path, allowed: int
) -> None:
    """The lease is gone after `allowed` actions: the run stops before its next change, unfinished;
    resumed under a newer epoch it ends with every device handed over or every device back."""
    plan, connectors = _plan(lab, RunKind.HANDOVER, "run-lease")
    calls = 0

    def fence() -> bool:
        nonlocal calls
        calls += 1
        return calls <= allowed

    with Journal.open(tmp_path / "journal.sqlite3") as journal:
        with pytest.raises(FenceLost):
            # One device at a time, so that "the next action" is well defined (a window that
            # fits four devices' worst case one after the other).
            await execute(
                plan,
                journal=journal,
                connectors=connectors,
                epoch=3,
                fence=fence,
                concurrency=1,
                confirm_window_s=3600,
            )
        assert calls == allowed + 1  # not one action after the fence said no
        record = journal.run("run-lease")
        assert record is not None
        assert record.finished is None
        outcome = await resume(
            record,
            journal=journal,
            connectors=connectors,
            inventory=load_inventory(write_inventory(lab.lab)),
            plan_for=lambda _record: plan,
            epoch=5,
            fence=lambda: True,
        )
    admitted = _admitted(lab, plan)
    assert len(set(admitted)) == 1, f"half handed over: {admitted}"
    statuses = {d.status for d in outcome.devices}
    if admitted[0]:
        assert {DeviceStatus.CONFIRMED} == statuses, outcome.detail
    for d in plan.devices:
        store = lab.lab.device(d.device.id).datastore
        assert not store.locks
        assert not store.confirm_pending
        assert store.running_epoch() in (0, 3, 5)


async def test_an_undo_commit_carries_the_epoch(lab: RunningLab, tmp_path: Path) -> None:
    """A device without :confirmed-commit is undone by a commit restoring what running held
    before the run, which had no epoch: without the run's epoch in that commit the device
    refuses it as from an older leader and the office is left half handed over."""
    plan, connectors = _plan(lab, RunKind.HANDOVER, "run-undo")
    first, last = plan.devices[0].device.id, plan.devices[-1].device.id
    lab.call(lambda net: net.set_confirmed_commit(first, False))
    lab.call(lambda net: net.refuse_commits(last, True))
    with Journal.open(tmp_path / "journal.sqlite3") as journal:
        outcome = await execute(
            plan,
            journal=journal,
            connectors=connectors,
            epoch=7,
            fence=lambda: True,
            concurrency=1,
            confirm_window_s=3600,
        )
    assert "rolled_back" == outcome.result, outcome.detail
    by_id = {d.device: d for d in outcome.devices}
    assert DeviceStatus.ROLLED_BACK == by_id[first].status, by_id[first].error
    assert not any(_admitted(lab, plan)), "a device kept the alternate's access"
    assert 7 == lab.lab.device(first).datastore.running_epoch()  # an epoch never goes down
