"""TrapQueue: the bounded, coalescing queue between the trap receiver and the monitor."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from baton.adapters.traps import TrapEvent, TrapQueue


def event(
    device: str, *, office: str = "co-a", office_level: bool = False, kind: str = "linkDown"
) -> TrapEvent:
    return TrapEvent(
        kind=kind,
        source_address=f"127.0.0.{len(device)}",
        device_id=device,
        office_id=office,
        oid="1.3.6.1.6.3.1.1.5.3",
        varbinds=(),
        at=0.0,
        office_level=office_level,
    )


def drain(queue: TrapQueue) -> list[TrapEvent]:
    out = []
    while not queue.empty():
        out.append(queue.get_nowait())
    return out


def test_traps_for_a_waiting_device_coalesce_into_the_first() -> None:
    """A second trap for a device already waiting is merged (same re-poll), the first kept."""
    q = TrapQueue(10)
    first = event("r1", kind="linkDown")
    assert ["queued", "coalesced", "queued"] == [
        q.put(first),
        q.put(event("r1", kind="linkUp")),
        q.put(event("r2")),
    ]
    assert ([first.kind, "linkDown"], 1) == ([e.kind for e in drain(q)], q.coalesced)


def test_office_level_alarms_are_served_first() -> None:
    """An office-level alarm queued behind link traps is handed out before them."""
    q = TrapQueue(10)
    for device in ("r1", "r2", "r3"):
        q.put(event(device))
    q.put(event("r9", office="co-b", office_level=True, kind="upsOnBattery"))
    assert ["r9", "r1", "r2", "r3"] == [e.device_id for e in drain(q)]


def test_a_full_queue_drops_link_traps_never_office_alarms() -> None:
    """With `capacity` devices waiting, a new device's link trap is dropped; an office-level
    alarm still gets in, and a trap for a device already waiting still coalesces."""
    q = TrapQueue(2)
    assert ["queued", "queued", "dropped", "coalesced", "queued"] == [
        q.put(event("r1")),
        q.put(event("r2")),
        q.put(event("r3")),
        q.put(event("r1")),
        q.put(event("r4", office_level=True)),
    ]
    assert (1, 3) == (q.dropped, q.qsize())


def test_one_alarm_per_office_waits() -> None:
    """Alarms from several devices of one office coalesce into one (the office is re-polled once)."""
    q = TrapQueue(5)
    results = [q.put(event(d, office="co-a", office_level=True)) for d in ("r1", "r2", "r3")]
    results.append(q.put(event("r4", office="co-b", office_level=True)))
    assert ["queued", "coalesced", "coalesced", "queued"] == results


async def test_get_waits_for_a_put() -> None:
    """get() blocks until an event is put, then returns it."""
    q = TrapQueue(5)
    getter = asyncio.ensure_future(q.get())
    await asyncio.sleep(0)
    assert not getter.done()
    q.put(event("r1"))
    assert "r1" == (await asyncio.wait_for(getter, 1.0)).device_id


async def test_a_cancelled_getter_passes_its_wake_up_on() -> None:
    """A getter cancelled just as it was woken does not swallow the event for the next one."""
    q = TrapQueue(5)
    first = asyncio.ensure_future(q.get())
    second = asyncio.ensure_future(q.get())
    await asyncio.sleep(0)
    q.put(event("r1"))
    first.cancel()
    assert "r1" == (await asyncio.wait_for(second, 1.0)).device_id


def test_capacity_must_be_positive() -> None:
    """A queue that can hold nothing is a configuration error."""
    with pytest.raises(ValueError, match="capacity"):
        TrapQueue(0)


puts = st.lists(
    st.tuples(st.integers(0, 30), st.integers(0, 5), st.booleans()),  # device, office, office-level
    max_size=300,
)


@given(capacity=st.integers(6, 40), sequence=puts)
@settings(max_examples=300, deadline=None)
def test_bounded_and_never_loses_an_office_alarm(
    capacity: int, sequence: list[tuple[int, int, bool]]
) -> None:
    """Property: the device lane never exceeds capacity; with no more offices than capacity no
    office-level alarm is ever dropped; every office and device put comes out exactly once (or
    was dropped), alarms before link traps."""
    q = TrapQueue(capacity)
    wanted_offices: set[str] = set()
    kept_devices: set[str] = set()
    for device, office, level in sequence:
        e = event(f"r{device}", office=f"co-{office}", office_level=level)
        result = q.put(e)
        if level:
            assert "dropped" != result
            wanted_offices.add(e.office_id or "")
        elif result == "queued":
            kept_devices.add(e.device_id or "")
        assert q.qsize() <= capacity + 6
    out = drain(q)
    alarms = [e for e in out if e.office_level]
    assert out[: len(alarms)] == alarms
    assert wanted_offices == {e.office_id for e in alarms}
    assert kept_devices == {e.device_id for e in out if not e.office_level}
    assert len(out) == len({TrapQueue.key(e) for e in out})
