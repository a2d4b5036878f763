"""Observations → verdicts: how probe results become device and office health.

A probe result is an `Observation`. `observe` folds it into a `DeviceHealth` (one `ProbeHealth`
per protocol). `device_verdict` judges one device on its own; `judge_devices` then marks DOWN
devices that sit behind a DOWN parent as UNREACHABLE (not their fault); `judge_office` turns the
device judgements of one office into the office verdict that `core.machine` acts on.

Pure functions over frozen values: no I/O, no clock reads (times come in the observations).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType

from baton.core.model import DeviceVerdict, Inventory, OfficeVerdict, Policy, Protocol


def _no_probes() -> Mapping[Protocol, ProbeHealth]:
    return MappingProxyType({})


@dataclass(frozen=True, slots=True)
class Observation:
    """One probe of one device over one protocol: did it answer, when, and why not."""

    device: str
    protocol: Protocol
    ok: bool
    at: float
    reason: str = ""  # why the probe failed: "timeout", "connection refused", ...
    latency_s: float | None = None


@dataclass(frozen=True, slots=True)
class ProbeHealth:
    """What the probes of one protocol on one device have said so far."""

    consecutive_failures: int = 0
    consecutive_successes: int = 0
    last_ok_at: float | None = None
    last_at: float | None = None
    last_reason: str = ""
    ever_ok: bool = False


@dataclass(frozen=True, slots=True)
class DeviceHealth:
    probes: Mapping[Protocol, ProbeHealth] = field(default_factory=_no_probes)


@dataclass(frozen=True, slots=True)
class DeviceJudgement:
    verdict: DeviceVerdict
    reason: str  # "snmp: 3 consecutive failures (timeout)"
    cause: str | None = None  # UNREACHABLE: the DOWN device highest up the parent chain (root cause)


@dataclass(frozen=True, slots=True)
class OfficeJudgement:
    verdict: OfficeVerdict
    detail: str  # "6/8 critical devices down"
    down: int  # considered devices DOWN
    unreachable: int  # considered devices UNREACHABLE
    considered: int  # critical devices of the office (all of them if none is critical)
    ratio: float  # up / considered: the office health ratio for metrics (0.0 with no devices)


def observe(health: DeviceHealth, obs: Observation) -> DeviceHealth:
    """`health` with `obs` folded in. An observation older than the last one of its protocol is
    dropped: a probe that returns late must not overwrite a newer result."""
    probe = health.probes.get(obs.protocol, ProbeHealth())
    if probe.last_at is not None and obs.at < probe.last_at:
        return health
    if obs.ok:
        probe = replace(
            probe,
            consecutive_failures=0,
            consecutive_successes=probe.consecutive_successes + 1,
            last_ok_at=obs.at,
            last_at=obs.at,
            last_reason="",
            ever_ok=True,
        )
    else:
        probe = replace(
            probe,
            consecutive_failures=probe.consecutive_failures + 1,
            consecutive_successes=0,
            last_at=obs.at,
            last_reason=obs.reason,
        )
    return DeviceHealth(probes=MappingProxyType({**health.probes, obs.protocol: probe}))


def _probe_verdict(probe: ProbeHealth, policy: Policy) -> DeviceVerdict:
    if probe.consecutive_failures >= policy.failures_to_down:
        return DeviceVerdict.DOWN
    if probe.consecutive_failures == 0 or probe.ever_ok:
        # Fewer failures than the threshold after having answered: still UP (hysteresis).
        return DeviceVerdict.UP
    return DeviceVerdict.UNKNOWN


def _describe_probe(protocol: Protocol, probe: ProbeHealth) -> str:
    if probe.consecutive_failures == 0:
        return f"{protocol}: ok"
    plural = "s" if probe.consecutive_failures > 1 else ""
    cause = f" ({probe.last_reason})" if probe.last_reason else ""
    return f"{protocol}: {probe.consecutive_failures} consecutive failure{plural}{cause}"


def device_verdict(health: DeviceHealth, policy: Policy) -> DeviceJudgement:
    """UP if any protocol answers (or failed fewer than `failures_to_down` times after having
    answered); DOWN only when every probed protocol failed `failures_to_down` times in a row;
    UNKNOWN otherwise (never probed, or failing but not yet long enough and never seen up)."""
    if not health.probes:
        return DeviceJudgement(DeviceVerdict.UNKNOWN, "never probed")
    protocols = sorted(health.probes)
    verdicts = {p: _probe_verdict(health.probes[p], policy) for p in protocols}
    detail = "; ".join(_describe_probe(p, health.probes[p]) for p in protocols)
    if DeviceVerdict.UP in verdicts.values():
        return DeviceJudgement(DeviceVerdict.UP, detail)
    if all(v is DeviceVerdict.DOWN for v in verdicts.values()):
        return DeviceJudgement(DeviceVerdict.DOWN, detail)
    return DeviceJudgement(
        DeviceVerdict.UNKNOWN, f"{detail}; fewer than {policy.failures_to_down} failures and never up"
    )


def judge_devices(
    inventory: Inventory, healths: Mapping[str, DeviceHealth], policy: Policy
) -> Mapping[str, DeviceJudgement]:
    """Every inventory device judged; a DOWN device with a DOWN device anywhere up its parent
    chain is UNREACHABLE instead: its own failure is explained by the path to it."""
    raw = {
        device_id: device_verdict(healths.get(device_id, DeviceHealth()), policy)
        for device_id in inventory.devices
    }
    judged: dict[str, DeviceJudgement] = {}
    for device_id, judgement in raw.items():
        culprit = (
            _down_ancestor(device_id, inventory, raw) if judgement.verdict is DeviceVerdict.DOWN else None
        )
        if culprit is None:
            judged[device_id] = judgement
            continue
        parent = inventory.devices[device_id].parent
        where = (
            f"parent {culprit} is DOWN" if parent == culprit else f"{culprit} is DOWN (via parent {parent})"
        )
        root = _root_cause(culprit, inventory, raw)
        judged[device_id] = DeviceJudgement(DeviceVerdict.UNREACHABLE, f"{where}; {judgement.reason}", root)
    return MappingProxyType(judged)


def _down_ancestor(device_id: str, inventory: Inventory, raw: Mapping[str, DeviceJudgement]) -> str | None:
    """The nearest DOWN device up the parent chain. Validation rejects parent cycles, but this
    stays total: a device met twice ends the walk."""
    seen = {device_id}
    parent = inventory.devices[device_id].parent
    while parent is not None and parent not in seen and parent in inventory.devices:
        if raw[parent].verdict is DeviceVerdict.DOWN:
            return parent
        seen.add(parent)
        parent = inventory.devices[parent].parent
    return None


def _root_cause(culprit: str, inventory: Inventory, raw: Mapping[str, DeviceJudgement]) -> str:
    """The DOWN device highest up the chain from `culprit`: what really failed (a dead uplink
    router of another office, rather than the office's own core behind it)."""
    root = culprit
    while (above := _down_ancestor(root, inventory, raw)) is not None and above != culprit:
        root = above
    return root


def judge_office(
    office_id: str,
    inventory: Inventory,
    device_judgements: Mapping[str, DeviceJudgement],
    policy: Policy,
) -> OfficeJudgement:
    """The office verdict from its devices' judgements.

    Considered devices are the critical ones (all devices if none is critical). A device that
    is UNREACHABLE because a device *of this office* is DOWN counts as down here: when the whole
    building goes dark, its core router is DOWN and everything behind it unreachable, and that is
    the office failing. Only a cause outside the office (its uplink in another office) makes a
    device count as unreachable: then we cannot see the office, which is not a closure.

    DOWN when the down share reaches `office_down_ratio`; UNREACHABLE when down and unreachable
    together reach it; UNKNOWN when no considered device has a verdict yet; DEGRADED when any
    device of the office is DOWN or UNREACHABLE below that; HEALTHY otherwise (considered devices
    still UNKNOWN do not spoil HEALTHY).
    """
    devices = inventory.devices_of(office_id)
    if not devices:
        return OfficeJudgement(OfficeVerdict.UNKNOWN, "no devices in inventory", 0, 0, 0, 0.0)
    critical = tuple(d for d in devices if d.critical)
    considered = critical or devices
    label = "critical devices" if critical else "devices"
    n = len(considered)

    def verdict_of(device_id: str) -> DeviceVerdict:
        judgement = device_judgements.get(device_id)
        return DeviceVerdict.UNKNOWN if judgement is None else judgement.verdict

    def is_inside(cause: str | None) -> bool:
        known = inventory.devices.get(cause) if cause is not None else None
        return known is not None and known.office == office_id

    verdicts = [verdict_of(d.id) for d in considered]
    behind_own = sum(
        1
        for d in considered
        if verdict_of(d.id) is DeviceVerdict.UNREACHABLE and is_inside(device_judgements[d.id].cause)
    )
    down = verdicts.count(DeviceVerdict.DOWN) + behind_own
    unreachable = verdicts.count(DeviceVerdict.UNREACHABLE) - behind_own
    up = verdicts.count(DeviceVerdict.UP)
    ratio = up / n

    def judged(verdict: OfficeVerdict, detail: str) -> OfficeJudgement:
        return OfficeJudgement(verdict, detail, down, unreachable, n, ratio)

    # Compare as quotients, like the policy states them (3 * 0.1 > 0.3 in floating point).
    if down / n >= policy.office_down_ratio:
        behind = f" ({behind_own} behind a down device of the office)" if behind_own else ""
        return judged(OfficeVerdict.DOWN, f"{down}/{n} {label} down{behind}")
    if (down + unreachable) / n >= policy.office_down_ratio:
        if down == 0:
            return judged(OfficeVerdict.UNREACHABLE, f"{unreachable}/{n} {label} unreachable (parent down)")
        return judged(
            OfficeVerdict.UNREACHABLE,
            f"{down + unreachable}/{n} {label} down or unreachable ({unreachable} behind a down parent)",
        )
    if verdicts.count(DeviceVerdict.UNKNOWN) == n:
        return judged(OfficeVerdict.UNKNOWN, f"no verdict yet for any of {n} {label}")
    bad = [d.id for d in devices if verdict_of(d.id) in (DeviceVerdict.DOWN, DeviceVerdict.UNREACHABLE)]
    if bad:
        shown = ", ".join(bad[:3]) + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")
        return judged(
            OfficeVerdict.DEGRADED, f"{len(bad)}/{len(devices)} devices down or unreachable: {shown}"
        )
    return judged(OfficeVerdict.HEALTHY, f"{up}/{n} {label} up")
