"""SNMP trap receiver: v1/v2c traps, v2c informs, v3 traps and informs → `TrapEvent`s.

Theory of operation
-------------------
One UDP socket (port 162 in production, 0 in tests: `port` says what was bound), read by the
receiver itself: on each wake-up it drains up to `_BATCH` datagrams with `recvmsg`, so a storm
costs one event-loop iteration per batch, not per trap. The socket asks for a large receive
buffer (`receive_buffer_bytes`, forced past `net.core.rmem_max` when the process may, else as
much as the sysctl allows: `receive_buffer_bytes` in /metrics says what it got) so a burst waits
in the kernel instead of being dropped. What the kernel dropped all the same (the socket's drop
count, `SO_MEMINFO`, read after each batch) is counted as `receive_buffer` drops: drops happen
only while the buffer is full, so the batch that drains it reads the final count.

Two paths. v1 and v2c TRAPs — what a storm is made of — take the fast path: `trap_fast`
reads the header, the community is checked (constant time, against every configured one), then
the PDU is read by a strict decoder that returns exactly what pysnmp would have handed over
(cross-checked against it in tests), at ~1/50 of pysnmp's CPU. Everything else — v3 traps and
informs, v2c informs (they need a response), and any other PDU with a valid community — goes to
pysnmp, which authenticates, decodes and answers as before. pysnmp does not read the socket: it
is given each such datagram, and answers through the same socket.

Mapping. A notification's snmpTrapOID gives its kind (linkDown, linkUp, coldStart, warmStart, or
a configured vendor OID such as power/environment/door alarms, optionally office-level); its
UDP source (or a v1 agent-addr) gives the device, by management address (`set_sources` replaces
that table on reload).

The queue. Events go to `events`, a `TrapQueue` the monitor drains: bounded and coalescing.
What the monitor does with a trap — re-poll the device (and what hangs off it), or every device
of the office for an office-level alarm — is idempotent while it has not started, so a trap for
a device (or an office) that already has one waiting is merged into it (`coalesced`), never
queued twice. Office-level alarms have their own lane, served first and never dropped to make
room: only plain device traps are dropped when `queue_capacity` devices are already waiting
(`queue_full`). A storm therefore costs at most one queued entry per device, and an office-level
alarm never waits behind link traps.

v3: for an INFORM the receiver is the authoritative engine, so a user needs no engine id. For a
TRAP the sender is authoritative and USM keys are localized to the SENDER's engine id, so each
user lists the engine ids of the devices that send it traps (`V3TrapUser.engine_ids`); pysnmp
cannot accept a v3 trap from an engine it has no localized key for. With `learn_engine_ids`, a
v3 trap naming a configured user from an unknown engine id makes the receiver add that user for
that engine (keys localized on the spot) and process the same datagram again; the trap still has
to authenticate with the user's keys, and at most `max_learned_engine_ids` are learned (a flood
of made-up engine ids costs a bounded amount of key localization).

Everything that does not become an event is counted in `baton_traps_dropped_total{reason}`:
unknown_source, bad_community, auth (v3 user/digest/decryption), undecodable, other, queue_full,
receive_buffer. On the pysnmp path those happen inside pysnmp, so the receiver reads pysnmp's own
SNMPv2-MIB/USM counters before and after each datagram and attributes the difference; it also
catches everything pysnmp might raise on hostile bytes: the receiver survives any datagram.
Storm drops (queue_full, receive_buffer) are logged as `traps.storm_drops` at most every
`_STORM_LOG_S` seconds; single traps are logged at debug (a storm must not become a log storm).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hmac
import socket
import struct
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Final, Literal

import structlog
from pyasn1.codec.ber import decoder as ber_decoder
from pysnmp.carrier.asyncio.dgram import udp, udp6
from pysnmp.entity import config, engine
from pysnmp.entity.rfc3413 import ntfrcv
from pysnmp.proto import api as snmp_api
from pysnmp.proto.mpmod.rfc3412 import SNMPv3Message
from pysnmp.proto.secmod.rfc3414.service import UsmSecurityParameters

from baton.adapters.snmp import AUTH_PROTOCOLS, PRIV_PROTOCOLS, SecretResolver, convert
from baton.adapters.snmp_fast import BerError
from baton.adapters.snmp_values import SnmpValue
from baton.adapters.trap_fast import (
    PDU_TRAP_V1,
    PDU_TRAP_V2,
    SNMP_TRAP_ADDRESS,
    SNMP_TRAP_COMMUNITY,
    SNMP_TRAP_OID,
    SYS_UPTIME,
    VERSION_V1,
    VERSION_V2C,
    TrapDecoder,
    read_header,
)
from baton.core.model import SecretRef
from baton.metrics import Metrics

log = structlog.get_logger("baton.adapters.traps")

__all__ = [
    "SNMP_TRAP_ADDRESS",
    "SNMP_TRAP_COMMUNITY",
    "SNMP_TRAP_OID",
    "STANDARD_TRAPS",
    "SYS_UPTIME",
    "TrapEvent",
    "TrapQueue",
    "TrapReceiver",
    "TrapReceiverConfig",
    "TrapReceiverError",
    "TrapSource",
    "V3TrapUser",
    "VendorTrap",
]

STANDARD_TRAPS: Final = MappingProxyType(
    {
        "1.3.6.1.6.3.1.1.5.1": "coldStart",
        "1.3.6.1.6.3.1.1.5.2": "warmStart",
        "1.3.6.1.6.3.1.1.5.3": "linkDown",
        "1.3.6.1.6.3.1.1.5.4": "linkUp",
    }
)
_MAX_VARBINDS_KEPT: Final = 32
_MAX_VALUE_CHARS: Final = 200
_UNKEPT: Final = frozenset({SNMP_TRAP_OID, SYS_UPTIME, SNMP_TRAP_COMMUNITY})
_MAX_DATAGRAM: Final = 65_535
_BATCH: Final = 512  # datagrams read per wake-up before the loop gets a turn
_STORM_LOG_S: Final = 10.0
DEFAULT_RECEIVE_BUFFER: Final = 16 * 1024 * 1024  # ~20,000 small traps (Linux doubles it)
DEFAULT_QUEUE_CAPACITY: Final = 10_000  # devices with a trap waiting for the monitor
# Linux values; Python's socket module does not name them all.
_SO_RCVBUFFORCE: Final = int(getattr(socket, "SO_RCVBUFFORCE", 33))
_SO_MEMINFO: Final = int(getattr(socket, "SO_MEMINFO", 55))
_SK_MEMINFO_DROPS: Final = 8  # index of the drop count in SO_MEMINFO's array of u32


@dataclass(frozen=True, slots=True)
class VendorTrap:
    """What a vendor notification OID means: its kind (bounded: it becomes a metric label) and
    whether it concerns the whole office (power, environment, door) rather than one device."""

    kind: str
    office_level: bool = False


@dataclass(frozen=True, slots=True)
class V3TrapUser:
    user: str
    auth_protocol: Literal["SHA", "SHA224", "SHA256", "SHA384", "SHA512", "MD5"] | None = None
    auth_key: SecretRef | None = None
    priv_protocol: Literal["AES", "AES192", "AES256", "DES"] | None = None
    priv_key: SecretRef | None = None
    # hex snmpEngineID of each device sending v3 TRAPs with this user ("80000000010203...")
    engine_ids: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class TrapReceiverConfig:
    host: str = "0.0.0.0"  # noqa: S104 (a trap receiver listens for every device)
    port: int = 162
    communities: tuple[SecretRef, ...] = ()
    v3_users: tuple[V3TrapUser, ...] = ()
    vendor_traps: Mapping[str, VendorTrap] = field(default_factory=lambda: MappingProxyType({}))
    learn_engine_ids: bool = False
    max_learned_engine_ids: int = 1000
    receive_buffer_bytes: int = DEFAULT_RECEIVE_BUFFER
    queue_capacity: int = DEFAULT_QUEUE_CAPACITY
    fast_path: bool = True  # False: every datagram through pysnmp (for comparisons)


@dataclass(frozen=True, slots=True)
class TrapSource:
    """Who sends from a management address."""

    device_id: str
    office_id: str


@dataclass(frozen=True, slots=True)
class TrapEvent:
    kind: str  # coldStart, warmStart, linkDown, linkUp, a vendor kind, or "other"
    source_address: str
    device_id: str | None
    office_id: str | None
    oid: str  # snmpTrapOID
    varbinds: tuple[tuple[str, str], ...]  # (oid, value) summary, bounded
    at: float
    office_level: bool = False
    version: Literal["1", "2c", "3"] = "2c"
    pdu: Literal["trap", "inform"] = "trap"


class TrapReceiverError(Exception):
    """The receiver cannot start; the message names the cause (a credential ref, never a value)."""


Deliver = Callable[[TrapEvent], None]
PutResult = Literal["queued", "coalesced", "dropped"]


class TrapQueue:
    """Bounded, coalescing queue of `TrapEvent`s between the receiver and the monitor.

    Two lanes, each first in first out: office-level alarms (keyed by office) and the rest
    (keyed by device). `put` merges an event into one already waiting with the same key
    ("coalesced": the monitor's reaction is the same and has not started), refuses a device
    event when `capacity` devices are waiting ("dropped"), and never drops an office-level
    alarm to make room (its lane holds one entry per office, within `capacity` too). `get`
    serves the office lane first.
    """

    def __init__(self, capacity: int = DEFAULT_QUEUE_CAPACITY) -> None:
        if capacity < 1:
            raise ValueError("queue capacity must be >= 1")
        self.capacity = capacity
        self._lanes: tuple[dict[str, TrapEvent], dict[str, TrapEvent]] = ({}, {})
        self._order: tuple[collections.deque[str], collections.deque[str]] = (
            collections.deque(),
            collections.deque(),
        )
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        self.coalesced = 0  # events merged into one already waiting
        self.dropped = 0  # device events refused because the queue was full
        self.max_depth = 0

    @staticmethod
    def key(event: TrapEvent) -> str:
        if event.office_level:
            return f"office:{event.office_id or event.source_address}"
        return f"device:{event.device_id or event.source_address}"

    def put(self, event: TrapEvent) -> PutResult:
        lane = 0 if event.office_level else 1
        waiting, order = self._lanes[lane], self._order[lane]
        key = self.key(event)
        if key in waiting:
            self.coalesced += 1
            return "coalesced"
        if len(waiting) >= self.capacity:  # lanes are apart: link traps never crowd out an alarm
            self.dropped += 1
            return "dropped"
        waiting[key] = event
        order.append(key)
        depth = len(self._lanes[0]) + len(self._lanes[1])
        if depth > self.max_depth:
            self.max_depth = depth
        self._wake_next()
        return "queued"

    def get_nowait(self) -> TrapEvent:
        for waiting, order in zip(self._lanes, self._order, strict=True):
            if order:
                return waiting.pop(order.popleft())
        raise asyncio.QueueEmpty

    async def get(self) -> TrapEvent:
        while self.empty():
            waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            except asyncio.CancelledError:
                if waiter.done() and not waiter.cancelled() and not self.empty():
                    self._wake_next()  # the wake-up was ours: pass it on
                raise
        return self.get_nowait()

    def _wake_next(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def empty(self) -> bool:
        return not (self._order[0] or self._order[1])

    def qsize(self) -> int:
        return len(self._order[0]) + len(self._order[1])

    def __len__(self) -> int:
        return self.qsize()


# (MIB module, symbol) of pysnmp's own counters, and the drop reason an increment means.
_COUNTERS: Final = (
    ("__SNMPv2-MIB", "snmpInBadCommunityNames", "bad_community"),
    ("__SNMPv2-MIB", "snmpInASNParseErrs", "undecodable"),
    ("__SNMPv2-MIB", "snmpInBadVersions", "undecodable"),
    ("__SNMP-MPD-MIB", "snmpInvalidMsgs", "undecodable"),
    ("__SNMP-MPD-MIB", "snmpUnknownSecurityModels", "undecodable"),
    ("__SNMP-MPD-MIB", "snmpUnknownPDUHandlers", "undecodable"),
    ("__SNMP-USER-BASED-SM-MIB", "usmStatsUnknownUserNames", "auth"),
    ("__SNMP-USER-BASED-SM-MIB", "usmStatsWrongDigests", "auth"),
    ("__SNMP-USER-BASED-SM-MIB", "usmStatsDecryptionErrors", "auth"),
    ("__SNMP-USER-BASED-SM-MIB", "usmStatsUnsupportedSecLevels", "auth"),
    # Engine-id discovery and time sync before a v3 INFORM: protocol, not a drop.
    ("__SNMP-USER-BASED-SM-MIB", "usmStatsUnknownEngineIDs", ""),
    ("__SNMP-USER-BASED-SM-MIB", "usmStatsNotInTimeWindows", ""),
)


class _SocketSender:
    """What pysnmp's transport writes to (an INFORM's response, a v3 report): our socket."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock

    def sendto(self, data: bytes, address: Any) -> None:
        try:
            self._sock.sendto(data, tuple(address))
        except OSError as exc:  # full send buffer, gone peer: the sender retries an INFORM
            log.debug("traps.response_not_sent", error=type(exc).__name__)

    def close(self) -> None:
        pass  # the receiver closes the socket

    def is_closing(self) -> bool:
        return False


class TrapReceiver:
    def __init__(
        self,
        settings: TrapReceiverConfig,
        resolve: SecretResolver,
        sources: Mapping[str, TrapSource] | None = None,
        *,
        deliver: Deliver | None = None,
        metrics: Metrics | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._settings = settings
        self._resolve = resolve
        self._sources: Mapping[str, TrapSource] = MappingProxyType(dict(sources or {}))
        self.events = TrapQueue(settings.queue_capacity)
        self._deliver = deliver if deliver is not None else self._enqueue
        self._metrics = metrics
        self._clock = clock
        self._engine: Any = None
        self._receiver: Any = None
        self._transport: Any = None
        self._socket: socket.socket | None = None
        self._communities: tuple[bytes, ...] = ()
        self._decoder = TrapDecoder()
        self._counters: list[tuple[Any, str]] = []
        self._handled = False
        self._users: dict[str, tuple[Any, str | None, Any, str | None]] = {}
        self._known_engines: set[tuple[bytes, str]] = set()
        self._learned = 0
        self._kernel_seen = 0
        self._meminfo = True
        self._storm_pending: dict[str, int] = {}
        self._storm_logged_at = -_STORM_LOG_S
        self.dropped: dict[str, int] = {}
        self.datagrams = 0  # datagrams read from the socket (or given to `receive`)
        self.accepted = 0  # events made
        self.receive_buffer_bytes = 0
        self.port = 0

    @property
    def coalesced(self) -> int:
        return self.events.coalesced

    @property
    def max_queued(self) -> int:
        return self.events.max_depth

    def set_sources(self, sources: Mapping[str, TrapSource]) -> None:
        """Replace the management address → device table (on reload)."""
        self._sources = MappingProxyType(dict(sources))

    async def start(self) -> None:
        """Resolve credentials, bind the socket and start receiving."""
        if self._engine is not None:
            return
        communities = [self._secret(ref) for ref in self._settings.communities]
        users = {}
        for u in self._settings.v3_users:
            auth = AUTH_PROTOCOLS.get(u.auth_protocol or "", config.USM_AUTH_NONE)
            priv = PRIV_PROTOCOLS.get(u.priv_protocol or "", config.USM_PRIV_NONE)
            auth_key = self._secret(u.auth_key) if u.auth_protocol and u.auth_key else None
            priv_key = self._secret(u.priv_key) if u.priv_protocol and u.priv_key else None
            users[u.user] = (auth, auth_key, priv, priv_key)

        family = socket.AF_INET6 if ":" in self._settings.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            self._size_buffer(sock)
            sock.bind((self._settings.host, self._settings.port))
        except OSError as exc:
            sock.close()
            raise TrapReceiverError(
                f"cannot listen for traps on {self._settings.host}:{self._settings.port}: {exc.strerror}"
            ) from exc
        sock.setblocking(False)

        eng = engine.SnmpEngine()
        try:
            transport = (
                udp6.Udp6AsyncioTransport() if family == socket.AF_INET6 else udp.UdpAsyncioTransport()
            )
            transport.transport = _SocketSender(sock)  # pysnmp writes here, never reads the socket
            domain = udp6.DOMAIN_NAME if family == socket.AF_INET6 else udp.DOMAIN_NAME
            config.add_transport(eng, domain, transport)
            for i, community in enumerate(communities):
                # Opaque index/security names: a community never becomes a name pysnmp may log.
                config.add_v1_system(eng, f"trap-c{i}", community, securityName=f"trap-c{i}")
            for user, (auth, auth_key, priv, priv_key) in users.items():
                config.add_v3_user(eng, user, auth, auth_key, priv, priv_key)  # informs
            for u in self._settings.v3_users:
                for engine_id in u.engine_ids:
                    self._add_engine_user(eng, users, u.user, bytes.fromhex(engine_id.removeprefix("0x")))
            self._receiver = ntfrcv.NotificationReceiver(eng, self._on_notification)
            builder = eng.get_mib_builder()
            self._counters = [
                (builder.import_symbols(module, name)[0], reason) for module, name, reason in _COUNTERS
            ]
            eng.transport_dispatcher.job_started(1)  # keep the dispatcher's timer running
            asyncio.get_running_loop().add_reader(sock, self._on_readable)
        except Exception:
            eng.close_dispatcher()
            sock.close()
            raise
        self._engine = eng
        self._transport = transport
        self._socket = sock
        self._users = users
        self._communities = tuple(c.encode() for c in communities)
        self.port = sock.getsockname()[1]
        if self._metrics is not None:
            self._metrics.set_trap_receive_buffer(self.receive_buffer_bytes)
            self._metrics.watch_trap_queue(self.events.qsize)
        log.info(
            "traps.listening",
            host=self._settings.host,
            port=self.port,
            communities=len(communities),
            v3_users=len(users),
            receive_buffer_bytes=self.receive_buffer_bytes,
            fast_path=self._settings.fast_path,
        )

    async def stop(self) -> None:
        if self._engine is None:
            return
        eng, self._engine = self._engine, None
        if self._socket is not None:
            with contextlib.suppress(OSError):
                asyncio.get_running_loop().remove_reader(self._socket)
        if self._receiver is not None:
            self._receiver.close(eng)
        eng.transport_dispatcher.job_finished(1)
        eng.close_dispatcher()
        if self._socket is not None:
            self._socket.close()
            self._socket = None
        self._flush_storm_log(force=True)
        log.info("traps.stopped", port=self.port, datagrams=self.datagrams, accepted=self.accepted)

    async def __aenter__(self) -> TrapReceiver:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- one datagram

    def receive(self, data: bytes, address: Any) -> None:
        """Process one datagram from `address` (host, port[, ...]): what the socket reader does
        with each datagram; public so a test can feed both paths the same bytes."""
        self.datagrams += 1
        source = _host_of(address)
        if not self._settings.fast_path:
            self._slow(data, address, source)
            return
        try:
            header = read_header(data)
        except BerError:
            self._drop("undecodable", source)
            return
        if header.version not in (VERSION_V1, VERSION_V2C):
            self._slow(data, address, source)  # v3
            return
        if not self._community_ok(header.community):
            self._drop("bad_community", source)
            return
        if header.pdu_tag not in (PDU_TRAP_V1, PDU_TRAP_V2):
            self._slow(data, address, source)  # an INFORM (answered by pysnmp), or not for us
            return
        try:
            trap = self._decoder.read_trap(data, header)
        except BerError as exc:
            log.debug("traps.undecodable", source=source, error=str(exc))
            self._drop("undecodable", source)
            return
        self._accept(source, trap.varbinds, trap.version, "trap")

    def _community_ok(self, community: bytes) -> bool:
        ok = False
        for known in self._communities:  # every one compared: no early exit, constant time
            ok |= hmac.compare_digest(known, community)
        return ok

    def _accept(
        self,
        source: str,
        varbinds: Sequence[tuple[str, SnmpValue]],
        version: Literal["1", "2c", "3"],
        pdu: Literal["trap", "inform"],
    ) -> None:
        summary: list[tuple[str, str]] = []
        trap_oid = ""
        agent_address = ""
        for oid, value in varbinds:
            text = value.type if value.value is None else str(value.value)
            if oid == SNMP_TRAP_OID:
                trap_oid = text
            elif oid == SNMP_TRAP_ADDRESS:
                agent_address = text
            if len(summary) < _MAX_VARBINDS_KEPT and oid not in _UNKEPT:
                summary.append((oid, text[:_MAX_VALUE_CHARS]))
        owner = self._sources.get(source) or (self._sources.get(agent_address) if agent_address else None)
        if owner is None:
            self._drop("unknown_source", source)
            return
        vendor = self._settings.vendor_traps.get(trap_oid)
        event = TrapEvent(
            kind=STANDARD_TRAPS.get(trap_oid) or (vendor.kind if vendor else "other"),
            source_address=source,
            device_id=owner.device_id,
            office_id=owner.office_id,
            oid=trap_oid,
            varbinds=tuple(summary),
            at=self._clock(),
            office_level=bool(vendor and vendor.office_level),
            version=version,
            pdu=pdu,
        )
        self.accepted += 1
        if self._metrics is not None:
            self._metrics.count_trap(event.kind)
        log.debug(
            "traps.received",
            kind=event.kind,
            source=source,
            device=event.device_id,
            office=event.office_id,
            version=version,
            pdu=pdu,
        )
        try:
            self._deliver(event)
        except Exception as exc:
            log.error("traps.deliver_failed", kind=event.kind, error=type(exc).__name__)

    def _enqueue(self, event: TrapEvent) -> None:
        result = self.events.put(event)
        if result == "coalesced":
            if self._metrics is not None:
                self._metrics.coalesce_trap()
        elif result == "dropped":
            self._drop("queue_full", event.source_address)

    # -- the socket

    def _size_buffer(self, sock: socket.socket) -> None:
        wanted = self._settings.receive_buffer_bytes
        try:
            sock.setsockopt(socket.SOL_SOCKET, _SO_RCVBUFFORCE, wanted)  # CAP_NET_ADMIN: past rmem_max
        except OSError:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, wanted)  # capped by rmem_max
        # Linux reports (and reserves) twice what was asked, for its bookkeeping.
        self.receive_buffer_bytes = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
        if self.receive_buffer_bytes < wanted:
            log.warning(
                "traps.receive_buffer_small",
                receive_buffer_bytes=self.receive_buffer_bytes,
                wanted_bytes=wanted,
                hint="raise net.core.rmem_max so a trap storm waits in the kernel rather than being dropped",
            )

    def _on_readable(self) -> None:
        sock = self._socket
        if sock is None:
            return
        for _ in range(_BATCH):
            try:
                data, address = sock.recvfrom(_MAX_DATAGRAM)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:  # e.g. ECONNREFUSED from an ICMP error: nothing to read
                log.debug("traps.recv_error", error=type(exc).__name__)
                break
            try:
                self.receive(data, address)
            except Exception as exc:  # a bug must cost one datagram, never the receiver
                log.error("traps.receive_crashed", error=type(exc).__name__, exc_info=True)
                self._drop("other", _host_of(address))
        self._kernel_drops(sock)
        self._flush_storm_log()

    def _kernel_drops(self, sock: socket.socket) -> None:
        """Count what the kernel dropped since the last look (the socket's drop counter)."""
        if not self._meminfo:
            return
        try:
            raw = sock.getsockopt(socket.SOL_SOCKET, _SO_MEMINFO, 4 * (_SK_MEMINFO_DROPS + 1))
            total = struct.unpack_from("=I", raw, 4 * _SK_MEMINFO_DROPS)[0]
        except (OSError, struct.error):
            self._meminfo = False  # not Linux (or too old): kernel drops go uncounted
            log.warning("traps.kernel_drops_uncounted", hint="SO_MEMINFO is not available here")
            return
        new = (total - self._kernel_seen) & 0xFFFFFFFF
        self._kernel_seen = total
        if new:
            self._drop("receive_buffer", "kernel", new)

    # -- pysnmp (v3, informs)

    def _slow(self, data: bytes, address: Any, source: str) -> None:
        transport = self._transport
        if transport is None:
            self._drop("other", source)
            return
        before = self._snapshot()
        self._handled = False
        try:
            transport._callback_function(transport, address, data)  # pysnmp's entry point
        except Exception as exc:  # hostile bytes must never take the receiver down
            log.debug("traps.undecodable", source=source, error=type(exc).__name__)
            self._drop("undecodable", source)
            return
        if self._handled:
            return
        reasons = [
            reason
            for (_, reason), old, new in zip(self._counters, before, self._snapshot(), strict=True)
            if new > old
        ]
        if "auth" in reasons and self._learn(self._engine, data):
            self._handled = False
            try:
                transport._callback_function(transport, address, data)
            except Exception:
                self._drop("undecodable", source)
                return
            if self._handled:
                return
        if not reasons:
            # A report/response or a message pysnmp swallowed without counting.
            self._drop("other", source)
        elif any(reasons):
            self._drop(next(r for r in reasons if r), source)

    def _on_notification(
        self,
        snmp_engine: Any,
        _state_reference: Any,
        _context_engine_id: Any,
        _context_name: Any,
        var_binds: Sequence[tuple[Any, Any]],
        _cb_ctx: Any,
    ) -> None:
        self._handled = True
        context = snmp_engine.observer.get_execution_context("rfc3412.receiveMessage:request")
        source = _host_of(context.get("transportAddress"))
        try:
            pairs = [(str(name), convert(value)) for name, value in var_binds]
            mp_model = int(context.get("messageProcessingModel", 1))
            version: Literal["1", "2c", "3"] = "1" if mp_model == 0 else "3" if mp_model == 3 else "2c"
            pdu = context.get("pdu")
            is_inform = pdu is not None and pdu.tagSet == snmp_api.v2c.InformRequestPDU.tagSet
        except Exception as exc:  # pysnmp swallows callback exceptions; count them instead
            log.warning("traps.unmappable", source=source, error=type(exc).__name__)
            self._drop("other", source)
            return
        self._accept(source, pairs, version, "inform" if is_inform else "trap")

    def _secret(self, ref: SecretRef) -> str:
        try:
            value = self._resolve(ref)
        except Exception as exc:
            raise TrapReceiverError(f"credential {ref} cannot be resolved") from exc
        if not value:
            raise TrapReceiverError(f"credential {ref} cannot be resolved (empty)")
        return value

    def _add_engine_user(
        self,
        eng: Any,
        users: Mapping[str, tuple[Any, str | None, Any, str | None]],
        user: str,
        engine_id: bytes,
    ) -> None:
        if (engine_id, user) in self._known_engines:
            return
        auth, auth_key, priv, priv_key = users[user]
        config.add_v3_user(
            eng,
            user,
            auth,
            auth_key,
            priv,
            priv_key,
            securityEngineId=snmp_api.v2c.OctetString(engine_id),
        )
        self._known_engines.add((engine_id, user))

    def _snapshot(self) -> list[int]:
        return [int(instance.syntax) for instance, _ in self._counters]

    def _learn(self, eng: Any, whole_msg: bytes) -> bool:
        """Add a configured v3 user for the unknown engine id this message came from."""
        if not self._settings.learn_engine_ids or self._learned >= self._settings.max_learned_engine_ids:
            return False
        try:
            message, _ = ber_decoder.decode(whole_msg, asn1Spec=SNMPv3Message())
            params, _ = ber_decoder.decode(
                bytes(message.getComponentByPosition(2)), asn1Spec=UsmSecurityParameters()
            )
            engine_id = bytes(params.getComponentByPosition(0))
            user = bytes(params.getComponentByPosition(3)).decode()
        except Exception:
            return False
        if user not in self._users or not engine_id or (engine_id, user) in self._known_engines:
            return False
        (local_engine_id,) = eng.get_mib_builder().import_symbols("__SNMP-FRAMEWORK-MIB", "snmpEngineID")
        if engine_id == bytes(local_engine_id.syntax):
            return False  # an INFORM to us that failed authentication: nothing to learn
        self._add_engine_user(eng, self._users, user, engine_id)
        self._learned += 1
        log.info("traps.engine_id_learned", user=user, engine_id=engine_id.hex())
        return True

    # -- drops

    def _drop(self, reason: str, source: str, count: int = 1) -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + count
        if self._metrics is not None:
            self._metrics.drop_trap(reason, count)
        if reason in ("queue_full", "receive_buffer"):
            self._storm_pending[reason] = self._storm_pending.get(reason, 0) + count
        else:
            log.debug("traps.dropped", reason=reason, source=source)

    def _flush_storm_log(self, *, force: bool = False) -> None:
        if not self._storm_pending:
            return
        now = time.monotonic()
        if not force and now - self._storm_logged_at < _STORM_LOG_S:
            return
        self._storm_logged_at = now
        pending, self._storm_pending = self._storm_pending, {}
        log.warning(
            "traps.storm_drops",
            **{f"{reason}_dropped": count for reason, count in sorted(pending.items())},
            queued=self.events.qsize(),
            hint="polls still decide; a dropped trap only makes detection wait for the next poll",
        )


def _host_of(address: Any) -> str:
    try:
        return str(address[0])
    except Exception:
        return "?"
