"""SNMP v1 and v2c traps without pysnmp: a strict reader of the two trap shapes.

Why: pysnmp spends ~2.5 ms of CPU on one v2c trap (pyasn1's generic BER decoder, the message
processing and notification receiver layers), so a receiver built on it takes ~400 traps a
second and the kernel drops the rest of a storm. A trap is one of two fixed shapes, so this
module reads exactly those (in the spirit of `snmp_fast`, whose BER primitives it uses):

    Message    ::= SEQUENCE { version INTEGER (0 = v1, 1 = v2c), community OCTET STRING, data }
    v2c data   ::= [7] IMPLICIT SEQUENCE { request-id Integer32, error-status INTEGER,
                                           error-index INTEGER (0..2^31-1), variable-bindings }
    v1 data    ::= [4] IMPLICIT SEQUENCE { enterprise OBJECT IDENTIFIER, agent-addr IpAddress,
                                           generic-trap INTEGER (0..6), specific-trap INTEGER,
                                           time-stamp TimeTicks, variable-bindings }

`read_header` reads the version, the community and where the PDU is (v3 messages stop at the
version: they are not this module's); the receiver checks the community before anything else is
read. `TrapDecoder.read_trap` reads the rest and returns the varbinds exactly as pysnmp hands a
notification to its callback: for v2c as sent; for v1 converted per RFC 3584 §3.1 as pysnmp's
proxy does (sysUpTime.0 = time-stamp, snmpTrapOID.0 = the generic trap's standard OID or
enterprise.0.specific, then snmpTrapAddress.0, snmpTrapCommunity.0, snmpTrapEnterprise.0, then
the trap's own varbinds).

Values: v2c takes INTEGER (Integer32), OCTET STRING, NULL, OBJECT IDENTIFIER, IpAddress,
Counter32, Gauge32, TimeTicks, Opaque, Counter64, noSuchObject, noSuchInstance and endOfMibView;
v1 takes the SMIv1 subset (no Counter64, no exception values; INTEGER within Integer32, as
pysnmp's conversion requires). Anything else — another tag, a constructed or indefinite
encoding, a length over 3 octets or past its container, trailing bytes, a value out of its
type's range, more than `MAX_VARBINDS` varbinds — raises `BerError` and nothing else (fuzzed
and cross-checked against pysnmp in tests/unit/test_trap_fast.py). This is stricter than pysnmp
in a few BER corners no agent uses (constructed strings, indefinite lengths, integers padded past
5 octets): such a trap is dropped as undecodable, never believed half-read.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal

from baton.adapters.snmp_fast import (
    MAX_DATAGRAM,
    TAG_INTEGER,
    TAG_OCTET_STRING,
    TAG_OID,
    TAG_SEQUENCE,
    BerError,
    decode_oid,
    expect_tlv,
    read_integer,
    tlv_header,
)
from baton.adapters.snmp_values import SnmpValue

PDU_TRAP_V1: Final = 0xA4
PDU_INFORM: Final = 0xA6
PDU_TRAP_V2: Final = 0xA7
VERSION_V1: Final = 0
VERSION_V2C: Final = 1
VERSION_V3: Final = 3
MAX_VARBINDS: Final = 256

SYS_UPTIME: Final = "1.3.6.1.2.1.1.3.0"
SNMP_TRAP_OID: Final = "1.3.6.1.6.3.1.1.4.1.0"
SNMP_TRAP_ADDRESS: Final = "1.3.6.1.6.3.18.1.3.0"
SNMP_TRAP_COMMUNITY: Final = "1.3.6.1.6.3.18.1.4.0"
SNMP_TRAP_ENTERPRISE: Final = "1.3.6.1.6.3.1.1.4.3.0"
# RFC 3584 §3.1 (3): generic-trap 0..5 -> snmpTraps.(generic + 1)
GENERIC_TRAPS: Final = tuple(f"1.3.6.1.6.3.1.1.5.{n + 1}" for n in range(6))
ENTERPRISE_SPECIFIC: Final = 6

_INT32: Final = (-(2**31), 2**31 - 1)
# tag -> (SnmpValue type name as baton.adapters.snmp.convert names pysnmp's value, kind)
_V2C_VALUES: Final[dict[int, tuple[str, str]]] = {
    0x02: ("Integer", "int"),
    0x04: ("OctetString", "str"),
    0x05: ("null", "absent"),
    0x06: ("ObjectIdentifier", "oid"),
    0x40: ("IpAddress", "ip"),
    0x41: ("Counter32", "u32"),
    0x42: ("Gauge32", "u32"),
    0x43: ("TimeTicks", "u32"),
    0x44: ("Opaque", "str"),
    0x46: ("Counter64", "u64"),
    0x80: ("noSuchObject", "absent"),
    0x81: ("noSuchInstance", "absent"),
    0x82: ("endOfMibView", "absent"),
}
# SMIv1 (RFC 1155) as pysnmp's proxy converts it: INTEGER -> Integer32, Counter -> Counter32...
_V1_VALUES: Final[dict[int, tuple[str, str]]] = {
    0x02: ("Integer32", "int"),
    0x04: ("OctetString", "str"),
    0x05: ("null", "absent"),
    0x06: ("ObjectIdentifier", "oid"),
    0x40: ("IpAddress", "ip"),
    0x41: ("Counter32", "u32"),
    0x42: ("Gauge32", "u32"),
    0x43: ("TimeTicks", "u32"),
    0x44: ("Opaque", "str"),
}
_OID_CACHE_MAX: Final = 4096


@dataclass(frozen=True, slots=True)
class TrapHeader:
    """What the receiver needs before reading a trap: its version, community and PDU."""

    version: int  # 0 (v1), 1 (v2c), or 3 (v3: nothing else is read)
    community: bytes
    pdu_tag: int  # -1 for v3
    pdu_start: int
    pdu_end: int


@dataclass(frozen=True, slots=True)
class Trap:
    """A decoded trap: its varbinds as pysnmp delivers them (v1 converted to the v2 form)."""

    version: Literal["1", "2c"]
    varbinds: tuple[tuple[str, SnmpValue], ...]


def read_header(buf: bytes) -> TrapHeader:
    """Version, community and PDU position of an SNMP message; BerError if it is not one.
    For v3 only the version is read (the USM header is pysnmp's business)."""
    if len(buf) > MAX_DATAGRAM:
        raise BerError("datagram too long")
    start, end = expect_tlv(buf, 0, len(buf), TAG_SEQUENCE, "message")
    if end != len(buf):
        raise BerError("trailing bytes after the message")
    start, stop = expect_tlv(buf, start, end, TAG_INTEGER, "version")
    version = read_integer(buf, start, stop)
    if version == VERSION_V3:
        return TrapHeader(version, b"", -1, stop, end)
    if version not in (VERSION_V1, VERSION_V2C):
        raise BerError(f"unknown SNMP version {version}")
    start, stop = expect_tlv(buf, stop, end, TAG_OCTET_STRING, "community")
    community = buf[start:stop]
    tag, start, pdu_end = tlv_header(buf, stop, end)
    if pdu_end != end:
        raise BerError("trailing bytes after the PDU")
    return TrapHeader(version, community, tag, start, pdu_end)


class TrapDecoder:
    """Reads trap PDUs; keeps a bounded cache of OID texts (a storm repeats the same few OIDs)."""

    __slots__ = ("_oids",)

    def __init__(self) -> None:
        self._oids: dict[bytes, str] = {}

    def decode(self, buf: bytes) -> Trap:
        """A whole v1/v2c trap message (any community); BerError otherwise."""
        return self.read_trap(buf, read_header(buf))

    def read_trap(self, buf: bytes, header: TrapHeader) -> Trap:
        """The trap after `read_header`; BerError if it is not a well-formed v1/v2c trap."""
        if header.version == VERSION_V2C and header.pdu_tag == PDU_TRAP_V2:
            return self._v2c(buf, header.pdu_start, header.pdu_end)
        if header.version == VERSION_V1 and header.pdu_tag == PDU_TRAP_V1:
            return self._v1(buf, header.community, header.pdu_start, header.pdu_end)
        raise BerError(f"not a trap PDU (version {header.version}, tag 0x{header.pdu_tag & 0xFF:02x})")

    def _v2c(self, buf: bytes, pos: int, end: int) -> Trap:
        start, stop = expect_tlv(buf, pos, end, TAG_INTEGER, "request-id")
        if not _INT32[0] <= read_integer(buf, start, stop) <= _INT32[1]:
            raise BerError("request-id out of range")
        start, stop = expect_tlv(buf, stop, end, TAG_INTEGER, "error-status")
        read_integer(buf, start, stop)
        start, stop = expect_tlv(buf, stop, end, TAG_INTEGER, "error-index")
        if not 0 <= read_integer(buf, start, stop) <= _INT32[1]:
            raise BerError("error-index out of range")
        return Trap("2c", self._varbinds(buf, stop, end, _V2C_VALUES))

    def _v1(self, buf: bytes, community: bytes, pos: int, end: int) -> Trap:
        start, stop = expect_tlv(buf, pos, end, TAG_OID, "enterprise")
        enterprise = self._oid(buf[start:stop])
        start, stop = expect_tlv(buf, stop, end, 0x40, "agent-addr")
        agent = _value(0x40, buf[start:stop], _V1_VALUES)
        start, stop = expect_tlv(buf, stop, end, TAG_INTEGER, "generic-trap")
        generic = read_integer(buf, start, stop)
        start, stop = expect_tlv(buf, stop, end, TAG_INTEGER, "specific-trap")
        specific = read_integer(buf, start, stop)
        start, stop = expect_tlv(buf, stop, end, 0x43, "time-stamp")
        timestamp = _value(0x43, buf[start:stop], _V1_VALUES)
        if generic == ENTERPRISE_SPECIFIC:
            if specific < 0:
                raise BerError("negative specific-trap")
            trap_oid = f"{enterprise}.0.{specific}"
        elif 0 <= generic < ENTERPRISE_SPECIFIC:
            trap_oid = GENERIC_TRAPS[generic]
        else:
            raise BerError("generic-trap out of range")
        own = self._varbinds(buf, stop, end, _V1_VALUES)
        text = _text(community)
        return Trap(
            "1",
            (
                (SYS_UPTIME, timestamp),
                (SNMP_TRAP_OID, SnmpValue("ObjectIdentifier", trap_oid)),
                (SNMP_TRAP_ADDRESS, agent),
                (SNMP_TRAP_COMMUNITY, SnmpValue("OctetString", text)),
                (SNMP_TRAP_ENTERPRISE, SnmpValue("ObjectIdentifier", enterprise)),
                *own,
            ),
        )

    def _varbinds(
        self, buf: bytes, pos: int, end: int, values: dict[int, tuple[str, str]]
    ) -> tuple[tuple[str, SnmpValue], ...]:
        pos, list_end = expect_tlv(buf, pos, end, TAG_SEQUENCE, "varbind list")
        if list_end != end:
            raise BerError("trailing bytes after the varbind list")
        out: list[tuple[str, SnmpValue]] = []
        while pos < list_end:
            if len(out) >= MAX_VARBINDS:
                raise BerError("too many varbinds")
            vb_start, vb_end = expect_tlv(buf, pos, list_end, TAG_SEQUENCE, "varbind")
            start, stop = expect_tlv(buf, vb_start, vb_end, TAG_OID, "varbind name")
            name = self._oid(buf[start:stop])
            tag, start, stop = tlv_header(buf, stop, vb_end)
            if stop != vb_end:
                raise BerError("trailing bytes in a varbind")
            out.append((name, _value(tag, buf[start:stop], values)))
            pos = vb_end
        return tuple(out)

    def _oid(self, content: bytes) -> str:
        text = self._oids.get(content)
        if text is None:
            text = ".".join(map(str, decode_oid(content)))
            if len(self._oids) >= _OID_CACHE_MAX:
                self._oids.clear()  # a flood of made-up OIDs costs decoding, never memory
            self._oids[content] = text
        return text


def _text(content: bytes) -> str:
    try:
        return content.decode("utf-8")
    except UnicodeDecodeError:
        return "0x" + content.hex()


def _value(tag: int, content: bytes, values: dict[int, tuple[str, str]]) -> SnmpValue:
    spec = values.get(tag)
    if spec is None:
        raise BerError(f"unsupported value tag 0x{tag:02x}")
    name, kind = spec
    if kind == "absent":
        if content:
            raise BerError(f"{name} with content")
        return SnmpValue(name, None)
    if kind == "str":
        return SnmpValue(name, _text(content))
    if kind == "ip":
        if len(content) != 4:
            raise BerError("IpAddress is not 4 octets")
        return SnmpValue(name, ".".join(str(octet) for octet in content))
    if kind == "oid":
        return SnmpValue(name, ".".join(map(str, decode_oid(content))))
    if not 0 < len(content) <= (9 if kind == "u64" else 5):
        raise BerError(f"bad {name} length")
    number = int.from_bytes(content, "big", signed=True)
    if kind == "int":
        if not _INT32[0] <= number <= _INT32[1]:
            raise BerError(f"{name} out of range")
    elif not 0 <= number < (2**64 if kind == "u64" else 2**32):
        raise BerError(f"{name} out of range")
    return SnmpValue(name, number)
