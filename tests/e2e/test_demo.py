"""`baton demo` as a newcomer runs it: a subprocess that must tell its whole story and exit 0.

This is the demo's guard: the README's first command must keep working as Baton changes.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

DEMO_TIMEOUT_S = 280.0  # about a minute on an idle machine; CI runners are not idle

# What the newcomer must see, in this order.
STORY = (
    "Baton watches 4 offices",
    "Mains power fails at seoul-geumcheon",
    "phase SUSPECT",
    "==> seoul-geumcheon HANDED_OVER to seoul-bangbae",
    "Power returns at seoul-geumcheon",
    "An operator closes seoul-suwon: sealed for disinfection",
    "$ baton handover seoul-suwon --reason",
    "waiting for approval approval-seoul-suwon-",
    "$ baton approve approval-seoul-suwon-",
    "==> seoul-suwon declared closed by",
    "approved by token:duty-manager",
    "HANDED_OVER to seoul-gwacheon",
    "$ baton handback seoul-suwon --reason",
    "==> seoul-suwon OPEN again",
    "What happened",
)


def run_demo(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The demo in its own process group; on a timeout it gets SIGTERM first, so that it stops its
    lab and daemon itself, then SIGKILL."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "baton.cli", "demo", "--dir", str(tmp_path / "demo"), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        out, _ = proc.communicate(timeout=DEMO_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            out, _ = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, _ = proc.communicate()
        pytest.fail(f"baton demo did not finish within {DEMO_TIMEOUT_S:g} s; output:\n{out}")
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, "")


def assert_in_order(text: str, expected: tuple[str, ...]) -> None:
    at = 0
    for line in expected:
        found = text.find(line, at)
        assert found >= 0, f"{line!r} missing after position {at} in the demo's output:\n{text}"
        at = found + len(line)


def test_demo_tells_the_whole_story(tmp_path: Path) -> None:
    """Power failure detected and handed over, a declared closure approved by a second person,
    handed over and back: exit 0."""
    result = run_demo(tmp_path, "--fast")

    assert 0 == result.returncode, result.stdout
    assert_in_order(result.stdout, STORY)
    assert "DEMO FAILED" not in result.stdout
    for name in ("daemon.log", "lab.log", "journal.sqlite3"):
        assert (tmp_path / "demo" / name).exists()
    # Every decision of the story re-derived offline from the inputs it kept: none differs.
    journal = tmp_path / "demo" / "journal.sqlite3"
    replay = subprocess.run(
        [sys.executable, "-m", "baton.cli", "replay", "--journal", str(journal)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert 0 == replay.returncode, replay.stdout[-3000:] + replay.stderr
    summary = replay.stdout.strip().splitlines()[-1]
    assert summary.endswith(", 0 differ"), summary
    assert int(summary.split()[0]) > 20, summary  # the whole story, not an empty journal


def test_demo_stops_what_it_started(tmp_path: Path) -> None:
    """After the demo no process of its lab or daemon is left (their command lines name its dir)."""
    run_demo(tmp_path, "--fast")

    marker = str(tmp_path / "demo")
    left = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if marker in cmdline:
            left.append(f"{proc.name}: {cmdline}")
    assert [] == left
