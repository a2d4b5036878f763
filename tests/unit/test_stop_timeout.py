"""The drain fits the systemd unit's stop timeout: validation and the shipped unit agree."""

from __future__ import annotations

import re
from pathlib import Path

from baton.config import STOP_MARGIN_S, UNIT_TIMEOUT_STOP_S, check_policy, read_config
from baton.core.model import Policy

UNIT = Path(__file__).parents[2] / "systemd" / "baton.service"
SPAN_UNITS = {"": 1.0, "s": 1.0, "sec": 1.0, "min": 60.0, "m": 60.0, "h": 3600.0, "ms": 0.001}


def timespan_s(text: str) -> float:
    """A systemd time span ('90s', '1min 30s', '90') in seconds."""
    pairs = re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]*)", text)
    assert pairs, text
    return sum(float(number) * SPAN_UNITS[unit] for number, unit in pairs)


def unit_setting(key: str) -> str:
    values = [line.split("=", 1)[1] for line in UNIT.read_text().splitlines() if line.startswith(f"{key}=")]
    assert values, f"{UNIT} has no {key}="
    return values[-1]


def test_validation_uses_the_stop_timeout_the_unit_ships() -> None:
    """UNIT_TIMEOUT_STOP_S is systemd/baton.service's TimeoutStopSec."""
    assert UNIT_TIMEOUT_STOP_S == timespan_s(unit_setting("TimeoutStopSec"))


def test_default_drain_fits_the_unit_with_its_margin() -> None:
    """The default policy's drain plus the margin fits TimeoutStopSec: nothing is refused."""
    policy = Policy()
    assert policy.drain_s + STOP_MARGIN_S <= timespan_s(unit_setting("TimeoutStopSec"))
    assert [] == [f for f in check_policy(policy) if "drain_s" in f.fields]


def test_a_drain_longer_than_the_stop_timeout_allows_is_refused_with_the_numbers(tmp_path: Path) -> None:
    """drain_s above TimeoutStopSec minus the margin is an error naming both values and the fix."""
    path = tmp_path / "baton.yaml"
    path.write_text("vantage: {id: v1, office: alpha}\npolicy:\n  drain_s: 75\n")
    problems = read_config(path, check_credentials=False).problems
    assert [
        f"{path}:3: policy: drain_s (75) does not fit the service's stop timeout: TimeoutStopSec"
        " (90) minus a 20 s margin for the rest of the stop is 70 s, so systemd would kill the daemon"
        " while runs drain — lower drain_s to at most 70, or raise TimeoutStopSec in"
        " systemd/baton.service (and UNIT_TIMEOUT_STOP_S with it) to at least 95"
    ] == [str(p) for p in problems]


def test_a_drain_that_just_fits_is_accepted(tmp_path: Path) -> None:
    """drain_s equal to TimeoutStopSec minus the margin is valid."""
    path = tmp_path / "baton.yaml"
    path.write_text(
        f"vantage: {{id: v1, office: alpha}}\npolicy:\n  drain_s: {UNIT_TIMEOUT_STOP_S - STOP_MARGIN_S}\n"
    )
    reading = read_config(path, check_credentials=False)
    assert [] == reading.problems
    assert reading.config is not None
    assert UNIT_TIMEOUT_STOP_S - STOP_MARGIN_S == reading.config.policy.drain_s
