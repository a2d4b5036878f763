"""Unreachable devices and catch-ups: the pure decisions, and pending devices read from a journal."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from baton.catchup import backoff_s, catchup_run_id, is_catchup_of, pending_devices
from baton.core.model import RunKind
from baton.journal import Journal, StepStatus
from baton.playbook.runner import UNREACHABLE, DeviceOutcome, DeviceStatus, summarize

OFFICE = "gc"


def _device(device: str, status: DeviceStatus) -> DeviceOutcome:
    return DeviceOutcome(device, status, None)


def test_summarize_counts_handed_over_and_pending() -> None:
    """An ok run with unreachable devices says how many were handed over and how many are pending."""
    devices = [_device("a", DeviceStatus.CONFIRMED), *(_device(d, DeviceStatus.UNREACHABLE) for d in "bc")]
    assert "ok: 1 device(s) handed over, 2 unreachable (pending)" == summarize("ok", devices)
    assert "ok: 0 device(s) handed back, 1 unreachable (pending)" == summarize(
        "ok", devices[2:], kind=RunKind.HANDBACK
    )
    assert "ok: 1 device(s) (1 confirmed)" == summarize("ok", devices[:1])


def test_catchup_run_ids_and_backoff() -> None:
    """Catch-up ids name their office; the backoff doubles up to its cap."""
    run_id = catchup_run_id(OFFICE, 1700000000.5)
    assert "catchup-gc-1700000000500" == run_id
    assert is_catchup_of(run_id, OFFICE)
    assert not is_catchup_of(run_id, "g")
    assert not is_catchup_of("run-1", OFFICE)
    assert [0.0, 30.0, 60.0, 120.0, 900.0] == [backoff_s(n) for n in (0, 1, 2, 3, 10)]


@pytest.fixture
def journal(tmp_path: Path) -> Iterator[Journal]:
    with Journal.open(tmp_path / "journal.sqlite3") as opened:
        yield opened


def _run(
    journal: Journal, run_id: str, at: float, result: str, rows: list[tuple[str, StepStatus, str]]
) -> None:
    journal.start_run(run_id, OFFICE, RunKind.HANDOVER, "bb", "test", "pytest", at)
    for device, status, detail in rows:
        step = journal.step_intent(run_id, device, 0, "grant", at, "apply", 1)
        facts = {"unreachable": True} if detail.startswith(UNREACHABLE) else {}
        journal.step_result(step, status, detail, at, facts)
    journal.finish_run(run_id, result, "", at + 1)


def test_pending_devices_from_the_journal(journal: Journal) -> None:
    """Pending: skipped unreachable by the handover, minus what later ok catch-ups handed over."""
    skipped = f"{UNREACHABLE}: TCP connect refused"
    _run(
        journal,
        "run-1",
        100.0,
        "ok",
        [
            ("a", StepStatus.DONE, "ok"),
            ("b", StepStatus.SKIPPED, skipped),
            ("c", StepStatus.SKIPPED, skipped),
        ],
    )
    assert frozenset({"b", "c"}) == pending_devices(journal, OFFICE, "run-1")
    _run(journal, catchup_run_id(OFFICE, 200.0), 200.0, "rolled_back", [("b", StepStatus.FAILED, "x")])
    assert frozenset({"b", "c"}) == pending_devices(journal, OFFICE, "run-1")
    _run(
        journal,
        catchup_run_id(OFFICE, 300.0),
        300.0,
        "ok",
        [("b", StepStatus.DONE, "ok"), ("c", StepStatus.SKIPPED, skipped)],
    )
    assert frozenset({"c"}) == pending_devices(journal, OFFICE, "run-1")
    _run(journal, "run-2", 400.0, "rolled_back", [("c", StepStatus.SKIPPED, skipped)])
    assert frozenset() == pending_devices(journal, OFFICE, "run-2")
    assert frozenset() == pending_devices(journal, OFFICE, "no-such-run")
