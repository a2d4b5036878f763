"""The shipped Prometheus alert rules, checked and unit-tested with the real promtool."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.peers.util import skip_or_fail

RULES_DIR = Path(__file__).parents[2] / "prometheus"


@pytest.fixture
def promtool_bin() -> str:
    found = shutil.which("promtool")
    if found is None:
        skip_or_fail("promtool not installed (apt-get install prometheus)")
    return found


def test_rules_are_valid(promtool_bin: str) -> None:
    """promtool check rules accepts every shipped rule file."""
    done = subprocess.run(
        [promtool_bin, "check", "rules", str(RULES_DIR / "baton-rules.yml")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert 0 == done.returncode, done.stdout + done.stderr


def test_rule_unit_tests_pass(promtool_bin: str) -> None:
    """Every alert fires exactly when its promtool unit test says, with the expected labels and text."""
    done = subprocess.run(
        [promtool_bin, "test", "rules", "baton-rules.test.yml"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=RULES_DIR,
    )
    assert 0 == done.returncode, done.stdout + done.stderr


def test_every_alert_has_a_unit_test() -> None:
    """No alert rule ships without at least one promtool expectation naming it."""
    import yaml

    rules = yaml.safe_load((RULES_DIR / "baton-rules.yml").read_text())
    alerts = {rule["alert"] for group in rules["groups"] for rule in group["rules"] if "alert" in rule}
    tests = yaml.safe_load((RULES_DIR / "baton-rules.test.yml").read_text())
    tested = {case["alertname"] for test in tests["tests"] for case in test.get("alert_rule_test", [])}
    assert set() == alerts - tested
