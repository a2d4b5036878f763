"""The Monitor against two real net-snmp agents: two critical devices of one office."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from types import MappingProxyType

import pytest

from baton.core.events import OfficeObserved
from baton.core.model import (
    Device,
    Inventory,
    Office,
    OfficeVerdict,
    Policy,
    SecretRef,
    SnmpSettings,
)
from baton.metrics import Metrics
from baton.monitor import Monitor
from tests.peers.snmpd import COMMUNITY, SnmpdProcess

pytestmark = pytest.mark.peer("snmpd")

FAILURES_TO_DOWN = 3
WAIT_S = 30.0  # a bound so a broken monitor fails the test instead of hanging it


def agent_device(agent: SnmpdProcess, device_id: str) -> Device:
    return Device(
        id=device_id,
        office="co-a",
        role="router",
        address=agent.host,
        critical=True,
        snmp=SnmpSettings(
            version="2c",
            port=agent.port,
            timeout_s=0.2,
            retries=0,
            community=SecretRef("env", "SNMP_COMMUNITY"),
            critical_interfaces=(1,),
        ),
    )


def resolve(ref: SecretRef) -> str:
    return {"SNMP_COMMUNITY": COMMUNITY}[ref.name]


class Recorder:
    """The monitor's OfficeObserved events, each with the round count at emission."""

    def __init__(self) -> None:
        self.events: list[tuple[int, OfficeObserved]] = []
        self.monitor: Monitor | None = None
        self._changed = asyncio.Event()

    def __call__(self, event: OfficeObserved) -> None:
        assert self.monitor is not None
        self.events.append((self.monitor.rounds, event))
        self._changed.set()

    async def until(self, verdict: OfficeVerdict) -> int:
        """Wait (bounded) for an event with `verdict`; the round it came in."""
        async with asyncio.timeout(WAIT_S):
            while not (self.events and self.events[-1][1].verdict is verdict):
                self._changed.clear()
                await self._changed.wait()
        return self.events[-1][0]


@pytest.mark.parametrize(
    ("ratio", "verdict"),
    [(0.5, OfficeVerdict.DOWN), (0.75, OfficeVerdict.DEGRADED)],
)
async def test_stopped_critical_agent_moves_office_by_ratio_rule_and_back(
    snmpd_factory: Callable[..., SnmpdProcess], ratio: float, verdict: OfficeVerdict
) -> None:
    """One of two critical agents stops: after failures_to_down rounds the office follows the
    ratio rule (DOWN at 0.5, DEGRADED at 0.75); when it is back the office is HEALTHY again."""
    agents = [snmpd_factory("127.0.0.1"), snmpd_factory("127.0.0.1")]
    devices = {f"co-a-r{i}": agent_device(a, f"co-a-r{i}") for i, a in enumerate(agents, start=1)}
    inventory = Inventory(MappingProxyType({"co-a": Office("co-a", "CO A", "r")}), MappingProxyType(devices))
    policy = Policy(poll_interval_s=0.5, failures_to_down=FAILURES_TO_DOWN, office_down_ratio=ratio)
    metrics = Metrics()
    recorder = Recorder()
    monitor = Monitor(inventory, policy, resolve=resolve, metrics=metrics, on_observed=recorder)
    recorder.monitor = monitor
    await monitor.start()
    try:
        async with asyncio.timeout(WAIT_S):
            await monitor.first_round_done.wait()
        await recorder.until(OfficeVerdict.HEALTHY)

        before_stop = monitor.rounds
        await asyncio.to_thread(agents[0].stop)
        after_stop = monitor.rounds
        changed_at = await recorder.until(verdict)
        view = {v["id"]: v for v in monitor.device_views("co-a")}["co-a-r1"]

        await asyncio.to_thread(agents[0].start)
        await recorder.until(OfficeVerdict.HEALTHY)
    finally:
        await monitor.stop()

    after_fault = [e.verdict for r, e in recorder.events if r > before_stop]
    # Two failed polls leave the device UP (it answered before): the office goes straight from
    # HEALTHY to the ratio verdict, never before failures_to_down rounds.
    assert [OfficeVerdict.HEALTHY, verdict] == list(dict.fromkeys(after_fault))[:2]
    assert before_stop + FAILURES_TO_DOWN <= changed_at <= after_stop + FAILURES_TO_DOWN + 2
    assert ("DOWN", 3) == (view["verdict"], view["probes"]["snmp"]["consecutive_failures"])
    assert view["reason"].startswith("snmp: 3 consecutive failures (timeout")
    rendered = metrics.render().decode()
    assert 'baton_office_verdict{office="co-a",verdict="HEALTHY"} 1.0' in rendered
    assert 'baton_probe_failures_total{protocol="snmp",reason="timeout"}' in rendered
