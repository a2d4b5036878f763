"""The v3 fast path (baton.adapters.snmp_v3) against real net-snmp agents on loopback: every
supported user, wrong keys, unknown users, agent restarts, engine id changes, engineBoots going
back, tampered answers, and bytes captured from snmpd read the same as pysnmp reads them."""

from __future__ import annotations

import asyncio
import shutil
import socket
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from typing import Any, cast

import pytest
from pyasn1.codec.ber import decoder as ber_decoder
from pyasn1.type import univ
from pysnmp.proto import api as snmp_api
from pysnmp.proto import rfc1902
from pysnmp.proto.mpmod.rfc3412 import ScopedPDU, SNMPv3Message
from pysnmp.proto.secmod.rfc3414.auth import hmacsha
from pysnmp.proto.secmod.rfc3414.service import UsmSecurityParameters
from pysnmp.proto.secmod.rfc3826.priv import aes

from baton.adapters.snmp import SnmpPoller, SnmpReading, convert
from baton.adapters.snmp_fast import encode_oid
from baton.adapters.snmp_v3 import Answer, read_message
from baton.core.model import Device, SecretRef, SnmpSettings, frozen_map
from baton.metrics import Metrics
from tests.peers.endpoints import SnmpEndpoint
from tests.peers.snmpd import SnmpdProcess
from tests.unit import test_snmp_v3 as fake

pytestmark = pytest.mark.peer("snmpd")

SYS_NAME_OID = "1.3.6.1.2.1.1.5.0"
V2C = snmp_api.PROTOCOL_MODULES[snmp_api.SNMP_VERSION_2C]
WRONG = "wrong-secret-42"


def resolver(endpoint: SnmpEndpoint) -> Callable[[SecretRef], str]:
    secrets = {"AUTH": endpoint.v3_auth_key, "PRIV": endpoint.v3_priv_key, "WRONG": WRONG}
    return lambda ref: secrets[ref.name]


def v3_device(
    endpoint: SnmpEndpoint,
    device_id: str = "dev1",
    *,
    auth_key: str = "AUTH",
    priv_key: str = "PRIV",
    user: str | None = None,
    critical: tuple[int, ...] = (1, 2),
    timeout_s: float = 1.0,
    port: int | None = None,
) -> Device:
    return Device(
        id=device_id,
        office="co-a",
        role="router",
        address=endpoint.host,
        snmp=SnmpSettings(
            version="3",
            port=port or endpoint.port,
            timeout_s=timeout_s,
            retries=0,
            user=user or endpoint.v3_user,
            auth_protocol=endpoint.v3_auth_protocol,  # type: ignore[arg-type]
            auth_key=SecretRef("env", auth_key),
            priv_protocol=endpoint.v3_priv_protocol,  # type: ignore[arg-type]
            priv_key=SecretRef("env", priv_key),
            critical_interfaces=critical,
            oids=frozen_map({"sys_name": SYS_NAME_OID, "descr": "1.3.6.1.2.1.1.1.0"}),
        ),
    )


@pytest.fixture
async def pollers() -> AsyncIterator[Callable[..., SnmpPoller]]:
    made: list[SnmpPoller] = []

    def make(endpoint: SnmpEndpoint, **kwargs: Any) -> SnmpPoller:
        poller = SnmpPoller(resolver(endpoint), **kwargs)
        made.append(poller)
        return poller

    yield make
    for poller in made:
        poller.close()


def comparable(reading: SnmpReading) -> tuple[object, ...]:
    return (reading.ok, reading.reason, reading.failure, dict(reading.if_oper_status), dict(reading.extra))


@pytest.mark.parametrize(
    "user_index",
    [0, 1, 2, 3, 4, 5],
    ids=["SHA-AES", "SHA256-AES", "SHA512-AES256", "SHA-AES256", "SHA256-AES256", "SHA-AES192"],
)
@pytest.mark.parametrize("critical", [(1, 3), ()], ids=["get", "walk"])
async def test_fast_path_reads_what_pysnmp_reads_for_every_user(
    snmpd_agent: SnmpdProcess, pollers: Callable[..., SnmpPoller], user_index: int, critical: tuple[int, ...]
) -> None:
    """Differential against snmpd: every auth/priv pair gives the same reading on the fast path
    as through pysnmp, GET and GETBULK walk alike (interface 3 set down first)."""
    snmpd_agent.set_if_oper_status(3, 2)
    endpoint = snmpd_agent.endpoints[user_index]
    device = v3_device(endpoint, critical=critical)
    fast, slow = pollers(endpoint), pollers(endpoint, fast_v3=False)
    fast_reading, slow_reading = await fast.poll(device), await slow.poll(device)
    assert comparable(slow_reading) == comparable(fast_reading)
    assert (endpoint.sys_name, 2) == (fast_reading.extra["sys_name"], fast_reading.if_oper_status[3])
    assert (0, 1) == (fast.engine_count, slow.engine_count)  # the fast path needs no pysnmp engine
    assert fast.v3_engine("dev1") is not None


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"auth_key": "WRONG"}, "wrong digest (v3 auth failure)"),
        ({"user": "nobody-here"}, "unknown v3 user"),
    ],
    ids=["wrong-auth-key", "unknown-user"],
)
async def test_refusals_are_auth_failures_with_the_agents_reason(
    snmpd_agent: SnmpdProcess,
    pollers: Callable[..., SnmpPoller],
    capsys: pytest.CaptureFixture[str],
    change: dict[str, Any],
    expected: str,
) -> None:
    """A wrong auth key or an unknown user: DOWN with the agent's report as the reason, no secret
    in the reading, the metrics or the logs."""
    endpoint = snmpd_agent.endpoint
    metrics = Metrics()
    poller = pollers(endpoint, metrics=metrics)
    reading = await poller.poll(v3_device(endpoint, **change))
    assert (False, "auth", expected) == (reading.ok, reading.failure, reading.reason)
    exposed = repr(reading) + metrics.render().decode() + capsys.readouterr().out + repr(poller._targets)
    for secret in (WRONG, endpoint.v3_auth_key, endpoint.v3_priv_key):
        assert secret not in exposed


async def test_wrong_privacy_key_is_a_decryption_failure(
    snmpd_agent: SnmpdProcess, pollers: Callable[..., SnmpPoller]
) -> None:
    """A wrong privacy key: snmpd cannot decrypt the request and drops it without a report; the
    poll fails as auth, saying the agent answered discovery but not the encrypted request."""
    endpoint = snmpd_agent.endpoint
    reading = await pollers(endpoint).poll(v3_device(endpoint, priv_key="WRONG", timeout_s=0.5))
    assert (False, "auth") == (reading.ok, reading.failure)
    assert reading.reason == (
        "no answer to the encrypted request though the agent answered engine discovery "
        "(v3 privacy key or protocol mismatch?; timeout after 0.5 s × 1 try)"
    )


async def test_agent_restart_resynchronises_time(
    snmpd_agent: SnmpdProcess, pollers: Callable[..., SnmpPoller]
) -> None:
    """snmpd restarted (same engine id, engineBoots + 1): the next poll adopts the new boots from
    the authenticated notInTimeWindow report and is ok, flagged as a reboot."""
    endpoint = snmpd_agent.endpoint
    poller = pollers(endpoint)
    device = v3_device(endpoint)
    await asyncio.sleep(1.2)  # let sysUpTime grow past what a fresh agent reports
    before = await poller.poll(device)
    engine_before = poller.v3_engine(device.id)
    snmpd_agent.stop()
    snmpd_agent.start()
    after = await poller.poll(device)
    engine_after = poller.v3_engine(device.id)
    assert (True, True, False, True) == (before.ok, after.ok, before.rebooted, after.rebooted)
    assert engine_before is not None
    assert engine_after is not None
    assert (engine_before[0], engine_before[1] + 1) == engine_after


async def test_engine_id_change_is_rediscovered(
    snmpd_agent: SnmpdProcess, pollers: Callable[..., SnmpPoller]
) -> None:
    """snmpd reinstalled (persistent state wiped: a new engine id): the unknownEngineID report
    makes the poller discover the new engine, localize the keys to it, and the poll is ok."""
    endpoint = snmpd_agent.endpoint
    poller = pollers(endpoint)
    device = v3_device(endpoint)
    before = await poller.poll(device)
    engine_before = poller.v3_engine(device.id)
    snmpd_agent.stop()
    shutil.rmtree(snmpd_agent.persist_dir)
    snmpd_agent.persist_dir.mkdir()
    snmpd_agent.start()
    after = await poller.poll(device)
    engine_after = poller.v3_engine(device.id)
    assert (True, True) == (before.ok, after.ok)
    assert engine_before is not None
    assert engine_after is not None
    assert engine_before[0] != engine_after[0]


async def test_engine_boots_going_back_fails_once_then_rediscovers(
    snmpd_agent: SnmpdProcess, pollers: Callable[..., SnmpPoller]
) -> None:
    """snmpd restored from an old backup (same engine id, engineBoots lower than last seen): the
    authenticated answer is outside the time window, so that poll fails with the reason; the
    engine is forgotten and the next poll discovers it afresh and is ok."""
    endpoint = snmpd_agent.endpoint
    snmpd_agent.stop()  # persist the state at engineBoots 1
    backup = snmpd_agent.workdir / "persist-backup"
    shutil.copytree(snmpd_agent.persist_dir, backup)
    snmpd_agent.start()  # boots 2
    snmpd_agent.stop()
    snmpd_agent.start()  # boots 3
    poller = pollers(endpoint)
    device = v3_device(endpoint)
    first = await poller.poll(device)
    engine_first = poller.v3_engine(device.id)
    snmpd_agent.stop()
    shutil.rmtree(snmpd_agent.persist_dir)
    shutil.copytree(backup, snmpd_agent.persist_dir)
    snmpd_agent.start()  # boots 2 again
    went_back = await poller.poll(device)
    again = await poller.poll(device)
    assert engine_first is not None
    assert 3 == engine_first[1]
    assert (True, False, "auth", True) == (first.ok, went_back.ok, went_back.failure, again.ok)
    assert "engineBoots went back from 3 to 2" in went_back.reason
    assert (engine_first[0], 2) == poller.v3_engine(device.id)


class _Relay(asyncio.DatagramProtocol):
    """A UDP relay between the poller and snmpd that records (and may alter) the agent's answers."""

    def __init__(self, agent: tuple[str, int], alter: Callable[[bytes], bytes]) -> None:
        self.agent = agent
        self.alter = alter
        self.answers: list[bytes] = []
        self.client: tuple[str, int] | None = None
        self.transport: asyncio.DatagramTransport | None = None
        self.upstream: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | Any, ...]) -> None:
        self.client = (str(addr[0]), int(addr[1]))
        if self.upstream is not None:
            self.upstream.sendto(data, self.agent)

    def answered(self, data: bytes) -> None:
        self.answers.append(data)
        if self.transport is not None and self.client is not None:
            self.transport.sendto(self.alter(data), self.client)


class _Upstream(asyncio.DatagramProtocol):
    def __init__(self, relay: _Relay) -> None:
        self.relay = relay

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        self.relay.answered(data)


@pytest.fixture
async def relay_to() -> AsyncIterator[Callable[..., Any]]:
    transports: list[asyncio.BaseTransport] = []

    async def start(
        agent: SnmpdProcess, alter: Callable[[bytes], bytes] = lambda b: b, host: str = "127.0.0.1"
    ) -> tuple[_Relay, int]:
        loop = asyncio.get_running_loop()
        relay = _Relay((agent.host, agent.port), alter)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        front, _ = await loop.create_datagram_endpoint(lambda: relay, local_addr=(host, 0), family=family)
        back, _ = await loop.create_datagram_endpoint(
            lambda: _Upstream(relay), local_addr=("127.0.0.1", 0), family=socket.AF_INET
        )
        relay.upstream = back
        transports.extend((front, back))
        return relay, int(front.get_extra_info("sockname")[1])

    yield start
    for transport in transports:
        transport.close()


async def test_tampered_answers_are_not_believed(
    snmpd_agent: SnmpdProcess, pollers: Callable[..., SnmpPoller], relay_to: Callable[..., Any]
) -> None:
    """Every authenticated answer has one bit of its encrypted PDU flipped on the way: none is
    believed; the poll fails naming the digest, and the discards are counted."""

    def flip_last_bit(answer: bytes) -> bytes:
        if read_message(answer).flags & 1:
            return answer[:-1] + bytes((answer[-1] ^ 1,))
        return answer  # the discovery report is not authenticated anyway

    endpoint = snmpd_agent.endpoint
    _, port = await relay_to(snmpd_agent, flip_last_bit)
    poller = pollers(endpoint)
    reading = await poller.poll(v3_device(endpoint, port=port, timeout_s=0.5))
    assert (False, "auth") == (reading.ok, reading.failure)
    assert reading.reason == (
        "timeout after 0.5 s × 1 try; "
        "answer not believed: wrong digest in the agent's answer (v3 auth failure)"
    )
    assert 1 == poller.discarded_v3_answers


async def test_answers_captured_from_snmpd_read_as_pysnmp_reads_them(
    snmpd_agent: SnmpdProcess, pollers: Callable[..., SnmpPoller], relay_to: Callable[..., Any]
) -> None:
    """Bytes captured from snmpd (its discovery report and an authPriv SHA/AES response) decode,
    authenticate and decrypt with pysnmp's own modules to exactly what the fast path read."""
    endpoint = snmpd_agent.endpoint  # SHA / AES-128
    relay, port = await relay_to(snmpd_agent)
    poller = pollers(endpoint)
    device = v3_device(endpoint, port=port)
    reading = await poller.poll(device)
    assert reading.ok
    report, response = relay.answers
    target = poller._targets[device.id].fast3
    assert target is not None
    assert target.engine is not None

    # discovery report: plaintext, the engine id we use
    message, _ = ber_decoder.decode(report, asn1Spec=SNMPv3Message())
    usm, _ = ber_decoder.decode(bytes(message[2]), asn1Spec=UsmSecurityParameters())
    assert (target.engine.engine_id, read_message(report).engine_id) == (bytes(usm[0]), bytes(usm[0]))
    report_pdu = message[3][0][2].getComponent()
    assert [(1, 3, 6, 1, 6, 3, 15, 1, 1, 4, 0)] == [tuple(o) for o, _ in V2C.apiPDU.get_varbinds(report_pdu)]

    # the response: pysnmp authenticates and decrypts it with keys of its own making
    message, _ = ber_decoder.decode(response, asn1Spec=SNMPv3Message())
    usm, _ = ber_decoder.decode(bytes(message[2]), asn1Spec=UsmSecurityParameters())
    engine_id = univ.OctetString(bytes(usm[0]))
    sha, aes128 = hmacsha.HmacSha(), aes.Aes()
    auth_key = sha.localize_key(sha.hash_passphrase(endpoint.v3_auth_key), engine_id)
    sha.authenticate_incoming_message(auth_key, usm[4], response)
    priv_key = aes128.localize_key(
        sha.SERVICE_ID, aes128.hash_passphrase(sha.SERVICE_ID, endpoint.v3_priv_key), engine_id
    )
    plaintext = aes128.decrypt_data(priv_key, (usm[1], usm[2], usm[5]), message[3][1])
    scoped, _ = ber_decoder.decode(plaintext, asn1Spec=ScopedPDU())
    pdu = scoped[2].getComponent()
    expected = [(encode_oid(tuple(o)), convert(v)) for o, v in V2C.apiPDU.get_varbinds(pdu)]
    outcome = target.judge(
        response, read_message(response), int(V2C.apiPDU.get_request_id(pdu)), time.monotonic()
    )
    assert isinstance(outcome, Answer)
    assert expected == list(outcome.response.varbinds)
    assert (5, endpoint.sys_name) == (len(expected), expected[3][1].value)


async def test_v3_over_ipv6_loopback(
    snmpd_agent: SnmpdProcess, pollers: Callable[..., SnmpPoller], relay_to: Callable[..., Any]
) -> None:
    """A v3 device at ::1 (a relay there to the IPv4 snmpd) is discovered and polled over the
    fast path's AF_INET6 socket, its answers matched by their IPv6 source."""
    endpoint = snmpd_agent.endpoint
    _, port = await relay_to(snmpd_agent, host="::1")
    device = v3_device(replace(endpoint, host="::1"), port=port)
    reading = await pollers(endpoint).poll(device)
    assert (True, endpoint.sys_name) == (reading.ok, reading.extra["sys_name"])


async def test_many_v3_devices_at_once_keep_their_engines_apart(
    snmpd_factory: Callable[..., SnmpdProcess], pollers: Callable[..., SnmpPoller]
) -> None:
    """100 v3 devices over two agents, all in flight at once on one socket: each discovers its
    own agent's engine and reads its own sysName, twice."""
    agents = [snmpd_factory(host, sys_name=f"co-v3-{host}") for host in ("127.0.0.2", "127.0.0.3")]
    poller = pollers(agents[0].endpoint, max_concurrency=100)
    devices = [v3_device(agents[i % 2].endpoint, f"dev{i}", timeout_s=5.0) for i in range(100)]
    for _ in range(2):
        readings = await asyncio.gather(*(poller.poll(d) for d in devices))
        assert [(True, f"co-v3-127.0.0.{2 + i % 2}") for i in range(100)] == [
            (r.ok, r.extra["sys_name"]) for r in readings
        ]
    engines = {poller.v3_engine(f"dev{i}") for i in range(100)}
    assert 2 == len({engine[0] for engine in engines if engine is not None})


async def test_stopped_agent_is_a_timeout(
    snmpd_agent: SnmpdProcess, pollers: Callable[..., SnmpPoller]
) -> None:
    """No answer at all (agent stopped): a timeout, as for v2c, then ok once it is back."""
    endpoint = snmpd_agent.endpoint
    poller = pollers(endpoint)
    device = v3_device(endpoint, timeout_s=0.3)
    assert (await poller.poll(device)).ok
    snmpd_agent.stop()
    during = [await poller.poll(device) for _ in range(2)]
    snmpd_agent.start()
    after = await poller.poll(device)
    assert [(False, "timeout", "timeout after 0.3 s × 1 try")] * 2 == [
        (r.ok, r.failure, r.reason) for r in during
    ]
    assert after.ok


async def test_des_and_no_auth_users_fall_back_to_pysnmp(pollers: Callable[..., SnmpPoller]) -> None:
    """The fast path does not do DES privacy nor noAuthNoPriv: such devices get a pysnmp engine
    (here against a port where nothing answers: a plain timeout, as before)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
        endpoint = SnmpEndpoint(
            "127.0.0.1", port, "public", "u", "SHA", "authpass123", "DES", "privpass123", "x"
        )
        poller = pollers(endpoint)
        des = v3_device(endpoint, "des", timeout_s=0.2)
        assert des.snmp is not None
        no_auth = Device(
            "noauth",
            "co-a",
            "router",
            "127.0.0.1",
            snmp=SnmpSettings(
                version="3", port=port, timeout_s=0.2, retries=0, user="v", critical_interfaces=(1,)
            ),
        )
        readings = [await poller.poll(des), await poller.poll(no_auth)]
    assert [(False, "timeout")] * 2 == [(r.ok, r.failure) for r in readings]
    assert (None, None, 1) == (poller.v3_engine("des"), poller.v3_engine("noauth"), poller.engine_count)


class _ScriptedAgent(asyncio.DatagramProtocol):
    """An "agent" built from pysnmp's USM pieces (tests.unit.test_snmp_v3) that answers engine
    discovery properly, then every authenticated request with the report it is told to."""

    def __init__(self, answer: str) -> None:
        self.answer = answer
        self.requests = 0
        self.boots = 7
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | Any, ...]) -> None:
        message = read_message(data)
        unknown_engine = [((1, 3, 6, 1, 6, 3, 15, 1, 1, 4, 0), rfc1902.Counter32(1))]
        if not message.flags & 1:  # discovery
            reply = fake.noauth_message(V2C.ReportPDU, unknown_engine, msg_id=message.msg_id)
        elif self.answer == "unknownEngineID":
            self.requests += 1
            reply = fake.noauth_message(V2C.ReportPDU, unknown_engine, msg_id=message.msg_id)
        else:  # an authenticated notInTimeWindow report, newer boots every time
            self.requests += 1
            self.boots += 1
            reply = fake.answer(
                priv=None,
                msg_id=message.msg_id,
                boots=self.boots,
                engine_time=5,
                pdu_cls=V2C.ReportPDU,
                varbinds=[((1, 3, 6, 1, 6, 3, 15, 1, 1, 2, 0), rfc1902.Counter32(1))],
            )
        if self.transport is not None:
            self.transport.sendto(reply, addr)


@pytest.mark.parametrize(
    ("answer", "reason"),
    [
        ("unknownEngineID", "unknown engine id (v3 discovery failed)"),
        ("notInTimeWindow", "not in time window (v3)"),
    ],
)
async def test_discovery_and_resync_are_tried_once_per_poll(
    pollers: Callable[..., SnmpPoller], answer: str, reason: str
) -> None:
    """An agent that keeps refusing after a fresh discovery, or after one time resync, fails the
    poll with its report as the reason; the poller does not loop."""
    loop = asyncio.get_running_loop()
    agent = _ScriptedAgent(answer)
    transport, _ = await loop.create_datagram_endpoint(
        lambda: agent, local_addr=("127.0.0.1", 0), family=socket.AF_INET
    )
    try:
        port = int(transport.get_extra_info("sockname")[1])
        endpoint = SnmpEndpoint(
            "127.0.0.1", port, "public", "baton", "SHA", fake.AUTH_PASS, "AES", fake.PRIV_PASS, "x"
        )
        reading = await pollers(endpoint).poll(v3_device(endpoint))
    finally:
        transport.close()
    assert (False, "auth", reason) == (reading.ok, reading.failure, reading.reason)
    assert (1 if answer == "unknownEngineID" else 2) == agent.requests
