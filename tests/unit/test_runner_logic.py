"""The runner's pure decisions: ordering, barriers, retries, on_failure, refusals, checks, recovery."""

from __future__ import annotations

from typing import Any

import pytest

from baton.core.model import Device, Inventory, Office, RunKind
from baton.journal import StepRecord, StepStatus
from baton.playbook.plan import PlannedStep, RunInfo, RunPlan, plan_run
from baton.playbook.recovery import device_states, is_fully_confirmed
from baton.playbook.runner import (
    FDS_PER_SESSION,
    commit_position,
    confirm_margin,
    held_sessions,
    is_too_late,
    refusal,
    retry_delays,
    rollback_scope,
    segments,
    stops_others,
)
from baton.playbook.schema import NetconfGet, Playbook, SshCommand, XmlCheck
from baton.playbook.steps import check_xml, wrap_config

EDIT = {"kind": "netconf.edit", "config": "<a xmlns='urn:x'/>"}
GET = {"kind": "netconf.get", "filter": "<a xmlns='urn:x'/>", "retries": 2}


def playbook(*steps: dict[str, Any], barriers: bool = False) -> Playbook:
    return Playbook.model_validate(
        {
            "name": "t",
            "kind": "handover",
            "targets": {"office": "closed"},
            "barriers": barriers,
            "steps": [{"name": f"s{i}", **s} for i, s in enumerate(steps)],
        }
    )


def plan_of(pb: Playbook) -> RunPlan:
    inventory = Inventory(
        {"a": Office("a", "A", "r", ("b",)), "b": Office("b", "B", "r", ("a",))},
        {"d1": Device("d1", "a", "core", "127.0.0.1"), "d2": Device("d2", "a", "core", "127.0.0.2")},
    )
    return plan_run(pb, inventory, "a", "b", RunInfo("r1", RunKind.HANDOVER, "t", "me"))


def planned(pb: Playbook) -> tuple[PlannedStep, ...]:
    return plan_of(pb).devices[0].steps


def test_commit_follows_the_last_edit() -> None:
    """The commit point is the last netconf.edit, whatever comes between."""
    pb = playbook(EDIT, {"kind": "ssh.command", "command": "x"}, EDIT, GET)
    assert 2 == commit_position(planned(pb))


def test_no_edit_means_no_commit() -> None:
    """A playbook without netconf.edit never commits."""
    assert commit_position(planned(playbook(GET))) is None


@pytest.mark.parametrize(
    ("phases", "barriers", "expected"),
    [
        ((0, 1, 2), True, (frozenset({0}), frozenset({1}), frozenset({2}))),
        ((0, 1, 2), False, (frozenset({0, 1, 2}),)),
        ((), True, ()),
    ],
)
def test_segments_split_at_barriers(
    phases: tuple[int, ...], barriers: bool, expected: tuple[frozenset[int], ...]
) -> None:
    """With barriers every phase is its own segment; without, one segment."""
    assert expected == segments(phases, barriers)


def test_idempotent_steps_retry_with_growing_capped_backoff() -> None:
    """A read retries with exponential backoff capped at cap_s."""
    step = NetconfGet.model_validate({**GET, "retries": 5})
    assert (0.5, 1.0, 2.0, 4.0, 5.0) == retry_delays(step)


def test_non_idempotent_steps_never_retry() -> None:
    """An ssh command not marked idempotent is never run twice."""
    step = SshCommand.model_validate({"kind": "ssh.command", "command": "x"})
    assert () == retry_delays(step)


@pytest.mark.parametrize(
    ("on_failure", "aborted", "expected"),
    [
        ("rollback", False, {"d1", "d2", "d3"}),
        ("rollback_device", False, {"d2"}),
        ("stop", False, set()),
        ("stop", True, {"d1", "d2", "d3"}),
        ("rollback_device", True, {"d1", "d2", "d3"}),
    ],
)
def test_rollback_scope_follows_on_failure(on_failure: Any, aborted: bool, expected: set[str]) -> None:
    """rollback undoes every touched device, rollback_device the failed one, stop none; abort all."""
    assert frozenset(expected) == rollback_scope(on_failure, ["d2"], ["d1", "d2", "d3"], aborted)


def test_only_rollback_device_lets_the_others_continue() -> None:
    """A failure stops the other devices unless on_failure is rollback_device."""
    assert [True, False, True] == [stops_others(m) for m in ("rollback", "rollback_device", "stop")]


def test_refused_when_a_device_lacks_confirmed_commit_and_an_edit_has_no_compensate() -> None:
    """No :confirmed-commit + uncompensated edit: refused, naming the device and step."""
    plan = plan_of(playbook(EDIT))
    reason = refusal(plan, {"d1": True, "d2": False})
    assert reason is not None
    assert "d2 (s0)" in reason
    assert "d1" not in reason


def test_not_refused_when_every_device_has_confirmed_commit() -> None:
    """With :confirmed-commit everywhere an edit needs no compensate."""
    assert refusal(plan_of(playbook(EDIT)), {"d1": True, "d2": True}) is None


def test_confirm_margin_and_lateness() -> None:
    """A fifth of the window (at least 5 s) must be left, else it is too late to confirm."""
    assert (60.0, 5.0, 4.0) == (confirm_margin(300), confirm_margin(20), confirm_margin(8))
    assert (False, True) == (is_too_late(100.0, 300, 60, 339.0), is_too_late(100.0, 300, 60, 341.0))
    assert not is_too_late(None, 300, 60, 1e9)


REPLY = (
    '<data xmlns="urn:ietf:params:xml:ns:netconf:base:1.0"><m xmlns="urn:m">'
    "<acl><entry><name>bb</name><prefix>10.0.0.0/24</prefix></entry></acl></m></data>"
)
NS = {"m": "urn:m"}


@pytest.mark.parametrize(
    ("check", "expected"),
    [
        (XmlCheck(xpath="//m:entry[m:name='bb']/m:prefix", namespaces=NS, equals="10.0.0.0/24"), None),
        (
            XmlCheck(xpath="//m:entry/m:prefix", namespaces=NS, equals="1.1.1.1/32"),
            "//m:entry/m:prefix is '10.0.0.0/24', expected '1.1.1.1/32'",
        ),
        (XmlCheck(xpath="//m:entry[m:name='gc']", namespaces=NS, absent=True), None),
        (
            XmlCheck(xpath="//m:entry[m:name='bb']", namespaces=NS, absent=True),
            "//m:entry[m:name='bb'] is present, expected absent",
        ),
        (XmlCheck(contains="10.0.0.0"), None),
        (XmlCheck(xpath="//m:nothing", namespaces=NS), "//m:nothing not found"),
    ],
)
def test_xml_checks(check: XmlCheck, expected: str | None) -> None:
    """Each XML check says precisely what did not hold."""
    assert expected == check_xml(REPLY, [check])


def test_edit_bodies_are_wrapped_in_config() -> None:
    """A playbook body becomes the <config> element edit-config wants."""
    assert '<config xmlns="urn:ietf:params:xml:ns:netconf:base:1.0"><a/></config>' == wrap_config(" <a/>\n")


def row(device: str, name: str, status: StepStatus, detail: str = "", index: int = 0) -> StepRecord:
    return StepRecord(0, "r", device, index, name, "apply", status, 0.0, None, detail, 1)


def test_recovery_reads_a_pending_commit_and_an_untouched_device() -> None:
    """Commit done, no confirm: pending; a device with only intents on reads is not committed."""
    states = device_states(
        [
            row("d1", "prepare-candidate", StepStatus.DONE),
            row("d1", "s0", StepStatus.DONE),
            row("d1", "commit", StepStatus.DONE),
            row("d2", "prepare-candidate", StepStatus.DONE),
            row("d2", "s0", StepStatus.INTENT),
        ]
    )
    assert (True, False) == (states["d1"].may_be_pending, states["d1"].candidate_touched)
    assert (False, True) == (states["d2"].may_be_pending, states["d2"].candidate_touched)
    assert not is_fully_confirmed(states)


def test_recovery_treats_a_commit_left_at_intent_as_maybe_committed() -> None:
    """A commit at intent may have reached the device: it must be cancelled, not ignored."""
    states = device_states([row("d1", "s0", StepStatus.DONE), row("d1", "commit", StepStatus.INTENT)])
    assert (True, True) == (states["d1"].commit_unknown, states["d1"].may_be_pending)


def test_recovery_sees_a_fully_confirmed_run() -> None:
    """Every committed device confirmed: the run took effect."""
    rows = [row(d, n, StepStatus.DONE) for d in ("d1", "d2") for n in ("s0", "commit", "confirm")]
    assert is_fully_confirmed(device_states(rows))


def test_sessions_are_held_across_barriers_only_within_half_the_fd_limit() -> None:
    assert 1024 // 2 // FDS_PER_SESSION == held_sessions(1024)  # systemd's default soft limit: 128
    assert 2500 == held_sessions(20000)
    assert 0 == held_sessions(4)
    assert 63 == held_sessions(1024, 520)  # what is already open counts against it
    assert 0 == held_sessions(1024, 1100)
    assert held_sessions(-1) > 1_000_000  # RLIM_INFINITY
