"""The v1/v2c trap fast path's decoder (baton.adapters.trap_fast) against pysnmp, plus fuzzing.

pysnmp is the reference: its BER decoder with its own message specs, and for v1 its RFC 3584
proxy conversion (`rfc2576.v1_to_v2`, what its notification receiver does), each varbind value
through `baton.adapters.snmp.convert` as the receiver's pysnmp path does.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pyasn1.codec.ber import decoder as ber_decoder
from pyasn1.codec.ber import encoder as ber_encoder
from pysnmp.proto import api as snmp_api
from pysnmp.proto import rfc1902, rfc1905
from pysnmp.proto.proxy import rfc2576

from baton.adapters.snmp import convert
from baton.adapters.snmp_fast import BerError, encode_oid, tlv
from baton.adapters.snmp_values import SnmpValue
from baton.adapters.trap_fast import (
    MAX_VARBINDS,
    PDU_INFORM,
    PDU_TRAP_V2,
    TrapDecoder,
    read_header,
)

V1 = snmp_api.PROTOCOL_MODULES[snmp_api.SNMP_VERSION_1]
V2C = snmp_api.PROTOCOL_MODULES[snmp_api.SNMP_VERSION_2C]
UPTIME = (1, 3, 6, 1, 2, 1, 1, 3, 0)
TRAP_OID = (1, 3, 6, 1, 6, 3, 1, 1, 4, 1, 0)
LINK_DOWN = (1, 3, 6, 1, 6, 3, 1, 1, 5, 3)
IF_INDEX_2 = (1, 3, 6, 1, 2, 1, 2, 2, 1, 1, 2)

oids = st.tuples(st.integers(0, 2), st.integers(0, 39)).flatmap(
    lambda head: st.lists(st.integers(0, 2**32 - 1), max_size=12).map(lambda tail: (*head, *tail))
)
communities = st.binary(min_size=0, max_size=64)
v2c_values = st.one_of(
    st.integers(-(2**31), 2**31 - 1).map(rfc1902.Integer),
    st.binary(max_size=200).map(rfc1902.OctetString),
    st.integers(0, 2**32 - 1).map(rfc1902.TimeTicks),
    st.integers(0, 2**32 - 1).map(rfc1902.Counter32),
    st.integers(0, 2**32 - 1).map(rfc1902.Gauge32),
    st.integers(0, 2**64 - 1).map(rfc1902.Counter64),
    st.binary(min_size=4, max_size=4).map(rfc1902.IpAddress),
    st.binary(max_size=20).map(rfc1902.Opaque),
    oids.map(rfc1902.ObjectName),
    st.just(rfc1902.Null("")),
    st.sampled_from([rfc1905.noSuchObject, rfc1905.noSuchInstance, rfc1905.endOfMibView]),
)
v1_values = st.one_of(
    st.integers(-(2**31), 2**31 - 1).map(V1.Integer),
    st.binary(max_size=200).map(V1.OctetString),
    st.integers(0, 2**32 - 1).map(V1.TimeTicks),
    st.integers(0, 2**32 - 1).map(V1.Counter),
    st.integers(0, 2**32 - 1).map(V1.Gauge),
    st.binary(min_size=4, max_size=4).map(V1.IpAddress),
    st.binary(max_size=20).map(V1.Opaque),
    oids.map(V1.ObjectIdentifier),
    st.just(V1.Null("")),
)


def v2c_trap(community: bytes, request_id: int, varbinds: Sequence[tuple[Any, Any]]) -> bytes:
    """A v2c trap as pysnmp encodes it."""
    pdu = V2C.SNMPv2TrapPDU()
    V2C.apiPDU.set_defaults(pdu)
    V2C.apiPDU.set_request_id(pdu, request_id)
    V2C.apiPDU.set_varbinds(pdu, list(varbinds))
    message = V2C.Message()
    V2C.apiMessage.set_defaults(message)
    V2C.apiMessage.set_community(message, community)
    V2C.apiMessage.set_pdu(message, pdu)
    return bytes(ber_encoder.encode(message))


def v1_trap(
    community: bytes,
    enterprise: tuple[int, ...],
    agent: bytes,
    generic: int,
    specific: int,
    timestamp: int,
    varbinds: Sequence[tuple[Any, Any]],
) -> bytes:
    """A v1 trap as pysnmp encodes it."""
    pdu = V1.TrapPDU()
    V1.apiTrapPDU.set_defaults(pdu)
    V1.apiTrapPDU.set_enterprise(pdu, enterprise)
    V1.apiTrapPDU.set_agent_address(pdu, V1.IpAddress(agent))
    V1.apiTrapPDU.set_generic_trap(pdu, generic)
    V1.apiTrapPDU.set_specific_trap(pdu, specific)
    V1.apiTrapPDU.set_timestamp(pdu, timestamp)
    V1.apiTrapPDU.set_varbinds(pdu, list(varbinds))
    message = V1.Message()
    V1.apiMessage.set_defaults(message)
    V1.apiMessage.set_community(message, community)
    V1.apiMessage.set_pdu(message, pdu)
    return bytes(ber_encoder.encode(message))


def pysnmp_reads(raw: bytes) -> tuple[str, bytes, list[tuple[str, SnmpValue]]] | None:
    """(version, community, varbinds as the receiver's pysnmp path sees them), or None when
    pysnmp would not deliver this datagram as a v1/v2c trap."""
    for version, module in (("2c", V2C), ("1", V1)):
        try:
            message, rest = ber_decoder.decode(raw, asn1Spec=module.Message())
        except Exception:  # noqa: S112 (not this version's message: try the other)
            continue
        if rest:
            return None
        community = bytes(module.apiMessage.get_community(message))
        pdu = module.apiMessage.get_pdu(message)
        if version == "2c":
            if pdu.tagSet != V2C.SNMPv2TrapPDU.tagSet:
                return None
        else:
            if pdu.tagSet != V1.TrapPDU.tagSet:
                return None
            try:
                pdu = rfc2576.v1_to_v2(pdu, snmpTrapCommunity=community)
            except Exception:
                return None
        varbinds = [(str(name), convert(value)) for name, value in V2C.apiPDU.get_varbinds(pdu)]
        return version, community, varbinds
    return None


def fast_reads(raw: bytes) -> tuple[str, bytes, list[tuple[str, SnmpValue]]]:
    header = read_header(raw)
    trap = TrapDecoder().read_trap(raw, header)
    return trap.version, header.community, list(trap.varbinds)


# --- agreement with pysnmp --------------------------------------------------------------------


@given(
    community=communities,
    request_id=st.integers(-(2**31), 2**31 - 1),
    varbinds=st.lists(st.tuples(oids, v2c_values), max_size=20),
)
@settings(max_examples=300, deadline=None)
def test_any_v2c_trap_pysnmp_encodes_reads_the_same(
    community: bytes, request_id: int, varbinds: list[tuple[Any, Any]]
) -> None:
    """Differential: random v2c traps encoded by pysnmp read back as pysnmp reads them."""
    raw = v2c_trap(community, request_id, [(UPTIME, rfc1902.TimeTicks(5)), *varbinds])
    assert pysnmp_reads(raw) == fast_reads(raw)


@given(
    community=communities,
    enterprise=oids,
    agent=st.binary(min_size=4, max_size=4),
    generic=st.integers(0, 6),
    specific=st.integers(0, 2**31 - 1),
    timestamp=st.integers(0, 2**32 - 1),
    varbinds=st.lists(st.tuples(oids, v1_values), max_size=20),
)
@settings(max_examples=300, deadline=None)
def test_any_v1_trap_reads_as_pysnmp_converts_it(
    community: bytes,
    enterprise: tuple[int, ...],
    agent: bytes,
    generic: int,
    specific: int,
    timestamp: int,
    varbinds: list[tuple[Any, Any]],
) -> None:
    """Differential: random v1 traps come out converted exactly as pysnmp's RFC 3584 proxy does
    (sysUpTime, snmpTrapOID, snmpTrapAddress, snmpTrapCommunity, snmpTrapEnterprise, then the
    trap's own varbinds)."""
    raw = v1_trap(community, enterprise, agent, generic, specific, timestamp, varbinds)
    assert pysnmp_reads(raw) == fast_reads(raw)


def test_v1_generic_and_enterprise_specific_trap_oids() -> None:
    """generic-trap 2 is linkDown (1.3.6.1.6.3.1.1.5.3); 6 is enterprise.0.specific."""
    decoder = TrapDecoder()
    link_down = decoder.decode(v1_trap(b"c", (1, 3, 6, 1, 4, 1, 9), b"\x0a\0\0\x01", 2, 0, 7, []))
    vendor = decoder.decode(v1_trap(b"c", (1, 3, 6, 1, 4, 1, 9), b"\x0a\0\0\x01", 6, 42, 7, []))
    assert ("1.3.6.1.6.3.1.1.5.3", "1.3.6.1.4.1.9.0.42") == (
        link_down.varbinds[1][1].value,
        vendor.varbinds[1][1].value,
    )
    assert ("1.3.6.1.6.3.18.1.3.0", SnmpValue("IpAddress", "10.0.0.1")) == link_down.varbinds[2]


def test_header_of_v3_and_of_an_inform_says_where_they_go() -> None:
    """A v3 message stops at the version; a v2c inform has its own PDU tag (pysnmp answers it)."""
    v3 = tlv(0x30, tlv(0x02, b"\x03") + tlv(0x30, b"") + tlv(0x04, b"") + tlv(0x04, b""))
    assert (3, -1) == (read_header(v3).version, read_header(v3).pdu_tag)
    raw = v2c_trap(b"public", 9, [(UPTIME, rfc1902.TimeTicks(5))])
    assert (1, b"public", PDU_TRAP_V2) == (
        read_header(raw).version,
        read_header(raw).community,
        read_header(raw).pdu_tag,
    )
    inform = raw.replace(bytes((PDU_TRAP_V2,)), bytes((PDU_INFORM,)), 1)
    assert PDU_INFORM == read_header(inform).pdu_tag
    with pytest.raises(BerError, match="not a trap PDU"):
        TrapDecoder().decode(inform)


# --- strictness -------------------------------------------------------------------------------


def with_value(tag: int, content: bytes, *, version: int = 1) -> bytes:
    """A trap (v2c, or v1 with version=0) with one varbind (ifIndex.2) of the raw TLV given."""
    varbind = tlv(0x30, tlv(0x06, encode_oid(IF_INDEX_2)) + tlv(tag, content))
    if version == 1:
        head = b"\x02\x01\x01\x02\x01\x00\x02\x01\x00"
        return tlv(0x30, b"\x02\x01\x01" + tlv(0x04, b"public") + tlv(0xA7, head + tlv(0x30, varbind)))
    head = tlv(0x06, encode_oid((1, 3, 6, 1, 4, 1, 9))) + tlv(0x40, b"\x0a\0\0\x01")
    head += tlv(0x02, b"\x02") + tlv(0x02, b"\x00") + tlv(0x43, b"\x07")
    return tlv(0x30, b"\x02\x01\x00" + tlv(0x04, b"public") + tlv(0xA4, head + tlv(0x30, varbind)))


def v1_with(generic: bytes, specific: bytes) -> bytes:
    head = tlv(0x06, encode_oid((1, 3, 6, 1, 4, 1, 9))) + tlv(0x40, b"\x0a\0\0\x01")
    head += tlv(0x02, generic) + tlv(0x02, specific) + tlv(0x43, b"\x07")
    return tlv(0x30, b"\x02\x01\x00" + tlv(0x04, b"public") + tlv(0xA4, head + tlv(0x30, b"")))


_GOOD = v2c_trap(
    b"public",
    2**24 + 5,
    [
        (UPTIME, rfc1902.TimeTicks(100)),
        (TRAP_OID, rfc1902.ObjectName(LINK_DOWN)),
        (IF_INDEX_2, rfc1902.Integer(2)),
    ],
)
_GOOD_V1 = v1_trap(b"public", (1, 3, 6, 1, 4, 1, 9), b"\x0a\0\0\x01", 2, 0, 7, [(IF_INDEX_2, V1.Integer(2))])
_MANY = tlv(0x30, tlv(0x06, encode_oid(IF_INDEX_2)) + tlv(0x05, b"")) * (MAX_VARBINDS + 1)


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        (b"", "truncated"),
        (_GOOD + b"\x00", "trailing bytes"),
        (_GOOD[:-1], "length past the end"),
        (b"\x30\x80" + _GOOD[2:] + b"\x00\x00", "indefinite length"),
        (_GOOD.replace(b"\x02\x01\x01", b"\x02\x01\x02", 1), "unknown SNMP version 2"),
        (_GOOD.replace(b"\x02\x01\x01", b"\x02\x01\x00", 1), "not a trap PDU"),  # v1 with a v2 PDU
        (_GOOD_V1.replace(b"\x02\x01\x00", b"\x02\x01\x01", 1), "not a trap PDU"),  # v2c with a v1 PDU
        (_GOOD.replace(b"\xa7", b"\xa2", 1), "not a trap PDU"),
        (with_value(0x43, b""), "bad TimeTicks length"),
        (with_value(0x43, b"\xff"), "TimeTicks out of range"),
        (with_value(0x02, b"\x00\x80\x00\x00\x00"), "Integer out of range"),
        (with_value(0x40, b"\x01\x02\x03"), "IpAddress is not 4 octets"),
        (with_value(0x85, b""), "unsupported value tag 0x85"),
        (with_value(0x24, b"\x04\x01a"), "unsupported value tag 0x24"),  # constructed OCTET STRING
        (with_value(0x81, b"\x00"), "noSuchInstance with content"),
        (with_value(0x46, b"\x01", version=0), "unsupported value tag 0x46"),  # no Counter64 in v1
        (with_value(0x80, b"", version=0), "unsupported value tag 0x80"),  # no exceptions in v1
        (with_value(0x02, b"\x00\x80\x00\x00\x00", version=0), "Integer32 out of range"),
        (v1_with(b"\x07", b"\x00"), "generic-trap out of range"),
        (v1_with(b"\x06", b"\xff"), "negative specific-trap"),
        (
            tlv(0x30, b"\x02\x01\x01" + tlv(0x04, b"c") + tlv(0xA7, b"\x02\x01\x01" * 3 + tlv(0x30, _MANY))),
            "too many",
        ),
    ],
)
def test_malformed_traps_raise_ber_error_with_the_cause(raw: bytes, why: str) -> None:
    """Each kind of malformation is refused, and the error names it."""
    with pytest.raises(BerError, match=why):
        TrapDecoder().decode(raw)


def test_pysnmp_also_refuses_what_its_conversion_cannot_carry() -> None:
    """The v1 refusals above that BER allows are refused by pysnmp's receiver too (its RFC 3584
    conversion fails): the fast path never drops a trap pysnmp would have delivered."""
    for raw in (
        v1_with(b"\x07", b"\x00"),
        v1_with(b"\x06", b"\xff"),
        with_value(0x02, b"\x00\x80\x00\x00\x00", version=0),
    ):
        assert pysnmp_reads(raw) is None


@given(st.binary(max_size=600))
@settings(max_examples=2000, deadline=None)
def test_random_bytes_only_ever_raise_ber_error(raw: bytes) -> None:
    """Fuzz: arbitrary datagrams either decode or raise BerError, nothing else."""
    with contextlib.suppress(BerError):
        TrapDecoder().decode(raw)


@pytest.mark.parametrize("good", [_GOOD, _GOOD_V1], ids=["v2c", "v1"])
@given(
    cut=st.integers(0, 200),
    flips=st.lists(st.tuples(st.integers(0, 199), st.integers(0, 255)), max_size=4),
)
@settings(max_examples=1500, deadline=None)
def test_mutated_traps_are_refused_or_read_as_pysnmp_reads_them(
    good: bytes, cut: int, flips: list[tuple[int, int]]
) -> None:
    """Fuzz near the valid shapes: a truncated or byte-flipped trap raises BerError, or reads
    exactly as pysnmp reads it — the fast path never believes what pysnmp would not."""
    raw = bytearray(good)
    for at, octet in flips:
        raw[at % len(raw)] = octet
    data = bytes(raw[: cut % (len(raw) + 1)] if cut <= len(raw) else raw)
    try:
        fast = fast_reads(data)
    except BerError:
        return
    assert pysnmp_reads(data) == fast


def test_oid_cache_is_bounded() -> None:
    """A flood of distinct OIDs never grows the decoder's OID cache past its bound."""
    decoder = TrapDecoder()
    for n in range(5000):
        decoder.decode(
            v2c_trap(b"c", 1, [(UPTIME, rfc1902.TimeTicks(5)), ((1, 3, 6, 1, 4, 1, n), rfc1902.Null(""))])
        )
    assert len(decoder._oids) <= 4096
