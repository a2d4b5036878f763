"""SNMPv2c traps sent by lab devices to the trap targets of their RUNNING management config.

Each trap leaves from the device's own SNMP socket, so its source address is the device's
address, as a real box's would be. A handover that rewrites `trap-target` changes where the
next trap goes, with no restart.

Notifications (numeric OIDs, the value of snmpTrapOID.0 = 1.3.6.1.6.3.1.1.4.1.0):

    1.3.6.1.6.3.1.1.5.1                 coldStart       on power-on (sent once the device is up)
    1.3.6.1.6.3.1.1.5.3                 linkDown        varbinds ifIndex, ifAdminStatus, ifOperStatus
    1.3.6.1.6.3.1.1.5.4                 linkUp          same varbinds
    1.3.6.1.4.1.8072.9999.4242.1.0.1    labPowerFail    just before an office powers off (UPS alarm)
    1.3.6.1.4.1.8072.9999.4242.1.0.2    labPowerRestored  when an office's power is back

Lab power notifications carry labTrapOffice 1.3.6.1.4.1.8072.9999.4242.1.2.0 (the office id,
OCTET STRING) and labOfficePower 1.3.6.1.4.1.8072.9999.4242.1.1.0 (mains(1) / onBattery(2)).
Every trap starts with sysUpTime.0 and snmpTrapOID.0 as RFC 3416 requires.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import structlog
from pyasn1.codec.ber import decoder, encoder
from pysnmp.proto import rfc1902
from pysnmp.proto.api import v2c

from baton.lab.device import Interface, LabDevice
from baton.lab.snmp_agent import (
    LAB_ENTERPRISE,
    OID_IF_ENTRY,
    OID_LAB_OFFICE_POWER,
    OID_SYS_UPTIME,
    POWER_MAINS,
    POWER_ON_BATTERY,
    SnmpAgent,
    uptime_ticks,
)

log = structlog.get_logger("baton.lab.traps")

OID_SNMP_TRAP_OID = (1, 3, 6, 1, 6, 3, 1, 1, 4, 1, 0)
TRAP_COLD_START = (1, 3, 6, 1, 6, 3, 1, 1, 5, 1)
TRAP_LINK_DOWN = (1, 3, 6, 1, 6, 3, 1, 1, 5, 3)
TRAP_LINK_UP = (1, 3, 6, 1, 6, 3, 1, 1, 5, 4)
TRAP_POWER_FAIL = (*LAB_ENTERPRISE, 1, 0, 1)
TRAP_POWER_RESTORED = (*LAB_ENTERPRISE, 1, 0, 2)
OID_LAB_TRAP_OFFICE = (*LAB_ENTERPRISE, 1, 2, 0)


def _dotted(oid: tuple[int, ...]) -> str:
    return ".".join(map(str, oid))


def encode_v2c_trap(
    community: str, uptime: int, trap_oid: tuple[int, ...], var_binds: list[tuple[tuple[int, ...], Any]]
) -> bytes:
    pdu = v2c.SNMPv2TrapPDU()
    v2c.apiTrapPDU.set_defaults(pdu)
    v2c.apiTrapPDU.set_varbinds(
        pdu,
        [
            (OID_SYS_UPTIME, rfc1902.TimeTicks(uptime)),
            (OID_SNMP_TRAP_OID, rfc1902.ObjectName(trap_oid)),
            *var_binds,
        ],
    )
    msg = v2c.Message()
    v2c.apiMessage.set_defaults(msg)
    v2c.apiMessage.set_community(msg, community)
    v2c.apiMessage.set_pdu(msg, pdu)
    return bytes(encoder.encode(msg))


@dataclass(frozen=True, slots=True)
class ReceivedTrap:
    """A decoded v2c trap, with plain values: for tests and for the lab's own tooling."""

    community: str
    trap_oid: str
    var_binds: dict[str, str]  # dotted OID -> prettyPrint() value


def decode_v2c_trap(data: bytes) -> ReceivedTrap:
    """Decode one v2c trap datagram. Raises ValueError if it is not one."""
    try:
        msg, _ = decoder.decode(data, asn1Spec=v2c.Message())
        pdu = v2c.apiMessage.get_pdu(msg)
        if not pdu.isSameTypeWith(v2c.SNMPv2TrapPDU()):
            raise ValueError("not an SNMPv2-Trap-PDU")
        binds = {str(oid): val.prettyPrint() for oid, val in v2c.apiPDU.get_varbinds(pdu)}
        community = str(v2c.apiMessage.get_community(msg))
    except Exception as exc:  # pyasn1 raises many types; callers want one
        raise ValueError(f"undecodable trap: {exc}") from None
    return ReceivedTrap(
        community=community, trap_oid=binds.get(_dotted(OID_SNMP_TRAP_OID), ""), var_binds=binds
    )


class TrapSender:
    """Sends a device's notifications to every trap target of its running mgmt config."""

    def __init__(self, agent: SnmpAgent) -> None:
        self._agent = agent

    def send(
        self, device: LabDevice, trap_oid: tuple[int, ...], var_binds: list[tuple[tuple[int, ...], Any]]
    ) -> int:
        """Send one trap; returns how many targets it went to (none when the device is unreachable)."""
        if not device.faults.reachable:
            return 0
        uptime = uptime_ticks(device.boot_time, time.monotonic())
        sent = 0
        for target in device.mgmt.trap_targets:
            if not device.faults.reaches(target.address):
                continue  # the path to that collector is cut
            data = encode_v2c_trap(target.community, uptime, trap_oid, var_binds)
            try:
                self._agent.send_raw(device.id, data, (target.address, target.port))
            except OSError as exc:
                log.warning("lab.trap_send_failed", device=device.id, target=target.address, error=str(exc))
                continue
            sent += 1
        log.debug("lab.trap_sent", device=device.id, trap=_dotted(trap_oid), targets=sent)
        return sent

    def cold_start(self, device: LabDevice) -> int:
        return self.send(device, TRAP_COLD_START, [])

    def link_changed(self, device: LabDevice, iface: Interface) -> int:
        return self.send(
            device,
            TRAP_LINK_UP if iface.oper_up else TRAP_LINK_DOWN,
            [
                ((*OID_IF_ENTRY, 1, iface.if_index), rfc1902.Integer(iface.if_index)),
                ((*OID_IF_ENTRY, 7, iface.if_index), rfc1902.Integer(1)),
                ((*OID_IF_ENTRY, 8, iface.if_index), rfc1902.Integer(1 if iface.oper_up else 2)),
            ],
        )

    def power(self, device: LabDevice, *, failing: bool) -> int:
        return self.send(
            device,
            TRAP_POWER_FAIL if failing else TRAP_POWER_RESTORED,
            [
                (OID_LAB_TRAP_OFFICE, rfc1902.OctetString(device.office)),
                (OID_LAB_OFFICE_POWER, rfc1902.Integer(POWER_ON_BATTERY if failing else POWER_MAINS)),
            ],
        )
