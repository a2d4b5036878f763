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

Every command goes through the `Controller`, which journals who asked, what and why, and answers
with the core's sentence: accepted → 200 (202 when a run started, with its id), refused → 409
with the core's reason. Reads come from the controller's immutable snapshot and the journal.
Every error body is `{"error": "<one sentence>"}`.
"""

from __future__ import annotations

import contextlib
import datetime as dt
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
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from aiohttp import web

from baton import wallboard
from baton.config import ApiSettings, Config
from baton.controller import CommandOutcome, Controller
from baton.core.model import Inventory, OfficeState, Phase, SecretRef
from baton.journal import Journal, RunRecord, StepRecord
from baton.logs import get_logger

API_VERSION = "v1"
MAX_BODY_BYTES = 64 * 1024
MAX_REASON_CHARS = 2000
DEFAULT_RUNS_LIMIT = 50
MAX_RUNS_LIMIT = 1000
SOCKET_MODE = 0o660
_RUNNING = frozenset({Phase.HANDING_OVER, Phase.HANDING_BACK})
_PEERCRED = struct.Struct("3i")  # struct ucred {pid_t pid; uid_t uid; gid_t gid;}


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
        self.entries.append((name, token.encode()))

    def identify(self, presented: str) -> str | None:
        candidate = presented.encode()
        found: str | None = None
        # Compare with every token, in constant time each, so timing says nothing about which
        # token (or how much of one) matched.
        for name, token in self.entries:
            if hmac.compare_digest(candidate, token) and found is None:
                found = name
        return found


BACKEND: web.AppKey[ApiBackend] = web.AppKey("backend")
TOKENS: web.AppKey[_Tokens] = web.AppKey("tokens")
PEERCRED: web.AppKey[bool] = web.AppKey("allow_peercred")
CLOCK: web.AppKey[Callable[[], float]] = web.AppKey("clock")
WHO: web.RequestKey[str] = web.RequestKey("who")


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
    app = web.Application(middlewares=[_errors, _authenticate], client_max_size=MAX_BODY_BYTES)
    app[BACKEND] = backend
    app[TOKENS] = store
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
    wallboard.add_routes(app)  # the NOC wall screen's page, its session login and its event stream
    return app


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _error(status: int, message: str, headers: Mapping[str, str] | None = None) -> web.Response:
    return web.json_response({"error": message}, status=status, headers=headers)


@web.middleware
async def _errors(request: web.Request, handler: Handler) -> web.StreamResponse:
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
    request[WHO] = who
    return await handler(request)


def _identify(request: web.Request) -> str | None:
    app = request.app
    sock = request.transport.get_extra_info("socket") if request.transport is not None else None
    if sock is not None and sock.family == socket.AF_UNIX and app[PEERCRED]:
        raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size)
        _pid, uid, _gid = _PEERCRED.unpack(raw)
        return user_name(uid)
    header = request.headers.get("Authorization", "")
    scheme, _, presented = header.partition(" ")
    presented = presented.strip()
    if scheme.lower() != "bearer" or not presented:
        _log().warning(
            "api.unauthorized", remote=request.remote, path=request.path, cause="no bearer credentials"
        )
        return None
    who = app[TOKENS].identify(presented)
    if who is None:
        _log().warning("api.unauthorized", remote=request.remote, path=request.path, cause="token rejected")
    return who


def user_name(uid: int) -> str:
    """The operator behind a unix-socket peer: its user name, or `uid:N` when the host has none."""
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid:{uid}"


# --- reading the body and the query -----------------------------------------------------------


async def _body(request: web.Request, allowed: Mapping[str, str]) -> dict[str, Any]:
    """The JSON object in the body, with only `allowed` fields (name → what it is, for errors)."""
    raw = await request.read()
    if not raw.strip():
        return {}
    try:
        data = json.loads(raw)
    except UnicodeDecodeError:
        raise _Problem(400, "the body is not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        raise _Problem(
            400, f"malformed JSON body: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from None
    if not isinstance(data, dict):
        raise _Problem(400, f"the body must be a JSON object, not {_json_type(data)}")
    unknown = sorted(set(data) - set(allowed))
    if unknown:
        fields_ = ", ".join(f"'{name}' ({what})" for name, what in allowed.items()) or "none"
        raise _Problem(400, f"unknown field '{unknown[0]}'; this endpoint takes {fields_}")
    return data


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


async def _status(request: web.Request) -> web.Response:
    return web.json_response(status_view(_backend(request), request.app[CLOCK]()))


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
        "daemon": backend.status_extra(),
        "now": now,
    }


async def _offices(request: web.Request) -> web.Response:
    backend = _backend(request)
    offices = backend.controller.state.offices
    views = [office_view(backend, offices[name]) for name in sorted(offices)]
    return web.json_response({"offices": views, "now": request.app[CLOCK]()})


async def _office(request: web.Request) -> web.Response:
    backend = _backend(request)
    office = _office_state(request)
    view = office_view(backend, office)
    view["alerts"] = [
        {"alert": a.alert, "message": a.message, "at": a.at}
        for a in backend.journal.active_alerts()
        if a.office == office.office
    ]
    view["now"] = request.app[CLOCK]()
    return web.json_response(view)


async def _devices(request: web.Request) -> web.Response:
    office = _office_state(request)
    devices = _backend(request).device_views(office.office)
    return web.json_response({"office": office.office, "devices": devices, "now": request.app[CLOCK]()})


async def _plan(request: web.Request) -> web.Response:
    office = _office_state(request)
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
    )
    if not outcome.accepted:
        raise _Problem(409, outcome.reason)
    backend = _backend(request)
    body: dict[str, Any] = {"accepted": True, "reason": outcome.reason, "run_id": outcome.run_id}
    if office is not None:
        body["office"] = office_view(backend, backend.controller.state.offices[office])
    return web.json_response(body, status=202 if outcome.run_id is not None else 200)


async def _handover(request: web.Request) -> web.Response:
    office = _office_state(request)
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
        office.office, who=request[WHO], reason=reason, until=until, to=to
    )
    return _answer(request, "handover", outcome, office.office)


async def _handback(request: web.Request) -> web.Response:
    office = _office_state(request)
    data = await _body(request, {"reason": "string, required"})
    reason = _reason(data, required=True)
    outcome = _backend(request).controller.request_handback(office.office, who=request[WHO], reason=reason)
    return _answer(request, "handback", outcome, office.office)


async def _ack(request: web.Request) -> web.Response:
    office = _office_state(request)
    data = await _body(request, {"reason": "string"})
    reason = _reason(data, required=False)
    outcome = _backend(request).controller.ack(office.office, who=request[WHO], reason=reason)
    return _answer(request, "ack", outcome, office.office)


async def _pause(request: web.Request) -> web.Response:
    data = await _body(request, {"reason": "string, required"})
    reason = _reason(data, required=True)
    outcome = _backend(request).controller.set_paused(True, who=request[WHO], reason=reason)
    return _answer(request, "pause", outcome, None)


async def _resume(request: web.Request) -> web.Response:
    data = await _body(request, {"reason": "string"})
    reason = _reason(data, required=False)
    outcome = _backend(request).controller.set_paused(False, who=request[WHO], reason=reason)
    return _answer(request, "resume", outcome, None)


async def _shadow(request: web.Request) -> web.Response:
    data = await _body(request, {"on": "boolean, required", "reason": "string"})
    on = data.get("on")
    if not isinstance(on, bool):
        what = "missing" if on is None else f"{_json_type(on)}"
        raise _Problem(400, f"'on' must be true or false ({what})")
    reason = _reason(data, required=False)
    outcome = _backend(request).controller.set_shadow(on, who=request[WHO], reason=reason)
    return _answer(request, "shadow-on" if on else "shadow-off", outcome, None)


async def _runs(request: web.Request) -> web.Response:
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
    if not app[PEERCRED] and not store.entries:
        raise ApiSetupError("the API has no way to authenticate anybody: no tokens and no peer credentials")
    if settings.tcp_listen is not None and not store.entries:
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
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
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
