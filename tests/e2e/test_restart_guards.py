"""Restart changes nothing: every guard comes back exactly as it was after a kill -9.

One lab (the 8 built-in offices x 2 devices: core1 and agg1, both critical) and one daemon for
the module; each test puts a guard in place, SIGKILLs the daemon, starts it again on the same
journal, and asserts on what an operator sees (`baton status`, `baton offices`) and on the
devices themselves (their management config in the lab: nothing handed over that should not be).

    pause            busan-jung dark while paused: CLOSED, nothing runs
    shadow           the rule for a flag both baton.yaml and a command set
    drill            seoul-gwacheon declared closed in shadow mode; shadow off ends it, nothing runs
    storm            busan-jung, busan-haeundae, daegu-suseong dark at once: still frozen after restart
    anti-flap        daegu-dongdaegu handed over and back; dark after the restart: still blocked
    cascade          seoul-geumcheon operated by seoul-bangbae, which closes: re-homed to seoul-suwon

Storm limits: more than 2 offices, or more than 25 % of the 8, DOWN within 20 s.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from tests.e2e.conftest import E2E, office_lab
from tests.e2e.harness import Daemon, LabProcess, wait_for

pytestmark = pytest.mark.slow

OFFICES = (
    "seoul-geumcheon,seoul-bangbae,seoul-suwon,seoul-gwacheon,"
    "busan-jung,busan-haeundae,daegu-dongdaegu,daegu-suseong"
)
TIMEOUT_S = 90.0
HOLD_DOWN_S = 4.0
POLICY = {
    "storm_max_offices": 2,
    "storm_max_ratio": 0.25,
    "storm_window_s": 20.0,
    "anti_flap_block_s": 900.0,  # long enough to outlive the restart
}


@pytest.fixture(scope="module")
def e2e(tmp_path_factory: pytest.TempPathFactory) -> Iterator[E2E]:
    with office_lab(
        tmp_path_factory.mktemp("restart-guards"), offices=OFFICES, devices_per_office=2, policy=POLICY
    ) as running:
        yield running


def _restart(daemon: Daemon) -> None:
    """kill -9, then a new daemon on the same journal, past its first poll round."""
    daemon.kill()
    daemon.start(offices_ready=lambda offices: len(offices) == len(OFFICES.split(",")))


def _status(daemon: Daemon) -> dict[str, Any]:
    result = daemon.cli("status", "--json")
    assert 0 == result.code, result
    status: dict[str, Any] = result.json()
    return status


def _row(daemon: Daemon, command: str, first: str) -> str:
    """The line of `baton COMMAND`'s table (or key/value list) that starts with `first`."""
    result = daemon.cli(command)
    assert 0 == result.code, result
    return next(line for line in result.out.splitlines() if line.split() and line.split()[0] == first)


def _untouched(lab: LabProcess, office: str) -> bool:
    """Both routers as the lab started them: only the office's own NOC (and Baton) in the ACL."""
    for device in (f"{office}-core1", f"{office}-agg1"):
        mgmt = lab.mgmt(device)
        if {e["name"] for e in mgmt["acl"]} != {office, "baton"} or mgmt["contact"] != f"noc@{office}.lab":
            return False
    return True


def _handed_to(lab: LabProcess, office: str, alternate: str) -> bool:
    for device in (f"{office}-core1", f"{office}-agg1"):
        mgmt = lab.mgmt(device)
        if alternate not in {e["name"] for e in mgmt["acl"]} or mgmt["contact"] != f"noc@{alternate}.lab":
            return False
    return True


def _runs_of(daemon: Daemon, office: str) -> list[dict[str, Any]]:
    return daemon.journal.runs(office)


def _past_hold_down(daemon: Daemon, offices: tuple[str, ...], phase: str) -> None:
    """Wait (on the daemon's clock) until every office has been `phase` past hold-down plus two
    ticks: an automatic handover would have started by then."""

    def past() -> bool:
        data = daemon.cli("offices", "--json").json()
        found = [o for o in data["offices"] if o["id"] in offices]
        return all(o["phase"] == phase and data["now"] >= o["since"] + HOLD_DOWN_S + 2 for o in found)

    wait_for(past, TIMEOUT_S, f"{', '.join(offices)} {phase} past hold-down")


def _recover(daemon: Daemon, lab: LabProcess, *offices: str) -> None:
    for office in offices:
        lab("power_on", office=office)
    for office in offices:
        daemon.wait_phase(office, "OPEN", TIMEOUT_S)
    wait_for(lambda: not _status(daemon)["storm"], TIMEOUT_S, "the storm guard cleared")


def test_pause_survives_kill_9(e2e: E2E) -> None:
    """Paused, killed, restarted: still paused; an office that goes dark closes, nothing runs."""
    daemon, lab = e2e.daemon, e2e.lab
    office = "busan-jung"
    assert 0 == daemon.cli("pause", "--reason", "maintenance window").code
    _restart(daemon)

    assert _status(daemon)["paused"] is True
    assert "PAUSED" in _row(daemon, "status", "automation")
    lab("power_off", office=office)
    daemon.wait_phase(office, "CLOSED", TIMEOUT_S)
    _past_hold_down(daemon, (office,), "CLOSED")
    assert "automation paused" in _row(daemon, "offices", office)
    assert [] == _runs_of(daemon, office)
    assert _untouched(lab, office)

    _recover(daemon, lab, office)  # back before resuming: a resume would hand it over
    assert 0 == daemon.cli("resume").code
    assert _status(daemon)["paused"] is False
    assert [] == _runs_of(daemon, office)


def _set_config_shadow(lab: LabProcess, shadow: bool) -> None:
    config = yaml.safe_load(lab.config_path.read_text())
    config["shadow"] = shadow
    lab.config_path.write_text(yaml.safe_dump(config, sort_keys=False))


def test_shadow_follows_one_rule_across_restarts(e2e: E2E) -> None:
    """baton.yaml's `shadow` applies when it differs from the value last loaded; otherwise the
    last command stands — a restart alone never changes it."""
    daemon, lab = e2e.daemon, e2e.lab
    try:
        assert _status(daemon)["shadow"] is False
        assert 0 == daemon.cli("shadow", "on").code
        _restart(daemon)  # baton.yaml still says false, as when last loaded: the command stands
        assert _status(daemon)["shadow"] is True
        assert "SHADOW" in _row(daemon, "status", "automation")

        assert 0 == daemon.cli("shadow", "off").code
        _restart(daemon)
        assert _status(daemon)["shadow"] is False

        _set_config_shadow(lab, True)  # differs from the value last loaded: it applies
        _restart(daemon)
        assert _status(daemon)["shadow"] is True

        assert 0 == daemon.cli("shadow", "off").code
        _restart(daemon)  # baton.yaml unchanged since: the command stands
        assert _status(daemon)["shadow"] is False
        assert "SHADOW" not in _row(daemon, "status", "automation")
    finally:
        _set_config_shadow(lab, False)
        _restart(daemon)  # false again, differing from true: applies (and leaves shadow off)
    assert _status(daemon)["shadow"] is False


def test_a_drill_closure_ends_with_shadow_mode_and_nothing_runs(e2e: E2E) -> None:
    """Declared in shadow mode, a closure is a drill: shown as such (also after a kill -9);
    shadow off ends it — the office reopens and no run ever touches its devices."""
    daemon, lab = e2e.daemon, e2e.lab
    office = "seoul-gwacheon"
    assert 0 == daemon.cli("shadow", "on", "--reason", "drill").code
    result = daemon.cli("handover", office, "--reason", "fire drill", "--yes", "--no-follow", "--json")
    assert 0 == result.code, result
    assert result.json().get("run_id") is None
    assert "CLOSED DRILL" in _row(daemon, "offices", office)

    _restart(daemon)
    row = _row(daemon, "offices", office)
    assert "CLOSED DRILL" in row, row
    assert "would hand over" in row
    assert [office] == _status(daemon)["drills"]
    assert office in _row(daemon, "status", "drills")
    closure = daemon.office(office)["closure"]
    assert (True, "declared") == (closure["drill"], closure["kind"])

    assert 0 == daemon.cli("shadow", "off", "--reason", "drill over").code
    assert "OPEN" == daemon.office(office)["phase"]
    assert [] == _status(daemon)["drills"]
    _restart(daemon)
    assert "OPEN" == daemon.office(office)["phase"]
    assert "DRILL" not in _row(daemon, "offices", office)
    assert [] == _runs_of(daemon, office)
    assert _untouched(lab, office)


def test_the_storm_guard_survives_kill_9(e2e: E2E) -> None:
    """Three offices dark at once engage the storm guard; after kill -9 it is still engaged and
    none of them is handed over past its hold-down."""
    daemon, lab = e2e.daemon, e2e.lab
    dark = ("busan-jung", "busan-haeundae", "daegu-suseong")
    for office in dark:
        lab("power_off", office=office)
    wait_for(lambda: _status(daemon)["storm"], TIMEOUT_S, "the storm guard")
    _restart(daemon)

    status = _status(daemon)
    assert status["storm"] is True
    assert "storm_guard" in {a["alert"] for a in status["alerts"]}
    assert "ENGAGED" in _row(daemon, "status", "storm")
    assert "storm_guard" in _row(daemon, "status", "storm_guard")  # the alerts table
    _past_hold_down(daemon, dark, "SUSPECT")  # held there: Baton's own network is the suspect
    assert _status(daemon)["storm"] is True
    for office in dark:
        assert "SUSPECT" in _row(daemon, "offices", office)
        assert [] == _runs_of(daemon, office)
        assert _untouched(lab, office)

    _recover(daemon, lab, *dark)
    assert [] == [r for o in dark for r in _runs_of(daemon, o)]


def test_the_anti_flap_block_survives_kill_9(e2e: E2E) -> None:
    """Handed over and back, an office is blocked from automation; killed and restarted, it still
    is: dark, it closes and is not handed over, and the CLI says why."""
    daemon, lab = e2e.daemon, e2e.lab
    office, alternate = "daegu-dongdaegu", "daegu-suseong"
    assert 0 == daemon.cli("handover", office, "--reason", "flood", "--yes").code
    assert _handed_to(lab, office, alternate)
    assert 0 == daemon.cli("handback", office, "--reason", "water gone", "--yes").code
    daemon.wait_phase(office, "OPEN", TIMEOUT_S)
    blocked_until = daemon.office(office)["blocked_until"]
    assert blocked_until is not None
    _restart(daemon)

    assert blocked_until == daemon.office(office)["blocked_until"]
    lab("power_off", office=office)
    daemon.wait_phase(office, "CLOSED", TIMEOUT_S)
    _past_hold_down(daemon, (office,), "CLOSED")
    assert "anti-flap block" in _row(daemon, "offices", office)
    assert [("handover", "ok"), ("handback", "ok")] == [
        (r["kind"], r["result"]) for r in _runs_of(daemon, office)
    ]
    assert _untouched(lab, office)

    _recover(daemon, lab, office)
    assert 0 == daemon.cli("ack", office).code
    assert daemon.office(office)["blocked_until"] is None


def test_an_office_whose_alternate_closes_is_rehomed_after_kill_9(e2e: E2E) -> None:
    """seoul-geumcheon handed over to seoul-bangbae; kill -9, restart; seoul-bangbae closes: it is
    handed over itself, and seoul-geumcheon is re-homed to the next of its chain (seoul-suwon)."""
    daemon, lab = e2e.daemon, e2e.lab
    office, first, second = "seoul-geumcheon", "seoul-bangbae", "seoul-suwon"
    assert 0 == daemon.cli("handover", office, "--reason", "sealed for disinfection", "--yes").code
    assert _handed_to(lab, office, first)
    _restart(daemon)
    assert "HANDED_OVER" == daemon.office(office)["phase"]

    assert 0 == daemon.cli("handover", first, "--reason", "fire", "--yes").code
    rehomed = wait_for(
        lambda: (o := daemon.office(office))["phase"] == "HANDED_OVER" and o["alternate"] == second and o,
        TIMEOUT_S,
        f"{office} re-homed to {second}",
    )
    # The reason is the latest decision's: the re-homing, its run's success, or (runs are fast)
    # the office's standing summary after it.
    said = ("re-homing", "succeeded", f"HANDED_OVER to {second}")
    assert any(words in rehomed["reason"] for words in said), rehomed["reason"]
    row = _row(daemon, "offices", office)
    assert "HANDED_OVER" in row
    assert second in row
    assert "seoul-gwacheon" == daemon.office(first)["alternate"]  # its own chain skips geumcheon
    assert _handed_to(lab, office, second)
    assert _handed_to(lab, first, "seoul-gwacheon")
    runs = [(r["kind"], r["alternate"], r["result"]) for r in _runs_of(daemon, office)]
    assert [("handover", first, "ok"), ("handover", second, "ok")] == runs
