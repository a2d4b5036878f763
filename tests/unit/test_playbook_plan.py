"""Pure run planning: target selection, phases, `when`, and every render error at once."""

from __future__ import annotations

from pathlib import Path

import pytest

from baton.core.model import Device, Inventory, Office, RunKind
from baton.playbook.plan import RunPlan, plan_run, select_targets
from baton.playbook.render import RunInfo
from baton.playbook.schema import Playbook, load_playbooks

REPO = Path(__file__).resolve().parents[2]
RUN = RunInfo("r-1", RunKind.HANDOVER, "drill", "kim")

LAB_VARS = {
    "noc_prefixes": ["10.10.0.0/16"],
    "aaa_servers": ["172.16.10.21"],
    "trap_collectors": ["172.16.10.30"],
    "syslog_collectors": ["172.16.10.31"],
    "contact": "NOC Geumcheon",
    "operator_group": "noc-geumcheon",
}


def office(office_id: str, **vars_: object) -> Office:
    return Office(office_id, office_id.upper(), "capital", vars={**LAB_VARS, **vars_})


def inventory() -> Inventory:
    devices = [
        Device("gc-core-1", "gc", "core-router", "10.1.0.1", tags=("router", "core")),
        Device("gc-agg-1", "gc", "agg-router", "10.1.1.1", tags=("router",)),
        Device("gc-olt-1", "gc", "olt", "10.1.3.1", tags=("access",)),
        Device("bb-core-1", "bb", "core-router", "10.2.0.1", tags=("router",)),
    ]
    return Inventory(
        offices={"gc": office("gc"), "bb": office("bb", noc_prefixes=["10.11.0.0/16"])},
        devices={d.id: d for d in devices},
    )


def playbook(**overrides: object) -> Playbook:
    data: dict[str, object] = {
        "name": "t",
        "kind": "handover",
        "targets": {"office": "closed"},
        "steps": [{"name": "a", "kind": "netconf.edit", "config": "<x>{{ alternate.id }}</x>"}],
    }
    return Playbook.model_validate({**data, **overrides})


def device_ids(plan: RunPlan) -> list[str]:
    return [d.device.id for d in plan.devices]


@pytest.mark.parametrize(
    ("targets", "expected"),
    [
        ({"office": "closed"}, ["gc-agg-1", "gc-core-1", "gc-olt-1"]),
        ({"office": "alternate"}, ["bb-core-1"]),
        ({"office": "closed", "roles": ["core-router", "olt"]}, ["gc-core-1", "gc-olt-1"]),
        ({"office": "closed", "tags": ["router"]}, ["gc-agg-1", "gc-core-1"]),
        ({"office": "closed", "tags": ["router"], "roles": ["agg-router"]}, ["gc-agg-1"]),
        ({"office": "closed", "devices": ["gc-olt-1"]}, ["gc-olt-1"]),
    ],
)
def test_target_selection(targets: dict[str, object], expected: list[str]) -> None:
    """Targets pick the side's devices, narrowed by roles (any), tags (any) and device ids."""
    assert expected == [d.id for d in select_targets(playbook(targets=targets), inventory(), "gc", "bb")]


def test_plan_renders_each_device_in_order() -> None:
    """Each target device gets every step rendered, in playbook order, with its index."""
    pb = playbook(
        targets={"office": "closed", "tags": ["router"]},
        steps=[
            {"name": "a", "kind": "netconf.edit", "config": "<a>{{ device.id }}</a>"},
            {"name": "b", "kind": "netconf.get", "filter": "<b/>"},
        ],
    )
    plan = plan_run(pb, inventory(), "gc", "bb", RUN)
    assert plan.ok
    assert [
        ("gc-agg-1", [(0, "a", "<a>gc-agg-1</a>"), (1, "b", "<b/>")]),
        ("gc-core-1", [(0, "a", "<a>gc-core-1</a>"), (1, "b", "<b/>")]),
    ] == [
        (
            d.device.id,
            [(s.index, s.name, getattr(s.step, "config", getattr(s.step, "filter", None))) for s in d.steps],
        )
        for d in plan.devices
    ]


def test_when_skips_steps_per_device() -> None:
    """A step whose `when` is false for a device is skipped (and listed) for that device only."""
    pb = playbook(
        targets={"office": "closed", "tags": ["router"]},
        steps=[
            {
                "name": "core-only",
                "kind": "netconf.edit",
                "config": "<x/>",
                "when": "device.role == 'core-router'",
            },
            {"name": "all", "kind": "netconf.edit", "config": "<y/>"},
        ],
    )
    plan = plan_run(pb, inventory(), "gc", "bb", RUN)
    assert {"gc-agg-1": (["all"], ("core-only",)), "gc-core-1": (["core-only", "all"], ())} == {
        d.device.id: ([s.name for s in d.steps], d.skipped) for d in plan.devices
    }
    assert all(s.step.when is None for d in plan.devices for s in d.steps)


def test_phases_and_worst_case_with_barriers() -> None:
    """Steps keep their phase; with barriers the worst case adds up phase by phase, per wave of devices."""
    pb = playbook(
        barriers=True,
        concurrency=2,
        steps=[
            {"name": "edit", "kind": "netconf.edit", "config": "<x/>", "phase": 0, "timeout_s": 10},
            {
                "name": "check",
                "kind": "netconf.get",
                "filter": "<x/>",
                "phase": 1,
                "timeout_s": 5,
                "retries": 1,
            },
        ],
    )
    plan = plan_run(pb, inventory(), "gc", "bb", RUN)
    assert (0, 1) == plan.phases
    assert [(0, 1)] * 3 == [tuple(s.phase for s in d.steps) for d in plan.devices]
    # 3 devices at concurrency 2: two waves; phase 0 = 2 × 10 s, phase 1 = 2 × (5 s × 2 tries
    # + 0.5 s backoff), commits 2 × 30 s, confirms 2 × 15 s
    assert 20 + 21 + 60 + 30 == plan.worst_case_s


def test_render_errors_collected_for_every_device() -> None:
    """Every device's render errors are reported at once, naming device and step."""
    inv = inventory()
    pb = playbook(
        targets={"office": "closed", "tags": ["router"]},
        steps=[
            {"name": "a", "kind": "netconf.edit", "config": "<a>{{ device.vars.loopback }}</a>"},
            {
                "name": "b",
                "kind": "snmp.set",
                "oid": "1.3.6.1.2.1.1.5.0",
                "type": "integer",
                "value": "{{ device.id }}",
            },
        ],
    )
    plan = plan_run(pb, inv, "gc", "bb", RUN)
    assert not plan.ok
    assert [
        "device gc-agg-1 step 'a': undefined variable: 'device.vars.loopback' is undefined",
        "device gc-agg-1 step 'b': snmp.set value 'gc-agg-1' is not an integer",
        "device gc-core-1 step 'a': undefined variable: 'device.vars.loopback' is undefined",
        "device gc-core-1 step 'b': snmp.set value 'gc-core-1' is not an integer",
    ] == [str(p) for p in plan.problems]


@pytest.mark.parametrize(
    ("pb", "office_id", "alternate_id", "message"),
    [
        (playbook(), "nowhere", "bb", "office 'nowhere' is not in the inventory"),
        (playbook(), "gc", "gc", "office and alternate are both 'gc'"),
        (playbook(kind="handback"), "gc", "bb", "playbook 't' is a handback playbook, not handover"),
        (
            playbook(targets={"office": "closed", "roles": ["bng"]}),
            "gc",
            "bb",
            "no device of office gc matches the playbook's targets",
        ),
        (
            playbook(targets={"office": "closed", "devices": ["bb-core-1"]}),
            "gc",
            "bb",
            "listed in targets.devices but in office bb, not gc",
        ),
    ],
)
def test_plan_refusals(pb: Playbook, office_id: str, alternate_id: str, message: str) -> None:
    """Impossible plans are refused with a reason, not an exception."""
    plan = plan_run(pb, inventory(), office_id, alternate_id, RUN)
    assert message in [p.message for p in plan.problems]


@pytest.mark.parametrize("directory", ["playbooks", "playbooks/examples"])
def test_shipped_playbooks_plan_against_lab_offices(directory: str) -> None:
    """The shipped playbooks and examples render cleanly for offices with the lab's vars."""
    inv = inventory()
    for pb in load_playbooks(REPO / directory).values():
        run = RunInfo("r", RunKind(pb.kind), "drill", "kim")
        plan = plan_run(
            pb.model_copy(update={"targets": pb.targets.model_copy(update={"tags": [], "roles": []})}),
            inv,
            "gc",
            "bb",
            run,
        )
        assert [] == [str(p) for p in plan.problems], pb.name
        assert 3 == len(plan.devices)


def test_lab_handover_then_handback_on_a_lab_datastore() -> None:
    """The lab playbooks, rendered and applied to a lab datastore, move the management plane and back."""
    from lxml import etree  # type: ignore[import-untyped]

    from baton.lab.datastore import Datastore, management_xml, parse_xml
    from baton.lab.device import TrapTarget
    from baton.playbook.schema import NetconfEdit, NetconfGet

    gc = inventory().offices["gc"]
    store = Datastore(
        management_xml(
            acl=[("gc", "10.10.0.0/16")],
            aaa_servers=["172.16.10.21"],
            trap_targets=[TrapTarget("172.16.10.30")],
            syslog_servers=["172.16.10.31"],
            contact="NOC Geumcheon",
        )
    )
    inv = Inventory(
        offices={
            "gc": gc,
            "bb": Office(
                "bb",
                "BB",
                "capital",
                vars={
                    "noc_prefixes": ["10.11.0.0/16"],
                    "aaa_servers": ["172.16.11.21"],
                    "trap_collectors": ["172.16.11.30"],
                    "syslog_collectors": ["172.16.11.31"],
                    "contact": "NOC Bangbae",
                },
            ),
        },
        devices={"gc-core-1": inventory().devices["gc-core-1"]},
    )
    playbooks = load_playbooks(REPO / "playbooks")
    for name, kind in (("lab-handover", RunKind.HANDOVER), ("lab-handback", RunKind.HANDBACK)):
        plan = plan_run(playbooks[name], inv, "gc", "bb", RunInfo("r", kind, "drill", "kim"))
        assert plan.ok, plan.problems
        for planned in plan.devices[0].steps:
            step = planned.step
            if isinstance(step, NetconfEdit):
                store.edit_config("candidate", parse_xml(f"<config>{step.config}</config>"), 1)
        store.commit(1)
        running = etree.fromstring(f"<data>{store.running_xml()}</data>".encode())
        for planned in plan.devices[0].steps:
            if isinstance(planned.step, NetconfGet):
                for check in planned.step.expect:
                    found = running.xpath(check.xpath, namespaces=check.namespaces)
                    assert (
                        (not found) if check.absent else (found and (check.equals in (None, found[0].text)))
                    ), check
        view = store.running_mgmt()
        if kind is RunKind.HANDOVER:
            assert (("gc", "bb"), ("172.16.11.21",), ("172.16.11.30",), "NOC Bangbae") == (
                view.acl_offices,
                view.aaa_servers,
                tuple(t.address for t in view.trap_targets),
                view.contact,
            )
        else:
            assert (("gc",), ("172.16.10.21",), ("172.16.10.30",), "NOC Geumcheon") == (
                view.acl_offices,
                view.aaa_servers,
                tuple(t.address for t in view.trap_targets),
                view.contact,
            )
