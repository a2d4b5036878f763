"""Crash safety: a handover process SIGKILLed mid-run, then the devices and `resume`.

A child process (tests/integration/runner_child.py) runs netconfd-handover.yaml on two real
netconfd devices with a short confirm window and is killed at a marked moment.
"""

from __future__ import annotations

import asyncio
import json
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from baton.core.model import Device
from baton.journal import Journal, StepStatus
from baton.playbook.progress import Do
from tests.integration.runner_helpers import (
    GROUP,
    REPO,
    device_for,
    get_running_async,
    resume_all,
    statuses,
)
from tests.peers.netconfd import NetconfdProcess

pytestmark = pytest.mark.peer("netconfd")

WINDOW_S = 12  # the shortest window the run's budget (2 s timeouts, 5 s margin) fits
# netconfd checks its confirm timer with whole-second uptime, only after 1 s of idleness: the
# revert lands within about [window - 1, window + 2] s; wait quietly past that.
REVERT_MARGIN_S = 3.5
MARK_TIMEOUT_S = 60.0


class Child:
    def __init__(self, tmp_path: Path, devices: list[Device], stop_at: str, run_id: str) -> None:
        self.journal_path = tmp_path / "journal.sqlite3"
        spec = {
            "journal": str(self.journal_path),
            "run_id": run_id,
            "window_s": WINDOW_S,
            "stop_at": stop_at,
            "devices": [
                {
                    "id": d.id,
                    "host": d.address,
                    "port": d.netconf.port,
                    "username": d.netconf.username,
                    "private_key": d.netconf.private_key.name if d.netconf.private_key else "",
                    "host_key": d.host_key,
                }
                for d in devices
            ],
        }
        spec_path = tmp_path / "child.json"
        spec_path.write_text(json.dumps(spec))
        self.stderr = (tmp_path / "child.stderr").open("w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.integration.runner_child", str(spec_path)],
            cwd=REPO,
            env={**os.environ, "PYTHONPATH": f"{REPO}:{REPO / 'daemon'}"},
            stdout=subprocess.PIPE,
            stderr=self.stderr,
        )

    def wait_mark(self, mark: str) -> None:
        """Read the child's stdout (raw fd: no buffering hides a line from select) until `mark`."""
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        seen = b""
        deadline = time.monotonic() + MARK_TIMEOUT_S
        while time.monotonic() < deadline:
            ready, _, _ = select.select([fd], [], [], 1.0)
            if not ready:
                continue
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            seen += chunk
            if f"MARK {mark}\n".encode() in seen:
                return
        raise AssertionError(f"child never reached {mark}; stderr: {self.stderr.name}")

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def close(self) -> None:
        self.kill()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self.stderr.close()


@pytest.fixture
def two_devices(netconfd_factory: Callable[..., NetconfdProcess]) -> list[Device]:
    return [device_for(f"gc-nc-{i}", netconfd_factory().endpoint) for i in (1, 2)]


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Callable[[list[Device], str, str], Child]]:
    children: list[Child] = []

    def start(devices: list[Device], stop_at: str, run_id: str) -> Child:
        child = Child(tmp_path, devices, stop_at, run_id)
        children.append(child)
        return child

    yield start
    for child in children:
        child.close()


@pytest.mark.slow
async def test_killed_after_commit_devices_revert_on_their_own(
    two_devices: list[Device], spawn: Callable[[list[Device], str, str], Child], tmp_path: Path
) -> None:
    """SIGKILL between commit and confirm, no recovery: the devices revert when the window ends."""
    before = [await get_running_async(d, None) for d in two_devices]
    child = spawn(two_devices, "committed", "run-crash-a")
    child.wait_mark("committed")
    child.kill()
    assert [True, True] == [GROUP in await get_running_async(d) for d in two_devices]
    with Journal.open(child.journal_path) as journal:
        run = journal.run("run-crash-a")
    assert run is not None
    assert run.confirm_deadline is not None
    # Quietly: netconfd's confirm timer only runs while no client talks to it.
    await asyncio.sleep(max(0.0, run.confirm_deadline - time.time()) + REVERT_MARGIN_S)
    assert before == [await get_running_async(d, None) for d in two_devices]
    record = await resume_all(child.journal_path, two_devices)
    assert "rolled_back" == record.result
    # The devices answer that nothing is pending: reverted on their own, nothing to undo.
    cancels = [s for s in record.steps if s.name == Do.CANCEL]
    assert {StepStatus.FAILED} == {s.status for s in cancels}
    assert [{"pending": False}] * 2 == [dict(s.facts) for s in cancels]


async def test_recovery_right_after_kill_rolls_back_and_restores_running(
    two_devices: list[Device], spawn: Callable[[list[Device], str, str], Child]
) -> None:
    """SIGKILL between commit and confirm, then recover: cancel-commit everywhere, running restored."""
    before = [await get_running_async(d, None) for d in two_devices]
    child = spawn(two_devices, "committed", "run-crash-b")
    child.wait_mark("committed")
    child.kill()
    record = await resume_all(child.journal_path, two_devices)
    assert "rolled_back" == record.result
    assert {d.id: StepStatus.DONE for d in two_devices} == statuses(record, Do.COMMIT)
    assert {d.id: StepStatus.ROLLED_BACK for d in two_devices} == statuses(record, Do.CANCEL)
    assert before == [await get_running_async(d, None) for d in two_devices]


async def test_killed_before_any_commit_recovery_has_nothing_to_cancel(
    two_devices: list[Device], spawn: Callable[[list[Device], str, str], Child]
) -> None:
    """SIGKILL after the first candidate edit: recovery discards, cancels nothing, rolled back."""
    before = [await get_running_async(d, None) for d in two_devices]
    child = spawn(two_devices, "edited", "run-crash-c")
    child.wait_mark("edited")
    child.kill()
    record = await resume_all(child.journal_path, two_devices)
    assert "rolled_back" == record.result
    assert {} == statuses(record, Do.COMMIT)
    assert {} == statuses(record, Do.CANCEL)
    assert {StepStatus.ROLLED_BACK} == set(statuses(record, Do.DISCARD).values())
    assert before == [await get_running_async(d, None) for d in two_devices]
