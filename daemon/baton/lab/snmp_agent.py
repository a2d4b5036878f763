"""One SNMP agent serving every lab device of the process, each on its own address.

Theory of operation: a single pysnmp `SnmpEngine` owns one UDP socket per device
(`<device address>:<port>`), each registered under its own transport domain
(`1.3.6.1.6.1.1.<n>`). pysnmp records the domain a request arrived on in the
`rfc3412.receiveMessage:request` execution context; `_DeviceContext.get_mib_instrum` reads it
there and hands the stock GET/GETNEXT/GETBULK responders the MIB of that device. So pysnmp does
all of the protocol work (v2c communities, v3 USM authPriv, GETBULK), and this module only says
what each device's values are. Faults act on the socket before pysnmp sees a datagram: an
unreachable device drops it (the client times out, as with a dead box), and so does one whose
path from the datagram's source is cut; a slow one delays it.

Numeric OIDs served (no MIB compilation anywhere):

    1.3.6.1.2.1.1.1.0     sysDescr       OCTET STRING   device.sys_descr
    1.3.6.1.2.1.1.2.0     sysObjectID    OID            1.3.6.1.4.1.8072.9999.4242.2.<role>
    1.3.6.1.2.1.1.3.0     sysUpTime      TimeTicks      since device.boot_time (a reboot resets it)
    1.3.6.1.2.1.1.4.0     sysContact     OCTET STRING   contact of the running mgmt config
    1.3.6.1.2.1.1.5.0     sysName        OCTET STRING   device id
    1.3.6.1.2.1.1.6.0     sysLocation    OCTET STRING   office id
    1.3.6.1.2.1.2.1.0     ifNumber       INTEGER
    1.3.6.1.2.1.2.2.1.1.N ifIndex        INTEGER
    1.3.6.1.2.1.2.2.1.2.N ifDescr        OCTET STRING
    1.3.6.1.2.1.2.2.1.7.N ifAdminStatus  INTEGER up(1)
    1.3.6.1.2.1.2.2.1.8.N ifOperStatus   INTEGER up(1) / down(2)
    1.3.6.1.4.1.8072.9999.4242.1.1.0  labOfficePower  INTEGER mains(1) / onBattery(2)

The lab enterprise subtree 1.3.6.1.4.1.8072.9999.4242 sits under NET-SNMP's "playpen"
(netSnmpPlaypen, reserved for experiments), so it cannot collide with a real vendor's OIDs.
sysObjectID roles: core(1), agg(2), olt(3), other(9).

All devices share one engine, hence one snmpEngineID; Baton's client discovers it per target
like any other, so this does not show on the wire except as equal IDs.
"""

from __future__ import annotations

import asyncio
import bisect
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Literal

import structlog
from pysnmp.carrier.asyncio.dgram import udp
from pysnmp.entity import config, engine
from pysnmp.entity.rfc3413 import cmdrsp
from pysnmp.entity.rfc3413.context import SnmpContext
from pysnmp.proto import rfc1902, rfc1905

from baton.lab.device import LabDevice

log = structlog.get_logger("baton.lab.snmp")

LAB_ENTERPRISE = (1, 3, 6, 1, 4, 1, 8072, 9999, 4242)
OID_SYS_DESCR = (1, 3, 6, 1, 2, 1, 1, 1, 0)
OID_SYS_OBJECT_ID = (1, 3, 6, 1, 2, 1, 1, 2, 0)
OID_SYS_UPTIME = (1, 3, 6, 1, 2, 1, 1, 3, 0)
OID_SYS_CONTACT = (1, 3, 6, 1, 2, 1, 1, 4, 0)
OID_SYS_NAME = (1, 3, 6, 1, 2, 1, 1, 5, 0)
OID_SYS_LOCATION = (1, 3, 6, 1, 2, 1, 1, 6, 0)
OID_IF_NUMBER = (1, 3, 6, 1, 2, 1, 2, 1, 0)
OID_IF_ENTRY = (1, 3, 6, 1, 2, 1, 2, 2, 1)
OID_IF_OPER_STATUS = (*OID_IF_ENTRY, 8)
OID_LAB_OFFICE_POWER = (*LAB_ENTERPRISE, 1, 1, 0)

POWER_MAINS = 1
POWER_ON_BATTERY = 2

ROLE_NUMBERS = {"core": 1, "agg": 2, "olt": 3}

AuthProtocol = Literal["SHA", "SHA256"]
_AUTH = {"SHA": config.USM_AUTH_HMAC96_SHA, "SHA256": config.USM_AUTH_HMAC192_SHA256}


@dataclass(frozen=True, slots=True)
class SnmpCredentials:
    """What the lab's agent accepts: one community and one v3 authPriv (AES-128) user."""

    community: str
    v3_user: str
    v3_auth_key: str
    v3_priv_key: str
    v3_auth_protocol: AuthProtocol = "SHA256"
    v3_priv_protocol: Literal["AES"] = "AES"

    def __repr__(self) -> str:  # secrets stay out of logs and tracebacks
        return f"SnmpCredentials(v3_user={self.v3_user!r}, v3_auth_protocol={self.v3_auth_protocol!r})"


def uptime_ticks(boot_time: float, now: float) -> int:
    """sysUpTime in hundredths of a second since `boot_time`, wrapped like a TimeTicks."""
    return int(max(0.0, now - boot_time) * 100) % (1 << 32)


class _DeviceMib:
    """The MIB view of one device: the duck type pysnmp's responders expect of a MIB instrum."""

    def __init__(self, device: LabDevice, office_power: Callable[[str], int]) -> None:
        self.device = device
        self._office_power = office_power

    def _table(self) -> list[tuple[tuple[int, ...], Any]]:
        # Built per request: a handful of rows, and it always shows the device's current state.
        dev = self.device
        role = ROLE_NUMBERS.get(dev.role, 9)
        rows: list[tuple[tuple[int, ...], Any]] = [
            (OID_SYS_DESCR, rfc1902.OctetString(dev.sys_descr)),
            (OID_SYS_OBJECT_ID, rfc1902.ObjectName((*LAB_ENTERPRISE, 2, role))),
            (OID_SYS_UPTIME, rfc1902.TimeTicks(uptime_ticks(dev.boot_time, time.monotonic()))),
            (OID_SYS_CONTACT, rfc1902.OctetString(dev.mgmt.contact)),
            (OID_SYS_NAME, rfc1902.OctetString(dev.id)),
            (OID_SYS_LOCATION, rfc1902.OctetString(dev.office)),
            (OID_IF_NUMBER, rfc1902.Integer(len(dev.interfaces))),
        ]
        ifaces = sorted(dev.interfaces, key=lambda i: i.if_index)
        for column in (1, 2, 7, 8):
            for iface in ifaces:
                value: Any
                if column == 1:
                    value = rfc1902.Integer(iface.if_index)
                elif column == 2:
                    value = rfc1902.OctetString(iface.name)
                elif column == 7:
                    value = rfc1902.Integer(1)
                else:
                    value = rfc1902.Integer(1 if iface.oper_up else 2)
                rows.append(((*OID_IF_ENTRY, column, iface.if_index), value))
        rows.append((OID_LAB_OFFICE_POWER, rfc1902.Integer(self._office_power(dev.office))))
        return rows

    def read_variables(self, *var_binds: Any, **context: Any) -> list[tuple[Any, Any]]:
        table = dict(self._table())
        out: list[tuple[Any, Any]] = []
        for name, _ in var_binds:
            oid = tuple(name)
            if oid in table:
                out.append((rfc1902.ObjectName(oid), table[oid]))
            elif any(oid[: len(row) - 1] == row[:-1] for row in table):  # a known object, no such row
                out.append((rfc1902.ObjectName(oid), rfc1905.noSuchInstance))
            else:
                out.append((rfc1902.ObjectName(oid), rfc1905.noSuchObject))
        return out

    def read_next_variables(self, *var_binds: Any, **context: Any) -> list[tuple[Any, Any]]:
        rows = self._table()
        oids = [oid for oid, _ in rows]
        out: list[tuple[Any, Any]] = []
        for name, _ in var_binds:
            oid = tuple(name)
            i = bisect.bisect_right(oids, oid)
            if i < len(rows):
                out.append((rfc1902.ObjectName(rows[i][0]), rows[i][1]))
            else:
                out.append((rfc1902.ObjectName(oid), rfc1905.endOfMibView))
        return out

    def write_variables(self, *var_binds: Any, **context: Any) -> list[tuple[Any, Any]]:
        raise NotImplementedError  # no SetCommandResponder is registered


class _DeviceContext(SnmpContext):  # type: ignore[misc]
    """Selects the device's MIB by the transport domain (= local socket) a request came in on."""

    def __init__(self, snmp_engine: Any, mibs: dict[tuple[int, ...], _DeviceMib]) -> None:
        super().__init__(snmp_engine)
        self._engine = snmp_engine
        self._mibs = mibs

    def get_mib_instrum(self, contextName: bytes = b"") -> Any:
        request = self._engine.observer.get_execution_context("rfc3412.receiveMessage:request")
        return self._mibs[tuple(request["transportDomain"])]


class _DeviceUdpTransport(udp.UdpAsyncioTransport):  # type: ignore[misc]
    """A device's socket: applies the device's faults before pysnmp sees a datagram."""

    def __init__(self, device: LabDevice, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(loop=loop)
        self.device = device

    def datagram_received(self, datagram: bytes, address: Any) -> None:
        faults = self.device.faults
        if not faults.reaches(str(address[0])):
            return
        if faults.slow_s > 0:
            self.loop.call_later(faults.slow_s, super().datagram_received, datagram, address)
        else:
            super().datagram_received(datagram, address)

    def send_raw(self, data: bytes, address: tuple[str, int]) -> None:
        if self.transport is not None:
            self.transport.sendto(data, address)


class SnmpAgent:
    """All lab devices' SNMP agents. Start with `await start(devices)`, stop with `close()`."""

    def __init__(self, credentials: SnmpCredentials, *, port: int) -> None:
        self.credentials = credentials
        self.port = port
        self._engine: Any = None
        self._mibs: dict[tuple[int, ...], _DeviceMib] = {}
        self._transports: dict[str, _DeviceUdpTransport] = {}
        self._domains: dict[str, tuple[int, ...]] = {}
        self._office_power: dict[str, int] = {}
        self._responders: list[Any] = []

    def set_office_power(self, office: str, state: int) -> None:
        self._office_power[office] = state

    def office_power(self, office: str) -> int:
        return self._office_power.get(office, POWER_MAINS)

    async def start(self, devices: Iterable[LabDevice]) -> None:
        loop = asyncio.get_running_loop()
        eng = engine.SnmpEngine()
        self._engine = eng
        creds = self.credentials
        config.add_v1_system(eng, "lab-area", creds.community)
        config.add_v3_user(
            eng,
            creds.v3_user,
            _AUTH[creds.v3_auth_protocol],
            creds.v3_auth_key,
            config.USM_PRIV_CFB128_AES,
            creds.v3_priv_key,
        )
        context = _DeviceContext(eng, self._mibs)
        self._responders = [
            cmdrsp.GetCommandResponder(eng, context),
            cmdrsp.NextCommandResponder(eng, context),
            cmdrsp.BulkCommandResponder(eng, context),
        ]
        opening: list[asyncio.Future[Any]] = []
        for n, device in enumerate(devices, start=1):
            domain = (*udp.DOMAIN_NAME, n)
            transport = _DeviceUdpTransport(device, loop)
            transport.open_server_mode((device.address, self.port))
            config.add_transport(eng, domain, transport)
            self._mibs[domain] = _DeviceMib(device, self.office_power)
            self._transports[device.id] = transport
            self._domains[device.id] = domain
            opening.append(transport._lport)
        # open_server_mode only schedules the bind; wait so a taken address fails start().
        await asyncio.gather(*opening)
        log.info("lab.snmp_started", devices=len(self._transports), port=self.port)

    def send_raw(self, device_id: str, data: bytes, address: tuple[str, int]) -> None:
        """Send a datagram from the device's own socket (source = the device's address)."""
        self._transports[device_id].send_raw(data, address)

    async def close(self) -> None:
        eng = self._engine
        if eng is None:
            return
        self._engine = None
        for responder in self._responders:
            responder.close(eng)
        eng.close_dispatcher()
        # Let the transports' connection_lost callbacks run before the loop may close.
        await asyncio.sleep(0)
        log.info("lab.snmp_stopped", devices=len(self._transports))
