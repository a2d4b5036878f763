"""The monitor's logic without I/O: round cadence, trap fan-out, office details, and a Monitor
driven on virtual time with NETCONF probe stand-ins (given as the `netconf_probe` parameter)."""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import AsyncIterator
from dataclasses import replace
from types import MappingProxyType

import pytest
from hypothesis import given
from hypothesis import strategies as st

from baton.adapters.traps import TrapEvent
from baton.config import TrapSettings
from baton.core.events import OfficeObserved
from baton.core.health import DeviceJudgement, Observation, OfficeJudgement
from baton.core.model import (
    Device,
    DeviceVerdict,
    Inventory,
    NetconfSettings,
    Office,
    OfficeVerdict,
    Policy,
    Protocol,
)
from baton.metrics import Metrics
from baton.monitor import (
    HealthProbe,
    Monitor,
    descendants,
    describe_office,
    first_round_at,
    netconf_failure_class,
    next_round_at,
    repoll_plan,
    trap_receiver_config,
)

POLICY = Policy(poll_interval_s=10.0, failures_to_down=3, office_down_ratio=0.5)


def device(device_id: str, office: str, *, parent: str | None = None, critical: bool = True) -> Device:
    return Device(
        id=device_id,
        office=office,
        role="router",
        address=f"127.0.{len(device_id)}.{sum(map(ord, device_id)) % 250 + 1}",
        critical=critical,
        parent=parent,
        netconf=NetconfSettings(enabled=True),
    )


def inventory(*devices: Device) -> Inventory:
    offices = {d.office: Office(d.office, d.office, "r") for d in devices}
    return Inventory(MappingProxyType(offices), MappingProxyType({d.id: d for d in devices}))


# a: core1 ← agg1 ← olt1 (olt not critical), core2; b: core1
INV = inventory(
    device("a-core1", "a"),
    device("a-core2", "a"),
    device("a-agg1", "a", parent="a-core1"),
    device("a-olt1", "a", parent="a-agg1", critical=False),
    device("b-core1", "b"),
)


def trap(device_id: str | None, *, kind: str = "linkDown", office_level: bool = False) -> TrapEvent:
    return TrapEvent(
        kind=kind,
        source_address="127.0.0.1",
        device_id=device_id,
        office_id=None,
        oid="1.3.6.1.6.3.1.1.5.3",
        varbinds=(),
        at=0.0,
        office_level=office_level,
    )


# --- round cadence ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("previous_due", "now", "expected"),
    [
        (100.0, 100.0, (110.0, 0)),  # on time
        (100.0, 109.9, (110.0, 0)),  # slow round, still before the next one
        (100.0, 110.0, (120.0, 1)),  # the next round's time passed while this one ran: skipped
        (100.0, 135.0, (140.0, 3)),  # stalled for three intervals: three skipped, grid kept
    ],
)
def test_next_round_stays_on_the_grid_and_skips_missed_rounds(
    previous_due: float, now: float, expected: tuple[float, int]
) -> None:
    """Rounds keep a fixed cadence: missed rounds are skipped, not fired back to back."""
    assert expected == next_round_at(previous_due, now, 10.0)


@given(
    st.floats(min_value=0, max_value=1e6),
    st.floats(min_value=0, max_value=1e4),
    st.floats(min_value=0.1, max_value=100),
)
def test_next_round_is_in_the_future_and_on_the_grid(
    previous_due: float, late: float, interval: float
) -> None:
    """Whatever the lateness, the next round is after now and a whole number of intervals on."""
    due, missed = next_round_at(previous_due, previous_due + late, interval)
    assert due > previous_due + late - 1e-6 * max(1.0, previous_due)
    assert missed + 1 == round((due - previous_due) / interval)


def test_first_round_is_the_next_grid_point() -> None:
    """The first round falls on the interval grid the scheduler's device phases hang off."""
    assert (110.0, 120.0) == (first_round_at(103.0, 10.0), first_round_at(110.0, 10.0))


# --- trap fan-out ------------------------------------------------------------------------------


def test_descendants_are_every_device_behind_a_device() -> None:
    """The devices whose parent chain goes through a device, nearest first."""
    assert ("a-agg1", "a-olt1") == descendants("a-core1", INV)


def test_device_trap_repolls_the_device_and_what_hangs_off_it_once() -> None:
    """linkDown on a core re-polls it and the devices behind it, one pass."""
    plan = repoll_plan(trap("a-core1"), INV, POLICY)
    assert plan is not None
    assert (("a-core1", "a-agg1", "a-olt1"), ("a",), 1) == (plan.devices, plan.offices, plan.passes)


def test_office_alarm_repolls_the_whole_office_failures_to_down_times() -> None:
    """A power alarm re-polls every device of the office as often as DOWN needs failures."""
    plan = repoll_plan(trap("a-agg1", kind="powerFail", office_level=True), INV, POLICY)
    assert plan is not None
    assert (("a-agg1", "a-core1", "a-core2", "a-olt1"), 3, "office:a") == (
        plan.devices,
        plan.passes,
        plan.key,
    )


@pytest.mark.parametrize("device_id", [None, "elsewhere-1"])
def test_trap_naming_no_inventory_device_repolls_nothing(device_id: str | None) -> None:
    """Traps about devices outside the inventory are ignored."""
    assert repoll_plan(trap(device_id), INV, POLICY) is None


# --- office details ----------------------------------------------------------------------------


def test_down_office_detail_names_down_and_unreachable_devices() -> None:
    """A DOWN/UNREACHABLE office's detail names the considered devices behind the verdict."""
    judged = {
        "a-core1": DeviceJudgement(DeviceVerdict.DOWN, "snmp: 3 consecutive failures"),
        "a-core2": DeviceJudgement(DeviceVerdict.UP, "snmp: ok"),
        "a-agg1": DeviceJudgement(DeviceVerdict.UNREACHABLE, "parent a-core1 is DOWN"),
        "a-olt1": DeviceJudgement(DeviceVerdict.UNREACHABLE, "a-core1 is DOWN"),
    }
    office = OfficeJudgement(
        OfficeVerdict.UNREACHABLE, "2/3 critical devices down or unreachable", 1, 1, 3, 0.3
    )
    expected = "2/3 critical devices down or unreachable: a-core1, a-agg1 (unreachable)"
    assert expected == describe_office(office, INV.devices_of("a"), judged)


def test_long_lists_are_cut_and_healthy_details_left_alone() -> None:
    """More than four named devices end in "and N more"; other verdicts keep the core's detail."""
    devices = [device(f"x-{i}", "x") for i in range(6)]
    judged = {d.id: DeviceJudgement(DeviceVerdict.DOWN, "") for d in devices}
    down = OfficeJudgement(OfficeVerdict.DOWN, "6/6 critical devices down", 6, 0, 6, 0.0)
    healthy = OfficeJudgement(OfficeVerdict.HEALTHY, "6/6 critical devices up", 0, 0, 6, 1.0)
    assert (
        "6/6 critical devices down: x-0, x-1, x-2, x-3 and 2 more",
        "6/6 critical devices up",
    ) == (describe_office(down, devices, judged), describe_office(healthy, devices, judged))


@pytest.mark.parametrize(
    ("reason", "expected"),
    [
        ("no NETCONF session with 127.0.0.1:830 within 5 s", "timeout"),
        ("authentication failed for user baton at 127.0.0.1:830", "auth"),
        ("cannot resolve credentials: file:x does not exist", "credential"),
        ("TCP connect to 127.0.0.1:830: connection refused", "error"),
    ],
)
def test_netconf_failure_reasons_map_to_bounded_classes(reason: str, expected: str) -> None:
    """NETCONF failure reasons become one of the metric's bounded reason classes."""
    assert expected == netconf_failure_class(reason)


def test_disabled_traps_give_no_receiver_config() -> None:
    """traps.enabled: false means no trap receiver at all."""
    assert trap_receiver_config(TrapSettings(enabled=False)) is None


# --- the Monitor on virtual time ------------------------------------------------------------------


class VirtualTime:
    """A clock and a sleep that only move when the test advances them."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()

    def clock(self) -> float:
        return self.now

    async def sleep(self, delay: float) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self.now + max(0.0, delay), next(self._seq), future))
        await future

    async def advance(self, seconds: float) -> None:
        end = self.now + seconds
        await settle()
        while self._sleepers and self._sleepers[0][0] <= end:
            when, _, future = heapq.heappop(self._sleepers)
            self.now = max(self.now, when)
            if not future.done():
                future.set_result(None)
            await settle()
        self.now = end
        await settle()


async def settle() -> None:
    for _ in range(30):
        await asyncio.sleep(0)


class ScriptedProbe:
    """Answers while its device is in `alive` (a stand-in for a NETCONF session)."""

    def __init__(self, dev: Device, alive: set[str], time: VirtualTime, calls: list[str]) -> None:
        self.device, self.alive, self.time, self.calls = dev, alive, time, calls

    async def probe(self) -> Observation:
        self.calls.append(self.device.id)
        ok = self.device.id in self.alive
        return Observation(self.device.id, Protocol.NETCONF, ok, self.time.now, "" if ok else "refused")

    async def close(self) -> None:
        return None


class Rig:
    def __init__(self, inv: Inventory = INV, policy: Policy = POLICY) -> None:
        self.time = VirtualTime()
        self.alive = set(inv.devices)
        self.calls: list[str] = []
        self.made: list[str] = []  # devices a probe was made for, in order
        self.events: list[tuple[int, int, OfficeObserved]] = []  # (round, trap passes, event)
        self.metrics = Metrics()

        def factory(dev: Device) -> HealthProbe:
            self.made.append(dev.id)
            return ScriptedProbe(dev, self.alive, self.time, self.calls)

        self.monitor = Monitor(
            inv,
            policy,
            resolve=lambda ref: "unused",
            metrics=self.metrics,
            on_observed=lambda e: self.events.append((self.monitor.rounds, self.monitor.trap_passes, e)),
            netconf_probe=factory,
            trap_repoll_spacing_s=0.5,
            clock=self.time.clock,
            sleep=self.time.sleep,
        )

    def verdicts(self, office: str) -> list[tuple[int, OfficeVerdict]]:
        return [(r, e.verdict) for r, _, e in self.events if e.office == office]


@pytest.fixture
async def rig() -> AsyncIterator[Rig]:
    made = Rig()
    await made.monitor.start()
    yield made
    await made.monitor.stop()


async def test_every_round_emits_one_verdict_per_office(rig: Rig) -> None:
    """Each poll round emits exactly one OfficeObserved per office, HEALTHY once all answered."""
    await rig.time.advance(30.0)
    assert [(1, "a"), (1, "b"), (2, "a"), (2, "b"), (3, "a"), (3, "b")] == [
        (r, e.office) for r, _, e in rig.events
    ]
    assert (OfficeVerdict.HEALTHY, OfficeVerdict.HEALTHY) == (
        rig.events[-2][2].verdict,
        rig.events[-1][2].verdict,
    )
    assert rig.monitor.first_round_done.is_set()


async def test_core_failing_counts_what_hangs_off_it_after_failures_to_down_rounds(rig: Rig) -> None:
    """A dead core and the devices behind it in the same office: the office is DOWN after 3 probes."""
    await rig.time.advance(20.0)
    rig.alive -= {"a-core1", "a-agg1", "a-olt1"}
    await rig.time.advance(40.0)
    # rounds 1-2 before the fault, 3-4 with 1 and 2 failures (still UP), 5 with the third
    expected = [OfficeVerdict.HEALTHY] * 4 + [OfficeVerdict.DOWN] * 2
    assert expected == [v for _, v in rig.verdicts("a")]
    detail = rig.monitor.office_judgements()["a"].detail
    assert (
        "2/3 critical devices down (1 behind a down device of the office): a-core1, a-agg1 (unreachable)"
        == detail
    )
    assert {OfficeVerdict.HEALTHY} == {v for _, v in rig.verdicts("b")}


async def test_office_alarm_with_dead_devices_is_down_before_the_next_round(rig: Rig) -> None:
    """A power alarm re-polls the office failures_to_down times: DOWN without waiting for rounds."""
    await rig.time.advance(20.0)
    rig.alive -= {"a-core1", "a-core2", "a-agg1", "a-olt1"}
    rig.monitor.handle_trap(trap("a-core1", kind="powerFail", office_level=True))
    await rig.time.advance(1.0)  # the burst: three passes 0.5 s apart, well inside one interval
    assert [(2, 3, OfficeVerdict.DOWN)] == [
        (r, p, e.verdict) for r, p, e in rig.events if e.office == "a" and r == 2 and p > 0
    ]
    assert (
        "3/3 critical devices down (1 behind a down device of the office): "
        "a-core1, a-core2, a-agg1 (unreachable)" == rig.monitor.office_judgements()["a"].detail
    )


async def test_office_alarm_with_answering_devices_closes_nothing(rig: Rig) -> None:
    """A power alarm alone never makes an office DOWN: its devices must really stop answering."""
    await rig.time.advance(20.0)
    before = len(rig.calls)
    rig.monitor.handle_trap(trap("a-core1", kind="powerFail", office_level=True))
    await rig.time.advance(1.0)
    assert 3 == rig.monitor.trap_passes
    assert len(rig.calls) - before >= 12  # 4 devices × 3 passes (plus any scheduled probe)
    assert [] == [e for r, p, e in rig.events if p > 0]  # nothing changed, nothing emitted early
    assert OfficeVerdict.HEALTHY == rig.monitor.office_judgements()["a"].verdict


async def test_traps_during_a_burst_coalesce_into_one_more(rig: Rig) -> None:
    """Alarms arriving while the office is being re-polled add one more burst, not one each."""
    await rig.time.advance(20.0)
    for _ in range(5):
        rig.monitor.handle_trap(trap("a-core1", kind="powerFail", office_level=True))
    await rig.time.advance(5.0)
    assert 6 == rig.monitor.trap_passes


async def test_reconfigure_keeps_health_of_remaining_devices_and_drops_the_rest(rig: Rig) -> None:
    """A reload keeps what is known of devices that stay and forgets devices that left."""
    await rig.time.advance(20.0)
    rig.alive.discard("a-core2")
    await rig.time.advance(20.0)
    smaller = inventory(*(d for d in INV.devices.values() if d.id != "b-core1"))
    await rig.monitor.reconfigure(smaller, POLICY)
    views = {v["id"]: v for v in rig.monitor.device_views("a")}
    assert (2, "UP") == (
        views["a-core2"]["probes"]["netconf"]["consecutive_failures"],
        views["a-core2"]["verdict"],
    )
    assert ["a"] == sorted(rig.monitor.office_judgements())
    assert b'office="b"' not in rig.metrics.render()
    with pytest.raises(KeyError):
        rig.monitor.device_views("b")


async def test_reconfigure_gives_changed_devices_a_fresh_probe_and_keeps_their_health(rig: Rig) -> None:
    """A device whose settings changed gets a new probe (session, target); its health stays."""
    await rig.time.advance(20.0)
    changed = replace(INV.devices["b-core1"], netconf=NetconfSettings(enabled=True, timeout_s=3.0))
    others = (d for d in INV.devices.values() if d.id != "b-core1")
    await rig.monitor.reconfigure(inventory(*others, changed), POLICY)
    before = rig.calls.count("b-core1")
    await rig.time.advance(10.0)
    view = rig.monitor.device_views("b")[0]
    assert (2, 1) == (rig.made.count("b-core1"), rig.made.count("a-core1"))
    assert (1, "UP", 0) == (
        rig.calls.count("b-core1") - before,
        view["verdict"],
        view["probes"]["netconf"]["consecutive_failures"],
    )
