"""Baton's own Prometheus registry and the metrics the monitoring path updates.

Everything lives in one `Metrics` object holding its own `CollectorRegistry` (never the
process-global one), so tests and several daemons in one process never share series.
Label values are bounded: protocols and verdicts are enums, failure reasons are the classes in
`PROBE_FAILURE_REASONS`, trap drop reasons are `TRAP_DROP_REASONS`; device and office come from
the inventory, and `forget_device`/`forget_office` remove their series when a reload drops them.
"""

from __future__ import annotations

import contextlib
from typing import Final

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from baton.core.model import DeviceVerdict, OfficeVerdict

# Failure classes a probe may report; anything else is counted as "error".
PROBE_FAILURE_REASONS: Final = ("timeout", "auth", "error", "garbage", "credential", "config")
TRAP_DROP_REASONS: Final = (
    "unknown_source",
    "bad_community",
    "auth",  # v3: unknown user, wrong digest, decryption error, unknown engine id, time window
    "undecodable",
    "other",
)
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
        self._device_verdicts: dict[tuple[str, str], DeviceVerdict] = {}
        self._office_verdicts: dict[str, OfficeVerdict] = {}
        # Pre-create the bounded series so rate() sees a 0 before the first failure.
        for reason in TRAP_DROP_REASONS:
            self.traps_dropped_total.labels(reason=reason)

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

    def drop_trap(self, reason: str) -> None:
        self.traps_dropped_total.labels(reason=reason if reason in TRAP_DROP_REASONS else "other").inc()

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

    def render(self) -> bytes:
        """The registry in the Prometheus text exposition format."""
        return generate_latest(self.registry)
