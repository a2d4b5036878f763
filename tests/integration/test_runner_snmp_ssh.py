"""The runner with snmp.set/snmp.get and ssh.command steps against real snmpd and sshd on loopback.

Each device is one snmpd agent (SNMP) plus the sshd (SSH) on 127.0.0.1; the playbook has no
NETCONF step at all (none is needed: no edit, so no commit and no confirm).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from baton.adapters.snmp_access import PysnmpAccess
from baton.core.model import Device, SecretRef, SnmpSettings, SshSettings
from baton.journal import StepStatus
from baton.playbook.progress import DeviceStatus
from baton.playbook.runner import execute
from baton.playbook.steps import Connectors
from tests.integration.runner_helpers import (
    ALTERNATE,
    CLOSED,
    inventory_of,
    make_plan,
    open_journal,
    read_secret,
    statuses,
)
from tests.peers.snmpd import IF_ADMIN_STATUS_OID, SnmpdProcess
from tests.peers.sshd import SshdProcess

pytestmark = [pytest.mark.peer("snmpd"), pytest.mark.peer("sshd")]

PORT = 2  # the ifIndex the playbook shuts (ifAdminStatus.2)

PLAYBOOK = """
name: snmp-ssh-handover
kind: handover
targets: {office: closed}
concurrency: 4
on_failure: rollback
steps:
  - name: shut-spare-port
    kind: snmp.set
    oid: "1.3.6.1.2.1.2.2.1.7.{{ device.vars.port }}"
    type: integer
    value: 2
    timeout_s: 5
    compensate:
      kind: snmp.set
      oid: "1.3.6.1.2.1.2.2.1.7.{{ device.vars.port }}"
      type: integer
      value: 1
      timeout_s: 5
  - name: port-is-down
    kind: snmp.get
    oid: "1.3.6.1.2.1.2.2.1.7.{{ device.vars.port }}"
    timeout_s: 5
    expect:
      - equals: 2
  - name: announce
    kind: ssh.command
    command: "echo handed-over to {{ alternate.id }}"
    timeout_s: 10
    expect: ["^handed-over to {{ alternate.id }}$"]
    compensate:
      kind: ssh.command
      command: "echo rolled-back from {{ alternate.id }} > {{ device.vars.marker_dir }}/{{ device.id }}"
      timeout_s: 10
  - name: verify-name
    kind: snmp.get
    oid: "1.3.6.1.2.1.1.5.0"
    timeout_s: 5
    expect:
      - equals: "{{ device.vars.expected_name }}"
"""


@pytest.fixture
def marker_dir() -> Iterator[Path]:
    """A directory the sshd test user can write into (under /tmp: the user cannot reach tmp_path)."""
    path = Path(tempfile.mkdtemp(prefix="baton-markers-", dir="/tmp"))
    path.chmod(0o777)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
async def snmp() -> AsyncIterator[PysnmpAccess]:
    async with PysnmpAccess(read_secret) as access:
        yield access


def device_for(
    device_id: str,
    agent: SnmpdProcess,
    sshd: SshdProcess,
    secrets: Path,
    variables: Mapping[str, Any],
) -> Device:
    """One device: SNMP at the agent (rw community), SSH at the sshd (same 127.0.0.1, other port)."""
    community = secrets / f"{device_id}.community"
    community.write_text(agent.rw_community)
    snmp_ep, ssh_ep = agent.endpoint, sshd.endpoint
    assert snmp_ep.host == ssh_ep.host
    return Device(
        id=device_id,
        office=CLOSED,
        role="core",
        address=snmp_ep.host,
        host_key=ssh_ep.host_key,
        snmp=SnmpSettings(
            version="2c",
            port=snmp_ep.port,
            community=SecretRef("file", str(community)),
            timeout_s=1.0,
            retries=1,
        ),
        ssh=SshSettings(
            enabled=True,
            port=ssh_ep.port,
            username=ssh_ep.username,
            private_key=SecretRef("file", str(ssh_ep.private_key)),
            timeout_s=10.0,
        ),
        vars=dict(variables),
    )


def admin_status(agent: SnmpdProcess) -> str:
    """ifAdminStatus.PORT as net-snmp's own snmpget reads it."""
    result = agent.cli("snmpget", "-Oqv", f"{IF_ADMIN_STATUS_OID}.{PORT}")
    assert 0 == result.returncode, result.stderr
    return result.stdout.strip()


def write_playbook(tmp_path: Path) -> Path:
    path = tmp_path / "snmp-ssh-handover.yaml"
    path.write_text(PLAYBOOK)
    return path


async def test_snmp_and_ssh_steps_all_pass(
    snmpd_agent: SnmpdProcess,
    sshd_server: SshdProcess,
    snmp: PysnmpAccess,
    marker_dir: Path,
    tmp_path: Path,
) -> None:
    """Every step done: the port is down on the agent, the command ran, nothing compensated."""
    device = device_for(
        "gc-core-1",
        snmpd_agent,
        sshd_server,
        tmp_path,
        {"port": PORT, "expected_name": snmpd_agent.sys_name, "marker_dir": str(marker_dir)},
    )
    plan = make_plan(inventory_of([device]), write_playbook(tmp_path), "run-snmp-ok")
    with open_journal(tmp_path) as journal:
        outcome = await execute(plan, journal=journal, connectors=Connectors(read_secret, snmp=snmp))
        record = journal.run("run-snmp-ok")
    assert "ok" == outcome.result, outcome.detail
    assert "2" == admin_status(snmpd_agent)
    assert "2" == await snmp.get(device, f"{IF_ADMIN_STATUS_OID}.{PORT}", timeout_s=5)
    assert [] == os.listdir(marker_dir)
    assert record is not None
    assert "ok" == record.result
    assert ["shut-spare-port", "port-is-down", "announce", "verify-name"] == [s.name for s in record.steps]
    assert {StepStatus.DONE} == {s.status for s in record.steps}
    details = {s.name: s.detail for s in record.steps}
    assert f"set {IF_ADMIN_STATUS_OID}.{PORT}" == details["shut-spare-port"]
    assert "value '2'" == details["port-is-down"]
    assert "exit status 0" == details["announce"]
    assert f"value '{snmpd_agent.sys_name}'" == details["verify-name"]
    dev = outcome.device("gc-core-1")
    # No NETCONF edit, so nothing to commit or confirm: every step done is handed over.
    assert (None, DeviceStatus.CONFIRMED) == (dev.error, dev.status)


async def test_failing_verify_compensates_snmp_set_and_ssh_command(
    snmpd_factory: Callable[..., SnmpdProcess],
    sshd_server: SshdProcess,
    snmp: PysnmpAccess,
    marker_dir: Path,
    tmp_path: Path,
) -> None:
    """One device's last verify fails: on both devices the SET is undone (ifAdminStatus back to
    up on the agent) and the SSH step's compensating command ran, newest first, all journaled."""
    agents = [snmpd_factory("127.0.0.1", f"gc-core-{i}") for i in (1, 2)]
    devices = [
        device_for(
            f"gc-core-{i}",
            agent,
            sshd_server,
            tmp_path,
            {
                "port": PORT,
                # gc-core-2 expects a name its agent does not have: its verify fails
                "expected_name": agent.sys_name if i == 1 else "gc-core-elsewhere",
                "marker_dir": str(marker_dir),
            },
        )
        for i, agent in enumerate(agents, 1)
    ]
    plan = make_plan(inventory_of(devices), write_playbook(tmp_path), "run-snmp-rollback")
    with open_journal(tmp_path) as journal:
        outcome = await execute(plan, journal=journal, connectors=Connectors(read_secret, snmp=snmp))
        record = journal.run("run-snmp-rollback")

    assert "rolled_back" == outcome.result, outcome.detail
    for agent, device in zip(agents, devices, strict=True):
        assert "1" == admin_status(agent)  # restored, read back from snmpd itself
        assert "1" == await snmp.get(device, f"{IF_ADMIN_STATUS_OID}.{PORT}", timeout_s=5)
        assert f"rolled-back from {ALTERNATE}\n" == (marker_dir / device.id).read_text()
        assert DeviceStatus.ROLLED_BACK == outcome.device(device.id).status

    assert record is not None
    assert "rolled_back" == record.result
    failed = [s for s in record.steps if s.status is StepStatus.FAILED]
    assert [("gc-core-2", "verify-name")] == [(s.device, s.name) for s in failed]
    assert "value is 'gc-core-2', expected 'gc-core-elsewhere'" == failed[0].detail
    ids = [d.id for d in devices]
    assert dict.fromkeys(ids, StepStatus.ROLLED_BACK) == statuses(record, "compensate:announce")
    assert dict.fromkeys(ids, StepStatus.ROLLED_BACK) == statuses(record, "compensate:shut-spare-port")
    for device_id in ids:
        undo = [s for s in record.steps if s.device == device_id and s.phase == "rollback"]
        # Newest first: the SSH step's compensation, then the SET's.
        assert ["compensate:announce", "compensate:shut-spare-port"] == [s.name for s in undo]
        assert ["exit status 0", f"set {IF_ADMIN_STATUS_OID}.{PORT}"] == [s.detail for s in undo]
    # gc-core-1 ran concurrently: its verify passed, or it was stopped before it (skipped, or
    # the run turned back before it came to it: no row).
    assert statuses(record, "verify-name").get("gc-core-1") in (StepStatus.DONE, StepStatus.SKIPPED, None)


async def test_snmp_steps_are_refused_without_snmp_access(
    snmpd_agent: SnmpdProcess, sshd_server: SshdProcess, marker_dir: Path, tmp_path: Path
) -> None:
    """Connectors without SNMP access: the run is refused before touching anything."""
    device = device_for(
        "gc-core-1",
        snmpd_agent,
        sshd_server,
        tmp_path,
        {"port": PORT, "expected_name": "x", "marker_dir": str(marker_dir)},
    )
    plan = make_plan(inventory_of([device]), write_playbook(tmp_path), "run-no-snmp")
    with open_journal(tmp_path) as journal:
        outcome = await execute(plan, journal=journal, connectors=Connectors(read_secret))
    assert "refused" == outcome.result
    assert "need SNMP access" in outcome.detail
    assert "1" == admin_status(snmpd_agent)
