"""SNMP v2c without pysnmp: a pre-encoded GET per device and a strict reader for the answer.

Why: pysnmp spends ~2 ms of CPU per v2c poll, almost all of it in pyasn1's generic BER codec
(schema-driven, several decoder passes per response). A v2c GET has no crypto and a fixed shape,
so this module encodes it ONCE per device (`GetTemplate`, only the 4-byte request-id changes) and
reads the GetResponse with a small BER reader that knows exactly one shape:

    Message  ::= SEQUENCE { version INTEGER (1 = v2c), community OCTET STRING, data PDU }
    Response ::= [2] IMPLICIT SEQUENCE { request-id INTEGER, error-status INTEGER,
                                          error-index INTEGER, variable-bindings SEQUENCE OF
                                          SEQUENCE { name OBJECT IDENTIFIER, value } }

Values: INTEGER, OCTET STRING, NULL, OBJECT IDENTIFIER, IpAddress, Counter32, Gauge32, TimeTicks,
Opaque, Counter64, noSuchObject, noSuchInstance, endOfMibView. Anything else — another tag, an
indefinite or over-long length, a length running past its container, trailing bytes, a value out
of its type's range — raises `BerError` and nothing else (fuzzed in tests/unit/test_snmp_fast.py).
v3 (USM authentication and privacy) is `snmp_v3`, built on this codec.

`V2cClient` owns one UDP socket per address family and matches answers to requests by request-id
AND source address; an answer it cannot attribute is dropped (counted in `unmatched`), exactly as
pysnmp drops it, so junk from the network never becomes an exception or a false "ok".
"""

from __future__ import annotations

import asyncio
import ipaddress
import itertools
import random
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from baton.adapters.snmp_values import SnmpValue

MAX_DATAGRAM: Final = 65_507
_RECV_BUFFER: Final = 4 * 1024 * 1024
RID_MIN: Final = 1 << 24  # request-ids in [2^24, 2^31) always encode in exactly 4 bytes
RID_MAX: Final = (1 << 31) - 1

TAG_INTEGER: Final = 0x02
TAG_OCTET_STRING: Final = 0x04
TAG_NULL: Final = 0x05
TAG_OID: Final = 0x06
TAG_SEQUENCE: Final = 0x30
PDU_GET: Final = 0xA0
PDU_GET_NEXT: Final = 0xA1
PDU_RESPONSE: Final = 0xA2
PDU_GET_BULK: Final = 0xA5

# tag -> (SnmpValue type name, kind); kinds: "int" (signed 32), "u32", "u64", "str", "ip", "oid",
# "absent"
_VALUE_TAGS: Final[dict[int, tuple[str, str]]] = {
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


class BerError(ValueError):
    """The bytes are not a well-formed SNMP v2c response of the expected shape."""


# --- encoding -------------------------------------------------------------------------------


def _length(n: int) -> bytes:
    if n < 0x80:
        return bytes((n,))
    body = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes((0x80 | len(body),)) + body


def tlv(tag: int, body: bytes) -> bytes:
    return bytes((tag,)) + _length(len(body)) + body


def encode_integer(value: int) -> bytes:
    """Minimal two's-complement content octets of an INTEGER (X.690 8.3)."""
    return value.to_bytes(max(1, (value + (value < 0)).bit_length() // 8 + 1), "big", signed=True)


def encode_oid(oid: Sequence[int]) -> bytes:
    """Content octets of an OBJECT IDENTIFIER; raises ValueError if it is not a valid OID."""
    if len(oid) < 2 or oid[0] > 2 or (oid[0] < 2 and oid[1] > 39) or min(oid) < 0:
        raise ValueError(f"not an encodable OID: {oid}")
    out = bytearray()
    for arc in (oid[0] * 40 + oid[1], *oid[2:]):
        chunk = [arc & 0x7F]
        arc >>= 7
        while arc:
            chunk.append(0x80 | (arc & 0x7F))
            arc >>= 7
        out.extend(reversed(chunk))
    return bytes(out)


def encode_pdu(
    request_id: int,
    oids: Sequence[Sequence[int]],
    *,
    pdu_tag: int = PDU_GET,
    non_repeaters: int = 0,
    max_repetitions: int = 0,
) -> bytes:
    """A request PDU (GET, GETNEXT or GETBULK) with NULL values, as v2c and v3 carry it."""
    null = tlv(TAG_NULL, b"")
    varbinds = b"".join(tlv(TAG_SEQUENCE, tlv(TAG_OID, encode_oid(oid)) + null) for oid in oids)
    body = (
        tlv(TAG_INTEGER, encode_integer(request_id))
        + tlv(TAG_INTEGER, encode_integer(non_repeaters))
        + tlv(TAG_INTEGER, encode_integer(max_repetitions))
        + tlv(TAG_SEQUENCE, varbinds)
    )
    return tlv(pdu_tag, body)


def encode_request(
    community: bytes,
    request_id: int,
    oids: Sequence[Sequence[int]],
    *,
    pdu_tag: int = PDU_GET,
    non_repeaters: int = 0,
    max_repetitions: int = 0,
) -> bytes:
    """A complete v2c request message (GET, GETNEXT or GETBULK) with NULL values."""
    pdu = encode_pdu(
        request_id, oids, pdu_tag=pdu_tag, non_repeaters=non_repeaters, max_repetitions=max_repetitions
    )
    return tlv(TAG_SEQUENCE, tlv(TAG_INTEGER, b"\x01") + tlv(TAG_OCTET_STRING, community) + pdu)


class GetTemplate:
    """One device's GET, encoded once: `encode(rid)` only splices in the 4-byte request-id."""

    __slots__ = ("_head", "_tail", "community", "oid_bytes", "oids")

    def __init__(self, community: bytes, oids: Sequence[Sequence[int]]) -> None:
        self.community = community
        self.oids = tuple(tuple(oid) for oid in oids)
        self.oid_bytes = tuple(encode_oid(oid) for oid in self.oids)
        probe = encode_request(community, RID_MIN, self.oids)
        marker = b"\x02\x04" + RID_MIN.to_bytes(4, "big")
        at = probe.index(marker, 2 + 3 + 2 + len(community)) + 2
        self._head = probe[:at]
        self._tail = probe[at + 4 :]

    def encode(self, request_id: int) -> bytes:
        if not RID_MIN <= request_id <= RID_MAX:
            raise ValueError("request-id out of the fixed-width range")
        return self._head + request_id.to_bytes(4, "big") + self._tail


# --- decoding -------------------------------------------------------------------------------


def tlv_header(buf: bytes, pos: int, end: int) -> tuple[int, int, int]:
    """(tag, content start, content end) of the TLV at `pos`, bounded by `end`."""
    if end - pos < 2:
        raise BerError("truncated")
    tag = buf[pos]
    if tag & 0x1F == 0x1F:
        raise BerError("multi-byte tag")
    first = buf[pos + 1]
    pos += 2
    if first < 0x80:
        length = first
    else:
        count = first & 0x7F
        if count == 0:
            raise BerError("indefinite length")
        if count > 3 or pos + count > end:
            raise BerError("bad length")
        length = int.from_bytes(buf[pos : pos + count], "big")
        pos += count
    stop = pos + length
    if stop > end:
        raise BerError("length past the end")
    return tag, pos, stop


def read_integer(buf: bytes, start: int, stop: int, *, max_octets: int = 5) -> int:
    if not 0 < stop - start <= max_octets:
        raise BerError("bad INTEGER length")
    return int.from_bytes(buf[start:stop], "big", signed=True)


def expect_tlv(buf: bytes, pos: int, end: int, tag: int, what: str) -> tuple[int, int]:
    got, start, stop = tlv_header(buf, pos, end)
    if got != tag:
        raise BerError(f"{what}: tag 0x{got:02x}, expected 0x{tag:02x}")
    return start, stop


def decode_oid(content: bytes) -> tuple[int, ...]:
    """OBJECT IDENTIFIER content octets as arcs; BerError if malformed."""
    if not content or len(content) > 256 or content[-1] & 0x80:
        raise BerError("bad OBJECT IDENTIFIER")
    arcs: list[int] = []
    value = 0
    fresh = True
    for octet in content:
        if fresh and octet == 0x80:
            raise BerError("non-minimal OBJECT IDENTIFIER arc")
        value = (value << 7) | (octet & 0x7F)
        fresh = not octet & 0x80
        if fresh:
            arcs.append(value)
            value = 0
    first = arcs[0]
    head = (first // 40, first % 40) if first < 80 else (2, first - 80)
    return (*head, *arcs[1:])


def _value(tag: int, content: bytes) -> SnmpValue:
    spec = _VALUE_TAGS.get(tag)
    if spec is None:
        raise BerError(f"unsupported value tag 0x{tag:02x}")
    name, kind = spec
    if kind == "absent":
        if content:
            raise BerError(f"{name} with content")
        return SnmpValue(name, None)
    if kind == "str":
        try:
            return SnmpValue(name, content.decode("utf-8"))
        except UnicodeDecodeError:
            return SnmpValue(name, "0x" + content.hex())
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
        if not -(2**31) <= number < 2**31:
            raise BerError("Integer out of range")
    elif not 0 <= number < (2**64 if kind == "u64" else 2**32):
        raise BerError(f"{name} out of range")
    return SnmpValue(name, number)


@dataclass(frozen=True, slots=True)
class ResponseHeader:
    """What identifies a response: enough to route it to its request before reading the rest."""

    community: bytes
    request_id: int
    body: int  # offset of error-status
    end: int  # end of the PDU


@dataclass(frozen=True, slots=True)
class Response:
    request_id: int
    error_status: int
    error_index: int
    varbinds: tuple[tuple[bytes, SnmpValue], ...]  # (OID content octets, not yet decoded; value)


def read_header(buf: bytes) -> ResponseHeader:
    """Version, community and request-id of a v2c GetResponse; BerError otherwise."""
    if len(buf) > MAX_DATAGRAM:
        raise BerError("datagram too long")
    start, end = expect_tlv(buf, 0, len(buf), TAG_SEQUENCE, "message")
    if end != len(buf):
        raise BerError("trailing bytes after the message")
    start, stop = expect_tlv(buf, start, end, TAG_INTEGER, "version")
    if read_integer(buf, start, stop) != 1:
        raise BerError("not SNMP v2c")
    start, stop = expect_tlv(buf, stop, end, TAG_OCTET_STRING, "community")
    community = buf[start:stop]
    start, pdu_end = expect_tlv(buf, stop, end, PDU_RESPONSE, "PDU")
    if pdu_end != end:
        raise BerError("trailing bytes after the PDU")
    start, stop = expect_tlv(buf, start, pdu_end, TAG_INTEGER, "request-id")
    return ResponseHeader(community, read_integer(buf, start, stop), stop, pdu_end)


def read_body(buf: bytes, header: ResponseHeader, *, max_varbinds: int = 1000) -> Response:
    """error-status, error-index and the varbinds after `read_header`; BerError if malformed."""
    end = header.end
    start, stop = expect_tlv(buf, header.body, end, TAG_INTEGER, "error-status")
    error_status = read_integer(buf, start, stop)
    start, stop = expect_tlv(buf, stop, end, TAG_INTEGER, "error-index")
    error_index = read_integer(buf, start, stop)
    if not (0 <= error_status <= 255 and 0 <= error_index <= max_varbinds):
        raise BerError("error-status or error-index out of range")
    pos, list_end = expect_tlv(buf, stop, end, TAG_SEQUENCE, "varbind list")
    if list_end != end:
        raise BerError("trailing bytes after the varbind list")
    varbinds: list[tuple[bytes, SnmpValue]] = []
    while pos < list_end:
        if len(varbinds) >= max_varbinds:
            raise BerError("too many varbinds")
        vb_start, vb_end = expect_tlv(buf, pos, list_end, TAG_SEQUENCE, "varbind")
        start, stop = expect_tlv(buf, vb_start, vb_end, TAG_OID, "varbind name")
        if start == stop or buf[stop - 1] & 0x80:
            raise BerError("bad OBJECT IDENTIFIER")
        name = buf[start:stop]  # compared byte for byte with the OIDs asked (decode_oid for a walk)
        tag, start, stop = tlv_header(buf, stop, vb_end)
        if stop != vb_end:
            raise BerError("trailing bytes in a varbind")
        varbinds.append((name, _value(tag, buf[start:stop])))
        pos = vb_end
    return Response(header.request_id, error_status, error_index, tuple(varbinds))


def decode_response(buf: bytes) -> Response:
    """A whole v2c GetResponse message; raises BerError and nothing else."""
    return read_body(buf, read_header(buf))


# --- the client -------------------------------------------------------------------------------


class V2cTimeout(Exception):
    """No matching answer within timeout × tries."""


@dataclass(slots=True)
class _Pending:
    future: asyncio.Future[Response | BerError]
    address: tuple[str, int]
    community: bytes
    datagram: bytes
    tries_left: int
    timeout_s: float
    timer: asyncio.TimerHandle | None = None


class SourceAddressError(OSError):
    """The socket cannot be bound to the configured source address (not one of this host's)."""


class UdpClient(asyncio.DatagramProtocol):
    """One unconnected UDP socket per address family, opened on first use (shared by the v2c and
    v3 clients); subclasses route the datagrams that arrive. `source_address` binds the socket of
    its family to that address (requests leave from it); the other family's is left unbound."""

    def __init__(self, source_address: str | None = None) -> None:
        self._source = ipaddress.ip_address(source_address) if source_address is not None else None
        self._transports: dict[int, asyncio.DatagramTransport] = {}
        self._opening: dict[int, asyncio.Future[asyncio.DatagramTransport]] = {}
        self._closed = False

    async def _transport(self, family: int) -> asyncio.DatagramTransport:
        transport = self._transports.get(family)
        if transport is not None:
            return transport
        if self._closed:
            raise RuntimeError("client closed")
        opening = self._opening.get(family)
        if opening is None:
            opening = asyncio.ensure_future(self._open(family))
            self._opening[family] = opening
        return await asyncio.shield(opening)

    async def _open(self, family: int) -> asyncio.DatagramTransport:
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _RECV_BUFFER)
            host = self._local_host(family)
            try:
                sock.bind((host, 0))
            except OSError as exc:
                if self._source is None:
                    raise
                raise SourceAddressError(
                    exc.errno, f"cannot bind source address {host}: {exc.strerror}"
                ) from exc
            sock.setblocking(False)
            transport, _ = await asyncio.get_running_loop().create_datagram_endpoint(lambda: self, sock=sock)
        except BaseException:
            sock.close()
            self._opening.pop(family, None)  # the next request tries again (the address may come up)
            raise
        self._transports[family] = transport
        return transport

    def _local_host(self, family: int) -> str:
        source = self._source
        if source is not None and family == (socket.AF_INET6 if source.version == 6 else socket.AF_INET):
            return str(source)
        return "::" if family == socket.AF_INET6 else "0.0.0.0"  # noqa: S104 - any: the kernel picks

    def error_received(self, exc: Exception) -> None:
        pass  # ICMP errors on an unconnected socket cannot be attributed: the request times out

    def _close_transports(self) -> None:
        self._closed = True
        for transport in self._transports.values():
            transport.close()
        self._transports.clear()
        for opening in self._opening.values():
            opening.cancel()
        self._opening.clear()


class V2cClient(UdpClient):
    """Sends v2c requests over one UDP socket per family; answers are routed by request-id.

    `request` returns the decoded `Response`, or raises `V2cTimeout`; a datagram that matches a
    request (request-id, source address and community) but is malformed completes it with
    `BerError` ("garbage"). Retries resend the same request-id, so a late answer to an earlier
    try still counts.
    """

    def __init__(self, source_address: str | None = None) -> None:
        super().__init__(source_address)
        self._pending: dict[int, _Pending] = {}
        self._ids = itertools.count(random.randint(RID_MIN, RID_MAX))
        self.unmatched = 0  # datagrams that matched no request (junk, late, spoofed)
        self.sent = 0

    def next_request_id(self) -> int:
        while True:
            rid = next(self._ids)
            if rid > RID_MAX:
                self._ids = itertools.count(RID_MIN)
                continue
            if rid not in self._pending:
                return rid

    async def request(
        self,
        address: tuple[str, int],
        family: int,
        community: bytes,
        datagram: bytes,
        request_id: int,
        timeout_s: float,
        tries: int,
    ) -> Response:
        """Send `datagram` (whose request-id is `request_id`) and wait for its answer."""
        if request_id in self._pending:
            raise ValueError("request-id already in flight")
        transport = await self._transport(family)
        loop = asyncio.get_running_loop()
        pending = _Pending(loop.create_future(), address, community, datagram, max(1, tries), timeout_s)
        self._pending[request_id] = pending
        try:
            self._send(request_id, pending, transport)
            result = await pending.future
        finally:
            if pending.timer is not None:
                pending.timer.cancel()
            if self._pending.get(request_id) is pending:
                del self._pending[request_id]
        if isinstance(result, BerError):
            raise result
        return result

    def _send(self, request_id: int, pending: _Pending, transport: asyncio.DatagramTransport) -> None:
        pending.tries_left -= 1
        self.sent += 1
        transport.sendto(pending.datagram, pending.address)
        pending.timer = asyncio.get_running_loop().call_later(
            pending.timeout_s, self._expire, request_id, pending, transport
        )

    def _expire(self, request_id: int, pending: _Pending, transport: asyncio.DatagramTransport) -> None:
        if pending.future.done():
            return
        if pending.tries_left > 0 and not transport.is_closing():
            self._send(request_id, pending, transport)
        else:
            pending.future.set_exception(V2cTimeout())

    # asyncio.DatagramProtocol

    def datagram_received(self, data: bytes, addr: tuple[str | object, ...]) -> None:
        try:
            header = read_header(data)
        except BerError:
            self.unmatched += 1
            return
        pending = self._pending.get(header.request_id)
        if (
            pending is None
            or pending.future.done()
            or (addr[0], addr[1]) != pending.address
            or header.community != pending.community
        ):
            self.unmatched += 1
            return
        try:
            pending.future.set_result(read_body(data, header))
        except BerError as exc:
            pending.future.set_result(exc)

    def close(self) -> None:
        self._close_transports()
        for pending in self._pending.values():
            if pending.timer is not None:
                pending.timer.cancel()
            if not pending.future.done():
                pending.future.set_exception(ConnectionAbortedError("poller closed"))
        self._pending.clear()
