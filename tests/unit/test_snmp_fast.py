"""The v2c fast path's codec (baton.adapters.snmp_fast) against pysnmp/pyasn1, plus fuzzing."""

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

from baton.adapters.snmp import convert
from baton.adapters.snmp_fast import (
    PDU_GET_BULK,
    BerError,
    GetTemplate,
    decode_oid,
    decode_response,
    encode_integer,
    encode_oid,
    encode_request,
    read_header,
    tlv,
)

V2C = snmp_api.PROTOCOL_MODULES[snmp_api.SNMP_VERSION_2C]
UPTIME = (1, 3, 6, 1, 2, 1, 1, 3, 0)
IF1 = (1, 3, 6, 1, 2, 1, 2, 2, 1, 8, 1)
SYSNAME = (1, 3, 6, 1, 2, 1, 1, 5, 0)

oids = st.tuples(st.integers(0, 2), st.integers(0, 39)).flatmap(
    lambda head: st.lists(st.integers(0, 2**32 - 1), max_size=12).map(lambda tail: (*head, *tail))
)
communities = st.binary(min_size=0, max_size=300)


def pysnmp_request(
    community: bytes, request_id: int, names: Sequence[Sequence[int]], pdu_cls: Any = None
) -> bytes:
    pdu = (pdu_cls or V2C.GetRequestPDU)()
    V2C.apiPDU.set_defaults(pdu)
    V2C.apiPDU.set_request_id(pdu, request_id)
    V2C.apiPDU.set_varbinds(pdu, [(name, rfc1902.Null("")) for name in names])
    message = V2C.Message()
    V2C.apiMessage.set_defaults(message)
    V2C.apiMessage.set_community(message, community)
    V2C.apiMessage.set_pdu(message, pdu)
    return bytes(ber_encoder.encode(message))


def pysnmp_response(
    community: bytes,
    request_id: int,
    varbinds: Sequence[tuple[Sequence[int], Any]],
    error_status: int = 0,
    error_index: int = 0,
) -> bytes:
    pdu = V2C.GetResponsePDU()
    V2C.apiPDU.set_defaults(pdu)
    V2C.apiPDU.set_request_id(pdu, request_id)
    V2C.apiPDU.set_error_status(pdu, error_status)
    V2C.apiPDU.set_error_index(pdu, error_index)
    V2C.apiPDU.set_varbinds(pdu, list(varbinds))
    message = V2C.Message()
    V2C.apiMessage.set_defaults(message)
    V2C.apiMessage.set_community(message, community)
    V2C.apiMessage.set_pdu(message, pdu)
    return bytes(ber_encoder.encode(message))


# --- encoding ---------------------------------------------------------------------------------


@given(community=communities, request_id=st.integers(2**24, 2**31 - 1), names=st.lists(oids, max_size=8))
@settings(max_examples=150, deadline=None)
def test_template_is_byte_identical_to_pysnmp(community: bytes, request_id: int, names: list[Any]) -> None:
    """A pre-encoded GET with its request-id spliced in is exactly what pysnmp would send."""
    template = GetTemplate(community, names)
    assert pysnmp_request(community, request_id, names) == template.encode(request_id)


def test_template_rejects_request_ids_that_would_change_its_width() -> None:
    """Request-ids are kept in [2^24, 2^31) so the template's 4 octets are always minimal BER."""
    template = GetTemplate(b"public", [UPTIME])
    for bad in (0, 2**24 - 1, 2**31):
        with pytest.raises(ValueError, match="request-id"):
            template.encode(bad)


@given(request_id=st.integers(-(2**31), 2**31 - 1), cursor=oids, reps=st.integers(0, 100))
@settings(max_examples=100, deadline=None)
def test_getbulk_decodes_in_pyasn1_as_sent(request_id: int, cursor: tuple[int, ...], reps: int) -> None:
    """A GETBULK from encode_request reads back in pysnmp with the same request-id, OID and counts."""
    raw = encode_request(b"c", request_id, (cursor,), pdu_tag=PDU_GET_BULK, max_repetitions=reps)
    message, rest = ber_decoder.decode(raw, asn1Spec=V2C.Message())
    pdu = V2C.apiMessage.get_pdu(message)
    bulk = snmp_api.PROTOCOL_MODULES[snmp_api.SNMP_VERSION_2C].apiBulkPDU
    assert (b"", request_id, 0, reps, [cursor]) == (
        rest,
        int(V2C.apiPDU.get_request_id(pdu)),
        int(bulk.get_non_repeaters(pdu)),
        int(bulk.get_max_repetitions(pdu)),
        [tuple(name) for name, _ in V2C.apiPDU.get_varbinds(pdu)],
    )


@given(st.integers(-(2**70), 2**70))
def test_integer_encoding_is_minimal_twos_complement(value: int) -> None:
    """encode_integer reads back in pyasn1 and is minimal (X.690 8.3.2: the first nine bits are
    never all equal). pyasn1's own encoder is not always minimal (-128 -> ff 80), so it is not
    the reference here."""
    content = encode_integer(value)
    decoded, rest = ber_decoder.decode(tlv(0x02, content), asn1Spec=rfc1902.univ.Integer())
    assert (value, b"") == (int(decoded), rest)
    if len(content) > 1:
        nine = (content[0] << 1) | (content[1] >> 7)
        assert nine not in (0, 0x1FF)


@given(oids)
def test_oid_round_trip(oid: tuple[int, ...]) -> None:
    """encode_oid/decode_oid agree with each other and with pyasn1."""
    content = encode_oid(oid)
    assert (oid, bytes(ber_encoder.encode(rfc1902.ObjectName(oid)))[2:]) == (decode_oid(content), content)


@pytest.mark.parametrize("oid", [(1,), (3, 1), (1, 40), (1, 3, -1)])
def test_unencodable_oids_are_refused(oid: tuple[int, ...]) -> None:
    """OIDs X.690 cannot encode are a ValueError (the poller turns it into a config error)."""
    with pytest.raises(ValueError, match="OID"):
        encode_oid(oid)


# --- decoding ---------------------------------------------------------------------------------

_VALUE_CASES = [
    rfc1902.Integer(-5),
    rfc1902.Integer32(2**31 - 1),
    rfc1902.Integer(-(2**31)),
    rfc1902.OctetString("co-a-dev1"),
    rfc1902.OctetString(b"\xff\x00"),
    rfc1902.OctetString(b""),
    rfc1902.IpAddress("10.0.0.1"),
    rfc1902.Counter32(2**32 - 1),
    rfc1902.Gauge32(7),
    rfc1902.Unsigned32(0),
    rfc1902.TimeTicks(123456),
    rfc1902.Opaque(b"\x9f\x78\x04"),
    rfc1902.Counter64(2**64 - 1),
    rfc1902.ObjectName("1.3.6.1.4.1.8072.3.2.10"),
    rfc1902.Bits(b"\x80"),
    rfc1905.noSuchObject,
    rfc1905.noSuchInstance,
    rfc1905.endOfMibView,
    rfc1902.Null(""),
]


@pytest.mark.parametrize("value", _VALUE_CASES, ids=lambda v: type(v).__name__)
def test_every_value_type_decodes_like_pysnmp_convert(value: Any) -> None:
    """For every SMI type, the fast reader yields what convert() makes of pysnmp's own decoding."""
    raw = pysnmp_response(b"public", 77, [(IF1, value)])
    decoded, _ = ber_decoder.decode(raw, asn1Spec=V2C.Message())
    ((_, pysnmp_value),) = V2C.apiPDU.get_varbinds(V2C.apiMessage.get_pdu(decoded))
    expected = convert(pysnmp_value)
    response = decode_response(raw)
    assert (77, 0, 0, ((encode_oid(IF1), expected),)) == (
        response.request_id,
        response.error_status,
        response.error_index,
        response.varbinds,
    )


values = st.one_of(
    st.integers(-(2**31), 2**31 - 1).map(rfc1902.Integer),
    st.binary(max_size=300).map(rfc1902.OctetString),
    st.integers(0, 2**32 - 1).map(rfc1902.TimeTicks),
    st.integers(0, 2**32 - 1).map(rfc1902.Counter32),
    st.integers(0, 2**32 - 1).map(rfc1902.Gauge32),
    st.integers(0, 2**64 - 1).map(rfc1902.Counter64),
    st.binary(min_size=4, max_size=4).map(rfc1902.IpAddress),
    oids.map(rfc1902.ObjectName),
    st.sampled_from([rfc1905.noSuchObject, rfc1905.noSuchInstance, rfc1905.endOfMibView]),
)


@given(
    community=communities,
    request_id=st.integers(-(2**31), 2**31 - 1),
    error=st.tuples(st.integers(0, 18), st.integers(0, 20)),
    varbinds=st.lists(st.tuples(oids, values), max_size=20),
)
@settings(max_examples=200, deadline=None)
def test_any_pysnmp_response_decodes_to_the_same_values(
    community: bytes, request_id: int, error: tuple[int, int], varbinds: list[tuple[Any, Any]]
) -> None:
    """Differential: random GetResponses encoded by pysnmp read back identically."""
    raw = pysnmp_response(community, request_id, varbinds, *error)
    response = decode_response(raw)
    assert (community, request_id) == (read_header(raw).community, response.request_id)
    assert error == (response.error_status, response.error_index)
    assert [(encode_oid(oid), convert(value)) for oid, value in varbinds] == list(response.varbinds)


def with_value(tag: int, content: bytes) -> bytes:
    """A v2c GetResponse with one varbind (sysUpTime.0) whose value is the raw TLV given."""
    varbind = tlv(0x30, tlv(0x06, encode_oid(UPTIME)) + tlv(tag, content))
    pdu = b"\x02\x01\x01\x02\x01\x00\x02\x01\x00" + tlv(0x30, varbind)
    return tlv(0x30, b"\x02\x01\x01" + tlv(0x04, b"public") + tlv(0xA2, pdu))


_GOOD = pysnmp_response(b"public", 2**24 + 5, [(UPTIME, rfc1902.TimeTicks(100)), (IF1, rfc1902.Integer(1))])


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        (b"", "truncated"),
        (_GOOD + b"\x00", "trailing bytes"),
        (_GOOD[:-1], "length past the end"),
        (b"\x30\x80" + _GOOD[2:] + b"\x00\x00", "indefinite length"),
        (_GOOD.replace(b"\x02\x01\x01", b"\x02\x01\x00", 1), "not SNMP v2c"),
        (_GOOD.replace(b"\xa2", b"\xa0", 1), "PDU: tag 0xa0"),
        (with_value(0x43, b""), "bad TimeTicks length"),
        (with_value(0x43, b"\xff"), "TimeTicks out of range"),
        (with_value(0x43, b"\x01\x00\x00\x00\x00"), "TimeTicks out of range"),
        (with_value(0x02, b"\x00\x80\x00\x00\x00"), "Integer out of range"),
        (with_value(0x46, b"\x01" + bytes(9)), "bad Counter64 length"),
        (with_value(0x40, b"\x01\x02\x03"), "IpAddress is not 4 octets"),
        (with_value(0x85, b""), "unsupported value tag 0x85"),
        (with_value(0x81, b"\x00"), "noSuchInstance with content"),
        (with_value(0x1F, b""), "multi-byte tag"),
    ],
)
def test_malformed_responses_raise_ber_error_with_the_cause(raw: bytes, why: str) -> None:
    """Each kind of malformation is refused, and the error names it."""
    with pytest.raises(BerError, match=why):
        decode_response(raw)


def test_non_minimal_oid_arc_is_refused() -> None:
    """An OID arc with a leading 0x80 octet is not BER (X.690 8.19.2)."""
    with pytest.raises(BerError, match="non-minimal"):
        decode_oid(b"\x2b\x80\x01")


@given(st.binary(max_size=600))
@settings(max_examples=2000, deadline=None)
def test_random_bytes_only_ever_raise_ber_error(raw: bytes) -> None:
    """Fuzz: arbitrary datagrams either decode or raise BerError, nothing else."""
    with contextlib.suppress(BerError):
        decode_response(raw)


@given(
    cut=st.integers(0, len(_GOOD)),
    flips=st.lists(st.tuples(st.integers(0, len(_GOOD) - 1), st.integers(0, 255)), max_size=4),
)
@settings(max_examples=2000, deadline=None)
def test_mutated_responses_only_ever_raise_ber_error(cut: int, flips: list[tuple[int, int]]) -> None:
    """Fuzz near the valid shape: truncated and byte-flipped answers never raise anything else."""
    raw = bytearray(_GOOD)
    for at, octet in flips:
        raw[at] = octet
    with contextlib.suppress(BerError):
        decode_response(bytes(raw[:cut] if cut < len(raw) else raw))
