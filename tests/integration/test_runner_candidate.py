"""A candidate someone left dirty (an edit without a lock, never committed, by a session that is
gone or an operator who walked away): the device refuses the run's lock over it (RFC 6241
8.3.5.1), and the run clears it, locks, and hands the device over without those edits."""

from __future__ import annotations

from pathlib import Path

from baton.adapters.netconf import NetconfClient
from baton.core.model import RunKind, SecretRef
from baton.inventory.loader import load_inventory
from baton.journal import Journal
from baton.lab.inventory_writer import write_inventory
from baton.playbook.plan import RunInfo, plan_run
from baton.playbook.progress import DeviceStatus, Do
from baton.playbook.runner import execute
from baton.playbook.schema import Targets, load_playbook
from baton.playbook.steps import Connectors
from baton.secrets import resolve
from tests.integration.runner_helpers import PLAYBOOKS, quick
from tests.lab_fixtures import RunningLab

CLOSED = "seoul-geumcheon"
ALTERNATE = "seoul-bangbae"
LAB_NS = "urn:baton:lab:mgmt:1.0"
STRAY = (
    f'<config><management xmlns="{LAB_NS}"><acl><entry><name>stray</name>'
    "<prefix>10.66.0.0/16</prefix></entry></acl></management></config>"
)


async def test_a_candidate_left_dirty_is_cleared_before_the_first_edit(
    handover_lab: RunningLab, tmp_path: Path
) -> None:
    lab = handover_lab
    inv_dir = write_inventory(lab.lab)
    playbook = quick(load_playbook(PLAYBOOKS / "handover.yaml"), 10.0)
    playbook = playbook.model_copy(update={"targets": Targets(office="closed")})
    plan = plan_run(
        playbook, load_inventory(inv_dir), CLOSED, ALTERNATE, RunInfo("run-dirty", RunKind.HANDOVER, "t", "t")
    )
    assert () == plan.problems

    def resolve_ref(ref: SecretRef) -> str:
        return resolve(ref, base_dir=inv_dir)

    dirty = plan.devices[0].device
    async with NetconfClient.connect(dirty, resolve=resolve_ref, timeout_s=10) as nc:
        await nc.edit_config("candidate", STRAY)  # no lock, no commit
    datastore = lab.lab.device(dirty.id).datastore
    assert datastore.is_candidate_dirty, "the stray edit did not stay in the candidate"

    with Journal.open(tmp_path / "journal.sqlite3") as journal:
        outcome = await execute(
            plan,
            journal=journal,
            connectors=Connectors(resolve_ref, connect_timeout_s=10),
            confirm_window_s=3600,
        )
        record = journal.run("run-dirty")
    assert record is not None
    assert "ok" == outcome.result, outcome.detail
    assert [DeviceStatus.CONFIRMED] * len(plan.devices) == [d.status for d in outcome.devices]
    (prepare,) = [s for s in record.steps if s.device == dirty.id and s.name == Do.PREPARE]
    assert prepare.detail.startswith("candidate locked and clean"), prepare.detail
    running = datastore.running_xml()
    assert "stray" not in running, "the stray edit went out with the handover"
    assert ALTERNATE in running
    assert not datastore.is_candidate_dirty
