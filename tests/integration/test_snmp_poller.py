"""SnmpPoller and PollScheduler against real net-snmp agents on loopback (and in a netns)."""

from __future__ import annotations

import asyncio
import json
import socket
import sys
import textwrap
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any, cast

import pytest
from pyasn1.codec.ber import decoder as ber_decoder
from pyasn1.codec.ber import encoder as ber_encoder
from pysnmp.proto import api as snmp_api
from pysnmp.proto import rfc1902, rfc1905

from baton.adapters.snmp import PollScheduler, SnmpPoller, SnmpReading, convert
from baton.adapters.snmp_fast import GetTemplate, decode_response, encode_oid, encode_request
from baton.core.model import Device, SecretRef, SnmpSettings, frozen_map
from baton.metrics import Metrics
from tests.peers.endpoints import SnmpEndpoint
from tests.peers.netns import SnmpdNetns
from tests.peers.snmpd import SnmpdProcess

pytestmark = pytest.mark.peer("snmpd")

SYS_NAME_OID = "1.3.6.1.2.1.1.5.0"
REPO = Path(__file__).resolve().parents[2]


def make_resolver(endpoint: SnmpEndpoint) -> Callable[[SecretRef], str]:
    secrets = {
        "COMMUNITY": endpoint.community,
        "AUTH": endpoint.v3_auth_key,
        "PRIV": endpoint.v3_priv_key,
        "WRONG": "wrong-secret-42",
    }

    def resolve(ref: SecretRef) -> str:
        return secrets[ref.name]

    return resolve


def v2c_device(
    endpoint: SnmpEndpoint,
    device_id: str = "dev1",
    *,
    community: str = "COMMUNITY",
    critical: tuple[int, ...] = (1,),
    timeout_s: float = 1.0,
    retries: int = 0,
) -> Device:
    return Device(
        id=device_id,
        office="co-a",
        role="router",
        address=endpoint.host,
        snmp=SnmpSettings(
            version="2c",
            port=endpoint.port,
            timeout_s=timeout_s,
            retries=retries,
            community=SecretRef("env", community),
            critical_interfaces=critical,
            oids=frozen_map({"sys_name": SYS_NAME_OID}),
        ),
    )


def v3_device(endpoint: SnmpEndpoint, device_id: str = "dev1", *, auth_key: str = "AUTH") -> Device:
    return Device(
        id=device_id,
        office="co-a",
        role="router",
        address=endpoint.host,
        snmp=SnmpSettings(
            version="3",
            port=endpoint.port,
            timeout_s=1.0,
            retries=0,
            user=endpoint.v3_user,
            auth_protocol=endpoint.v3_auth_protocol,  # type: ignore[arg-type]
            auth_key=SecretRef("env", auth_key),
            priv_protocol=endpoint.v3_priv_protocol,  # type: ignore[arg-type]
            priv_key=SecretRef("env", "PRIV"),
            critical_interfaces=(1, 2),
            oids=frozen_map({"sys_name": SYS_NAME_OID}),
        ),
    )


@pytest.fixture
async def poller_for(snmpd_agent: SnmpdProcess) -> Callable[[SnmpEndpoint], SnmpPoller]:
    pollers: list[SnmpPoller] = []

    def make(endpoint: SnmpEndpoint) -> SnmpPoller:
        poller = SnmpPoller(make_resolver(endpoint), max_concurrency=50, metrics=Metrics())
        pollers.append(poller)
        return poller

    yield make  # type: ignore[misc]
    for poller in pollers:
        poller.close()


async def test_v2c_poll_reads_uptime_interfaces_and_extra_oids(
    snmpd_agent: SnmpdProcess, poller_for: Callable[[SnmpEndpoint], SnmpPoller]
) -> None:
    """A v2c poll of a healthy agent is ok and carries sysUpTime, ifOperStatus and extra OIDs."""
    endpoint = snmpd_agent.endpoint
    reading = await poller_for(endpoint).poll(v2c_device(endpoint, critical=(1, 3)))
    assert (True, "", None) == (reading.ok, reading.reason, reading.failure)
    assert {1: 1, 3: 1} == dict(reading.if_oper_status)
    assert {"sys_name": endpoint.sys_name} == dict(reading.extra)
    assert reading.sys_uptime is not None
    assert reading.sys_uptime > 0


@pytest.mark.parametrize("user_index", [0, 1, 2])
async def test_v3_auth_priv_poll_is_ok_for_every_protocol_pair(
    snmpd_agent: SnmpdProcess, poller_for: Callable[[SnmpEndpoint], SnmpPoller], user_index: int
) -> None:
    """v3 authPriv polls succeed with SHA/AES, SHA-256/AES and SHA-512/AES-256 users."""
    endpoint = snmpd_agent.endpoints[user_index]
    reading = await poller_for(endpoint).poll(v3_device(endpoint))
    assert (True, "") == (reading.ok, reading.reason)
    assert {1: 1, 2: 1} == dict(reading.if_oper_status)
    assert endpoint.sys_name == reading.extra["sys_name"]


async def test_wrong_community_is_a_timeout_with_tries_in_the_reason(
    snmpd_agent: SnmpdProcess, poller_for: Callable[[SnmpEndpoint], SnmpPoller]
) -> None:
    """An agent ignores a wrong community: the poll times out after timeout × tries."""
    endpoint = snmpd_agent.endpoint
    device = v2c_device(endpoint, community="WRONG", timeout_s=0.3, retries=1)
    reading = await poller_for(endpoint).poll(device)
    assert (False, "timeout", "timeout after 0.3 s × 2 tries") == (
        reading.ok,
        reading.failure,
        reading.reason,
    )


async def test_wrong_v3_key_fails_with_auth_reason_and_no_secret(
    snmpd_agent: SnmpdProcess, poller_for: Callable[[SnmpEndpoint], SnmpPoller]
) -> None:
    """A wrong v3 auth key gives an auth failure naming the cause, and no key anywhere."""
    endpoint = snmpd_agent.endpoint
    metrics = Metrics()
    poller = SnmpPoller(make_resolver(endpoint), metrics=metrics)
    try:
        reading = await poller.poll(v3_device(endpoint, auth_key="WRONG"))
    finally:
        poller.close()
    assert (False, "auth", "wrong digest (v3 auth failure)") == (reading.ok, reading.failure, reading.reason)
    exposed = repr(reading) + metrics.render().decode()
    for secret in ("wrong-secret-42", endpoint.v3_priv_key, endpoint.v3_auth_key):
        assert secret not in exposed


async def test_same_v3_user_with_different_keys_does_not_spoil_the_good_device(
    snmpd_factory: Callable[..., SnmpdProcess],
) -> None:
    """Two devices sharing a v3 user name with different keys: the right keys still work."""
    agent = snmpd_factory("127.0.0.1")
    endpoint = agent.endpoint
    poller = SnmpPoller(make_resolver(endpoint))
    try:
        good, bad = await asyncio.gather(
            poller.poll(v3_device(endpoint, "good")),
            poller.poll(v3_device(endpoint, "bad", auth_key="WRONG")),
        )
        good_again = await poller.poll(v3_device(endpoint, "good"))
    finally:
        poller.close()
    assert (True, False, True) == (good.ok, bad.ok, good_again.ok)
    assert "auth" == bad.failure


async def test_critical_interface_down_fails_the_poll_with_its_index(
    snmpd_agent: SnmpdProcess, poller_for: Callable[[SnmpEndpoint], SnmpPoller]
) -> None:
    """A critical interface whose ifOperStatus is down(2) makes the poll not ok: "ifIndex 3 down"."""
    snmpd_agent.set_if_oper_status(3, 2)
    endpoint = snmpd_agent.endpoint
    reading = await poller_for(endpoint).poll(v2c_device(endpoint, critical=(1, 3)))
    assert (False, "ifIndex 3 down") == (reading.ok, reading.reason)
    assert {1: 1, 3: 2} == dict(reading.if_oper_status)


async def test_no_critical_interfaces_walks_the_whole_column(
    snmpd_agent: SnmpdProcess, poller_for: Callable[[SnmpEndpoint], SnmpPoller]
) -> None:
    """Without critical interfaces, every ifOperStatus is read by a GETBULK walk, informational only."""
    snmpd_agent.set_if_oper_status(2, 2)
    endpoint = snmpd_agent.endpoint
    reading = await poller_for(endpoint).poll(v2c_device(endpoint, critical=()))
    assert (True, {1: 1, 2: 2, 3: 1, 4: 1}) == (reading.ok, dict(reading.if_oper_status))


async def test_unresolvable_credential_is_reported_by_reference_only(
    snmpd_agent: SnmpdProcess, poller_for: Callable[[SnmpEndpoint], SnmpPoller]
) -> None:
    """A secret that cannot be resolved fails the poll as "credential env:X cannot be resolved"."""
    endpoint = snmpd_agent.endpoint
    reading = await poller_for(endpoint).poll(v2c_device(endpoint, community="MISSING"))
    assert (False, "credential", "credential env:MISSING cannot be resolved") == (
        reading.ok,
        reading.failure,
        reading.reason,
    )


async def test_stopped_agent_times_out_then_recovers_and_reboot_is_detected(
    snmpd_agent: SnmpdProcess, poller_for: Callable[[SnmpEndpoint], SnmpPoller]
) -> None:
    """Agent stopped → timeout; started again → ok, with `rebooted` since sysUpTime went back."""
    endpoint = snmpd_agent.endpoint
    poller = poller_for(endpoint)
    device = v2c_device(endpoint, timeout_s=0.3)
    await asyncio.sleep(1.2)  # let sysUpTime grow past what a fresh agent reports
    before = await poller.poll(device)
    snmpd_agent.stop()
    during = await poller.poll(device)
    snmpd_agent.start()
    after = await poller.poll(device)
    assert (True, False, True) == (before.ok, during.ok, after.ok)
    assert "timeout after 0.3 s × 1 try" == during.reason
    assert (False, True) == (before.rebooted, after.rebooted)


async def test_agents_on_several_loopback_addresses_polled_concurrently(
    snmpd_factory: Callable[..., SnmpdProcess],
) -> None:
    """Agents on 127.0.0.2 and 127.0.0.3 are polled at once over v2c and v3, each answering itself,
    with no pysnmp engine at all (both take the fast paths)."""
    agents = [snmpd_factory(host, sys_name=f"co-a-{host}") for host in ("127.0.0.2", "127.0.0.3")]
    poller = SnmpPoller(make_resolver(agents[0].endpoint))
    devices = [v2c_device(a.endpoint, f"dev{i}") for i, a in enumerate(agents)] + [
        v3_device(a.endpoint, f"v3dev{i}") for i, a in enumerate(agents)
    ]
    try:
        readings = await asyncio.gather(*(poller.poll(d) for d in devices))
        engines = poller.engine_count
    finally:
        poller.close()
    assert [True] * 4 == [r.ok for r in readings]
    assert ["co-a-127.0.0.2", "co-a-127.0.0.3"] * 2 == [r.extra["sys_name"] for r in readings]
    assert 0 == engines


# --- misbehaving agents --------------------------------------------------------------------


class _UdpResponder(asyncio.DatagramProtocol):
    def __init__(self, answer: Callable[[bytes], bytes]) -> None:
        self.answer = answer
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | object, int]) -> None:
        if self.transport is not None:
            self.transport.sendto(self.answer(data), addr)


@pytest.fixture
async def udp_responder() -> Iterator[Callable[[Callable[[bytes], bytes]], asyncio.Future[int]]]:
    """Start a UDP server on 127.0.0.1:0 that answers every datagram with answer(request)."""
    transports: list[asyncio.DatagramTransport] = []

    async def start(answer: Callable[[bytes], bytes]) -> int:
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(
            lambda: _UdpResponder(answer), local_addr=("127.0.0.1", 0), family=socket.AF_INET
        )
        transports.append(transport)

        return int(transport.get_extra_info("sockname")[1])

    yield start  # type: ignore[misc]
    for transport in transports:
        transport.close()


def _fake_endpoint(port: int) -> SnmpEndpoint:
    return SnmpEndpoint("127.0.0.1", port, "public", "u", "SHA", "authpass123", "AES", "privpass123", "fake")


async def test_junk_answer_is_not_ok_and_raises_nothing(
    udp_responder: Callable[..., asyncio.Future[int]],
) -> None:
    """An "agent" answering random bytes yields a failed reading (no exception escapes)."""
    answered: list[bytes] = []

    def junk(request: bytes) -> bytes:
        answered.append(request)
        return b"\x30\x82\xff\x00 definitely not BER \x00\xff"

    endpoint = _fake_endpoint(await udp_responder(junk))
    poller = SnmpPoller(make_resolver(endpoint))
    try:
        reading = await poller.poll(v2c_device(endpoint, timeout_s=0.3))
    finally:
        poller.close()
    assert (False, "timeout", 1) == (reading.ok, reading.failure, len(answered))


def _answer_with_wrong_types(request: bytes) -> bytes:
    """Decode a v2c GET and answer: sysUpTime as a string, ifOperStatus as noSuchInstance."""
    module = snmp_api.PROTOCOL_MODULES[snmp_api.SNMP_VERSION_2C]
    message, _ = ber_decoder.decode(request, asn1Spec=module.Message())
    request_pdu = module.apiMessage.get_pdu(message)
    response_pdu = module.apiPDU.get_response(request_pdu)
    answers = []
    for oid, _ in module.apiPDU.get_varbinds(request_pdu):
        if str(oid) == "1.3.6.1.2.1.1.3.0":
            answers.append((oid, rfc1902.OctetString("yesterday")))
        else:
            answers.append((oid, rfc1905.noSuchInstance))
    module.apiPDU.set_varbinds(response_pdu, answers)
    module.apiMessage.set_pdu(message, response_pdu)
    return bytes(ber_encoder.encode(message))


async def test_wrong_value_types_are_garbage_with_reason(
    udp_responder: Callable[..., asyncio.Future[int]],
) -> None:
    """A well-formed answer with a string for sysUpTime and noSuchInstance for an interface is garbage."""
    port = await udp_responder(_answer_with_wrong_types)
    endpoint = _fake_endpoint(port)
    poller = SnmpPoller(make_resolver(endpoint))
    try:
        reading = await poller.poll(v2c_device(endpoint, critical=(3,)))
    finally:
        poller.close()
    expected = (
        "sysUpTime is OctetString 'yesterday', expected TimeTicks; "
        "ifIndex 3 ifOperStatus is noSuchInstance, expected INTEGER"
    )
    assert (False, "garbage", expected) == (reading.ok, reading.failure, reading.reason)


# --- scheduler -----------------------------------------------------------------------------


async def _collect(queue: asyncio.Queue[SnmpReading], count: int) -> list[SnmpReading]:
    return [await asyncio.wait_for(queue.get(), timeout=10.0) for _ in range(count)]


async def test_scheduler_polls_every_device_repeatedly_and_stops_cleanly(snmpd_agent: SnmpdProcess) -> None:
    """Each device is polled once per interval; stop() ends the loop and every poll in flight."""
    endpoint = snmpd_agent.endpoint
    poller = SnmpPoller(make_resolver(endpoint))
    devices = [v2c_device(endpoint, f"dev{i}") for i in range(3)]
    scheduler = PollScheduler(poller, devices, interval_s=0.2)
    scheduler.start()
    try:
        readings = await _collect(scheduler.readings, 9)
    finally:
        await scheduler.stop()
        poller.close()
    assert {"dev0", "dev1", "dev2"} == {r.device for r in readings}
    assert all(r.ok for r in readings)


async def test_poll_now_polls_at_once_outside_the_schedule(snmpd_agent: SnmpdProcess) -> None:
    """poll_now re-polls a device immediately even when its next turn is an hour away."""
    endpoint = snmpd_agent.endpoint
    poller = SnmpPoller(make_resolver(endpoint))
    now = [1000.0]  # a frozen clock: nothing is ever due on its own
    scheduler = PollScheduler(
        poller, [v2c_device(endpoint, "dev1")], interval_s=3600.0, clock=lambda: now[0] + 1
    )
    scheduler.start()
    try:
        await scheduler.poll_now(["dev1", "not-in-inventory"])
        (reading,) = await _collect(scheduler.readings, 1)
    finally:
        await scheduler.stop()
        poller.close()
    assert ("dev1", True) == (reading.device, reading.ok)


# --- network namespace: link cut and silent drop -------------------------------------------

_CLIENT_SCRIPT = textwrap.dedent(
    """
    import asyncio, json, sys
    from baton.adapters.snmp import SnmpPoller
    from baton.core.model import Device, SecretRef, SnmpSettings

    host, port, community, timeout_s = sys.argv[1], int(sys.argv[2]), sys.argv[3], float(sys.argv[4])

    async def main() -> None:
        poller = SnmpPoller(lambda ref: community)
        settings = SnmpSettings(port=port, timeout_s=timeout_s, retries=0, community=SecretRef("env", "C"),
                                critical_interfaces=(1,))
        device = Device("netns-dev1", "co-a", "router", host, snmp=settings)
        reading = await poller.poll(device)
        poller.close()
        print(json.dumps({"ok": reading.ok, "failure": reading.failure, "reason": reading.reason}))

    asyncio.run(main())
    """
)


def _poll_from_client_ns(pair: SnmpdNetns, script: Path, timeout_s: float) -> dict[str, object]:
    endpoint = pair.endpoint
    argv = [
        sys.executable,
        str(script),
        endpoint.host,
        str(endpoint.port),
        endpoint.community,
        str(timeout_s),
    ]
    result = pair.run_in_client_ns(argv, timeout=30.0)
    assert 0 == result.returncode, result.stderr
    parsed: dict[str, object] = json.loads(result.stdout.strip().splitlines()[-1])
    return parsed


def test_link_cut_and_udp_drop_time_out_and_recover(snmpd_netns: SnmpdNetns, tmp_path: Path) -> None:
    """From the client namespace: link down and an nft drop both give timeouts; undoing them heals."""
    script = tmp_path / "poll_once.py"
    script.write_text(f"import sys\nsys.path.insert(0, {str(REPO / 'daemon')!r})\n" + _CLIENT_SCRIPT)

    def healed() -> dict[str, object]:
        """A link coming back up may take a moment: poll (bounded) until an answer comes."""
        for _ in range(10):
            outcome = _poll_from_client_ns(snmpd_netns, script, timeout_s=2.0)
            if outcome["ok"]:
                break
        return outcome

    outcomes = [healed()]
    snmpd_netns.cut()
    outcomes.append(_poll_from_client_ns(snmpd_netns, script, timeout_s=0.3))
    snmpd_netns.restore()
    outcomes.append(healed())
    snmpd_netns.drop_udp()
    outcomes.append(_poll_from_client_ns(snmpd_netns, script, timeout_s=0.3))
    snmpd_netns.undrop_udp()
    outcomes.append(healed())
    ok = {"ok": True, "failure": None, "reason": ""}
    timeout = {"ok": False, "failure": "timeout", "reason": "timeout after 0.3 s × 1 try"}
    assert [ok, timeout, ok, timeout, ok] == outcomes


# --- v2c fast path (baton.adapters.snmp_fast) ------------------------------------------------

V2C = snmp_api.PROTOCOL_MODULES[snmp_api.SNMP_VERSION_2C]


def _comparable(reading: SnmpReading) -> tuple[object, ...]:
    return (
        reading.ok,
        reading.reason,
        reading.failure,
        dict(reading.if_oper_status),
        dict(reading.extra),
        reading.warnings,
    )


@pytest.mark.parametrize("critical", [(1, 3), ()], ids=["critical", "walk"])
async def test_fast_path_reads_exactly_what_pysnmp_reads(
    snmpd_agent: SnmpdProcess, critical: tuple[int, ...]
) -> None:
    """Differential against a real snmpd: both codecs give the same reading, interface down included."""
    snmpd_agent.set_if_oper_status(3, 2)
    endpoint = snmpd_agent.endpoint
    base = v2c_device(endpoint, critical=critical)
    assert base.snmp is not None
    oids = {"sys_name": SYS_NAME_OID, "nothing": "1.3.6.1.4.1.99999.1.0", "descr": "1.3.6.1.2.1.1.1.0"}
    device = Device(
        base.id, base.office, base.role, base.address, snmp=replace(base.snmp, oids=frozen_map(oids))
    )
    readings = []
    for fast in (True, False):
        poller = SnmpPoller(make_resolver(endpoint), fast_v2c=fast)
        try:
            readings.append(await poller.poll(device))
        finally:
            poller.close()
    fast_reading, slow_reading = readings
    assert _comparable(slow_reading) == _comparable(fast_reading)
    assert ("nothing (1.3.6.1.4.1.99999.1.0) is noSuchObject",) == fast_reading.warnings
    assert 2 == fast_reading.if_oper_status[3]
    assert fast_reading.sys_uptime is not None
    assert slow_reading.sys_uptime is not None


def _exchange(host: str, port: int, datagram: bytes) -> bytes:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(5.0)
        sock.connect((host, port))
        sock.send(datagram)
        return sock.recv(65535)


def test_net_snmp_responses_decode_like_pyasn1(snmpd_agent: SnmpdProcess) -> None:
    """Bytes captured from a real snmpd (GET with every value kind it serves, and a GETBULK page)
    read the same with the fast reader as with pysnmp's own decoder."""
    endpoint = snmpd_agent.endpoint
    names = [
        (1, 3, 6, 1, 2, 1, 1, 3, 0),  # TimeTicks
        (1, 3, 6, 1, 2, 1, 1, 5, 0),  # OCTET STRING
        (1, 3, 6, 1, 2, 1, 1, 2, 0),  # OBJECT IDENTIFIER
        (1, 3, 6, 1, 2, 1, 2, 2, 1, 8, 1),  # INTEGER
        (1, 3, 6, 1, 2, 1, 1, 3, 1),  # noSuchInstance
        (1, 3, 6, 1, 4, 1, 99999, 1, 0),  # noSuchObject
    ]
    rid = 2**24 + 42
    captured = [
        _exchange(endpoint.host, endpoint.port, GetTemplate(endpoint.community.encode(), names).encode(rid)),
        _exchange(
            endpoint.host,
            endpoint.port,
            encode_request(
                endpoint.community.encode(), rid, [(1, 3, 6, 1, 2, 1, 2, 2)], pdu_tag=0xA5, max_repetitions=30
            ),
        ),
    ]
    for raw in captured:
        message, _ = ber_decoder.decode(raw, asn1Spec=V2C.Message())
        pdu = V2C.apiMessage.get_pdu(message)
        expected = [(encode_oid(tuple(oid)), convert(value)) for oid, value in V2C.apiPDU.get_varbinds(pdu)]
        response = decode_response(raw)
        assert (rid, expected) == (response.request_id, list(response.varbinds))
    kinds = {value.type for _, value in decode_response(captured[0]).varbinds}
    assert {
        "TimeTicks",
        "OctetString",
        "ObjectIdentifier",
        "Integer",
        "noSuchInstance",
        "noSuchObject",
    } == kinds
    assert 30 == len(decode_response(captured[1]).varbinds)


def _request_of(datagram: bytes) -> tuple[Any, Any, list[Any]]:
    message, _ = ber_decoder.decode(datagram, asn1Spec=V2C.Message())
    pdu = V2C.apiMessage.get_pdu(message)
    return message, pdu, [oid for oid, _ in V2C.apiPDU.get_varbinds(pdu)]


def _respond(
    datagram: bytes,
    values: Callable[[list[Any]], list[tuple[Any, Any]]],
    *,
    error_status: int = 0,
    error_index: int = 0,
    request_id_delta: int = 0,
) -> bytes:
    message, pdu, names = _request_of(datagram)
    response = V2C.apiPDU.get_response(pdu)
    V2C.apiPDU.set_request_id(response, int(V2C.apiPDU.get_request_id(pdu)) + request_id_delta)
    V2C.apiPDU.set_error_status(response, error_status)
    V2C.apiPDU.set_error_index(response, error_index)
    V2C.apiPDU.set_varbinds(response, values(names))
    V2C.apiMessage.set_pdu(message, response)
    return bytes(ber_encoder.encode(message))


def _healthy(names: list[Any]) -> list[tuple[Any, Any]]:
    out: list[tuple[Any, Any]] = []
    for oid in names:
        if str(oid) == "1.3.6.1.2.1.1.3.0":
            out.append((oid, rfc1902.TimeTicks(4242)))
        elif str(oid).startswith("1.3.6.1.2.1.2.2.1.8."):
            out.append((oid, rfc1902.Integer(1)))
        else:
            out.append((oid, rfc1902.OctetString("fake")))
    return out


async def _poll_fake(
    udp_responder: Callable[..., Any], answer: Callable[[bytes], bytes], **device: Any
) -> tuple[SnmpReading, int]:
    endpoint = _fake_endpoint(await udp_responder(answer))
    poller = SnmpPoller(make_resolver(endpoint))
    try:
        reading = await poller.poll(v2c_device(endpoint, **device))
    finally:
        poller.close()
    return reading, poller.unmatched_datagrams


async def test_fast_path_garbage_after_a_matching_request_id_is_garbage(
    udp_responder: Callable[..., Any],
) -> None:
    """An answer that carries our request-id but a malformed body fails as "garbage", no exception."""

    def broken(request: bytes) -> bytes:
        good = _respond(request, _healthy)
        assert b"\x43\x02\x10\x92" in good  # TimeTicks 4242
        return good.replace(b"\x43\x02\x10\x92", b"\x43\x02\xff\xff")  # TimeTicks -1: out of range

    reading, _ = await _poll_fake(udp_responder, broken, timeout_s=0.5)
    assert (False, "garbage") == (reading.ok, reading.failure)
    assert reading.reason.startswith("undecodable response (")


async def test_fast_path_answer_for_other_oids_is_garbage(udp_responder: Callable[..., Any]) -> None:
    """A well-formed answer whose varbinds name other OIDs than asked is garbage."""

    def other_oids(request: bytes) -> bytes:
        return _respond(request, lambda names: [((1, 3, 6, 1, 9), rfc1902.Integer(1)) for _ in names])

    reading, _ = await _poll_fake(udp_responder, other_oids)
    assert (False, "garbage", "response varbinds do not match the request") == (
        reading.ok,
        reading.failure,
        reading.reason,
    )


async def test_fast_path_error_status_names_the_oid(udp_responder: Callable[..., Any]) -> None:
    """error-status genErr at index 2 is an error naming the second OID asked (ifOperStatus.1)."""

    def gen_err(request: bytes) -> bytes:
        return _respond(request, _healthy, error_status=5, error_index=2)

    reading, _ = await _poll_fake(udp_responder, gen_err)
    assert (False, "error", "genErr at 1.3.6.1.2.1.2.2.1.8.1") == (
        reading.ok,
        reading.failure,
        reading.reason,
    )


async def test_fast_path_ignores_foreign_request_ids_and_junk(udp_responder: Callable[..., Any]) -> None:
    """Junk and an answer for another request-id are dropped (counted), the real answer is used."""
    sent: list[bytes] = []

    class Tricky(_UdpResponder):
        def datagram_received(self, data: bytes, addr: tuple[str | object, int]) -> None:
            sent.append(data)
            if self.transport is not None:
                self.transport.sendto(b"\x30\x03junk", addr)
                self.transport.sendto(_respond(data, _healthy, request_id_delta=1), addr)
                self.transport.sendto(_respond(data, _healthy), addr)

    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(
        lambda: Tricky(lambda _: b""), local_addr=("127.0.0.1", 0), family=socket.AF_INET
    )
    try:
        endpoint = _fake_endpoint(int(transport.get_extra_info("sockname")[1]))
        poller = SnmpPoller(make_resolver(endpoint))
        try:
            reading = await poller.poll(v2c_device(endpoint))
            unmatched = poller.unmatched_datagrams
        finally:
            poller.close()
    finally:
        transport.close()
    assert (True, 4242, {"sys_name": "fake"}) == (reading.ok, reading.sys_uptime, dict(reading.extra))
    assert (1, 2) == (len(sent), unmatched)


async def test_fast_path_answer_from_another_address_is_not_accepted(
    udp_responder: Callable[..., Any],
) -> None:
    """A correct answer sent from a different port than the one asked is dropped: timeout."""
    loop = asyncio.get_running_loop()
    other, _ = await loop.create_datagram_endpoint(
        asyncio.DatagramProtocol, local_addr=("127.0.0.1", 0), family=socket.AF_INET
    )
    answered: list[bytes] = []

    def from_elsewhere(request: bytes) -> bytes:
        answered.append(request)
        return b""  # the listening socket itself sends an empty datagram (junk)

    class Spoofer(_UdpResponder):
        def datagram_received(self, data: bytes, addr: tuple[str | object, int]) -> None:
            answered.append(data)
            other.sendto(_respond(data, _healthy), addr)

    transport, _ = await loop.create_datagram_endpoint(
        lambda: Spoofer(from_elsewhere), local_addr=("127.0.0.1", 0), family=socket.AF_INET
    )
    try:
        endpoint = _fake_endpoint(int(transport.get_extra_info("sockname")[1]))
        poller = SnmpPoller(make_resolver(endpoint))
        try:
            reading = await poller.poll(v2c_device(endpoint, timeout_s=0.3))
            unmatched = poller.unmatched_datagrams
        finally:
            poller.close()
    finally:
        transport.close()
        other.close()
    assert (False, "timeout", 1, 1) == (reading.ok, reading.failure, len(answered), unmatched)


async def test_fast_path_retry_resends_the_same_request(udp_responder: Callable[..., Any]) -> None:
    """With retries=1, a lost first request is resent (same bytes, same request-id) and answered."""
    seen: list[bytes] = []

    def second_time_lucky(request: bytes) -> bytes:
        seen.append(request)
        return _respond(request, _healthy) if len(seen) == 2 else b""  # b"": nothing is sent

    reading, unmatched = await _poll_fake(udp_responder, second_time_lucky, timeout_s=0.3, retries=1)
    assert (True, 2, True, 0) == (reading.ok, len(seen), seen[0] == seen[1], unmatched)


async def test_fast_path_close_ends_polls_in_flight(udp_responder: Callable[..., Any]) -> None:
    """close() while a poll waits for an answer ends it as "poller closed"."""
    got_request = asyncio.Event()

    def silent(_request: bytes) -> bytes:
        got_request.set()
        return b""

    endpoint = _fake_endpoint(await udp_responder(silent))
    poller = SnmpPoller(make_resolver(endpoint))
    task = asyncio.ensure_future(poller.poll(v2c_device(endpoint, timeout_s=30.0)))
    await got_request.wait()
    poller.close()
    reading = await task
    assert (False, "error", "poller closed") == (reading.ok, reading.failure, reading.reason)


async def test_fast_path_keeps_many_devices_apart(snmpd_factory: Callable[..., SnmpdProcess]) -> None:
    """200 devices over two agents, all in flight at once through one socket: each gets its own
    agent's answer (request-ids route them), and a second round reuses the templates."""
    agents = [snmpd_factory(host, sys_name=f"co-b-{host}") for host in ("127.0.0.2", "127.0.0.3")]
    poller = SnmpPoller(make_resolver(agents[0].endpoint), max_concurrency=200)
    devices = [v2c_device(agents[i % 2].endpoint, f"dev{i}", timeout_s=5.0, retries=1) for i in range(200)]
    try:
        rounds = [await asyncio.gather(*(poller.poll(d) for d in devices)) for _ in range(2)]
        engines, targets = poller.engine_count, poller.target_count
    finally:
        poller.close()
    for readings in rounds:
        assert [(True, f"co-b-127.0.0.{2 + i % 2}") for i in range(200)] == [
            (r.ok, r.extra["sys_name"]) for r in readings
        ]
    assert (0, 200) == (engines, targets)


async def test_fast_path_over_ipv6_loopback() -> None:
    """A device at ::1 is polled over the fast path's AF_INET6 socket and its answer is matched."""
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(
        lambda: _UdpResponder(lambda request: _respond(request, _healthy)),
        local_addr=("::1", 0),
        family=socket.AF_INET6,
    )
    try:
        port = int(transport.get_extra_info("sockname")[1])
        endpoint = replace(_fake_endpoint(port), host="::1")
        poller = SnmpPoller(make_resolver(endpoint))
        try:
            reading = await poller.poll(v2c_device(endpoint))
        finally:
            poller.close()
    finally:
        transport.close()
    assert (True, 4242, {1: 1}) == (reading.ok, reading.sys_uptime, dict(reading.if_oper_status))


@pytest.mark.parametrize("fast", [True, False], ids=["fast", "pysnmp"])
async def test_walk_stops_at_end_of_mib_view(udp_responder: Callable[..., Any], fast: bool) -> None:
    """An agent whose MIB ends inside the ifOperStatus column answers endOfMibView (repeating the
    last OID): the walk ends there with what it read, it is not "non-increasing" garbage."""

    def answer(request: bytes) -> bytes:
        _, pdu, _ = _request_of(request)
        if not isinstance(pdu, V2C.GetBulkRequestPDU):
            return _respond(request, _healthy)
        column = "1.3.6.1.2.1.2.2.1.8"
        last = rfc1902.ObjectName(f"{column}.2")
        return _respond(
            request,
            lambda _names: [
                (rfc1902.ObjectName(f"{column}.1"), rfc1902.Integer(1)),
                (last, rfc1902.Integer(2)),
                (last, rfc1905.endOfMibView),
            ],
        )

    endpoint = _fake_endpoint(await udp_responder(answer))
    poller = SnmpPoller(make_resolver(endpoint), fast_v2c=fast)
    try:
        reading = await poller.poll(v2c_device(endpoint, critical=()))
    finally:
        poller.close()
    assert (True, "", {1: 1, 2: 2}) == (reading.ok, reading.reason, dict(reading.if_oper_status))
