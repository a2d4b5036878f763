"""The NOC wallboard: a read-only status page for a wall screen, served by the daemon's API.

Theory of operation. The page lives under `/v1/wallboard/` on the same aiohttp application as the
control API, so it is exactly as closed as the API: every route answers 401 without an identity.
A browser cannot send a bearer token when it navigates, and cannot reach the unix socket, so the
API issues sessions:

1. `POST /v1/wallboard/session`, authenticated like any API call (SO_PEERCRED on the unix socket,
   or `Authorization: Bearer` on TCP; never by a wallboard cookie, so a session cannot renew
   itself), answers with a one-time login URL on the TCP listener, valid for `TICKET_TTL_S`.
2. Opening that URL (`GET /v1/wallboard/login?ticket=…`) spends the ticket and sets a cookie
   (HttpOnly, SameSite=Strict, Path=/v1/wallboard, Secure over TLS) naming a new session, which
   ends after `ttl_s` (default 12 h, at most 7 days). The page, its assets, `/snapshot` and the
   server-sent events of `/events` accept that cookie; no other API route does.
3. `POST /v1/wallboard/logout` ends the session. Sessions live in the daemon's memory: a restart
   signs every wallboard out (the page says so and asks for a new login URL).

Tickets and session ids are random (`secrets`), kept only as SHA-256 digests, never logged.

What the page shows is read through the API's own views and the `ApiBackend` protocol
(`status_view`, `office_view`, `run_view`, `device_views`, `run_progress`), never the daemon's
internals: every office as a tile (phase and verdict, alternate, the decision's sentence) grouped
by region, runs in progress with per-device progress, active alerts, recent runs, and pending
approvals and vantages once the daemon reports them (lists named `approvals` / `vantages` in
/v1/status or its `daemon` facts; absent, their panels stay hidden). `/v1/wallboard/events`
sends one JSON snapshot when anything changed, checked every `EVENT_INTERVAL_S`, and a `ping`
with the time otherwise, so the page can tell live from stale.

Usage, from a machine that can reach the API (the URL is printed; open it on the wall screen):

    curl -s --unix-socket /run/baton/api.sock -X POST http://localhost/v1/wallboard/session
    curl -s -H "Authorization: Bearer $(cat TOKEN_FILE)" -X POST https://HOST:PORT/v1/wallboard/session \\
         -d '{"ttl_s": 43200}'

The browser must reach `api.tcp_listen` (with `api.tls_cert` for https): the page is served there.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import importlib.resources
import json
import math
import secrets
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from baton import api
from baton.core.model import Phase
from baton.logs import get_logger

PREFIX = "/v1/wallboard"
LOGIN_PATH = f"{PREFIX}/login"
SESSION_PATH = f"{PREFIX}/session"
LOGOUT_PATH = f"{PREFIX}/logout"
EVENTS_PATH = f"{PREFIX}/events"
COOKIE = "baton_wallboard"
TICKET_TTL_S = 60.0
DEFAULT_SESSION_TTL_S = 12 * 3600.0  # a NOC shift
MIN_SESSION_TTL_S = 60.0
MAX_SESSION_TTL_S = 7 * 86400.0
MAX_TICKETS = 64
MAX_SESSIONS = 256
MAX_STREAMS = 64
EVENT_INTERVAL_S = 1.0
SNAPSHOT_CACHE_S = 0.5  # wallboards watching together share one snapshot
RECENT_RUNS = 6
RECENT_RUNS_S = 3600.0
UNAUTHORIZED = (
    "authentication required: open a wallboard login URL (POST /v1/wallboard/session gives one; "
    "a session expires) or send 'Authorization: Bearer <token>'"
)

# The page may load only what the daemon serves: no CDN, no inline script, no framing.
_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
        "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
_ASSETS = {
    "wallboard.js": "text/javascript",
    "wallboard.css": "text/css",
    "favicon.svg": "image/svg+xml",
}
_RUNNING = frozenset({Phase.HANDING_OVER, Phase.HANDING_BACK})
_STEP_STATUS = {"intent": "running"}  # journaled before the step ran: it is running now


def _log() -> Any:
    return get_logger(component="wallboard")


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


# --- sessions (pure: the time is an argument) ----------------------------------------------------


@dataclass(frozen=True, slots=True)
class Session:
    """A signed-in wallboard: whose login URL it came from, and when it ends."""

    key: str  # SHA-256 of the cookie value; the value itself is only in the browser
    who: str
    created: float
    expires: float


@dataclass(frozen=True, slots=True)
class _Ticket:
    who: str
    expires: float
    session_ttl_s: float


@dataclass(slots=True)
class Sessions:
    """One-time login tickets and the sessions they open, both bounded and expiring."""

    max_tickets: int = MAX_TICKETS
    max_sessions: int = MAX_SESSIONS
    token: Callable[[], str] = field(default=lambda: secrets.token_urlsafe(32))
    _tickets: dict[str, _Ticket] = field(default_factory=dict)
    _sessions: dict[str, Session] = field(default_factory=dict)

    def issue_ticket(self, who: str, session_ttl_s: float, now: float) -> tuple[str, float]:
        """A new one-time ticket for `who` and when it stops being accepted."""
        self.prune(now)
        while len(self._tickets) >= self.max_tickets:
            self._tickets.pop(next(iter(self._tickets)))  # the oldest goes first
        ticket = self.token()
        expires = now + TICKET_TTL_S
        self._tickets[_digest(ticket)] = _Ticket(who, expires, session_ttl_s)
        return ticket, expires

    def redeem(self, ticket: str, now: float) -> tuple[str, Session] | None:
        """The cookie value and session a ticket opens; None if unknown, spent or expired.
        A ticket is gone after its first use, whatever the outcome."""
        found = self._tickets.pop(_digest(ticket), None)
        if found is None or found.expires <= now:
            return None
        self.prune(now)
        while len(self._sessions) >= self.max_sessions:
            self._sessions.pop(next(iter(self._sessions)))
        cookie = self.token()
        session = Session(_digest(cookie), found.who, now, now + found.session_ttl_s)
        self._sessions[session.key] = session
        return cookie, session

    def find(self, cookie: str, now: float) -> Session | None:
        """The live session a cookie names, else None (an expired one is forgotten)."""
        return self.alive(_digest(cookie), now)

    def alive(self, key: str, now: float) -> Session | None:
        session = self._sessions.get(key)
        if session is None:
            return None
        if session.expires <= now:
            del self._sessions[key]
            return None
        return session

    def revoke(self, key: str) -> bool:
        return self._sessions.pop(key, None) is not None

    def prune(self, now: float) -> None:
        self._tickets = {k: t for k, t in self._tickets.items() if t.expires > now}
        self._sessions = {k: s for k, s in self._sessions.items() if s.expires > now}

    @property
    def count(self) -> int:
        return len(self._sessions)


@dataclass(slots=True)
class _Board:
    sessions: Sessions = field(default_factory=Sessions)
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    streams: int = 0
    cache: tuple[float, int, dict[str, Any]] | None = None  # (monotonic time, id(backend), snapshot)


BOARD: web.AppKey[_Board] = web.AppKey("wallboard")
SESSION: web.RequestKey[Session] = web.RequestKey("wallboard_session")


# --- authentication hooks used by api._authenticate -----------------------------------------------


def is_wallboard(request: web.Request) -> bool:
    return request.path == PREFIX or request.path.startswith(PREFIX + "/")


def is_login(request: web.Request) -> bool:
    """The login route authenticates its own one-time ticket."""
    return request.path == LOGIN_PATH


def session_identity(request: web.Request) -> str | None:
    """Who a wallboard cookie signs in, on the wallboard's read-only routes (and logout); else None.

    Creating a session is never allowed with a cookie: that needs the API's own authentication."""
    if not is_wallboard(request) or request.path == SESSION_PATH:
        return None
    if request.method not in ("GET", "HEAD") and request.path != LOGOUT_PATH:
        return None
    cookie = request.cookies.get(COOKIE)
    if not cookie or BOARD not in request.app:
        return None
    session = request.app[BOARD].sessions.find(cookie, request.app[api.CLOCK]())
    if session is None:
        _log().warning(
            "wallboard.unauthorized",
            remote=request.remote,
            path=request.path,
            cause="session unknown or expired",
        )
        return None
    request[SESSION] = session
    return f"{session.who} (wallboard)"


# --- routes ------------------------------------------------------------------------------------


def add_routes(app: web.Application) -> None:
    """The wallboard's routes on the API application (authentication is the API's middleware)."""
    app[BOARD] = _Board()
    app.router.add_get(PREFIX, _page)
    app.router.add_get(f"{PREFIX}/", _page)
    app.router.add_get(f"{PREFIX}/assets/{{name}}", _asset)
    app.router.add_get(f"{PREFIX}/snapshot", _snapshot)
    app.router.add_get(EVENTS_PATH, _events)
    app.router.add_post(SESSION_PATH, _create_session)
    app.router.add_get(LOGIN_PATH, _login)
    app.router.add_post(LOGOUT_PATH, _logout)
    app.on_shutdown.append(_stop_streams)


async def _stop_streams(app: web.Application) -> None:
    # Open event streams end at once: the daemon's shutdown must not wait for wall screens.
    app[BOARD].stopping.set()


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


@functools.cache
def _read_asset(name: str) -> bytes:
    return importlib.resources.files("baton").joinpath("wallboard", name).read_bytes()


async def _page(request: web.Request) -> web.Response:
    return web.Response(
        body=_read_asset("index.html"), content_type="text/html", charset="utf-8", headers=_HEADERS
    )


async def _asset(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    content_type = _ASSETS.get(name)
    if content_type is None:
        return _error(404, f"no such wallboard asset: {name}")
    charset = None if content_type.startswith("image/") else "utf-8"
    return web.Response(body=_read_asset(name), content_type=content_type, charset=charset, headers=_HEADERS)


async def _snapshot(request: web.Request) -> web.Response:
    return web.json_response(_shared_snapshot(request.app), headers={"Cache-Control": "no-store"})


async def _create_session(request: web.Request) -> web.Response:
    raw = await request.read()
    ttl_s = DEFAULT_SESSION_TTL_S
    if raw.strip():
        try:
            data = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError):
            return _error(400, 'the body must be a JSON object, e.g. {"ttl_s": 43200}')
        if not isinstance(data, dict) or set(data) - {"ttl_s"}:
            return _error(400, "this endpoint takes one optional field: 'ttl_s' (seconds the session lasts)")
        value = data.get("ttl_s", ttl_s)
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            return _error(400, "'ttl_s' must be a finite number of seconds")
        if not MIN_SESSION_TTL_S <= value <= MAX_SESSION_TTL_S:
            return _error(
                400, f"'ttl_s' must be between {MIN_SESSION_TTL_S:g} and {MAX_SESSION_TTL_S:g} seconds"
            )
        ttl_s = float(value)
    who = request[api.WHO]
    now = request.app[api.CLOCK]()
    ticket, expires = request.app[BOARD].sessions.issue_ticket(who, ttl_s, now)
    path = f"{LOGIN_PATH}?ticket={ticket}"
    url = _login_url(request, path)
    _log().info("wallboard.session_issued", who=who, ttl_s=ttl_s)
    body: dict[str, Any] = {
        "url": url,
        "path": path,
        "expires": expires,
        "ttl_s": ttl_s,
        "who": who,
        "note": f"open the URL once, within {TICKET_TTL_S:g} s; the session lasts {ttl_s:g} s",
    }
    if url is None:
        body["note"] = "the API has no TCP listener (api.tcp_listen): a browser cannot reach the unix socket"
    return web.json_response(body, headers={"Cache-Control": "no-store"})


def _login_url(request: web.Request, path: str) -> str | None:
    """Where a browser opens `path`: the listener this request came in on, else api.tcp_listen."""
    sock = request.transport.get_extra_info("socket") if request.transport is not None else None
    if sock is None or sock.family != socket.AF_UNIX:
        return f"{request.scheme}://{request.host}{path}"
    settings = request.app[api.BACKEND].config.api
    if settings.tcp_listen is None:
        return None
    host, _, port = settings.tcp_listen.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if host in ("", "0.0.0.0", "::"):  # noqa: S104 - reading the configured address, not binding
        host = socket.gethostname()
    if ":" in host:
        host = f"[{host}]"
    scheme = "https" if settings.tls_cert is not None else "http"
    return f"{scheme}://{host}:{port}{path}"


_SIGNED_IN = b"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Baton wallboard: signed in</title>
<meta http-equiv="refresh" content="0; url=/v1/wallboard/"></head>
<body><p>Signed in. <a href="/v1/wallboard/">Open the wallboard</a>.</p></body></html>
"""


async def _login(request: web.Request) -> web.Response:
    board = request.app[BOARD]
    ticket = request.query.get("ticket", "")
    opened = board.sessions.redeem(ticket, request.app[api.CLOCK]()) if ticket else None
    if opened is None:
        _log().warning(
            "wallboard.login_refused", remote=request.remote, cause="ticket unknown, spent or expired"
        )
        return web.json_response(
            {
                "error": "this login URL is unknown, already used or expired: "
                "ask for a new one (POST /v1/wallboard/session)"
            },
            status=401,
            headers={"Cache-Control": "no-store", "Referrer-Policy": "no-referrer"},
        )
    cookie, session = opened
    _log().info("wallboard.login", who=session.who, remote=request.remote, expires=session.expires)
    # A page that navigates on, not a redirect: the navigation then starts on this site, so the
    # SameSite=Strict cookie goes along even when the login link was opened from another site.
    response = web.Response(body=_SIGNED_IN, content_type="text/html", charset="utf-8", headers=_HEADERS)
    response.set_cookie(
        COOKIE,
        cookie,
        max_age=max(1, int(session.expires - session.created)),
        path=PREFIX,
        httponly=True,
        samesite="Strict",
        secure=request.secure,
    )
    return response


async def _logout(request: web.Request) -> web.Response:
    session = request.get(SESSION)
    if session is not None:
        request.app[BOARD].sessions.revoke(session.key)
        _log().info("wallboard.logout", who=session.who)
    response = web.json_response({"signed_out": session is not None})
    response.del_cookie(COOKIE, path=PREFIX)
    return response


async def _events(request: web.Request) -> web.StreamResponse:
    board = request.app[BOARD]
    if board.streams >= MAX_STREAMS:
        return _error(503, f"too many wallboards watching ({MAX_STREAMS}); close one and retry")
    session = request.get(SESSION)
    clock = request.app[api.CLOCK]
    response = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-store",
            "X-Accel-Buffering": "no",  # a reverse proxy must not hold the events back
        }
    )
    board.streams += 1
    try:
        await response.prepare(request)
        await response.write(
            _event(
                "hello", {"who": request[api.WHO], "expires": None if session is None else session.expires}
            )
        )
        sent: str | None = None
        while not board.stopping.is_set():
            now = clock()
            if session is not None and board.sessions.alive(session.key, now) is None:
                await response.write(
                    _event("expired", {"error": "the wallboard session ended: sign in again"})
                )
                break
            snap = _shared_snapshot(request.app)
            changed = json.dumps(_stable(snap), sort_keys=True)
            if changed != sent:
                await response.write(_event("snapshot", snap))
                sent = changed
            else:
                await response.write(
                    _event("ping", {"now": snap["now"], "last_loop_at": snap["last_loop_at"]})
                )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(board.stopping.wait(), EVENT_INTERVAL_S)
    except ConnectionResetError:
        pass  # the wall screen went away
    finally:
        board.streams -= 1
    return response


def _event(name: str, data: Mapping[str, Any]) -> bytes:
    return f"event: {name}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


def _stable(snap: Mapping[str, Any]) -> dict[str, Any]:
    """The snapshot without what changes by itself (the time), to tell a real change."""
    return {k: v for k, v in snap.items() if k not in ("now", "last_loop_at")}


# --- the snapshot ------------------------------------------------------------------------------


def _shared_snapshot(app: web.Application) -> dict[str, Any]:
    board = app[BOARD]
    backend = app[api.BACKEND]
    age_at = time.monotonic()  # the cache ages in real time, whatever clock the app is given
    if board.cache is not None:
        at, backend_id, cached = board.cache
        if backend_id == id(backend) and 0 <= age_at - at < SNAPSHOT_CACHE_S:
            return cached
    snap = snapshot(backend, app[api.CLOCK]())
    board.cache = (age_at, id(backend), snap)
    return snap


def snapshot(backend: api.ApiBackend, now: float) -> dict[str, Any]:
    """Everything the wallboard shows, as JSON: offices by region, runs, alerts, flags."""
    status = api.status_view(backend, now)
    raw_daemon = status.get("daemon")
    daemon: Mapping[str, Any] = raw_daemon if isinstance(raw_daemon, Mapping) else {}
    state = backend.controller.state
    pending = _pending_devices(daemon)
    alerts_of: dict[str | None, int] = {}
    for alert in status["alerts"]:
        alerts_of[alert["office"]] = alerts_of.get(alert["office"], 0) + 1
    order = [o for o in backend.inventory.offices if o in state.offices]
    order += sorted(o for o in state.offices if o not in backend.inventory.offices)
    regions: dict[str, list[dict[str, Any]]] = {}
    names: dict[str, str] = {}
    for office_id in order:
        view = api.office_view(backend, state.offices[office_id])
        view["alerts"] = alerts_of.get(office_id, 0)
        view["pending_devices"] = pending.get(office_id, [])
        names[office_id] = view["name"]
        regions.setdefault(view["region"] or "—", []).append(view)
    for views in regions.values():
        for view in views:
            view["alternate_name"] = names.get(view["alternate"] or "", view["alternate"])
            view["alternates_names"] = [names.get(a, a) for a in view["alternates"]]
    running = _running_run_ids(backend, daemon)
    return {
        "now": now,
        "vantage": status["vantage"],
        "vantage_office": status["vantage_office"],
        "flags": {
            "paused": status["paused"],
            "shadow": status["shadow"],
            "storm": status["storm"],
            "leader": status["leader"],
        },
        "phases": status["phases"],
        "offices": status["offices"],
        "regions": [{"id": region, "offices": views} for region, views in regions.items()],
        "runs": [card for run_id in running if (card := _run_card(backend, run_id, names, pending))],
        "recent_runs": _recent_runs(backend, now, set(running), names),
        "alerts": [{**a, "office_name": names.get(a["office"] or "", a["office"])} for a in status["alerts"]],
        "approvals": _optional_list(status, daemon, "approvals"),
        "vantages": _vantages(daemon),
        "last_loop_at": daemon.get("last_loop_at"),
    }


def _vantages(daemon: Mapping[str, Any]) -> list[dict[str, Any]] | None:
    """The vantages present (over etcd), the leader marked; None with one vantage alone."""
    view = daemon.get("leadership")
    if not isinstance(view, Mapping) or not view.get("vantages"):
        return None
    leader, me = view.get("leader"), view.get("me")
    epoch = view.get("epoch")
    return [
        {"id": str(v), "leader": v == leader, "here": v == me, "epoch": epoch if v == leader else None}
        for v in view["vantages"]
    ]


def _optional_list(status: Mapping[str, Any], daemon: Mapping[str, Any], name: str) -> list[Any] | None:
    """A list the daemon does not report yet (approvals, vantages): None while it is absent."""
    value = status.get(name, daemon.get(name))
    return list(value) if isinstance(value, list | tuple) else None


def _pending_devices(daemon: Mapping[str, Any]) -> dict[str, list[str]]:
    raw = daemon.get("pending_devices")
    if not isinstance(raw, Mapping):
        return {}
    return {str(office): sorted(str(d) for d in devices) for office, devices in raw.items()}


def _running_run_ids(backend: api.ApiBackend, daemon: Mapping[str, Any]) -> list[str]:
    ids: list[str] = []
    for state in backend.controller.state.offices.values():
        if state.phase in _RUNNING and state.run_id and state.run_id not in ids:
            ids.append(state.run_id)
    for key in ("runs_in_progress", "catchups_in_progress"):  # catch-ups are the daemon's own runs
        for run_id in daemon.get(key) or ():
            if isinstance(run_id, str) and run_id not in ids:
                ids.append(run_id)
    return ids


def _run_card(
    backend: api.ApiBackend, run_id: str, names: Mapping[str, str], pending: Mapping[str, list[str]]
) -> dict[str, Any] | None:
    record = backend.journal.run(run_id)
    steps: list[dict[str, Any]] = []
    if record is not None:
        view = api.run_view(backend, record, with_steps=True)
        steps = view.pop("steps")
        view.pop("progress", None)
    else:
        # Started by the core, not journaled by the runner yet: what the office's state says.
        found = next(
            (
                s
                for s in backend.controller.state.offices.values()
                if s.run_id == run_id and s.phase in _RUNNING
            ),
            None,
        )
        if found is None:
            return None
        view = {
            "id": run_id,
            "office": found.office,
            "kind": found.run_kind.value if found.run_kind is not None else None,
            "alternate": found.alternate,
            "reason": None,
            "who": None,
            "started": found.since or None,
            "finished": None,
            "result": None,
            "status": "running",
        }
    if view["status"] != "running":
        return None
    devices: dict[str, dict[str, Any]] = {}
    for step in steps:  # in journal order: the last record of a device is where it is
        entry = devices.setdefault(step["device"], {"id": step["device"], "steps_done": 0})
        entry.update(step=step["name"], phase=step["phase"], status=step["status"], detail=step["detail"])
        if step["status"] == "done":
            entry["steps_done"] += 1
    for device, live in (backend.run_progress(run_id) or {}).items():
        entry = devices.setdefault(str(device), {"id": str(device), "steps_done": 0})
        if isinstance(live, Mapping):
            entry.update({k: live[k] for k in ("step", "phase", "status", "detail") if k in live})
    office = view["office"]
    waiting = set(pending.get(office, ()))
    order = [d.id for d in backend.inventory.devices_of(office)]
    cards = []
    for device in sorted(devices, key=lambda d: (order.index(d) if d in order else len(order), d)):
        entry = devices[device]
        status = str(entry.get("status") or "running")
        entry["status"] = _STEP_STATUS.get(status, status)
        entry["pending"] = device in waiting
        cards.append(entry)
    view["office_name"] = names.get(office, office)
    view["alternate_name"] = names.get(view["alternate"] or "", view["alternate"])
    view["devices"] = cards
    return view


def _recent_runs(
    backend: api.ApiBackend, now: float, running: set[str], names: Mapping[str, str]
) -> list[dict[str, Any]]:
    recent = []
    for record in backend.journal.runs(limit=RECENT_RUNS * 2):
        if record.id in running or record.finished is None or now - record.finished > RECENT_RUNS_S:
            continue
        view = api.run_view(backend, record, with_steps=False)
        view["office_name"] = names.get(record.office, record.office)
        view["alternate_name"] = names.get(record.alternate, record.alternate)
        recent.append(view)
        if len(recent) == RECENT_RUNS:
            break
    return recent


__all__ = [
    "COOKIE",
    "PREFIX",
    "UNAUTHORIZED",
    "Session",
    "Sessions",
    "add_routes",
    "is_login",
    "is_wallboard",
    "session_identity",
    "snapshot",
]
