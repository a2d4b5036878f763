"""The lab's address plan and topology: pure functions, no sockets."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from baton.lab.network import (
    DEFAULT_OFFICES,
    LabError,
    build_plan,
    device_address,
    noc_source,
    role_counts,
    select_offices,
)


def test_default_plan_has_the_example_offices_and_four_devices_each() -> None:
    """The built-in topology: 8 offices, core/agg/2 OLTs each, Geumcheon's alternate chain kept."""
    plan = build_plan(DEFAULT_OFFICES, 4)
    assert 8 == len(plan.offices)
    assert 32 == len(plan.devices)
    assert ("seoul-bangbae", "seoul-suwon", "seoul-gwacheon") == plan.office("seoul-geumcheon").alternates
    roles = [(d.id, d.role, d.critical, d.parent) for d in plan.devices if d.office == "busan-jung"]
    assert [
        ("busan-jung-core1", "core", True, None),
        ("busan-jung-agg1", "agg", True, "busan-jung-core1"),
        ("busan-jung-olt01", "olt", False, "busan-jung-agg1"),
        ("busan-jung-olt02", "olt", False, "busan-jung-agg1"),
    ] == roles


def test_addresses_follow_the_documented_plan() -> None:
    """Device d of office o is 127.20.o.d; the 251st device moves to 127.21.o.1."""
    assert ["127.20.3.1", "127.20.3.250", "127.21.3.1"] == [device_address(3, d) for d in (1, 250, 251)]


def test_thousand_devices_have_unique_loopback_addresses_outside_noc_prefixes() -> None:
    """8 x 125 devices: 1,000 distinct 127/8 addresses, none inside any office's NOC prefix."""
    plan = build_plan(DEFAULT_OFFICES, 125)
    addresses = [ipaddress.ip_address(d.address) for d in plan.devices]
    nocs = [ipaddress.ip_network(o.noc_prefix) for o in plan.offices]
    assert 1000 == len(set(addresses))
    assert all(a in ipaddress.ip_network("127.0.0.0/8") for a in addresses)
    assert not any(a in n for a in addresses for n in nocs)
    assert "127.10.5.100" == noc_source(plan, "busan-jung")


@given(st.integers(min_value=1, max_value=600))
def test_role_counts_add_up_and_keep_a_core(n: int) -> None:
    """Any office size: at least one core, counts add up to N, and OLTs always have a parent."""
    core, agg, olt = role_counts(n)
    assert n == core + agg + olt
    assert core >= 1
    plan = build_plan(DEFAULT_OFFICES[:1], n)
    ids = {d.id for d in plan.devices}
    assert all(d.parent in ids for d in plan.devices if d.role != "core")


def test_select_offices_by_count_and_by_name() -> None:
    """`--offices 10` adds generated offices after the built-in 8; names keep only known alternates."""
    ten = select_offices("10")
    assert ["lab-009", "lab-010"] == [o.id for o in ten[8:]]
    two = select_offices("busan-jung,seoul-geumcheon")
    assert [("busan-jung", ()), ("seoul-geumcheon", ())] == [(o.id, o.alternates) for o in two]


@pytest.mark.parametrize("spec", ["0", "nowhere", "busan-jung,atlantis"])
def test_select_offices_refuses_bad_specs(spec: str) -> None:
    """Bad `--offices` values fail with a LabError that says what is wrong."""
    with pytest.raises(LabError):
        select_offices(spec)


def test_unknown_office_is_a_lab_error() -> None:
    """Asking the plan for an office it does not have names the offices it has."""
    with pytest.raises(LabError, match="busan-jung"):
        build_plan(select_offices("busan-jung"), 2).office("daegu-suseong")
