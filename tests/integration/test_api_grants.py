"""Who may do what, through the real API: role × command × scope → allowed or 403.

On the unix socket every request comes from a process running as another local user (real peer
credentials: the kernel says who asks, and which unix groups they are in); on TCP from tokens.
A refusal is 403 with one sentence naming the role and scope needed, is audited, and changes
nothing. A grant that ends while a request waits withdraws the request.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any

import aiohttp
import pytest

from baton.api import Listeners, create_app, start_listeners
from baton.config import ApiSettings, Config, VantageSettings
from baton.controller import Controller, config_event
from baton.core.events import OfficeObserved, Ticked
from baton.core.grants import Grant, Grants, Role
from baton.core.model import ApprovalRule, OfficeVerdict, Policy, RunKind, SecretRef, State
from baton.journal import Journal
from baton.operators import OperatorSettings
from baton.secrets import resolve
from tests.integration.test_api import INVENTORY, ApiTestBackend, RecordingRunner
from tests.peers.users import as_user, ensure_users

SCRIPT = Path(__file__).with_name("api_as_user.py")
OPS_TOKEN = "ops-token-" + "5" * 24
DUTY_TOKEN = "duty-token-" + "7" * 24
USERS = {
    "baton-t-kim": ["baton-t-api"],
    "baton-t-lee": ["baton-t-api"],
    "baton-t-ahn": ["baton-t-api", "baton-t-leads"],
    "baton-t-park": ["baton-t-api"],
    "baton-t-out": ["baton-t-api"],
    "baton-t-nosock": [],  # not in the socket's group: the kernel refuses the connection
}
RESERVE_FOR_S = 3600.0
RESERVE = "group:reserve/operator/region:seoul"


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def grants(now: float) -> Grants:
    return Grants(
        grants=(
            Grant("group:noc-gc", Role.OPERATOR, ("office:seoul-geumcheon",)),
            Grant("baton-t-lee", Role.VIEWER, ("region:seoul",)),
            Grant("group:baton-t-leads", Role.ADMIN, ("all",)),  # a unix group of the peer
            Grant("group:reserve", Role.OPERATOR, ("region:seoul",), until=now + RESERVE_FOR_S),
            Grant("token:api-ops", Role.VIEWER, ("all",)),
            Grant("token:api-duty", Role.OPERATOR, ("region:gyeonggi",)),
        ),
        groups=MappingProxyType(
            {"noc-gc": frozenset({"baton-t-kim"}), "reserve": frozenset({"baton-t-park"})}
        ),
        enforced=True,
    )


@dataclass
class Served:
    backend: ApiTestBackend
    listeners: Listeners
    clock: Clock

    @property
    def socket(self) -> Path:
        return self.listeners.unix_socket


@pytest.fixture
def workdir() -> Iterator[Path]:
    directory = Path(tempfile.mkdtemp(prefix="baton-grants-", dir="/tmp"))
    directory.chmod(0o755)  # the test users reach the socket below it
    try:
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
async def served(workdir: Path) -> AsyncIterator[Served]:
    ensure_users(USERS)
    clock = Clock()
    operators = OperatorSettings(grants(clock.now))
    seoul = ("seoul-bangbae", "seoul-geumcheon")
    policy = Policy(
        approvals=(ApprovalRule(seoul, (RunKind.HANDOVER,), 1, 600.0),),
        grant_terms=operators.grants.terms(),
    )
    journal = Journal.open(workdir / "journal.sqlite3")
    runner = RecordingRunner(journal, INVENTORY)
    controller = Controller(State(offices=MappingProxyType({})), policy, journal, runner, clock)
    controller.apply(config_event({o.id: o.alternates for o in INVENTORY.offices.values()}, False, policy))
    config = Config(
        policy=policy,
        vantage=VantageSettings("vantage-seoul-1", "seoul-bangbae"),
        inventory=workdir,
        playbooks=workdir,
        operators=operators,
    )
    backend = ApiTestBackend(controller, journal, INVENTORY, config, runner)
    for name, token in (("api-ops", OPS_TOKEN), ("api-duty", DUTY_TOKEN)):
        (workdir / name).write_text(token + "\n")
    settings = ApiSettings(
        unix_socket=workdir / "run" / "api.sock",
        socket_group="baton-t-api",
        tcp_listen="127.0.0.1:0",
        tokens=tuple(SecretRef("file", str(workdir / n)) for n in ("api-ops", "api-duty")),
    )
    app = create_app(backend, tokens=(), allow_peercred=True, clock=clock)
    listeners = await start_listeners(app, settings, resolve)
    try:
        yield Served(backend, listeners, clock)
    finally:
        await listeners.close()
        journal.close()


async def as_peer(served: Served, user: str, requests: list[tuple[str, str, Any]]) -> list[tuple[int, Any]]:
    """The requests, one connection each, from a process running as `user`."""
    process = await asyncio.create_subprocess_exec(
        *as_user(user),
        str(SCRIPT),
        str(served.socket),
        json.dumps(requests),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(process.communicate(), timeout=60)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert 0 == process.returncode, err.decode()
    return [(status, body) for status, body in json.loads(out)]


async def over_tcp(
    served: Served, token: str | None, requests: list[tuple[str, str, Any]]
) -> list[tuple[int, Any]]:
    assert served.listeners.tcp is not None
    base = f"http://127.0.0.1:{served.listeners.tcp[1]}"
    headers = {} if token is None else {"Authorization": f"Bearer {token}"}
    results = []
    async with aiohttp.ClientSession() as session:
        for method, path, body in requests:
            async with session.request(method, base + path, json=body, headers=headers) as response:
                results.append((response.status, json.loads(await response.text())))
    return results


OFFICES = "/v1/offices"
# name → (request, the status an allowed request gets). Every allowed one is refused by the core
# or is a read, so the table changes no state and its rows do not depend on each other.
COMMANDS: dict[str, tuple[tuple[str, str, Any], int]] = {
    "status": (("GET", "/v1/status", None), 200),
    "read gc": (("GET", f"{OFFICES}/seoul-geumcheon", None), 200),
    "read sw": (("GET", f"{OFFICES}/suwon-paldal", None), 200),
    "ack gc": (("POST", f"{OFFICES}/seoul-geumcheon/ack", {"reason": "x"}), 409),
    "ack bb": (("POST", f"{OFFICES}/seoul-bangbae/ack", {"reason": "x"}), 409),
    "ack sw": (("POST", f"{OFFICES}/suwon-paldal/ack", {"reason": "x"}), 409),
    "handover gc": (
        ("POST", f"{OFFICES}/seoul-geumcheon/handover", {"reason": "x", "to": "suwon-paldal"}),
        409,
    ),
    "handover sw": (
        ("POST", f"{OFFICES}/suwon-paldal/handover", {"reason": "x", "to": "seoul-bangbae"}),
        409,
    ),
    "handback gc": (("POST", f"{OFFICES}/seoul-geumcheon/handback", {"reason": "x"}), 409),
    "plan gc": (("GET", f"{OFFICES}/seoul-geumcheon/plan", None), 200),
    "approve bb": (("POST", "/v1/approvals/approval-seoul-bangbae-1/approve", {}), 409),
    "deny bb": (("POST", "/v1/approvals/approval-seoul-bangbae-1/deny", {"reason": "no"}), 409),
    "resolve gc": (("POST", f"{OFFICES}/seoul-geumcheon/resolve", {"phase": "OPEN", "reason": "x"}), 409),
    "resume": (("POST", "/v1/resume", {}), 409),
    "shadow off": (("POST", "/v1/shadow", {"on": False}), 409),
    "audit": (("GET", "/v1/audit?limit=1", None), 200),
}
ALLOWED: dict[str, set[str]] = {
    "baton-t-kim": {"status", "read gc", "ack gc", "handover gc", "handback gc", "plan gc", "audit"},
    "baton-t-lee": {"status", "read gc", "audit"},
    "baton-t-ahn": set(COMMANDS),
    "baton-t-park": {
        "status",
        "read gc",
        "ack gc",
        "ack bb",
        "handover gc",
        "handback gc",
        "plan gc",
        "approve bb",
        "deny bb",
        "audit",
    },
    "baton-t-out": set(),
    "token:api-ops": {"status", "read gc", "read sw", "audit"},
    "token:api-duty": {"status", "read sw", "ack sw", "handover sw", "audit"},
}
TOKENS = {"token:api-ops": OPS_TOKEN, "token:api-duty": DUTY_TOKEN}


async def test_role_command_scope_over_the_socket_and_tcp(served: Served) -> None:
    """Every person × every command: exactly what their grants allow, 403 for the rest (audited),
    and no state changed by any of it."""
    names = list(COMMANDS)
    requests = [COMMANDS[n][0] for n in names]
    before = served.backend.controller.state
    results: dict[str, list[tuple[int, Any]]] = {}
    for who in ALLOWED:
        if who.startswith("token:"):
            results[who] = await over_tcp(served, TOKENS[who], requests)
        else:
            results[who] = await as_peer(served, who, requests)
    table = {
        (who, name): status
        for who, rows in results.items()
        for name, (status, _) in zip(names, rows, strict=True)
    }
    expected = {
        (who, name): (COMMANDS[name][1] if name in ALLOWED[who] else 403) for who in ALLOWED for name in names
    }
    assert expected == table
    assert before == served.backend.controller.state
    refusals = sum(1 for status in table.values() if status == 403)
    audited = [r for r in served.backend.journal.audit_records() if r.kind == "refused"]
    assert refusals == len(audited)
    assert served.backend.journal.verify_audit().ok


async def test_a_refusal_names_the_role_and_the_scope_it_needs(served: Served) -> None:
    [(status, body)] = await as_peer(served, "baton-t-kim", [COMMANDS["ack bb"][0]])
    assert 403 == status
    assert (
        "baton-t-kim may not acknowledge seoul-bangbae: that needs the operator role for office "
        "seoul-bangbae or region seoul (or all offices); they hold operator for office seoul-geumcheon"
    ) == body["error"]
    [(status, body)] = await as_peer(served, "baton-t-lee", [COMMANDS["resume"][0]])
    assert (
        403,
        "baton-t-lee may not resume automation: that needs the admin role for all offices; they hold "
        "viewer for region seoul",
    ) == (status, body["error"])
    [(status, body)] = await as_peer(served, "baton-t-out", [COMMANDS["status"][0]])
    assert 403 == status
    assert "they hold no live grant" in body["error"]


async def test_the_socket_says_who_asks_and_the_kernel_keeps_others_out(served: Served) -> None:
    """A command is journaled as the peer user; a user outside the socket's group cannot connect."""
    [(status, _)] = await as_peer(served, "baton-t-kim", [COMMANDS["ack gc"][0]])
    assert 409 == status
    [command] = served.backend.journal.commands()
    assert ("baton-t-kim", "ack") == (command.who, command.command)
    assert [(-1, "permission denied")] == await as_peer(served, "baton-t-nosock", [COMMANDS["status"][0]])


async def test_no_request_without_identity_is_accepted(served: Served) -> None:
    """TCP without a token, with a wrong one or with bytes that are not text: 401 on every route."""
    requests = [request for request, _ in COMMANDS.values()]
    for token in (None, "wrong", OPS_TOKEN[:-1]):
        results = await over_tcp(served, token, requests)
        assert [401] * len(requests) == [status for status, _ in results]
    assert [] == served.backend.journal.commands()


async def test_a_grant_that_ends_while_a_request_waits(served: Served) -> None:
    """The reserve's grant ends while park's handover waits for approval: the core journals the
    end, withdraws the request, the approval is refused with why, and park is refused from then on."""
    backend, clock = served.backend, served.clock
    backend.controller.apply(OfficeObserved("seoul-geumcheon", OfficeVerdict.HEALTHY))
    [(status, body)] = await as_peer(
        served, "baton-t-park", [("POST", f"{OFFICES}/seoul-bangbae/handover", {"reason": "sealed"})]
    )
    assert 202 == status, body
    approval_id = body["approval_id"]
    assert backend.controller.state.offices["seoul-bangbae"].approval.grant == RESERVE  # type: ignore[union-attr]
    clock.now += RESERVE_FOR_S + 1
    backend.controller.apply(Ticked("seoul-bangbae"))  # the service's tick
    assert (RESERVE,) == backend.controller.state.expired_grants
    [(status, body)] = await as_peer(
        served, "baton-t-ahn", [("POST", f"/v1/approvals/{approval_id}/approve", {})]
    )
    assert (
        409,
        f"approval {approval_id} by baton-t-ahn refused: approval {approval_id} withdrawn: the grant "
        f"{RESERVE} of baton-t-park ended",
    ) == (status, body["error"])
    [(status, body)] = await as_peer(served, "baton-t-park", [COMMANDS["ack gc"][0]])
    assert 403 == status
    assert f"and the grant {RESERVE} ended at" in body["error"]
    ended = [r for r in backend.journal.audit_records() if r.detail.get("expired_grants")]
    assert [[RESERVE]] == [r.detail["expired_grants"] for r in ended]
    assert [] == backend.runner.started


async def test_grants_shows_who_may_do_what_and_until_when(served: Served) -> None:
    [(status, mine)] = await as_peer(served, "baton-t-park", [("GET", "/v1/grants", None)])
    assert 200 == status
    assert (False, ["group:reserve"]) == (mine["all"], [g["to"] for g in mine["grants"]])
    assert mine["grants"][0]["until"] == pytest.approx(served.clock.now + RESERVE_FOR_S)
    [(status, every)] = await as_peer(served, "baton-t-ahn", [("GET", "/v1/grants", None)])
    assert (200, True, 6) == (status, every["all"], len(every["grants"]))
    assert ["baton-t-park"] == next(g for g in every["grants"] if g["to"] == "group:reserve")["members"]


async def test_reload_applies_changed_grants(served: Served) -> None:
    """The API reads the grants in force on every request: new ones apply at once."""
    [(status, _)] = await as_peer(served, "baton-t-out", [COMMANDS["status"][0]])
    assert 403 == status
    config = served.backend.config
    more = replace(
        config.operators.grants,
        grants=(*config.operators.grants.grants, Grant("baton-t-out", Role.VIEWER, ("all",))),
    )
    served.backend.config = replace(config, operators=OperatorSettings(more))
    [(status, _)] = await as_peer(served, "baton-t-out", [COMMANDS["status"][0]])
    assert 200 == status


def test_the_client_script_needs_nothing_but_the_stdlib() -> None:
    """It runs as users who cannot reach the venv's own interpreter."""
    imported = {
        line.split()[1].split(".")[0]
        for line in SCRIPT.read_text().splitlines()
        if line.startswith("import ")
    }
    assert imported <= set(sys.stdlib_module_names)
