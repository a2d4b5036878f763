"""The daemon configuration, `baton.yaml`: the policy and where everything lives.

Like the inventory, it is read with line numbers and every problem is reported at once; relative
paths (and `file:` credential references) start at the config file's directory. Policy timing
values are checked together by `check_policy`, a pure function: an unsafe combination is refused
with the values and the reason, never silently adjusted. `validate` reads an inventory and a
config and adds the checks that need both (the vantage's office, poll interval vs SNMP probe time).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BeforeValidator, Field, ValidationError
from pydantic_core import PydanticCustomError

from baton.core.model import Inventory, Policy, SecretRef
from baton.inventory.loader import read_inventory, reference_hint
from baton.inventory.numbers import bounded
from baton.inventory.schema import Id, Port, Ref, Strict
from baton.operators import OperatorSettings, OperatorsFile, apply_to_policy, to_settings
from baton.secrets import SecretError, check, parse_ref
from baton.yamlsource import (
    ConfigError,
    Document,
    KeyPath,
    Problem,
    did_you_mean,
    errors_in,
    pydantic_problems,
    read_document,
)

CONFIRM_MARGIN_S = 30.0  # time a run needs after its timeout to confirm its commits
# systemd/baton.service's TimeoutStopSec (tests/unit/test_stop_timeout.py reads the unit and checks
# they agree), and what a stop does besides draining runs (monitor, API, journal): the drain
# must fit in the difference, or systemd kills the daemon mid-drain.
UNIT_TIMEOUT_STOP_S = 90.0
STOP_MARGIN_S = 20.0
DEFAULT_JOURNAL = "/var/lib/baton/journal.sqlite3"
DEFAULT_SOCKET = "/run/baton/api.sock"
ALL_INTERFACES = "0.0.0.0"  # noqa: S104 - traps come from devices on the management network


# --- runtime configuration -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ApiSettings:
    unix_socket: Path = Path(DEFAULT_SOCKET)
    socket_group: str | None = None
    tcp_listen: str | None = None  # "host:port"; off when None
    # The address the other vantages are given for this one's API (etcd): default tcp_listen;
    # set it when the API listens on every interface (0.0.0.0:8443) or behind NAT.
    advertise: str | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tokens: tuple[SecretRef, ...] = ()
    # Several vantages: the credential they share to forward an operator's command from a
    # follower to the leader's TCP API (`baton.api`), and the CA that signed the leader's
    # certificate when the API speaks TLS (None: the system's trust store).
    peer_token: SecretRef | None = None
    peer_ca: Path | None = None


@dataclass(frozen=True, slots=True)
class TrapUser:
    user: str
    auth_protocol: str
    auth_key: SecretRef
    priv_protocol: str
    priv_key: SecretRef


@dataclass(frozen=True, slots=True)
class TrapSettings:
    enabled: bool = True
    listen: str = ALL_INTERFACES
    port: int = 162
    communities: tuple[SecretRef, ...] = ()
    v3_users: tuple[TrapUser, ...] = ()
    vendor_traps: tuple[tuple[str, str, bool], ...] = ()  # (oid, kind, office_level)


@dataclass(frozen=True, slots=True)
class VantageSettings:
    id: str
    office: str
    # The address this vantage's probes leave from (the one the devices' ACLs and the network
    # know it by, on a host with several); None: the kernel's choice.
    source_address: str | None = None


@dataclass(frozen=True, slots=True)
class EtcdSettings:
    """Several vantages over etcd (see `baton.leadership`)."""

    endpoints: tuple[str, ...]
    prefix: str = "/baton/"
    lease_ttl_s: float = 10.0
    request_timeout_s: float = 2.0  # every request's hard deadline, per endpoint tried
    ca: SecretRef | None = None  # a CA bundle for https endpoints (file: reference)
    cert: SecretRef | None = None  # client certificate and key (mutual TLS)
    key: SecretRef | None = None
    user: str | None = None  # etcd authentication
    password: SecretRef | None = None
    # The vantages that watch the offices; an office is DOWN only when a quorum of them (a
    # majority unless set) says so. Empty: this vantage alone.
    vantages: tuple[str, ...] = ()
    quorum: int | None = None

    @property
    def keepalive_s(self) -> float:
        return self.lease_ttl_s / 3

    def quorum_of(self, vantage: str) -> int:
        voters = len(set(self.vantages) | {vantage})
        return self.quorum if self.quorum is not None else voters // 2 + 1


@dataclass(frozen=True, slots=True)
class Config:
    policy: Policy
    vantage: VantageSettings
    inventory: Path
    playbooks: Path
    journal_path: Path = Path(DEFAULT_JOURNAL)
    api: ApiSettings = ApiSettings()
    metrics_listen: str = "127.0.0.1:9180"
    traps: TrapSettings = TrapSettings()
    etcd: EtcdSettings | None = None
    shadow: bool = False  # initial mode: observe and log "would hand over", act not
    # Which playbook (by its `name`) runs a handover / handback; an office's vars
    # `handover_playbook` / `handback_playbook` override it. None: the only one of that kind.
    handover_playbook: str | None = None
    handback_playbook: str | None = None
    base_dir: Path = Path()  # baton.yaml's directory: where `file:` references start
    # `operators:` (who may do what, approval rules); none: everyone who gets in is an admin
    operators: OperatorSettings = field(default_factory=OperatorSettings)


# --- baton.yaml as written -----------------------------------------------------------------


def _check_listen(value: str) -> str:
    host, sep, port = value.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise PydanticCustomError(
            "bad_listen", "not a host:port address", {"hint": "write e.g. 127.0.0.1:9180 or [::1]:9180"}
        )
    return value


def _as_list(value: Any) -> Any:
    return [value] if isinstance(value, str) else value


Listen = Annotated[str, AfterValidator(_check_listen)]
Refs = Annotated[list[Ref], BeforeValidator(_as_list)]

DAY_S = 86400.0
MONTH_S = 30 * DAY_S
# Durations in seconds and counts: finite, and in a range an operator could mean (`bounded`).
PollSeconds = Annotated[float, bounded(0, 3600, example=10, unit="s", low_open=True)]
WindowSeconds = Annotated[float, bounded(0, DAY_S, example=300, unit="s", low_open=True)]
HoldSeconds = Annotated[float, bounded(0, DAY_S, example=30, unit="s")]
BlockSeconds = Annotated[float, bounded(0, MONTH_S, example=3600, unit="s")]
TtlSeconds = Annotated[float, bounded(0, 3600, example=10, unit="s", low_open=True)]
Ratio = Annotated[float, bounded(0, 1, example=0.5, low_open=True)]
Percent = Annotated[float, bounded(0, 100, example=50)]
Failures = Annotated[int, bounded(1, 100, example=3)]
OfficeCount = Annotated[int, bounded(1, 100_000, example=2)]
Samples = Annotated[int, bounded(2, 1000, example=21)]


class PolicyFile(Strict):
    """Every `Policy` field, optional (unset: design.md default). Each value is finite and in a
    sane range on its own; combinations are checked in check_policy."""

    poll_interval_s: PollSeconds | None = None
    failures_to_down: Failures | None = None
    office_down_ratio: Ratio | None = None
    hold_down_s: HoldSeconds | None = None
    confirm_window_s: WindowSeconds | None = None
    run_timeout_s: WindowSeconds | None = None
    anti_flap_block_s: BlockSeconds | None = None
    storm_max_offices: OfficeCount | None = None
    storm_max_ratio: Ratio | None = None
    storm_window_s: WindowSeconds | None = None
    handback_hold_s: BlockSeconds | None = None
    auto_handback: bool | None = None
    require_approval: bool | None = None
    flap_samples: Samples | None = None
    flap_high_pct: Percent | None = None
    flap_low_pct: Percent | None = None
    drain_s: HoldSeconds | None = None


class ApiFile(Strict):
    unix_socket: str = DEFAULT_SOCKET
    socket_group: str | None = None
    tcp_listen: Listen | None = None
    advertise: Listen | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    tokens: Refs = Field(default_factory=list)
    peer_token: Ref | None = None
    peer_ca: str | None = None


class TrapUserFile(Strict):
    user: str
    auth_protocol: Literal["SHA", "SHA224", "SHA256", "SHA384", "SHA512", "MD5"]
    auth_key: Ref
    priv_protocol: Literal["AES", "AES192", "AES256", "DES"]
    priv_key: Ref


class VendorTrapFile(Strict):
    """A vendor notification Baton should understand (power, environment, door alarms)."""

    oid: Annotated[str, Field(pattern=r"^[0-9]+(\.[0-9]+)+$")]
    kind: Annotated[str, Field(pattern=r"^[A-Za-z][A-Za-z0-9_]{0,31}$")]  # a metric label: keep it short
    office_level: bool = False  # about the whole office: re-poll all its devices at once


class TrapsFile(Strict):
    enabled: bool = True
    listen: str = ALL_INTERFACES
    port: Port = 162
    communities: Refs = Field(default_factory=list)
    v3_users: list[TrapUserFile] = Field(default_factory=list)
    vendor_traps: list[VendorTrapFile] = Field(default_factory=list)


def _check_address(value: str) -> str:
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        raise PydanticCustomError(
            "bad_address", "not an IP address", {"hint": "write this host's address, e.g. 10.0.1.21"}
        ) from None


class VantageFile(Strict):
    id: Id
    office: Id
    source_address: Annotated[str, AfterValidator(_check_address)] | None = None


def _check_endpoint(value: str) -> str:
    if not re.fullmatch(r"https?://[^/\s]+(:\d+)?/?", value):
        raise PydanticCustomError(
            "bad_endpoint", "not an etcd client URL", {"hint": "write e.g. https://10.0.0.11:2379"}
        )
    return value.rstrip("/")


class EtcdFile(Strict):
    endpoints: Annotated[list[Annotated[str, AfterValidator(_check_endpoint)]], Field(min_length=1)]
    prefix: str = "/baton/"
    lease_ttl_s: TtlSeconds = 10.0
    request_timeout_s: Annotated[float, bounded(0, 60, example=2, unit="s", low_open=True)] = 2.0
    ca: Ref | None = None
    cert: Ref | None = None
    key: Ref | None = None
    user: str | None = None
    password: Ref | None = None
    vantages: list[Id] = Field(default_factory=list)
    quorum: Annotated[int, Field(ge=1, le=99)] | None = None


class ConfigFile(Strict):
    inventory: str = "inventory"
    playbooks: str = "playbooks"
    journal_path: str = DEFAULT_JOURNAL
    api: ApiFile = Field(default_factory=ApiFile)
    metrics_listen: Listen = "127.0.0.1:9180"
    traps: TrapsFile = Field(default_factory=TrapsFile)
    vantage: VantageFile
    etcd: EtcdFile | None = None
    shadow: bool = False
    handover_playbook: str | None = None
    handback_playbook: str | None = None
    policy: PolicyFile = Field(default_factory=PolicyFile)
    operators: OperatorsFile | None = None


# --- policy timing -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Finding:
    """An unsafe policy combination: the fields involved (first one is where it is reported)."""

    fields: tuple[str, ...]
    message: str
    hint: str
    severity: Literal["error", "warning"] = "error"


def _n(value: float) -> str:
    return f"{value:g}"


def check_policy(policy: Policy) -> list[Finding]:
    """Every unsafe combination of policy values, each with the values and why."""
    p = policy
    found = []
    if p.hold_down_s < 2 * p.poll_interval_s:
        twice = _n(2 * p.poll_interval_s)
        found.append(
            Finding(
                ("hold_down_s", "poll_interval_s"),
                f"hold_down_s ({_n(p.hold_down_s)}) is shorter than 2 × poll_interval_s "
                f"(2 × {_n(p.poll_interval_s)} = {twice}): a held DOWN could not be observed",
                f"raise hold_down_s to at least {twice}, or lower poll_interval_s",
            )
        )
    elif p.hold_down_s < p.failures_to_down * p.poll_interval_s:
        detect = _n(p.failures_to_down * p.poll_interval_s)
        found.append(
            Finding(
                ("hold_down_s", "failures_to_down", "poll_interval_s"),
                f"hold_down_s ({_n(p.hold_down_s)}) is shorter than the detection time failures_to_down × "
                f"poll_interval_s ({p.failures_to_down} × {_n(p.poll_interval_s)} = {detect} s)",
                f"a hold-down of at least {detect} s rides out what detection alone would not",
                "warning",
            )
        )
    if p.run_timeout_s >= p.confirm_window_s - CONFIRM_MARGIN_S:
        found.append(
            Finding(
                ("run_timeout_s", "confirm_window_s"),
                f"run_timeout_s ({_n(p.run_timeout_s)}) must be less than confirm_window_s "
                f"({_n(p.confirm_window_s)}) minus a {_n(CONFIRM_MARGIN_S)} s margin: the confirmed commit "
                "would expire before the run confirms it",
                f"raise confirm_window_s above {_n(p.run_timeout_s + CONFIRM_MARGIN_S)}, "
                f"or lower run_timeout_s below {_n(p.confirm_window_s - CONFIRM_MARGIN_S)}",
            )
        )
    if p.handback_hold_s < p.hold_down_s:
        found.append(
            Finding(
                ("handback_hold_s", "hold_down_s"),
                f"handback_hold_s ({_n(p.handback_hold_s)}) is shorter than "
                f"hold_down_s ({_n(p.hold_down_s)}): an office would be handed back faster than it is closed",
                f"raise handback_hold_s to at least {_n(p.hold_down_s)}",
            )
        )
    if p.flap_low_pct >= p.flap_high_pct:
        found.append(
            Finding(
                ("flap_low_pct", "flap_high_pct"),
                f"flap_low_pct ({_n(p.flap_low_pct)}) must be below flap_high_pct ({_n(p.flap_high_pct)}): "
                "the flapping flag needs a gap to clear",
                "e.g. flap_high_pct: 50 and flap_low_pct: 25",
            )
        )
    for name, meaning, example in (
        ("office_down_ratio", "the share of critical devices DOWN that makes an office DOWN", "0.5"),
        ("storm_max_ratio", "the share of all offices DOWN at once that means a storm", "0.25"),
    ):
        value = getattr(p, name)
        if not 0 < value <= 1:
            found.append(
                Finding(
                    (name,), f"{name} ({_n(value)}) must be in (0, 1]: it is {meaning}", f"e.g. {example}"
                )
            )
    if p.anti_flap_block_s < p.hold_down_s:
        found.append(
            Finding(
                ("anti_flap_block_s", "hold_down_s"),
                f"anti_flap_block_s ({_n(p.anti_flap_block_s)}) is shorter than "
                f"hold_down_s ({_n(p.hold_down_s)}): the block would end before a new closure "
                "could be confirmed",
                f"raise anti_flap_block_s to at least {_n(p.hold_down_s)}",
            )
        )
    if p.drain_s > UNIT_TIMEOUT_STOP_S - STOP_MARGIN_S:
        fits = _n(UNIT_TIMEOUT_STOP_S - STOP_MARGIN_S)
        found.append(
            Finding(
                ("drain_s",),
                f"drain_s ({_n(p.drain_s)}) does not fit the service's stop timeout: TimeoutStopSec "
                f"({_n(UNIT_TIMEOUT_STOP_S)}) minus a {_n(STOP_MARGIN_S)} s margin for the rest of the "
                f"stop is {fits} s, so systemd would kill the daemon while runs drain",
                f"lower drain_s to at most {fits}, or raise TimeoutStopSec in systemd/baton.service "
                f"(and UNIT_TIMEOUT_STOP_S with it) to at least {_n(p.drain_s + STOP_MARGIN_S)}",
            )
        )
    return found


def check_probe_time(policy: Policy, inventory: Inventory) -> Finding | None:
    """A poll round must outlast the slowest SNMP probe (timeout × tries), or rounds overlap."""
    slow = [
        (d.snmp.timeout_s * (d.snmp.retries + 1), d.id, d.snmp.timeout_s, d.snmp.retries)
        for d in inventory.devices.values()
        if d.snmp is not None and policy.poll_interval_s < d.snmp.timeout_s * (d.snmp.retries + 1)
    ]
    if not slow:
        return None
    worst, device, timeout_s, retries = max(slow)
    return Finding(
        ("poll_interval_s",),
        f"poll_interval_s ({_n(policy.poll_interval_s)}) is shorter than the SNMP probe time of {len(slow)} "
        f"device(s): timeout_s × (retries + 1) = {_n(timeout_s)} × {retries + 1} = {_n(worst)} s for "
        f"{device} (the longest)",
        f"raise poll_interval_s to at least {_n(worst)}, or lower snmp timeout_s/retries in the inventory",
    )


# --- reading -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ConfigReading:
    config: Config | None  # None when there are errors
    problems: list[Problem]
    inventory: Path | None = None  # the inventory the file names, even when other parts are broken
    document: Document | None = None
    operators: OperatorSettings | None = None  # read even when other parts are broken


def load_config(
    path: Path | str, *, environ: Mapping[str, str] | None = None, check_credentials: bool = True
) -> Config:
    """The configuration in `path`; raises ConfigError (with every problem) if it has errors."""
    reading = read_config(Path(path), environ=environ, check_credentials=check_credentials)
    if reading.config is None:
        raise ConfigError(reading.problems)
    return reading.config


def read_config(
    path: Path, *, environ: Mapping[str, str] | None = None, check_credentials: bool = True
) -> ConfigReading:
    doc, problems = read_document(path)
    if doc is None:
        return ConfigReading(None, problems)
    # Absolute: `file:` references and relative paths must not depend on the daemon's cwd.
    base = path.resolve().parent
    named = doc.data.get("inventory") if isinstance(doc.data, dict) else None
    # As the user wrote it (relative to where they are), for messages; Config gets absolute paths.
    inventory = path.parent / named if isinstance(named, str) and named else None
    if not isinstance(doc.data, dict):
        problems.append(
            Problem(doc.file, 1, "", "expected a mapping of settings", "see the example baton.yaml")
        )
        return ConfigReading(None, problems, inventory, doc)
    try:
        parsed = ConfigFile.model_validate(doc.data)
    except ValidationError as exc:
        problems.extend(pydantic_problems(doc, exc, ConfigFile))
        problems.sort(key=lambda p: p.line or 0)
        return ConfigReading(None, problems, inventory, doc)
    config = _to_config(parsed, base)
    operators, operator_problems = to_settings(parsed.operators, doc)
    config = replace(config, operators=operators)
    problems.extend(operator_problems)
    problems.extend(_finding_problem(doc, f) for f in check_policy(config.policy))
    if config.etcd is not None:
        problems.extend(
            _finding_problem(doc, f) for f in check_etcd(config.etcd, config.policy, config.vantage.id)
        )
    problems.extend(_check_api(doc, config.api, etcd=config.etcd is not None))
    if check_credentials:
        problems.extend(_check_credentials(doc, parsed, base, environ))
    problems.sort(key=lambda p: p.line or 0)
    return ConfigReading(None if errors_in(problems) else config, problems, inventory, doc, operators)


def _ref(base: Path, text: str) -> SecretRef:
    """A reference from baton.yaml: `file:` paths start at the config's directory, so they are
    made absolute here and resolve the same wherever they are used (inventory refs start at
    the inventory directory instead)."""
    ref = parse_ref(text)
    if ref.kind == "file":
        return SecretRef("file", str(base / ref.name))
    return ref


def _to_config(parsed: ConfigFile, base: Path) -> Config:
    given = parsed.policy.model_dump(exclude_none=True)
    api = parsed.api
    return Config(
        policy=Policy(**given),
        vantage=VantageSettings(
            parsed.vantage.id, parsed.vantage.office, source_address=parsed.vantage.source_address
        ),
        inventory=base / parsed.inventory,
        playbooks=base / parsed.playbooks,
        journal_path=base / parsed.journal_path,
        api=ApiSettings(
            unix_socket=base / api.unix_socket,
            socket_group=api.socket_group,
            tcp_listen=api.tcp_listen,
            advertise=api.advertise,
            tls_cert=None if api.tls_cert is None else base / api.tls_cert,
            tls_key=None if api.tls_key is None else base / api.tls_key,
            tokens=tuple(_ref(base, t) for t in api.tokens),
            peer_token=None if api.peer_token is None else _ref(base, api.peer_token),
            peer_ca=None if api.peer_ca is None else base / api.peer_ca,
        ),
        metrics_listen=parsed.metrics_listen,
        traps=TrapSettings(
            enabled=parsed.traps.enabled,
            listen=parsed.traps.listen,
            port=parsed.traps.port,
            communities=tuple(_ref(base, c) for c in parsed.traps.communities),
            v3_users=tuple(
                TrapUser(
                    u.user, u.auth_protocol, _ref(base, u.auth_key), u.priv_protocol, _ref(base, u.priv_key)
                )
                for u in parsed.traps.v3_users
            ),
            vendor_traps=tuple((v.oid, v.kind, v.office_level) for v in parsed.traps.vendor_traps),
        ),
        etcd=None if parsed.etcd is None else _etcd(parsed.etcd, base),
        shadow=parsed.shadow,
        handover_playbook=parsed.handover_playbook,
        handback_playbook=parsed.handback_playbook,
        base_dir=base,
    )


def _etcd(e: EtcdFile, base: Path) -> EtcdSettings:
    def ref(text: str | None) -> SecretRef | None:
        return None if text is None else _ref(base, text)

    return EtcdSettings(
        endpoints=tuple(e.endpoints),
        prefix=e.prefix if e.prefix.endswith("/") else e.prefix + "/",
        lease_ttl_s=e.lease_ttl_s,
        request_timeout_s=e.request_timeout_s,
        ca=ref(e.ca),
        cert=ref(e.cert),
        key=ref(e.key),
        user=e.user,
        password=ref(e.password),
        vantages=tuple(e.vantages),
        quorum=e.quorum,
    )


def check_etcd(etcd: EtcdSettings, policy: Policy, vantage: str) -> list[Finding]:
    """The lease must outlive a keepalive interval plus two requests that time out (Patroni's
    `loop_wait + 2 × retry_timeout ≤ ttl`), and a takeover must fit inside the confirm window."""
    found = []
    need = etcd.keepalive_s + 2 * etcd.request_timeout_s
    if need > etcd.lease_ttl_s:
        found.append(
            Finding(
                ("etcd.lease_ttl_s",),
                f"etcd.lease_ttl_s ({_n(etcd.lease_ttl_s)}) is shorter than a keepalive interval "
                f"(ttl/3 = {_n(etcd.keepalive_s)}) plus two requests that time out "
                f"(2 × {_n(etcd.request_timeout_s)}): the lease could expire while the leader still acts",
                f"raise lease_ttl_s to at least {_n(3 * etcd.request_timeout_s)} (3 × request_timeout_s) "
                "or lower request_timeout_s",
            )
        )
    takeover = etcd.lease_ttl_s + 2 * etcd.request_timeout_s + CONFIRM_MARGIN_S
    if policy.confirm_window_s < takeover:
        found.append(
            Finding(
                ("etcd.lease_ttl_s",),
                f"confirm_window_s ({_n(policy.confirm_window_s)}) is shorter than a takeover (lease_ttl_s "
                f"{_n(etcd.lease_ttl_s)} + 2 × request_timeout_s + a {_n(CONFIRM_MARGIN_S)} s margin = "
                f"{_n(takeover)}): a run the leader left could revert before another vantage finishes it",
                "raise policy.confirm_window_s or lower etcd.lease_ttl_s",
            )
        )
    voters = len(set(etcd.vantages) | {vantage})
    if etcd.quorum is not None and etcd.quorum > voters:
        found.append(
            Finding(
                ("etcd.quorum",),
                f"etcd.quorum ({etcd.quorum}) is more than the {voters} vantage(s) listed: "
                "no office could close",
                f"list the vantages in etcd.vantages, or set quorum to at most {voters}",
            )
        )
    if etcd.vantages and vantage not in etcd.vantages:
        found.append(
            Finding(
                ("etcd.vantages",),
                f"this vantage ({vantage}) is not in etcd.vantages ({', '.join(etcd.vantages)})",
                f"add {vantage} to etcd.vantages on every vantage",
            )
        )
    if (etcd.cert is None) != (etcd.key is None):
        found.append(Finding(("etcd.cert",), "etcd.cert and etcd.key go together", "set both, or neither"))
    if (etcd.user is None) != (etcd.password is None):
        found.append(
            Finding(("etcd.user",), "etcd.user and etcd.password go together", "set both, or neither")
        )
    return found


def _finding_problem(doc: Document, finding: Finding) -> Problem:
    paths: list[KeyPath] = [
        tuple(name.split(".")) if "." in name else ("policy", name) for name in finding.fields
    ]
    written = [path for path in paths if path in doc.lines]
    path = written[0] if written else paths[0]
    where = str(path[0])
    return Problem(doc.file, doc.line_of(path), where, finding.message, finding.hint, finding.severity)


def _check_api(doc: Document, api: ApiSettings, *, etcd: bool) -> list[Problem]:
    problems = []
    if api.tcp_listen is not None and not api.tokens and api.peer_token is None:
        problems.append(
            doc.problem(
                ("api", "tcp_listen"),
                "the TCP API has no tokens: anyone who can reach it could hand offices over",
                "add api.tokens: [credential:api-token], or remove tcp_listen",
            )
        )
    if (api.tls_cert is None) != (api.tls_key is None):
        problems.append(doc.problem(("api",), "tls_cert and tls_key go together", "set both, or neither"))
    if api.tcp_listen is not None and api.tls_cert is None:
        host = api.tcp_listen.rpartition(":")[0].strip("[]")
        if host not in ("127.0.0.1", "::1", "localhost"):
            problems.append(
                doc.problem(
                    ("api", "tcp_listen"),
                    "the TCP API listens beyond loopback without TLS: tokens would travel in clear text",
                    "set api.tls_cert and api.tls_key",
                    "warning",
                )
            )
    problems.extend(_check_forwarding(doc, api, etcd=etcd))
    return problems


_EVERY_INTERFACE = ("", "0.0.0.0", "::")  # noqa: S104 - recognised, not listened on


def _check_forwarding(doc: Document, api: ApiSettings, *, etcd: bool) -> list[Problem]:
    """Several vantages: a follower forwards an operator's command to the leader's TCP API (its
    `api.tcp_listen`, published in etcd) with the vantages' shared `api.peer_token`. Without
    them a follower refuses, naming the leader: safe, so warnings; a setting that cannot work
    as written is an error."""
    problems = []
    peer = ("api", "peer_token")
    if api.peer_token is not None and api.peer_token in api.tokens:
        problems.append(
            doc.problem(
                peer,
                "api.peer_token is also one of api.tokens: whoever holds that operator token could "
                "act as any operator",
                "give the vantages a credential of their own, used for nothing else",
            )
        )
    if api.peer_token is not None and api.tcp_listen is None:
        problems.append(
            doc.problem(
                peer,
                "api.peer_token is set but api.tcp_listen is not: when this vantage leads, the others "
                "cannot forward commands to it",
                "set api.tcp_listen to an address the other vantages reach, or remove api.peer_token",
            )
        )
    if api.advertise is not None and api.tcp_listen is None:
        problems.append(
            doc.problem(
                ("api", "advertise"),
                "api.advertise is set but api.tcp_listen is not: nothing listens at that address",
                "set api.tcp_listen (the address to listen on), or remove api.advertise",
            )
        )
    if api.peer_token is not None and not etcd:
        problems.append(
            doc.problem(
                peer,
                "api.peer_token has no use without etcd: this vantage leads alone, nothing is forwarded",
                "remove api.peer_token, or configure etcd: for several vantages",
                "warning",
            )
        )
    if api.peer_ca is not None and api.peer_token is None:
        problems.append(
            doc.problem(("api", "peer_ca"), "api.peer_ca goes with api.peer_token", "set both, or neither")
        )
    elif api.peer_ca is not None and api.tls_cert is None:
        problems.append(
            doc.problem(
                ("api", "peer_ca"),
                "api.peer_ca verifies the leader's TLS certificate, but this vantage's API has no TLS: "
                "commands are forwarded over TLS when the vantages' APIs speak it",
                "set api.tls_cert and api.tls_key (on every vantage), or remove api.peer_ca",
            )
        )
    if not etcd:
        return problems
    written: KeyPath = ("api",) if ("api",) in doc.lines else ("etcd",)  # a line to point at
    if api.tcp_listen is None:
        problems.append(
            doc.problem(
                written,
                "with etcd, this vantage's API has no TCP listener (api.tcp_listen): when it leads, a "
                "command given on another vantage can neither be forwarded to it nor be told where it is",
                "set api.tcp_listen to an address the other vantages reach, and api.peer_token",
                "warning",
            )
        )
    elif api.advertise is None and api.tcp_listen.rpartition(":")[0].strip("[]") in _EVERY_INTERFACE:
        problems.append(
            doc.problem(
                ("api", "tcp_listen"),
                f"the other vantages are given api.tcp_listen ({api.tcp_listen}) as this vantage's "
                "address: an address on every interface is not one they can reach, so commands cannot "
                "be forwarded to this vantage when it leads",
                "set api.advertise to the address the other vantages reach, e.g. 10.0.1.21:8443, "
                "or listen on that address",
                "warning",
            )
        )
    elif api.peer_token is None:
        problems.append(
            doc.problem(
                written,
                "with etcd and no api.peer_token, a command given on this vantage while it follows is "
                "refused (naming the leader and its address), not forwarded to the leader",
                "set api.peer_token: file:/etc/baton/credentials/peer-token, the same credential on "
                "every vantage",
                "warning",
            )
        )
    return problems


def _check_credentials(
    doc: Document, parsed: ConfigFile, base: Path, environ: Mapping[str, str] | None
) -> list[Problem]:
    written: list[tuple[KeyPath, str]] = [(("api", "tokens", i), t) for i, t in enumerate(parsed.api.tokens)]
    if parsed.api.peer_token is not None:
        written.append((("api", "peer_token"), parsed.api.peer_token))
    written += [(("traps", "communities", i), c) for i, c in enumerate(parsed.traps.communities)]
    for i, user in enumerate(parsed.traps.v3_users):
        written += [(("traps", "v3_users", i, "auth_key"), user.auth_key)]
        written += [(("traps", "v3_users", i, "priv_key"), user.priv_key)]
    # a single token written as a string has no list item line; the key's line is the place
    problems = []
    for path, text in written:
        try:
            check(parse_ref(text), base_dir=base, environ=environ)
        except SecretError as exc:
            hint = reference_hint(text).replace("inventory directory", "directory of this file")
            problems.append(doc.problem(path, f"cannot resolve {exc}", hint))
    return problems


# --- inventory and config together ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Validation:
    inventory_dir: Path
    inventory: Inventory | None
    config: Config | None
    problems: list[Problem] = field(default_factory=list)
    config_document: Document | None = None  # baton.yaml as read, for problems found later

    @property
    def is_valid(self) -> bool:
        return not errors_in(self.problems)


def validate(
    inventory_dir: Path | None, config_file: Path | None, *, environ: Mapping[str, str] | None = None
) -> list[Problem]:
    """Every problem of the inventory and config (and of the two together), errors and warnings."""
    return check_all(inventory_dir, config_file, environ=environ).problems


def check_all(
    inventory_dir: Path | None, config_file: Path | None, *, environ: Mapping[str, str] | None = None
) -> Validation:
    """Read both; `inventory_dir` None means the one the config names, else ./inventory."""
    reading = read_config(config_file, environ=environ) if config_file is not None else None
    directory = inventory_dir or (reading.inventory if reading else None) or Path("inventory")
    inventory_reading = read_inventory(directory, environ=environ)
    problems = [*inventory_reading.problems, *(reading.problems if reading else [])]
    inventory = inventory_reading.inventory
    config = reading.config if reading else None
    if reading is not None and reading.document is not None and inventory is not None and config is not None:
        doc = reading.document
        office = config.vantage.office
        if office not in inventory.offices:
            hint = did_you_mean(office, inventory.offices) or "name an office of the inventory"
            problems.append(doc.problem(("vantage", "office"), f"unknown office '{office}'", hint))
        finding = check_probe_time(config.policy, inventory)
        if finding is not None:
            problems.append(_finding_problem(doc, finding))
    if reading is not None and reading.document is not None and inventory is not None:
        # Approval rules name regions; the core decides with offices (and the grants that end).
        operators = reading.operators or OperatorSettings()
        policy, scope_problems = apply_to_policy(
            operators, config.policy if config else Policy(), inventory, reading.document
        )
        problems.extend(scope_problems)
        if config is not None:
            config = replace(config, policy=policy)
    return Validation(directory, inventory, config, problems, reading.document if reading else None)


__all__ = [
    "ApiSettings",
    "Config",
    "ConfigError",
    "EtcdSettings",
    "Finding",
    "Problem",
    "TrapSettings",
    "TrapUser",
    "Validation",
    "VantageSettings",
    "check_all",
    "check_policy",
    "check_probe_time",
    "load_config",
    "read_config",
    "validate",
]
