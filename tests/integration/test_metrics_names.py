"""Baton's /metrics follows Prometheus naming conventions, as `promtool check metrics` judges them."""

from __future__ import annotations

import shutil
import subprocess
from types import MappingProxyType

from baton.core.model import DeviceVerdict, OfficeState, OfficeVerdict, Phase, State
from baton.metrics import Metrics
from tests.peers.util import skip_or_fail


def populated() -> Metrics:
    """Every metric family with at least one sample, as a busy daemon would have them."""
    m = Metrics()
    m.observe_probe("snmp", 0.004, None)
    m.observe_probe("netconf", 2.0, "timeout")
    m.set_device_up("seoul-geumcheon", "gc-core-1", True)
    m.set_device_verdict("seoul-geumcheon", "gc-core-1", DeviceVerdict.UP)
    m.set_office_verdict("seoul-geumcheon", OfficeVerdict.HEALTHY, 1.0)
    m.count_trap("linkDown")
    m.drop_trap("bad_community")
    offices = {
        "seoul-geumcheon": OfficeState(
            "seoul-geumcheon", phase=Phase.HANDED_OVER, alerts=frozenset({"run_failed"})
        ),
        "seoul-bangbae": OfficeState("seoul-bangbae"),
    }
    m.update_state(State(offices=MappingProxyType(offices), storm=True), last_loop_at=1_800_000_000.0)
    m.runs_total.labels(kind="handover", result="ok").inc()
    m.runs_in_progress.set(1)
    m.run_duration_seconds.labels(kind="handover", result="ok").observe(4.2)
    m.step_duration_seconds.labels(kind="netconf.edit", result="ok").observe(0.05)
    m.handover_seconds.observe(38.0)
    m.confirm_deadline.labels(office="seoul-geumcheon").set(1_800_000_300.0)
    m.journal_errors_total.inc()
    return m


def test_metrics_pass_promtool_check_metrics() -> None:
    """promtool finds no naming or type problem in any family Baton exports."""
    promtool = shutil.which("promtool")
    if promtool is None:
        skip_or_fail("promtool not installed (apt-get install prometheus)")
    exposition = populated().render()
    done = subprocess.run(
        [promtool, "check", "metrics"], input=exposition, capture_output=True, timeout=60, check=False
    )
    assert (0, b"") == (done.returncode, done.stdout + done.stderr), (done.stdout + done.stderr).decode()


def test_office_phase_has_one_series_per_phase_and_one_set() -> None:
    """Every phase of an office has a series, exactly one of them at 1: alert rules rely on it."""
    text = populated().render().decode()
    phases = [
        line for line in text.splitlines() if line.startswith('baton_office_phase{office="seoul-geumcheon"')
    ]
    assert len(Phase) == len(phases)
    assert ['baton_office_phase{office="seoul-geumcheon",phase="HANDED_OVER"} 1.0'] == [
        line for line in phases if line.endswith(" 1.0")
    ]
