"""TrapReceiver against the real net-snmp snmptrap/snmpinform senders on loopback."""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import AsyncIterator

import pytest

from baton.adapters.traps import (
    TrapEvent,
    TrapReceiver,
    TrapReceiverConfig,
    TrapSource,
    V3TrapUser,
    VendorTrap,
)
from baton.core.model import SecretRef
from baton.metrics import Metrics
from tests.peers.snmpd import SnmpTrapSender

pytestmark = pytest.mark.peer("snmptrap")

COMMUNITY = "trap-community-7"
AUTH, PRIV = "authpass123", "privpass123"
SENDER_ENGINE = "0x8000000001020304"
LINK_DOWN = "1.3.6.1.6.3.1.1.5.3"
POWER_ALARM = "1.3.6.1.4.1.99999.1.0.1"
SECRETS = {"COMMUNITY": COMMUNITY, "AUTH": AUTH, "PRIV": PRIV}


def resolve(ref: SecretRef) -> str:
    return SECRETS[ref.name]


def receiver_config(*, learn: bool = False) -> TrapReceiverConfig:
    user = V3TrapUser(
        "trapuser",
        "SHA",
        SecretRef("env", "AUTH"),
        "AES",
        SecretRef("env", "PRIV"),
        engine_ids=(SENDER_ENGINE,),
    )
    learner = V3TrapUser("learner", "SHA256", SecretRef("env", "AUTH"), "AES", SecretRef("env", "PRIV"))
    return TrapReceiverConfig(
        host="127.0.0.1",
        port=0,
        communities=(SecretRef("env", "COMMUNITY"),),
        v3_users=(user, learner),
        vendor_traps={POWER_ALARM: VendorTrap("power", office_level=True)},
        learn_engine_ids=learn,
    )


@pytest.fixture
async def receiver() -> AsyncIterator[TrapReceiver]:
    metrics = Metrics()
    rx = TrapReceiver(
        receiver_config(learn=True),
        resolve,
        {"127.0.0.1": TrapSource("co-a-r1", "co-a")},
        metrics=metrics,
    )
    await rx.start()
    try:
        yield rx
    finally:
        await rx.stop()


async def next_event(rx: TrapReceiver) -> TrapEvent:
    return await asyncio.wait_for(rx.events.get(), timeout=10.0)


async def send(func: object, *args: object, **kwargs: object) -> None:
    """Run a blocking sender call in a thread so the receiver's loop keeps answering informs."""
    result = await asyncio.to_thread(func, *args, **kwargs)  # type: ignore[arg-type]
    assert 0 == result.returncode, result.stderr


def summary(event: TrapEvent) -> tuple[object, ...]:
    return (event.kind, event.version, event.pdu, event.device_id, event.office_id, event.oid)


async def test_all_five_variants_arrive_as_events(
    receiver: TrapReceiver, snmptrap_sender: SnmpTrapSender
) -> None:
    """v1 trap, v2c trap, v2c inform, v3 trap and v3 inform each become the right TrapEvent."""
    port, s = receiver.port, snmptrap_sender
    if_index = ("1.3.6.1.2.1.2.2.1.1.3", "i", "3")
    await send(s.trap_v1, "127.0.0.1", port, COMMUNITY, "1.3.6.1.4.1.8072", "127.0.0.1", 2, 0, [if_index])
    v1 = await next_event(receiver)
    await send(s.trap_v2c, "127.0.0.1", port, COMMUNITY, LINK_DOWN, [if_index])
    v2 = await next_event(receiver)
    await send(s.inform_v2c, "127.0.0.1", port, COMMUNITY, "1.3.6.1.6.3.1.1.5.4")
    v2_inform = await next_event(receiver)
    await send(
        s.trap_v3,
        "127.0.0.1",
        port,
        "trapuser",
        "SHA",
        AUTH,
        "AES",
        PRIV,
        SENDER_ENGINE,
        "1.3.6.1.6.3.1.1.5.1",
    )
    v3 = await next_event(receiver)
    await send(s.inform_v3, "127.0.0.1", port, "trapuser", "SHA", AUTH, "AES", PRIV, POWER_ALARM)
    v3_inform = await next_event(receiver)

    assert [
        ("linkDown", "1", "trap", "co-a-r1", "co-a", LINK_DOWN),
        ("linkDown", "2c", "trap", "co-a-r1", "co-a", LINK_DOWN),
        ("linkUp", "2c", "inform", "co-a-r1", "co-a", "1.3.6.1.6.3.1.1.5.4"),
        ("coldStart", "3", "trap", "co-a-r1", "co-a", "1.3.6.1.6.3.1.1.5.1"),
        ("power", "3", "inform", "co-a-r1", "co-a", POWER_ALARM),
    ] == [summary(e) for e in (v1, v2, v2_inform, v3, v3_inform)]
    assert ("1.3.6.1.2.1.2.2.1.1.3", "3") in v2.varbinds
    assert (False, True) == (v2.office_level, v3_inform.office_level)
    assert all(COMMUNITY not in value for _, value in v1.varbinds)


async def test_v3_trap_from_unknown_engine_is_learned_when_enabled(
    receiver: TrapReceiver, snmptrap_sender: SnmpTrapSender
) -> None:
    """With learn_engine_ids, a v3 trap from a new engine id with the right keys is accepted."""
    await send(
        snmptrap_sender.trap_v3,
        "127.0.0.1",
        receiver.port,
        "learner",
        "SHA256",
        AUTH,
        "AES",
        PRIV,
        "0x80000000010203aa",
        "1.3.6.1.6.3.1.1.5.2",
    )
    assert ("warmStart", "3") == ((e := await next_event(receiver)).kind, e.version)


async def test_bad_credentials_and_unknown_sources_are_counted_and_dropped(
    snmptrap_sender: SnmpTrapSender,
) -> None:
    """A wrong community, a wrong v3 key and an unknown source are each counted and never delivered."""
    metrics = Metrics()
    rx = TrapReceiver(receiver_config(), resolve, {"127.0.0.9": TrapSource("x", "y")}, metrics=metrics)
    await rx.start()
    try:
        s = snmptrap_sender
        await send(s.trap_v2c, "127.0.0.1", rx.port, "not-the-community", LINK_DOWN)
        await send(
            s.trap_v3,
            "127.0.0.1",
            rx.port,
            "trapuser",
            "SHA",
            "wrongpass99",
            "AES",
            PRIV,
            SENDER_ENGINE,
            LINK_DOWN,
        )
        await send(s.trap_v2c, "127.0.0.1", rx.port, COMMUNITY, LINK_DOWN)  # valid, but 127.0.0.1 is unknown
        # A valid trap from a known source, last: once it is here, the ones before were processed.
        rx.set_sources({"127.0.0.1": TrapSource("co-a-r1", "co-a")})
        await send(s.trap_v2c, "127.0.0.1", rx.port, COMMUNITY, LINK_DOWN)
        event = await next_event(rx)
    finally:
        await rx.stop()
    assert "co-a-r1" == event.device_id
    assert rx.events.empty()
    assert {"bad_community": 1, "auth": 1, "unknown_source": 1} == rx.dropped
    text = metrics.render().decode()
    assert 'baton_traps_dropped_total{reason="bad_community"} 1.0' in text
    assert 'baton_traps_received_total{kind="linkDown"} 1.0' in text
    assert COMMUNITY not in text


async def test_receiver_survives_junk_datagrams(
    receiver: TrapReceiver, snmptrap_sender: SnmpTrapSender
) -> None:
    """Random bytes, truncated BER and a lone SEQUENCE are dropped as undecodable; a trap still arrives."""
    junk = [
        b"",
        b"junk",
        os.urandom(512),
        bytes(range(256)),
        b"\x30\x82\xff\xff\x02\x01",  # SEQUENCE claiming 65535 bytes
        b"\x30\x03\x02\x01",  # truncated INTEGER
        b"\x30\x0b\x02\x01\x01\x04\x06public",  # v2c header without a PDU
    ]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for datagram in junk:
            sock.sendto(datagram, ("127.0.0.1", receiver.port))
    await send(snmptrap_sender.trap_v2c, "127.0.0.1", receiver.port, COMMUNITY, LINK_DOWN)
    event = await next_event(receiver)
    assert "linkDown" == event.kind
    assert {"undecodable": len(junk)} == receiver.dropped


async def test_unresolvable_community_refuses_to_start() -> None:
    """A community secret that cannot be resolved stops start() with the reference, not a value."""
    cfg = TrapReceiverConfig(host="127.0.0.1", port=0, communities=(SecretRef("env", "MISSING"),))
    rx = TrapReceiver(cfg, resolve)
    with pytest.raises(Exception, match="credential env:MISSING cannot be resolved"):
        await rx.start()
