"""Baton's own Prometheus registry and the metrics the monitoring path updates.

Everything lives in one `Metrics` object holding its own `CollectorRegistry` (never the
process-global one), so tests and several daemons in one process never share series.
Label values are bounded: protocols and verdicts are enums, failure reasons are the classes in
`PROBE_FAILURE_REASONS`, trap drop reasons are `TRAP_DROP_REASONS`; device and office come from
the inventory, and `forget_device`/`forget_office` remove their series when a reload drops them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Final

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from baton.core.actions import Alert
from baton.core.model import DeviceVerdict, OfficeVerdict, Phase, RunKind, State

# The protocols the monitor probes (ssh is used by playbooks, not probed).
PROBED_PROTOCOLS: Final = ("snmp", "netconf")
# Results of a finished run, as the service reports them.
RUN_RESULTS: Final = ("ok", "failed")
# Failure classes a probe may report; anything else is counted as "error".
PROBE_FAILURE_REASONS: Final = ("timeout", "auth", "error", "garbage", "credential", "config")
TRAP_DROP_REASONS: Final = (
    "unknown_source",
    "bad_community",
    "auth",  # v3: unknown user, wrong digest, decryption error, unknown engine id, time window
    "undecodable",
    "other",
    "queue_full",  # a trap storm: this many devices already had a trap waiting for the monitor
    "receive_buffer",  # a trap storm: the kernel dropped datagrams, the socket's buffer was full
)
# Drop reasons that mean a storm outran the receiver (alerted), not a misconfigured sender.
TRAP_STORM_DROP_REASONS: Final = ("queue_full", "receive_buffer")
# Probe latencies on a LAN are milliseconds; timeouts are seconds.
_PROBE_BUCKETS: Final = (0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class Metrics:
    """The registry and the monitoring metrics. Other parts of Baton add theirs to `registry`."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.probe_duration_seconds = Histogram(
            "baton_probe_duration_seconds",
            "Duration of one probe of one device, by protocol and result (ok, fail).",
            ["protocol", "result"],
            buckets=_PROBE_BUCKETS,
            registry=r,
        )
        self.probe_failures_total = Counter(
            "baton_probe_failures_total",
            "Failed probes, by protocol and reason class (timeout, auth, error, garbage, credential...).",
            ["protocol", "reason"],
            registry=r,
        )
        self.device_up = Gauge(
            "baton_device_up",
            "1 if the device's last probe succeeded, else 0.",
            ["office", "device"],
            registry=r,
        )
        self.device_verdict = Gauge(
            "baton_device_verdict",
            "The device's current verdict: one series per device, value 1, verdict in the label.",
            ["office", "device", "verdict"],
            registry=r,
        )
        self.traps_received_total = Counter(
            "baton_traps_received_total", "Accepted SNMP notifications, by kind.", ["kind"], registry=r
        )
        self.traps_dropped_total = Counter(
            "baton_traps_dropped_total",
            "Dropped SNMP datagrams on the trap port, by reason.",
            ["reason"],
            registry=r,
        )
        self.traps_coalesced_total = Counter(
            "baton_traps_coalesced_total",
            "Traps merged into one already waiting for the same device or office (same re-poll).",
            registry=r,
        )
        self.trap_queue_depth = Gauge(
            "baton_trap_queue_depth",
            "Traps (one per device or office) waiting for the monitor.",
            registry=r,
        )
        self.trap_receive_buffer_bytes = Gauge(
            "baton_trap_receive_buffer_bytes",
            "Receive buffer of the trap socket, as the kernel granted it (SO_RCVBUF).",
            registry=r,
        )
        self.office_verdict = Gauge(
            "baton_office_verdict",
            "The office's current verdict: one series per office, value 1, verdict in the label.",
            ["office", "verdict"],
            registry=r,
        )
        self.office_health_ratio = Gauge(
            "baton_office_health_ratio",
            "Share of the office's considered (critical) devices that are UP, 0..1.",
            ["office"],
            registry=r,
        )
        self._add_decision_metrics(r)
        self._device_verdicts: dict[tuple[str, str], DeviceVerdict] = {}
        self._office_verdicts: dict[str, OfficeVerdict] = {}
        # Pre-create the bounded series so rate() sees a 0 before the first failure (a series born
        # at 1 hides its first event from rate() and increase(): dashboards would miss it).
        for reason in TRAP_DROP_REASONS:
            self.traps_dropped_total.labels(reason=reason)
        for protocol in PROBED_PROTOCOLS:
            for result in ("ok", "fail"):
                self.probe_duration_seconds.labels(protocol=protocol, result=result)
            for reason in PROBE_FAILURE_REASONS:
                self.probe_failures_total.labels(protocol=protocol, reason=reason)

    def observe_probe(self, protocol: str, duration_s: float, failure: str | None) -> None:
        """One probe finished; `failure` is None on success, else a reason class."""
        result = "ok" if failure is None else "fail"
        self.probe_duration_seconds.labels(protocol=protocol, result=result).observe(duration_s)
        if failure is not None:
            reason = failure if failure in PROBE_FAILURE_REASONS else "error"
            self.probe_failures_total.labels(protocol=protocol, reason=reason).inc()

    def set_device_up(self, office: str, device: str, up: bool) -> None:
        self.device_up.labels(office=office, device=device).set(1 if up else 0)

    def set_device_verdict(self, office: str, device: str, verdict: DeviceVerdict) -> None:
        previous = self._device_verdicts.get((office, device))
        if previous is not None and previous != verdict:
            self.device_verdict.remove(office, device, previous.value)
        self._device_verdicts[(office, device)] = verdict
        self.device_verdict.labels(office=office, device=device, verdict=verdict.value).set(1)

    def set_office_verdict(self, office: str, verdict: OfficeVerdict, health_ratio: float) -> None:
        previous = self._office_verdicts.get(office)
        if previous is not None and previous != verdict:
            self.office_verdict.remove(office, previous.value)
        self._office_verdicts[office] = verdict
        self.office_verdict.labels(office=office, verdict=verdict.value).set(1)
        self.office_health_ratio.labels(office=office).set(health_ratio)

    def count_trap(self, kind: str) -> None:
        self.traps_received_total.labels(kind=kind).inc()

    def drop_trap(self, reason: str, count: int = 1) -> None:
        self.traps_dropped_total.labels(reason=reason if reason in TRAP_DROP_REASONS else "other").inc(count)

    def coalesce_trap(self) -> None:
        self.traps_coalesced_total.inc()

    def watch_trap_queue(self, depth: Callable[[], float]) -> None:
        """`baton_trap_queue_depth` reads `depth()` at every scrape."""
        self.trap_queue_depth.set_function(depth)

    def set_trap_receive_buffer(self, size_bytes: int) -> None:
        self.trap_receive_buffer_bytes.set(size_bytes)

    def forget_device(self, office: str, device: str) -> None:
        """Remove a device's series (it left the inventory on reload)."""
        previous = self._device_verdicts.pop((office, device), None)
        if previous is not None:
            self.device_verdict.remove(office, device, previous.value)
        with contextlib.suppress(KeyError):
            self.device_up.remove(office, device)

    def forget_office(self, office: str) -> None:
        previous = self._office_verdicts.pop(office, None)
        if previous is not None:
            self.office_verdict.remove(office, previous.value)
        with contextlib.suppress(KeyError):
            self.office_health_ratio.remove(office)

    def _add_decision_metrics(self, r: CollectorRegistry) -> None:
        self.office_phase = Gauge(
            "baton_office_phase",
            "1 for the office's current phase, 0 for the others (every phase has a series).",
            ["office", "phase"],
            registry=r,
        )
        self.alert_active = Gauge(
            "baton_alert_active",
            "1 while Baton's core holds the alert raised for the office (office is empty for global ones).",
            ["alert", "office"],
            registry=r,
        )
        self.storm_guard_engaged = Gauge(
            "baton_storm_guard_engaged", "1 while the storm guard freezes automation.", registry=r
        )
        self.paused = Gauge("baton_paused", "1 while an operator has paused automation.", registry=r)
        self.shadow = Gauge("baton_shadow", "1 in shadow mode (decide and report, act not).", registry=r)
        self.leader = Gauge("baton_leader", "1 while this vantage holds the lease.", registry=r)
        self.leader_epoch = Gauge(
            "baton_leader_epoch", "The fencing epoch this vantage last led with (0: never led).", registry=r
        )
        self.lease_remaining = Gauge(
            "baton_lease_remaining_seconds",
            "Until this vantage must stop acting unless a keepalive is answered; 0 when not leading.",
            registry=r,
        )
        self.vantages_present = Gauge(
            "baton_vantages_present",
            "Vantages with a live presence key in etcd (this one included).",
            registry=r,
        )
        self.etcd_errors_total = Counter(
            "baton_etcd_errors_total", "etcd requests of the verdict exchange that failed.", registry=r
        )
        self.loop_last_success = Gauge(
            "baton_loop_last_success_timestamp_seconds",
            "When the decision loop last completed an iteration (Unix time).",
            registry=r,
        )
        self.runs_total = Counter(
            "baton_runs_total", "Finished playbook runs, by kind and result.", ["kind", "result"], registry=r
        )
        self.runs_in_progress = Gauge("baton_runs_in_progress", "Playbook runs in progress.", registry=r)
        self.run_duration_seconds = Histogram(
            "baton_run_duration_seconds",
            "Wall time of a playbook run, by kind and result.",
            ["kind", "result"],
            buckets=(1, 2, 5, 10, 20, 40, 60, 120, 300, 600),
            registry=r,
        )
        self.step_duration_seconds = Histogram(
            "baton_step_duration_seconds",
            "Wall time of one playbook step on one device, by step kind and result.",
            ["kind", "result"],
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
            registry=r,
        )
        self.handover_seconds = Histogram(
            "baton_handover_seconds",
            "From closure (detected or declared) to the handover confirmed on every device.",
            buckets=(5, 10, 20, 30, 45, 60, 90, 120, 180, 300, 600),
            registry=r,
        )
        self.confirm_deadline = Gauge(
            "baton_confirm_deadline_timestamp_seconds",
            "When the office's unconfirmed confirmed commit reverts (Unix time); 0 when none is pending.",
            ["office"],
            registry=r,
        )
        self.approvals_pending = Gauge(
            "baton_approvals_pending",
            "1 while a run of the office waits for approvals (kind: handover, handback), else 0.",
            ["office", "kind"],
            registry=r,
        )
        self.approval_requested = Gauge(
            "baton_approval_requested_timestamp_seconds",
            "When the run waiting for approvals was asked for (Unix time; its age is time() minus "
            "this); 0 when none waits.",
            ["office", "kind"],
            registry=r,
        )
        self.approval_expires = Gauge(
            "baton_approval_expires_timestamp_seconds",
            "When the request waiting for approvals ends unless approved (Unix time); 0 when none waits.",
            ["office", "kind"],
            registry=r,
        )
        self.journal_errors_total = Counter(
            "baton_journal_errors_total", "Journal writes that failed (nothing was acted on).", registry=r
        )
        # A handover happens rarely: its first run must count in rate() and increase() too.
        for kind in RunKind:
            for result in RUN_RESULTS:
                self.runs_total.labels(kind=kind.value, result=result)
                self.run_duration_seconds.labels(kind=kind.value, result=result)

    def update_state(self, state: State, last_loop_at: float | None) -> None:
        """Refresh the gauges that mirror the core's state (called on every scrape)."""
        for office in state.offices.values():
            for phase in Phase:
                self.office_phase.labels(office=office.office, phase=phase.value).set(
                    1 if office.phase is phase else 0
                )
            for alert in Alert:
                if alert is Alert.STORM_GUARD:
                    continue
                self.alert_active.labels(alert=alert.value, office=office.office).set(
                    1 if alert.value in office.alerts else 0
                )
            for kind in RunKind:
                request = office.approval if office.approval and office.approval.kind is kind else None
                labels = {"office": office.office, "kind": kind.value}
                self.approvals_pending.labels(**labels).set(1 if request else 0)
                self.approval_requested.labels(**labels).set(request.at if request else 0)
                self.approval_expires.labels(**labels).set(request.expires if request else 0)
        self.alert_active.labels(alert=Alert.STORM_GUARD.value, office="").set(1 if state.storm else 0)
        self.storm_guard_engaged.set(1 if state.storm else 0)
        self.paused.set(1 if state.paused else 0)
        self.shadow.set(1 if state.shadow else 0)
        self.leader.set(1 if state.leader else 0)
        if last_loop_at is not None:
            self.loop_last_success.set(last_loop_at)

    def forget_office_state(self, office: str) -> None:
        """Remove the decision series of an office the inventory dropped."""
        for phase in Phase:
            with contextlib.suppress(KeyError):
                self.office_phase.remove(office, phase.value)
        for alert in Alert:
            with contextlib.suppress(KeyError):
                self.alert_active.remove(alert.value, office)
        with contextlib.suppress(KeyError):
            self.confirm_deadline.remove(office)
        for kind in RunKind:
            for gauge in (self.approvals_pending, self.approval_requested, self.approval_expires):
                with contextlib.suppress(KeyError):
                    gauge.remove(office, kind.value)

    def render(self) -> bytes:
        """The registry in the Prometheus text exposition format."""
        return generate_latest(self.registry)
