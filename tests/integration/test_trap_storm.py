"""Trap storms: the receiver's fast path against its pysnmp path and net-snmp's `snmptrap`
bytes, exact accounting of a storm (kernel drops included), and office alarms first."""

from __future__ import annotations

import asyncio
import random
import socket
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import replace

import pytest

from baton.adapters.snmp_fast import encode_integer, encode_oid, tlv
from baton.adapters.trap_fast import TrapDecoder, read_header
from baton.adapters.traps import TrapEvent, TrapReceiver, TrapReceiverConfig, TrapSource, VendorTrap
from baton.core.model import SecretRef
from baton.metrics import Metrics
from tests.peers.snmpd import SnmpTrapSender
from tests.unit.test_trap_fast import pysnmp_reads

COMMUNITY = "storm-community"
UPS_ON_BATTERY = "1.3.6.1.2.1.33.2.1"
LINK_DOWN = "1.3.6.1.6.3.1.1.5.3"
SOURCES = {
    "127.0.0.1": TrapSource("r-local", "co-a"),
    **{f"127.21.0.{n}": TrapSource(f"r{n}", f"co-{n % 5}") for n in range(1, 61)},
}


def config(*, fast_path: bool = True, **kwargs: object) -> TrapReceiverConfig:
    return TrapReceiverConfig(
        host="127.0.0.1",
        port=0,
        communities=(SecretRef("env", "C"), SecretRef("env", "C2")),
        vendor_traps={UPS_ON_BATTERY: VendorTrap("upsOnBattery", office_level=True)},
        fast_path=fast_path,
        **kwargs,  # type: ignore[arg-type]
    )


def resolve(ref: SecretRef) -> str:
    return {"C": COMMUNITY, "C2": "second-community"}[ref.name]


Tap = tuple[TrapReceiver, list[TrapEvent]]


@pytest.fixture
async def receivers() -> AsyncIterator[tuple[Tap, Tap]]:
    """(fast receiver, its events), (pysnmp receiver, its events): every event, uncoalesced."""
    pairs: list[Tap] = []
    for fast in (True, False):
        got: list[TrapEvent] = []
        rx = TrapReceiver(config(fast_path=fast), resolve, SOURCES, deliver=got.append, clock=lambda: 0.0)
        await rx.start()
        pairs.append((rx, got))
    try:
        yield pairs[0], pairs[1]
    finally:
        for rx, _ in pairs:
            await rx.stop()


def integer(value: int) -> bytes:
    return tlv(0x02, encode_integer(value))


def oid(text: str) -> bytes:
    return tlv(0x06, encode_oid(tuple(int(a) for a in text.split("."))))


def varbind(name: str, value: bytes) -> bytes:
    return tlv(0x30, oid(name) + value)


def v2c(community: str, trap_oid: str, extra: Iterable[bytes] = (), *, tag: int = 0xA7) -> bytes:
    body = varbind("1.3.6.1.2.1.1.3.0", tlv(0x43, encode_integer(4242))) + varbind(
        "1.3.6.1.6.3.1.1.4.1.0", oid(trap_oid)
    )
    body += b"".join(extra)
    pdu = tlv(tag, integer(77) + integer(0) + integer(0) + tlv(0x30, body))
    return tlv(0x30, integer(1) + tlv(0x04, community.encode()) + pdu)


def v1(community: str, agent: bytes, generic: int, specific: int, extra: Iterable[bytes] = ()) -> bytes:
    pdu = oid("1.3.6.1.4.1.8072.3.2.10") + tlv(0x40, agent) + integer(generic) + integer(specific)
    pdu += tlv(0x43, encode_integer(99)) + tlv(0x30, b"".join(extra))
    return tlv(0x30, integer(0) + tlv(0x04, community.encode()) + tlv(0xA4, pdu))


def corpus(rng: random.Random) -> list[tuple[bytes, tuple[str, int]]]:
    """(datagram, source) pairs: valid v1/v2c traps of every value type, vendor and office-level
    OIDs, unknown sources (one rescued by a v1 agent-addr), wrong communities, junk."""
    values = [
        integer(-5),
        tlv(0x04, b"ge-0/0/1"),
        tlv(0x04, b"\xff\xfe"),
        tlv(0x05, b""),
        oid("1.3.6.1.4.1.9.9"),
        tlv(0x40, b"\x0a\x01\x02\x03"),
        tlv(0x41, encode_integer(2**32 - 1)),
        tlv(0x42, encode_integer(7)),
        tlv(0x43, encode_integer(1000)),
        tlv(0x44, b"\x9f\x78\x04"),
    ]
    v2_only = [tlv(0x46, encode_integer(2**64 - 1)), tlv(0x80, b""), tlv(0x82, b"")]
    out: list[tuple[bytes, tuple[str, int]]] = []
    for n in range(120):
        source = (f"127.21.0.{rng.randint(1, 70)}", 40000 + n)  # 61..70 are unknown sources
        extra = [
            varbind(f"1.3.6.1.2.1.2.2.1.{rng.randint(1, 9)}.{n}", rng.choice(values)) for _ in range(n % 6)
        ]
        trap_oid = rng.choice([LINK_DOWN, "1.3.6.1.6.3.1.1.5.4", UPS_ON_BATTERY, "1.3.6.1.4.1.9.0.1"])
        community = rng.choice([COMMUNITY, COMMUNITY, "second-community", "wrong"])
        if n % 3:
            extra.append(varbind("1.3.6.1.2.1.31.1.1.1.6.1", rng.choice(v2_only)))
            out.append((v2c(community, trap_oid, extra), source))
        else:
            agent = bytes((127, 21, 0, rng.randint(1, 60)))  # a known agent-addr: rescues unknown sources
            out.append((v1(community, agent, rng.choice([2, 3, 6]), 17, extra), source))
    out.append(
        (
            v2c(COMMUNITY, LINK_DOWN, [varbind("1.3.6.1.6.3.18.1.3.0", tlv(0x40, bytes((127, 21, 0, 9))))]),
            ("127.9.9.9", 1),
        )
    )
    out += [(junk, ("127.21.0.1", 9)) for junk in (b"", b"\x30\x03\x02\x01", bytes(range(64)), b"\x30\x00")]
    return out


def comparable(events: list[TrapEvent]) -> list[TrapEvent]:
    return [replace(e, at=0.0) for e in events]


async def test_fast_and_pysnmp_paths_make_the_same_events_and_drops(
    receivers: tuple[Tap, Tap],
) -> None:
    """Differential, whole receiver: the same datagrams through the fast path and through
    pysnmp give the same events (kind, device, office, version, varbind summary) and the same
    drops by reason."""
    (fast, fast_events), (slow, slow_events) = receivers
    for datagram, source in corpus(random.Random(13)):
        fast.receive(datagram, source)
        slow.receive(datagram, source)
    assert len(slow_events) > 50
    assert comparable(slow_events) == comparable(fast_events)
    assert slow.dropped == fast.dropped
    assert {"bad_community", "unknown_source", "undecodable"} <= set(fast.dropped)


async def capture(send: Callable[[int], object]) -> bytes:
    """The datagram `send(port)` (a net-snmp command) puts on the wire."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sink:
        sink.bind(("127.0.0.1", 0))
        sink.settimeout(10.0)
        port = sink.getsockname()[1]
        done = asyncio.create_task(asyncio.to_thread(send, port))
        data = await asyncio.to_thread(sink.recv, 65535)
        await done
        return data


NETSNMP_VARBINDS = [
    ("1.3.6.1.2.1.2.2.1.1.3", "i", "3"),
    ("1.3.6.1.2.1.2.2.1.7.3", "i", "-2147483648"),
    ("1.3.6.1.2.1.2.2.1.2.3", "s", "ge-0/0/3 to seoul-bangbae"),
    ("1.3.6.1.2.1.2.2.1.6.3", "x", "00 1A 2B FF FE 00"),
    ("1.3.6.1.2.1.2.2.1.10.3", "c", "4294967295"),
    ("1.3.6.1.2.1.2.2.1.5.3", "u", "1000000000"),
    ("1.3.6.1.2.1.2.2.1.9.3", "t", "123456"),
    ("1.3.6.1.2.1.4.20.1.1.3", "a", "10.20.30.40"),
    ("1.3.6.1.2.1.2.2.1.22.3", "o", "1.3.6.1.4.1.9.9.1"),
    ("1.3.6.1.2.1.2.2.1.20.3", "n", ""),
    ("1.3.6.1.2.1.31.1.1.1.6.3", "b", "0 3"),
]


@pytest.mark.peer("snmptrap")
@pytest.mark.parametrize("version", ["1", "2c"])
async def test_snmptrap_bytes_read_as_pysnmp_reads_them(
    version: str,
    snmptrap_sender: SnmpTrapSender,
    receivers: tuple[Tap, Tap],
) -> None:
    """Bytes from net-snmp's snmptrap (every varbind type it sends) decode as pysnmp decodes
    them, and become the same event on both receiver paths."""

    def send(port: int) -> object:
        if version == "1":
            return snmptrap_sender.trap_v1(
                "127.0.0.1", port, COMMUNITY, "1.3.6.1.4.1.8072.3.2.10", "127.21.0.7", 6, 99, NETSNMP_VARBINDS
            )
        return snmptrap_sender.trap_v2c("127.0.0.1", port, COMMUNITY, UPS_ON_BATTERY, NETSNMP_VARBINDS)

    data = await capture(send)
    trap = TrapDecoder().read_trap(data, header := read_header(data))
    assert pysnmp_reads(data) == (trap.version, header.community, list(trap.varbinds))
    (fast, fast_events), (slow, slow_events) = receivers
    fast.receive(data, ("127.0.0.1", 50000))
    slow.receive(data, ("127.0.0.1", 50000))
    assert 1 == len(fast_events)
    assert comparable(slow_events) == comparable(fast_events)
    assert (version, "co-a") == (fast_events[0].version, fast_events[0].office_id)


async def wait_for(predicate: Callable[[], bool], timeout_s: float = 30.0) -> None:
    async with asyncio.timeout(timeout_s):
        while not predicate():  # noqa: ASYNC110 (the receiver signals nothing: poll its counters)
            await asyncio.sleep(0.01)


async def settled(rx: TrapReceiver, quiet_s: float = 0.3) -> None:
    """Until the receiver has read nothing new for quiet_s (a burst is over)."""
    seen = -1
    async with asyncio.timeout(60.0):
        while seen != rx.datagrams:
            seen = rx.datagrams
            await asyncio.sleep(quiet_s)


def senders(count: int) -> list[socket.socket]:
    out = []
    for n in range(1, count + 1):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind((f"127.21.0.{n}", 0))
        out.append(s)
    return out


async def test_a_storm_is_accounted_for_to_the_last_trap() -> None:
    """20,000 traps from 60 devices sent back to back: every one is either an event or a
    counted drop (the kernel's, read from the socket's drop counter, included)."""
    metrics = Metrics()
    got: list[TrapEvent] = []
    rx = TrapReceiver(config(), resolve, SOURCES, deliver=got.append, metrics=metrics)
    await rx.start()
    socks = senders(60)
    try:
        datagram = v2c(COMMUNITY, LINK_DOWN, [varbind("1.3.6.1.2.1.2.2.1.1.3", integer(3))])
        for i in range(20_000):
            socks[i % 60].sendto(datagram, ("127.0.0.1", rx.port))
            if i % 2000 == 1999:
                await asyncio.sleep(0)
        await settled(rx)
    finally:
        for s in socks:
            s.close()
        await rx.stop()
    assert 20_000 == len(got) + rx.dropped.get("receive_buffer", 0)
    assert {"receive_buffer"} >= set(rx.dropped)
    text = metrics.render().decode()
    assert f'baton_traps_received_total{{kind="linkDown"}} {float(len(got))}' in text


async def test_kernel_drops_are_counted_as_receive_buffer_drops() -> None:
    """With a tiny receive buffer and a loop too busy to read, the kernel drops most of a burst:
    the receiver counts exactly those as receive_buffer drops (metric included)."""
    metrics = Metrics()
    got: list[TrapEvent] = []
    rx = TrapReceiver(
        config(receive_buffer_bytes=4096), resolve, SOURCES, deliver=got.append, metrics=metrics
    )
    await rx.start()
    socks = senders(10)
    try:
        datagram = v2c(COMMUNITY, LINK_DOWN)
        for i in range(500):  # no await: the receiver cannot read meanwhile
            socks[i % 10].sendto(datagram, ("127.0.0.1", rx.port))
        await settled(rx)
    finally:
        for s in socks:
            s.close()
        await rx.stop()
    drops = rx.dropped.get("receive_buffer", 0)
    assert (500, True) == (len(got) + drops, drops > 400)
    assert f'baton_traps_dropped_total{{reason="receive_buffer"}} {float(drops)}' in metrics.render().decode()


async def test_office_alarms_get_through_a_full_queue_first() -> None:
    """The queue holds 10 devices: of 200 link traps from 50 devices, 10 wait (30 more coalesce
    into them, 160 are dropped as queue_full); 3 office alarms sent after them still get in and
    come out first."""
    metrics = Metrics()
    rx = TrapReceiver(config(queue_capacity=10), resolve, SOURCES, metrics=metrics)
    await rx.start()
    socks = senders(50)
    try:
        for i in range(200):
            socks[i % 50].sendto(v2c(COMMUNITY, LINK_DOWN), ("127.0.0.1", rx.port))
        for n in (1, 2, 3):  # devices r1..r3 are in offices co-1..co-3
            socks[n - 1].sendto(v2c(COMMUNITY, UPS_ON_BATTERY), ("127.0.0.1", rx.port))
        await wait_for(lambda: rx.datagrams >= 203)
    finally:
        for s in socks:
            s.close()
        await rx.stop()
    out = []
    while not rx.events.empty():
        out.append(rx.events.get_nowait())
    assert [("upsOnBattery", f"co-{n}") for n in (1, 2, 3)] == [(e.kind, e.office_id) for e in out[:3]]
    assert [f"r{n}" for n in range(1, 11)] == [e.device_id for e in out[3:]]
    assert ({"queue_full": 160}, 30) == (rx.dropped, rx.coalesced)
    text = metrics.render().decode()
    assert 'baton_traps_dropped_total{reason="queue_full"} 160.0' in text
    assert "baton_traps_coalesced_total 30.0" in text
