"""The storm guard, end to end: several offices DOWN at once freeze automation, not operators.

Own lab (6 offices x 2 devices: core1 + agg1, both critical) and daemon, with design.md's storm
limits (more than 2 offices, or more than 25 % of them, DOWN within the window). Three offices are
powered off together: no automatic run may start, the storm alert is raised, and a closure an
operator declares for a healthy office still runs.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.e2e.conftest import E2E, office_lab
from tests.e2e.harness import wait_for

pytestmark = pytest.mark.slow

OFFICES = "seoul-geumcheon,seoul-bangbae,busan-jung,busan-haeundae,daegu-dongdaegu,daegu-suseong"
DARK = ("busan-jung", "busan-haeundae", "daegu-dongdaegu")
TIMEOUT_S = 90.0


@pytest.fixture(scope="module")
def e2e(tmp_path_factory: pytest.TempPathFactory) -> Iterator[E2E]:
    with office_lab(
        tmp_path_factory.mktemp("storm"),
        offices=OFFICES,
        devices_per_office=2,
        policy={"storm_max_offices": 2, "storm_max_ratio": 0.25, "storm_window_s": 120.0},
    ) as running:
        yield running


def test_storm_freezes_automation_but_not_operators(e2e: E2E) -> None:
    """3 of 6 offices dark: storm alert, no automatic run past hold-down; a declared closure runs."""
    daemon, lab = e2e.daemon, e2e.lab
    for office in DARK:
        lab("power_off", office=office)

    wait_for(lambda: daemon.metric("baton_storm_guard_engaged") == 1.0, TIMEOUT_S, "the storm guard")
    assert 1.0 == daemon.metric("baton_alert_active", alert="storm_guard", office="")
    alerts = daemon.journal.rows("SELECT * FROM alerts WHERE alert = 'storm_guard' AND raised = 1")
    assert alerts
    status = daemon.cli("status", "--json").json()
    assert status["storm"] is True

    # Wait (on the daemon's own clock) until every dark office has been DOWN past hold-down, plus
    # two ticks: without the guard each would be handing over by then.
    hold_down_s = 4.0

    def past_hold_down() -> bool:
        data = daemon.cli("offices", "--json").json()
        dark = [o for o in data["offices"] if o["id"] in DARK]
        return all(o["phase"] == "SUSPECT" and data["now"] >= o["since"] + hold_down_s + 2 for o in dark)

    wait_for(past_hold_down, TIMEOUT_S, "the dark offices SUSPECT past their hold-down")
    assert [] == daemon.journal.runs()
    assert dict.fromkeys(DARK, "SUSPECT") == {o: daemon.office(o)["phase"] for o in DARK}

    result = daemon.cli("handover", "seoul-geumcheon", "--reason", "storm drill: manual closure", "--yes")
    assert 0 == result.code, result
    assert "HANDED_OVER" == daemon.office("seoul-geumcheon")["phase"]
    runs = daemon.journal.runs()
    assert [("seoul-geumcheon", "seoul-bangbae", "ok")] == [
        (r["office"], r["alternate"], r["result"]) for r in runs
    ]
    assert 1.0 == daemon.metric("baton_storm_guard_engaged")
