"""The immutable model every other part of Baton speaks: inventory, policy and office state.

Nothing here does I/O. Inventory and policy objects are built by `baton.inventory` from
YAML (validated there) and are never mutated afterwards; a reload builds new ones.
Credentials appear only as `SecretRef`s: where a secret lives, never the secret itself.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType
from typing import Any, Literal


def frozen_map(data: Mapping[str, Any] | None = None) -> Mapping[str, Any]:
    """A read-only view of a fresh copy of `data` (dataclasses here are frozen, so are their maps)."""
    return MappingProxyType(dict(data or {}))


# --- verdicts and phases -------------------------------------------------------------------


class DeviceVerdict(StrEnum):
    UP = "UP"
    DOWN = "DOWN"
    UNREACHABLE = "UNREACHABLE"  # not answering, but a parent on its path is down: not its fault
    UNKNOWN = "UNKNOWN"  # not enough observations yet


class OfficeVerdict(StrEnum):
    HEALTHY = "HEALTHY"
    DEGRADED = "DEGRADED"
    DOWN = "DOWN"
    UNREACHABLE = "UNREACHABLE"  # we cannot see it because its uplink is down: not a closure
    UNKNOWN = "UNKNOWN"


class Phase(StrEnum):
    OPEN = "OPEN"
    SUSPECT = "SUSPECT"
    CLOSED = "CLOSED"
    HANDING_OVER = "HANDING_OVER"
    HANDED_OVER = "HANDED_OVER"
    HANDING_BACK = "HANDING_BACK"
    FAILED = "FAILED"


class RunKind(StrEnum):
    HANDOVER = "handover"
    HANDBACK = "handback"


class Protocol(StrEnum):
    SNMP = "snmp"
    NETCONF = "netconf"
    SSH = "ssh"


# --- inventory -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SecretRef:
    """Where a credential lives. Resolved only at use by `baton.secrets.resolve`.

    kind "env": an environment variable; "file": a file path; "credential": a file named `name`
    in systemd's $CREDENTIALS_DIRECTORY (LoadCredential=).
    """

    kind: Literal["env", "file", "credential"]
    name: str

    def __str__(self) -> str:
        return f"{self.kind}:{self.name}"


@dataclass(frozen=True, slots=True)
class SnmpSettings:
    version: Literal["2c", "3"] = "2c"
    port: int = 161
    timeout_s: float = 2.0
    retries: int = 1
    community: SecretRef | None = None  # v2c
    user: str | None = None  # v3 USM user
    auth_protocol: Literal["SHA", "SHA224", "SHA256", "SHA384", "SHA512", "MD5"] | None = None
    auth_key: SecretRef | None = None
    priv_protocol: Literal["AES", "AES192", "AES256", "DES"] | None = None
    priv_key: SecretRef | None = None
    # extra numeric OIDs polled for this device (environment, power...), name -> OID
    oids: Mapping[str, str] = field(default_factory=frozen_map)
    # ifIndex values whose ifOperStatus must be up(1) for the device to count as UP
    critical_interfaces: tuple[int, ...] = ()


# The largest NETCONF message (hello or reply) Baton reads from a device unless its inventory sets
# `netconf.max_reply_bytes`: far above a running config, it bounds what a broken or hostile server
# can make Baton hold per session.
NETCONF_MAX_REPLY_BYTES = 16 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class NetconfSettings:
    enabled: bool = False
    port: int = 830
    username: str | None = None
    password: SecretRef | None = None
    private_key: SecretRef | None = None
    timeout_s: float = 10.0
    # subtree filter (XML) the health probe <get>s; empty means <get> of nothing but the hello
    probe_filter: str | None = None
    # replies (and the hello) above this many bytes are refused and the session closed
    max_reply_bytes: int = NETCONF_MAX_REPLY_BYTES


@dataclass(frozen=True, slots=True)
class SshSettings:
    enabled: bool = False
    port: int = 22
    username: str | None = None
    password: SecretRef | None = None
    private_key: SecretRef | None = None
    timeout_s: float = 10.0


@dataclass(frozen=True, slots=True)
class Device:
    id: str
    office: str
    role: str
    address: str  # management address (IPv4/IPv6 literal or DNS name)
    critical: bool = False
    parent: str | None = None  # device this one is reached through (path dependency)
    tags: tuple[str, ...] = ()
    host_key: str | None = None  # pinned SSH host key, "ssh-ed25519 AAAA..." (NETCONF and SSH)
    snmp: SnmpSettings | None = None
    netconf: NetconfSettings = NetconfSettings()
    ssh: SshSettings = SshSettings()
    vars: Mapping[str, Any] = field(default_factory=frozen_map)


@dataclass(frozen=True, slots=True)
class Office:
    id: str
    name: str
    region: str
    alternates: tuple[str, ...] = ()  # ordered: the first eligible one is chosen
    vars: Mapping[str, Any] = field(default_factory=frozen_map)  # noc_prefixes, aaa_servers, ...


@dataclass(frozen=True, slots=True)
class Inventory:
    offices: Mapping[str, Office]
    devices: Mapping[str, Device]

    def devices_of(self, office: str) -> tuple[Device, ...]:
        return tuple(d for d in self.devices.values() if d.office == office)


# --- policy (baton.yaml) -------------------------------------------------------------------


@dataclass(frozen=True, slots=True, order=True)
class GrantTerm:
    """A grant of `operators.grants` that ends: its id (`baton.core.grants.Grant.id`) and when.
    The core journals its expiry (on `Ticked`); the API refuses it from then on."""

    grant: str
    until: float


@dataclass(frozen=True, slots=True)
class ApprovalRule:
    """`operators.approvals`: runs of `kinds` for `offices` need `required` approvals from
    distinct people other than the requester, within `ttl_s`. `auto_proceed_s`: a detected
    closure whose office is still DOWN that long after asking is handed over without them."""

    offices: tuple[str, ...]
    kinds: tuple[RunKind, ...] = (RunKind.HANDOVER, RunKind.HANDBACK)
    required: int = 1
    ttl_s: float = 900.0
    auto_proceed_s: float | None = None
    name: str = ""  # where it was written, for reasons ("operators.approvals[0]")


@dataclass(frozen=True, slots=True)
class Policy:
    """Decision parameters. Defaults follow design.md; `baton.config` validates them together."""

    poll_interval_s: float = 10.0
    failures_to_down: int = 3  # consecutive failed probes before a device is DOWN
    office_down_ratio: float = 0.5  # share of critical devices DOWN that makes the office DOWN
    hold_down_s: float = 30.0  # an office must stay DOWN this long before it is CLOSED
    confirm_window_s: float = 300.0  # confirmed-commit window of a handover run
    run_timeout_s: float = 240.0  # a run must finish (and confirm) well inside the window
    anti_flap_block_s: float = 3600.0  # after a handover/handback, automation waits (or an ack)
    storm_max_offices: int = 2  # more offices than this DOWN within storm_window_s is a storm
    storm_max_ratio: float = 0.25  # ...or more than this share of all offices (at least 2)
    storm_window_s: float = 120.0
    handback_hold_s: float = 600.0  # office HEALTHY this long before a handback is proposed
    auto_handback: bool = False  # hand back on our own after handback_hold_s (else: propose)
    require_approval: bool = False  # a detected closure waits for an operator's handover
    flap_samples: int = 21  # office verdicts kept for flap detection
    flap_high_pct: float = 50.0  # percent state change that marks an office flapping
    flap_low_pct: float = 25.0  # ...and below which the flag clears (hysteresis)
    # A stop gives runs in flight this long to reach their end, then cancels them at a safe
    # point; systemd's TimeoutStopSec must cover it (`baton.config.check_policy`).
    drain_s: float = 60.0
    # Two-person rules (`operators.approvals`, regions resolved to offices) and the grants that
    # end (`operators.grants` with `until`): decided by the core like every other rule.
    approvals: tuple[ApprovalRule, ...] = ()
    grant_terms: tuple[GrantTerm, ...] = ()


# --- office state --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Closure:
    """Why an office is considered closed."""

    kind: Literal["detected", "declared"]
    at: float
    reason: str
    who: str | None = None  # operator identity for declared closures
    until: float | None = None  # declared closures may say when the building reopens
    to: str | None = None  # operator's choice of alternate (kept so a blocked handover retries it)
    drill: bool = False  # decided in shadow mode: never carried out once shadow mode ends
    # Approvals (never a change of `kind`): the request asked for running its handover, and who
    # approved it ("auto-proceed" when nobody answered in time); `held`: set by an admin's
    # resolve, no handover until an operator asks for one.
    approval: str | None = None
    approved_by: tuple[str, ...] = ()
    held: bool = False


@dataclass(frozen=True, slots=True)
class Approval:
    """A run that waits for approvals (at most one per office). What the requester asked for is
    kept, and carried out as they asked once enough distinct people other than them approved."""

    id: str
    kind: RunKind
    requester: str  # "baton" when Baton asked (a detected closure, an automatic handback)
    reason: str
    at: float
    expires: float
    required: int
    approvers: tuple[str, ...] = ()
    auto_proceed_at: float | None = None
    declared: bool = False  # an operator's declaration of a closure, applied once approved
    until: float | None = None
    to: str | None = None
    grant: str | None = None  # the grant the requester asked under: its expiry withdraws the request


@dataclass(frozen=True, slots=True)
class OfficeState:
    office: str
    alternates: tuple[str, ...] = ()
    phase: Phase = Phase.OPEN
    since: float = 0.0  # when `phase` was entered
    verdict: OfficeVerdict = OfficeVerdict.UNKNOWN
    verdict_since: float = 0.0
    verdict_detail: str = ""  # "6/8 critical devices down"
    closure: Closure | None = None
    alternate: str | None = None  # the office operating this one (set from HANDING_OVER on)
    run_id: str | None = None  # the run in progress or the last one
    run_kind: RunKind | None = None
    blocked_until: float | None = None  # anti-flap block after a handover/handback
    flapping: bool = False
    history: tuple[OfficeVerdict, ...] = ()  # the last `flap_samples` observed verdicts
    # Alert values currently raised for this office, so each is raised and cleared exactly once
    alerts: frozenset[str] = frozenset()
    previous_alternate: str | None = None  # re-homed: the (closed) office that operated it before
    # Devices the last run skipped as unreachable, still to be handed over (or back) by a
    # catch-up run once they answer; `pending_kind` says which, `pending_alternate` the other side.
    pending: frozenset[str] = frozenset()
    pending_kind: RunKind | None = None
    pending_alternate: str | None = None
    ready: frozenset[str] = frozenset()  # pending devices that answered in the last poll round
    catchup_id: str | None = None  # the catch-up run in progress
    catchup_failures: int = 0
    catchup_not_before: float | None = None
    handback_waiting: str | None = None  # who asked for a handback while a catch-up ran
    approval: Approval | None = None  # the run waiting for approvals
    approval_ended: str = ""  # what became of the last request ("approval-x-1 expired at ...")
    aborting: str | None = None  # the run an operator asked to abort (until its result arrives)
    # Following: the run the leading vantage reported under way here ("handover run r-1 on v2"),
    # its id and kind. If this vantage comes to lead before it ends, it takes that run over: its
    # records are in etcd (`baton.runmirror`), and recovery finishes it. Without the id (a state
    # journaled before runs were shared) the office is FAILED, for an operator.
    remote_run: str | None = None
    remote_run_id: str | None = None
    remote_run_kind: RunKind | None = None


@dataclass(frozen=True, slots=True)
class State:
    """Everything `core.machine.step` decides on: one immutable snapshot."""

    offices: Mapping[str, OfficeState]
    paused: bool = False
    shadow: bool = False
    leader: bool = True  # this vantage holds the lease
    leader_elsewhere: str | None = None  # not leading: the vantage that does, when known
    storm: bool = False
    recent_down: tuple[tuple[float, str], ...] = ()  # (when, office) DOWN verdicts, storm window
    config_shadow: bool | None = None  # baton.yaml's `shadow` when last loaded (the shadow rule)
    epoch: int = 0  # the highest leadership epoch this vantage has held (fences its runs)
    expired_grants: tuple[str, ...] = ()  # grants whose `until` passed, journaled (sorted ids)
    stopping: bool = False  # the daemon is stopping: no decision it could not carry out (not kept)
