"""core.health: observations → device verdicts → office verdicts."""

from __future__ import annotations

from types import MappingProxyType

import pytest

from baton.core.health import (
    DeviceHealth,
    DeviceJudgement,
    Observation,
    ProbeHealth,
    device_verdict,
    judge_devices,
    judge_office,
    observe,
)
from baton.core.model import Device, DeviceVerdict, Inventory, Office, OfficeVerdict, Policy, Protocol

POLICY = Policy()  # failures_to_down=3, office_down_ratio=0.5
SNMP, NETCONF = Protocol.SNMP, Protocol.NETCONF


def health_from(*results: tuple[Protocol, bool]) -> DeviceHealth:
    health = DeviceHealth()
    for i, (protocol, ok) in enumerate(results):
        health = observe(health, Observation("r1", protocol, ok, at=float(i), reason="" if ok else "timeout"))
    return health


def inventory_of(*devices: Device) -> Inventory:
    offices = {d.office: Office(d.office, d.office, "r") for d in devices}
    return Inventory(offices=MappingProxyType(offices), devices=MappingProxyType({d.id: d for d in devices}))


def test_observe_counts_consecutive_results() -> None:
    """A failure after successes keeps last_ok_at and ever_ok, and resets the success count."""
    health = health_from((SNMP, True), (SNMP, True), (SNMP, False))
    expected = ProbeHealth(
        consecutive_failures=1,
        consecutive_successes=0,
        last_ok_at=1.0,
        last_at=2.0,
        last_reason="timeout",
        ever_ok=True,
    )
    assert expected == health.probes[SNMP]


def test_observe_drops_an_observation_older_than_the_last() -> None:
    """A probe result that arrives late does not overwrite a newer one."""
    health = health_from((SNMP, True), (SNMP, True))
    late = observe(health, Observation("r1", SNMP, False, at=0.5, reason="timeout"))
    assert health == late


@pytest.mark.parametrize(
    ("results", "verdict", "reason"),
    [
        ((), DeviceVerdict.UNKNOWN, "never probed"),
        (
            ((SNMP, False), (SNMP, False)),
            DeviceVerdict.UNKNOWN,
            "snmp: 2 consecutive failures (timeout); fewer than 3 failures and never up",
        ),
        (((SNMP, False),) * 3, DeviceVerdict.DOWN, "snmp: 3 consecutive failures (timeout)"),
        (
            ((SNMP, True), (SNMP, False), (SNMP, False)),
            DeviceVerdict.UP,
            "snmp: 2 consecutive failures (timeout)",
        ),
        (((SNMP, True), (SNMP, False)), DeviceVerdict.UP, "snmp: 1 consecutive failure (timeout)"),
        (
            ((SNMP, True),) + ((SNMP, False),) * 3,
            DeviceVerdict.DOWN,
            "snmp: 3 consecutive failures (timeout)",
        ),
        (
            ((SNMP, False),) * 3 + ((NETCONF, True),),
            DeviceVerdict.UP,
            "netconf: ok; snmp: 3 consecutive failures (timeout)",
        ),
        (
            ((SNMP, False),) * 3 + ((NETCONF, False),),
            DeviceVerdict.UNKNOWN,
            "netconf: 1 consecutive failure (timeout); snmp: 3 consecutive failures (timeout); "
            "fewer than 3 failures and never up",
        ),
        (
            ((SNMP, False), (NETCONF, False)) * 3,
            DeviceVerdict.DOWN,
            "netconf: 3 consecutive failures (timeout); snmp: 3 consecutive failures (timeout)",
        ),
    ],
    ids=[
        "never-probed",
        "failing-never-up",
        "three-failures",
        "hysteresis",
        "one-failure-after-up",
        "down-after-up",
        "one-protocol-up-is-enough",
        "down-needs-every-protocol",
        "every-protocol-down",
    ],
)
def test_device_verdict(
    results: tuple[tuple[Protocol, bool], ...], verdict: DeviceVerdict, reason: str
) -> None:
    """A device is DOWN only when every probed protocol failed failures_to_down times in a row."""
    assert DeviceJudgement(verdict, reason) == device_verdict(health_from(*results), POLICY)


def test_device_verdict_reason_without_a_failure_cause() -> None:
    """A failure reported without a cause is counted without parentheses."""
    health = DeviceHealth()
    for t in range(3):
        health = observe(health, Observation("r1", SNMP, False, at=float(t)))
    assert DeviceJudgement(DeviceVerdict.DOWN, "snmp: 3 consecutive failures") == device_verdict(
        health, POLICY
    )


DOWN = health_from(*((SNMP, False),) * 3)
UP = health_from((SNMP, True))


def test_judge_devices_marks_devices_behind_a_down_parent_unreachable() -> None:
    """A DOWN device with a DOWN device up its parent chain is UNREACHABLE and says which."""
    inventory = inventory_of(
        Device("core-1", "o", "core", "10.0.0.1"),
        Device("agg-1", "o", "agg", "10.0.0.2", parent="core-1"),
        Device("acc-1", "o", "access", "10.0.0.3", parent="agg-1"),
        Device("acc-2", "o", "access", "10.0.0.4", parent="agg-2"),  # parent not in inventory
        Device("agg-3", "o", "agg", "10.0.0.5"),
        Device("acc-3", "o", "access", "10.0.0.6", parent="agg-3"),
        Device("agg-4", "o", "agg", "10.0.0.7", parent="core-1"),  # never probed
        Device("acc-4", "o", "access", "10.0.0.8", parent="agg-4"),
    )
    healths = {
        "core-1": DOWN,
        "agg-1": DOWN,
        "acc-1": DOWN,
        "acc-2": DOWN,
        "agg-3": UP,
        "acc-3": DOWN,
        "acc-4": DOWN,
    }
    actual = {d: (j.verdict, j.reason) for d, j in judge_devices(inventory, healths, POLICY).items()}
    failing = "snmp: 3 consecutive failures (timeout)"
    expected = {
        "core-1": (DeviceVerdict.DOWN, failing),
        "agg-1": (DeviceVerdict.UNREACHABLE, f"parent core-1 is DOWN; {failing}"),
        "acc-1": (DeviceVerdict.UNREACHABLE, f"parent agg-1 is DOWN; {failing}"),
        "acc-2": (DeviceVerdict.DOWN, failing),
        "agg-3": (DeviceVerdict.UP, "snmp: ok"),
        "acc-3": (DeviceVerdict.DOWN, failing),
        "agg-4": (DeviceVerdict.UNKNOWN, "never probed"),
        "acc-4": (DeviceVerdict.UNREACHABLE, f"core-1 is DOWN (via parent agg-4); {failing}"),
    }
    assert expected == actual


def test_judge_devices_terminates_on_a_parent_cycle() -> None:
    """A parent cycle (rejected by validation) neither loops nor blames a device on itself."""
    inventory = inventory_of(
        Device("x", "o", "r", "10.0.0.1", parent="z"),
        Device("y", "o", "r", "10.0.0.2", parent="x"),
        Device("z", "o", "r", "10.0.0.3", parent="y"),
    )
    judged = judge_devices(inventory, {"x": DOWN, "y": UP}, POLICY)
    assert {"x": DeviceVerdict.DOWN, "y": DeviceVerdict.UP, "z": DeviceVerdict.UNKNOWN} == {
        d: j.verdict for d, j in judged.items()
    }


def office_inventory(n: int, critical: bool = True, extra_non_critical: int = 0) -> Inventory:
    devices = [Device(f"d{i}", "o", "r", f"10.0.0.{i}", critical=critical) for i in range(n)]
    devices += [Device(f"n{i}", "o", "r", f"10.0.1.{i}") for i in range(extra_non_critical)]
    devices.append(Device("other", "elsewhere", "r", "10.9.9.9", critical=True))
    return inventory_of(*devices)


def judgements(**counts: int) -> dict[str, DeviceJudgement]:
    """d0.. get the verdicts in order: e.g. down=2, up=3 → d0,d1 DOWN, d2..d4 UP."""
    result: dict[str, DeviceJudgement] = {}
    names = iter(f"d{i}" for i in range(100))
    for verdict, count in counts.items():
        for _ in range(count):
            result[next(names)] = DeviceJudgement(DeviceVerdict[verdict.upper()], "")
    return result


@pytest.mark.parametrize(
    ("inventory", "device_judgements", "expected"),
    [
        (
            office_inventory(8),
            judgements(down=6, up=2),
            (OfficeVerdict.DOWN, "6/8 critical devices down", 6, 0, 8, 0.25),
        ),
        (
            office_inventory(8),
            judgements(down=4, up=4),
            (OfficeVerdict.DOWN, "4/8 critical devices down", 4, 0, 8, 0.5),
        ),
        (
            office_inventory(8),
            judgements(unreachable=5, up=3),
            (OfficeVerdict.UNREACHABLE, "5/8 critical devices unreachable (parent down)", 0, 5, 8, 0.375),
        ),
        (
            office_inventory(8),
            judgements(down=3, unreachable=2, up=3),
            (
                OfficeVerdict.UNREACHABLE,
                "5/8 critical devices down or unreachable (2 behind a down parent)",
                3,
                2,
                8,
                0.375,
            ),
        ),
        (
            office_inventory(8),
            {},
            (OfficeVerdict.UNKNOWN, "no verdict yet for any of 8 critical devices", 0, 0, 8, 0.0),
        ),
        (
            office_inventory(8),
            judgements(down=1, up=7),
            (OfficeVerdict.DEGRADED, "1/8 devices down or unreachable: d0", 1, 0, 8, 0.875),
        ),
        (
            office_inventory(10),
            judgements(down=4, unreachable=0, up=6),
            (
                OfficeVerdict.DEGRADED,
                "4/10 devices down or unreachable: d0, d1, d2 and 1 more",
                4,
                0,
                10,
                0.6,
            ),
        ),
        (
            office_inventory(2, extra_non_critical=1),
            {**judgements(up=2), "n0": DeviceJudgement(DeviceVerdict.DOWN, "")},
            (OfficeVerdict.DEGRADED, "1/3 devices down or unreachable: n0", 0, 0, 2, 1.0),
        ),
        (
            office_inventory(8),
            judgements(up=6, unknown=2),
            (OfficeVerdict.HEALTHY, "6/8 critical devices up", 0, 0, 8, 0.75),
        ),
        (
            office_inventory(4, critical=False),
            judgements(up=4),
            (OfficeVerdict.HEALTHY, "4/4 devices up", 0, 0, 4, 1.0),
        ),
    ],
    ids=[
        "down",
        "down-at-exact-ratio",
        "unreachable-is-not-down",
        "down-plus-unreachable",
        "no-verdicts-yet",
        "degraded",
        "degraded-lists-three",
        "non-critical-down-degrades",
        "healthy-with-unknowns",
        "no-critical-counts-all",
    ],
)
def test_judge_office(
    inventory: Inventory,
    device_judgements: dict[str, DeviceJudgement],
    expected: tuple[OfficeVerdict, str, int, int, int, float],
) -> None:
    """The office verdict follows the share of critical devices DOWN (UNREACHABLE is not DOWN)."""
    j = judge_office("o", inventory, device_judgements, POLICY)
    assert expected == (j.verdict, j.detail, j.down, j.unreachable, j.considered, j.ratio)


def test_judge_office_without_devices_is_unknown() -> None:
    """An office with no devices in the inventory is UNKNOWN, not HEALTHY."""
    j = judge_office("empty", office_inventory(2), {}, POLICY)
    assert (OfficeVerdict.UNKNOWN, "no devices in inventory", 0) == (j.verdict, j.detail, j.considered)


def test_judge_office_compares_ratios_exactly() -> None:
    """3 of 10 down reaches a 0.3 ratio even though 0.3 * 10 > 3 in floating point."""
    j = judge_office("o", office_inventory(10), judgements(down=3, up=7), Policy(office_down_ratio=0.3))
    assert OfficeVerdict.DOWN == j.verdict


def test_a_dark_office_is_down_even_behind_its_own_core() -> None:
    """The building goes dark: its core is DOWN, the rest unreachable behind it — the office is DOWN."""
    inventory = inventory_of(
        Device("core-1", "o", "core", "10.0.0.1"),
        Device("acc-1", "o", "access", "10.0.0.2", critical=True, parent="core-1"),
        Device("acc-2", "o", "access", "10.0.0.3", critical=True, parent="core-1"),
    )
    devices = judge_devices(inventory, {"core-1": DOWN, "acc-1": DOWN, "acc-2": DOWN}, POLICY)
    j = judge_office("o", inventory, devices, POLICY)
    assert (OfficeVerdict.DOWN, "2/2 critical devices down (2 behind a down device of the office)", 2, 0) == (
        j.verdict,
        j.detail,
        j.down,
        j.unreachable,
    )


def test_an_office_behind_a_dead_uplink_in_another_office_is_unreachable() -> None:
    """The uplink router of another office is DOWN: the office is UNREACHABLE, never DOWN."""
    inventory = inventory_of(
        Device("hub-1", "hub", "core", "10.9.0.1", critical=True),
        Device("core-1", "o", "core", "10.0.0.1", critical=True, parent="hub-1"),
        Device("acc-1", "o", "access", "10.0.0.2", critical=True, parent="core-1"),
    )
    devices = judge_devices(inventory, {"hub-1": DOWN, "core-1": DOWN, "acc-1": DOWN}, POLICY)
    j = judge_office("o", inventory, devices, POLICY)
    assert (OfficeVerdict.UNREACHABLE, "2/2 critical devices unreachable (parent down)", 0, 2) == (
        j.verdict,
        j.detail,
        j.down,
        j.unreachable,
    )
    assert ("hub-1", "hub-1") == (devices["core-1"].cause, devices["acc-1"].cause)
