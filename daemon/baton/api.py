"""The control API: what the CLI (and scripts) use to see and steer the daemon.

Theory of operation. One aiohttp application answers on two kinds of listener:

- a unix socket, created with mode 0660 and chgrp'd to `api.socket_group`. The file's mode and
  group ARE the authentication there: whoever can connect is an operator, and the kernel tells us
  who they are (SO_PEERCRED → uid → user name). Nothing on the wire proves anything.
- an optional TCP listener (`api.tcp_listen`, TLS when `api.tls_cert`/`api.tls_key` are set) on
  which every request must carry `Authorization: Bearer <token>`. Tokens come from credential
  references; the operator is named after the token's reference ("token:api-ops"), never its value.

The API is never open without authentication: no identity → 401, and an app that could not
authenticate anybody (no tokens, no peer credentials) is refused at construction.

Who may do what is `baton.core.grants.authorize`'s answer (the `operators:` section): every
handler asks it before it reads or hands a command to the controller, and a request outside one's
grants gets 403 with its one sentence (the role and scope needed), journaled in the audit trail.

Every command goes through the `Controller`, which journals who asked, what and why, and answers
with the core's sentence: accepted → 200 (202 when a run started, with its id, or when the
command waits for approvals, with the approval's id), refused → 409 with the core's reason.
Reads come from the controller's immutable snapshot and the journal. Every error body is
`{"error": "<one sentence>"}`.

Several vantages. Reads are answered by every vantage from its own view. An operator command
(every state-changing POST) given on a follower is forwarded to the leader's TCP API — the
address the leader publishes in etcd (`LeaderView.leader_api`) — once, with a bounded timeout,
and the leader's answer is relayed, saying so ("forwarded to leader v2 at 10.0.1.21:8443: …").
The follower authenticates the operator; the leader authenticates the follower (the vantages'
shared credential, `api.peer_token`, over TLS when the APIs speak it) and only then trusts the
operator the follower names (the `Baton-Forwarded` header: operator, unix groups, via), checks
that operator's grants itself, and journals the command as theirs, "via" the follower. A
forwarded request is never forwarded again (a vantage that no longer leads refuses it), an
operator cannot name anyone but themself (the header without the vantages' credential is
refused and audited), and the vantages' credential is nobody's identity on its own. When the
leader cannot be reached the command is refused here as it always was — the leader's name and
address — saying that forwarding was tried and why it failed; when the leader got it but its
answer did not come back, the follower says it may have been carried out (504), never retries.
A run a follower does not know (`baton run ID` after a forwarded handover) is read from the
leader the same way.

Hostile input: everything a request carries is checked before it is used — text that is not
UTF-8 (lone surrogates), control characters and bidirectional overrides in what is journaled
and shown to operators, JSON nested deeper than `MAX_JSON_DEPTH`, numbers out of range, a bearer
header that is not text — each a 4xx with one sentence. A request aiohttp cannot even parse is
answered by `_QuietHandler`: one JSON sentence, never the request's own bytes (which may carry a
token), and one log line without them.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import grp
import hmac
import json
import math
import os
import pwd
import shutil
import socket
import ssl
import stat
import struct
import time
import unicodedata
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

import aiohttp
from aiohttp import web, web_protocol, web_server
from yarl import URL

from baton import wallboard
from baton.audit import AuditEntry
from baton.config import ApiSettings, Config
from baton.controller import CommandOutcome, Controller
from baton.core.grants import GLOBAL, Identity, Target, authorize, grants_for, when
from baton.core.machine import RESOLVABLE, choose_alternate
from baton.core.model import Approval, Inventory, OfficeState, Phase, RunKind, SecretRef, State
from baton.journal import Journal, JournalError, RunRecord, StepRecord
from baton.logs import get_logger, mask_text, remember_secret

API_VERSION = "v1"
MAX_BODY_BYTES = 64 * 1024
MAX_REASON_CHARS = 2000
MAX_JSON_DEPTH = 8  # every body is an object of plain fields: deeper is not a request of ours
MAX_AUDIT_LIMIT = 100_000
DEFAULT_RUNS_LIMIT = 50
MAX_RUNS_LIMIT = 1000
SOCKET_MODE = 0o660
_RUNNING = frozenset({Phase.HANDING_OVER, Phase.HANDING_BACK})
_PEERCRED = struct.Struct("3i")  # struct ucred {pid_t pid; uid_t uid; gid_t gid;}
SO_PEERGROUPS = getattr(socket, "SO_PEERGROUPS", 59)  # Linux ≥ 4.13: the peer's supplementary groups
_MAX_GROUPS = 256
# Format characters that reorder or hide what an operator reads (Trojan Source, CVE-2021-42574).
_BIDI = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u200e\u200f\u061c")
# A command forwarded by a follower: {"operator": name, "groups": [unix groups], "via": vantage}.
FORWARDED_HEADER = "Baton-Forwarded"
FORWARD_CONNECT_TIMEOUT_S = 2.0
FORWARD_TIMEOUT_S = 5.0  # the whole exchange with the leader; the CLI waits 10 s for this vantage
MAX_FORWARDED_ANSWER_BYTES = 8 * 1024 * 1024  # a run's view with its steps, on a large network
_MAX_NAME_CHARS = 200
_EVERY_INTERFACE = frozenset({"", "0.0.0.0", "::"})  # noqa: S104 - an address to reach, not to bind


def _log() -> Any:
    # Looked up per call, not at import, so the logging configured by the service (or a test)
    # is the one used.
    return get_logger(component="api")


class ApiBackend(Protocol):
    """What the daemon gives the API. The API reads these on every request (a reload may swap them)."""

    controller: Controller
    journal: Journal
    inventory: Inventory
    config: Config

    def device_views(self, office: str) -> list[dict[str, Any]]:
        """Per device of `office`: id, role, critical, address, verdict, reason, last_seen {protocol: ts}."""
        ...

    def run_progress(self, run_id: str) -> dict[str, Any] | None:
        """Live progress of a run in progress: {device: {"step": name, "status": text, ...}}, else None."""
        ...

    async def plan(self, office: str, to: str | None) -> dict[str, Any]:
        """Dry-run of a handover of `office` (to `to`, or its first eligible alternate); changes nothing."""
        ...

    def status_extra(self) -> dict[str, Any]:
        """Daemon facts for /v1/status: vantage id, leader, uptime, last loop time, storm..."""
        ...

    async def shared(self) -> None:
        """Leading among vantages: until what the last command decided is published to the
        others (bounded; at once without etcd). The answer waits for it: an acknowledged
        command is not lost with the leader."""
        ...


class ApiSetupError(Exception):
    """The API cannot be set up as configured (no way to authenticate, socket in use...). One sentence."""


class _Problem(Exception):
    """A request that cannot be served; becomes `{"error": message}` with `status`."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(slots=True)
class _Tokens:
    """Accepted bearer tokens, each with the name that identifies its holder (never the token)."""

    entries: list[tuple[str, bytes]] = field(default_factory=list)

    def add(self, name: str, token: str) -> None:
        if not token:
            raise ApiSetupError(f"API token {name} is empty: it would let anybody in")
        remember_secret(token)  # never in a log line, whoever logs it
        self.entries.append((name, token.encode()))

    def identify(self, presented: str) -> str | None:
        # aiohttp hands undecodable header bytes over as surrogates: compare them as bytes.
        candidate = presented.encode("utf-8", "surrogateescape")
        found: str | None = None
        # Compare with every token, in constant time each, so timing says nothing about which
        # token (or how much of one) matched.
        for name, token in self.entries:
            if hmac.compare_digest(candidate, token) and found is None:
                found = name
        return found


@dataclass(frozen=True, slots=True)
class _Forwarding:
    """How this vantage forwards a command to the leader: the vantages' credential, and the TLS
    context that verifies the leader's certificate (None: the APIs speak plain HTTP)."""

    token: str = field(repr=False)
    tls: ssl.SSLContext | None = None


class _AnswerTooLarge(Exception):
    pass


BACKEND: web.AppKey[ApiBackend] = web.AppKey("backend")
TOKENS: web.AppKey[_Tokens] = web.AppKey("tokens")
PEER_TOKENS: web.AppKey[_Tokens] = web.AppKey("peer_tokens")  # the vantages' credential
FORWARDING: web.AppKey[_Forwarding | None] = web.AppKey("forwarding")  # None: refused, not forwarded
PEERCRED: web.AppKey[bool] = web.AppKey("allow_peercred")
CLOCK: web.AppKey[Callable[[], float]] = web.AppKey("clock")
WHO: web.RequestKey[str] = web.RequestKey("who")
IDENTITY: web.RequestKey[Identity] = web.RequestKey("identity")
VIA: web.RequestKey[str] = web.RequestKey("via")  # the vantage that forwarded this request to us
FORWARD_NOTE: web.RequestKey[str] = web.RequestKey("forward_note")  # why it was not forwarded


# --- the application --------------------------------------------------------------------------


def create_app(
    backend: ApiBackend,
    *,
    tokens: Sequence[str],
    allow_peercred: bool,
    clock: Callable[[], float] = time.time,
) -> web.Application:
    """The API application. `tokens` are accepted bearer tokens (named token#1, token#2...);
    `allow_peercred` lets unix-socket peers in as the user the kernel reports.
    `start_listeners` may add tokens from the configuration's credential references."""
    store = _Tokens()
    for index, token in enumerate(tokens, start=1):
        store.add(f"token#{index}", token)
    app = web.Application(middlewares=[_errors, _authenticate, _forward], client_max_size=MAX_BODY_BYTES)
    app[BACKEND] = backend
    app[TOKENS] = store
    app[PEER_TOKENS] = _Tokens()
    app[FORWARDING] = None
    app[PEERCRED] = allow_peercred
    app[CLOCK] = clock
    app.router.add_get("/healthz", _healthz)
    v = f"/{API_VERSION}"
    app.router.add_get(f"{v}/status", _status)
    app.router.add_get(f"{v}/offices", _offices)
    app.router.add_get(f"{v}/offices/{{office}}", _office)
    app.router.add_get(f"{v}/offices/{{office}}/devices", _devices)
    app.router.add_get(f"{v}/offices/{{office}}/plan", _plan)
    app.router.add_post(f"{v}/offices/{{office}}/handover", _handover)
    app.router.add_post(f"{v}/offices/{{office}}/handback", _handback)
    app.router.add_post(f"{v}/offices/{{office}}/ack", _ack)
    app.router.add_post(f"{v}/pause", _pause)
    app.router.add_post(f"{v}/resume", _resume)
    app.router.add_post(f"{v}/shadow", _shadow)
    app.router.add_get(f"{v}/runs", _runs)
    app.router.add_get(f"{v}/runs/{{run_id}}", _run)
    app.router.add_post(f"{v}/runs/{{run_id}}/abort", _abort)
    app.router.add_post(f"{v}/offices/{{office}}/resolve", _resolve)
    app.router.add_get(f"{v}/approvals", _approvals)
    app.router.add_post(f"{v}/approvals/{{approval_id}}/approve", _approve)
    app.router.add_post(f"{v}/approvals/{{approval_id}}/deny", _deny)
    app.router.add_get(f"{v}/grants", _grants)
    app.router.add_get(f"{v}/audit", _audit)
    app.router.add_get(f"{v}/audit/verify", _audit_verify)
    wallboard.add_routes(app)  # the NOC wall screen's page, its session login and its event stream
    return app


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _error(status: int, message: str, headers: Mapping[str, str] | None = None) -> web.Response:
    return web.json_response({"error": message}, status=status, headers=headers)


@web.middleware
async def _errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    where = _untext(request.path) or next((w for v in request.query.values() if (w := _untext(v))), None)
    if where is not None:
        return _error(400, f"the request's path or query holds {where}: ask with plain text")
    try:
        return await handler(request)
    except _Problem as problem:
        return _error(problem.status, problem.message)
    except web.HTTPRequestEntityTooLarge:
        return _error(413, f"request body too large (at most {MAX_BODY_BYTES} bytes)")
    except web.HTTPMethodNotAllowed as exc:
        allowed = ", ".join(sorted(exc.allowed_methods))
        return _error(405, f"{request.method} is not allowed on {request.path} (use {allowed})")
    except web.HTTPNotFound:
        return _error(404, f"no such endpoint: {request.method} {request.path}")
    except web.HTTPException as exc:
        return _error(exc.status, exc.reason)
    except Exception as exc:
        _log().exception("api.internal_error", path=request.path, error=type(exc).__name__)
        return _error(500, f"internal error ({type(exc).__name__}); the daemon log has the details")


@web.middleware
async def _authenticate(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.path == "/healthz" or wallboard.is_login(request):
        return await handler(request)  # the wallboard login checks its one-time ticket itself
    if FORWARDED_HEADER in request.headers:
        forwarded = await _forwarded_identity(request)
        request[WHO], request[IDENTITY] = forwarded.name, forwarded
        return await handler(request)
    # A wallboard session cookie is accepted on the wallboard's own read-only routes, nowhere else.
    who = wallboard.session_identity(request) or _identify(request)
    if who is None:
        message = (
            "authentication required: send 'Authorization: Bearer <token>' with a token the daemon accepts"
        )
        return _error(
            401,
            wallboard.UNAUTHORIZED if wallboard.is_wallboard(request) else message,
            headers={"WWW-Authenticate": 'Bearer realm="baton"'},
        )
    request[WHO] = who.name if isinstance(who, Identity) else who
    request[IDENTITY] = who if isinstance(who, Identity) else Identity(who)
    if wallboard.is_wallboard(request) and not isinstance(who, str):
        # The wallboard's routes (and a session for it) are reads: any grant opens them. A
        # session cookie was issued to someone who held one.
        await _allow(request, "list")
    return await handler(request)


def _identify(request: web.Request) -> Identity | None:
    app = request.app
    sock = request.transport.get_extra_info("socket") if request.transport is not None else None
    if sock is not None and sock.family == socket.AF_UNIX and app[PEERCRED]:
        raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size)
        _pid, uid, gid = _PEERCRED.unpack(raw)
        return Identity(user_name(uid), _peer_groups(sock, uid, gid))
    header = request.headers.get("Authorization", "")
    scheme, _, presented = header.partition(" ")
    presented = presented.strip()
    if scheme.lower() != "bearer" or not presented:
        _log().warning(
            "api.unauthorized", remote=request.remote, path=request.path, cause="no bearer credentials"
        )
        return None
    who = app[TOKENS].identify(presented)
    if who is None and app[PEER_TOKENS].identify(presented) is not None:
        _log().warning(
            "api.forbidden", remote=request.remote, path=request.path, cause="vantage credential alone"
        )
        raise _Problem(
            403,
            "the vantages' credential (api.peer_token) is nobody's identity: it only carries a command "
            "a vantage forwards for its operator",
        )
    if who is None:
        _log().warning("api.unauthorized", remote=request.remote, path=request.path, cause="token rejected")
        return None
    return Identity(who)


async def _forwarded_identity(request: web.Request) -> Identity:
    """The operator a vantage forwards a request for (`Baton-Forwarded`), trusted only from a
    vantage: on TCP, with the vantages' credential. Anyone else naming an operator is refused
    (403, audited): an operator cannot speak for another."""
    app = request.app
    sock = request.transport.get_extra_info("socket") if request.transport is not None else None
    scheme, _, presented = request.headers.get("Authorization", "").partition(" ")
    presented = presented.strip()
    from_vantage = (
        (sock is None or sock.family != socket.AF_UNIX)
        and scheme.lower() == "bearer"
        and bool(presented)
        and app[PEER_TOKENS].identify(presented) is not None
    )
    if not from_vantage:
        requester = _identify(request)
        if requester is None:
            raise _Problem(
                401, "authentication required: a forwarded command comes from a vantage, with api.peer_token"
            )
        why = (
            f"{requester.name} named another operator ({FORWARDED_HEADER}): only a vantage, with the "
            "vantages' credential (api.peer_token) on the TCP API, forwards for an operator"
        )
        _log().warning("api.forbidden", who=requester.name, path=request.path, why="forged forward")
        await _audit_refusal(request, AuditEntry(app[CLOCK](), "refused", requester.name, "forward", why))
        raise _Problem(403, why)
    claim = _forward_claim(request.headers[FORWARDED_HEADER])
    operator, groups, via = claim
    etcd = _backend(request).config.etcd
    if etcd is not None and etcd.vantages and via not in etcd.vantages:
        raise _Problem(403, f"vantage {via} is not one of etcd.vantages ({', '.join(etcd.vantages)})")
    if _forwardable(request) is None:
        raise _Problem(
            403,
            f"a vantage forwards operator commands and run reads, not {request.method} {request.path}",
        )
    request[VIA] = via
    return Identity(operator, groups)


def _forward_claim(raw: str) -> tuple[str, frozenset[str], str]:
    """(operator, unix groups, via) from the `Baton-Forwarded` header; 400 if it is not one."""
    bad = _untext(raw)
    if bad is not None:
        raise _Problem(400, f"the {FORWARDED_HEADER} header holds {bad}")
    try:
        claim = json.loads(raw)
    except ValueError:
        claim = None
    if not isinstance(claim, dict) or set(claim) - {"operator", "groups", "via"}:
        raise _Problem(400, f"the {FORWARDED_HEADER} header must be a JSON object: operator, groups, via")
    operator, groups, via = claim.get("operator"), claim.get("groups", []), claim.get("via")
    names = [operator, via, *(groups if isinstance(groups, list) else [])]
    if (
        not isinstance(groups, list)
        or len(groups) > _MAX_GROUPS
        or not all(isinstance(n, str) and n.strip() and len(n) <= _MAX_NAME_CHARS for n in names)
        or any(_untext(str(n)) for n in names)
    ):
        raise _Problem(
            400, f"the {FORWARDED_HEADER} header must name the operator, its unix groups and the vantage"
        )
    return str(operator), frozenset(str(g) for g in groups), str(via)


def _peer_groups(sock: socket.socket, uid: int, gid: int) -> frozenset[str]:
    """The unix groups of the peer process as the kernel has them (SO_PEERGROUPS), by name;
    what /etc/group says of the user where the kernel cannot tell."""
    gids: set[int] = {gid}
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, SO_PEERGROUPS, 4 * _MAX_GROUPS)
        gids.update(struct.unpack(f"{len(raw) // 4}I", raw[: len(raw) // 4 * 4]))
    except OSError:
        with contextlib.suppress(KeyError, OSError):
            gids.update(os.getgrouplist(pwd.getpwuid(uid).pw_name, gid))
    names = set()
    for number in gids:
        try:
            names.add(grp.getgrgid(number).gr_name)
        except KeyError:
            names.add(f"gid:{number}")
    return frozenset(names)


def user_name(uid: int) -> str:
    """The operator behind a unix-socket peer: its user name, or `uid:N` when the host has none."""
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid:{uid}"


# --- forwarding to the leader ----------------------------------------------------------------


@web.middleware
async def _forward(request: web.Request, handler: Handler) -> web.StreamResponse:
    """On a follower, an operator command goes to the leader (see the module docstring)."""
    kind = _forwardable(request)
    if kind is None:
        return await handler(request)
    if VIA in request:  # a forwarded request is never forwarded again
        here = await handler(request)
        await _backend(request).shared()
        return here
    backend = _backend(request)
    forwarding = request.app[FORWARDING]
    if backend.controller.state.leader:
        here = await handler(request)  # decided here, where it is published from
        if kind == "command":
            await backend.shared()
        return here
    if forwarding is None:
        return await handler(request)  # decided here: this vantage does not forward
    if kind == "read" and backend.journal.run(request.match_info["run_id"]) is not None:
        return await handler(request)  # a run of this vantage's own journal
    leader, address, why_not = _leader_address(backend)
    if leader is None or address is None:
        if why_not:
            request[FORWARD_NOTE] = why_not
        return await handler(request)
    answer = await _send(request, kind, forwarding, leader, address)
    if isinstance(answer, str):  # it never reached the leader: refused here, saying it was tried
        request[FORWARD_NOTE] = answer
        return await handler(request)
    return answer


def _forwardable(request: web.Request) -> str | None:
    """ "command" for a state-changing request, "read" for a run's view, else None."""
    handler = request.match_info.handler
    if request.method == "POST" and handler in _COMMANDS:
        return "command"
    if request.method == "GET" and handler is _run:
        return "read"
    return None


def _leader_address(backend: ApiBackend) -> tuple[str | None, str | None, str]:
    """The leader and its API's address, as it published them; and why not, when there is none
    to forward to ("" when this vantage is about to lead: it decides)."""
    view = backend.status_extra().get("leadership") or {}
    leader, address = view.get("leader"), view.get("leader_api")
    if not leader:
        return None, None, "not forwarded: no vantage leads now"
    if view.get("held") or leader == backend.config.vantage.id:
        return None, None, ""
    if not address:
        return str(leader), None, f"not forwarded: {leader}'s API has no TCP address (api.tcp_listen)"
    host = str(address).split("://")[-1].rpartition(":")[0].strip("[]")
    if host in _EVERY_INTERFACE:
        return (
            str(leader),
            None,
            f"not forwarded: {leader} gives {address}, an address on every interface, not one to reach it at",
        )
    return str(leader), str(address), ""


async def _send(
    request: web.Request, kind: str, forwarding: _Forwarding, leader: str, address: str
) -> web.StreamResponse | str:
    """Forward `request` to the leader once; its answer, relayed. A sentence (the request stays
    here) when it never reached the leader, or, for a read, when no answer came."""
    backend = _backend(request)
    me = backend.config.vantage.id
    identity = request[IDENTITY]
    claim = {"operator": identity.name, "groups": sorted(identity.unix_groups), "via": me}
    headers = {
        "Authorization": f"Bearer {forwarding.token}",
        FORWARDED_HEADER: json.dumps(claim, ensure_ascii=True, separators=(",", ":")),
        "Accept": "application/json",
    }
    body = await request.read()
    if body:
        headers["Content-Type"] = "application/json"
    base = address if "://" in address else f"{'https' if forwarding.tls is not None else 'http'}://{address}"
    url = URL(base.rstrip("/") + request.raw_path, encoded=True)
    where = f"leader {leader} at {address}"
    timeout = aiohttp.ClientTimeout(total=FORWARD_TIMEOUT_S, sock_connect=FORWARD_CONNECT_TIMEOUT_S)
    log = _log().bind(who=identity.name, path=request.path, leader=leader, address=address)
    try:
        async with (
            aiohttp.ClientSession(timeout=timeout) as session,
            session.request(
                request.method,
                url,
                data=body or None,
                headers=headers,
                ssl=forwarding.tls if forwarding.tls is not None else True,
                allow_redirects=False,
            ) as response,
        ):
            status = response.status
            raw = await _bounded(response)
    except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as exc:
        cause = _cause(exc)
        log.warning("api.forward_failed", delivered=False, cause=cause)
        return f"tried to forward it to {leader} at {address}: {cause}"
    except (TimeoutError, aiohttp.ClientError, _AnswerTooLarge) as exc:
        cause = _cause(exc)
        log.error("api.forward_failed", delivered="unknown", cause=cause)
        if kind == "read":
            return cause
        return _error(
            504,
            f"forwarded to {where}, but its answer did not come back ({cause}): it may have been carried "
            "out; check with `baton status` (or `baton audit` there) before asking again",
        )
    log.info("api.forwarded", status=status)
    try:
        data = json.loads(raw) if raw else None
    except ValueError:
        data = None
    if status == 401:
        return _error(
            502,
            f"not carried out: {where} did not accept this vantage's credential (api.peer_token must be "
            "the same on every vantage)",
        )
    if not isinstance(data, dict) or not 200 <= status < 600:
        return _error(
            502,
            f"forwarded to {where}, which answered HTTP {status} without an answer of Baton's: check with "
            "`baton status` (or `baton audit` there)",
        )
    said = f"forwarded to {where}"
    if isinstance(data.get("error"), str):
        data["error"] = f"{said}: {data['error']}"
    if kind == "command" and isinstance(data.get("reason"), str):
        data["reason"] = f"{said}: {data['reason']}"
    data["forwarded"] = {"leader": leader, "address": address, "via": me}
    return web.json_response(data, status=status)


async def _bounded(response: aiohttp.ClientResponse) -> bytes:
    chunks, size = [], 0
    async for chunk in response.content.iter_chunked(64 * 1024):
        size += len(chunk)
        if size > MAX_FORWARDED_ANSWER_BYTES:
            raise _AnswerTooLarge(f"an answer larger than {MAX_FORWARDED_ANSWER_BYTES} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _cause(exc: BaseException) -> str:
    """Why a forward failed, in a few words: never a header, a body or a credential."""
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        return f"its TLS certificate was not accepted ({exc.certificate_error})"
    if isinstance(exc, aiohttp.ClientConnectorSSLError | aiohttp.ClientSSLError):
        return "TLS failed"
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return f"no connection within {FORWARD_CONNECT_TIMEOUT_S:g} s"
    if isinstance(exc, aiohttp.ClientConnectorError):
        error = exc.os_error
        if isinstance(error, socket.gaierror):
            return f"its address does not resolve ({error.strerror})"
        return os.strerror(error.errno).lower() if error.errno and error.errno > 0 else "cannot connect"
    if isinstance(exc, TimeoutError):
        return f"no answer within {FORWARD_TIMEOUT_S:g} s"
    if isinstance(exc, _AnswerTooLarge):
        return str(exc)
    return f"the connection failed ({type(exc).__name__})"


# --- reading the body and the query -----------------------------------------------------------


async def _body(request: web.Request, allowed: Mapping[str, str]) -> dict[str, Any]:
    """The JSON object in the body, with only `allowed` fields (name → what it is, for errors)."""
    raw = await request.read()
    if not raw.strip():
        return {}
    if _depth(raw) > MAX_JSON_DEPTH:
        raise _Problem(400, f"the body nests deeper than {MAX_JSON_DEPTH} levels: send a flat JSON object")
    try:
        data = json.loads(raw)
    except UnicodeDecodeError:
        raise _Problem(400, "the body is not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        raise _Problem(
            400, f"malformed JSON body: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from None
    except (ValueError, RecursionError):  # an integer of more than 4300 digits, say
        raise _Problem(400, "the body holds a value out of any range this API takes") from None
    if not isinstance(data, dict):
        raise _Problem(400, f"the body must be a JSON object, not {_json_type(data)}")
    bad = _untext_json(data)
    if bad is not None:
        raise _Problem(400, f"the body holds {bad}: send UTF-8 text")
    unknown = sorted(set(data) - set(allowed))
    if unknown:
        fields_ = ", ".join(f"'{name}' ({what})" for name, what in allowed.items()) or "none"
        raise _Problem(400, f"unknown field '{unknown[0]}'; this endpoint takes {fields_}")
    return data


def _depth(raw: bytes) -> int:
    """How deep JSON brackets nest in `raw` (outside strings), without parsing it."""
    depth = deepest = 0
    in_string = escaped = False
    for byte in raw:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x5B, 0x7B):
            depth += 1
            deepest = max(deepest, depth)
            if deepest > MAX_JSON_DEPTH:
                return deepest
        elif byte in (0x5D, 0x7D):
            depth -= 1
    return deepest


def _untext(text: str) -> str | None:
    """What in `text` is not text (None when it all is): a lone surrogate or a control character."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return "a character that is not UTF-8 text (a lone surrogate)"
    for ch in text:
        if unicodedata.category(ch) == "Cc" or ch in _BIDI:
            return f"a control character (U+{ord(ch):04X})"
    return None


def _untext_json(value: object) -> str | None:
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return "a character that is not UTF-8 text (a lone surrogate)"
        return None
    if isinstance(value, dict):
        return next((b for k, v in value.items() for b in (_untext_json(k), _untext_json(v)) if b), None)
    if isinstance(value, list):
        return next((b for v in value if (b := _untext_json(v))), None)
    return None


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def _reason(data: Mapping[str, Any], *, required: bool) -> str:
    value = data.get("reason")
    if value is None:
        if required:
            raise _Problem(400, "'reason' is required: say why, in a few words (it is journaled)")
        return ""
    if not isinstance(value, str):
        raise _Problem(400, f"'reason' must be a string, not {_json_type(value)}")
    # Tabs and line breaks become spaces; any other control character, or a bidirectional
    # override, would be journaled and then shown to an operator's terminal: refused.
    value = " ".join(value.replace("\t", " ").replace("\n", " ").replace("\r", " ").split(" "))
    bad = _untext(value)
    if bad is not None:
        raise _Problem(400, f"'reason' holds {bad}: write plain text")
    value = " ".join(value.split())  # one line: it goes into logs, tables and the journal
    if required and not value:
        raise _Problem(400, "'reason' must not be empty: say why, in a few words (it is journaled)")
    if len(value) > MAX_REASON_CHARS:
        raise _Problem(400, f"'reason' is too long ({len(value)} characters, at most {MAX_REASON_CHARS})")
    return value


def parse_until(value: object) -> float:
    """`until` as epoch seconds: a number, or an ISO 8601 time with a time zone (ValueError if not)."""
    if isinstance(value, bool):
        raise ValueError(f"'until' must be an ISO 8601 time or epoch seconds, not {_json_type(value)}")
    if isinstance(value, int | float):
        if not math.isfinite(value) or value <= 0:
            raise ValueError("'until' must be a positive, finite number of epoch seconds")
        return float(value)
    if isinstance(value, str):
        text = value.strip()
        try:
            return parse_until(float(text))
        except ValueError:
            pass
        try:
            when = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            raise ValueError(
                f"'until' is not an ISO 8601 time: {text!r} (write e.g. 2025-06-01T08:00:00+09:00)"
            ) from None
        if when.tzinfo is None:
            raise ValueError(f"'until' has no time zone: {text!r} (write e.g. {text}+09:00 or {text}Z)")
        return when.timestamp()
    raise ValueError(f"'until' must be an ISO 8601 time or epoch seconds, not {_json_type(value)}")


def _optional_str(data: Mapping[str, Any], name: str) -> str | None:
    value = data.get(name)
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise _Problem(400, f"'{name}' must be a non-empty string, not {_json_type(value)}")
    bad = _untext(value)
    if bad is not None:
        raise _Problem(400, f"'{name}' holds {bad}: write an office id")
    if len(value) > 200:
        raise _Problem(400, f"'{name}' is too long ({len(value)} characters) for an office id")
    return value.strip()


def _int_query(request: web.Request, name: str, default: int, low: int, high: int) -> int:
    text = request.query.get(name)
    if text is None:
        return default
    try:
        value = int(text)
    except ValueError:
        raise _Problem(400, f"query parameter '{name}' must be an integer, not {text!r}") from None
    if not low <= value <= high:
        raise _Problem(400, f"query parameter '{name}' must be between {low} and {high}, not {value}")
    return value


# --- views ------------------------------------------------------------------------------------


def _backend(request: web.Request) -> ApiBackend:
    return request.app[BACKEND]


def _office_state(request: web.Request) -> OfficeState:
    backend = _backend(request)
    office_id = request.match_info["office"]
    office = backend.controller.state.offices.get(office_id)
    if office is None:
        raise _Problem(404, _unknown_office(office_id, backend))
    return office


def _unknown_office(office_id: str, backend: ApiBackend) -> str:
    known = sorted(backend.controller.state.offices)
    shown = ", ".join(known[:50]) + (f" … ({len(known) - 50} more)" if len(known) > 50 else "")
    return f"unknown office '{office_id}'; known offices: {shown or 'none'}"


def _last_reason(backend: ApiBackend, office_id: str) -> str | None:
    reason = backend.controller.last_reason.get(office_id)
    if reason is not None:
        return reason
    # After a restart the controller has not decided anything yet: the journal remembers.
    last = backend.journal.transitions(office_id, limit=1)
    return last[0].reason if last else None


def office_view(backend: ApiBackend, office: OfficeState) -> dict[str, Any]:
    known = backend.inventory.offices.get(office.office)
    closure = office.closure
    return {
        "id": office.office,
        "name": known.name if known is not None else office.office,
        "region": known.region if known is not None else None,
        "phase": office.phase.value,
        "verdict": office.verdict.value,
        "verdict_detail": office.verdict_detail,
        "alternate": office.alternate,
        "alternates": list(office.alternates),
        "since": office.since or None,
        "reason": _last_reason(backend, office.office),
        "run_id": office.run_id,
        "run_kind": office.run_kind.value if office.run_kind is not None else None,
        "flapping": office.flapping,
        "blocked_until": office.blocked_until,
        "closure": None
        if closure is None
        else {
            "kind": closure.kind,
            "who": closure.who,
            "reason": closure.reason,
            "until": closure.until,
            "at": closure.at,
            "to": closure.to,
            "drill": closure.drill,
            "approved_by": list(closure.approved_by),
        },
        "devices": len(backend.inventory.devices_of(office.office)),
    }


def _step_view(step: StepRecord) -> dict[str, Any]:
    return {
        "device": step.device,
        "index": step.index,
        "name": step.name,
        "phase": step.phase,
        "status": step.status.value,
        "started": step.started,
        "finished": step.finished,
        "detail": step.detail,
        "attempt": step.attempt,
    }


def run_status(backend: ApiBackend, run: RunRecord | None, run_id: str) -> str:
    """ "running", or how the run ended: the journal's result, else what the core made of it."""
    if run is not None and run.result is not None:
        return run.result
    office_id = run.office if run is not None else None
    for state in backend.controller.state.offices.values():
        if state.run_id == run_id and (office_id is None or state.office == office_id):
            if state.phase in _RUNNING:
                return "running"
            # The core has applied the run's RunFinished even if the runner has not journaled it.
            return "failed" if state.phase is Phase.FAILED else "ok"
    # Catch-up runs (devices handed over late) are the daemon's, not the core's.
    if run_id in backend.status_extra().get("catchups_in_progress", ()):
        return "running"
    return "unfinished"  # neither finished in the journal nor a run in progress: interrupted


def run_view(backend: ApiBackend, run: RunRecord, *, with_steps: bool) -> dict[str, Any]:
    status = run_status(backend, run, run.id)
    view: dict[str, Any] = {
        "id": run.id,
        "office": run.office,
        "kind": run.kind.value,
        "alternate": run.alternate,
        "reason": run.reason,
        "who": run.who,
        "started": run.started,
        "finished": run.finished,
        "result": run.result,
        "detail": run.detail,
        "confirm_deadline": run.confirm_deadline,
        "status": status,
        # persist_id is left out: it is the handle that confirms or cancels the devices' commits.
    }
    if with_steps:
        view["steps"] = [_step_view(s) for s in run.steps]
        view["progress"] = backend.run_progress(run.id) if status == "running" else None
    return view


def _pending_run(backend: ApiBackend, run_id: str) -> dict[str, Any] | None:
    """A run the core started that the runner has not journaled yet (the CLI asks at once)."""
    for state in backend.controller.state.offices.values():
        if state.run_id == run_id and state.phase in _RUNNING:
            return {
                "id": run_id,
                "office": state.office,
                "kind": state.run_kind.value if state.run_kind is not None else None,
                "alternate": state.alternate,
                "reason": _last_reason(backend, state.office),
                "who": None,
                "started": state.since,
                "finished": None,
                "result": None,
                "detail": "",
                "confirm_deadline": None,
                "status": "running",
                "steps": [],
                "progress": backend.run_progress(run_id),
            }
    return None


# --- handlers ---------------------------------------------------------------------------------


async def _healthz(request: web.Request) -> web.Response:
    return web.json_response({"ok": True})


async def _allow(request: web.Request, command: str, office: str | None = None) -> str | None:
    """Refuse (403, audited) unless the requester's grants allow `command` (on `office`); the
    grant that allows it (None: no operators configured)."""
    backend = _backend(request)
    identity = request[IDENTITY]
    known = backend.inventory.offices.get(office) if office is not None else None
    target = Target(command, office, known.region if known is not None else None)
    now = request.app[CLOCK]()
    verdict = authorize(backend.config.operators.grants, identity, target, now)
    if verdict.allowed:
        return verdict.grant
    via = request.get(VIA)
    _log().warning(
        "api.forbidden", who=identity.name, command=command, office=office, why=verdict.reason, via=via
    )
    detail = {} if via is None else {"via": via}
    await _audit_refusal(
        request, AuditEntry(now, "refused", identity.name, command, verdict.reason, office, detail)
    )
    raise _Problem(403, verdict.reason)


async def _audit_refusal(request: web.Request, entry: AuditEntry) -> None:
    backend = _backend(request)
    try:
        await backend.journal.call(backend.journal.record_audit, entry)
    except JournalError as exc:
        # The refusal stands; only its audit row is lost (the log line before it keeps it).
        _log().error("api.audit_write_failed", who=entry.who, command=entry.what, error=str(exc))


async def _office_for(request: web.Request, command: str) -> tuple[OfficeState, str | None]:
    """The office of the path, once the requester may `command` it (404 only to those who read)."""
    await _allow(request, "list")
    office = _office_state(request)
    grant = await _allow(request, command, office.office)
    return office, grant


async def _status(request: web.Request) -> web.Response:
    await _allow(request, "list")
    return web.json_response(status_view(_backend(request), request.app[CLOCK]()))


def approval_view(office: OfficeState, approval: Approval, state: State | None = None) -> dict[str, Any]:
    alternate = approval.to or office.alternate
    if alternate is None and state is not None and approval.kind is RunKind.HANDOVER:
        alternate = choose_alternate(state, office.office)[0]  # where it would go now
    return {
        "id": approval.id,
        "office": office.office,
        "kind": approval.kind.value,
        "requester": approval.requester,
        "reason": approval.reason,
        "at": approval.at,
        "expires": approval.expires,
        "required": approval.required,
        "approvers": list(approval.approvers),
        "auto_proceed_at": approval.auto_proceed_at,
        "declared": approval.declared,
        "until": approval.until,
        "to": approval.to,
        "alternate": alternate,
    }


def approvals_view(backend: ApiBackend) -> list[dict[str, Any]]:
    """The runs waiting for approvals, oldest first."""
    state = backend.controller.state
    pending = [approval_view(o, o.approval, state) for o in state.offices.values() if o.approval is not None]
    return sorted(pending, key=lambda a: (a["at"], a["id"]))


def status_view(backend: ApiBackend, now: float) -> dict[str, Any]:
    """What /v1/status answers: flags, phases at a glance, active alerts, the daemon's facts."""
    state = backend.controller.state
    phases = {phase.value: 0 for phase in Phase}
    for office in state.offices.values():
        phases[office.phase.value] += 1
    alerts = [
        {"alert": a.alert, "office": a.office, "message": a.message, "at": a.at}
        for a in backend.journal.active_alerts()
    ]
    return {
        "vantage": backend.config.vantage.id,
        "vantage_office": backend.config.vantage.office,
        "paused": state.paused,
        "shadow": state.shadow,
        "leader": state.leader,
        "storm": state.storm,
        "offices": len(state.offices),
        "phases": phases,
        # Closures decided in shadow mode: never carried out once shadow mode ends.
        "drills": sorted(o.office for o in state.offices.values() if o.closure and o.closure.drill),
        "alerts": alerts,
        "approvals": approvals_view(backend),
        "daemon": backend.status_extra(),
        "now": now,
    }


async def _offices(request: web.Request) -> web.Response:
    await _allow(request, "list")
    backend = _backend(request)
    offices = backend.controller.state.offices
    views = [office_view(backend, offices[name]) for name in sorted(offices)]
    return web.json_response({"offices": views, "now": request.app[CLOCK]()})


async def _office(request: web.Request) -> web.Response:
    backend = _backend(request)
    office, _ = await _office_for(request, "read")
    view = office_view(backend, office)
    view["alerts"] = [
        {"alert": a.alert, "message": a.message, "at": a.at}
        for a in backend.journal.active_alerts()
        if a.office == office.office
    ]
    state = backend.controller.state
    view["approval"] = None if office.approval is None else approval_view(office, office.approval, state)
    view["now"] = request.app[CLOCK]()
    return web.json_response(view)


async def _devices(request: web.Request) -> web.Response:
    office, _ = await _office_for(request, "read")
    devices = _backend(request).device_views(office.office)
    return web.json_response({"office": office.office, "devices": devices, "now": request.app[CLOCK]()})


async def _plan(request: web.Request) -> web.Response:
    office, _ = await _office_for(request, "plan")  # a dry run logs in to the devices
    to = request.query.get("to") or None
    try:
        plan = await _backend(request).plan(office.office, to)
    except Exception as exc:
        # A dry run touches devices and playbooks: any failure there is an answer, not a crash.
        # Baton errors carry the device, the operation and the cause, never a credential.
        _log().warning("api.plan_failed", office=office.office, error=type(exc).__name__)
        raise _Problem(422, f"cannot plan a handover of {office.office}: {exc}") from None
    return web.json_response(plan)


def _answer(request: web.Request, command: str, outcome: CommandOutcome, office: str | None) -> web.Response:
    _log().info(
        "api.command",
        who=request[WHO],
        command=command,
        office=office,
        accepted=outcome.accepted,
        run_id=outcome.run_id,
        approval_id=outcome.approval_id,
        via=request.get(VIA),
    )
    backend = _backend(request)
    if not outcome.accepted:
        note = request.get(FORWARD_NOTE)
        raise _Problem(
            409, outcome.reason + _leader_api(backend, outcome.reason) + (f"; {note}" if note else "")
        )
    body: dict[str, Any] = {
        "accepted": True,
        "reason": outcome.reason,
        "run_id": outcome.run_id,
        "approval_id": outcome.approval_id,
    }
    if office is not None and office in backend.controller.state.offices:
        body["office"] = office_view(backend, backend.controller.state.offices[office])
    waiting = outcome.run_id is not None or outcome.approval_id is not None
    return web.json_response(body, status=202 if waiting else 200)


def _leader_api(backend: ApiBackend, reason: str) -> str:
    """Refused on a follower: where the leader's API listens, for the operator to ask it."""
    view = backend.status_extra().get("leadership") or {}
    leader, api = view.get("leader"), view.get("leader_api")
    if view.get("held") or not leader or not api or f"vantage {leader} leads" not in reason:
        return ""
    return f"; {leader}'s API listens on {api}"


async def _handover(request: web.Request) -> web.Response:
    office, grant = await _office_for(request, "handover")
    data = await _body(
        request,
        {
            "reason": "string, required",
            "until": "ISO 8601 time or epoch seconds",
            "to": "office id of the alternate",
        },
    )
    reason = _reason(data, required=True)
    until = None
    if data.get("until") is not None:
        try:
            until = parse_until(data["until"])
        except ValueError as exc:
            raise _Problem(400, str(exc)) from None
    to = _optional_str(data, "to")
    outcome = _backend(request).controller.declare_closure(
        office.office, who=request[WHO], reason=reason, until=until, to=to, grant=grant, via=request.get(VIA)
    )
    return _answer(request, "handover", outcome, office.office)


async def _handback(request: web.Request) -> web.Response:
    office, grant = await _office_for(request, "handback")
    data = await _body(request, {"reason": "string, required"})
    reason = _reason(data, required=True)
    outcome = _backend(request).controller.request_handback(
        office.office, who=request[WHO], reason=reason, grant=grant, via=request.get(VIA)
    )
    return _answer(request, "handback", outcome, office.office)


async def _ack(request: web.Request) -> web.Response:
    office, _ = await _office_for(request, "ack")
    data = await _body(request, {"reason": "string"})
    reason = _reason(data, required=False)
    outcome = _backend(request).controller.ack(
        office.office, who=request[WHO], reason=reason, via=request.get(VIA)
    )
    return _answer(request, "ack", outcome, office.office)


async def _resolve(request: web.Request) -> web.Response:
    office, _ = await _office_for(request, "resolve")
    data = await _body(
        request,
        {
            "phase": f"one of {', '.join(RESOLVABLE)}, required",
            "reason": "string, required",
            "to": "office id: who operates it, for HANDED_OVER",
        },
    )
    phase = data.get("phase")
    if not isinstance(phase, str) or phase not in {p.value for p in Phase}:
        raise _Problem(400, f"'phase' must be one of {', '.join(RESOLVABLE)}")
    reason = _reason(data, required=True)
    to = _optional_str(data, "to")
    outcome = _backend(request).controller.resolve(
        office.office, Phase(phase), who=request[WHO], reason=reason, alternate=to, via=request.get(VIA)
    )
    return _answer(request, "resolve", outcome, office.office)


async def _pause(request: web.Request) -> web.Response:
    await _allow(request, "pause")
    data = await _body(request, {"reason": "string, required"})
    reason = _reason(data, required=True)
    outcome = _backend(request).controller.set_paused(
        True, who=request[WHO], reason=reason, via=request.get(VIA)
    )
    return _answer(request, "pause", outcome, None)


async def _resume(request: web.Request) -> web.Response:
    await _allow(request, "resume")
    data = await _body(request, {"reason": "string"})
    reason = _reason(data, required=False)
    outcome = _backend(request).controller.set_paused(
        False, who=request[WHO], reason=reason, via=request.get(VIA)
    )
    return _answer(request, "resume", outcome, None)


async def _shadow(request: web.Request) -> web.Response:
    await _allow(request, "shadow")
    data = await _body(request, {"on": "boolean, required", "reason": "string"})
    on = data.get("on")
    if not isinstance(on, bool):
        what = "missing" if on is None else f"{_json_type(on)}"
        raise _Problem(400, f"'on' must be true or false ({what})")
    reason = _reason(data, required=False)
    outcome = _backend(request).controller.set_shadow(
        on, who=request[WHO], reason=reason, via=request.get(VIA)
    )
    return _answer(request, "shadow-on" if on else "shadow-off", outcome, None)


async def _runs(request: web.Request) -> web.Response:
    await _allow(request, "list")
    backend = _backend(request)
    limit = _int_query(request, "limit", DEFAULT_RUNS_LIMIT, 1, MAX_RUNS_LIMIT)
    office = request.query.get("office") or None
    runs = backend.journal.runs(limit=limit, office=office)
    if office is not None and not runs and office not in backend.controller.state.offices:
        raise _Problem(404, _unknown_office(office, backend))
    return web.json_response(
        {"runs": [run_view(backend, r, with_steps=False) for r in runs], "now": request.app[CLOCK]()}
    )


async def _run(request: web.Request) -> web.Response:
    await _allow(request, "list")
    backend = _backend(request)
    run_id = request.match_info["run_id"]
    run = backend.journal.run(run_id)
    if run is None:
        pending = _pending_run(backend, run_id)
        if pending is None:
            raise _Problem(404, f"no run '{run_id}' (list them with: baton runs)")
        pending["now"] = request.app[CLOCK]()
        return web.json_response(pending)
    view = run_view(backend, run, with_steps=True)
    view["now"] = request.app[CLOCK]()
    return web.json_response(view)


async def _abort(request: web.Request) -> web.Response:
    await _allow(request, "list")
    backend = _backend(request)
    run_id = request.match_info["run_id"]
    office = next(
        (o.office for o in backend.controller.state.offices.values() if run_id in (o.run_id, o.catchup_id)),
        None,
    )
    if office is None:
        record = backend.journal.run(run_id)
        if record is None:
            raise _Problem(404, f"no run '{run_id}' (list them with: baton runs)")
        office = record.office
    await _allow(request, "abort", office)
    data = await _body(request, {"reason": "string, required"})
    reason = _reason(data, required=True)
    if office not in backend.controller.state.offices:
        raise _Problem(
            409, f"run {run_id} is not in progress (office {office} is no longer in the inventory)"
        )
    outcome = backend.controller.abort(office, run_id, who=request[WHO], reason=reason, via=request.get(VIA))
    if outcome.accepted:
        # The run stops at its next safe point; the client follows it (`baton run ID`).
        outcome = replace(outcome, run_id=run_id)
    return _answer(request, "abort", outcome, office)


async def _approvals(request: web.Request) -> web.Response:
    await _allow(request, "list")
    backend = _backend(request)
    return web.json_response({"approvals": approvals_view(backend), "now": request.app[CLOCK]()})


def _office_of_approval(backend: ApiBackend, approval_id: str) -> str | None:
    """The office a request is (or was) about: pending, just ended, or named in its id."""
    offices = backend.controller.state.offices
    for office in offices.values():
        if office.approval is not None and office.approval.id == approval_id:
            return office.office
    for office in offices.values():
        if office.approval_ended.startswith(approval_id + " "):
            return office.office
    named = approval_id.removeprefix("approval-").rsplit("-", 1)[0]
    return named if approval_id.startswith("approval-") and named in offices else None


async def _approve(request: web.Request) -> web.Response:
    return await _on_approval(request, "approve", required=False)


async def _deny(request: web.Request) -> web.Response:
    return await _on_approval(request, "deny", required=True)


async def _on_approval(request: web.Request, command: str, *, required: bool) -> web.Response:
    """`approve` or `deny` of one pending approval, by whoever may do that for its office."""
    await _allow(request, "list")
    backend = _backend(request)
    approval_id = request.match_info["approval_id"]
    office = _office_of_approval(backend, approval_id)
    if office is None:
        raise _Problem(404, f"no approval '{approval_id}' (list them with: baton approvals)")
    await _allow(request, command, office)
    data = await _body(request, {"reason": "string, required" if required else "string"})
    reason = _reason(data, required=required)
    decide = backend.controller.deny if required else backend.controller.approve
    outcome = decide(office, approval_id, who=request[WHO], reason=reason, via=request.get(VIA))
    return _answer(request, command, outcome, office)


async def _grants(request: web.Request) -> web.Response:
    """Who may do what and until when: every grant for an admin of all offices, else one's own."""
    backend = _backend(request)
    grants = backend.config.operators.grants
    identity = request[IDENTITY]
    now = request.app[CLOCK]()
    everything = authorize(grants, identity, Target("grants"), now).allowed
    shown = grants.grants if everything else grants_for(grants, identity)
    ended = set(backend.controller.state.expired_grants)
    return web.json_response(
        {
            "enforced": grants.enforced,
            "you": identity.name,
            "your_groups": sorted(g for g, members in grants.groups.items() if identity.name in members)
            + sorted(identity.unix_groups),
            "all": everything,
            "grants": [
                {
                    "id": g.id,
                    "to": g.to,
                    "role": g.role.value,
                    "scope": list(g.scope),
                    "until": g.until,
                    "until_text": None if g.until is None else when(g.until),
                    "live": g.is_live(now),
                    "ended_journaled": g.id in ended,
                    "members": sorted(grants.groups.get(g.to.removeprefix("group:"), ()))
                    if g.to.startswith("group:")
                    else None,
                    "where": g.where,
                }
                for g in shown
            ],
            "global_commands": sorted(GLOBAL),
            "now": now,
        }
    )


async def _audit(request: web.Request) -> web.Response:
    await _allow(request, "list")
    backend = _backend(request)
    office = request.query.get("office") or None
    since = None
    if request.query.get("since"):
        try:
            since = parse_until(request.query["since"])
        except ValueError:
            raise _Problem(400, "query parameter 'since' must be an ISO 8601 time or epoch seconds") from None
    limit = _int_query(request, "limit", MAX_AUDIT_LIMIT, 1, MAX_AUDIT_LIMIT)
    records = await backend.journal.call(backend.journal.audit_records, office, since, limit)
    return web.json_response({"records": [r.as_dict() for r in records], "now": request.app[CLOCK]()})


async def _audit_verify(request: web.Request) -> web.Response:
    await _allow(request, "list")
    backend = _backend(request)
    result = await backend.journal.call(backend.journal.verify_audit)
    return web.json_response(
        {"ok": result.ok, "rows": result.rows, "broken_id": result.broken_id, "why": result.why}
    )


# Every state-changing request: on a follower, forwarded to the leader.
_COMMANDS: frozenset[Handler] = frozenset(
    {_handover, _handback, _ack, _resolve, _pause, _resume, _shadow, _abort, _approve, _deny}
)


# --- requests aiohttp cannot parse ----------------------------------------------------------


class _QuietHandler(web_protocol.RequestHandler):
    """aiohttp's connection handler, but a request it cannot parse (or a failure outside every
    middleware) is answered with one JSON sentence and logged in one line — never with the
    request's own bytes, which aiohttp would echo in the body and the log (a bearer token
    included), nor with a traceback."""

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        cause = type(exc).__name__ if exc is not None else "error"
        first = (message or str(exc or "")).strip().splitlines()
        what = mask_text(first[0].rstrip(":"))[:100] if first else "the request could not be read"
        if status >= 500:  # a bug outside every middleware: its traceback, masked like every line
            _log().error("api.internal_error", remote=request.remote, cause=cause, exc_info=exc)
        else:
            _log().warning("api.bad_request", remote=request.remote, status=status, cause=cause, what=what)
        if request.writer.output_size > 0:
            raise ConnectionError("response already started: cannot send the error")
        if status >= 500:
            sentence = "internal error: the daemon log has the details"
        else:
            sentence = f"malformed HTTP request ({what.lower()}): send a well-formed HTTP/1.1 request"
        response = web.json_response({"error": sentence}, status=status)
        response.force_close()
        return response


class _QuietServer(web_server.Server):
    def __call__(self) -> web_protocol.RequestHandler:
        return _QuietHandler(self, loop=self._loop, **self._kwargs)


class _Runner(web.AppRunner):
    async def _make_server(self) -> web_server.Server:
        server = await super()._make_server()
        # The application's server, with its connections handled by _QuietHandler.
        server.__class__ = _QuietServer
        return server


# --- listeners --------------------------------------------------------------------------------


@dataclass(slots=True)
class Listeners:
    """The running listeners; `close()` stops them and removes the socket file."""

    runner: web.AppRunner
    unix_socket: Path
    tcp: tuple[str, int] | None = None  # bound (host, port), when TCP is on

    async def close(self) -> None:
        await self.runner.cleanup()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.unix_socket)


async def start_listeners(
    app: web.Application, settings: ApiSettings, resolve: Callable[[SecretRef], str]
) -> Listeners:
    """Serve `app` on the unix socket and, if configured, on TCP. ApiSetupError if it cannot."""
    store = app[TOKENS]
    for ref in settings.tokens:
        # Named after where it lives ("token:api-ops"), which says whose it is without being it.
        store.add(f"token:{Path(ref.name).name if ref.kind == 'file' else ref.name}", resolve(ref))
    if settings.peer_token is not None:
        peer_token = resolve(settings.peer_token)
        if store.identify(peer_token) is not None:
            raise ApiSetupError(
                "api.peer_token has the value of one of api.tokens: whoever holds that token could act as "
                "any operator; give the vantages a credential of their own"
            )
        app[PEER_TOKENS].add("api.peer_token", peer_token)
        app[FORWARDING] = _Forwarding(peer_token, _peer_tls(settings))
    if not app[PEERCRED] and not store.entries:
        raise ApiSetupError("the API has no way to authenticate anybody: no tokens and no peer credentials")
    if settings.tcp_listen is not None and not store.entries and not app[PEER_TOKENS].entries:
        raise ApiSetupError(
            f"the TCP API ({settings.tcp_listen}) has no tokens: add api.tokens or remove api.tcp_listen"
        )
    unix_sock = _unix_socket(settings.unix_socket, settings.socket_group)
    tcp_sock = None
    try:
        tcp_sock = _tcp_socket(settings.tcp_listen) if settings.tcp_listen is not None else None
        tls = _tls_context(settings)
    except BaseException:
        unix_sock.close()
        if tcp_sock is not None:
            tcp_sock.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(settings.unix_socket)
        raise
    # access_log=None: requests that matter (commands, refusals) are logged by the handlers.
    runner = _Runner(app, access_log=None, handle_signals=False)
    await runner.setup()
    listeners = Listeners(runner, settings.unix_socket)
    try:
        await web.SockSite(runner, unix_sock).start()
        if tcp_sock is not None:
            host, port = tcp_sock.getsockname()[:2]
            await web.SockSite(runner, tcp_sock, ssl_context=tls).start()
            listeners.tcp = (host, port)
    except BaseException:
        await listeners.close()
        raise
    _log().info(
        "api.listening",
        unix_socket=str(settings.unix_socket),
        tcp=None if listeners.tcp is None else f"{listeners.tcp[0]}:{listeners.tcp[1]}",
        tls=tls is not None,
        token_count=len(store.entries),
        forwarding=app[FORWARDING] is not None,
    )
    return listeners


def _unix_socket(path: Path, group: str | None) -> socket.socket:
    try:
        path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
    except OSError as exc:
        raise ApiSetupError(f"cannot create {path.parent} for the API socket: {exc.strerror}") from None
    _remove_stale(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(str(path))
        # Bound but not yet listening: nobody can connect until the mode and group are right.
        os.chmod(path, SOCKET_MODE)
        if group is not None:
            shutil.chown(path, group=group)
    except LookupError:
        sock.close()
        path.unlink(missing_ok=True)
        raise ApiSetupError(f"api.socket_group '{group}' is not a group on this host") from None
    except OSError as exc:
        sock.close()
        raise ApiSetupError(f"cannot create the API socket {path}: {exc.strerror or exc}") from None
    return sock


def _remove_stale(path: Path) -> None:
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise ApiSetupError(f"{path} exists and is not a socket; remove it or choose another api.unix_socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(str(path))
    except OSError:
        path.unlink(missing_ok=True)  # left by a Baton that died: nobody answers on it
        return
    finally:
        probe.close()
    raise ApiSetupError(f"another process answers on {path}: is a second Baton running?")


def _tcp_socket(listen: str) -> socket.socket:
    host, _, port_text = listen.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        return socket.create_server((host, int(port_text)), family=family)
    except (OSError, ValueError) as exc:
        cause = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ApiSetupError(f"cannot listen on {listen} for the TCP API: {cause}") from None


def _peer_tls(settings: ApiSettings) -> ssl.SSLContext | None:
    """Forwarding speaks TLS when this vantage's API does (the vantages are configured alike),
    verifying the leader's certificate against api.peer_ca, else the system's trust store."""
    if settings.tls_cert is None:
        return None
    try:
        context = ssl.create_default_context(
            cafile=None if settings.peer_ca is None else str(settings.peer_ca)
        )
    except (OSError, ssl.SSLError) as exc:
        raise ApiSetupError(f"cannot load api.peer_ca {settings.peer_ca}: {exc}") from None
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


def _tls_context(settings: ApiSettings) -> ssl.SSLContext | None:
    if settings.tls_cert is None or settings.tls_key is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(settings.tls_cert, settings.tls_key)
    except (OSError, ssl.SSLError) as exc:
        raise ApiSetupError(
            f"cannot load the API TLS certificate {settings.tls_cert} / key {settings.tls_key}: {exc}"
        ) from None
    return context


__all__ = [
    "ApiBackend",
    "ApiSetupError",
    "Listeners",
    "create_app",
    "office_view",
    "parse_until",
    "run_status",
    "run_view",
    "start_listeners",
    "status_view",
    "user_name",
]
