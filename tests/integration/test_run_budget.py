"""The run's time limits on real lab devices over NETCONF: `run_timeout_s` turns a run back, and
every forward RPC's timeout is capped by what is left of the confirmed-commit window, so a slow
device cannot push the office's confirms past the window (some devices confirmed, others reverted).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path

import pytest

from baton.core.model import RunKind, SecretRef
from baton.inventory.loader import load_inventory
from baton.journal import Journal, StepRecord, StepStatus
from baton.lab.inventory_writer import write_inventory
from baton.lab.network import noc_source
from baton.playbook.plan import RunInfo, RunPlan, plan_run
from baton.playbook.progress import DeviceStatus, Do, verify_steps
from baton.playbook.runner import execute, resume
from baton.playbook.schema import Targets, load_playbook
from baton.playbook.steps import Connectors
from baton.secrets import resolve
from tests.integration.runner_helpers import PLAYBOOKS, quick
from tests.lab_fixtures import RunningLab

CLOSED = "seoul-geumcheon"
ALTERNATE = "seoul-bangbae"


@pytest.fixture
def lab(handover_lab: RunningLab) -> RunningLab:
    return handover_lab


def _plan(lab: RunningLab, timeout_s: float) -> tuple[RunPlan, Connectors]:
    inv_dir = write_inventory(lab.lab)
    inventory = load_inventory(inv_dir)
    playbook = quick(load_playbook(PLAYBOOKS / "handover.yaml"), timeout_s)
    playbook = playbook.model_copy(update={"targets": Targets(office="closed")})
    plan = plan_run(playbook, inventory, CLOSED, ALTERNATE, RunInfo("run-budget", RunKind.HANDOVER, "t", "t"))
    assert () == plan.problems

    def resolve_ref(ref: SecretRef) -> str:
        return resolve(ref, base_dir=inv_dir)

    return plan, Connectors(resolve_ref, connect_timeout_s=10)


def _admitted(lab: RunningLab, plan: RunPlan) -> list[bool]:
    source = noc_source(lab.lab.plan, ALTERNATE)
    return [lab.lab.device(d.device.id).mgmt.allows(source) for d in plan.devices]


async def test_a_run_longer_than_its_run_timeout_turns_back(lab: RunningLab, tmp_path: Path) -> None:
    plan, connectors = _plan(lab, 10.0)
    slow = plan.devices[-1].device.id
    lab.call(lambda net: net.slow(slow, 1.0))
    with Journal.open(tmp_path / "journal.sqlite3") as journal:
        outcome = await execute(
            plan, journal=journal, connectors=connectors, run_timeout_s=1.5, confirm_window_s=3600
        )
    assert "rolled_back" == outcome.result, outcome.detail
    assert "run_timeout_s" in outcome.detail
    assert not any(_admitted(lab, plan)), "a device kept the alternate's access"


async def test_a_slow_device_cannot_spend_the_window_of_the_others(lab: RunningLab, tmp_path: Path) -> None:
    """One device answers every RPC after 2 s (each under its 3 s timeout) while the others have
    committed with a 12 s window: its steps stop when the window (less a 2 s margin) is spent,
    and the run turns back whole instead of confirming some devices after the others reverted."""
    plan, connectors = _plan(lab, 3.0)
    slow = plan.devices[-1].device.id
    lab.call(lambda net: net.slow(slow, 2.0))
    with Journal.open(tmp_path / "journal.sqlite3") as journal:
        outcome = await execute(
            plan, journal=journal, connectors=connectors, confirm_window_s=12.0, confirm_margin_s=2.0
        )
    assert "rolled_back" == outcome.result, outcome.detail
    assert f"{slow} failed" in outcome.detail
    assert DeviceStatus.CONFIRMED not in {d.status for d in outcome.devices}, outcome.devices
    assert not any(_admitted(lab, plan)), f"half handed over: {_admitted(lab, plan)}"
    assert not any(lab.lab.device(d.device.id).datastore.confirm_pending for d in plan.devices)


async def test_no_confirm_goes_out_when_what_is_left_of_the_window_cannot_cover_the_confirms(
    lab: RunningLab, tmp_path: Path
) -> None:
    """Every device passed verify, but only ~3.5 s of the 20 s window are left (the test holds
    the loop after the last verify), less than the 2 s margin plus one 3 s confirm: the run
    turns back instead of confirming some devices while the others revert."""
    plan, connectors = _plan(lab, 3.0)
    window = 20.0
    first_commit: list[float] = []
    verified: dict[str, int] = {}

    def on_step(record: StepRecord) -> None:
        if record.name == Do.COMMIT and not first_commit:
            first_commit.append(record.started)  # wall clock, just before the first commit's RPC
        if record.phase == "verify" and record.status is StepStatus.DONE:
            verified[record.device] = verified.get(record.device, 0) + 1
            if all(verified.get(d.device.id) == len(verify_steps(d)) for d in plan.devices):
                time.sleep(max(0.0, first_commit[0] + window - 3.5 - time.time()))  # the window runs on

    with Journal.open(tmp_path / "journal.sqlite3") as journal:
        outcome = await execute(
            plan,
            journal=journal,
            connectors=connectors,
            confirm_window_s=window,
            confirm_margin_s=2.0,
            progress=on_step,
        )
        record = journal.run("run-budget")
    assert record is not None
    assert "rolled_back" == outcome.result, outcome.detail
    assert "not confirming late" in outcome.detail
    assert "back" == record.decision
    assert [] == [s for s in record.steps if s.name == Do.CONFIRM], "a confirm went out"
    assert not any(_admitted(lab, plan)), f"half handed over: {_admitted(lab, plan)}"
    assert not any(lab.lab.device(d.device.id).datastore.confirm_pending for d in plan.devices)


async def test_devices_waiting_for_the_decision_undo_at_once_when_the_run_turns_back(
    lab: RunningLab, tmp_path: Path
) -> None:
    """The slowest device fails its commit and turns the run back: the devices already committed
    and waiting cancel their confirmed commits at once, not after the slow one's own undo."""
    plan, connectors = _plan(lab, 10.0)
    slow = plan.devices[-1].device.id
    lab.call(lambda net: net.slow(slow, 1.0))
    lab.call(lambda net: net.refuse_commits(slow, True))
    with Journal.open(tmp_path / "journal.sqlite3") as journal:
        cpu, wall = time.thread_time(), time.monotonic()  # the lab's devices answer from their own thread
        outcome = await execute(plan, journal=journal, connectors=connectors, confirm_window_s=3600)
        cpu, wall = time.thread_time() - cpu, time.monotonic() - wall
        record = journal.run("run-budget")
    assert "rolled_back" == outcome.result, outcome.detail
    assert record is not None
    cancelled = [s.finished for s in record.steps if s.name == "cancel-commit" and s.device != slow]
    slow_undo = [s.finished for s in record.steps if s.phase == "rollback" and s.device == slow]
    assert len(cancelled) == len(plan.devices) - 1
    assert slow_undo
    assert all(at is not None for at in cancelled + slow_undo)
    assert max(c for c in cancelled if c is not None) < min(u for u in slow_undo if u is not None)
    assert not any(_admitted(lab, plan))
    # While the slow device undoes (about 4 s of its 11), the others wait idle: the loop sleeps.
    # A pass that kept the done "turned" future in its wait spun instead (2.8 s of CPU, measured).
    assert cpu < 0.1 * wall, f"the loop spun: {cpu:.2f} s of CPU in {wall:.2f} s"


async def test_a_resumed_run_turning_back_leaves_the_loop_idle_while_devices_answer_slowly(
    lab: RunningLab, tmp_path: Path
) -> None:
    """A run killed after every commit is resumed and turns back while each device answers an
    RPC after 1 s: the runner's loop must sleep through those waits. A pass that kept the run's
    (done) "turned" future in its wait returned from it at once and spun until the last device
    finished: the loop's thread burned a whole core (and starved the RPCs: 200 devices took 77 s)."""
    plan, connectors = _plan(lab, 10.0)
    committed = asyncio.Event()
    commits: set[str] = set()

    def on_step(record: StepRecord) -> None:
        if record.name == Do.COMMIT and record.status is StepStatus.DONE:
            commits.add(record.device)
            if len(commits) == len(plan.devices):
                committed.set()

    with Journal.open(tmp_path / "journal.sqlite3") as journal:
        run = asyncio.ensure_future(
            execute(plan, journal=journal, connectors=connectors, confirm_window_s=3600, progress=on_step)
        )
        await asyncio.wait_for(committed.wait(), 60)
        run.cancel()  # as a crash: the journal holds the truth
        with contextlib.suppress(asyncio.CancelledError):
            await run
        record = journal.run("run-budget")
        assert record is not None
        assert record.decision is None, "killed before the decision: the resumed run turns back"
        for dp in plan.devices:
            lab.call(lambda net, device=dp.device.id: net.slow(device, 1.0))
        cpu, wall = time.thread_time(), time.monotonic()  # the lab's devices answer from their own thread
        outcome = await resume(
            record,
            journal=journal,
            connectors=connectors,
            inventory=load_inventory(lab.lab.config.dir / "inventory"),
        )
        cpu, wall = time.thread_time() - cpu, time.monotonic() - wall
    print(f"resumed turn-back of {len(plan.devices)} slow devices: {wall:.2f} s, loop thread CPU {cpu:.2f} s")
    assert "rolled_back" == outcome.result, outcome.detail
    assert outcome.detail.endswith("recovered after a restart: interrupted before every device passed verify")
    assert not any(_admitted(lab, plan))
    assert wall > 2.0, "the devices were not slow: nothing to measure"
    assert cpu < 0.25 * wall, f"the loop spun: {cpu:.2f} s of CPU in {wall:.2f} s"
