"""SNMP trap receiver: v1/v2c traps, v2c informs, v3 traps and informs → `TrapEvent`s.

Theory of operation
-------------------
One pysnmp engine listens on one UDP address (port 162 in production, 0 in tests: `port` says
what was bound). Communities and USM users come from `TrapReceiverConfig`; their secrets are
resolved once, in `start()`. pysnmp authenticates and decodes; our callback maps the
notification's snmpTrapOID to a kind (linkDown, linkUp, coldStart, warmStart, or a configured
vendor OID such as power/environment/door alarms, optionally office-level) and the UDP source to
a device by management address (`set_sources` replaces that table on reload).

v3: for an INFORM the receiver is the authoritative engine, so a user needs no engine id. For a
TRAP the sender is authoritative and USM keys are localized to the SENDER's engine id, so each
user lists the engine ids of the devices that send it traps (`V3TrapUser.engine_ids`); pysnmp
cannot accept a v3 trap from an engine it has no localized key for. With `learn_engine_ids`, a
v3 trap naming a configured user from an unknown engine id makes the receiver add that user for
that engine (keys localized on the spot) and process the same datagram again; the trap still has
to authenticate with the user's keys, and at most `max_learned_engine_ids` are learned (a flood
of made-up engine ids costs a bounded amount of key localization).

Everything that does not become an event is counted in `baton_traps_dropped_total{reason}`:
unknown_source, bad_community, auth (v3 user/digest/decryption), undecodable, other. pysnmp drops
those internally, so the receiver wraps the engine's receive entry point, reads pysnmp's own
SNMPv2-MIB/USM counters before and after each datagram, and attributes the difference. The
wrapper also catches everything pysnmp might raise on hostile bytes: the receiver survives any
datagram.
"""

from __future__ import annotations

import asyncio
import socket
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
from baton.core.model import SecretRef
from baton.metrics import Metrics

log = structlog.get_logger("baton.adapters.traps")

SNMP_TRAP_OID: Final = "1.3.6.1.6.3.1.1.4.1.0"
SNMP_TRAP_ADDRESS: Final = "1.3.6.1.6.3.18.1.3.0"  # v1 agent-addr, added when a v1 trap is converted
SNMP_TRAP_COMMUNITY: Final = "1.3.6.1.6.3.18.1.4.0"  # added for v1 too: a secret, never kept
SYS_UPTIME: Final = "1.3.6.1.2.1.1.3.0"
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
        self.events: asyncio.Queue[TrapEvent] = asyncio.Queue()
        self._deliver = deliver if deliver is not None else self.events.put_nowait
        self._metrics = metrics
        self._clock = clock
        self._engine: Any = None
        self._receiver: Any = None
        self._socket: socket.socket | None = None
        self._counters: list[tuple[Any, str]] = []
        self._handled = False
        self._users: dict[str, tuple[Any, str | None, Any, str | None]] = {}
        self._known_engines: set[tuple[bytes, str]] = set()
        self._learned = 0
        self.dropped: dict[str, int] = {}
        self.port = 0

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
            sock.bind((self._settings.host, self._settings.port))
        except OSError as exc:
            sock.close()
            raise TrapReceiverError(
                f"cannot listen for traps on {self._settings.host}:{self._settings.port}: {exc.strerror}"
            ) from exc
        sock.setblocking(False)
        self._socket = sock
        self.port = sock.getsockname()[1]

        eng = engine.SnmpEngine()
        try:
            transport = (
                udp6.Udp6AsyncioTransport() if family == socket.AF_INET6 else udp.UdpAsyncioTransport()
            )
            domain = udp6.DOMAIN_NAME if family == socket.AF_INET6 else udp.DOMAIN_NAME
            config.add_transport(eng, domain, transport.open_server_mode(sock=sock))
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
            dispatcher = eng.message_dispatcher
            original = dispatcher.receive_message
            dispatcher.receive_message = self._guarded(original)
            eng.transport_dispatcher.job_started(1)  # keep the dispatcher's timer running
        except Exception:
            eng.close_dispatcher()
            raise
        self._engine = eng
        self._users = users
        log.info(
            "traps.listening",
            host=self._settings.host,
            port=self.port,
            communities=len(communities),
            v3_users=len(users),
        )

    async def stop(self) -> None:
        if self._engine is None:
            return
        eng, self._engine = self._engine, None
        if self._receiver is not None:
            self._receiver.close(eng)
        eng.transport_dispatcher.job_finished(1)
        eng.close_dispatcher()
        if self._socket is not None:
            self._socket.close()
            self._socket = None
        log.info("traps.stopped", port=self.port)

    async def __aenter__(self) -> TrapReceiver:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- internals

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

    def _drop(self, reason: str, source: str) -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + 1
        if self._metrics is not None:
            self._metrics.drop_trap(reason)
        log.debug("traps.dropped", reason=reason, source=source)

    def _snapshot(self) -> list[int]:
        return [int(instance.syntax) for instance, _ in self._counters]

    def _guarded(self, original: Callable[..., Any]) -> Callable[..., Any]:
        def receive_message(snmp_engine: Any, domain: Any, address: Any, whole_msg: bytes) -> Any:
            source = _host_of(address)
            before = self._snapshot()
            self._handled = False
            try:
                result = original(snmp_engine, domain, address, whole_msg)
            except Exception as exc:  # hostile bytes must never take the receiver down
                log.debug("traps.undecodable", source=source, error=type(exc).__name__)
                self._drop("undecodable", source)
                return b""
            if self._handled:
                return result
            reasons = [
                reason
                for (_, reason), old, new in zip(self._counters, before, self._snapshot(), strict=True)
                if new > old
            ]
            if "auth" in reasons and self._learn(snmp_engine, whole_msg):
                self._handled = False
                try:
                    result = original(snmp_engine, domain, address, whole_msg)
                except Exception:
                    self._drop("undecodable", source)
                    return b""
                if self._handled:
                    return result
            if not reasons:
                # A report/response or a message pysnmp swallowed without counting.
                self._drop("other", source)
            elif any(reasons):
                self._drop(next(r for r in reasons if r), source)
            return result

        return receive_message

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
            event = self._event(context, source, var_binds)
        except Exception as exc:  # pysnmp swallows callback exceptions; count them instead
            log.warning("traps.unmappable", source=source, error=type(exc).__name__)
            self._drop("other", source)
            return
        if event is None:
            self._drop("unknown_source", source)
            return
        if self._metrics is not None:
            self._metrics.count_trap(event.kind)
        log.info(
            "traps.received",
            kind=event.kind,
            source=source,
            device=event.device_id,
            office=event.office_id,
            version=event.version,
            pdu=event.pdu,
        )
        try:
            self._deliver(event)
        except Exception as exc:
            log.error("traps.deliver_failed", kind=event.kind, error=type(exc).__name__)

    def _event(
        self, context: Mapping[str, Any], source: str, var_binds: Sequence[tuple[Any, Any]]
    ) -> TrapEvent | None:
        summary: list[tuple[str, str]] = []
        trap_oid = ""
        agent_address = ""
        for name, value in var_binds:
            oid = str(name)
            converted = convert(value)
            text = converted.type if converted.value is None else str(converted.value)
            if oid == SNMP_TRAP_OID:
                trap_oid = text
            elif oid == SNMP_TRAP_ADDRESS:
                agent_address = text
            if len(summary) < _MAX_VARBINDS_KEPT and oid not in (
                SNMP_TRAP_OID,
                SYS_UPTIME,
                SNMP_TRAP_COMMUNITY,
            ):
                summary.append((oid, text[:_MAX_VALUE_CHARS]))
        owner = self._sources.get(source) or (self._sources.get(agent_address) if agent_address else None)
        if owner is None:
            return None
        vendor = self._settings.vendor_traps.get(trap_oid)
        kind = STANDARD_TRAPS.get(trap_oid) or (vendor.kind if vendor else "other")
        mp_model = int(context.get("messageProcessingModel", 1))
        version: Literal["1", "2c", "3"] = "1" if mp_model == 0 else "3" if mp_model == 3 else "2c"
        pdu = context.get("pdu")
        is_inform = pdu is not None and pdu.tagSet == snmp_api.v2c.InformRequestPDU.tagSet
        return TrapEvent(
            kind=kind,
            source_address=source,
            device_id=owner.device_id,
            office_id=owner.office_id,
            oid=trap_oid,
            varbinds=tuple(summary),
            at=self._clock(),
            office_level=bool(vendor and vendor.office_level),
            version=version,
            pdu="inform" if is_inform else "trap",
        )


def _host_of(address: Any) -> str:
    try:
        return str(address[0])
    except Exception:
        return "?"
