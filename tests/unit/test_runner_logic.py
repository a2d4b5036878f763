"""The runner's small pure rules: retries, the confirm margin, the window budget, session
budget, reply checks. The run's progress and recovery rules are in test_progress.py."""

from __future__ import annotations

from typing import Any

import pytest

from baton.core.model import Device, Inventory, Office, RunKind
from baton.playbook.plan import RunInfo, RunPlan, confirm_margin, plan_run
from baton.playbook.runner import FDS_PER_SESSION, held_sessions, retry_delays
from baton.playbook.schema import Playbook, XmlCheck
from baton.playbook.steps import check_xml, wrap_config

EDIT = {"kind": "netconf.edit", "config": "<a xmlns='urn:x'/>", "timeout_s": 10}
GET = {"kind": "netconf.get", "filter": "<a xmlns='urn:x'/>", "timeout_s": 5, "retries": 2}


def playbook(*steps: dict[str, Any], barriers: bool = False, **extra: Any) -> Playbook:
    return Playbook.model_validate(
        {
            "name": "t",
            "kind": "handover",
            "targets": {"office": "closed"},
            "barriers": barriers,
            "steps": [{"name": f"s{i}", **s} for i, s in enumerate(steps)],
            **extra,
        }
    )


def plan_of(pb: Playbook, devices: int = 2) -> RunPlan:
    inventory = Inventory(
        {"a": Office("a", "A", "r", ("b",)), "b": Office("b", "B", "r", ("a",))},
        {f"d{i}": Device(f"d{i}", "a", "core", f"127.0.0.{i}") for i in range(1, devices + 1)},
    )
    return plan_run(pb, inventory, "a", "b", RunInfo("r1", RunKind.HANDOVER, "t", "me"))


def test_idempotent_steps_retry_with_growing_capped_backoff() -> None:
    assert (0.5, 1.0, 2.0, 4.0, 5.0) == retry_delays(5, idempotent=True)


def test_non_idempotent_steps_never_retry() -> None:
    assert () == retry_delays(3, idempotent=False)


def test_confirm_margin() -> None:
    """A fifth of the window (at least 5 s, at most half) must be left to go on."""
    assert (60.0, 5.0, 4.0) == (confirm_margin(300), confirm_margin(20), confirm_margin(8))


@pytest.mark.parametrize(
    ("devices", "concurrency", "barriers", "in_window_s"),
    [
        # edit 10 s + commit 30 s + verify 3 x 5 s + 1.5 s of backoff, then 15 s per confirm wave
        (1, 4, False, 10 + 30 + 16.5 + 15),
        (8, 4, False, 2 * (10 + 30 + 16.5) + 2 * 15),
        # with barriers the first commit follows the first device's edits
        (8, 4, True, 2 * 10 + 2 * 16.5 + 2 * 30 - 10 + 2 * 15),
    ],
)
def test_budget_from_office_size_concurrency_and_timeouts(
    devices: int, concurrency: int, barriers: bool, in_window_s: float
) -> None:
    """The worst case from the first commit to the last confirm grows with the office's waves."""
    plan = plan_of(playbook(EDIT, {**GET, "phase": 1}, barriers=barriers, concurrency=concurrency), devices)
    assert in_window_s == plan.budget(300).in_window_s


def test_a_run_that_cannot_fit_its_window_is_refused_with_the_numbers_and_the_fix() -> None:
    """48 devices at concurrency 4 (12 waves) of 71.5 s each cannot fit a 300 s window."""
    budget = plan_of(playbook(EDIT, GET, concurrency=4), 48).budget(300)
    assert not budget.fits
    assert (
        "the confirmed-commit window of 300 s cannot cover this run: 48 device(s) at concurrency 4 "
        "(12 wave(s)) may need up to 858 s from the first commit to the last confirm; raise the window "
        "to at least 858 s, raise the concurrency to 12, lower step timeouts and retries, or split "
        "the office"
    ) == budget.refusal()
    assert plan_of(playbook(EDIT, GET, concurrency=16), 48).budget(300).fits


def test_the_playbook_window_wins_over_the_policy_window() -> None:
    """One rule: the playbook's confirm_window_s when set, else the policy's."""
    assert (300.0, 120.0) == (
        playbook(EDIT).window_for(300.0),
        playbook(EDIT, confirm_window_s=120).window_for(300.0),
    )


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


def test_sessions_are_held_across_barriers_only_within_half_the_fd_limit() -> None:
    assert 1024 // 2 // FDS_PER_SESSION == held_sessions(1024)  # systemd's default soft limit: 256
    assert 5000 == held_sessions(20000)
    assert 0 == held_sessions(3)
    assert 126 == held_sessions(1024, 520)  # what is already open counts against it
    assert 0 == held_sessions(1024, 1100)
    assert held_sessions(-1) > 1_000_000  # RLIM_INFINITY


def test_the_refusal_counts_the_margin() -> None:
    """The margin the runner keeps at the end of the window is part of what must fit."""
    budget = plan_of(playbook(EDIT, GET, concurrency=4), 8).budget(120, margin_s=24)
    assert (96, False) == (budget.usable_s, budget.fits)
    assert "the confirmed-commit window of 120 s (96 s usable after a 24 s margin) cannot" in (
        budget.refusal() or ""
    )
