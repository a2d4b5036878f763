"""The daemon as a process against a lab: closures, handovers, crash recovery, reload, the TCP API.

One lab (6 offices x 4 devices: core1, agg1 and two OLTs behind agg1) and one daemon for the
module; each test uses its own pair of offices, so they do not interfere:

    busan-jung      -> busan-haeundae    automatic closure (agg1 and the OLTs stop answering)
    seoul-geumcheon -> seoul-bangbae     declared closure, then handback
    daegu-dongdaegu -> daegu-suseong     SIGKILL during the handover, restart, recovery

The storm guard would freeze automation with 2 of 6 offices DOWN (ratio 0.33 > 0.25); only one
office goes DOWN here, and the ratio limit is raised to 0.5 so that stays true.
"""

from __future__ import annotations

import json
import os
import pwd
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.e2e.conftest import E2E, office_lab
from tests.e2e.harness import LabProcess, free_port, wait_for

pytestmark = pytest.mark.slow

OFFICES = "seoul-geumcheon,seoul-bangbae,busan-jung,busan-haeundae,daegu-dongdaegu,daegu-suseong"
TOKEN = "e2e-token-" + os.urandom(12).hex()
RUN_TIMEOUT_S = 60.0


def _prepare(lab: LabProcess, ports: dict[str, Any]) -> None:
    """The API also on TCP (loopback, free port) with a token credential file."""
    token_file = lab.dir / "inventory" / "credentials" / "api-token"
    token_file.write_text(TOKEN + "\n")
    token_file.chmod(0o600)
    ports["api"] = free_port()
    data = yaml.safe_load(lab.config_path.read_text())
    data["api"]["tcp_listen"] = f"127.0.0.1:{ports['api']}"
    data["api"]["tokens"] = ["file:inventory/credentials/api-token"]
    lab.config_path.write_text(yaml.safe_dump(data, sort_keys=False))


@pytest.fixture(scope="module")
def e2e(tmp_path_factory: pytest.TempPathFactory) -> Iterator[E2E]:
    with office_lab(
        tmp_path_factory.mktemp("daemon"),
        offices=OFFICES,
        devices_per_office=4,
        policy={"storm_max_ratio": 0.5},
        prepare=_prepare,
    ) as running:
        yield running


def _me() -> str:
    return pwd.getpwuid(os.getuid()).pw_name


def _handed_over(mgmt: dict[str, Any], alternate: str, alternate_index: int) -> bool:
    acl = {entry["name"]: entry["prefix"] for entry in mgmt["acl"]}
    return (
        acl.get(alternate) == f"127.10.{alternate_index}.0/24" and mgmt["contact"] == f"noc@{alternate}.lab"
    )


def _original(mgmt: dict[str, Any], office: str, others: list[str]) -> bool:
    names = {entry["name"] for entry in mgmt["acl"]}
    return not names & set(others) and mgmt["contact"] == f"noc@{office}.lab"


def _index(office: str) -> int:
    return OFFICES.split(",").index(office) + 1


def test_automatic_closure_hands_over(e2e: E2E) -> None:
    """Devices stop answering → SUSPECT → CLOSED → HANDING_OVER → HANDED_OVER, seen everywhere."""
    daemon, lab = e2e.daemon, e2e.lab
    # agg1 is one of the two critical devices (ratio 0.5 → DOWN); the OLTs hang off it. core1
    # keeps answering and takes the handover; agg1 is skipped as unreachable (pending).
    for device in ("busan-jung-agg1", "busan-jung-olt01", "busan-jung-olt02"):
        lab("device_down", device=device)

    daemon.wait_phase("busan-jung", "HANDED_OVER", RUN_TIMEOUT_S)

    # The core closes and starts the run in one step (SUSPECT → CLOSED → HANDING_OVER), which the
    # journal records as one row whose state carries the detected closure.
    rows = daemon.journal.rows("SELECT * FROM transitions WHERE office = 'busan-jung' ORDER BY id")
    moves = [(r["from_phase"], r["to_phase"]) for r in rows if r["from_phase"] != r["to_phase"]]
    assert [("OPEN", "SUSPECT"), ("SUSPECT", "HANDING_OVER"), ("HANDING_OVER", "HANDED_OVER")] == moves
    closing = next(r for r in rows if r["to_phase"] == "HANDING_OVER")
    assert "detected" == json.loads(closing["state"])["closure"]["kind"]
    assert "handing over to busan-haeundae" in closing["reason"]
    # (catch-up runs for the devices left pending may follow; they are not the handover)
    runs = [r for r in daemon.journal.runs("busan-jung") if r["id"].startswith("handover-")]
    assert [("handover", "busan-haeundae", "ok")] == [(r["kind"], r["alternate"], r["result"]) for r in runs]
    steps = daemon.journal.steps(runs[0]["id"])
    core_steps = {s["step_name"]: s["status"] for s in steps if s["device"] == "busan-jung-core1"}
    assert core_steps.get("verify-alternate-acl") == "done", steps
    agg_steps = [s for s in steps if s["device"] == "busan-jung-agg1"]
    assert agg_steps, steps
    assert all(s["status"] == "skipped" for s in agg_steps), agg_steps
    assert _handed_over(lab.mgmt("busan-jung-core1"), "busan-haeundae", _index("busan-haeundae"))

    table = daemon.cli("offices")
    assert 0 == table.code
    row = next(line for line in table.out.splitlines() if line.startswith("busan-jung "))
    assert "HANDED_OVER" in row
    assert "busan-haeundae" in row

    assert 1.0 == daemon.metric("baton_office_phase", office="busan-jung", phase="HANDED_OVER")
    assert 0.0 == daemon.metric("baton_office_phase", office="busan-jung", phase="OPEN")
    ok_runs = daemon.metric("baton_runs_total", kind="handover", result="ok")
    assert ok_runs is not None
    assert ok_runs >= 1


def test_declared_closure_then_handback(e2e: E2E) -> None:
    """A declared closure of a healthy office hands over, journaled with who/why; handback reopens."""
    daemon, lab = e2e.daemon, e2e.lab
    office, alternate = "seoul-geumcheon", "seoul-bangbae"
    routers = [f"{office}-core1", f"{office}-agg1"]

    result = daemon.cli("handover", office, "--reason", "sealed for disinfection", "--yes")
    assert 0 == result.code, result
    assert "HANDED_OVER" == daemon.office(office)["phase"]

    commands = daemon.journal.rows("SELECT * FROM commands WHERE command = 'handover'")
    declared = [c for c in commands if json.loads(c["args"]).get("office") == office]
    assert [(_me(), "sealed for disinfection")] == [(c["who"], c["reason"]) for c in declared]
    runs = daemon.journal.runs(office)
    assert [("handover", alternate, "ok", _me())] == [
        (r["kind"], r["alternate"], r["result"], r["who"]) for r in runs
    ]
    for device in routers:
        assert _handed_over(lab.mgmt(device), alternate, _index(alternate)), device

    result = daemon.cli("handback", office, "--reason", "disinfection done", "--yes")
    assert 0 == result.code, result
    daemon.wait_phase(office, "OPEN", RUN_TIMEOUT_S)
    assert ["HANDING_BACK", "OPEN"] == daemon.journal.phases(office)[-2:]
    assert [("handover", "ok"), ("handback", "ok")] == [
        (r["kind"], r["result"]) for r in daemon.journal.runs(office)
    ]
    for device in routers:
        assert _original(lab.mgmt(device), office, [alternate]), device


def test_sigkill_during_handover_is_recovered(e2e: E2E) -> None:
    """A daemon killed mid-run finishes the run at restart: never half-done on the devices."""
    daemon, lab = e2e.daemon, e2e.lab
    office, alternate = "daegu-dongdaegu", "daegu-suseong"
    routers = [f"{office}-core1", f"{office}-agg1"]
    lab("slow", device=f"{office}-core1", seconds=3.0)  # every NETCONF answer takes 3 s

    answer = daemon.cli("handover", office, "--reason", "crash drill", "--yes", "--no-follow", "--json")
    assert 0 == answer.code, answer
    run_id = answer.json()["run_id"]
    assert run_id
    # The run is on the devices once the runner journaled a step for the slow router.
    wait_for(
        lambda: [s for s in daemon.journal.steps(run_id) if s["device"] == f"{office}-core1"],
        RUN_TIMEOUT_S,
        "the run's first step on the slow router",
    )
    daemon.kill()
    assert daemon.journal.runs(office)[-1]["result"] is None  # killed while unfinished
    lab("slow", device=f"{office}-core1", seconds=0.0)

    daemon.start(offices_ready=lambda offices: bool(offices))
    recovered = wait_for(
        lambda: (r := daemon.journal.runs(office)[-1])["result"] is not None and r,
        RUN_TIMEOUT_S,
        "the run finished by recovery",
    )
    assert run_id == recovered["id"]
    assert daemon.events("recovery.done", run_id=run_id)
    steps = daemon.journal.steps(run_id)
    assert steps
    # Every step ends with a result: those the kill caught in flight are closed by recovery as
    # interrupted (outcome unknown); after one that may have changed the device (an edit, the
    # commit), recovery's own rows follow for the same device. (A cut prepare-candidate leaves
    # nothing to undo: its lock died with the session, and it only discarded the candidate.)
    assert [] == [s for s in steps if s["status"] == "intent" or s["finished"] is None], steps
    changing = ("grant-alternate-acl", "point-services-at-alternate", "commit")
    for cut in (s for s in steps if s["detail"].startswith("interrupted by a restart")):
        if cut["step_name"] in changing:
            later = [s for s in steps if s["device"] == cut["device"] and s["id"] > cut["id"]]
            assert later, steps

    states = {device: lab.mgmt(device) for device in routers}
    if recovered["result"] == "ok":
        daemon.wait_phase(office, "HANDED_OVER", RUN_TIMEOUT_S)
        assert all(_handed_over(m, alternate, _index(alternate)) for m in states.values()), states
    else:
        phase = wait_for(
            lambda: (p := daemon.office(office)["phase"]) not in ("HANDING_OVER",) and p,
            RUN_TIMEOUT_S,
            "the office to leave HANDING_OVER",
        )
        assert "FAILED" == phase
        assert all(_original(m, office, [alternate]) for m in states.values()), states

    runs = daemon.cli("runs")
    assert 0 == runs.code
    row = next(line for line in runs.out.splitlines() if line.startswith(run_id))
    assert recovered["result"] in row
    detail = daemon.cli("run", run_id)
    assert (0 if recovered["result"] == "ok" else 1) == detail.code
    assert run_id in detail.out
    assert f"{office}-core1" in detail.out


def test_reload_refuses_broken_inventory(e2e: E2E) -> None:
    """SIGHUP with a broken inventory keeps the old one running; fixed, SIGHUP adopts it."""
    daemon, lab = e2e.daemon, e2e.lab
    offices_file: Path = lab.dir / "inventory" / "offices.yaml"
    good = offices_file.read_text()
    before = {o["id"]: o["phase"] for o in daemon.cli("offices", "--json").json()["offices"]}
    refused_before = len(daemon.events("reload.refused"))
    done_before = len(daemon.events("reload.done"))

    broken = yaml.safe_load(good)
    next(o for o in broken["offices"] if o["id"] == "busan-jung")["colour"] = "red"  # not a known key
    offices_file.write_text(yaml.safe_dump(broken, sort_keys=False))
    daemon.reload()
    wait_for(lambda: len(daemon.events("reload.refused")) > refused_before, 30, "reload.refused")
    problems = [e["problem"] for e in daemon.events("config.problem")]
    assert any("offices.yaml" in p and "colour" in p for p in problems), problems
    assert daemon.running
    after = {o["id"]: o["phase"] for o in daemon.cli("offices", "--json").json()["offices"]}
    assert before == after

    offices_file.write_text(good)
    daemon.reload()
    wait_for(lambda: len(daemon.events("reload.done")) > done_before, 30, "reload.done")
    assert before == {o["id"]: o["phase"] for o in daemon.cli("offices", "--json").json()["offices"]}


def _get(url: str, token: str | None) -> int:
    req = urllib.request.Request(url)  # noqa: S310 - loopback http
    if token is not None:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=5) as response:  # noqa: S310
            return int(response.status)
    except urllib.error.HTTPError as exc:
        exc.close()
        return int(exc.code)


def test_tcp_api_needs_the_token(e2e: E2E) -> None:
    """On TCP, no token or a wrong one is 401; the configured token is 200."""
    url = f"http://127.0.0.1:{e2e.ports['api']}/v1/status"
    assert 401 == _get(url, None)
    assert 401 == _get(url, "not-the-token")
    assert 401 == _get(url, TOKEN[:-1])
    assert 200 == _get(url, TOKEN)
    unauthorized = e2e.daemon.events("api.unauthorized")
    assert {"no bearer credentials", "token rejected"} <= {e["cause"] for e in unauthorized}
