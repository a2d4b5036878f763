"""How a run undoes edits committed for good, on lab devices without :confirmed-commit (nothing
to cancel): from running as the run saved it before its first edit; when that backup is lost,
by the playbook's compensating edits; when neither is there, the edits are left and named.

Each run is aborted once every device has committed, so it turns back with every device changed.
"""

from __future__ import annotations

import asyncio
import re
import shutil
from pathlib import Path

import pytest

from baton.core.model import RunKind, SecretRef
from baton.inventory.loader import load_inventory
from baton.journal import Journal, RunRecord, StepRecord, StepStatus
from baton.lab.datastore import mgmt_view, parse_xml
from baton.lab.device import MgmtView
from baton.lab.inventory_writer import write_inventory
from baton.lab.network import noc_source
from baton.playbook.plan import RunInfo, RunPlan, plan_run
from baton.playbook.progress import COMPENSATE, DeviceStatus, Do
from baton.playbook.runner import RunOutcome, execute
from baton.playbook.schema import Playbook, Targets, load_playbook
from baton.playbook.steps import Connectors
from baton.secrets import resolve
from tests.integration.runner_helpers import PLAYBOOKS, quick
from tests.lab_fixtures import RunningLab

CLOSED = "seoul-geumcheon"
ALTERNATE = "seoul-bangbae"
RUN = "run-undo"
EPOCH = re.compile(r"<epoch>\d+</epoch>")  # an undo keeps the fencing epoch (it never goes down)


@pytest.fixture
def lab(handover_lab: RunningLab) -> RunningLab:
    return handover_lab


def _plan(lab: RunningLab, playbook: Playbook) -> tuple[RunPlan, Connectors]:
    inv_dir = write_inventory(lab.lab)
    playbook = playbook.model_copy(update={"targets": Targets(office="closed")})
    plan = plan_run(
        playbook, load_inventory(inv_dir), CLOSED, ALTERNATE, RunInfo(RUN, RunKind.HANDOVER, "t", "t")
    )
    assert () == plan.problems

    def resolve_ref(ref: SecretRef) -> str:
        return resolve(ref, base_dir=inv_dir)

    return plan, Connectors(resolve_ref, connect_timeout_s=10)


def _running(lab: RunningLab, device: str) -> str:
    return EPOCH.sub("", lab.lab.device(device).datastore.running_xml())


async def _aborted_after_every_commit(
    lab: RunningLab, tmp_path: Path, *, lose_backups: bool, playbook: Playbook | None = None
) -> tuple[RunPlan, str, str, RunOutcome, RunRecord]:
    """The plain device (no :confirmed-commit), its running before the run, the outcome, the record."""
    plan, connectors = _plan(lab, playbook or quick(load_playbook(PLAYBOOKS / "handover.yaml"), 10.0))
    plain = plan.devices[0].device.id
    lab.call(lambda net: net.set_confirmed_commit(plain, False))
    before = _running(lab, plain)
    abort = asyncio.Event()
    committed: set[str] = set()
    with Journal.open(tmp_path / "journal.sqlite3") as journal:

        def on_step(record: StepRecord) -> None:
            if record.name != Do.COMMIT or record.status is not StepStatus.DONE:
                return
            committed.add(record.device)
            if record.device == plain:
                assert _running(lab, plain) != before, "the commit did not change running"
                if lose_backups:
                    shutil.rmtree(journal.backup_dir)
            if len(committed) == len(plan.devices):
                abort.set()

        outcome = await execute(
            plan, journal=journal, connectors=connectors, confirm_window_s=3600, abort=abort, progress=on_step
        )
        record = journal.run(RUN)
    assert record is not None
    assert committed == {d.device.id for d in plan.devices}, "aborted before every device committed"
    return plan, plain, before, outcome, record


def _undo_of(record: RunRecord, device: str) -> StepRecord:
    """The device's last compensation."""
    return [s for s in record.steps if s.device == device and s.name.startswith(COMPENSATE)][-1]


def _view(running: str) -> MgmtView:
    return mgmt_view(parse_xml(f"<data>{running}</data>"))


def _admitted(lab: RunningLab, plan: RunPlan) -> list[bool]:
    source = noc_source(lab.lab.plan, ALTERNATE)
    return [lab.lab.device(d.device.id).mgmt.allows(source) for d in plan.devices]


async def test_edits_committed_for_good_are_undone_from_running_as_saved_before_the_run(
    lab: RunningLab, tmp_path: Path
) -> None:
    plan, plain, before, outcome, record = await _aborted_after_every_commit(
        lab, tmp_path, lose_backups=False
    )
    assert "rolled_back" == outcome.result, outcome.detail
    assert DeviceStatus.ROLLED_BACK == outcome.device(plain).status
    undo = _undo_of(record, plain)
    assert StepStatus.ROLLED_BACK == undo.status
    assert undo.detail.startswith("running restored as it was before the run"), undo.detail
    assert before == _running(lab, plain)
    assert not any(_admitted(lab, plan))


async def test_a_lost_backup_is_undone_by_the_playbooks_compensating_edits(
    lab: RunningLab, tmp_path: Path
) -> None:
    plan, plain, before, outcome, record = await _aborted_after_every_commit(lab, tmp_path, lose_backups=True)
    assert "rolled_back" == outcome.result, outcome.detail
    undo = _undo_of(record, plain)
    assert StepStatus.ROLLED_BACK == undo.status
    assert undo.detail.startswith("compensating edits committed"), undo.detail
    # The compensations put back what the office's variables say it had: the same ACL, AAA,
    # syslog and contact, the same trap collector but at the port and community the inventory
    # declares (162, public), not the lab's own: why running saved before the run comes first.
    was, now = _view(before), _view(_running(lab, plain))
    assert (was.acl, was.acl_offices, was.aaa_servers) == (now.acl, now.acl_offices, now.aaa_servers)
    assert (was.syslog_servers, was.contact) == (now.syslog_servers, now.contact)
    assert [t.address for t in was.trap_targets] == [t.address for t in now.trap_targets]
    assert [(162, "public")] == [(t.port, t.community) for t in now.trap_targets]
    assert not any(_admitted(lab, plan))


async def test_a_lost_backup_and_no_compensate_leave_the_edits_and_name_them(
    lab: RunningLab, tmp_path: Path
) -> None:
    playbook = quick(load_playbook(PLAYBOOKS / "handover.yaml"), 10.0)
    steps = [s.model_copy(update={"compensate": None}) for s in playbook.steps]
    plan, plain, before, outcome, record = await _aborted_after_every_commit(
        lab, tmp_path, lose_backups=True, playbook=playbook.model_copy(update={"steps": steps})
    )
    assert "failed" == outcome.result, outcome.detail
    assert f"rollback incomplete, an operator must check {plain}" in outcome.detail
    device = outcome.device(plain)
    assert DeviceStatus.FAILED == device.status
    assert device.error is not None
    assert "left on the device: edit grant-alternate-acl, edit point-services-at-alternate" in device.error
    assert "no compensate for" in _undo_of(record, plain).detail
    assert before != _running(lab, plain), "nothing could undo it, yet it changed back"
    # The devices with :confirmed-commit were cancelled all the same.
    others = [d.device.id for d in plan.devices if d.device.id != plain]
    assert [DeviceStatus.ROLLED_BACK] * len(others) == [outcome.device(d).status for d in others]
    assert [True] + [False] * len(others) == _admitted(lab, plan)
