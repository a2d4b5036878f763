"""SNMP poller: one health probe of one device = one GET (plus a GETBULK walk when needed).

Theory of operation
-------------------
A poll reads sysUpTime, the ifOperStatus of the device's critical interfaces and its extra OIDs
in ONE GET PDU. With no critical interfaces configured, the ifOperStatus column is walked with
GETBULK instead (informational: it never fails the probe unless the agent answers garbage).
`assess` (pure, unit-tested) turns the answer into ok/reason; `is_reboot` compares sysUpTime with
the previous poll's.

v2c polls take the fast path (`snmp_fast`): each device's GET is BER-encoded once, only the
request-id is spliced in per poll, and the answer is read by a strict reader of the GetResponse
shape (request-id, source address and community must match, varbind OIDs must equal the ones
asked, every length and value range is checked; malformed = "garbage", never an exception).
That is ~0.3–0.4 ms of CPU per poll instead of ~1.7–2 ms through pysnmp's generic pyasn1 codec,
so 10,000 devices every 10 s fit in one process on one core. `SnmpPoller(fast_v2c=False)` sends
v2c through pysnmp instead (used by the differential tests and `bench/poll.py --impl pysnmp`).

v3 authNoPriv/authPriv polls with MD5, SHA-1 or SHA-2 authentication and AES-128/192/256
privacy take the v3 fast path (`snmp_v3`): RFC 3414 USM on `hashlib` and `cryptography` with
the same BER codec, engine discovery and time synchronisation, every answer authenticated before
it is believed (0.07 ms of CPU per poll side by side, 0.16 ms inside the scheduler at 10,000
devices, instead of 0.86–2.2 ms through pysnmp; bench/README.md). DES privacy and
noAuthNoPriv users, and `SnmpPoller(fast_v3=False)`, go through pysnmp. pysnmp's high-level API
re-runs its LCD configurator and MIB resolution on every call; at 10,000 devices every 10 s that
is most of the CPU. So this module talks to pysnmp's command generator directly: per device, the
target (address, parameters, community/USM user) is written into the engine's LCD ONCE (~11 ms
CPU) and reused until the device's settings change. Varbinds are built from numeric OIDs, and no
MibViewController is ever created: no MIB is loaded or compiled at run time.

USM users are keyed by user name in an engine, so two devices that use the same v3 user name with
different keys cannot share an engine: such a device gets the next engine slot (one more UDP
socket). Key changes on reload land in a fresh slot for the same reason (pysnmp keeps localized
copies of a user per remote engine id, which cannot be updated in place).

pysnmp objects never leave this module: callers see `SnmpReading` (and `Observation`).
Secrets are resolved when a target is built, handed to pysnmp (or baked into the fast path's
pre-encoded request, which is never logged or shown in a repr), and kept nowhere else (only a
digest, to notice changes); they never appear in readings, logs or metrics.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import heapq
import ipaddress
import socket
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Final, Literal

import structlog
from pysnmp.carrier.asyncio.dgram import udp, udp6
from pysnmp.entity import config, engine
from pysnmp.entity.rfc3413 import cmdgen
from pysnmp.proto import errind, rfc1902
from pysnmp.proto.error import StatusInformation

from baton.adapters.snmp_fast import (
    PDU_GET_BULK,
    BerError,
    GetTemplate,
    Response,
    SourceAddressError,
    V2cClient,
    V2cTimeout,
    decode_oid,
    encode_pdu,
    encode_request,
)
from baton.adapters.snmp_v3 import AUTH_PROTOCOLS as FAST_V3_AUTH
from baton.adapters.snmp_v3 import PRIV_KEY_SIZES as FAST_V3_PRIV
from baton.adapters.snmp_v3 import Engine, PduTemplate, UsmUser, V3Client, V3Failure, V3Target
from baton.adapters.snmp_values import SnmpValue
from baton.core.health import Observation
from baton.core.model import Device, Protocol, SecretRef, SnmpSettings
from baton.metrics import Metrics

log = structlog.get_logger("baton.adapters.snmp")

SYS_UPTIME_OID: Final = "1.3.6.1.2.1.1.3.0"
IF_OPER_STATUS_OID: Final = "1.3.6.1.2.1.2.2.1.8"
TICKS_WRAP: Final = 2**32  # TimeTicks is 32 bits of 1/100 s: wraps after ~497 days

FailureClass = Literal["timeout", "auth", "error", "garbage", "credential", "config"]
SecretResolver = Callable[[SecretRef], str]
Clock = Callable[[], float]

_INT_TYPES: Final = frozenset(
    {"Integer", "Integer32", "Counter32", "Gauge32", "Unsigned32", "TimeTicks", "Counter64"}
)
_ABSENT_TYPES: Final = {
    "NoSuchObject": "noSuchObject",
    "NoSuchInstance": "noSuchInstance",
    "EndOfMibView": "endOfMibView",
    "Null": "null",
}
_STR_TYPES: Final = frozenset(
    {"OctetString", "IpAddress", "Opaque", "Bits", "ObjectIdentifier", "ObjectName"}
)
# RFC 2863 ifOperStatus
IF_OPER_STATUS_NAMES: Final = {
    1: "up",
    2: "down",
    3: "testing",
    4: "unknown",
    5: "dormant",
    6: "notPresent",
    7: "lowerLayerDown",
}
# RFC 3416 error-status
_ERROR_STATUS_NAMES: Final = (
    "noError",
    "tooBig",
    "noSuchName",
    "badValue",
    "readOnly",
    "genErr",
    "noAccess",
    "wrongType",
    "wrongLength",
    "wrongEncoding",
    "wrongValue",
    "noCreation",
    "inconsistentValue",
    "resourceUnavailable",
    "commitFailed",
    "undoFailed",
    "authorizationError",
    "notWritable",
    "inconsistentName",
)
AUTH_PROTOCOLS: Final = {
    "MD5": config.USM_AUTH_HMAC96_MD5,
    "SHA": config.USM_AUTH_HMAC96_SHA,
    "SHA224": config.USM_AUTH_HMAC128_SHA224,
    "SHA256": config.USM_AUTH_HMAC192_SHA256,
    "SHA384": config.USM_AUTH_HMAC256_SHA384,
    "SHA512": config.USM_AUTH_HMAC384_SHA512,
}
# net-snmp's AES192/AES256 extend the key the Blumenthal way (draft-blumenthal-aes-usm-04);
# pysnmp's plain USM_PRIV_CFB192_AES is the other ("Reeder", Cisco AES192C) variant.
PRIV_PROTOCOLS: Final = {
    "DES": config.USM_PRIV_CBC56_DES,
    "AES": config.USM_PRIV_CFB128_AES,
    "AES192": config.USM_PRIV_CFB192_AES_BLUMENTHAL,
    "AES256": config.USM_PRIV_CFB256_AES_BLUMENTHAL,
}
_WALK_MAX_REPETITIONS: Final = 25
_WALK_MAX_PAGES: Final = 80  # 2,000 interfaces: an agent that never ends its column is cut off


# --- values and pure interpretation ---------------------------------------------------------


def convert(value: Any) -> SnmpValue:
    """A pysnmp/pyasn1 value as an `SnmpValue`; never raises (unknown types become "other")."""
    for cls in type(value).__mro__:
        name = cls.__name__
        try:
            if name in _INT_TYPES:
                return SnmpValue(name, int(value))
            if name in _ABSENT_TYPES:
                return SnmpValue(_ABSENT_TYPES[name], None)
            if name == "IpAddress":
                return SnmpValue(name, value.prettyPrint())
            if name in ("ObjectIdentifier", "ObjectName"):
                return SnmpValue("ObjectIdentifier", str(value))
            if name in _STR_TYPES:
                raw = bytes(value)
                try:
                    return SnmpValue(name, raw.decode("utf-8"))
                except UnicodeDecodeError:
                    return SnmpValue(name, "0x" + raw.hex())
        except Exception:  # a value pyasn1 cannot render (e.g. no value set): garbage
            return SnmpValue("undecodable", None)
    return SnmpValue(type(value).__name__, None)


@dataclass(frozen=True, slots=True)
class Assessment:
    """What a device's answer means: ok or the first reasons it is not."""

    ok: bool
    reason: str
    failure: FailureClass | None
    sys_uptime: int | None
    if_oper_status: Mapping[int, int]
    extra: Mapping[str, int | str]
    warnings: tuple[str, ...]


def assess(
    settings: SnmpSettings,
    got: Mapping[str, SnmpValue],
    walked: Mapping[int, SnmpValue] | None = None,
) -> Assessment:
    """Judge one poll's answer.

    `got` maps the numeric OIDs of the GET to their values; `walked` is the ifOperStatus column
    (ifIndex → value) when no critical interface is configured. Not ok when sysUpTime or a critical
    interface is missing or of the wrong type ("garbage"), or a critical interface is not up(1).
    Extra OIDs are informational: a missing one is a warning, never a failure (a typo in the
    inventory must not close an office).
    """
    problems: list[str] = []
    failure: FailureClass | None = None
    garbage: list[str] = []

    uptime_value = got.get(SYS_UPTIME_OID, SnmpValue("missing", None))
    sys_uptime: int | None = None
    if uptime_value.is_int and uptime_value.value is not None:
        sys_uptime = int(uptime_value.value)
    else:
        garbage.append(f"sysUpTime is {uptime_value.describe()}, expected TimeTicks")

    statuses: dict[int, int] = {}
    down: list[str] = []
    for if_index in settings.critical_interfaces:
        value = got.get(f"{IF_OPER_STATUS_OID}.{if_index}", SnmpValue("missing", None))
        if not value.is_int or value.value is None:
            garbage.append(f"ifIndex {if_index} ifOperStatus is {value.describe()}, expected INTEGER")
            continue
        status = int(value.value)
        statuses[if_index] = status
        if status == 2:
            down.append(f"ifIndex {if_index} down")
        elif status != 1:
            down.append(f"ifIndex {if_index} not up ({IF_OPER_STATUS_NAMES.get(status, status)})")
    for if_index, value in sorted((walked or {}).items()):
        if value.is_int and value.value is not None:
            statuses[if_index] = int(value.value)
        else:
            garbage.append(f"ifIndex {if_index} ifOperStatus is {value.describe()}, expected INTEGER")

    extra: dict[str, int | str] = {}
    warnings: list[str] = []
    for name, oid in settings.oids.items():
        value = got.get(_normal_oid(oid), SnmpValue("missing", None))
        if value.value is None:
            warnings.append(f"{name} ({oid}) is {value.type}")
        else:
            extra[name] = value.value

    if garbage:
        failure = "garbage"
        problems.extend(garbage)
    if down:
        failure = failure or "error"
        problems.extend(down)
    return Assessment(
        ok=not problems,
        reason="; ".join(problems),
        failure=failure,
        sys_uptime=sys_uptime,
        if_oper_status=MappingProxyType(statuses),
        extra=MappingProxyType(extra),
        warnings=tuple(warnings),
    )


def is_reboot(previous_ticks: int | None, previous_at: float | None, ticks: int, at: float) -> bool:
    """Did the agent restart between two polls? sysUpTime going backwards means yes, unless the
    32-bit TimeTicks counter wrapped: then the new value sits near (previous + elapsed) − 2³²."""
    if previous_ticks is None or previous_at is None or ticks >= previous_ticks:
        return False
    expected = previous_ticks + max(0.0, at - previous_at) * 100
    if expected >= TICKS_WRAP:
        wrapped = expected - TICKS_WRAP
        slack = 100 * 60  # a minute of scheduling jitter and agent clock drift
        if abs(ticks - wrapped) <= slack:
            return False
    return True


def describe_error_status(status: int) -> str:
    if 0 <= status < len(_ERROR_STATUS_NAMES):
        return _ERROR_STATUS_NAMES[status]
    return f"errorStatus {status}"


def classify_error_indication(indication: object) -> tuple[FailureClass, str]:
    """A pysnmp errorIndication as (failure class, reason); timeouts are handled by the caller."""
    auth_reasons: tuple[tuple[type[Exception], str], ...] = (
        (errind.WrongDigest, "wrong digest (v3 auth failure)"),
        (errind.UnknownUserName, "unknown v3 user"),
        (errind.DecryptionError, "decryption error (v3 privacy key or protocol mismatch)"),
        (errind.UnsupportedSecurityLevel, "unsupported v3 security level"),
        (errind.NotInTimeWindow, "not in time window (v3)"),
        (errind.UnknownEngineID, "unknown engine id (v3 discovery failed)"),
        (errind.AuthenticationFailure, "authentication failure"),
        (errind.AuthenticationError, "authentication error"),
        (errind.EncryptionError, "encryption error (v3 privacy unavailable)"),
        (errind.UnknownCommunityName, "unknown community"),
    )
    for cls, reason in auth_reasons:
        if isinstance(indication, cls):
            return "auth", reason
    if isinstance(indication, errind.DeserializationError):
        return "garbage", f"undecodable response ({indication})"
    return "error", str(indication) or type(indication).__name__


def phase_offset(device_id: str, interval_s: float) -> float:
    """A device's stable place in the poll interval, in [0, interval_s): hashing the id spreads
    many devices evenly and keeps each one's phase the same across restarts and reloads."""
    digest = hashlib.blake2b(device_id.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64 * interval_s


def _normal_oid(oid: str) -> str:
    return oid.strip().lstrip(".")


def _oid_tuple(oid: str) -> tuple[int, ...]:
    return tuple(int(part) for part in _normal_oid(oid).split("."))


# --- readings ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SnmpReading:
    """The result of one poll of one device."""

    device: str
    ok: bool
    at: float  # clock time the poll started (the poller's `clock`, wall time by default)
    reason: str = ""
    failure: FailureClass | None = None
    latency_s: float | None = None
    sys_uptime: int | None = None  # TimeTicks, 1/100 s
    if_oper_status: Mapping[int, int] = field(default_factory=lambda: MappingProxyType({}))
    extra: Mapping[str, int | str] = field(default_factory=lambda: MappingProxyType({}))
    rebooted: bool = False
    warnings: tuple[str, ...] = ()

    def to_observation(self) -> Observation:
        return Observation(
            device=self.device,
            protocol=Protocol.SNMP,
            ok=self.ok,
            at=self.at,
            reason=self.reason,
            latency_s=self.latency_s,
        )


class SnmpSetupError(Exception):
    """A device's SNMP target cannot be built; the message names the cause, never a secret."""

    def __init__(self, failure: FailureClass, reason: str) -> None:
        super().__init__(reason)
        self.failure: FailureClass = failure
        self.reason = reason


# --- pysnmp plumbing -----------------------------------------------------------------------


class EngineSlot:
    """One SnmpEngine (one UDP socket per address family) and what is configured in it."""

    def __init__(self, index: int, source_address: str | None = None) -> None:
        self.index = index
        self.source = ipaddress.ip_address(source_address) if source_address is not None else None
        self.engine = engine.SnmpEngine()
        self.users: dict[str, str] = {}  # v3 user name -> digest of (protocols, keys)
        self.communities: dict[str, str] = {}  # digest of community -> security name
        self.params: dict[tuple[str, str, int], str] = {}  # (security name, level, mp model) -> name
        self.domains: set[tuple[int, ...]] = set()
        self.next_id = 0

    def name(self, prefix: str) -> str:
        self.next_id += 1
        return f"{prefix}{self.index}-{self.next_id}"

    def target_params(self, security_name: str, level: str, mp_model: int) -> str:
        """The name of the target parameters for this security, added once per engine."""
        key = (security_name, level, mp_model)
        name = self.params.get(key)
        if name is None:
            name = self.name("p")
            config.add_target_parameters(self.engine, name, security_name, level, mp_model)
            self.params[key] = name
        return name

    def ensure_transport(self, domain: tuple[int, ...]) -> None:
        if domain in self.domains:
            return
        six = domain == udp6.DOMAIN_NAME
        transport = udp6.Udp6AsyncioTransport() if six else udp.UdpAsyncioTransport()
        source = self.source
        iface = (str(source), 0) if source is not None and (source.version == 6) == six else None
        config.add_transport(self.engine, domain, transport.open_client_mode(iface))
        self.domains.add(domain)

    def close(self) -> None:
        if self.engine.transport_dispatcher is not None:
            self.engine.close_dispatcher()


@dataclass(slots=True)
class _FastV2c:
    """A v2c target on the fast path: the pre-encoded GET and where it goes."""

    address: tuple[str, int]
    family: int
    community: bytes = field(repr=False)
    template: GetTemplate = field(repr=False)


@dataclass(slots=True)
class _Target:
    key: tuple[Any, ...]
    slot: EngineSlot | None  # None on the v2c fast path (no pysnmp engine involved)
    addr_name: str
    timeout_s: float
    tries: int
    get_oids: tuple[str, ...]
    get_varbinds: tuple[tuple[rfc1902.ObjectName, Any], ...]
    walk: bool
    fast: _FastV2c | None = None
    fast3: V3Target | None = None  # v3 on the fast path (snmp_v3)

    def timed_out(self) -> SnmpSetupError:
        tries = "try" if self.tries == 1 else "tries"
        return SnmpSetupError("timeout", f"timeout after {self.timeout_s:.1f} s × {self.tries} {tries}")


def _settings_key(device: Device, snmp: SnmpSettings) -> tuple[Any, ...]:
    return (
        device.address,
        snmp.version,
        snmp.port,
        snmp.timeout_s,
        snmp.retries,
        snmp.community,
        snmp.user,
        snmp.auth_protocol,
        snmp.auth_key,
        snmp.priv_protocol,
        snmp.priv_key,
        tuple(sorted(snmp.oids.items())),
        snmp.critical_interfaces,
    )


def _digest(*parts: object) -> str:
    return hashlib.sha256(repr(parts).encode()).hexdigest()


_NULL: Final = rfc1902.Null("")


class _Limiter:
    """A FIFO concurrency limit with O(1) release.

    asyncio.Semaphore in Python 3.11 rescans every woken-but-not-yet-running waiter on each
    release; with thousands of polls queued behind `max_concurrency` (a burst, slow agents) that
    is quadratic and was measured as the poller's top CPU cost. Here a release hands its slot
    straight to the oldest live waiter.
    """

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError("max_concurrency must be >= 1")
        self._free = limit
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()

    async def acquire(self) -> None:
        if self._free > 0 and not self._waiters:
            self._free -= 1
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.release()  # the slot was handed over just before the cancellation
            raise

    def release(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)  # the slot passes to the waiter as is
                return
        self._free += 1


class _Slot:
    """One poll's hold on the limiter, given back once: when the poll ends or has waited its
    `slot_hold_s`, whichever comes first."""

    __slots__ = ("_limiter",)

    def __init__(self, limiter: _Limiter) -> None:
        self._limiter: _Limiter | None = limiter

    def give_back(self) -> None:
        limiter, self._limiter = self._limiter, None
        if limiter is not None:
            limiter.release()


class SnmpPoller:
    """Polls devices over SNMP v2c/v3. Never raises for a device's failure: it is in the reading.

    `resolve` turns a `SecretRef` into its value (e.g. `functools.partial(baton.secrets.resolve,
    base_dir=...)`); `max_concurrency` bounds the polls starting together (a burst of re-polls, a
    reload): a poll holds one of those slots until it ends or has waited `slot_hold_s`, whichever
    comes first, so polls of dark devices, waiting out their timeouts, never hold the slots live
    devices' polls need (a poll in flight costs a timer and a table entry; the scheduler never
    has two of one device's polls in flight); `clock` stamps readings.
    `fast_v2c` (default) polls v2c devices through `snmp_fast` (pre-encoded GET, strict BER
    reader, ~10× less CPU than pysnmp); False sends them through pysnmp. `fast_v3` (default)
    polls v3 authNoPriv/authPriv devices with MD5/SHA/SHA-2 auth and AES-128/192/256 privacy
    through `snmp_v3` (USM without pysnmp); DES and noAuthNoPriv users, or `fast_v3=False`,
    go through pysnmp. `source_address`: every poll leaves from this local address (a vantage's
    own, `vantage.source_address`); None: the kernel's choice.
    """

    def __init__(
        self,
        resolve: SecretResolver,
        *,
        max_concurrency: int = 500,
        slot_hold_s: float = 0.25,
        metrics: Metrics | None = None,
        clock: Clock = time.time,
        fast_v2c: bool = True,
        fast_v3: bool = True,
        source_address: str | None = None,
    ) -> None:
        if slot_hold_s <= 0:
            raise ValueError("slot_hold_s must be > 0")
        self._resolve = resolve
        self._limiter = _Limiter(max_concurrency)
        self._slot_hold_s = slot_hold_s
        self._metrics = metrics
        self._clock = clock
        self._slots: list[EngineSlot] = []
        self._targets: dict[str, _Target] = {}
        self._last_uptime: dict[str, tuple[int, float]] = {}  # device -> (ticks, monotonic time)
        self._last_ok: dict[str, bool] = {}
        self._get = cmdgen.GetCommandGenerator()
        self._bulk = cmdgen.BulkCommandGeneratorSingleRun()
        self._fast_v2c = fast_v2c
        self._source_address = source_address
        self._v2c = V2cClient(source_address)
        self._fast_v3 = fast_v3
        self._v3 = V3Client(on_engine=_log_engine_event, source_address=source_address)
        self._closed = False

    # -- lifecycle

    def forget(self, device_id: str) -> None:
        """Drop a device's target and history (it left the inventory, or its secrets rotated)."""
        self._targets.pop(device_id, None)
        self._last_uptime.pop(device_id, None)
        self._last_ok.pop(device_id, None)

    def close(self) -> None:
        """Close every engine's sockets and timers. Polls in flight then end as errors."""
        self._closed = True
        self._v2c.close()
        self._v3.close()
        for slot in self._slots:
            slot.close()
        self._slots.clear()
        self._targets.clear()

    async def __aenter__(self) -> SnmpPoller:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()

    @property
    def engine_count(self) -> int:
        return len(self._slots)

    @property
    def target_count(self) -> int:
        return len(self._targets)

    @property
    def unmatched_datagrams(self) -> int:
        """Datagrams on the fast paths that answered no request (junk, late, spoofed)."""
        return self._v2c.unmatched + self._v3.unmatched

    def v3_engine(self, device_id: str) -> tuple[str, int] | None:
        """(engine id in hex, engineBoots) of a v3 fast-path device's agent, once discovered."""
        target = self._targets.get(device_id)
        engine = target.fast3.engine if target is not None and target.fast3 is not None else None
        return (engine.engine_id.hex(), engine.boots) if engine is not None else None

    @property
    def discarded_v3_answers(self) -> int:
        """v3 datagrams that carried one of our msgIDs but were not believed (digest, time
        window, engine id, security level, request-id)."""
        return self._v3.discarded

    # -- polling

    async def poll(self, device: Device) -> SnmpReading:
        """Poll one device: sysUpTime, critical ifOperStatus (or the column), extra OIDs."""
        await self._limiter.acquire()
        slot = _Slot(self._limiter)
        timer = asyncio.get_running_loop().call_later(self._slot_hold_s, slot.give_back)
        try:
            at = self._clock()
            started = time.perf_counter()
            try:
                reading = await self._poll(device, at, started)
            except Exception as exc:  # a bug or a pysnmp surprise must not kill the monitor
                log.warning("snmp.poll_crashed", device=device.id, error=type(exc).__name__)
                reading = SnmpReading(
                    device.id,
                    False,
                    at,
                    f"internal error in SNMP poll ({type(exc).__name__})",
                    "error",
                    time.perf_counter() - started,
                )
        finally:
            timer.cancel()
            slot.give_back()
        self._record(device, reading)
        return reading

    def _record(self, device: Device, reading: SnmpReading) -> None:
        if self._metrics is not None:
            self._metrics.observe_probe("snmp", reading.latency_s or 0.0, reading.failure)
            self._metrics.set_device_up(device.office, device.id, reading.ok)
        previous = self._last_ok.get(device.id)
        self._last_ok[device.id] = reading.ok
        if previous is None or previous != reading.ok:
            if reading.ok:
                log.info("snmp.device_answering", device=device.id, office=device.office)
            else:
                log.info(
                    "snmp.device_failing",
                    device=device.id,
                    office=device.office,
                    reason=reading.reason,
                    failure=reading.failure,
                )
        if reading.rebooted:
            log.info(
                "snmp.device_rebooted", device=device.id, office=device.office, sys_uptime=reading.sys_uptime
            )

    async def _poll(self, device: Device, at: float, started: float) -> SnmpReading:
        def failed(failure: FailureClass, reason: str) -> SnmpReading:
            return SnmpReading(device.id, False, at, reason, failure, time.perf_counter() - started)

        if self._closed:
            return failed("error", "poller closed")
        if device.snmp is None:
            return failed("config", "device has no snmp settings")
        try:
            target = await self._target(device, device.snmp)
        except SnmpSetupError as exc:
            return failed(exc.failure, exc.reason)

        fast = target.fast
        if fast is not None:
            got = await self._fast_get(target, fast)
        elif target.fast3 is not None:
            got = await self._fast3_get(target, target.fast3)
        else:
            got = await self._slow_get(target)
        if isinstance(got, SnmpSetupError):
            return failed(got.failure, got.reason)

        walked: dict[int, SnmpValue] | None = None
        if target.walk:
            walk = await self._walk_if_oper_status(target)
            if isinstance(walk, SnmpSetupError):
                return failed(walk.failure, walk.reason)
            walked = walk

        verdict = assess(device.snmp, got, walked)
        rebooted = False
        now = time.monotonic()
        if verdict.sys_uptime is not None:
            previous = self._last_uptime.get(device.id)
            rebooted = is_reboot(
                previous[0] if previous else None, previous[1] if previous else None, verdict.sys_uptime, now
            )
            self._last_uptime[device.id] = (verdict.sys_uptime, now)
        return SnmpReading(
            device=device.id,
            ok=verdict.ok,
            at=at,
            reason=verdict.reason,
            failure=verdict.failure,
            latency_s=time.perf_counter() - started,
            sys_uptime=verdict.sys_uptime,
            if_oper_status=verdict.if_oper_status,
            extra=verdict.extra,
            rebooted=rebooted,
            warnings=verdict.warnings,
        )

    async def _slow_get(self, target: _Target) -> dict[str, SnmpValue] | SnmpSetupError:
        answer = await self._request(target, "get", target.get_varbinds)
        if isinstance(answer, SnmpSetupError):
            return answer
        returned = [_normal_oid(str(name)) for name, _ in answer]
        if returned != list(target.get_oids):
            return SnmpSetupError("garbage", "response varbinds do not match the request")
        return {oid: convert(value) for oid, (_, value) in zip(target.get_oids, answer, strict=True)}

    async def _fast_exchange(
        self, target: _Target, fast: _FastV2c, datagram: bytes, request_id: int, asked: Sequence[str]
    ) -> Response | SnmpSetupError:
        """One v2c exchange on the fast path (retries included); every failure comes back as a value."""
        try:
            response = await self._v2c.request(
                fast.address,
                fast.family,
                fast.community,
                datagram,
                request_id,
                target.timeout_s,
                target.tries,
            )
        except V2cTimeout:
            return target.timed_out()
        except BerError as exc:
            return SnmpSetupError("garbage", f"undecodable response ({exc})")
        except ConnectionAbortedError:
            return SnmpSetupError("error", "poller closed")
        except SourceAddressError as exc:
            return SnmpSetupError("error", str(exc))
        except (OSError, RuntimeError) as exc:
            return SnmpSetupError("error", f"cannot send request ({type(exc).__name__})")
        status, index = response.error_status, response.error_index
        if status:
            failure: FailureClass = "auth" if status == 16 else "error"
            where = f" at {asked[index - 1]}" if 0 < index <= len(asked) else ""
            return SnmpSetupError(failure, f"{describe_error_status(status)}{where}")
        return response

    async def _fast_get(self, target: _Target, fast: _FastV2c) -> dict[str, SnmpValue] | SnmpSetupError:
        request_id = self._v2c.next_request_id()
        datagram = fast.template.encode(request_id)
        response = await self._fast_exchange(target, fast, datagram, request_id, target.get_oids)
        if isinstance(response, SnmpSetupError):
            return response
        varbinds = response.varbinds
        asked = fast.template.oid_bytes
        if len(varbinds) != len(asked) or any(
            name != oid for (name, _), oid in zip(varbinds, asked, strict=True)
        ):
            return SnmpSetupError("garbage", "response varbinds do not match the request")
        return {oid: value for oid, (_, value) in zip(target.get_oids, varbinds, strict=True)}

    async def _fast3_exchange(
        self, target: _Target, v3: V3Target, pdu_for: Callable[[int], bytes], asked: Sequence[str]
    ) -> Response | SnmpSetupError:
        """One v3 exchange on the fast path (discovery, resync and retries included)."""
        answer = await self._v3.request(v3, pdu_for, target.timeout_s, target.tries)
        if isinstance(answer, V3Failure):
            return SnmpSetupError(answer.failure, answer.reason)
        status, index = answer.error_status, answer.error_index
        if status:
            failure: FailureClass = "auth" if status == 16 else "error"
            where = f" at {asked[index - 1]}" if 0 < index <= len(asked) else ""
            return SnmpSetupError(failure, f"{describe_error_status(status)}{where}")
        return answer

    async def _fast3_get(self, target: _Target, v3: V3Target) -> dict[str, SnmpValue] | SnmpSetupError:
        response = await self._fast3_exchange(target, v3, v3.get.encode, target.get_oids)
        if isinstance(response, SnmpSetupError):
            return response
        varbinds = response.varbinds
        asked = v3.get.oid_bytes
        if len(varbinds) != len(asked) or any(
            name != oid for (name, _), oid in zip(varbinds, asked, strict=True)
        ):
            return SnmpSetupError("garbage", "response varbinds do not match the request")
        return {oid: value for oid, (_, value) in zip(target.get_oids, varbinds, strict=True)}

    async def _walk_if_oper_status(self, target: _Target) -> dict[int, SnmpValue] | SnmpSetupError:
        column = _oid_tuple(IF_OPER_STATUS_OID)
        cursor = column
        found: dict[int, SnmpValue] = {}
        for _ in range(_WALK_MAX_PAGES):
            answer = await self._bulk_page(target, cursor)
            if isinstance(answer, SnmpSetupError):
                return answer
            if not answer:
                return found
            for oid, value in answer:
                if value.type == "endOfMibView":
                    return found  # the agent's MIB ends here (the name repeats the last OID)
                if oid[: len(column)] != column or len(oid) != len(column) + 1:
                    return found  # left the column
                if oid <= cursor:
                    shown = ".".join(map(str, oid))
                    return SnmpSetupError("garbage", f"agent returned non-increasing OID {shown} in walk")
                cursor = oid
                found[oid[-1]] = value
        return found

    async def _bulk_page(
        self, target: _Target, cursor: tuple[int, ...]
    ) -> list[tuple[tuple[int, ...], SnmpValue]] | SnmpSetupError:
        """One GETBULK page from `cursor`: (OID, value) pairs, in the agent's order."""
        fast = target.fast
        asked = (".".join(map(str, cursor)),)
        response: Response | SnmpSetupError
        if target.fast3 is not None:

            def bulk_pdu(request_id: int) -> bytes:
                return encode_pdu(
                    request_id, (cursor,), pdu_tag=PDU_GET_BULK, max_repetitions=_WALK_MAX_REPETITIONS
                )

            response = await self._fast3_exchange(target, target.fast3, bulk_pdu, asked)
        elif fast is None:
            answer = await self._request(target, "bulk", ((rfc1902.ObjectName(cursor), _NULL),))
            if isinstance(answer, SnmpSetupError):
                return answer
            return [(tuple(name), convert(value)) for name, value in answer]
        else:
            request_id = self._v2c.next_request_id()
            datagram = encode_request(
                fast.community,
                request_id,
                (cursor,),
                pdu_tag=PDU_GET_BULK,
                max_repetitions=_WALK_MAX_REPETITIONS,
            )
            response = await self._fast_exchange(target, fast, datagram, request_id, asked)
        if isinstance(response, SnmpSetupError):
            return response
        try:
            return [(decode_oid(name), value) for name, value in response.varbinds]
        except BerError as exc:
            return SnmpSetupError("garbage", f"undecodable response ({exc})")

    async def _request(
        self,
        target: _Target,
        kind: Literal["get", "bulk"],
        varbinds: Sequence[tuple[rfc1902.ObjectName, Any]],
    ) -> Sequence[tuple[Any, Any]] | SnmpSetupError:
        """One request/response exchange, pysnmp retries included; errors come back as values."""
        slot = target.slot
        if slot is None:  # pragma: no cover - fast-path targets never come here
            return SnmpSetupError("error", "target has no pysnmp engine")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[tuple[object, int, int, Sequence[tuple[Any, Any]]]] = loop.create_future()

        def on_response(
            _engine: object,
            _handle: object,
            error_indication: object,
            error_status: Any,
            error_index: Any,
            var_binds: Sequence[tuple[Any, Any]],
            _ctx: object,
        ) -> None:
            if not future.done():
                try:
                    future.set_result(
                        (error_indication, int(error_status or 0), int(error_index or 0), var_binds)
                    )
                except Exception as exc:  # a status pyasn1 cannot turn into an int
                    future.set_result((errind.ParseError(str(type(exc).__name__)), 0, 0, ()))

        timed_out = target.timed_out()
        try:
            if kind == "get":
                self._get.send_varbinds(slot.engine, target.addr_name, None, "", varbinds, on_response)
            else:
                self._bulk.send_varbinds(
                    slot.engine,
                    target.addr_name,
                    None,
                    "",
                    0,
                    _WALK_MAX_REPETITIONS,
                    varbinds,
                    on_response,
                )
        except StatusInformation as exc:  # e.g. v3 privacy unavailable, raised while encoding
            indication = exc.get("errorIndication", None)
            failure, reason = classify_error_indication(indication)
            return SnmpSetupError(failure, reason)
        except Exception as exc:
            return SnmpSetupError("error", f"cannot send request ({type(exc).__name__})")
        # pysnmp enforces timeout × tries itself; this bound only guards against a lost callback
        # (v3 discovery adds one more round trip).
        hard_limit = target.timeout_s * (target.tries + 1) + 1.0
        try:
            error_indication, error_status, error_index, var_binds = await asyncio.wait_for(
                future, hard_limit
            )
        except TimeoutError:
            return timed_out
        if error_indication:
            if isinstance(error_indication, errind.RequestTimedOut):
                return timed_out
            failure, reason = classify_error_indication(error_indication)
            return SnmpSetupError(failure, reason)
        if error_status:
            failure_class: FailureClass = "auth" if error_status == 16 else "error"
            where = ""
            if 0 < error_index <= len(varbinds):
                where = f" at {varbinds[error_index - 1][0]}"
            return SnmpSetupError(failure_class, f"{describe_error_status(error_status)}{where}")
        return var_binds

    # -- targets

    async def _target(self, device: Device, snmp: SnmpSettings) -> _Target:
        key = _settings_key(device, snmp)
        target = self._targets.get(device.id)
        if target is not None and target.key == key:
            return target
        target = await self._build_target(device, snmp, key)
        self._targets[device.id] = target
        self._last_uptime.pop(device.id, None)  # a different agent (or address) has its own uptime
        return target

    def _secret(self, ref: SecretRef | None, what: str) -> str:
        if ref is None:
            raise SnmpSetupError("config", f"snmp {what} is not configured")
        try:
            value = self._resolve(ref)
        except Exception as exc:
            # The resolver's message might quote the secret's surroundings: name only the ref.
            raise SnmpSetupError("credential", f"credential {ref} cannot be resolved") from exc
        if not value:
            raise SnmpSetupError("credential", f"credential {ref} cannot be resolved (empty)")
        return value

    async def _resolve_address(
        self, address: str, port: int, timeout_s: float
    ) -> tuple[tuple[int, ...], str]:
        try:
            ip = ipaddress.ip_address(address.strip("[]"))
        except ValueError:
            loop = asyncio.get_running_loop()
            try:
                infos = await asyncio.wait_for(
                    loop.getaddrinfo(address, port, type=socket.SOCK_DGRAM), timeout=timeout_s
                )
            except (OSError, TimeoutError) as exc:
                raise SnmpSetupError(
                    "error", f"cannot resolve address {address} ({type(exc).__name__})"
                ) from exc
            if not infos:
                raise SnmpSetupError("error", f"cannot resolve address {address}") from None
            ip = ipaddress.ip_address(infos[0][4][0])
        domain = udp6.DOMAIN_NAME if ip.version == 6 else udp.DOMAIN_NAME
        return domain, str(ip)

    async def _build_target(self, device: Device, snmp: SnmpSettings, key: tuple[Any, ...]) -> _Target:
        if not 0 < snmp.port < 65536:
            raise SnmpSetupError("config", f"snmp port {snmp.port} out of range")
        if snmp.timeout_s <= 0 or snmp.retries < 0:
            raise SnmpSetupError("config", "snmp timeout_s must be > 0 and retries >= 0")
        try:
            oids = [_normal_oid(oid) for oid in snmp.oids.values()]
            for oid in oids:
                _oid_tuple(oid)
        except ValueError as exc:
            raise SnmpSetupError("config", "snmp oids must be numeric (no MIB names)") from exc
        domain, host = await self._resolve_address(device.address, snmp.port, snmp.timeout_s)
        get_oids = [SYS_UPTIME_OID]
        get_oids += [f"{IF_OPER_STATUS_OID}.{i}" for i in snmp.critical_interfaces]
        get_oids += [oid for oid in oids if oid not in get_oids]
        tries = snmp.retries + 1

        if snmp.version == "2c" and self._fast_v2c:
            community_bytes = self._secret(snmp.community, "community").encode()
            try:
                template = GetTemplate(community_bytes, [_oid_tuple(oid) for oid in get_oids])
            except ValueError as exc:
                raise SnmpSetupError("config", "snmp oids must be valid numeric OIDs") from exc
            family = socket.AF_INET6 if domain == udp6.DOMAIN_NAME else socket.AF_INET
            log.debug("snmp.target_built", device=device.id, engine="fast", version=snmp.version)
            return _Target(
                key=key,
                slot=None,
                addr_name="",
                timeout_s=snmp.timeout_s,
                tries=tries,
                get_oids=tuple(get_oids),
                get_varbinds=(),
                walk=not snmp.critical_interfaces,
                fast=_FastV2c((host, snmp.port), family, community_bytes, template),
            )

        if snmp.version == "2c":
            community = self._secret(snmp.community, "community")
            slot = self._slots[0] if self._slots else self._new_slot()
            digest = _digest("community", community)
            security_name = slot.communities.get(digest)
            if security_name is None:
                # The index and security name are ours and opaque: the community itself never
                # becomes a name that pysnmp might log.
                security_name = slot.name("c")
                config.add_v1_system(slot.engine, security_name, community, securityName=security_name)
                slot.communities[digest] = security_name
            level, mp_model = "noAuthNoPriv", 1
        else:
            user = snmp.user
            if not user:
                raise SnmpSetupError("config", "snmp v3 needs a user")
            auth = AUTH_PROTOCOLS.get(snmp.auth_protocol or "", config.USM_AUTH_NONE)
            priv = PRIV_PROTOCOLS.get(snmp.priv_protocol or "", config.USM_PRIV_NONE)
            auth_key = self._secret(snmp.auth_key, "auth_key") if snmp.auth_protocol else None
            priv_key = self._secret(snmp.priv_key, "priv_key") if snmp.priv_protocol else None
            if snmp.priv_protocol and not snmp.auth_protocol:
                raise SnmpSetupError("config", "snmp v3 privacy needs authentication")
            for what, k in (("auth_key", auth_key), ("priv_key", priv_key)):
                if k is not None and len(k) < 8:
                    # RFC 3414 pass phrases are at least 8 characters; pysnmp rejects shorter ones.
                    raise SnmpSetupError("credential", f"snmp v3 {what} is shorter than 8 characters")
            if (
                self._fast_v3
                and auth_key is not None
                and snmp.auth_protocol in FAST_V3_AUTH
                and (snmp.priv_protocol is None or snmp.priv_protocol in FAST_V3_PRIV)
            ):
                return self._fast3_target(device, snmp, key, domain, host, get_oids, auth_key, priv_key)
            digest = _digest("usm", auth, auth_key, priv, priv_key)
            slot = self._slot_for_user(user, digest)
            if user not in slot.users:
                config.add_v3_user(slot.engine, user, auth, auth_key, priv, priv_key)
                slot.users[user] = digest
            security_name = user
            level = "authPriv" if priv_key else "authNoPriv" if auth_key else "noAuthNoPriv"
            mp_model = 3

        params_name = slot.target_params(security_name, level, mp_model)
        slot.ensure_transport(domain)
        previous = self._targets.get(device.id)
        addr_name = previous.addr_name if previous is not None and previous.slot is slot else slot.name("a")
        if previous is not None and previous.slot is slot:
            config.delete_target_address(slot.engine, addr_name)
        config.add_target_address(
            slot.engine,
            addr_name,
            domain,
            (host, snmp.port),
            params_name,
            timeout=snmp.timeout_s * 100,  # pysnmp counts in 1/100 s
            retryCount=snmp.retries,
        )
        log.debug("snmp.target_built", device=device.id, engine=slot.index, version=snmp.version)
        return _Target(
            key=key,
            slot=slot,
            addr_name=addr_name,
            timeout_s=snmp.timeout_s,
            tries=tries,
            get_oids=tuple(get_oids),
            get_varbinds=tuple((rfc1902.ObjectName(_oid_tuple(oid)), _NULL) for oid in get_oids),
            walk=not snmp.critical_interfaces,
        )

    def _fast3_target(
        self,
        device: Device,
        snmp: SnmpSettings,
        key: tuple[Any, ...],
        domain: tuple[int, ...],
        host: str,
        get_oids: Sequence[str],
        auth_key: str,
        priv_key: str | None,
    ) -> _Target:
        user_name = snmp.user or ""
        if not 0 < len(user_name.encode()) <= 32:
            raise SnmpSetupError("config", "snmp v3 user must be 1 to 32 octets")
        user = UsmUser.from_passwords(
            user_name,
            snmp.auth_protocol or "",
            auth_key,
            snmp.priv_protocol,
            priv_key,
            self._v3.keys,
        )
        try:
            template = PduTemplate([_oid_tuple(oid) for oid in get_oids])
        except ValueError as exc:
            raise SnmpSetupError("config", "snmp oids must be valid numeric OIDs") from exc
        family = socket.AF_INET6 if domain == udp6.DOMAIN_NAME else socket.AF_INET
        log.debug("snmp.target_built", device=device.id, engine="fast3", version=snmp.version)
        return _Target(
            key=key,
            slot=None,
            addr_name="",
            timeout_s=snmp.timeout_s,
            tries=snmp.retries + 1,
            get_oids=tuple(get_oids),
            get_varbinds=(),
            walk=not snmp.critical_interfaces,
            fast3=V3Target((host, snmp.port), family, user, template, label=device.id),
        )

    def _new_slot(self) -> EngineSlot:
        slot = EngineSlot(len(self._slots), self._source_address)
        self._slots.append(slot)
        return slot

    def _slot_for_user(self, user: str, digest: str) -> EngineSlot:
        for slot in self._slots:
            if slot.users.get(user, digest) == digest:
                return slot
        return self._new_slot()


def _log_engine_event(target: V3Target, what: str, engine: Engine | None) -> None:
    """Engine discovery and time synchronisation as log lines (engine ids are not secrets)."""
    engine_id = engine.engine_id.hex() if engine is not None else None
    boots = engine.boots if engine is not None else None
    if what == "discovered":
        log.debug("snmp.v3_engine_discovered", device=target.label, engine_id=engine_id, boots=boots)
    else:
        # changed: unknownEngineID to an authenticated request; resynced: authenticated
        # notInTimeWindow (agent rebooted); forgotten: an answer outside the time window
        log.info(f"snmp.v3_engine_{what}", device=target.label, engine_id=engine_id, boots=boots)


# --- scheduling ----------------------------------------------------------------------------


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


Deliver = Callable[[SnmpReading], None]
Sleep = Callable[[float], Awaitable[None]]


class PollScheduler:
    """Polls a set of devices every `interval_s`, each at its own stable phase in the interval.

    A device whose previous poll is still running when its turn comes is skipped for that turn
    (counted in `overruns`) rather than stacked. `poll_now` polls devices at once (a trap came
    in); if one is already in flight, it is polled again right after. Readings go to `deliver`,
    or to the `readings` queue when none is given. `clock`/`sleep` default to the event loop's.
    """

    def __init__(
        self,
        poller: SnmpPoller,
        devices: Iterable[Device],
        interval_s: float,
        *,
        deliver: Deliver | None = None,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        if interval_s <= 0:
            raise ValueError("interval_s must be > 0")
        self._poller = poller
        self._interval_s = interval_s
        self.readings: asyncio.Queue[SnmpReading] = asyncio.Queue()
        self._deliver = deliver if deliver is not None else self.readings.put_nowait
        self._clock = clock
        self._sleep = sleep
        self._devices: dict[str, Device] = {}
        self._heap: list[tuple[float, str]] = []
        self._in_flight: dict[str, asyncio.Task[None]] = {}
        self._again: set[str] = set()
        self._loop_task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._nap: asyncio.Future[None] | None = None
        self.overruns = 0
        self.set_devices(devices)

    def set_devices(self, devices: Iterable[Device]) -> None:
        """Replace the polled set (on reload). Removed devices are forgotten by the poller."""
        new = {d.id: d for d in devices if d.snmp is not None}
        for gone in self._devices.keys() - new.keys():
            self._poller.forget(gone)
        self._devices = new
        now = self._clock()
        start = now - now % self._interval_s  # align phases to the interval grid
        self._heap = []
        for device_id in new:
            due = start + phase_offset(device_id, self._interval_s)
            heapq.heappush(self._heap, (due if due >= now else due + self._interval_s, device_id))
        self._wake.set()
        if self._nap is not None and not self._nap.done():
            self._nap.set_result(None)

    def start(self) -> None:
        if self._loop_task is None:
            self._loop_task = asyncio.get_running_loop().create_task(self._run(), name="snmp-poll-scheduler")

    async def stop(self) -> None:
        """Stop scheduling and cancel polls in flight; returns when everything has ended."""
        tasks = [t for t in (self._loop_task, *self._in_flight.values()) if t is not None]
        self._loop_task = None
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._in_flight.clear()

    async def poll_now(self, device_ids: Iterable[str]) -> None:
        """Poll these devices immediately (unknown ids are ignored); returns once started."""
        for device_id in device_ids:
            if device_id not in self._devices:
                continue
            if device_id in self._in_flight:
                self._again.add(device_id)
            else:
                self._launch(device_id)

    async def _run(self) -> None:
        while True:
            if not self._heap:
                self._wake.clear()
                await self._wake.wait()
                continue
            due, device_id = self._heap[0]
            delay = due - self._clock()
            if delay > 0 and self._sleep is asyncio.sleep:
                await self._doze(delay)
                continue  # the heap may have changed (reload); look again
            if delay > 0:
                self._wake.clear()
                sleeper = asyncio.ensure_future(self._sleep(delay))
                waker = asyncio.ensure_future(self._wake.wait())
                try:
                    await asyncio.wait({sleeper, waker}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    sleeper.cancel()
                    waker.cancel()
                continue  # the heap may have changed (reload); look again
            heapq.heapreplace(self._heap, (due + self._interval_s, device_id))
            if device_id not in self._devices:
                continue
            if device_id in self._in_flight:
                self.overruns += 1
                log.warning("snmp.poll_overrun", device=device_id, interval_s=self._interval_s)
                continue
            self._launch(device_id)

    async def _doze(self, delay: float) -> None:
        """Sleep `delay` s or until `set_devices`: one future and one timer, no extra tasks.
        (At 1,000 polls/s the scheduler sleeps between almost every poll; the generic
        sleep-or-wake below costs two tasks and an asyncio.wait each time.)"""
        loop = asyncio.get_running_loop()
        nap: asyncio.Future[None] = loop.create_future()
        self._nap = nap
        timer = loop.call_later(delay, _resolve, nap)
        try:
            await nap
        finally:
            timer.cancel()
            self._nap = None

    def _launch(self, device_id: str) -> None:
        task = asyncio.get_running_loop().create_task(self._poll_one(device_id))
        self._in_flight[device_id] = task

    async def _poll_one(self, device_id: str) -> None:
        try:
            while True:
                device = self._devices.get(device_id)
                if device is None:
                    return
                reading = await self._poller.poll(device)
                try:
                    self._deliver(reading)
                except Exception as exc:
                    log.error("snmp.deliver_failed", device=device_id, error=type(exc).__name__)
                if device_id not in self._again:
                    return
                self._again.discard(device_id)
        finally:
            self._in_flight.pop(device_id, None)
