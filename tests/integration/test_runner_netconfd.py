"""The runner against real NETCONF servers: yuma123 netconfd (and one lab device) on loopback."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from baton.adapters.netconf import NetconfClient
from baton.journal import StepStatus
from baton.playbook.progress import DeviceStatus, Do
from baton.playbook.runner import FenceLost, execute
from baton.playbook.steps import Connectors
from tests.integration.runner_helpers import (
    GROUP,
    NACM_FILTER,
    NACM_NS,
    PLAYBOOKS,
    device_for,
    get_running_async,
    inventory_of,
    make_plan,
    open_journal,
    read_secret,
    statuses,
)
from tests.lab_fixtures import ThreadedLabDevice
from tests.peers.netconfd import NetconfdProcess

pytestmark = pytest.mark.peer("netconfd")

LAB_NS = "urn:baton:lab:mgmt:1.0"

# The netconfd handover, with its verify reading the group name from a device variable, so one
# device can be made to fail verification; and a lab-model step for devices tagged "lab".
MIXED_PLAYBOOK = """
name: test-handover
kind: handover
targets: {office: closed}
concurrency: 4
confirm_window_s: 120
on_failure: rollback
barriers: true
steps:
  - name: grant-alternate-group
    kind: netconf.edit
    when: "'netconfd' in device.tags"
    config: |
      <nacm xmlns="urn:ietf:params:xml:ns:yang:ietf-netconf-acm">
        <groups><group><name>{{ alternate.vars.operator_group }}</name>
          <user-name>{{ alternate.vars.operator_group }}</user-name></group></groups>
      </nacm>
    compensate:
      kind: netconf.edit
      config: |
        <nacm xmlns="urn:ietf:params:xml:ns:yang:ietf-netconf-acm"
              xmlns:nc="urn:ietf:params:xml:ns:netconf:base:1.0">
          <groups><group nc:operation="remove">
            <name>{{ alternate.vars.operator_group }}</name></group></groups>
        </nacm>
  - name: grant-alternate-acl
    kind: netconf.edit
    when: "'lab' in device.tags"
    config: |
      <management xmlns="urn:baton:lab:mgmt:1.0">
        <acl><entry><name>{{ alternate.id }}</name>
          <prefix>{{ alternate.vars.noc_prefixes[0] }}</prefix></entry></acl>
      </management>
    compensate:
      kind: netconf.edit
      config: |
        <management xmlns="urn:baton:lab:mgmt:1.0" xmlns:nc="urn:ietf:params:xml:ns:netconf:base:1.0">
          <acl><entry nc:operation="remove"><name>{{ alternate.id }}</name></entry></acl>
        </management>
  - name: verify-alternate-group
    kind: netconf.get
    when: "'netconfd' in device.tags"
    phase: 1
    filter: <nacm xmlns="urn:ietf:params:xml:ns:yang:ietf-netconf-acm"><groups/></nacm>
    expect:
      - xpath: "//a:group[a:name='{{ device.vars.verify_group | default(alternate.vars.operator_group) }}']"
        namespaces: {a: "urn:ietf:params:xml:ns:yang:ietf-netconf-acm"}
"""


@pytest.fixture
def three_netconfd(netconfd_factory: Callable[..., NetconfdProcess]) -> list[NetconfdProcess]:
    return [netconfd_factory() for _ in range(3)]


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "test-handover.yaml"
    path.write_text(text)
    return path


async def test_handover_commits_verifies_and_confirms_on_every_device(
    three_netconfd: list[NetconfdProcess], tmp_path: Path
) -> None:
    """netconfd-handover.yaml on 3 devices: running has the group everywhere, every step done."""
    devices = [device_for(f"gc-nc-{i}", nc.endpoint) for i, nc in enumerate(three_netconfd, 1)]
    plan = make_plan(inventory_of(devices), PLAYBOOKS / "netconfd-handover.yaml", "run-ok")
    with open_journal(tmp_path) as journal:
        outcome = await execute(plan, journal=journal, connectors=Connectors(read_secret))
        record = journal.run("run-ok")
    assert "ok" == outcome.result, outcome.detail
    assert [DeviceStatus.CONFIRMED] * 3 == [d.status for d in outcome.devices]
    for device in devices:
        assert f"<name>{GROUP}</name>" in await get_running_async(device)
    assert record is not None
    assert "ok" == record.result
    assert {StepStatus.DONE} == {s.status for s in record.steps}
    assert {d.id: StepStatus.DONE for d in devices} == statuses(record, Do.CONFIRM)
    assert outcome.persist_id == record.persist_id


async def test_verify_failing_on_one_device_rolls_every_device_back(
    three_netconfd: list[NetconfdProcess], tmp_path: Path
) -> None:
    """One device's verify fails: cancel-commit everywhere, running unchanged byte for byte."""
    devices = [
        device_for("gc-nc-1", three_netconfd[0].endpoint),
        device_for("gc-nc-2", three_netconfd[1].endpoint, variables={"verify_group": "nobody"}),
        device_for("gc-nc-3", three_netconfd[2].endpoint),
    ]
    before = [await get_running_async(d, None) for d in devices]
    plan = make_plan(inventory_of(devices), _write(tmp_path, MIXED_PLAYBOOK), "run-verify-fails")
    with open_journal(tmp_path) as journal:
        outcome = await execute(plan, journal=journal, connectors=Connectors(read_secret))
        record = journal.run("run-verify-fails")
    assert "rolled_back" == outcome.result, outcome.detail
    assert before == [await get_running_async(d, None) for d in devices]
    assert record is not None
    assert "rolled_back" == record.result
    assert {d.id: StepStatus.ROLLED_BACK for d in devices} == statuses(record, "cancel-commit")
    failed = [s for s in record.steps if s.status is StepStatus.FAILED]
    assert ["gc-nc-2"] == [s.device for s in failed]
    assert "not found" in failed[0].detail
    assert "gc-nc-2" == outcome.device("gc-nc-2").device
    assert outcome.device("gc-nc-2").error is not None
    assert DeviceStatus.CONFIRMED not in {d.status for d in outcome.devices}


async def test_device_refusing_commits_fails_the_run_and_rolls_back_the_others(
    netconfd_factory: Callable[..., NetconfdProcess],
    lab_netconf_device: ThreadedLabDevice,
    tmp_path: Path,
) -> None:
    """A lab device refusing <commit> fails the run; the netconfd devices are rolled back."""
    lab_netconf_device.call(lambda: setattr(lab_netconf_device.device.faults, "refuse_commits", True))
    ncs = [netconfd_factory() for _ in range(2)]
    devices = [
        device_for("gc-lab-1", lab_netconf_device.endpoint, tags=("lab",)),
        *(device_for(f"gc-nc-{i}", nc.endpoint) for i, nc in enumerate(ncs, 1)),
    ]
    before = [await get_running_async(d, None) for d in devices[1:]]
    lab_before = lab_netconf_device.call(lab_netconf_device.device.datastore.running_xml)
    plan = make_plan(inventory_of(devices), _write(tmp_path, MIXED_PLAYBOOK), "run-refused-commit")
    with open_journal(tmp_path) as journal:
        outcome = await execute(plan, journal=journal, connectors=Connectors(read_secret))
        record = journal.run("run-refused-commit")
    assert "rolled_back" == outcome.result, outcome.detail
    assert record is not None
    assert StepStatus.FAILED == statuses(record, Do.COMMIT)["gc-lab-1"]
    assert "commit refused" in outcome.device("gc-lab-1").error  # type: ignore[operator]
    assert before == [await get_running_async(d, None) for d in devices[1:]]
    assert lab_before == lab_netconf_device.call(lab_netconf_device.device.datastore.running_xml)
    assert StepStatus.ROLLED_BACK == statuses(record, "discard-candidate")["gc-lab-1"]
    committed = [d for d, status in statuses(record, Do.COMMIT).items() if status is StepStatus.DONE]
    assert dict.fromkeys(committed, StepStatus.ROLLED_BACK) == statuses(record, "cancel-commit")


# The fence on a standard NETCONF server: an ietf-netconf-acm group whose one user-name is the
# epoch (replaced whole by every commit). netconfd cannot refuse a lower value by itself (YANG has
# no "not below the old value"), so this proves the runner's half: the marker read under the
# candidate lock stops a deposed leader before it changes anything.
FENCE = """
fence:
  filter: '<nacm xmlns="urn:ietf:params:xml:ns:yang:ietf-netconf-acm"><groups/></nacm>'
  xpath: "//a:group[a:name='baton-fence']/a:user-name"
  namespaces: {a: "urn:ietf:params:xml:ns:yang:ietf-netconf-acm"}
  config: |
    <nacm xmlns="urn:ietf:params:xml:ns:yang:ietf-netconf-acm"
          xmlns:nc="urn:ietf:params:xml:ns:netconf:base:1.0">
      <groups><group nc:operation="replace"><name>baton-fence</name>
        <user-name>{epoch}</user-name></group></groups>
    </nacm>
"""


async def test_a_deposed_leader_is_stopped_by_the_epoch_on_netconfd(
    three_netconfd: list[NetconfdProcess], tmp_path: Path
) -> None:
    devices = [device_for(f"gc-nc-{i}", nc.endpoint) for i, nc in enumerate(three_netconfd, 1)]
    fenced = tmp_path / "fenced-handover.yaml"
    fenced.write_text((PLAYBOOKS / "netconfd-handover.yaml").read_text() + FENCE)
    inventory = inventory_of(devices)
    with open_journal(tmp_path) as journal:
        new = await execute(
            make_plan(inventory, fenced, "run-new"),
            journal=journal,
            connectors=Connectors(read_secret),
            epoch=9,
        )
        assert "ok" == new.result, new.detail
        held = [await get_running_async(d, None) for d in devices]
        assert all("<name>baton-fence</name>" in r and "<user-name>9</user-name>" in r for r in held)
        with pytest.raises(FenceLost) as lost:
            await execute(
                make_plan(inventory, fenced, "run-old"),
                journal=journal,
                connectors=Connectors(read_secret),
                epoch=4,
                fence=lambda: True,
            )
        record = journal.run("run-old")
    assert 9 == lost.value.seen_epoch
    assert record is not None
    assert record.finished is None
    assert held == [await get_running_async(d, None) for d in devices], "the deposed leader changed a device"


async def test_a_candidate_left_dirty_on_netconfd_does_not_go_out_with_the_handover(
    netconfd_factory: Callable[..., NetconfdProcess], tmp_path: Path
) -> None:
    """Someone edited netconfd's candidate without a lock and left: the run's commit carries the
    handover's edits and nothing of theirs."""
    device = device_for("gc-nc-1", netconfd_factory().endpoint)
    stray = (
        f'<config><nacm xmlns="{NACM_NS}"><groups><group><name>stray</name>'
        "<user-name>stray</user-name></group></groups></nacm></config>"
    )
    async with NetconfClient.connect(device, resolve=read_secret, timeout_s=10) as nc:
        await nc.edit_config("candidate", stray)  # no lock, no commit
        assert "<name>stray</name>" in await nc.get_config("candidate", NACM_FILTER)
    plan = make_plan(inventory_of([device]), PLAYBOOKS / "netconfd-handover.yaml", "run-dirty")
    with open_journal(tmp_path) as journal:
        outcome = await execute(plan, journal=journal, connectors=Connectors(read_secret))
    assert "ok" == outcome.result, outcome.detail
    running = await get_running_async(device)
    assert f"<name>{GROUP}</name>" in running
    assert "<name>stray</name>" not in running, "a stray candidate edit went out with the handover"
