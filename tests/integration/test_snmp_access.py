"""PysnmpAccess (SNMP GET/SET for playbook steps) against a real net-snmp agent on loopback."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Callable
from dataclasses import replace

import pytest
from pysnmp.proto import rfc1902

from baton.adapters.errors import AdapterError, AdapterTimeoutError
from baton.adapters.snmp_access import (
    PysnmpAccess,
    SnmpError,
    SnmpTimeoutError,
    oid_tuple,
    typed_value,
    value_text,
)
from baton.core.model import Device, SecretRef, SnmpSettings
from tests.peers.endpoints import SnmpEndpoint
from tests.peers.snmpd import (
    IF_ADMIN_STATUS_OID,
    IF_DESCR_OID,
    RW_COMMUNITY,
    SYS_NAME_OID,
    SnmpdProcess,
)

pytestmark = pytest.mark.peer("snmpd")

SECRETS = {"ro": "public", "rw": RW_COMMUNITY, "wrong": "not-the-community-7", "short": "short"}


def make_resolver(endpoint: SnmpEndpoint) -> Callable[[SecretRef], str]:
    values = {**SECRETS, "auth": endpoint.v3_auth_key, "priv": endpoint.v3_priv_key}

    def resolve(ref: SecretRef) -> str:
        return values[ref.name]

    return resolve


def v2c_device(endpoint: SnmpEndpoint, community: str = "rw", *, timeout_s: float = 2.0) -> Device:
    return Device(
        id="gc-agg-1",
        office="gc",
        role="aggregation",
        address=endpoint.host,
        snmp=SnmpSettings(
            version="2c",
            port=endpoint.port,
            community=SecretRef("env", community),
            timeout_s=timeout_s,
            retries=0,
        ),
    )


def v3_device(endpoint: SnmpEndpoint, *, auth: str = "auth") -> Device:
    return Device(
        id="gc-agg-3",
        office="gc",
        role="aggregation",
        address=endpoint.host,
        snmp=SnmpSettings(
            version="3",
            port=endpoint.port,
            user=endpoint.v3_user,
            auth_protocol=endpoint.v3_auth_protocol,  # type: ignore[arg-type]
            auth_key=SecretRef("env", auth),
            priv_protocol=endpoint.v3_priv_protocol,  # type: ignore[arg-type]
            priv_key=SecretRef("env", "priv"),
            timeout_s=2.0,
            retries=0,
        ),
    )


@pytest.fixture
async def access(snmpd_agent: SnmpdProcess) -> AsyncIterator[PysnmpAccess]:
    async with PysnmpAccess(make_resolver(snmpd_agent.endpoint)) as snmp:
        yield snmp


def cli_get(agent: SnmpdProcess, oid: str) -> str:
    """The value as net-snmp's own snmpget reads it (-Oqv: the value only)."""
    result = agent.cli("snmpget", "-Oqv", oid)
    assert 0 == result.returncode, result.stderr
    return result.stdout.strip()


# --- against snmpd -----------------------------------------------------------------------------


async def test_get_sys_name_v2c(snmpd_agent: SnmpdProcess, access: PysnmpAccess) -> None:
    """A v2c GET of sysName.0 returns the agent's name as text."""
    device = v2c_device(snmpd_agent.endpoint, "ro")
    assert snmpd_agent.sys_name == await access.get(device, SYS_NAME_OID, timeout_s=5)
    assert snmpd_agent.sys_name == await access.get(device, "." + SYS_NAME_OID, timeout_s=5)


async def test_get_integer_is_decimal_text(snmpd_agent: SnmpdProcess, access: PysnmpAccess) -> None:
    """An INTEGER comes back as its decimal text: what `expect: {equals: 1}` compares."""
    assert "1" == await access.get(v2c_device(snmpd_agent.endpoint), f"{IF_ADMIN_STATUS_OID}.1", timeout_s=5)


async def test_set_if_admin_status_and_read_it_back(snmpd_agent: SnmpdProcess, access: PysnmpAccess) -> None:
    """SET ifAdminStatus.2 = 2 (down): our GET and net-snmp's snmpget both see 2; others untouched."""
    device = v2c_device(snmpd_agent.endpoint)
    oid = f"{IF_ADMIN_STATUS_OID}.2"
    await access.set(device, oid, "integer", "2", timeout_s=5)
    assert "2" == await access.get(device, oid, timeout_s=5)
    assert "2" == cli_get(snmpd_agent, oid)
    assert "1" == cli_get(snmpd_agent, f"{IF_ADMIN_STATUS_OID}.1")
    await access.set(device, oid, "i", "1", timeout_s=5)  # net-snmp's type letter works as well
    assert "1" == cli_get(snmpd_agent, oid)


async def test_set_of_a_read_only_oid_is_refused_with_the_agents_reason(
    snmpd_agent: SnmpdProcess, access: PysnmpAccess
) -> None:
    """ifDescr is read-only: the agent's notWritable, with device and operation, nothing changed."""
    oid = f"{IF_DESCR_OID}.1"
    with pytest.raises(SnmpError) as caught:
        await access.set(v2c_device(snmpd_agent.endpoint), oid, "string", "renamed", timeout_s=5)
    assert f"snmp set {oid} on gc-agg-1 failed: notWritable" == str(caught.value)
    assert ("gc-agg-1", f"set {oid}", "notWritable") == (
        caught.value.device,
        caught.value.operation,
        caught.value.cause,
    )
    assert '"ge-0/0/1"' == cli_get(snmpd_agent, oid)


async def test_set_with_the_wrong_type_is_refused(snmpd_agent: SnmpdProcess, access: PysnmpAccess) -> None:
    """An OCTET STRING into the INTEGER ifAdminStatus: the agent says wrongType."""
    oid = f"{IF_ADMIN_STATUS_OID}.3"
    with pytest.raises(SnmpError, match=r"^snmp set .* on gc-agg-1 failed: wrongType$"):
        await access.set(v2c_device(snmpd_agent.endpoint), oid, "string", "2", timeout_s=5)
    assert "1" == cli_get(snmpd_agent, oid)


async def test_set_with_the_read_only_community_is_refused(
    snmpd_agent: SnmpdProcess, access: PysnmpAccess
) -> None:
    """The rocommunity may not SET: an error naming the cause (not a timeout)."""
    oid = f"{IF_ADMIN_STATUS_OID}.4"
    with pytest.raises(SnmpError) as caught:
        await access.set(v2c_device(snmpd_agent.endpoint, "ro"), oid, "integer", "2", timeout_s=5)
    assert not isinstance(caught.value, AdapterTimeoutError)
    assert "noAccess" == caught.value.cause
    assert "1" == cli_get(snmpd_agent, oid)


async def test_wrong_community_is_a_timeout_that_names_no_secret(
    snmpd_agent: SnmpdProcess, access: PysnmpAccess
) -> None:
    """net-snmp ignores an unknown community: the call ends as a timeout error, without the secret."""
    device = v2c_device(snmpd_agent.endpoint, "wrong", timeout_s=0.3)
    with pytest.raises(SnmpTimeoutError) as caught:
        await access.get(device, SYS_NAME_OID, timeout_s=5)
    assert isinstance(caught.value, AdapterTimeoutError)
    assert f"snmp get {SYS_NAME_OID} on gc-agg-1 failed: no answer within 0.3 s" == str(caught.value)
    assert SECRETS["wrong"] not in str(caught.value) + repr(caught.value)


async def test_the_call_timeout_caps_the_devices_timeout(
    snmpd_agent: SnmpdProcess, access: PysnmpAccess
) -> None:
    """A call's timeout shorter than the device's SNMP timeout is the one that applies."""
    device = v2c_device(snmpd_agent.endpoint, "wrong", timeout_s=3600)
    with pytest.raises(SnmpTimeoutError) as caught:
        await access.set(device, f"{IF_ADMIN_STATUS_OID}.1", "integer", "2", timeout_s=0.3)
    assert 0.3 == caught.value.timeout_s


async def test_rotated_community_is_picked_up(snmpd_agent: SnmpdProcess) -> None:
    """Credentials are resolved on every call: a fixed secret works on the next call."""
    values = {"c": SECRETS["wrong"]}
    device = v2c_device(snmpd_agent.endpoint, "c", timeout_s=0.3)
    async with PysnmpAccess(lambda ref: values[ref.name]) as snmp:
        with pytest.raises(SnmpTimeoutError):
            await snmp.get(device, SYS_NAME_OID, timeout_s=5)
        values["c"] = "public"
        assert snmpd_agent.sys_name == await snmp.get(device, SYS_NAME_OID, timeout_s=5)


@pytest.mark.parametrize("user", [0, 1, 2], ids=["sha-aes", "sha256-aes", "sha512-aes256"])
async def test_get_v3_auth_priv(snmpd_agent: SnmpdProcess, user: int) -> None:
    """v3 authPriv GET with each of the agent's users (one access: several users, one engine each)."""
    endpoint = snmpd_agent.endpoints[user]
    async with PysnmpAccess(make_resolver(endpoint)) as snmp:
        assert snmpd_agent.sys_name == await snmp.get(v3_device(endpoint), SYS_NAME_OID, timeout_s=5)
        assert "1" == await snmp.get(v3_device(endpoint), f"{IF_ADMIN_STATUS_OID}.1", timeout_s=5)


async def test_v3_users_share_an_access(snmpd_agent: SnmpdProcess, access: PysnmpAccess) -> None:
    """Devices with different v3 users (and a v2c one) through one access instance."""
    devices = [v3_device(e) for e in snmpd_agent.endpoints] + [v2c_device(snmpd_agent.endpoint, "ro")]
    for device in devices:
        assert snmpd_agent.sys_name == await access.get(device, SYS_NAME_OID, timeout_s=5)


async def test_v3_wrong_auth_key_fails_without_the_key(
    snmpd_agent: SnmpdProcess, access: PysnmpAccess
) -> None:
    """A wrong v3 auth key: the agent's report says wrong digest; the key is never shown."""
    device = v3_device(snmpd_agent.endpoint, auth="wrong")
    with pytest.raises(SnmpError, match=r"failed: wrong digest") as caught:
        await access.get(device, SYS_NAME_OID, timeout_s=3)
    assert SECRETS["wrong"] not in str(caught.value) + repr(caught.value)


async def test_get_of_an_absent_oid_names_it(snmpd_agent: SnmpdProcess, access: PysnmpAccess) -> None:
    """A GET of something the agent does not have: noSuchObject/noSuchInstance as the cause."""
    with pytest.raises(SnmpError, match=r"failed: noSuch(Object|Instance)$"):
        await access.get(v2c_device(snmpd_agent.endpoint), f"{IF_ADMIN_STATUS_OID}.99", timeout_s=5)


async def test_problems_found_before_sending(snmpd_agent: SnmpdProcess, access: PysnmpAccess) -> None:
    """Bad values, MIB names, a missing SNMP config and short v3 keys fail with a clear cause."""
    device = v2c_device(snmpd_agent.endpoint)
    with pytest.raises(SnmpError, match=r"failed: bad integer value 'up'"):
        await access.set(device, f"{IF_ADMIN_STATUS_OID}.1", "integer", "up", timeout_s=5)
    with pytest.raises(SnmpError, match=r"failed: not a numeric OID"):
        await access.get(device, "SNMPv2-MIB::sysName.0", timeout_s=5)
    with pytest.raises(SnmpError, match=r"failed: device has no snmp settings"):
        await access.get(replace(device, snmp=None), SYS_NAME_OID, timeout_s=5)
    with pytest.raises(SnmpError, match=r"failed: snmp v3 auth_key is shorter than 8 characters"):
        await access.get(v3_device(snmpd_agent.endpoint, auth="short"), SYS_NAME_OID, timeout_s=5)
    with pytest.raises(AdapterError, match=r"failed: credential env:missing cannot be resolved"):
        await access.get(v2c_device(snmpd_agent.endpoint, "missing"), SYS_NAME_OID, timeout_s=5)


# --- values (pure) -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("type_", "text", "expected"),
    [
        ("integer", "-5", rfc1902.Integer32(-5)),
        ("i", "2", rfc1902.Integer32(2)),
        ("unsigned", "7", rfc1902.Unsigned32(7)),
        ("counter32", "8", rfc1902.Counter32(8)),
        ("gauge32", "9", rfc1902.Gauge32(9)),
        ("timeticks", "100", rfc1902.TimeTicks(100)),
        ("string", "gc → bb", rfc1902.OctetString("gc → bb".encode())),
        ("hex", "0x00:ff 10", rfc1902.OctetString(b"\x00\xff\x10")),
        ("ipaddress", "10.1.2.3", rfc1902.IpAddress("10.1.2.3")),
        ("oid", ".1.3.6.1.4.1", rfc1902.ObjectName((1, 3, 6, 1, 4, 1))),
    ],
)
def test_typed_value(type_: str, text: str, expected: object) -> None:
    value = typed_value(type_, text)
    assert type(expected) is type(value)
    assert expected == value


@pytest.mark.parametrize(
    ("type_", "text", "message"),
    [
        ("integer", "2147483648", "bad integer value"),
        ("unsigned", "-1", "bad unsigned value"),
        ("hex", "0xfg", "bad hex value"),
        ("ipaddress", "10.1.2", "bad ipaddress value"),
        ("oid", "iso.3", "bad oid value"),
        ("float", "1.5", "unknown SNMP type"),
    ],
)
def test_typed_value_refuses(type_: str, text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        typed_value(type_, text)


def test_value_text() -> None:
    assert "42" == value_text(rfc1902.Integer32(42))
    assert "gc-core-1" == value_text(rfc1902.OctetString(b"gc-core-1"))
    assert "0x00ff" == value_text(rfc1902.OctetString(b"\x00\xff"))
    assert "10.0.0.1" == value_text(rfc1902.IpAddress("10.0.0.1"))
    assert "1.3.6.1" == value_text(rfc1902.ObjectName((1, 3, 6, 1)))
    assert (1, 3, 6, 1) == oid_tuple(".1.3.6.1")


async def test_requests_leave_from_the_vantages_source_address() -> None:
    """With `vantage.source_address`, a playbook step's SNMP request comes from that address
    (a management ACL, or a lab cut from one vantage, sees it so); without, the kernel's."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))
        silent.setblocking(False)
        endpoint = SnmpEndpoint(
            "127.0.0.1", silent.getsockname()[1], "public", "u", "SHA", "a" * 8, "AES", "p" * 8, "x"
        )
        device = v2c_device(endpoint, timeout_s=0.3)
        senders = []
        for source in ("127.0.0.12", None):
            async with PysnmpAccess(make_resolver(endpoint), source_address=source) as snmp:
                with pytest.raises(SnmpTimeoutError):
                    await snmp.get(device, SYS_NAME_OID, timeout_s=0.3)
            _, (host, _) = await asyncio.get_running_loop().sock_recvfrom(silent, 2048)
            senders.append(host)
        assert ["127.0.0.12", "127.0.0.1"] == senders
