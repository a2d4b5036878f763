"""Helpers shared by the runner tests: an inventory around real NETCONF endpoints, and readers."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from baton.adapters.netconf import NetconfClient
from baton.core.model import Device, Inventory, NetconfSettings, Office, RunKind, SecretRef
from baton.journal import Journal, RunRecord, StepStatus
from baton.playbook.plan import RunInfo, RunPlan, plan_run
from baton.playbook.runner import resume
from baton.playbook.schema import Playbook, load_playbook
from baton.playbook.steps import Connectors
from tests.peers.endpoints import SshEndpoint

REPO = Path(__file__).resolve().parents[2]
PLAYBOOKS = REPO / "playbooks"
NACM_NS = "urn:ietf:params:xml:ns:yang:ietf-netconf-acm"
NACM_FILTER = f'<nacm xmlns="{NACM_NS}"><groups/></nacm>'
CLOSED = "gc"
ALTERNATE = "bb"
GROUP = "bb-noc"


def read_secret(ref: SecretRef) -> str:
    """Test resolver: file refs only."""
    assert ref.kind == "file"
    return Path(ref.name).read_text()


def device_for(
    device_id: str,
    endpoint: SshEndpoint,
    *,
    tags: Sequence[str] = ("netconfd",),
    variables: Mapping[str, Any] | None = None,
) -> Device:
    return Device(
        id=device_id,
        office=CLOSED,
        role="core",
        address=endpoint.host,
        tags=tuple(tags),
        host_key=endpoint.host_key,
        netconf=NetconfSettings(
            enabled=True,
            port=endpoint.port,
            username=endpoint.username,
            private_key=SecretRef("file", str(endpoint.private_key)),
            timeout_s=10.0,
        ),
        vars=dict(variables or {}),
    )


def inventory_of(devices: Sequence[Device]) -> Inventory:
    offices = {
        CLOSED: Office(CLOSED, "Geumcheon", "seoul", (ALTERNATE,), {"operator_group": "gc-noc"}),
        ALTERNATE: Office(
            ALTERNATE,
            "Bangbae",
            "seoul",
            (CLOSED,),
            {"operator_group": GROUP, "noc_prefixes": ["127.10.2.0/24"]},
        ),
    }
    return Inventory(offices, {d.id: d for d in devices})


def make_plan(
    inventory: Inventory,
    playbook: Path,
    run_id: str,
    kind: RunKind = RunKind.HANDOVER,
    *,
    step_timeout_s: float | None = None,
) -> RunPlan:
    """Plan `playbook`; `step_timeout_s` shortens every timeout (and drops retries) so that a
    run fits a short confirm window (crash tests wait for windows to run out)."""
    loaded = load_playbook(playbook)
    if step_timeout_s is not None:
        loaded = quick(loaded, step_timeout_s)
    plan = plan_run(loaded, inventory, CLOSED, ALTERNATE, RunInfo(run_id, kind, "test", "pytest"))
    assert plan.problems == ()
    return plan


def quick(playbook: Playbook, timeout_s: float) -> Playbook:
    """The playbook with every timeout at `timeout_s` and no retries."""
    steps = [s.model_copy(update={"timeout_s": timeout_s, "retries": 0}) for s in playbook.steps]
    return playbook.model_copy(
        update={"steps": steps, "commit_timeout_s": timeout_s, "confirm_timeout_s": timeout_s}
    )


def get_running(device: Device, filter_xml: str | None = NACM_FILTER) -> str:
    """Running config (or part of it) read over a fresh session."""

    async def read() -> str:
        async with NetconfClient.connect(device, resolve=read_secret, timeout_s=10) as nc:
            return await nc.get_config("running", filter_xml)

    return asyncio.run(read())


async def get_running_async(device: Device, filter_xml: str | None = NACM_FILTER) -> str:
    async with NetconfClient.connect(device, resolve=read_secret, timeout_s=10) as nc:
        return await nc.get_config("running", filter_xml)


def statuses(record: RunRecord, name: str) -> dict[str, StepStatus]:
    """Device -> status of the last journal row of step `name`."""
    return {s.device: s.status for s in record.steps if s.name == name}


def open_journal(tmp_path: Path) -> Journal:
    return Journal.open(tmp_path / "journal.sqlite3")


def netconfd_plan_for(devices: Sequence[Device]) -> Callable[[RunRecord], RunPlan]:
    """Re-plans a run of netconfd-handover.yaml on these devices (for a journal without its plan)."""

    def plan_for(run: RunRecord) -> RunPlan:
        assert RunKind.HANDOVER == run.kind
        return make_plan(inventory_of(devices), PLAYBOOKS / "netconfd-handover.yaml", run.id)

    return plan_for


async def resume_all(journal_path: Path, devices: Sequence[Device], run_id: str | None = None) -> RunRecord:
    """What the daemon does at start: `runner.resume` of every unfinished run of the journal.
    Returns run `run_id` (None: the one run resumed), which no run is left unfinished beside."""
    with Journal.open(journal_path) as journal:
        resumed = [
            await resume(
                record,
                journal=journal,
                connectors=Connectors(read_secret),
                inventory=inventory_of(devices),
                plan_for=netconfd_plan_for(devices),
            )
            for record in journal.unfinished_runs()
        ]
        assert [] == journal.unfinished_runs(), "a run left unfinished"
        if run_id is None:
            assert 1 == len(resumed), f"{len(resumed)} runs resumed"
            run_id = resumed[0].run_id
        found = journal.run(run_id)
    assert found is not None
    return found
