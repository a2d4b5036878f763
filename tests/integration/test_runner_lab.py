"""A handover of 200 lab devices (the lab's NETCONF servers, in-process, on 127.x loopback).

The lab's offices have at most 4 routers each (the rest are OLTs), so the steps of
playbooks/handover.yaml are run with its targets widened to every device of the closed office:
200 devices, all serving the lab's management model over NETCONF.
"""

from __future__ import annotations

import asyncio
import os
import resource
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from baton.adapters.netconf import NetconfClient
from baton.core.model import Device, RunKind, SecretRef
from baton.inventory.loader import load_inventory
from baton.journal import Journal, StepStatus
from baton.lab.inventory_writer import write_inventory
from baton.lab.network import noc_source
from baton.playbook.plan import RunInfo, plan_run
from baton.playbook.progress import DeviceStatus, Do
from baton.playbook.runner import execute, held_sessions
from baton.playbook.schema import Targets, load_playbook
from baton.playbook.steps import Connectors
from baton.secrets import resolve
from tests.integration.runner_helpers import PLAYBOOKS
from tests.lab_fixtures import RunningLab

pytestmark = pytest.mark.slow

CLOSED = "seoul-geumcheon"
ALTERNATE = "seoul-bangbae"
DEVICES = 200
LAB_NS = "urn:baton:lab:mgmt:1.0"


@pytest.fixture
def big_lab(tmp_path: Path) -> Iterator[RunningLab]:
    running = RunningLab(tmp_path, f"{CLOSED},{ALTERNATE}", DEVICES, netconf=True)
    try:
        yield running
    finally:
        running.stop()


async def test_handover_of_200_lab_devices(big_lab: RunningLab, tmp_path: Path) -> None:
    """Every device confirmed; each ACL now admits the alternate's NOC (seen over NETCONF from it)."""
    inv_dir = write_inventory(big_lab.lab)
    inventory = load_inventory(inv_dir)
    playbook = load_playbook(PLAYBOOKS / "handover.yaml")
    playbook = playbook.model_copy(update={"targets": Targets(office="closed")})
    plan = plan_run(
        playbook, inventory, CLOSED, ALTERNATE, RunInfo("run-lab", RunKind.HANDOVER, "test", "pytest")
    )
    assert () == plan.problems
    assert DEVICES == len(plan.devices)

    def resolve_ref(ref: SecretRef) -> str:
        return resolve(ref, base_dir=inv_dir)

    # NetconfClient runs each blocking ncclient call in the loop's default executor; its default
    # size (cores + 4) would let only a handful of devices talk at once.
    asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(max_workers=64))
    connects: Counter[str] = Counter()

    class CountingConnectors(Connectors):
        async def netconf(self, device: Device) -> NetconfClient:
            connects[device.id] += 1
            return await super().netconf(device)

    held = held_sessions(resource.getrlimit(resource.RLIMIT_NOFILE)[0], len(os.listdir("/proc/self/fd")))
    started = time.perf_counter()
    with Journal.open(tmp_path / "journal.sqlite3") as journal:
        outcome = await execute(
            plan,
            journal=journal,
            connectors=CountingConnectors(resolve_ref, connect_timeout_s=20),
            concurrency=50,
            # 4 waves of the playbook's worst case (edits, commit, verify with retries) need more
            # than the default window: the runner refuses a run that cannot fit.
            confirm_window_s=900,
        )
        record = journal.run("run-lab")
    elapsed = time.perf_counter() - started
    print(f"handover of {DEVICES} lab devices: {elapsed:.2f} s")  # measured figure, not asserted

    assert "ok" == outcome.result, outcome.detail
    assert [DeviceStatus.CONFIRMED] * DEVICES == [d.status for d in outcome.devices]
    assert record is not None
    assert {StepStatus.DONE} == {s.status for s in record.steps}
    assert DEVICES == len([s for s in record.steps if s.name == Do.CONFIRM])
    # One session per device for the whole run (edit, commit, verify across the barrier, confirm)
    # for as many devices as the fd limit allows; one per segment plus the confirm for the rest.
    assert DEVICES == len(connects)
    if held >= DEVICES:
        assert {1} == set(connects.values())
    assert set(connects.values()) <= {1, 3}

    source = noc_source(big_lab.lab.plan, ALTERNATE)
    admitted = big_lab.lab.plan.office(ALTERNATE).noc_prefix
    allowed = [big_lab.lab.device(d.device.id).mgmt.allows(source) for d in plan.devices]
    assert [True] * DEVICES == allowed
    # And from the alternate's NOC address itself, over NETCONF, for a sample of devices.
    sample: list[Device] = [plan.devices[i].device for i in (0, 57, 123, DEVICES - 1)]
    for device in sample:
        async with NetconfClient.connect(
            device, resolve=resolve_ref, timeout_s=10, source_address=source
        ) as nc:
            acl = await nc.get_config("running", f'<management xmlns="{LAB_NS}"><acl/></management>')
        assert f"<prefix>{admitted}</prefix>" in acl
