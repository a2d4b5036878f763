"""The crash-point campaign's subset against real netconfd: a handover killed at every journal write.

tests/e2e/test_crash_campaign.py kills the daemon at every journal write of a run against lab
devices. This is the same campaign on two real NETCONF servers (yuma123 netconfd behind OpenSSH,
`:confirmed-commit:1.1`), at the runner's level: the handover of `netconfd-handover.yaml` runs in
a child process (tests/integration/runner_child.py) whose journal carries the same write hook as
tests/e2e/crashing_daemon.py. A first, uninterrupted run counts the journal writes the run makes
(K) and leaves the devices handed over. Then, for k = 1 … K in turn (enumerated, not random), the
devices are reset, the child runs with a fresh journal and is SIGKILLed right after write k (and,
for the writes that record a device call's result, right before it: the call happened, its result
was not journaled); `resume` (what the daemon runs at start) finishes the run from the journal,
and the devices themselves are checked:

* every device's running config byte for byte as the uninterrupted run leaves it and nothing of
  the run pending (a `<cancel-commit>` with the run's persist id is refused): handed over and
  confirmed, and the run's result `ok`; or every device's running config byte for byte as before
  the run, and the result not `ok`;
* no run left unfinished in the journal.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from baton.adapters.errors import NetconfRpcError
from baton.adapters.netconf import NetconfClient
from baton.core.model import Device
from baton.journal import Journal
from tests.integration.runner_helpers import (
    GROUP,
    NACM_NS,
    REPO,
    device_for,
    read_secret,
    resume_all,
)
from tests.peers.netconfd import NetconfdProcess

pytestmark = [pytest.mark.peer("netconfd"), pytest.mark.slow]

RUN_ID = "run-campaign"  # the same in every run: the rule's comment names it, byte for byte
WINDOW_S = 300  # never runs out here: recovery comes at once, and pendency is asked, not awaited
CHILD_TIMEOUT_S = 120.0
# A handed-over device back as before the run (whose nacm has no groups: the playbook's own
# compensation would leave an empty <groups/>, which is not byte for byte).
RESET = (
    '<config xmlns="urn:ietf:params:xml:ns:netconf:base:1.0">'
    f'<nacm xmlns="{NACM_NS}" xmlns:nc="urn:ietf:params:xml:ns:netconf:base:1.0">'
    '<groups nc:operation="remove"/>'
    f'<rule-list nc:operation="remove"><name>{GROUP}-handover</name></rule-list>'
    "</nacm></config>"
)


def _run_child(tmp_path: Path, devices: list[Device], tag: str, **extra: object) -> int:
    """The handover in a child process with a fresh journal; its exit status (-9: killed)."""
    spec = {
        "journal": str(tmp_path / f"journal-{tag}.sqlite3"),
        "run_id": RUN_ID,
        "window_s": WINDOW_S,
        "step_timeout_s": None,  # the playbook's own timeouts and retries (a loaded CI runner)
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
        **extra,
    }
    spec_path = tmp_path / f"child-{tag}.json"
    spec_path.write_text(json.dumps(spec))
    with (tmp_path / f"child-{tag}.log").open("w") as out:
        return subprocess.run(
            [sys.executable, "-m", "tests.integration.runner_child", str(spec_path)],
            cwd=REPO,
            env={**os.environ, "PYTHONPATH": f"{REPO}:{REPO / 'daemon'}"},
            stdout=out,
            stderr=subprocess.STDOUT,
            timeout=CHILD_TIMEOUT_S,
            check=False,
        ).returncode


async def _running(device: Device) -> str:
    async with NetconfClient.connect(device, resolve=read_secret, timeout_s=10) as nc:
        return await nc.get_config("running")


async def _is_pending(device: Device, persist_id: str | None) -> bool:
    """Whether a confirmed commit of the run is pending on the device: the device is asked (a
    pending one is cancelled by the question, which fails the check anyway)."""
    if persist_id is None:
        return False  # journaled before the first commit: no persist id, no commit
    async with NetconfClient.connect(device, resolve=read_secret, timeout_s=10) as nc:
        try:
            await nc.cancel_commit(persist_id=persist_id, rpc_timeout_s=10)
        except NetconfRpcError:
            return False
    return True


async def _reset(device: Device, original: str) -> None:
    async with NetconfClient.connect(device, resolve=read_secret, timeout_s=10) as nc:
        if await nc.get_config("running") != original:
            await nc.edit_config("candidate", RESET)
            await nc.commit()
        assert original == await nc.get_config("running"), f"{device.id} not reset"


def _points(labels: list[str]) -> list[str]:
    """Every write's "after", and "before" where a device call lies between intent and result."""
    points = [f"after:{n}" for n in range(1, len(labels) + 1)]
    points += [f"before:{n}" for n, label in enumerate(labels, 1) if label == "step_result"]
    return points


async def test_a_netconfd_handover_killed_at_every_journal_write(
    netconfd_factory: Callable[..., NetconfdProcess],
    tmp_path: Path,
    record_property: Callable[[str, object], None],
) -> None:
    """Killed at each journal write of the run, then recovered: the two netconfd devices end all
    handed over and confirmed, or all byte for byte as before; no run left unfinished."""
    devices = [device_for(f"gc-nc-{i}", netconfd_factory().endpoint) for i in (1, 2)]
    original = {d.id: await _running(d) for d in devices}

    writes = tmp_path / "writes.log"
    assert 0 == await asyncio.to_thread(_run_child, tmp_path, devices, "count", writes_log=str(writes))
    with Journal.open(tmp_path / "journal-count.sqlite3") as journal:
        counted = journal.run(RUN_ID)
    assert counted is not None
    assert "ok" == counted.result, counted.detail
    handed = {d.id: await _running(d) for d in devices}
    assert all(f"<name>{GROUP}</name>" in handed[d.id] for d in devices)
    assert all(f"<name>{GROUP}</name>" not in original[d.id] for d in devices)
    assert not any([await _is_pending(d, counted.persist_id) for d in devices])
    labels = [line.split()[1] for line in writes.read_text().splitlines()]
    points = _points(labels)
    print(f"\nnetconfd campaign: K = {len(labels)} journal writes, {len(points)} crash points")

    outcomes: Counter[str] = Counter()
    started = time.monotonic()
    for point in points:
        for device in devices:
            await _reset(device, original[device.id])
        tag = point.replace(":", "-")
        status = await asyncio.to_thread(_run_child, tmp_path, devices, tag, crash_at=point)
        assert -9 == status, f"the child was not killed at {point} (exit {status})"
        try:
            record = await resume_all(tmp_path / f"journal-{tag}.sqlite3", devices, RUN_ID)
            shown = {d.id: await _running(d) for d in devices}
            forward = all(shown[d.id] == handed[d.id] for d in devices)
            back = all(shown[d.id] == original[d.id] for d in devices)
            assert forward or back, f"mixed: {shown}"
            assert not any([await _is_pending(d, record.persist_id) for d in devices]), "left pending"
            assert (record.result == "ok") == forward, (record.result, record.detail)
        except AssertionError as exc:
            raise AssertionError(f"handover killed at {point}: {exc}") from exc
        outcomes[f"{'handed' if forward else 'original'} {record.result}"] += 1
    took_s = time.monotonic() - started
    print(f"netconfd campaign outcomes: {dict(outcomes)} in {took_s:.0f} s")
    record_property(
        "figure",
        f"netconfd crash campaign: K = {len(labels)} journal writes, {len(points)} crash points, "
        f"outcomes {dict(sorted(outcomes.items()))}, {took_s:.0f} s",
    )
