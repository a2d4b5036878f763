"""The Monitor against the lab network: SNMP (v3 and v2c) and NETCONF probes of simulated
offices on loopback, faults injected through the lab, traps sent by the lab's devices.

Each office has 8 devices (2 core routers, 2 aggregation routers, 4 OLTs; cores and aggs are
critical). A device silenced by a dead device of its own office counts against that office (the
building went dark); one silenced by a dead uplink in another office makes it UNREACHABLE.
"""

from __future__ import annotations

import asyncio
import functools
import re
import socket
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import replace
from pathlib import Path
from types import MappingProxyType
from typing import Any

import pytest

from baton.adapters.traps import TrapReceiver, TrapReceiverConfig, VendorTrap
from baton.core.events import OfficeObserved
from baton.core.model import Inventory, OfficeVerdict, Policy, SecretRef
from baton.inventory import load_inventory
from baton.lab.inventory_writer import write_inventory
from baton.lab.network import Lab, LabConfig, LabThread, load_or_create_secrets, select_offices
from baton.lab.traps import TRAP_POWER_FAIL, TRAP_POWER_RESTORED
from baton.metrics import Metrics
from baton.monitor import Monitor, descendants
from baton.secrets import resolve
from tests.peers.util import free_port

OFFICES = ("seoul-geumcheon", "busan-jung", "daegu-dongdaegu")
FAILURES_TO_DOWN = 3
WAIT_S = 60.0  # a bound so a broken monitor fails the test instead of hanging it
VENDOR_TRAPS = MappingProxyType(
    {
        ".".join(map(str, TRAP_POWER_FAIL)): VendorTrap("powerFail", office_level=True),
        ".".join(map(str, TRAP_POWER_RESTORED)): VendorTrap("powerRestored", office_level=True),
    }
)
DARK_BUSAN = (
    "4/4 critical devices down (2 behind a down device of the office): busan-jung-core1, busan-jung-core2, "
    "busan-jung-agg1 (unreachable), busan-jung-agg2 (unreachable)"
)


class Recorder:
    """Every OfficeObserved with the monitor's round and trap-pass counts when it was emitted."""

    def __init__(self) -> None:
        self.events: list[tuple[int, int, OfficeObserved]] = []
        self.monitor: Monitor | None = None
        self._changed = asyncio.Event()

    def __call__(self, event: OfficeObserved) -> None:
        assert self.monitor is not None
        self.events.append((self.monitor.rounds, self.monitor.trap_passes, event))
        self._changed.set()

    def latest(self, office: str) -> OfficeVerdict | None:
        found = [e.verdict for _, _, e in self.events if e.office == office]
        return found[-1] if found else None

    async def until(self, predicate: Callable[[], bool]) -> None:
        async with asyncio.timeout(WAIT_S):
            while not predicate():
                self._changed.clear()
                await self._changed.wait()

    async def until_verdict(self, office: str, verdict: OfficeVerdict) -> tuple[int, int, OfficeObserved]:
        """Wait (bounded) until `office` is judged `verdict`; that event with its counts."""
        await self.until(lambda: self.latest(office) is verdict)
        return [x for x in self.events if x[2].office == office][-1]


class LabRig:
    """A lab of OFFICES in its own thread, its inventory as Baton loads it, and a Monitor."""

    def __init__(
        self,
        tmp_path: Path,
        *,
        poll_interval_s: float,
        traps: bool,
        rewire: Callable[[Inventory], Inventory] | None = None,
        source_address: str | None = None,
    ) -> None:
        self.rewire = rewire
        self.source_address = source_address
        self.dir = tmp_path / "lab"
        self.secrets = load_or_create_secrets(self.dir / "lab")  # the lab picks these up
        self.metrics = Metrics()
        self.receiver: TrapReceiver | None = None
        if traps:
            community = self.secrets.community
            self.receiver = TrapReceiver(
                TrapReceiverConfig(
                    host="127.0.0.1",
                    port=0,
                    communities=(SecretRef("env", "LAB_COMMUNITY"),),
                    vendor_traps=VENDOR_TRAPS,
                ),
                lambda ref: community,
                metrics=self.metrics,
            )
        self.poll_interval_s = poll_interval_s
        self.recorder = Recorder()
        self.thread: LabThread | None = None
        self.monitor: Monitor | None = None

    async def start(self) -> Monitor:
        trap_target = None
        if self.receiver is not None:
            await self.receiver.start()  # bound first, so the lab's devices can be told the port
            trap_target = ("127.0.0.1", self.receiver.port)
        self.thread = LabThread(
            LabConfig(
                dir=self.dir,
                offices=select_offices(",".join(OFFICES)),
                devices_per_office=8,
                trap_target=trap_target,
                snmp_port=free_port("127.0.0.1", kind=socket.SOCK_DGRAM),
                ssh_port=free_port("127.0.0.1"),
                control=False,
            )
        )
        lab = await asyncio.to_thread(self.thread.start)
        inventory_dir = write_inventory(lab)
        inventory = quick_probes(load_inventory(inventory_dir))
        if self.rewire is not None:
            inventory = self.rewire(inventory)
        policy = Policy(poll_interval_s=self.poll_interval_s, failures_to_down=FAILURES_TO_DOWN)
        self.monitor = Monitor(
            inventory,
            policy,
            resolve=functools.partial(resolve, base_dir=inventory_dir),
            metrics=self.metrics,
            on_observed=self.recorder,
            trap_receiver=self.receiver,
            trap_repoll_spacing_s=0.2,
            source_address=self.source_address,
        )
        self.recorder.monitor = self.monitor
        await self.monitor.start()
        async with asyncio.timeout(WAIT_S):
            await self.monitor.first_round_done.wait()
        for office in OFFICES:
            await self.recorder.until_verdict(office, OfficeVerdict.HEALTHY)
        return self.monitor

    async def lab(self, fn: Callable[[Lab], Coroutine[Any, Any, Any]]) -> Any:
        """Run a lab action on the lab's loop without blocking the monitor's."""
        assert self.thread is not None
        return await asyncio.to_thread(self.thread.call, fn)

    async def stop(self) -> None:
        try:
            if self.monitor is not None:
                await self.monitor.stop()
            elif self.receiver is not None:
                await self.receiver.stop()
        finally:
            if self.thread is not None:
                await asyncio.to_thread(self.thread.stop)


def quick_probes(inventory: Inventory) -> Inventory:
    """Loopback answers in milliseconds: short timeouts so a failed probe fits a short interval."""
    devices = {
        device_id: replace(
            d,
            snmp=None if d.snmp is None else replace(d.snmp, timeout_s=0.4, retries=1),
            netconf=replace(d.netconf, timeout_s=2.0),
        )
        for device_id, d in inventory.devices.items()
    }
    return Inventory(inventory.offices, MappingProxyType(devices))


@pytest.fixture
async def make_rig(tmp_path: Path) -> AsyncIterator[Callable[..., Coroutine[Any, Any, LabRig]]]:
    rigs: list[LabRig] = []

    async def make(
        *,
        poll_interval_s: float = 1.0,
        traps: bool = False,
        rewire: Callable[[Inventory], Inventory] | None = None,
        source_address: str | None = None,
    ) -> LabRig:
        rig = LabRig(
            tmp_path,
            poll_interval_s=poll_interval_s,
            traps=traps,
            rewire=rewire,
            source_address=source_address,
        )
        rigs.append(rig)
        await rig.start()
        return rig

    yield make
    for rig in rigs:
        await rig.stop()


async def test_power_off_makes_that_office_down_within_failures_to_down_rounds(
    make_rig: Callable[..., Coroutine[Any, Any, LabRig]],
) -> None:
    """A dark office is DOWN after failures_to_down rounds (+ phase slack), naming its devices;
    the other offices stay HEALTHY every round."""
    rig = await make_rig()
    monitor = rig.monitor
    assert monitor is not None
    before = monitor.rounds
    await rig.lab(lambda lab: lab.power_off("busan-jung"))
    after = monitor.rounds
    down_round, _, event = await rig.recorder.until_verdict("busan-jung", OfficeVerdict.DOWN)

    assert before + FAILURES_TO_DOWN <= down_round <= after + FAILURES_TO_DOWN + 2
    # DOWN as soon as two critical devices are; by the latest round DOWN may come at, every
    # device has failed failures_to_down polls.
    # the first DOWN comes as soon as the devices failing so far reach the ratio
    assert re.match(r"[234]/4 critical devices down(:| \()", event.detail), event.detail
    # Then every device of the office fails its probes too (NETCONF probes keep their own pace,
    # so wait for it, bounded, rather than count rounds).
    await rig.recorder.until(lambda: monitor.office_judgements()["busan-jung"].detail == DARK_BUSAN)
    others = {e.verdict for r, _, e in rig.recorder.events if r > before and e.office != "busan-jung"}
    assert {OfficeVerdict.HEALTHY} == others
    views = {v["id"]: v for v in monitor.device_views("busan-jung")}
    assert ("DOWN", "UNREACHABLE") == (
        views["busan-jung-core1"]["verdict"],
        views["busan-jung-agg1"]["verdict"],
    )
    assert {"netconf", "snmp"} == set(views["busan-jung-core1"]["probes"])
    rendered = rig.metrics.render().decode()
    assert 'baton_office_verdict{office="busan-jung",verdict="DOWN"} 1.0' in rendered
    assert 'baton_office_health_ratio{office="busan-jung"} 0.0' in rendered


async def test_probes_leave_from_the_source_address_so_a_path_cut_from_it_darkens_the_office(
    make_rig: Callable[..., Coroutine[Any, Any, LabRig]],
) -> None:
    """With a source address (a vantage's own), every probe (SNMPv3, v2c, NETCONF) leaves from
    it: offices whose path from that address is cut are DOWN; an office cut from another
    address only stays HEALTHY every round."""
    rig = await make_rig(source_address="127.0.0.14")
    monitor = rig.monitor
    assert monitor is not None
    before = monitor.rounds
    await rig.lab(lambda lab: lab.cut("daegu-dongdaegu", "127.0.0.15"))  # someone else's path
    await rig.lab(lambda lab: lab.cut("seoul-geumcheon", "127.0.0.14"))  # SNMPv3 + NETCONF
    await rig.lab(lambda lab: lab.cut("busan-jung", "127.0.0.14"))  # v2c + NETCONF
    await rig.recorder.until_verdict("seoul-geumcheon", OfficeVerdict.DOWN)
    await rig.recorder.until_verdict("busan-jung", OfficeVerdict.DOWN)
    others = {e.verdict for r, _, e in rig.recorder.events if r > before and e.office == "daegu-dongdaegu"}
    assert {OfficeVerdict.HEALTHY} == others

    def netconf_failed() -> bool:
        views = {v["id"]: v for v in monitor.device_views("busan-jung")}
        return views["busan-jung-core1"]["probes"]["netconf"]["ok"] is False

    await rig.recorder.until(netconf_failed)  # the NETCONF probe's session came from there too

    await rig.lab(lambda lab: lab.uncut("busan-jung", "127.0.0.14"))
    await rig.recorder.until_verdict("busan-jung", OfficeVerdict.HEALTHY)


HUB = "busan-jung-core2"  # stands in for the regional router geumcheon's uplinks end on


def uplinked_through_hub(inventory: Inventory) -> Inventory:
    """Geumcheon's core routers reach the network through a router of another office."""
    devices = dict(inventory.devices)
    for device_id in ("seoul-geumcheon-core1", "seoul-geumcheon-core2"):
        devices[device_id] = replace(devices[device_id], parent=HUB)
    return Inventory(inventory.offices, MappingProxyType(devices))


async def test_a_dead_uplink_in_another_office_makes_the_office_unreachable_not_down(
    make_rig: Callable[..., Coroutine[Any, Any, LabRig]],
) -> None:
    """The uplink router (another office's) dies and geumcheon goes silent behind it: geumcheon is
    UNREACHABLE — Baton cannot see it, which is no closure — never DOWN."""
    rig = await make_rig(rewire=uplinked_through_hub)
    monitor = rig.monitor
    assert monitor is not None

    # The hub is judged DOWN first, then geumcheon goes silent behind it. (When both fail in the
    # same instant, geumcheon's devices may cross failures_to_down a round before the hub and
    # read DOWN for that round; hold-down absorbs that in the daemon.)
    await rig.lab(lambda lab: lab.device_down(HUB))
    await rig.recorder.until(
        lambda: {v["id"]: v["verdict"] for v in monitor.device_views("busan-jung")}[HUB] == "DOWN"
    )
    before = monitor.rounds
    await rig.lab(lambda lab: lab.cut("seoul-geumcheon"))  # every path to geumcheon went through it
    _, _, event = await rig.recorder.until_verdict("seoul-geumcheon", OfficeVerdict.UNREACHABLE)

    assert re.match(r"[234]/4 critical devices unreachable \(parent down\)", event.detail), event.detail
    verdicts = {e.verdict for r, _, e in rig.recorder.events if r > before and e.office == "seoul-geumcheon"}
    assert OfficeVerdict.DOWN not in verdicts
    views = {v["id"]: v for v in monitor.device_views("seoul-geumcheon")}
    assert {"UNREACHABLE"} == {v["verdict"] for v in views.values()}
    assert views["seoul-geumcheon-core1"]["reason"].startswith(f"parent {HUB} is DOWN")


async def test_a_dead_core_takes_what_hangs_off_it_down_with_its_office(
    make_rig: Callable[..., Coroutine[Any, Any, LabRig]],
) -> None:
    """One core of the office dies and everything behind it goes silent: those devices count
    against the office (1 DOWN + 1 behind it of 4 critical: DOWN at the 0.5 ratio)."""
    rig = await make_rig()
    monitor = rig.monitor
    assert monitor is not None
    core = "seoul-geumcheon-core1"
    behind = descendants(core, monitor.inventory)

    async def core_dies(lab: Lab) -> None:
        await lab.device_down(core)
        for device_id in behind:  # their path goes through the dead core
            lab.device(device_id).faults.cut = True

    await rig.lab(core_dies)
    _, _, event = await rig.recorder.until_verdict("seoul-geumcheon", OfficeVerdict.DOWN)
    expected = (
        "2/4 critical devices down (1 behind a down device of the office): "
        "seoul-geumcheon-core1, seoul-geumcheon-agg1 (unreachable)"
    )
    assert expected == event.detail
    views = {v["id"]: v for v in monitor.device_views("seoul-geumcheon")}
    assert {"seoul-geumcheon-agg1", "seoul-geumcheon-olt01", "seoul-geumcheon-olt03"} == {
        i for i, v in views.items() if v["verdict"] == "UNREACHABLE"
    }
    assert views["seoul-geumcheon-agg1"]["reason"].startswith("parent seoul-geumcheon-core1 is DOWN")


async def test_power_alarm_shortens_detection_but_never_decides_alone(
    make_rig: Callable[..., Coroutine[Any, Any, LabRig]],
) -> None:
    """A power alarm from an office whose devices keep answering closes nothing; one from an
    office that really went dark makes it DOWN through trap re-polls, before polling alone could
    (which needs failures_to_down polls, so at least failures_to_down - 1 round boundaries)."""
    rig = await make_rig(poll_interval_s=3.0, traps=True)
    monitor = rig.monitor
    assert monitor is not None
    assert rig.thread is not None

    # On battery, still running: the alarm goes out, the devices keep answering.
    on_battery = asyncio.run_coroutine_threadsafe(
        rig.thread.lab.power_off("daegu-dongdaegu", grace_s=300), rig.thread._loop
    )
    try:
        await rig.recorder.until(lambda: monitor.trap_passes >= FAILURES_TO_DOWN)
        daegu = {e.verdict for _, p, e in rig.recorder.events if p > 0 and e.office == "daegu-dongdaegu"}
        assert {OfficeVerdict.HEALTHY} == daegu
        assert OfficeVerdict.HEALTHY == monitor.office_judgements()["daegu-dongdaegu"].verdict
    finally:
        on_battery.cancel()

    # Mains and battery gone: the alarm is followed by silence.
    passes = monitor.trap_passes
    before = monitor.rounds
    await rig.lab(lambda lab: lab.power_off("busan-jung"))
    down_round, down_passes, event = await rig.recorder.until_verdict("busan-jung", OfficeVerdict.DOWN)

    busan = [(r, e.verdict) for r, _, e in rig.recorder.events if e.office == "busan-jung"]
    # A round emits once per office: a second event within the same round came from a re-poll.
    assert (down_round, OfficeVerdict.HEALTHY) == busan[busan.index((down_round, OfficeVerdict.DOWN)) - 1]
    assert passes < down_passes <= passes + FAILURES_TO_DOWN
    assert down_round - before <= 1 < FAILURES_TO_DOWN - 1  # no need to wait for poll rounds
    # the first DOWN comes as soon as the devices failing so far reach the ratio
    assert re.match(r"[234]/4 critical devices down(:| \()", event.detail), event.detail
    await rig.recorder.until(lambda: monitor.office_judgements()["busan-jung"].detail == DARK_BUSAN)
    assert b'baton_traps_received_total{kind="powerFail"}' in rig.metrics.render()
