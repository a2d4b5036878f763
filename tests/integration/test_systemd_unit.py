"""The shipped systemd unit: valid for systemd, and a hardened sandbox."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.peers.util import skip_or_fail

UNIT = Path(__file__).parents[2] / "systemd" / "baton.service"


@pytest.fixture
def unit_copy(tmp_path: Path) -> Path:
    """The unit with ExecStart pointing at this checkout's `baton` (verify needs an executable)."""
    if shutil.which("systemd-analyze") is None:
        skip_or_fail("systemd-analyze not installed (apt-get install systemd)")
    baton = Path(sys.executable).with_name("baton")
    text = UNIT.read_text().replace("/opt/baton/venv/bin/baton", str(baton))
    copy = tmp_path / "baton.service"
    copy.write_text(text)
    return copy


def test_unit_passes_systemd_analyze_verify_without_warnings(unit_copy: Path) -> None:
    """systemd-analyze verify accepts the unit and prints nothing (it exits 0 even on warnings)."""
    done = subprocess.run(
        ["systemd-analyze", "verify", str(unit_copy)], capture_output=True, text=True, timeout=60
    )
    assert (0, "") == (done.returncode, done.stderr)


def test_unit_exposure_is_at_most_2(unit_copy: Path) -> None:
    """systemd-analyze security rates the sandbox's exposure at 2.0 or less."""
    done = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", str(unit_copy)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", done.stdout)
    assert match is not None, done.stdout[-500:]
    assert float(match.group(1)) <= 2.0


def test_unit_declares_notify_watchdog_reload_and_credentials() -> None:
    """The unit uses Type=notify with a watchdog, reloads with SIGHUP and loads secrets as credentials."""
    text = UNIT.read_text()
    for line in (
        "Type=notify",
        "NotifyAccess=main",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "Restart=on-failure",
    ):
        assert line in text.splitlines()
    assert re.search(r"^WatchdogSec=\d+s$", text, re.M)
    assert re.search(r"^LoadCredential=api-token:", text, re.M)
    assert "Environment=" not in text  # secrets never travel through the environment
