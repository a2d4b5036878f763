"""SNMP GET/SET of single numeric OIDs for playbook steps (`snmp.get`, `snmp.set`).

`PysnmpAccess` implements the runner's `SnmpAccess` protocol (`baton.playbook.steps`) with
pysnmp 7 on asyncio, v2c (community) and v3 (USM, up to authPriv) from the device's
`SnmpSettings`.

How it talks to pysnmp: like the poller (`baton.adapters.snmp`), through pysnmp's command
generators (`cmdgen.GetCommandGenerator` / `SetCommandGenerator`, what hlapi's `get_cmd` /
`set_cmd` call underneath) with varbinds built from numeric OIDs. hlapi's own `get_cmd`/`set_cmd`
resolve every varbind through a MibViewController (loading MIB modules, and possibly coercing a
SET value to a loaded MIB's syntax, which would hide the agent's `wrongType`) and re-run their LCD
configurator on every call; here no MIB is ever looked up and the engine configuration is written
once per device and credentials.

Engines: creating an SnmpEngine costs 100-200 ms of CPU, so engines are kept and reused
("slots", as in the poller). USM users are keyed by name inside an engine, so a device whose
v3 user name is already configured with other keys gets another slot. The engines' sockets
belong to the event loop that opened them: used from another loop, everything is rebuilt.
`close()` releases the sockets.

Credentials are resolved through the resolver on every call (a rotated secret is picked up at
once), handed to pysnmp, and otherwise kept only as a digest; they are never logged nor put in
an error. Every call is bounded by its `timeout_s` (pysnmp's per-try timeout and retries come
from the device's settings, capped so that all tries fit in it). Every failure is an `SnmpError`
(`SnmpTimeoutError` for no answer) naming the device, the operation ("get OID" / "set OID") and
the cause: the agent's error-status (`notWritable`, `wrongType`, `noAccess`...), `noSuchObject` /
`noSuchInstance` for a GET of something absent, a v3 authentication problem, a bad value, a
missing credential.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import ipaddress
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final

import structlog
from pyasn1.error import PyAsn1Error
from pysnmp.carrier.asyncio.dgram import udp, udp6
from pysnmp.entity import config
from pysnmp.entity.rfc3413 import cmdgen
from pysnmp.proto import errind, rfc1902
from pysnmp.proto.error import StatusInformation

from baton.adapters.errors import AdapterError, AdapterTimeoutError
from baton.adapters.snmp import (
    AUTH_PROTOCOLS,
    PRIV_PROTOCOLS,
    EngineSlot,
    classify_error_indication,
    convert,
    describe_error_status,
)
from baton.core.model import Device, SecretRef, SnmpSettings

log = structlog.get_logger("baton.adapters.snmp_access")

Resolve = Callable[[SecretRef], str]

_NULL: Final = rfc1902.Null("")
_BACKSTOP_S: Final = 1.0  # over the call's timeout, in case pysnmp never calls back


class SnmpError(AdapterError):
    protocol = "snmp"


class SnmpTimeoutError(SnmpError, AdapterTimeoutError):
    def __init__(self, device: str, operation: str, timeout_s: float) -> None:
        AdapterTimeoutError.__init__(self, device, operation, timeout_s)


# --- values (pure) ---------------------------------------------------------------------------

# The playbook's `snmp.set` types (`baton.playbook.schema.SnmpType`), with net-snmp's type
# letters (snmpset i u c g t s x a o) accepted as well.
_TYPE_LETTERS: Final = {
    "i": "integer",
    "u": "unsigned",
    "c": "counter32",
    "g": "gauge32",
    "t": "timeticks",
    "s": "string",
    "x": "hex",
    "a": "ipaddress",
    "o": "oid",
}
_INTEGER_TYPES: Final[dict[str, Callable[[int], Any]]] = {
    "integer": rfc1902.Integer32,
    "unsigned": rfc1902.Unsigned32,
    "counter32": rfc1902.Counter32,
    "gauge32": rfc1902.Gauge32,
    "timeticks": rfc1902.TimeTicks,
}
SET_TYPES: Final = (*_INTEGER_TYPES, "string", "hex", "ipaddress", "oid")


def oid_tuple(oid: str) -> tuple[int, ...]:
    """A numeric OID ("1.3.6.1.2.1.1.5.0", a leading dot allowed) as a tuple; ValueError otherwise."""
    text = oid.strip().lstrip(".")
    parts = text.split(".")
    if len(parts) < 2 or not all(p.isdigit() for p in parts):
        raise ValueError(f"not a numeric OID: {oid!r}")
    return tuple(int(p) for p in parts)


def typed_value(type_: str, value: str) -> Any:
    """The pysnmp value of a SET; ValueError naming the problem (never echoing long values)."""
    kind = _TYPE_LETTERS.get(type_, type_).lower()
    text = value.strip()
    try:
        if kind in _INTEGER_TYPES:
            return _INTEGER_TYPES[kind](int(text))
        if kind == "string":
            return rfc1902.OctetString(value.encode("utf-8"))
        if kind == "hex":
            digits = text.removeprefix("0x").removeprefix("0X")
            for sep in (" ", ":", "-"):
                digits = digits.replace(sep, "")
            return rfc1902.OctetString(bytes.fromhex(digits))
        if kind == "ipaddress":
            return rfc1902.IpAddress(ipaddress.IPv4Address(text).packed)
        if kind == "oid":
            return rfc1902.ObjectName(oid_tuple(text))
    except (ValueError, PyAsn1Error) as exc:
        raise ValueError(f"bad {kind} value {_shown(value)}: {_first_line(exc)}") from None
    raise ValueError(f"unknown SNMP type {type_!r} (one of {', '.join(SET_TYPES)})")


def value_text(value: Any) -> str:
    """A GET's value as the text `expect` compares: integers in decimal, strings as UTF-8 (else
    "0x" hex), IP addresses dotted, OIDs numeric; ValueError for noSuchObject and the like."""
    converted = convert(value)
    if converted.value is None:
        raise ValueError(converted.type)
    return str(converted.value)


def _shown(value: str, limit: int = 40) -> str:
    return repr(value if len(value) <= limit else value[: limit - 1] + "…")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


# --- engines ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Target:
    key: str  # digest of everything the target was built from (credentials included)
    slot: EngineSlot
    addr_name: str
    waits_s: float  # pysnmp's per-try timeout × tries


class PysnmpAccess:
    """`SnmpAccess` for playbook steps: GET/SET of one numeric OID on one device.

    `resolve` turns a `SecretRef` into its value (the daemon's `Service.resolve`);
    `source_address`: requests leave from this local address (`vantage.source_address`).
    """

    def __init__(self, resolve: Resolve, source_address: str | None = None) -> None:
        self._resolve = resolve
        self._source_address = source_address
        self._loop: asyncio.AbstractEventLoop | None = None
        self._slots: list[EngineSlot] = []
        self._targets: dict[str, _Target] = {}
        self._get = cmdgen.GetCommandGenerator()
        self._set = cmdgen.SetCommandGenerator()

    def close(self) -> None:
        """Close the engines' sockets (calls in flight then fail); the next call starts afresh."""
        for slot in self._slots:
            with contextlib.suppress(Exception):  # a loop already closed has nothing left to close
                slot.close()
        self._slots.clear()
        self._targets.clear()
        self._loop = None

    async def __aenter__(self) -> PysnmpAccess:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()

    # -- the SnmpAccess protocol

    async def get(self, device: Device, oid: str, *, timeout_s: float) -> str:
        operation = f"get {oid.strip()}"
        name = self._oid(device, operation, oid)
        answer = await self._call(device, operation, "get", ((name, _NULL),), timeout_s)
        if len(answer) != 1 or tuple(answer[0][0]) != tuple(name):
            raise SnmpError(device.id, operation, "response varbind does not match the request")
        try:
            return value_text(answer[0][1])
        except ValueError as exc:
            raise SnmpError(device.id, operation, str(exc)) from None

    async def set(self, device: Device, oid: str, type_: str, value: str, *, timeout_s: float) -> None:
        operation = f"set {oid.strip()}"
        name = self._oid(device, operation, oid)
        try:
            typed = typed_value(type_, value)
        except ValueError as exc:
            raise SnmpError(device.id, operation, str(exc)) from None
        await self._call(device, operation, "set", ((name, typed),), timeout_s)

    # -- one exchange

    @staticmethod
    def _oid(device: Device, operation: str, oid: str) -> rfc1902.ObjectName:
        try:
            return rfc1902.ObjectName(oid_tuple(oid))
        except ValueError:
            raise SnmpError(device.id, operation, "not a numeric OID (no MIB names)") from None

    async def _call(
        self,
        device: Device,
        operation: str,
        kind: str,
        varbinds: Sequence[tuple[rfc1902.ObjectName, Any]],
        timeout_s: float,
    ) -> Sequence[tuple[Any, Any]]:
        if timeout_s <= 0:
            raise SnmpTimeoutError(device.id, operation, 0)
        try:
            async with asyncio.timeout(timeout_s + _BACKSTOP_S):
                return await self._exchange(device, operation, kind, varbinds, timeout_s)
        except TimeoutError:
            raise SnmpTimeoutError(device.id, operation, timeout_s) from None

    async def _exchange(
        self,
        device: Device,
        operation: str,
        kind: str,
        varbinds: Sequence[tuple[rfc1902.ObjectName, Any]],
        timeout_s: float,
    ) -> Sequence[tuple[Any, Any]]:
        snmp = device.snmp
        if snmp is None:
            raise SnmpError(device.id, operation, "device has no snmp settings")
        loop = asyncio.get_running_loop()
        host = await self._address(device, operation, snmp, timeout_s)
        target = self._target(device, operation, snmp, host, timeout_s, loop)
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
            if future.done():  # cancelled by the timeout: pysnmp answers late, nobody listens
                return
            try:
                future.set_result(
                    (error_indication, int(error_status or 0), int(error_index or 0), var_binds)
                )
            except Exception as exc:  # a status pyasn1 cannot turn into an int
                future.set_result((errind.ParseError(type(exc).__name__), 0, 0, ()))

        generator = self._get if kind == "get" else self._set
        try:
            generator.send_varbinds(target.slot.engine, target.addr_name, None, "", varbinds, on_response)
        except StatusInformation as exc:  # e.g. v3 privacy unavailable, raised while encoding
            _failure, reason = classify_error_indication(exc.get("errorIndication", None))
            raise SnmpError(device.id, operation, reason) from None
        except Exception as exc:
            raise SnmpError(device.id, operation, f"cannot send request ({type(exc).__name__})") from None
        error_indication, error_status, error_index, answer = await future
        if error_indication:
            if isinstance(error_indication, errind.RequestTimedOut):
                raise SnmpTimeoutError(device.id, operation, round(target.waits_s, 3))
            _failure, reason = classify_error_indication(error_indication)
            raise SnmpError(device.id, operation, reason)
        if error_status:
            cause = describe_error_status(error_status)
            if len(varbinds) > 1 and 0 < error_index <= len(varbinds):
                cause += f" at {varbinds[error_index - 1][0]}"
            raise SnmpError(device.id, operation, cause)
        return answer

    # -- targets

    async def _address(self, device: Device, operation: str, snmp: SnmpSettings, timeout_s: float) -> str:
        try:
            return str(ipaddress.ip_address(device.address.strip("[]")))
        except ValueError:
            pass
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeout_s):
                infos = await loop.getaddrinfo(device.address, snmp.port, type=socket.SOCK_DGRAM)
        except (OSError, TimeoutError) as exc:
            cause = f"cannot resolve address {device.address} ({type(exc).__name__})"
            raise SnmpError(device.id, operation, cause) from None
        if not infos:
            raise SnmpError(device.id, operation, f"cannot resolve address {device.address}")
        return str(infos[0][4][0])

    def _secret(self, device: Device, operation: str, ref: SecretRef | None, what: str) -> str:
        if ref is None:
            raise SnmpError(device.id, operation, f"snmp {what} is not configured")
        try:
            value = self._resolve(ref)
        except Exception:
            # The resolver's message might quote the secret's surroundings: name only the ref.
            raise SnmpError(device.id, operation, f"credential {ref} cannot be resolved") from None
        if not value:
            raise SnmpError(device.id, operation, f"credential {ref} cannot be resolved (empty)")
        return value

    def _target(
        self,
        device: Device,
        operation: str,
        snmp: SnmpSettings,
        host: str,
        timeout_s: float,
        loop: asyncio.AbstractEventLoop,
    ) -> _Target:
        """The engine and target address for this device and these credentials (built once)."""
        if self._loop is not loop:
            self.close()  # sockets of another (finished) loop
            self._loop = loop
        if not 0 < snmp.port < 65536:
            raise SnmpError(device.id, operation, f"snmp port {snmp.port} out of range")
        tries = max(0, snmp.retries) + 1
        # pysnmp's per-try timeout, capped so that every try fits in the call's timeout.
        per_try_s = max(0.05, min(snmp.timeout_s, timeout_s / tries))
        ip = ipaddress.ip_address(host)
        domain = udp6.DOMAIN_NAME if ip.version == 6 else udp.DOMAIN_NAME

        if snmp.version == "2c":
            community = self._secret(device, operation, snmp.community, "community")
            credentials = _digest("community", community)
        else:
            if not snmp.user:
                raise SnmpError(device.id, operation, "snmp v3 needs a user")
            if snmp.priv_protocol and not snmp.auth_protocol:
                raise SnmpError(device.id, operation, "snmp v3 privacy needs authentication")
            auth_key = (
                self._secret(device, operation, snmp.auth_key, "auth_key") if snmp.auth_protocol else None
            )
            priv_key = (
                self._secret(device, operation, snmp.priv_key, "priv_key") if snmp.priv_protocol else None
            )
            for what, k in (("auth_key", auth_key), ("priv_key", priv_key)):
                if k is not None and len(k) < 8:
                    # RFC 3414 pass phrases are at least 8 characters; pysnmp rejects shorter ones.
                    raise SnmpError(device.id, operation, f"snmp v3 {what} is shorter than 8 characters")
            auth = AUTH_PROTOCOLS.get(snmp.auth_protocol or "", config.USM_AUTH_NONE)
            priv = PRIV_PROTOCOLS.get(snmp.priv_protocol or "", config.USM_PRIV_NONE)
            credentials = _digest("usm", snmp.user, auth, auth_key, priv, priv_key)
        key = _digest(host, snmp.port, snmp.version, per_try_s, tries - 1, credentials)
        known = self._targets.get(device.id)
        if known is not None and known.key == key:
            return known

        if snmp.version == "2c":
            slot = self._slots[0] if self._slots else self._new_slot()
            security_name = slot.communities.get(credentials)
            if security_name is None:
                # The security name is ours and opaque: the community never becomes a name
                # that pysnmp might log.
                security_name = slot.name("c")
                config.add_v1_system(slot.engine, security_name, community, securityName=security_name)
                slot.communities[credentials] = security_name
            level, mp_model = "noAuthNoPriv", 1
        else:
            user = snmp.user
            assert user is not None
            slot = self._slot_for_user(user, credentials)
            if user not in slot.users:
                config.add_v3_user(slot.engine, user, auth, auth_key, priv, priv_key)
                slot.users[user] = credentials
            security_name = user
            level = "authPriv" if priv_key else "authNoPriv" if auth_key else "noAuthNoPriv"
            mp_model = 3

        params_name = slot.target_params(security_name, level, mp_model)
        slot.ensure_transport(domain)
        if known is not None and known.slot is slot:
            addr_name = known.addr_name
            config.delete_target_address(slot.engine, addr_name)
        else:
            addr_name = slot.name("a")
        config.add_target_address(
            slot.engine,
            addr_name,
            domain,
            (host, snmp.port),
            params_name,
            timeout=per_try_s * 100,  # pysnmp counts in 1/100 s
            retryCount=tries - 1,
        )
        target = _Target(key, slot, addr_name, per_try_s * tries)
        self._targets[device.id] = target
        log.debug("snmp_access.target_built", device=device.id, engine=slot.index, version=snmp.version)
        return target

    def _new_slot(self) -> EngineSlot:
        slot = EngineSlot(len(self._slots), self._source_address)
        self._slots.append(slot)
        return slot

    def _slot_for_user(self, user: str, credentials: str) -> EngineSlot:
        for slot in self._slots:
            if slot.users.get(user, credentials) == credentials:
                return slot
        return self._new_slot()


def _digest(*parts: object) -> str:
    return hashlib.sha256(repr(parts).encode()).hexdigest()
