"""Operators through the daemon as a process: two-person approval across a restart, abort and
resolve, grants that end and a reload that changes them, the audit trail and its tampering.

One lab (4 Seoul offices × 2 devices) and one daemon for the module. The people are local users
(`baton-t-*`) running the real `baton` command as themselves against the API socket; root is the
admin who asks. Offices: seoul-geumcheon (two approvals needed), seoul-suwon (abort, resolve),
seoul-bangbae (grants that end).
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from baton.apiclient import ApiClient
from tests.e2e.conftest import E2E, office_lab
from tests.e2e.harness import CliResult, LabProcess, find_secrets, lab_secrets, wait_for
from tests.peers.users import as_user, ensure_users

pytestmark = pytest.mark.slow

OFFICES = "seoul-geumcheon,seoul-bangbae,seoul-suwon,seoul-gwacheon"
RUN_TIMEOUT_S = 90.0
USERS = {
    "baton-t-kim": ["baton-t-api"],
    "baton-t-park": ["baton-t-api"],
    "baton-t-lee": ["baton-t-api"],
}
OPERATORS: dict[str, Any] = {
    "groups": {"noc-seoul": ["baton-t-kim", "baton-t-park"]},
    "grants": [
        {"to": "root", "role": "admin", "scope": ["all"]},
        {"to": "group:noc-seoul", "role": "operator", "scope": ["region:seoul"]},
    ],
    "approvals": [{"scope": ["office:seoul-geumcheon"], "runs": ["handover", "handback"], "approvals": 2}],
}


@pytest.fixture(scope="module")
def e2e(tmp_path_factory: pytest.TempPathFactory) -> Iterator[E2E]:
    ensure_users(USERS)
    sockets = Path(tempfile.mkdtemp(prefix="baton-ops-", dir="/tmp"))
    sockets.chmod(0o755)  # the operators reach the socket here; the lab's directory is root's

    def prepare(lab: LabProcess, ports: dict[str, Any]) -> None:
        data = yaml.safe_load(lab.config_path.read_text())
        data["api"] = {"unix_socket": str(sockets / "api.sock"), "socket_group": "baton-t-api"}
        data["operators"] = OPERATORS
        lab.config_path.write_text(yaml.safe_dump(data, sort_keys=False))

    try:
        with office_lab(
            tmp_path_factory.mktemp("operators"), offices=OFFICES, devices_per_office=2, prepare=prepare
        ) as running:
            yield running
    finally:
        shutil.rmtree(sockets, ignore_errors=True)


def cli_as(e2e: E2E, user: str, *args: str) -> CliResult:
    """`baton ARGS` run by `user` in a process of its own (the daemon sees that user)."""
    done = subprocess.run(
        [*as_user(user), "-m", "baton.cli", *args, "--socket", str(e2e.daemon.socket)],
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S + 30,
        cwd="/",
        check=False,
    )
    return CliResult(done.returncode, done.stdout, done.stderr)


def _pending(e2e: E2E) -> list[dict[str, Any]]:
    result = e2e.daemon.cli("approvals", "--json")
    assert 0 == result.code, result
    approvals: list[dict[str, Any]] = result.json()["approvals"]
    return approvals


def test_two_approvals_across_a_restart(e2e: E2E) -> None:
    """root asks; kim approves; the daemon restarts; the request is still there with kim's
    approval; kim twice and root himself are refused; park's approval hands the office over,
    and the closure is root's declaration, approved by kim and park."""
    daemon, office = e2e.daemon, "seoul-geumcheon"
    asked = daemon.cli("handover", office, "--reason", "sealed for disinfection", "--yes", "--json")
    assert 0 == asked.code, asked
    approval_id = asked.json()["approval_id"]
    assert approval_id
    assert "OPEN" == daemon.office(office)["phase"]

    first = cli_as(e2e, "baton-t-kim", "approve", approval_id, "--reason", "site confirmed")
    assert 0 == first.code, first
    assert "(1 of 2)" in first.out
    assert 1.0 == daemon.metric("baton_approvals_pending", office=office, kind="handover")

    daemon.stop()
    daemon.start(offices_ready=lambda offices: all(o["verdict"] == "HEALTHY" for o in offices))
    [waiting] = _pending(e2e)
    assert (approval_id, ["baton-t-kim"], "root") == (
        waiting["id"],
        waiting["approvers"],
        waiting["requester"],
    )

    again = cli_as(e2e, "baton-t-kim", "approve", approval_id)
    assert (1, True) == (again.code, "baton-t-kim already approved it" in again.err), again
    own = daemon.cli("approve", approval_id)
    assert (1, True) == (own.code, "root asked for it" in own.err), own

    second = cli_as(e2e, "baton-t-park", "approve", approval_id, "--reason", "agreed")
    assert 0 == second.code, second
    daemon.wait_phase(office, "HANDED_OVER", RUN_TIMEOUT_S)
    closure = daemon.office(office)["closure"]
    assert ("declared", "root") == (closure["kind"], closure["who"])
    [run] = daemon.journal.runs(office)
    assert ("handover", "ok", "root") == (run["kind"], run["result"], run["who"])
    assert [] == _pending(e2e)
    assert 0.0 == daemon.metric("baton_approvals_pending", office=office, kind="handover")

    trail = daemon.cli("audit", "--office", office, "--json")
    assert 0 == trail.code, trail
    rows = [json.loads(line) for line in trail.out.splitlines()]
    asked_for = [(r["kind"], r["who"], r["what"]) for r in rows if r["kind"] in ("command", "run")]
    assert [
        ("command", "root", "handover"),
        ("command", "baton-t-kim", "approve"),
        ("command", "baton-t-kim", "approve"),
        ("command", "root", "approve"),
        ("command", "baton-t-park", "approve"),
        ("run", "root", run["id"]),
    ] == asked_for
    assert "handing over to" in rows[[r["who"] for r in rows].index("baton-t-park")]["detail"]["decided"]


def test_a_tampered_journal_is_caught_by_audit_verify(e2e: E2E, tmp_path: Path) -> None:
    """The live chain verifies; a copy with one row changed names that row and exits 1."""
    daemon = e2e.daemon
    ok = daemon.cli("audit", "verify")
    assert (0, True) == (ok.code, "audit trail intact" in ok.out), ok
    copy = tmp_path / "journal-copy.sqlite3"
    with sqlite3.connect(daemon.journal.path) as live, sqlite3.connect(copy) as target:
        live.backup(target)
    assert 0 == daemon.cli("audit", "verify", "--journal", str(copy)).code
    with sqlite3.connect(copy) as conn:
        row = conn.execute("SELECT id FROM audit WHERE what = 'approve' ORDER BY id LIMIT 1").fetchone()[0]
        conn.execute("UPDATE audit SET who = 'nobody' WHERE id = ?", (row,))
    broken = daemon.cli("audit", "verify", "--journal", str(copy))
    assert 1 == broken.code
    assert f"audit trail broken at row {row}: row {row} was changed after it was written" in broken.err


def test_abort_rolls_back_and_resolve_sets_the_phase(e2e: E2E) -> None:
    """kim aborts a slow handover: it stops at a safe point and rolls back (FAILED); kim may not
    resolve; root does, after checking: OPEN, journaled, an alert until acked."""
    daemon, lab, office = e2e.daemon, e2e.lab, "seoul-suwon"
    lab("slow", device=f"{office}-core1", seconds=2.0)
    try:
        started = daemon.cli("handover", office, "--reason", "drill", "--yes", "--no-follow", "--json")
        assert 0 == started.code, started
        run_id = started.json()["run_id"]
        wait_for(lambda: daemon.journal.steps(run_id), RUN_TIMEOUT_S, "the run's first step")
        aborted = cli_as(e2e, "baton-t-kim", "abort", run_id, "--reason", "wrong office")
    finally:
        lab("slow", device=f"{office}-core1", seconds=0.0)
    assert 0 == aborted.code, aborted
    assert "stops at the next safe point and rolls back" in aborted.out
    daemon.wait_phase(office, "FAILED", RUN_TIMEOUT_S)
    [run] = daemon.journal.runs(office)
    assert "ok" != run["result"]

    refused = cli_as(e2e, "baton-t-kim", "resolve", office, "--phase", "OPEN", "--reason", "x", "--yes")
    assert 77 == refused.code, refused
    assert "needs the admin role" in refused.err
    resolved = daemon.cli(
        "resolve", office, "--phase", "OPEN", "--reason", "devices checked by hand", "--yes"
    )
    assert 0 == resolved.code, resolved
    assert "OPEN" == daemon.office(office)["phase"]
    alerts = {(a["alert"], a["office"]) for a in daemon.cli("status", "--json").json()["alerts"]}
    assert ("phase_resolved", office) in alerts
    assert 0 == daemon.cli("ack", office, "--reason", "reviewed").code
    alerts = {(a["alert"], a["office"]) for a in daemon.cli("status", "--json").json()["alerts"]}
    assert ("phase_resolved", office) not in alerts


def test_a_grant_ends_on_time_and_a_reload_renews_it(e2e: E2E) -> None:
    """lee is granted operator for a few seconds (reload): allowed, then the end is journaled and
    lee is refused; another reload extends it and lee is allowed again."""
    daemon, lab = e2e.daemon, e2e.lab
    ack = ("ack", "seoul-bangbae", "--reason", "x")
    assert 77 == cli_as(e2e, "baton-t-lee", *ack).code  # no grant yet

    def grant_lee(until: float) -> None:
        data = yaml.safe_load(lab.config_path.read_text())
        grants = [g for g in data["operators"]["grants"] if g["to"] != "baton-t-lee"]
        when = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(until))
        grants.append(
            {"to": "baton-t-lee", "role": "operator", "scope": ["office:seoul-bangbae"], "until": when}
        )
        data["operators"]["grants"] = grants
        lab.config_path.write_text(yaml.safe_dump(data, sort_keys=False))
        done = len(daemon.events("reload.done"))
        daemon.reload()
        wait_for(lambda: len(daemon.events("reload.done")) > done, 30, "reload.done")

    grant_lee(time.time() + 6)
    assert 1 == cli_as(e2e, "baton-t-lee", *ack).code  # allowed: nothing to lift (409)
    lee = "baton-t-lee/operator/office:seoul-bangbae"
    wait_for(
        lambda: daemon.journal.rows(
            "SELECT id FROM audit WHERE kind = 'decision' AND instr(detail, ?) > 0",
            json.dumps({"expired_grants": [lee]})[1:-1],
        ),
        30,
        "the grant's end, journaled",
    )
    refused = cli_as(e2e, "baton-t-lee", *ack)
    assert 77 == refused.code, refused
    assert f"the grant {lee} ended at" in refused.err
    grants = cli_as(e2e, "baton-t-lee", "grants", "--json").json()
    assert [(lee, False)] == [(g["id"], g["live"]) for g in grants["grants"]]

    grant_lee(time.time() + 3600)
    assert 1 == cli_as(e2e, "baton-t-lee", *ack).code


def test_a_dry_run_shows_no_secret(e2e: E2E) -> None:
    """The plan API's diff of a lab device: the trap community next to the change is masked."""
    plan = ApiClient(socket_path=e2e.daemon.socket).get("/v1/offices/seoul-gwacheon/plan")
    diffs = "\n".join(d["diff"] or "" for d in plan["devices"])
    assert diffs, plan
    assert "<community>***</community>" in diffs.replace(" ", "")
    assert [] == find_secrets(lab_secrets(e2e.lab.dir), {"plan": json.dumps(plan)})
