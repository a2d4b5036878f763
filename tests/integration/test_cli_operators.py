"""The operators' commands of the CLI against the real API: approvals, approve, deny, abort,
resolve, grants, audit and audit verify — what a person sees, and the exit codes."""

from __future__ import annotations

import asyncio
import io
import json
import sqlite3
import sys
from dataclasses import replace
from pathlib import Path
from types import MappingProxyType

import pytest

from baton.cli import main
from baton.controller import config_event
from baton.core.grants import Grant, Grants, Role
from baton.core.model import ApprovalRule, Policy, RunKind
from baton.operators import OperatorSettings
from tests.integration.test_api import INVENTORY, ME, Served, served, workdir

# The API fixtures of test_api, used here by name.
__all__ = ["served", "workdir"]

RULE = Policy(approvals=(ApprovalRule(("seoul-geumcheon",), (RunKind.HANDOVER,), 1, 600.0),))


@pytest.fixture
def typed(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """What the operator types at the confirmation prompt (stdin is a terminal)."""
    answers: list[str] = []

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

        def readline(self, *_: object) -> str:
            return answers.pop(0) + "\n" if answers else "\n"

    monkeypatch.setattr(sys, "stdin", Terminal())
    return answers


async def baton(served: Served, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    argv = [*args, "--socket", str(served.listeners.unix_socket)]
    code = await asyncio.get_running_loop().run_in_executor(None, main, argv)
    out, err = capsys.readouterr()
    return code, out, err


def with_rule(served: Served) -> None:
    chains = {o.id: o.alternates for o in INVENTORY.offices.values()}
    served.backend.controller.apply(config_event(chains, False, RULE))


async def test_a_handover_waits_and_someone_else_approves(
    served: Served, capsys: pytest.CaptureFixture[str]
) -> None:
    with_rule(served)
    code, out, _ = await baton(served, capsys, "handover", "seoul-geumcheon", "--reason", "sealed", "--yes")
    assert 0 == code
    [approval] = [o.approval for o in served.backend.controller.state.offices.values() if o.approval]
    assert f"waiting for approval {approval.id}: another operator runs `baton approve {approval.id}`" in out
    code, out, _ = await baton(served, capsys, "approvals")
    assert 0 == code
    assert ["ID", "OFFICE", "RUN", "ASKED", "BY", "APPROVED", "EXPIRES", "REASON"] == out.splitlines()[
        0
    ].split()
    assert f"{approval.id}  seoul-geumcheon  handover → seoul-bangbae  {ME}" in out
    code, _, err = await baton(served, capsys, "approve", approval.id)
    assert (1, True) == (code, f"{ME} asked for it; approvals come from other people" in err)
    code, _, err = await baton(served, capsys, "deny", approval.id, "--reason", "on second thoughts")
    assert 0 == code
    code, out, _ = await baton(served, capsys, "approvals")
    assert "no run waits for approvals" in out


async def test_resolve_asks_for_the_office_id(
    served: Served, capsys: pytest.CaptureFixture[str], typed: list[str]
) -> None:
    typed.append("seoul-bangbae")  # not the office
    code, _, err = await baton(
        served, capsys, "resolve", "seoul-geumcheon", "--phase", "CLOSED", "--reason", "x"
    )
    assert (1, True) == (code, "not confirmed (expected 'seoul-geumcheon'); nothing changed" in err)
    assert "OPEN" == served.backend.controller.state.offices["seoul-geumcheon"].phase
    typed.append("seoul-geumcheon")
    code, out, err = await baton(
        served, capsys, "resolve", "seoul-geumcheon", "--phase", "CLOSED", "--reason", "checked by hand"
    )
    assert 0 == code, err
    assert "Type the office id to confirm" in err
    assert "set from OPEN to CLOSED by" in out
    assert "CLOSED" == served.backend.controller.state.offices["seoul-geumcheon"].phase


async def test_abort_of_a_run_that_is_not_running(served: Served, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = await baton(served, capsys, "abort", "handover-nope-1", "--reason", "x")
    assert (64, True) == (code, "no run 'handover-nope-1'" in err)


async def test_abort_follows_the_run_until_it_rolled_back(
    served: Served, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = await baton(
        served, capsys, "handover", "seoul-geumcheon", "--reason", "sealed", "--yes", "--no-follow"
    )
    assert 0 == code
    run_id = served.backend.controller.state.offices["seoul-geumcheon"].run_id
    assert run_id is not None
    loop = asyncio.get_running_loop()
    # The run (recorded, not run) ends failed once the abort reached it, as the runner would.
    loop.call_later(1.0, served.backend.finish_run, run_id, False)
    code, out, _ = await baton(served, capsys, "abort", run_id, "--reason", "wrong office")
    assert 0 == code
    assert "stops at the next safe point and rolls back" in out
    assert [run_id] == [a.run_id for a in served.backend.runner.aborted]


async def test_grants_shows_who_may_do_what(served: Served, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = await baton(served, capsys, "grants")
    assert (0, True) == (code, "no operators are configured" in out)
    grants = Grants(
        (
            Grant(ME, Role.ADMIN, ("all",)),
            Grant("group:reserve", Role.OPERATOR, ("region:seoul",), until=1_900_000_000.0),
        ),
        MappingProxyType({"reserve": frozenset({"park", "choi"})}),
        enforced=True,
    )
    served.backend.config = replace(served.backend.config, operators=OperatorSettings(grants))
    code, out, _ = await baton(served, capsys, "grants")
    assert 0 == code
    lines = out.splitlines()
    assert f"you: {ME}" in lines[0]
    assert ["WHO", "ROLE", "SCOPE", "UNTIL", "STATE", "MEMBERS"] == lines[1].split()
    assert "group:reserve  operator  region:seoul" in out
    assert "choi, park" in out


async def test_audit_lines_and_verify(
    served: Served, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    await baton(served, capsys, "pause", "--reason", "maintenance window")
    code, out, _ = await baton(served, capsys, "audit", "--json")
    assert 0 == code
    rows = [json.loads(line) for line in out.splitlines()]
    assert [("command", ME, "pause", "maintenance window")] == [
        (r["kind"], r["who"], r["what"], r["reason"]) for r in rows if r["kind"] == "command"
    ]
    code, out, _ = await baton(served, capsys, "audit", "--since", "1h")
    assert (0, True) == (code, "maintenance window" in out)
    code, out, _ = await baton(served, capsys, "audit", "verify")
    assert (0, True) == (code, "audit trail intact" in out)
    journal = Path(served.backend.journal.path)
    copy = tmp_path / "copy.sqlite3"
    with sqlite3.connect(journal) as live, sqlite3.connect(copy) as target:
        live.backup(target)
    with sqlite3.connect(copy) as conn:
        conn.execute("UPDATE audit SET reason = 'nothing to see' WHERE what = 'pause'")
    code, _, err = await baton(served, capsys, "audit", "verify", "--journal", str(copy))
    assert 1 == code
    assert "audit trail broken at row" in err
