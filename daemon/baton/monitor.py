"""The monitor: probes and traps in, one judged verdict per office per poll round out.

Theory of operation
-------------------
Probes. SNMP polls run on the `PollScheduler` (each device at its own stable phase in the poll
interval); NETCONF probes of devices with `netconf.enabled` run one small loop per device at the
same phase, one session kept open per device (`NetconfProbe`). Every result is an `Observation`
folded into the device's `DeviceHealth` (`core.health.observe`) as soon as it arrives.

Rounds. Independently of when probes come back, a round fires every `policy.poll_interval_s` on a
fixed grid (the same grid the scheduler's phases hang off, so each device is probed once between
two rounds). A round judges every device (`judge_devices`: DOWN behind a DOWN parent becomes
UNREACHABLE) and every office (`judge_office`), updates the metrics and emits one
`OfficeObserved` per office, changed or not: the core counts one flap sample per round. A loop
that stalls for whole intervals skips those rounds (logged) instead of firing them back to back.

Traps. A `TrapEvent` from a known device re-polls, at once and over every configured protocol,
that device and the devices behind it (linkDown on an uplink concerns what hangs off it). An
office-level alarm (power, environment: `VendorTrap.office_level`) re-polls every device of the
office `failures_to_down` times, `trap_repoll_spacing_s` apart: a trap may make the evidence
arrive sooner, but never replaces it. A device still needs `failures_to_down` consecutive failed
probes of its own to be DOWN, so an alarm from an office whose devices keep answering closes
nothing; an office that really went dark is DOWN a few seconds after the alarm instead of
`failures_to_down` poll intervals later. After each re-poll pass the affected offices are judged
again and an `OfficeObserved` is emitted right away for each whose verdict changed since the last
emission (unchanged verdicts wait for the round, so extra passes do not dilute flap detection).
Traps for the same office burst (or the same device) while one is running are coalesced into one
more pass afterwards. Traps come from the receiver's bounded, coalescing queue (office-level
alarms first; see `adapters.traps`), drained whole at each wake-up; a pass judges only the
offices it concerns (with their devices' parent chains), so a storm of thousands of passes
costs what those offices cost, not thousands of whole-inventory judgements.

Dark devices. SNMP polls waiting out a timeout give their poller concurrency slot back (see
`SnmpPoller`), and NETCONF probes of devices not known good pass a TCP connect on the event loop
first (`tcp_gate`), so powered-off devices hold no slot that live ones need.

Metrics. The SNMP poller records SNMP probe durations and failures itself (when the monitor
builds it, it hands it the `Metrics`); the monitor records NETCONF probes, `baton_device_up`
(1 if any protocol's last probe answered; written after every observation, so it is the last
word over the poller's SNMP-only value), the device and office verdicts and the health ratio.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import math
import os
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from types import MappingProxyType
from typing import Any, Protocol, cast

import structlog

from baton.adapters.connecting import is_no_answer
from baton.adapters.netconf import NetconfProbe
from baton.adapters.snmp import PollScheduler, SecretResolver, SnmpPoller, SnmpReading, phase_offset
from baton.adapters.traps import (
    TrapEvent,
    TrapReceiver,
    TrapReceiverConfig,
    TrapSource,
    V3TrapUser,
    VendorTrap,
)
from baton.config import TrapSettings
from baton.core.events import OfficeObserved
from baton.core.health import (
    DeviceHealth,
    DeviceJudgement,
    Observation,
    OfficeJudgement,
    judge_devices,
    judge_office,
    observe,
)
from baton.core.model import Device, DeviceVerdict, Inventory, OfficeVerdict, Policy
from baton.core.model import Protocol as ProbeProtocol
from baton.metrics import Metrics

log = structlog.get_logger("baton.monitor")

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]
Observed = Callable[[OfficeObserved], None]

_NAMED_DEVICES = 4  # devices named in an office's detail before "and N more"


class HealthProbe(Protocol):
    """A per-device probe that keeps state between calls (a NETCONF session)."""

    async def probe(self) -> Observation: ...

    async def close(self) -> None: ...


ProbeFactory = Callable[[Device], HealthProbe]
# Does anything answer at the device's NETCONF port? None if so, else the reason it does not.
NetconfGate = Callable[[Device], Awaitable[str | None]]


async def tcp_gate(device: Device, source_address: str | None = None) -> str | None:
    """A TCP connect to the device's NETCONF port on the event loop, within
    its `netconf.timeout_s`, from `source_address` when given. None when the connect succeeded
    (closed at once: the probe makes its own session) or the failure is not the device's silence
    (a name that does not resolve, no file descriptor left: the probe says why); else the reason,
    worded as the NETCONF adapter words a failed connect ("TCP connect to 10.0.0.1:830 timed out
    after 10 s", "...: connection refused")."""
    settings = device.netconf
    host = f"[{device.address}]" if ":" in device.address else device.address
    endpoint = f"{host}:{settings.port}"
    local = (source_address, 0) if source_address else None
    try:
        async with asyncio.timeout(settings.timeout_s):
            _, writer = await asyncio.open_connection(device.address, settings.port, local_addr=local)
    except TimeoutError:
        return f"TCP connect to {endpoint} timed out after {settings.timeout_s:g} s"
    except OSError as exc:
        if not is_no_answer(exc):  # our own trouble (EMFILE...) or DNS: the probe will tell
            return None
        # asyncio words it "Connect call failed (...)": say what the kernel said, as the adapter
        reason = os.strerror(exc.errno) if exc.errno else str(exc)
        return f"TCP connect to {endpoint}: {reason.lower()}"
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return None


# --- pure pieces ---------------------------------------------------------------------------


def first_round_at(now: float, interval_s: float) -> float:
    """The first round after `now`: the next point of the interval grid (where device phases start)."""
    return now - now % interval_s + interval_s


def next_round_at(previous_due: float, now: float, interval_s: float) -> tuple[float, int]:
    """The round after the one due at `previous_due` (which ran at `now`), and how many rounds were
    missed because the loop ran late by whole intervals. Rounds stay on the grid; missed ones are
    skipped, never fired back to back."""
    missed = max(0, math.floor((now - previous_due) / interval_s))
    return previous_due + (missed + 1) * interval_s, missed


@dataclass(frozen=True, slots=True)
class RepollPlan:
    """What a trap makes the monitor do: re-poll `devices`, `passes` times."""

    key: str  # "office:<id>" or "device:<id>": traps with the same key coalesce
    devices: tuple[str, ...]
    offices: tuple[str, ...]  # judged again (and emitted if changed) after each pass
    passes: int
    why: str  # "powerFail from busan-jung-core1 (office-level alarm)"


def children_of(inventory: Inventory) -> dict[str, tuple[str, ...]]:
    """Device → the devices whose parent it is, sorted (the path-dependency tree, once)."""
    children: dict[str, list[str]] = {}
    for device in inventory.devices.values():
        if device.parent is not None:
            children.setdefault(device.parent, []).append(device.id)
    return {parent: tuple(sorted(kids)) for parent, kids in children.items()}


def descendants(
    device_id: str, inventory: Inventory, children: Mapping[str, Sequence[str]] | None = None
) -> tuple[str, ...]:
    """Every device whose parent chain goes through `device_id`, nearest first. `children`
    (from `children_of`) saves walking the inventory on every call."""
    if children is None:
        children = children_of(inventory)
    found: list[str] = []
    seen = {device_id}
    frontier = [device_id]
    while frontier:
        nxt: list[str] = []
        for parent in frontier:
            for child in children.get(parent, ()):
                if child not in seen:
                    seen.add(child)
                    found.append(child)
                    nxt.append(child)
        frontier = nxt
    return tuple(found)


def repoll_plan(
    event: TrapEvent,
    inventory: Inventory,
    policy: Policy,
    children: Mapping[str, Sequence[str]] | None = None,
) -> RepollPlan | None:
    """The re-polls a trap calls for; None when it names no device of the inventory.

    Office-level alarms: every device of the office, `failures_to_down` passes (enough for a
    device that really stopped answering to be DOWN, never fewer real probes than that). Other
    traps: the device and everything behind it, one pass. `children`: see `descendants`.
    """
    device = inventory.devices.get(event.device_id or "")
    if device is None:
        return None
    if event.office_level:
        devices = tuple(sorted(d.id for d in inventory.devices_of(device.office)))
        return RepollPlan(
            key=f"office:{device.office}",
            devices=devices,
            offices=(device.office,),
            passes=policy.failures_to_down,
            why=f"{event.kind} from {device.id} (office-level alarm)",
        )
    devices = (device.id, *descendants(device.id, inventory, children))
    offices = tuple(sorted({inventory.devices[d].office for d in devices}))
    return RepollPlan(
        key=f"device:{device.id}",
        devices=devices,
        offices=offices,
        passes=1,
        why=f"{event.kind} from {device.id}",
    )


def describe_office(
    judgement: OfficeJudgement,
    devices: Iterable[Device],
    device_judgements: Mapping[str, DeviceJudgement],
) -> str:
    """The office detail, naming the considered devices that are DOWN or UNREACHABLE when the
    office is DOWN or UNREACHABLE ("2/2 critical devices down: a-core1, a-agg1")."""
    if judgement.verdict not in (OfficeVerdict.DOWN, OfficeVerdict.UNREACHABLE):
        return judgement.detail
    devices = tuple(devices)
    considered = [d for d in devices if d.critical] or list(devices)
    named: list[str] = []
    for device in considered:
        dj = device_judgements.get(device.id)
        if dj is None:
            continue
        if dj.verdict is DeviceVerdict.DOWN:
            named.append(device.id)
        elif dj.verdict is DeviceVerdict.UNREACHABLE:
            named.append(f"{device.id} (unreachable)")
    if not named:
        return judgement.detail
    shown = ", ".join(named[:_NAMED_DEVICES])
    if len(named) > _NAMED_DEVICES:
        shown += f" and {len(named) - _NAMED_DEVICES} more"
    return f"{judgement.detail}: {shown}"


def netconf_failure_class(reason: str) -> str:
    """A NETCONF probe's failure reason as a bounded metric label (see metrics.PROBE_FAILURE_REASONS)."""
    text = reason.lower()
    if "within" in text or "timeout" in text or "timed out" in text:
        return "timeout"
    if "credential" in text or "no netconf username" in text or "no netconf password" in text:
        return "credential"
    if "authentication" in text or "host key" in text:
        return "auth"
    return "error"


def expected_protocols(device: Device) -> frozenset[ProbeProtocol]:
    """The protocols the monitor probes a device over."""
    found = set()
    if device.snmp is not None:
        found.add(ProbeProtocol.SNMP)
    if device.netconf.enabled:
        found.add(ProbeProtocol.NETCONF)
    return frozenset(found)


def trap_sources(inventory: Inventory) -> dict[str, TrapSource]:
    """Management address → device, for the trap receiver (traps come from that address)."""
    return {d.address: TrapSource(d.id, d.office) for d in inventory.devices.values()}


def trap_receiver_config(
    settings: TrapSettings, vendor_traps: Mapping[str, VendorTrap] | None = None
) -> TrapReceiverConfig | None:
    """baton.yaml's `traps:` as the receiver's settings; None when traps are disabled. v3 users
    learn their senders' engine ids (the trap must still authenticate with the user's keys)."""
    if not settings.enabled:
        return None
    return TrapReceiverConfig(
        host=settings.listen,
        port=settings.port,
        communities=settings.communities,
        v3_users=tuple(
            V3TrapUser(
                user=u.user,
                auth_protocol=cast(Any, u.auth_protocol),
                auth_key=u.auth_key,
                priv_protocol=cast(Any, u.priv_protocol),
                priv_key=u.priv_key,
            )
            for u in settings.v3_users
        ),
        vendor_traps=MappingProxyType(
            {
                **{oid: VendorTrap(kind, office_level) for oid, kind, office_level in settings.vendor_traps},
                **(vendor_traps or {}),
            }
        ),
        learn_engine_ids=bool(settings.v3_users),
    )


def _office_inventories(inventory: Inventory) -> dict[str, Inventory]:
    """One small inventory per office, so judging an office costs its own devices, not all."""
    by_office: dict[str, dict[str, Device]] = {office: {} for office in inventory.offices}
    for device in inventory.devices.values():
        by_office.setdefault(device.office, {})[device.id] = device
    return {
        office: Inventory(
            offices=MappingProxyType(
                {office: inventory.offices[office]} if office in inventory.offices else {}
            ),
            devices=MappingProxyType(devices),
        )
        for office, devices in by_office.items()
    }


# --- the monitor ---------------------------------------------------------------------------


class Monitor:
    """Probes an inventory's devices, judges its offices once per poll round, reacts to traps.

    `on_observed` receives every `OfficeObserved` (from the monitor's event loop; it must not
    block). Adapters may be injected (tests, a shared poller); otherwise the monitor builds them:
    an `SnmpPoller` (closed on stop), a `NetconfProbe` per NETCONF-enabled device, and a
    `TrapReceiver` when `traps` is given. An injected receiver must deliver to its `events`
    queue (the default), which the monitor drains. The probes it builds (SNMP polls, NETCONF
    sessions, the TCP gate) leave from `source_address` when given (`vantage.source_address`).

    Dark devices. A device whose last NETCONF probe did not succeed (or that was never probed)
    first passes `netconf_gate` (default `tcp_gate` with the monitor's own probes, none with an
    injected `netconf_probe` unless given): a TCP connect on the event loop. Only when something
    answers does the real probe (SSH, NETCONF) run; when nothing does, the gate's reason is the
    failed observation. So a powered-off device, whose connect times out, holds a socket and a
    timer, and live devices' probes never wait behind dark ones (bench/dark.py). A device with
    a session open (its last probe succeeded) is probed directly.
    """

    def __init__(
        self,
        inventory: Inventory,
        policy: Policy,
        *,
        resolve: SecretResolver,
        metrics: Metrics,
        on_observed: Observed,
        traps: TrapReceiverConfig | None = None,
        trap_receiver: TrapReceiver | None = None,
        poller: SnmpPoller | None = None,
        netconf_probe: ProbeFactory | None = None,
        netconf_gate: NetconfGate | None = None,
        trap_repoll_spacing_s: float = 1.0,
        source_address: str | None = None,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        if trap_repoll_spacing_s < 0:
            raise ValueError("trap_repoll_spacing_s must be >= 0")
        self._inventory = inventory
        self._policy = policy
        self._resolve = resolve
        self.metrics = metrics
        self._on_observed = on_observed
        self._source_address = source_address
        self._own_poller = poller is None
        self._poller = (
            poller
            if poller is not None
            else SnmpPoller(resolve, metrics=metrics, source_address=source_address)
        )
        self._netconf_factory: ProbeFactory = netconf_probe or self._default_netconf_probe
        self._netconf_gate = (
            netconf_gate
            if netconf_gate is not None or netconf_probe
            else functools.partial(tcp_gate, source_address=source_address)
        )
        self._netconf_ok: dict[str, bool] = {}  # device -> did its last NETCONF probe succeed
        self._receiver = trap_receiver
        if self._receiver is None and traps is not None:
            self._receiver = TrapReceiver(traps, resolve, trap_sources(inventory), metrics=metrics)
        self._spacing_s = trap_repoll_spacing_s
        self._clock = clock
        self._sleep = sleep

        self._health: dict[str, DeviceHealth] = {}
        self._device_judgements: Mapping[str, DeviceJudgement] = MappingProxyType({})
        self._office_judgements: dict[str, OfficeJudgement] = {}
        self._emitted: dict[str, OfficeVerdict] = {}
        self._by_office = _office_inventories(inventory)
        self._children = children_of(inventory)
        self._unprobed = {d.id for d in inventory.devices.values() if expected_protocols(d)}

        self._scheduler: PollScheduler | None = None
        self._netconf: dict[str, HealthProbe] = {}
        self._netconf_locks: dict[str, asyncio.Lock] = {}
        self._netconf_loops: dict[str, asyncio.Task[None]] = {}
        self._round_task: asyncio.Task[None] | None = None
        self._trap_task: asyncio.Task[None] | None = None
        self._repolls: dict[str, asyncio.Task[None]] = {}
        self._repoll_again: set[str] = set()
        self._started = False

        self.first_round_done = asyncio.Event()
        self.rounds = 0  # rounds judged so far
        self.trap_passes = 0  # trap-triggered re-poll passes completed so far
        self._judge()

    # --- read views ------------------------------------------------------------------------

    @property
    def inventory(self) -> Inventory:
        return self._inventory

    @property
    def policy(self) -> Policy:
        return self._policy

    @property
    def trap_port(self) -> int | None:
        """The UDP port the trap receiver is bound to (None without a receiver)."""
        return self._receiver.port if self._receiver is not None else None

    def office_judgements(self) -> dict[str, OfficeJudgement]:
        """The latest judgement of every office (its detail names the failed devices)."""
        return dict(self._office_judgements)

    def device_views(self, office: str) -> list[dict[str, Any]]:
        """Every device of `office` with its verdict, reason and last result per protocol.
        Raises KeyError for an office that is not in the inventory."""
        if office not in self._inventory.offices:
            raise KeyError(office)
        views = []
        for device in sorted(self._inventory.devices_of(office), key=lambda d: d.id):
            health = self._health.get(device.id, DeviceHealth())
            judgement = self._device_judgements.get(device.id)
            probes = {}
            for protocol in sorted(expected_protocols(device)):
                probe = health.probes.get(protocol)
                probes[str(protocol)] = {
                    "ok": None if probe is None or probe.last_at is None else probe.consecutive_failures == 0,
                    "last_at": None if probe is None else probe.last_at,
                    "last_ok_at": None if probe is None else probe.last_ok_at,
                    "consecutive_failures": 0 if probe is None else probe.consecutive_failures,
                    "reason": "" if probe is None else probe.last_reason,
                }
            seen = [p.last_ok_at for p in health.probes.values() if p.last_ok_at is not None]
            views.append(
                {
                    "id": device.id,
                    "office": device.office,
                    "role": device.role,
                    "critical": device.critical,
                    "address": device.address,
                    "parent": device.parent,
                    "verdict": str(judgement.verdict if judgement else DeviceVerdict.UNKNOWN),
                    "reason": judgement.reason if judgement else "never probed",
                    "last_seen": max(seen) if seen else None,
                    "probes": probes,
                }
            )
        return views

    # --- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the trap receiver, the probes and the rounds. Raises TrapReceiverError (with
        nothing left running) when the trap port cannot be bound or a credential is missing."""
        if self._started:
            return
        if self._receiver is not None:
            self._receiver.set_sources(trap_sources(self._inventory))
            await self._receiver.start()
        self._started = True
        loop = asyncio.get_running_loop()
        self._start_scheduler()
        for device in self._inventory.devices.values():
            if device.netconf.enabled:
                self._start_netconf(device)
        self._round_task = loop.create_task(self._round_loop(), name="monitor-rounds")
        if self._receiver is not None:
            self._trap_task = loop.create_task(self._trap_loop(self._receiver), name="monitor-traps")
        self._check_first_round()
        log.info(
            "monitor.started",
            offices=len(self._inventory.offices),
            devices=len(self._inventory.devices),
            netconf_devices=len(self._netconf),
            poll_interval_s=self._policy.poll_interval_s,
            trap_port=self.trap_port,
        )

    async def stop(self) -> None:
        """Cancel rounds, probes and re-polls, close NETCONF sessions, stop the trap receiver."""
        if not self._started:
            return
        self._started = False
        tasks = [
            t
            for t in (
                self._round_task,
                self._trap_task,
                *self._repolls.values(),
                *self._netconf_loops.values(),
            )
            if t is not None
        ]
        self._round_task = self._trap_task = None
        self._repolls.clear()
        self._repoll_again.clear()
        self._netconf_loops.clear()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._scheduler is not None:
            await self._scheduler.stop()
            self._scheduler = None
        probes = list(self._netconf.values())
        self._netconf.clear()
        await asyncio.gather(*(p.close() for p in probes), return_exceptions=True)
        if self._receiver is not None:
            await self._receiver.stop()
        if self._own_poller:
            self._poller.close()
        log.info("monitor.stopped", rounds=self.rounds, trap_passes=self.trap_passes)

    async def reconfigure(self, inventory: Inventory, policy: Policy) -> None:
        """Switch to a reloaded inventory and policy (SIGHUP). Health of devices that still
        exist is kept (minus protocols no longer probed); devices that left are forgotten;
        changed devices get fresh SNMP targets and NETCONF sessions."""
        old_inventory, old_policy = self._inventory, self._policy
        old_devices, new_devices = old_inventory.devices, inventory.devices
        removed = [d for d in old_devices if d not in new_devices]
        added = [d for d in new_devices if d not in old_devices]
        changed = [d for d in new_devices if d in old_devices and old_devices[d] != new_devices[d]]
        self._inventory, self._policy = inventory, policy
        self._by_office = _office_inventories(inventory)
        self._children = children_of(inventory)

        for device_id in removed:
            self._health.pop(device_id, None)
            self._poller.forget(device_id)
            old = old_devices[device_id]
            self.metrics.forget_device(old.office, device_id)
        for device_id in changed:
            self._poller.forget(device_id)  # settings or secrets changed: rebuild the target
            old, new = old_devices[device_id], new_devices[device_id]
            if old.office != new.office:
                self.metrics.forget_device(old.office, device_id)
            health = self._health.get(device_id)
            if health is not None:
                keep = expected_protocols(new)
                self._health[device_id] = DeviceHealth(
                    probes=MappingProxyType({p: h for p, h in health.probes.items() if p in keep})
                )
        for office in old_inventory.offices:
            if office not in inventory.offices:
                self.metrics.forget_office(office)
                self._emitted.pop(office, None)
        self._unprobed = {
            d.id
            for d in new_devices.values()
            if expected_protocols(d) - set(self._health.get(d.id, DeviceHealth()).probes)
        }

        if self._started:
            if policy.poll_interval_s != old_policy.poll_interval_s:
                if self._scheduler is not None:
                    await self._scheduler.stop()
                    self._scheduler = None
                self._start_scheduler()
                if self._round_task is not None:
                    self._round_task.cancel()
                    await asyncio.gather(self._round_task, return_exceptions=True)
                self._round_task = asyncio.get_running_loop().create_task(
                    self._round_loop(), name="monitor-rounds"
                )
            elif self._scheduler is not None:
                self._scheduler.set_devices(new_devices.values())
            restart = set(removed) | set(changed)
            if policy.poll_interval_s != old_policy.poll_interval_s:
                restart |= set(self._netconf_loops)
            for device_id in sorted(restart):
                await self._stop_netconf(device_id)
            for device in new_devices.values():
                if device.netconf.enabled and device.id not in self._netconf_loops:
                    self._start_netconf(device)
            if self._receiver is not None:
                self._receiver.set_sources(trap_sources(inventory))
        self._judge()
        self._check_first_round()
        log.info(
            "monitor.reconfigured",
            added=len(added),
            removed=len(removed),
            changed=len(changed),
            poll_interval_s=policy.poll_interval_s,
        )

    # --- rounds ----------------------------------------------------------------------------

    async def _round_loop(self) -> None:
        interval = self._policy.poll_interval_s
        due = first_round_at(self._clock(), interval)
        me = asyncio.current_task()
        while self._started and self._round_task is me:
            delay = due - self._clock()
            if delay > 0:
                await self._sleep(delay)
            self._round()
            due, missed = next_round_at(due, self._clock(), interval)
            if missed:
                log.warning("monitor.rounds_skipped", missed=missed, poll_interval_s=interval)

    def _round(self) -> None:
        self.rounds += 1
        self._judge()
        counts: dict[str, int] = {}
        for office in sorted(self._inventory.offices):
            judgement = self._office_judgements[office]
            counts[judgement.verdict] = counts.get(judgement.verdict, 0) + 1
            self._emit(office, judgement)
        log.debug("monitor.round", round=self.rounds, **{k.lower(): v for k, v in sorted(counts.items())})

    def _emit(self, office: str, judgement: OfficeJudgement) -> None:
        self._emitted[office] = judgement.verdict
        try:
            self._on_observed(OfficeObserved(office, judgement.verdict, judgement.detail))
        except Exception as exc:
            log.error("monitor.deliver_failed", office=office, error=type(exc).__name__, exc_info=True)

    def _judge(self, only: Iterable[str] | None = None) -> None:
        """Judge devices and offices from the current health; metrics and change logs. `only`:
        just those offices (after a trap's re-poll pass; their devices are judged with their
        parent chains, so UNREACHABLE comes out as in a full judgement), not the whole
        inventory: a storm of traps makes thousands of passes, a round judges everything."""
        inventory, policy = self._inventory, self._policy
        previous_devices = self._device_judgements
        if only is None:
            targets: Iterable[str] = inventory.offices
            judgements = judge_devices(inventory, self._health, policy)
            judged: Iterable[str] = judgements
        else:
            targets = sorted({o for o in only if o in inventory.offices})
            scope = self._scope(targets)
            scoped = judge_devices(scope, self._health, policy)
            judged = [d for d in scope.devices if scope.devices[d].office in targets]
            merged = dict(previous_devices)
            merged.update((d, scoped[d]) for d in judged)
            judgements = MappingProxyType(merged)
        self._device_judgements = judgements
        for device_id in judged:
            judgement = judgements[device_id]
            device = inventory.devices[device_id]
            self.metrics.set_device_verdict(device.office, device_id, judgement.verdict)
            before = previous_devices.get(device_id)
            if before is not None and before.verdict is not judgement.verdict:
                log.info(
                    "monitor.device_verdict_changed",
                    device=device_id,
                    office=device.office,
                    verdict=str(judgement.verdict),
                    previous=str(before.verdict),
                    reason=judgement.reason,
                )
        offices: dict[str, OfficeJudgement] = {} if only is None else dict(self._office_judgements)
        for office in targets:
            scope_of_office = self._by_office[office]
            raw = judge_office(office, scope_of_office, judgements, policy)
            verdict = replace(raw, detail=describe_office(raw, scope_of_office.devices.values(), judgements))
            offices[office] = verdict
            self.metrics.set_office_verdict(office, verdict.verdict, verdict.ratio)
            before_office = self._office_judgements.get(office)
            if before_office is not None and before_office.verdict is not verdict.verdict:
                log.info(
                    "monitor.office_verdict_changed",
                    office=office,
                    verdict=str(verdict.verdict),
                    previous=str(before_office.verdict),
                    detail=verdict.detail,
                )
        self._office_judgements = offices

    def _scope(self, offices: Iterable[str]) -> Inventory:
        """The devices of `offices` and every device up their parent chains."""
        devices = self._inventory.devices
        found: dict[str, Device] = {}
        for office in offices:
            for device in self._by_office[office].devices.values():
                while device.id not in found:
                    found[device.id] = device
                    parent = devices.get(device.parent) if device.parent is not None else None
                    if parent is None:
                        break
                    device = parent
        return Inventory(offices=MappingProxyType({}), devices=MappingProxyType(found))

    # --- observations ----------------------------------------------------------------------

    def _fold(self, obs: Observation) -> None:
        device = self._inventory.devices.get(obs.device)
        if device is None or obs.protocol not in expected_protocols(device):
            return  # the device left the inventory (or stopped being probed so) meanwhile
        health = observe(self._health.get(obs.device, DeviceHealth()), obs)
        self._health[obs.device] = health
        answering = any(p.last_at is not None and p.consecutive_failures == 0 for p in health.probes.values())
        self.metrics.set_device_up(device.office, device.id, answering)
        if obs.device in self._unprobed and expected_protocols(device) <= set(health.probes):
            self._unprobed.discard(obs.device)
            self._check_first_round()

    def _check_first_round(self) -> None:
        if self._started and not self._unprobed and not self.first_round_done.is_set():
            self.first_round_done.set()
            log.info("monitor.first_round_done", devices=len(self._inventory.devices), round=self.rounds)

    def _on_snmp_reading(self, reading: SnmpReading) -> None:
        self._fold(reading.to_observation())

    # --- SNMP ------------------------------------------------------------------------------

    def _start_scheduler(self) -> None:
        self._scheduler = PollScheduler(
            self._poller,
            self._inventory.devices.values(),
            self._policy.poll_interval_s,
            deliver=self._on_snmp_reading,
            clock=self._clock,
            sleep=self._sleep,
        )
        self._scheduler.start()

    async def _poll_snmp(self, device: Device) -> None:
        reading = await self._poller.poll(device)
        self._fold(reading.to_observation())

    # --- NETCONF ---------------------------------------------------------------------------

    def _default_netconf_probe(self, device: Device) -> HealthProbe:
        return NetconfProbe(
            device,
            resolve=self._resolve,
            source_address=self._source_address,
        )

    def _start_netconf(self, device: Device) -> None:
        self._netconf[device.id] = self._netconf_factory(device)
        self._netconf_locks.setdefault(device.id, asyncio.Lock())
        self._netconf_loops[device.id] = asyncio.get_running_loop().create_task(
            self._netconf_loop(device.id), name=f"monitor-netconf-{device.id}"
        )

    async def _stop_netconf(self, device_id: str) -> None:
        task = self._netconf_loops.pop(device_id, None)
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        probe = self._netconf.pop(device_id, None)
        if probe is not None:
            lock = self._netconf_locks.get(device_id)
            async with lock if lock is not None else contextlib.nullcontext():
                with contextlib.suppress(Exception):
                    await probe.close()
        self._netconf_ok.pop(device_id, None)  # a new probe (or none): its session is gone
        if device_id not in self._inventory.devices:
            self._netconf_locks.pop(device_id, None)

    async def _netconf_loop(self, device_id: str) -> None:
        interval = self._policy.poll_interval_s
        offset = phase_offset(device_id, interval)
        me = asyncio.current_task()
        # Python 3.11's wait_for can lose a cancellation that races a result: so the loop also
        # ends when it is no longer wanted.
        while self._started and self._netconf_loops.get(device_id) is me:
            now = self._clock()
            due = now - now % interval + offset
            if due <= now:
                due += interval  # a probe that ran long skips its missed slots
            await self._sleep(due - now)
            await self._probe_netconf(device_id)

    async def _probe_netconf(self, device_id: str) -> None:
        probe = self._netconf.get(device_id)
        lock = self._netconf_locks.get(device_id)
        if probe is None or lock is None:
            return
        async with lock:  # one session per device: probes of a device never overlap
            started = time.perf_counter()
            obs = await self._gated(device_id)
            if obs is None:
                obs = await probe.probe()
            self._netconf_ok[device_id] = obs.ok
            duration = time.perf_counter() - started
        self.metrics.observe_probe(
            ProbeProtocol.NETCONF.value, duration, None if obs.ok else netconf_failure_class(obs.reason)
        )
        self._fold(obs)

    async def _gated(self, device_id: str) -> Observation | None:
        """The failed observation when the gate says nothing answers; None: probe for real."""
        device = self._inventory.devices.get(device_id)
        if self._netconf_gate is None or device is None or self._netconf_ok.get(device_id, False):
            return None
        at = time.time()
        why = await self._netconf_gate(device)
        if why is None:
            return None
        return Observation(device=device_id, protocol=ProbeProtocol.NETCONF, ok=False, at=at, reason=why)

    # --- traps -----------------------------------------------------------------------------

    async def _trap_loop(self, receiver: TrapReceiver) -> None:
        # The receiver's queue is bounded and coalescing (office-level alarms first); taking
        # everything waiting at each wake-up keeps it short in a storm.
        events = receiver.events
        while self._started:
            self.handle_trap(await events.get())
            while self._started and not events.empty():
                self.handle_trap(events.get_nowait())

    def handle_trap(self, event: TrapEvent) -> None:
        """React to a trap: start (or coalesce into a running) re-poll of the devices it concerns."""
        plan = repoll_plan(event, self._inventory, self._policy, self._children)
        if plan is None:
            log.info(
                "monitor.trap_ignored", kind=event.kind, source=event.source_address, device=event.device_id
            )
            return
        running = self._repolls.get(plan.key)
        if running is not None and not running.done():
            self._repoll_again.add(plan.key)
            log.debug("monitor.trap_coalesced", key=plan.key, kind=event.kind)
            return
        log.info(
            "monitor.trap_repoll",
            kind=event.kind,
            device=event.device_id,
            office=event.office_id,
            devices=len(plan.devices),
            passes=plan.passes,
            why=plan.why,
        )
        self._repolls[plan.key] = asyncio.get_running_loop().create_task(
            self._run_repoll(plan), name=f"monitor-repoll-{plan.key}"
        )

    async def _run_repoll(self, plan: RepollPlan) -> None:
        me = asyncio.current_task()
        try:
            while True:
                for n in range(plan.passes):
                    if n:
                        await self._sleep(self._spacing_s)
                    if self._repolls.get(plan.key) is not me:
                        return  # stopped (see _netconf_loop on lost cancellations)
                    await self._probe_devices(plan.devices)
                    self.trap_passes += 1
                    self._judge_after_trap(plan, n + 1)
                if plan.key not in self._repoll_again:
                    return
                self._repoll_again.discard(plan.key)
        finally:
            if self._repolls.get(plan.key) is asyncio.current_task():
                del self._repolls[plan.key]

    async def _probe_devices(self, device_ids: Iterable[str]) -> None:
        jobs: list[Awaitable[None]] = []
        for device_id in device_ids:
            device = self._inventory.devices.get(device_id)
            if device is None:
                continue
            if device.snmp is not None:
                jobs.append(self._poll_snmp(device))
            if device.netconf.enabled and device_id in self._netconf:
                jobs.append(self._probe_netconf(device_id))
        for result in await asyncio.gather(*jobs, return_exceptions=True):
            if isinstance(result, Exception):
                log.error("monitor.probe_crashed", error=type(result).__name__, exc_info=result)

    def _judge_after_trap(self, plan: RepollPlan, n: int) -> None:
        self._judge(plan.offices)
        for office in plan.offices:
            judgement = self._office_judgements.get(office)
            if judgement is not None and judgement.verdict is not self._emitted.get(office):
                log.info(
                    "monitor.trap_verdict",
                    office=office,
                    verdict=str(judgement.verdict),
                    detail=judgement.detail,
                    repoll_pass=n,
                    why=plan.why,
                )
                self._emit(office, judgement)
