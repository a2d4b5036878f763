"""The inventory files as written: pydantic models, strict, no unknown keys.

These describe one layer each (defaults, a group, a device entry) with every setting optional,
so a layer can be checked on its own and errors point at the file that has them. The loader
merges layers (defaults → groups → device) and converts the result into `baton.core.model`.
Credentials stay reference strings here (`env:…`, `file:…`, `credential:…`).
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import re
import struct
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field
from pydantic_core import PydanticCustomError

from baton.inventory.numbers import bounded
from baton.secrets import REFERENCE_HINT, is_reference

ID_PATTERN = re.compile(r"^[a-z0-9][a-z0-9._-]*$")
OID_PATTERN = re.compile(r"^[0-2](\.(0|[1-9][0-9]*))+$")
HOSTNAME_PATTERN = re.compile(
    r"^(?=.{1,253}$)([a-zA-Z0-9]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?)(\.[a-zA-Z0-9]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?)*\.?$"
)
HOST_KEY_HINT = (
    "paste the key from `ssh-keyscan -t ed25519 ADDRESS`, e.g. 'ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAA…'"
)
# type → expected length of the key material after the type string (None: not checked)
_HOST_KEY_TYPES = {
    "ssh-ed25519": 32,
    "ecdsa-sha2-nistp256": None,
    "ecdsa-sha2-nistp384": None,
    "ecdsa-sha2-nistp521": None,
    "ssh-rsa": None,
}


def _check_id(value: str) -> str:
    if not ID_PATTERN.match(value):
        raise PydanticCustomError(
            "bad_id",
            "not a valid id",
            {"hint": "use lowercase letters, digits, '-', '_' and '.', starting with a letter or digit"},
        )
    return value


def _check_ref(value: str) -> str:
    if not is_reference(value):
        raise PydanticCustomError(
            "secret_literal", "a literal secret is not allowed here", {"hint": REFERENCE_HINT}
        )
    return value


def _check_oid(value: str) -> str:
    if not OID_PATTERN.match(value):
        raise PydanticCustomError(
            "bad_oid",
            "not a numeric OID",
            {"hint": "write dotted numbers, e.g. '1.3.6.1.2.1.1.3.0' (no MIB names)"},
        )
    return value


def _check_address(value: str) -> str:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        if not HOSTNAME_PATTERN.match(value) or value.replace(".", "").isdigit():
            raise PydanticCustomError(
                "bad_address",
                "not an IP address or host name",
                {"hint": "write an IPv4/IPv6 address such as 10.20.0.1, or a DNS name"},
            ) from None
    return value


def _check_cidr(value: str) -> str:
    try:
        ipaddress.ip_network(value, strict=True)
    except ValueError as exc:
        raise PydanticCustomError(
            "bad_prefix",
            "not a network prefix ({reason})",
            {"reason": str(exc), "hint": "write e.g. 10.10.0.0/16"},
        ) from None
    return value


def host_key_problem(value: str) -> str | None:
    """Why `value` is not a well-formed "TYPE BASE64 [comment]" public key line, or None."""
    parts = value.split()
    if len(parts) < 2:
        return "expected 'TYPE BASE64-KEY'"
    kind, blob_text = parts[0], parts[1]
    if kind not in _HOST_KEY_TYPES:
        return f"unsupported key type '{kind}' (use one of {', '.join(_HOST_KEY_TYPES)})"
    try:
        blob = base64.b64decode(blob_text, validate=True)
    except (binascii.Error, ValueError):
        return "the key is not valid base64"
    if len(blob) < 4:
        return "the key is too short"
    (name_len,) = struct.unpack(">I", blob[:4])
    if blob[4 : 4 + name_len] != kind.encode():
        return f"the key data is not a {kind} key"
    expected = _HOST_KEY_TYPES[kind]
    if expected is not None:
        rest = blob[4 + name_len :]
        if len(rest) != 4 + expected or struct.unpack(">I", rest[:4])[0] != expected:
            return f"a {kind} key holds {expected} bytes of key data"
    return None


def _check_host_key(value: str) -> str:
    reason = host_key_problem(value)
    if reason is not None:
        raise PydanticCustomError(
            "bad_host_key", "malformed host key: {reason}", {"reason": reason, "hint": HOST_KEY_HINT}
        )
    return value


# netconf.max_reply_bytes: below 64 KiB is a slip (`16` meant as MiB; a device's hello alone can
# be larger), above 1 GiB one session could hold the daemon's memory.
_REPLY_BYTES_RANGE = (64 * 1024, 1024**3)
_REPLY_BYTES_HINT = (
    "write a whole number of bytes from 65536 (64 KiB) to 1073741824 (1 GiB), e.g. 33554432 (32 MiB)"
)


def _check_reply_bytes(value: Any) -> Any:
    # pydantic alone would say "expected an integer" to `32MiB`, `3.5e+7` or `true`: say what to write
    low, high = _REPLY_BYTES_RANGE
    if isinstance(value, bool) or not isinstance(value, int):
        text = str(value).lower() if isinstance(value, bool) else repr(value)
        raise PydanticCustomError(
            "not_bytes", "{value} is not a whole number of bytes", {"value": text, "hint": _REPLY_BYTES_HINT}
        )
    if value < low:
        raise PydanticCustomError(
            "too_small",
            "{value} is too small: it must be at least {low} bytes",
            {"value": str(value), "low": str(low), "hint": _REPLY_BYTES_HINT},
        )
    if value > high:
        raise PydanticCustomError(
            "too_large",
            "{value} is too large: it must be at most {high} bytes",
            {"value": str(value), "high": str(high), "hint": _REPLY_BYTES_HINT},
        )
    return value


def _version_text(value: Any) -> Any:
    # `version: 3` is an int in YAML and `version: 2c` a string; both mean the same to an operator
    return str(value) if isinstance(value, int) and not isinstance(value, bool) else value


Id = Annotated[str, AfterValidator(_check_id)]
Ref = Annotated[str, AfterValidator(_check_ref)]
Oid = Annotated[str, AfterValidator(_check_oid)]
Address = Annotated[str, AfterValidator(_check_address)]
HostKey = Annotated[str, AfterValidator(_check_host_key)]
Cidr = Annotated[str, AfterValidator(_check_cidr)]
Port = Annotated[int, bounded(1, 65535, example=830)]
Timeout = Annotated[float, bounded(0, 600, example=5, unit="s", low_open=True)]
Retries = Annotated[int, bounded(0, 10, example=1)]
IfIndex = Annotated[int, bounded(1, 2**31 - 1, example=1)]
ReplyBytes = Annotated[int, BeforeValidator(_check_reply_bytes)]


class Strict(BaseModel):
    # allow_inf_nan: a backstop behind `bounded` for any float field that is not declared with it
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, allow_inf_nan=False)


class SnmpFile(Strict):
    version: Annotated[Literal["2c", "3"] | None, BeforeValidator(_version_text)] = None
    port: Port | None = None
    timeout_s: Timeout | None = None
    retries: Retries | None = None
    community: Ref | None = None
    user: str | None = None
    auth_protocol: Literal["SHA", "SHA224", "SHA256", "SHA384", "SHA512", "MD5"] | None = None
    auth_key: Ref | None = None
    priv_protocol: Literal["AES", "AES192", "AES256", "DES"] | None = None
    priv_key: Ref | None = None
    oids: dict[str, Oid] | None = None
    critical_interfaces: list[IfIndex] | None = None


class NetconfFile(Strict):
    enabled: bool | None = None
    port: Port | None = None
    username: str | None = None
    password: Ref | None = None
    private_key: Ref | None = None
    timeout_s: Timeout | None = None
    probe_filter: str | None = None
    max_reply_bytes: ReplyBytes | None = None


class SshFile(Strict):
    enabled: bool | None = None
    port: Port | None = None
    username: str | None = None
    password: Ref | None = None
    private_key: Ref | None = None
    timeout_s: Timeout | None = None


class DeviceSettings(Strict):
    """What defaults and groups may set for the devices that use them."""

    role: Id | None = None
    critical: bool | None = None
    tags: list[str] | None = None
    snmp: SnmpFile | None = None
    netconf: NetconfFile | None = None
    ssh: SshFile | None = None
    vars: dict[str, Any] | None = None


class DeviceEntry(DeviceSettings):
    """One device in `devices/*.yaml`."""

    id: Id
    office: Id
    address: Address
    parent: Id | None = None
    groups: list[Id] = Field(default_factory=list)
    host_key: HostKey | None = None


class OfficeVars(BaseModel):
    """Free variables for playbooks; the well-known ones are checked, others pass through."""

    model_config = ConfigDict(extra="allow", strict=True, frozen=True, allow_inf_nan=False)

    noc_prefixes: list[Cidr] | None = None
    noc_address: Address | None = None


class OfficeEntry(Strict):
    id: Id
    name: str
    region: str
    alternates: list[Id] = Field(default_factory=list)
    vars: OfficeVars = Field(default_factory=OfficeVars)


# what each file holds at the top level: the one key and its shape
OFFICES_KEY = "offices"
GROUPS_KEY = "groups"
DEFAULTS_KEY = "defaults"
DEVICES_KEY = "devices"
