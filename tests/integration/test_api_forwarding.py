"""A command given on a follower is forwarded to the leader's TCP API, over real HTTP on loopback:
two APIs in one process (a follower v1, a leader v2), each over its own real Controller and journal.

The leader authenticates the follower (the vantages' credential, api.peer_token), checks the
operator's own grants and journals the command as theirs, via the follower; nobody else can name
an operator; a forwarded request is never forwarded again; an unreachable leader leaves today's
refusal (its name and address), saying it was tried; the credential is never shown.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import io
import ipaddress
import json
import os
import pwd
import socket
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import structlog

from baton.api import (
    FORWARD_TIMEOUT_S,
    FORWARDED_HEADER,
    ApiSetupError,
    Listeners,
    create_app,
    start_listeners,
)
from baton.config import ApiSettings, EtcdSettings, VantageSettings
from baton.core.events import LeaseChanged
from baton.core.grants import Grant, Grants, Role
from baton.core.model import SecretRef
from baton.logs import configure
from baton.operators import OperatorSettings
from baton.secrets import resolve
from tests.integration.test_api import TOKEN, ApiTestBackend, make_backend, short_tmpdir

PEER_TOKEN = "vantages-peer-credential-" + "9" * 24
ME = pwd.getpwuid(os.getuid()).pw_name
VANTAGES = ("v1", "v2", "v3")
ETCD = EtcdSettings(endpoints=("http://127.0.0.1:2379",), vantages=VANTAGES)


@dataclass
class VantageBackend(ApiTestBackend):
    """The test backend with a leadership view, as the daemon's read model gives it."""

    leadership: dict[str, Any] = field(default_factory=dict)

    def status_extra(self) -> dict[str, Any]:
        return {**super().status_extra(), "leadership": dict(self.leadership)}


@dataclass
class Vantage:
    backend: VantageBackend
    listeners: Listeners

    @property
    def address(self) -> str:
        assert self.listeners.tcp is not None
        host, port = self.listeners.tcp
        return f"{host}:{port}"


async def serve(directory: Path, name: str, *, peer_token: str | None = PEER_TOKEN, **api: Any) -> Vantage:
    os.mkdir(directory)
    base = make_backend(directory)
    config = replace(base.config, vantage=VantageSettings(name, "seoul-bangbae"), etcd=ETCD)
    backend = VantageBackend(base.controller, base.journal, base.inventory, config, base.runner)
    (directory / "api-ops").write_text(TOKEN + "\n")
    refs: dict[str, SecretRef] = {}
    if peer_token is not None:
        (directory / "peer-token").write_text(peer_token + "\n")
        refs["peer_token"] = SecretRef("file", str(directory / "peer-token"))
    settings = ApiSettings(
        unix_socket=directory / "api.sock",
        tcp_listen="127.0.0.1:0",
        tokens=(SecretRef("file", str(directory / "api-ops")),),
        **refs,
        **api,
    )
    listeners = await start_listeners(create_app(backend, tokens=(), allow_peercred=True), settings, resolve)
    return Vantage(backend, listeners)


def lead(leader: Vantage, *followers: Vantage) -> None:
    """`leader` holds the lease; the others follow it and know its API's address."""
    name = leader.backend.config.vantage.id
    leader.backend.leadership = {"held": True, "leader": name, "leader_api": leader.address}
    leader.backend.controller.apply(LeaseChanged(held=True, epoch=7, leader=name))
    for follower in followers:
        follower.backend.leadership = {"held": False, "leader": name, "leader_api": leader.address}
        follower.backend.controller.apply(LeaseChanged(held=False, leader=name))


@pytest.fixture
def workdir() -> Iterator[Path]:
    yield from short_tmpdir()


@pytest.fixture
async def pair(workdir: Path) -> AsyncIterator[tuple[Vantage, Vantage]]:
    """(follower v1, leader v2), both forwarding with the same credential."""
    follower = await serve(workdir / "v1", "v1")
    leader = await serve(workdir / "v2", "v2")
    lead(leader, follower)
    try:
        yield follower, leader
    finally:
        for vantage in (follower, leader):
            await vantage.listeners.close()
            vantage.backend.journal.close()


async def call(
    vantage: Vantage,
    method: str,
    path: str,
    *,
    body: Any = None,
    token: str | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, Any]]:
    """One request: on the unix socket (as this process's user), or on TCP with `token`."""
    sent = dict(headers or {})
    if token is None:
        connector: aiohttp.BaseConnector | None = aiohttp.UnixConnector(
            path=str(vantage.listeners.unix_socket)
        )
        base = "http://localhost"
    else:
        connector, base = None, f"http://{vantage.address}"
        sent["Authorization"] = f"Bearer {token}"
    async with (
        aiohttp.ClientSession(connector=connector) as session,
        session.request(method, base + path, json=body, headers=sent) as response,
    ):
        answer: dict[str, Any] = json.loads(await response.text())
        return response.status, answer


def forwarded_for(operator: str, via: str = "v1", groups: tuple[str, ...] = ()) -> dict[str, str]:
    return {FORWARDED_HEADER: json.dumps({"operator": operator, "groups": list(groups), "via": via})}


# --- forwarded, carried out and audited on the leader ---------------------------------------------


async def test_a_pause_on_a_follower_is_carried_out_by_the_leader_and_audited_there(
    pair: tuple[Vantage, Vantage],
) -> None:
    """The leader pauses, journals the operator (not the follower) and "via v1"; the follower's
    answer is the leader's, saying it was forwarded; the follower decides nothing itself."""
    follower, leader = pair
    status, body = await call(follower, "POST", "/v1/pause", body={"reason": "core swap tonight"})
    assert 200 == status, body
    said = f"forwarded to leader v2 at {leader.address}: "
    assert body["reason"].startswith(said)
    assert {"leader": "v2", "address": leader.address, "via": "v1"} == body["forwarded"]
    assert leader.backend.controller.state.paused
    assert not follower.backend.controller.state.paused  # until the leader's report reaches it
    [command] = leader.backend.journal.commands()
    assert (ME, "pause", "core swap tonight") == (command.who, command.command, command.reason)
    [row] = [r for r in leader.backend.journal.audit_records() if r.kind == "command"]
    assert (ME, "pause", "v1", True) == (row.who, row.what, row.detail["args"]["via"], row.detail["accepted"])
    assert [] == follower.backend.journal.commands()
    assert leader.backend.journal.verify_audit().ok


async def test_a_declared_handover_is_forwarded_and_its_run_read_from_the_leader(
    pair: tuple[Vantage, Vantage],
) -> None:
    """A handover declared on a follower starts the leader's run (202 with its id); the follower,
    which has no such run, reads it from the leader (what `baton handover` follows)."""
    follower, leader = pair
    status, body = await call(
        follower, "POST", "/v1/offices/seoul-geumcheon/handover", body={"reason": "fire alarm"}
    )
    assert 202 == status, body
    [started] = leader.backend.runner.started
    assert (started.run_id, "seoul-geumcheon", ME) == (body["run_id"], started.office, started.who)
    assert [] == follower.backend.runner.started
    assert "HANDING_OVER" == body["office"]["phase"]
    status, run = await call(follower, "GET", f"/v1/runs/{body['run_id']}")
    assert (200, "running", "v2") == (status, run["status"], run["forwarded"]["leader"])
    assert {"gc-core1", "gc-agg1", "gc-olt1"} == set(run["progress"])


async def test_approvals_are_forwarded_with_each_operators_own_name(pair: tuple[Vantage, Vantage]) -> None:
    """approve/deny are commands like any other: forwarded, decided by the leader's core."""
    follower, leader = pair
    status, body = await call(follower, "POST", "/v1/approvals/approval-nowhere-1/approve", body={})
    assert 404 == status
    assert body["error"].startswith(f"forwarded to leader v2 at {leader.address}: no approval")


async def test_the_leader_checks_the_operators_own_grants(workdir: Path) -> None:
    """Grants are the leader's to check: an operator who may only read is refused there (403,
    audited with via), though the follower lets everyone in."""
    follower = await serve(workdir / "v1", "v1")
    leader = await serve(workdir / "v2", "v2")
    grants = Grants(grants=(Grant(ME, Role.VIEWER, ("all",)),), enforced=True)
    leader.backend.config = replace(leader.backend.config, operators=OperatorSettings(grants))
    lead(leader, follower)
    try:
        status, body = await call(follower, "POST", "/v1/pause", body={"reason": "let me"})
        assert 403 == status
        assert body["error"].startswith(f"forwarded to leader v2 at {leader.address}: ")
        assert not leader.backend.controller.state.paused
        [row] = leader.backend.journal.audit_records()
        assert ("refused", ME, "pause", {"via": "v1"}) == (row.kind, row.who, row.what, row.detail)
    finally:
        for vantage in (follower, leader):
            await vantage.listeners.close()
            vantage.backend.journal.close()


# --- nobody else may name an operator -------------------------------------------------------------


async def test_an_operator_token_cannot_name_another_operator(pair: tuple[Vantage, Vantage]) -> None:
    """Baton-Forwarded with an operator's token (not the vantages' credential) is refused, 403,
    audited under the token's own name; nothing is decided."""
    _, leader = pair
    status, body = await call(
        leader, "POST", "/v1/pause", body={"reason": "x"}, token=TOKEN, headers=forwarded_for("root")
    )
    assert 403 == status
    assert "only a vantage" in body["error"]
    assert not leader.backend.controller.state.paused
    [row] = leader.backend.journal.audit_records()
    assert ("refused", "token:api-ops", "forward") == (row.kind, row.who, row.what)


async def test_a_unix_socket_peer_cannot_name_another_operator(pair: tuple[Vantage, Vantage]) -> None:
    """On the unix socket the kernel says who asks: a Baton-Forwarded header there is refused."""
    _, leader = pair
    status, body = await call(
        leader, "POST", "/v1/pause", body={"reason": "x"}, headers=forwarded_for("root")
    )
    assert 403 == status
    assert f"{ME} named another operator" in body["error"]
    assert not leader.backend.controller.state.paused
    assert [ME] == [r.who for r in leader.backend.journal.audit_records()]


async def test_a_wrong_vantage_credential_is_unauthorized(pair: tuple[Vantage, Vantage]) -> None:
    """A forged forward with a credential the leader does not know: 401, nothing journaled."""
    _, leader = pair
    status, _ = await call(
        leader,
        "POST",
        "/v1/pause",
        body={"reason": "x"},
        token=PEER_TOKEN + "x",
        headers=forwarded_for("root"),
    )
    assert 401 == status
    assert not leader.backend.controller.state.paused
    assert [] == leader.backend.journal.audit_records()


async def test_the_vantage_credential_is_nobodys_identity(pair: tuple[Vantage, Vantage]) -> None:
    """Without an operator to carry, the vantages' credential opens nothing; with one, it opens
    the commands and run reads a vantage forwards, not every read."""
    _, leader = pair
    status, body = await call(leader, "POST", "/v1/pause", body={"reason": "x"}, token=PEER_TOKEN)
    assert 403 == status
    assert "nobody's identity" in body["error"]
    status, body = await call(leader, "GET", "/v1/audit", token=PEER_TOKEN, headers=forwarded_for(ME))
    assert 403 == status
    assert "not GET /v1/audit" in body["error"]
    assert not leader.backend.controller.state.paused


@pytest.mark.parametrize(
    "claim",
    [
        "not json",
        json.dumps(["alice"]),
        json.dumps({"operator": "", "via": "v1"}),
        json.dumps({"operator": "alice", "via": "v1", "groups": "wheel"}),
        json.dumps({"operator": "alice\u202e", "via": "v1"}),
        json.dumps({"operator": "alice", "via": "v1", "admin": True}),
        json.dumps({"operator": "alice"}),
    ],
)
async def test_a_malformed_forward_claim_is_refused(pair: tuple[Vantage, Vantage], claim: str) -> None:
    """Even from a vantage, the operator's name must be plain text, and the vantage named."""
    _, leader = pair
    status, _ = await call(
        leader, "POST", "/v1/pause", body={"reason": "x"}, token=PEER_TOKEN, headers={FORWARDED_HEADER: claim}
    )
    assert 400 == status
    assert not leader.backend.controller.state.paused


async def test_a_vantage_not_listed_in_etcd_vantages_is_refused(pair: tuple[Vantage, Vantage]) -> None:
    _, leader = pair
    status, body = await call(
        leader,
        "POST",
        "/v1/pause",
        body={"reason": "x"},
        token=PEER_TOKEN,
        headers=forwarded_for(ME, via="v9"),
    )
    assert (403, "vantage v9 is not one of etcd.vantages (v1, v2, v3)") == (status, body["error"])


# --- never twice ----------------------------------------------------------------------------------


async def test_a_forwarded_request_is_never_forwarded_again(pair: tuple[Vantage, Vantage]) -> None:
    """A follower given a forwarded command refuses it (it does not lead) instead of passing it on."""
    follower, leader = pair
    status, body = await call(
        follower,
        "POST",
        "/v1/pause",
        body={"reason": "x"},
        token=PEER_TOKEN,
        headers=forwarded_for(ME, via="v3"),
    )
    assert 409 == status
    assert "does not hold the lease" in body["error"]
    assert "forwarded" not in body["error"]
    assert [] == leader.backend.journal.commands()
    [command] = follower.backend.journal.commands()  # refused here, as the command of ME via v3
    assert ME == command.who


async def test_a_leader_that_lost_its_lease_refuses_and_does_not_pass_it_on(workdir: Path) -> None:
    """v1 still believes v2 leads; v2 has lost the lease to v3: v2 refuses (naming v3), v3 never
    hears of it, and v1 relays v2's refusal."""
    follower = await serve(workdir / "v1", "v1")
    old = await serve(workdir / "v2", "v2")
    new = await serve(workdir / "v3", "v3")
    lead(old, follower)
    lead(new, old)
    try:
        status, body = await call(follower, "POST", "/v1/resume", body={"reason": "x"})
        assert 409 == status
        assert body["error"].startswith(f"forwarded to leader v2 at {old.address}: ")
        assert "vantage v3 leads" in body["error"]
        assert [] == new.backend.journal.commands()
        assert ["v1"] == [c.args.get("via") for c in old.backend.journal.commands()]
    finally:
        for vantage in (follower, old, new):
            await vantage.listeners.close()
            vantage.backend.journal.close()


# --- the leader cannot be reached -----------------------------------------------------------------


async def test_an_unreachable_leader_leaves_the_refusal_naming_it_saying_it_was_tried(
    pair: tuple[Vantage, Vantage],
) -> None:
    """Nothing answers at the leader's address: refused here (409) with the leader's name and
    address, as without forwarding, and why forwarding failed."""
    follower, leader = pair
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        dead = f"127.0.0.1:{closed.getsockname()[1]}"  # bound, not listening: refused
        follower.backend.leadership["leader_api"] = dead
        status, body = await call(follower, "POST", "/v1/pause", body={"reason": "x"})
    assert 409 == status
    assert "vantage v2 leads" in body["error"]
    assert f"v2's API listens on {dead}" in body["error"]
    assert body["error"].endswith(f"; tried to forward it to v2 at {dead}: connection refused")
    assert not leader.backend.controller.state.paused
    [command] = follower.backend.journal.commands()  # the refusal is journaled here, as before
    assert (ME, "pause") == (command.who, command.command)


async def test_a_leader_that_took_the_command_but_never_answered_is_not_asked_again(
    pair: tuple[Vantage, Vantage],
) -> None:
    """The leader's address accepts the request and says nothing: after the deadline the follower
    says it may have been carried out (504), and neither retries nor decides it here."""
    follower, _ = pair
    received: list[bytes] = []
    writers: list[asyncio.StreamWriter] = []
    answered = asyncio.Event()  # never, until the test is over

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        received.append(await reader.read(65536))
        await answered.wait()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    try:
        port = server.sockets[0].getsockname()[1]
        follower.backend.leadership["leader_api"] = f"127.0.0.1:{port}"
        started = time.monotonic()
        status, body = await call(follower, "POST", "/v1/pause", body={"reason": "x"})
        took_s = time.monotonic() - started
    finally:
        answered.set()
        for writer in writers:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
        server.close()
        await server.wait_closed()
    assert 504 == status
    assert f"forwarded to leader v2 at 127.0.0.1:{port}, but its answer did not come back" in body["error"]
    assert "it may have been carried out" in body["error"]
    assert FORWARD_TIMEOUT_S <= took_s < FORWARD_TIMEOUT_S + 3
    assert 1 == len(received)  # once
    assert [] == follower.backend.journal.commands()


async def test_a_leader_without_an_address_is_named_and_not_forwarded_to(
    pair: tuple[Vantage, Vantage],
) -> None:
    follower, _ = pair
    follower.backend.leadership["leader_api"] = "0.0.0.0:8443"
    status, body = await call(follower, "POST", "/v1/pause", body={"reason": "x"})
    assert 409 == status
    assert "an address on every interface" in body["error"]
    follower.backend.leadership["leader_api"] = None
    status, body = await call(follower, "POST", "/v1/pause", body={"reason": "x"})
    assert 409 == status
    assert body["error"].endswith("not forwarded: v2's API has no TCP address (api.tcp_listen)")


async def test_without_the_vantage_credential_the_follower_refuses_as_before(workdir: Path) -> None:
    """No api.peer_token: today's refusal, word for word."""
    follower = await serve(workdir / "v1", "v1", peer_token=None)
    leader = await serve(workdir / "v2", "v2")
    lead(leader, follower)
    try:
        status, body = await call(follower, "POST", "/v1/pause", body={"reason": "x"})
        assert 409 == status
        assert body["error"].endswith(
            f"(vantage v2 leads: ask it, `baton status` there); v2's API listens on {leader.address}"
        )
        assert [] == leader.backend.journal.commands()
    finally:
        for vantage in (follower, leader):
            await vantage.listeners.close()
            vantage.backend.journal.close()


async def test_a_leader_with_another_credential_says_so(workdir: Path) -> None:
    """The leader refuses this vantage's credential: not carried out, 502, and why."""
    follower = await serve(workdir / "v1", "v1", peer_token="another-" + "1" * 32)
    leader = await serve(workdir / "v2", "v2")
    lead(leader, follower)
    try:
        status, body = await call(follower, "POST", "/v1/pause", body={"reason": "x"})
        assert 502 == status
        assert body["error"].startswith(f"not carried out: leader v2 at {leader.address} did not accept")
        assert not leader.backend.controller.state.paused
    finally:
        for vantage in (follower, leader):
            await vantage.listeners.close()
            vantage.backend.journal.close()


# --- TLS, and the credential never shown -----------------------------------------------------------


async def test_forwarding_speaks_tls_when_the_apis_do(workdir: Path) -> None:
    """With TLS on the vantages' APIs, a follower forwards over https, verifying the leader's
    certificate against api.peer_ca; one it does not trust is not forwarded to."""
    cert, key = _certificate(workdir, "api")
    other, _ = _certificate(workdir, "other")
    tls = {"tls_cert": cert, "tls_key": key}
    follower = await serve(workdir / "v1", "v1", peer_ca=cert, **tls)
    doubting = await serve(workdir / "v3", "v3", peer_ca=other, **tls)
    leader = await serve(workdir / "v2", "v2", peer_ca=cert, **tls)
    lead(leader, follower, doubting)
    try:
        status, body = await call(follower, "POST", "/v1/pause", body={"reason": "over tls"})
        assert 200 == status, body
        assert leader.backend.controller.state.paused
        status, body = await call(doubting, "POST", "/v1/resume", body={"reason": "x"})
        assert 409 == status
        assert (
            f"tried to forward it to v2 at {leader.address}: its TLS certificate was not accepted"
            in body["error"]
        )
        assert leader.backend.controller.state.paused
    finally:
        for vantage in (follower, doubting, leader):
            await vantage.listeners.close()
            vantage.backend.journal.close()


async def test_the_vantage_credential_is_refused_when_it_is_an_operator_token(workdir: Path) -> None:
    with pytest.raises(ApiSetupError, match=r"value of one of api\.tokens"):
        await serve(workdir / "v1", "v1", peer_token=TOKEN)


async def test_the_vantage_credential_never_appears_in_logs_answers_or_the_audit(
    pair: tuple[Vantage, Vantage], caplog: pytest.LogCaptureFixture
) -> None:
    follower, leader = pair
    stream = io.StringIO()
    configure(json=True, stream=stream)
    answers = []
    try:
        for path, body in (
            ("/v1/pause", {"reason": "a"}),
            ("/v1/offices/nowhere/ack", {}),
            ("/v1/resume", {}),
        ):
            answers.append(await call(follower, "POST", path, body=body))
        for token in (PEER_TOKEN, PEER_TOKEN + "x", TOKEN):
            answers.append(
                await call(
                    leader, "POST", "/v1/pause", body={"reason": "b"}, token=token, headers=forwarded_for("x")
                )
            )
        follower.backend.leadership["leader_api"] = "127.0.0.1:1"
        answers.append(await call(follower, "POST", "/v1/pause", body={"reason": "c"}))
    finally:
        structlog.reset_defaults()
    logged = stream.getvalue()
    assert "api.forwarded" in logged  # the capture works
    assert "api.forward_failed" in logged
    audit = [json.dumps(r.as_dict()) for v in pair for r in v.backend.journal.audit_records()]
    everything = logged + json.dumps(answers) + caplog.text + "\n".join(audit)
    assert PEER_TOKEN[:20] not in everything


def _certificate(directory: Path, name: str) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 (the address a leader publishes)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"baton {name}")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / f"{name}.crt", directory / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_path, key_path
