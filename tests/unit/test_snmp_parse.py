"""Pure parts of the SNMP adapter: value conversion, answer assessment, reboot detection, phases."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pysnmp.proto import errind, rfc1902, rfc1905

from baton.adapters.snmp import (
    IF_OPER_STATUS_OID,
    SYS_UPTIME_OID,
    TICKS_WRAP,
    SnmpReading,
    SnmpValue,
    _Limiter,
    assess,
    classify_error_indication,
    convert,
    describe_error_status,
    is_reboot,
    phase_offset,
)
from baton.core.model import Protocol, SnmpSettings, frozen_map
from baton.metrics import Metrics


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (rfc1902.TimeTicks(12345), SnmpValue("TimeTicks", 12345)),
        (rfc1902.Integer(2), SnmpValue("Integer", 2)),
        (rfc1902.Counter64(2**40), SnmpValue("Counter64", 2**40)),
        (rfc1902.Gauge32(7), SnmpValue("Gauge32", 7)),
        (rfc1902.OctetString("psu ok"), SnmpValue("OctetString", "psu ok")),
        (rfc1902.OctetString(b"\xff\x00"), SnmpValue("OctetString", "0xff00")),
        (rfc1902.IpAddress("10.0.0.1"), SnmpValue("IpAddress", "10.0.0.1")),
        (rfc1902.ObjectName("1.3.6.1.4.1.9"), SnmpValue("ObjectIdentifier", "1.3.6.1.4.1.9")),
        (rfc1905.noSuchObject, SnmpValue("noSuchObject", None)),
        (rfc1905.noSuchInstance, SnmpValue("noSuchInstance", None)),
        (rfc1905.endOfMibView, SnmpValue("endOfMibView", None)),
        (object(), SnmpValue("object", None)),
    ],
)
def test_convert_strips_pysnmp_types(value: object, expected: SnmpValue) -> None:
    """Every SMI type becomes a plain int/str (or None when absent), never an exception."""
    assert expected == convert(value)


def settings(critical: tuple[int, ...] = (1, 3), **oids: str) -> SnmpSettings:
    return SnmpSettings(critical_interfaces=critical, oids=frozen_map(oids))


def answer(uptime: SnmpValue, **interfaces: SnmpValue) -> dict[str, SnmpValue]:
    got = {SYS_UPTIME_OID: uptime}
    got.update({f"{IF_OPER_STATUS_OID}.{k.removeprefix('if')}": v for k, v in interfaces.items()})
    return got


UP, DOWN = SnmpValue("Integer", 1), SnmpValue("Integer", 2)
TICKS = SnmpValue("TimeTicks", 500)


def test_all_critical_up_is_ok() -> None:
    """sysUpTime present and every critical interface up(1): ok, statuses reported."""
    result = assess(settings(), answer(TICKS, if1=UP, if3=UP))
    assert (True, "", None, 500, {1: 1, 3: 1}) == (
        result.ok,
        result.reason,
        result.failure,
        result.sys_uptime,
        dict(result.if_oper_status),
    )


def test_critical_interface_down_names_the_index() -> None:
    """A critical interface down(2) fails the probe with "ifIndex 3 down"."""
    result = assess(settings(), answer(TICKS, if1=UP, if3=DOWN))
    assert (False, "ifIndex 3 down", "error") == (result.ok, result.reason, result.failure)


def test_other_oper_states_are_named() -> None:
    """lowerLayerDown(7) is not up and says which state it is."""
    result = assess(settings((1,)), answer(TICKS, if1=SnmpValue("Integer", 7)))
    assert "ifIndex 1 not up (lowerLayerDown)" == result.reason


def test_wrong_types_and_absent_values_are_garbage() -> None:
    """A string sysUpTime and a noSuchInstance interface are garbage, with both reasons."""
    result = assess(
        settings((1,)), answer(SnmpValue("OctetString", "yesterday"), if1=SnmpValue("noSuchInstance", None))
    )
    expected = (
        "sysUpTime is OctetString 'yesterday', expected TimeTicks; "
        "ifIndex 1 ifOperStatus is noSuchInstance, expected INTEGER"
    )
    assert (False, "garbage", expected) == (result.ok, result.failure, result.reason)


def test_missing_extra_oid_is_a_warning_not_a_failure() -> None:
    """An extra OID the agent lacks is a warning: a typo in the inventory must not fail a device."""
    got = answer(TICKS, if1=UP) | {
        "1.3.6.1.4.1.9.1": SnmpValue("Integer", 42),
        "1.3.6.1.4.1.9.2": SnmpValue("noSuchObject", None),
    }
    result = assess(settings((1,), temp="1.3.6.1.4.1.9.1", psu=".1.3.6.1.4.1.9.2"), got)
    assert (True, {"temp": 42}, ("psu (.1.3.6.1.4.1.9.2) is noSuchObject",)) == (
        result.ok,
        dict(result.extra),
        result.warnings,
    )


def test_walked_column_is_informational() -> None:
    """With no critical interfaces, a walked down interface is reported but the probe is ok."""
    result = assess(settings(()), answer(TICKS), walked={1: UP, 2: DOWN})
    assert (True, {1: 1, 2: 2}) == (result.ok, dict(result.if_oper_status))


@pytest.mark.parametrize(
    ("previous", "previous_at", "ticks", "at", "expected"),
    [
        (None, None, 100, 10.0, False),  # first poll
        (1000, 0.0, 2000, 10.0, False),  # grew
        (100_000, 0.0, 300, 10.0, True),  # went back: restarted
        (TICKS_WRAP - 500, 0.0, 500, 10.0, False),  # 32-bit wrap after 10 s
        (TICKS_WRAP - 500, 0.0, 500_000, 10.0, True),  # near the wrap, but far from where it would land
    ],
)
def test_is_reboot(
    previous: int | None, previous_at: float | None, ticks: int, at: float, expected: bool
) -> None:
    """sysUpTime lower than last time is a reboot, unless the 32-bit counter just wrapped."""
    assert expected == is_reboot(previous, previous_at, ticks, at)


@given(st.text(min_size=1, max_size=40), st.floats(min_value=0.1, max_value=3600))
def test_phase_offset_is_inside_the_interval_and_stable(device_id: str, interval_s: float) -> None:
    """A device's phase lies in [0, interval) and is the same every time it is computed."""
    phase = phase_offset(device_id, interval_s)
    assert 0 <= phase < interval_s
    assert phase == phase_offset(device_id, interval_s)


def test_phase_offsets_spread_many_devices_evenly() -> None:
    """10,000 devices over a 10 s interval: every 1 s slice holds 10 % ± 1.5 % of them."""
    slices = [0] * 10
    for i in range(10_000):
        slices[int(phase_offset(f"co-{i // 20}-dev{i % 20}", 10.0))] += 1
    assert all(850 <= n <= 1150 for n in slices), slices


def test_error_classification() -> None:
    """pysnmp error indications become bounded classes with readable reasons."""
    assert ("auth", "wrong digest (v3 auth failure)") == classify_error_indication(errind.wrongDigest)
    assert ("auth", "unknown v3 user") == classify_error_indication(errind.unknownUserName)
    assert "garbage" == classify_error_indication(errind.parseError)[0]
    assert ("noSuchName", "authorizationError", "errorStatus 99") == (
        describe_error_status(2),
        describe_error_status(16),
        describe_error_status(99),
    )


def test_reading_becomes_an_snmp_observation() -> None:
    """A reading converts to the core Observation with its verdict, time, reason and latency."""
    reading = SnmpReading("dev1", False, 12.5, "ifIndex 3 down", "error", 0.004)
    obs = reading.to_observation()
    assert ("dev1", Protocol.SNMP, False, 12.5, "ifIndex 3 down", 0.004) == (
        obs.device,
        obs.protocol,
        obs.ok,
        obs.at,
        obs.reason,
        obs.latency_s,
    )


def test_metrics_render_probe_and_verdict_series() -> None:
    """Probe outcomes and verdicts appear with bounded labels; a changed verdict replaces its series."""
    from baton.core.model import DeviceVerdict, OfficeVerdict

    metrics = Metrics()
    metrics.observe_probe("snmp", 0.01, None)
    metrics.observe_probe("snmp", 2.0, "timeout")
    metrics.observe_probe("snmp", 0.01, "something-new")
    metrics.set_device_verdict("co-a", "r1", DeviceVerdict.UP)
    metrics.set_device_verdict("co-a", "r1", DeviceVerdict.DOWN)
    metrics.set_office_verdict("co-a", OfficeVerdict.DEGRADED, 0.5)
    text = metrics.render().decode()
    assert 'baton_probe_failures_total{protocol="snmp",reason="timeout"} 1.0' in text
    assert 'baton_probe_failures_total{protocol="snmp",reason="error"} 1.0' in text
    assert 'baton_probe_duration_seconds_count{protocol="snmp",result="fail"} 2.0' in text
    assert 'baton_device_verdict{device="r1",office="co-a",verdict="DOWN"} 1.0' in text
    assert 'verdict="UP"' not in text
    assert 'baton_office_health_ratio{office="co-a"} 0.5' in text


async def test_limiter_is_fifo_bounded_and_survives_cancellation() -> None:
    """The poller's concurrency limit: at most N holders, waiters served in order, and a waiter
    cancelled while queued (or just after being handed a slot) does not leak the slot."""
    limiter = _Limiter(2)
    order: list[int] = []
    holding = 0
    most = 0
    gate = asyncio.Event()

    async def worker(i: int) -> None:
        nonlocal holding, most
        await limiter.acquire()
        try:
            holding += 1
            most = max(most, holding)
            order.append(i)
            await gate.wait()
        finally:
            holding -= 1
            limiter.release()

    tasks = [asyncio.ensure_future(worker(i)) for i in range(6)]
    for _ in range(5):
        await asyncio.sleep(0)
    tasks[3].cancel()  # queued: never gets a slot
    gate.set()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert ([0, 1, 2, 4, 5], 2) == (order, most)
    assert isinstance(results[3], asyncio.CancelledError)

    # handed a slot, then cancelled before it ran: the slot goes back
    await limiter.acquire()
    await limiter.acquire()
    late = asyncio.ensure_future(limiter.acquire())
    await asyncio.sleep(0)
    limiter.release()  # hands the slot to `late`...
    late.cancel()  # ...which is cancelled before resuming
    with pytest.raises(asyncio.CancelledError):
        await late
    limiter.release()
    await asyncio.wait_for(limiter.acquire(), 5.0)
    await asyncio.wait_for(limiter.acquire(), 5.0)
