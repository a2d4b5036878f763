"""The SNMP reads Baton relies on, against the lab's agent AND real net-snmp snmpd.

If a test here passes for snmpd and fails for the lab (or the reverse), the lab is lying to
Baton's tests. Readers: the net-snmp CLI (`snmpget -m ''`, numeric OIDs) and a pysnmp client.
"""

from __future__ import annotations

import subprocess
from collections.abc import AsyncIterator
from typing import Any

import pytest
from pysnmp.hlapi.v3arch.asyncio import (
    CommunityData,
    ContextData,
    ObjectIdentity,
    ObjectType,
    SnmpEngine,
    UdpTransportTarget,
    UsmUserData,
    bulk_walk_cmd,
    get_cmd,
    next_cmd,
    usmAesCfb128Protocol,
    usmHMAC192SHA256AuthProtocol,
    usmHMACSHAAuthProtocol,
)

from tests.peers.endpoints import SnmpEndpoint
from tests.peers.snmpd import snmp_v3_args

SYS_NAME = "1.3.6.1.2.1.1.5.0"
SYS_UPTIME = "1.3.6.1.2.1.1.3.0"
IF_OPER_STATUS = "1.3.6.1.2.1.2.2.1.8"
AUTH = {"SHA": usmHMACSHAAuthProtocol, "SHA256": usmHMAC192SHA256AuthProtocol}


@pytest.fixture(params=["lab", "snmpd"])
def agent(request: pytest.FixtureRequest) -> SnmpEndpoint:
    """An SNMP endpoint: the lab's simulated device, then a real snmpd."""
    fixture = "lab_snmp_device" if request.param == "lab" else "snmpd_agent"
    endpoint: SnmpEndpoint = request.getfixturevalue(fixture).endpoint
    return endpoint


def cli(tool: str, endpoint: SnmpEndpoint, *args: str, v3: bool = False, community: str | None = None) -> Any:
    auth = snmp_v3_args(endpoint) if v3 else ["-v2c", "-c", community or endpoint.community]
    argv = [tool, "-m", "", "-On", "-t", "1", "-r", "0", *auth, f"{endpoint.host}:{endpoint.port}", *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=15, check=False)


def value_of(line: str) -> str:
    """'.1.3.6.1.2.1.1.5.0 = STRING: "x"' -> 'x'."""
    return line.split(": ", 1)[1].strip().strip('"')


@pytest.fixture
async def engine() -> AsyncIterator[SnmpEngine]:
    eng = SnmpEngine()
    try:
        yield eng
    finally:
        eng.close_dispatcher()


def v3_auth(endpoint: SnmpEndpoint, auth_key: str | None = None) -> UsmUserData:
    return UsmUserData(
        endpoint.v3_user,
        auth_key or endpoint.v3_auth_key,
        endpoint.v3_priv_key,
        authProtocol=AUTH[endpoint.v3_auth_protocol],
        privProtocol=usmAesCfb128Protocol,
    )


async def pysnmp_get(
    eng: SnmpEngine, endpoint: SnmpEndpoint, auth: Any, *oids: str
) -> tuple[Any, dict[str, Any]]:
    target = await UdpTransportTarget.create((endpoint.host, endpoint.port), timeout=1, retries=0)
    err, status, _, var_binds = await get_cmd(
        eng, auth, target, ContextData(), *(ObjectType(ObjectIdentity(o)) for o in oids)
    )
    return err or (status.prettyPrint() if status else None), {str(o): v for o, v in var_binds}


def test_cli_v2c_get_sys_name(agent: SnmpEndpoint) -> None:
    """snmpget v2c of sysName.0 returns the agent's sysName."""
    result = cli("snmpget", agent, SYS_NAME)
    assert 0 == result.returncode, result.stderr
    assert agent.sys_name == value_of(result.stdout)


def test_cli_v3_authpriv_get_sys_name_and_uptime(agent: SnmpEndpoint) -> None:
    """snmpget v3 authPriv returns sysName.0 and a TimeTicks sysUpTime.0."""
    result = cli("snmpget", agent, SYS_NAME, SYS_UPTIME, v3=True)
    assert 0 == result.returncode, result.stderr
    lines = result.stdout.splitlines()
    assert agent.sys_name == value_of(lines[0])
    assert "Timeticks" in lines[1]


def test_cli_walk_if_oper_status(agent: SnmpEndpoint) -> None:
    """GETNEXT walk and GETBULK walk of ifOperStatus both list every interface up(1), in order."""
    walk = cli("snmpwalk", agent, IF_OPER_STATUS)
    bulk = cli("snmpbulkwalk", agent, IF_OPER_STATUS)
    expected = [f".{IF_OPER_STATUS}.{i} = INTEGER: 1" for i in (1, 2, 3, 4)]
    assert expected == walk.stdout.splitlines()
    assert expected == bulk.stdout.splitlines()


def test_cli_wrong_community_times_out(agent: SnmpEndpoint) -> None:
    """A wrong community gets no answer at all (timeout), not an error response."""
    result = cli("snmpget", agent, SYS_NAME, community="not-the-community")
    assert 1 == result.returncode
    assert "Timeout" in result.stderr


async def test_pysnmp_v2c_and_v3_read_sys_name(agent: SnmpEndpoint, engine: SnmpEngine) -> None:
    """pysnmp reads the same sysName.0 over v2c and over v3 authPriv."""
    err2, v2 = await pysnmp_get(engine, agent, CommunityData(agent.community, mpModel=1), SYS_NAME)  # noqa: S508
    err3, v3 = await pysnmp_get(engine, agent, v3_auth(agent), SYS_NAME)
    assert (None, None) == (err2, err3)
    assert [agent.sys_name, agent.sys_name] == [str(v2[SYS_NAME]), str(v3[SYS_NAME])]


async def test_pysnmp_if_oper_status_by_numeric_oid(agent: SnmpEndpoint, engine: SnmpEngine) -> None:
    """ifOperStatus.1 by numeric OID is up(1); a non-existent row reads as missing, not as an error."""
    auth = CommunityData(agent.community, mpModel=1)  # noqa: S508
    err, values = await pysnmp_get(engine, agent, auth, f"{IF_OPER_STATUS}.1", f"{IF_OPER_STATUS}.999")
    assert err is None
    assert 1 == int(values[f"{IF_OPER_STATUS}.1"])
    # snmpd says noSuchObject here (its rows are separate registrations), the lab noSuchInstance
    assert type(values[f"{IF_OPER_STATUS}.999"]).__name__ in {"NoSuchInstance", "NoSuchObject"}


async def test_pysnmp_next_and_bulk_walk(agent: SnmpEndpoint, engine: SnmpEngine) -> None:
    """GETNEXT from the column start and a GETBULK walk give the same ifOperStatus rows."""
    target = await UdpTransportTarget.create((agent.host, agent.port), timeout=1, retries=0)
    auth = v3_auth(agent)
    _, _, _, first = await next_cmd(
        engine, auth, target, ContextData(), ObjectType(ObjectIdentity(IF_OPER_STATUS))
    )
    rows = []
    async for err, status, _, var_binds in bulk_walk_cmd(
        engine,
        auth,
        target,
        ContextData(),
        0,
        10,
        ObjectType(ObjectIdentity(IF_OPER_STATUS)),
        lexicographicMode=False,
    ):
        assert (None, 0) == (err, int(status))
        rows += [(str(o), int(v)) for o, v in var_binds]
    expected = [(f"{IF_OPER_STATUS}.{i}", 1) for i in (1, 2, 3, 4)]
    assert expected[0] == (str(first[0][0]), int(first[0][1]))
    assert expected == rows


async def test_pysnmp_wrong_v3_key_fails(agent: SnmpEndpoint, engine: SnmpEngine) -> None:
    """A wrong v3 auth key never yields values: the read ends in an error indication."""
    err, values = await pysnmp_get(engine, agent, v3_auth(agent, auth_key="wrong-key-123456"), SYS_NAME)
    assert err is not None
    assert {} == values
