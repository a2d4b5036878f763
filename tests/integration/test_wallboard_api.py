"""The wallboard's routes on a real API (unix socket + loopback TCP): never open, sessions that
are one-time to open and expire, snapshots and server-sent events read through the API's views."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import re
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from http.cookies import Morsel, SimpleCookie
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from baton import wallboard
from baton.api import Listeners, create_app, start_listeners
from baton.config import ApiSettings
from baton.controller import config_event
from baton.core.model import ApprovalRule, Policy, SecretRef
from baton.secrets import resolve
from tests.integration.test_api import ME, TOKEN, ApiTestBackend, make_backend, short_tmpdir

ASSETS = Path(wallboard.__file__).parent / "wallboard"


class Clock:
    """The API's clock, moved by the test: sessions expire without sleeping."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


@dataclass
class Board:
    backend: ApiTestBackend
    listeners: Listeners
    clock: Clock

    @property
    def base(self) -> str:
        assert self.listeners.tcp is not None
        return f"http://127.0.0.1:{self.listeners.tcp[1]}"


@pytest.fixture
def workdir() -> Iterator[Path]:
    yield from short_tmpdir()


@pytest.fixture
async def board(workdir: Path) -> AsyncIterator[Board]:
    backend = make_backend(workdir)
    (workdir / "api-ops").write_text(TOKEN + "\n")
    settings = ApiSettings(
        unix_socket=workdir / "api.sock",
        tcp_listen="127.0.0.1:0",
        tokens=(SecretRef("file", str(workdir / "api-ops")),),
    )
    clock = Clock()
    app = create_app(backend, tokens=(), allow_peercred=True, clock=clock)
    listeners = await start_listeners(app, settings, resolve)
    try:
        yield Board(backend, listeners, clock)
    finally:
        await listeners.close()
        backend.journal.close()


@dataclass
class Answer:
    status: int
    text: str
    headers: Any
    cookies: SimpleCookie

    def json(self) -> Any:
        return json.loads(self.text)


async def request(
    board: Board,
    method: str,
    path: str,
    *,
    token: str | None = None,
    cookie: str | None = None,
    body: Any = None,
    via: str = "tcp",
) -> Answer:
    connector = aiohttp.UnixConnector(path=str(board.listeners.unix_socket)) if via == "unix" else None
    base = "http://localhost" if via == "unix" else board.base
    headers = {}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    if cookie is not None:
        headers["Cookie"] = f"{wallboard.COOKIE}={cookie}"
    async with (
        aiohttp.ClientSession(connector=connector) as session,
        session.request(method, base + path, json=body, headers=headers) as response,
    ):
        # The events stream never ends by itself: its first bytes are enough here.
        text = (
            (await response.content.read(64)).decode()
            if response.content_type == "text/event-stream"
            else await response.text()
        )
        return Answer(response.status, text, response.headers, response.cookies)


async def new_session(board: Board, **body: Any) -> dict[str, Any]:
    answer = await request(board, "POST", "/v1/wallboard/session", token=TOKEN, body=body or None)
    assert 200 == answer.status, answer.text
    issued: dict[str, Any] = answer.json()
    return issued


async def sign_in(board: Board, **body: Any) -> tuple[str, Morsel[str]]:
    """A session's cookie value and the Set-Cookie that carried it."""
    issued = await new_session(board, **body)
    answer = await request(board, "GET", issued["path"])
    assert 200 == answer.status, answer.text
    morsel = answer.cookies[wallboard.COOKIE]
    return morsel.value, morsel


ROUTES = [
    ("GET", "/v1/wallboard"),
    ("GET", "/v1/wallboard/"),
    ("GET", "/v1/wallboard/assets/wallboard.js"),
    ("GET", "/v1/wallboard/assets/wallboard.css"),
    ("GET", "/v1/wallboard/assets/favicon.svg"),
    ("GET", "/v1/wallboard/assets/no-such-file.js"),
    ("GET", "/v1/wallboard/snapshot"),
    ("GET", "/v1/wallboard/events"),
    ("POST", "/v1/wallboard/session"),
    ("GET", "/v1/wallboard/login"),
    ("GET", "/v1/wallboard/login?ticket=forged"),
    ("POST", "/v1/wallboard/logout"),
    ("GET", "/v1/wallboard/no-such-page"),
]


# --- never open ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("method", "path"), ROUTES)
async def test_every_wallboard_route_refuses_without_a_session_or_token(
    board: Board, method: str, path: str
) -> None:
    """Without a token or a session cookie (or with a forged one) every wallboard route is 401."""
    for cookie in (None, "forged-session-id"):
        answer = await request(board, method, path, cookie=cookie)
        assert 401 == answer.status, (cookie, answer.text)
        assert ["error"] == list(answer.json())
        assert "<html" not in answer.text


async def test_a_bearer_token_opens_the_page_and_its_data(board: Board) -> None:
    """The API's own authentication is enough: a token reads the page, an asset and a snapshot."""
    for path in ("/v1/wallboard/", "/v1/wallboard/assets/wallboard.js", "/v1/wallboard/snapshot"):
        assert 200 == (await request(board, "GET", path, token=TOKEN)).status, path


# --- sessions -----------------------------------------------------------------------------------


async def test_a_session_url_opens_the_page_with_a_strict_httponly_cookie(board: Board) -> None:
    """The login URL (on this listener) sets an HttpOnly, SameSite=Strict cookie that opens the page."""
    issued = await new_session(board)
    assert issued["url"] == board.base + issued["path"]
    assert re.fullmatch(r"/v1/wallboard/login\?ticket=[A-Za-z0-9_-]{40,}", issued["path"]), issued
    assert ("token:api-ops", wallboard.DEFAULT_SESSION_TTL_S) == (issued["who"], issued["ttl_s"])
    assert issued["expires"] == pytest.approx(board.clock.now + wallboard.TICKET_TTL_S)

    answer = await request(board, "GET", issued["path"])
    assert 200 == answer.status
    morsel = answer.cookies[wallboard.COOKIE]
    assert (True, "Strict", "/v1/wallboard", str(int(wallboard.DEFAULT_SESSION_TTL_S))) == (
        morsel["httponly"],
        morsel["samesite"],
        morsel["path"],
        str(morsel["max-age"]),
    )
    assert "url=/v1/wallboard/" in answer.text

    page = await request(board, "GET", "/v1/wallboard/", cookie=morsel.value)
    assert (200, "text/html; charset=utf-8") == (page.status, page.headers["Content-Type"])
    assert 'id="offices"' in page.text
    csp = page.headers["Content-Security-Policy"]
    assert "default-src 'none'" in csp
    assert "script-src 'self'" in csp
    assert "frame-ancestors 'none'" in csp
    for name, kind in (("wallboard.js", "text/javascript"), ("wallboard.css", "text/css")):
        asset = await request(board, "GET", f"/v1/wallboard/assets/{name}", cookie=morsel.value)
        assert (200, kind) == (asset.status, asset.headers["Content-Type"].split(";")[0])
    missing = await request(board, "GET", "/v1/wallboard/assets/../api.py", cookie=morsel.value)
    assert 404 == missing.status


async def test_a_session_asked_on_the_unix_socket_points_at_the_tcp_listener(board: Board) -> None:
    """Over the unix socket the peer user gets a URL on api.tcp_listen (none without a TCP API)."""
    answer = await request(board, "POST", "/v1/wallboard/session", via="unix")
    assert 200 == answer.status
    issued = answer.json()
    assert ME == issued["who"]
    assert issued["url"] is None  # the backend's config has no tcp_listen
    assert "api.tcp_listen" in issued["note"]

    config = board.backend.config
    board.backend.config = dataclasses.replace(
        config, api=dataclasses.replace(config.api, tcp_listen="127.0.0.1:9443")
    )
    issued = (await request(board, "POST", "/v1/wallboard/session", via="unix")).json()
    assert issued["url"] == "http://127.0.0.1:9443" + issued["path"]
    # ... and the ticket works wherever the browser reaches the API.
    assert 200 == (await request(board, "GET", issued["path"])).status


async def test_a_login_url_works_once(board: Board) -> None:
    """A login URL opened a second time is refused: it cannot be replayed from a history or a log."""
    issued = await new_session(board)
    assert 200 == (await request(board, "GET", issued["path"])).status
    again = await request(board, "GET", issued["path"])
    assert 401 == again.status
    assert "already used or expired" in again.json()["error"]
    assert wallboard.COOKIE not in again.cookies


async def test_a_login_url_expires(board: Board) -> None:
    """A login URL not opened within TICKET_TTL_S is refused."""
    issued = await new_session(board)
    board.clock.now += wallboard.TICKET_TTL_S + 1
    assert 401 == (await request(board, "GET", issued["path"])).status


async def test_a_session_cannot_be_used_after_it_expires(board: Board) -> None:
    """A session works until its ttl_s, and is refused on every route after it."""
    cookie, morsel = await sign_in(board, ttl_s=120)
    assert "120" == str(morsel["max-age"])
    board.clock.now += 119
    assert 200 == (await request(board, "GET", "/v1/wallboard/snapshot", cookie=cookie)).status
    board.clock.now += 2
    for path in ("/v1/wallboard/", "/v1/wallboard/snapshot", "/v1/wallboard/events"):
        answer = await request(board, "GET", path, cookie=cookie)
        assert 401 == answer.status, path
    # Time going back (a clock step) does not revive it: an expired session is forgotten.
    board.clock.now -= 60
    assert 401 == (await request(board, "GET", "/v1/wallboard/snapshot", cookie=cookie)).status


async def test_a_session_cookie_opens_nothing_but_the_wallboard(board: Board) -> None:
    """The cookie is not an API credential: other routes, commands and new sessions stay closed."""
    cookie, _ = await sign_in(board)
    for method, path in (("GET", "/v1/offices"), ("GET", "/v1/status"), ("POST", "/v1/wallboard/session")):
        assert 401 == (await request(board, method, path, cookie=cookie)).status, path
    answer = await request(board, "POST", "/v1/pause", cookie=cookie, body={"reason": "x"})
    assert 401 == answer.status
    assert board.backend.controller.state.paused is False


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"ttl_s": 10}, "'ttl_s' must be between 60 and 604800 seconds"),
        ({"ttl_s": 10**9}, "'ttl_s' must be between"),
        ({"ttl_s": "1h"}, "'ttl_s' must be a finite number"),
        ({"ttl_s": True}, "'ttl_s' must be a finite number"),
        ({"ttl": 600}, "one optional field: 'ttl_s'"),
    ],
)
async def test_a_session_ttl_out_of_range_is_refused(board: Board, body: Any, expected: str) -> None:
    """ttl_s must be a number of seconds within [60 s, 7 days]."""
    answer = await request(board, "POST", "/v1/wallboard/session", token=TOKEN, body=body)
    assert 400 == answer.status
    assert expected in answer.json()["error"]


async def test_logout_ends_the_session(board: Board) -> None:
    """After logout the same cookie is refused."""
    cookie, _ = await sign_in(board)
    answer = await request(board, "POST", "/v1/wallboard/logout", cookie=cookie)
    assert (200, {"signed_out": True}) == (answer.status, answer.json())
    assert 401 == (await request(board, "GET", "/v1/wallboard/", cookie=cookie)).status


# --- what it shows ------------------------------------------------------------------------------


async def test_the_snapshot_groups_offices_by_region_with_alternate_and_reason(board: Board) -> None:
    """Offices come grouped by region, each with phase, verdict, alternate and the core's sentence."""
    cookie, _ = await sign_in(board)
    run = board.backend.controller.declare_closure(
        "seoul-geumcheon", who="alice", reason="sealed for disinfection", until=None, to=None
    )
    assert run.run_id is not None
    snap = (await request(board, "GET", "/v1/wallboard/snapshot", cookie=cookie)).json()
    regions = {r["id"]: [o["id"] for o in r["offices"]] for r in snap["regions"]}
    assert {"seoul": ["seoul-geumcheon", "seoul-bangbae"], "gyeonggi": ["suwon-paldal"]} == regions
    tile = next(o for r in snap["regions"] for o in r["offices"] if o["id"] == "seoul-geumcheon")
    assert ("HANDING_OVER", "seoul-bangbae", "Seoul Bangbae") == (
        tile["phase"],
        tile["alternate"],
        tile["alternate_name"],
    )
    assert "sealed for disinfection" in tile["reason"]
    [card] = snap["runs"]
    assert (run.run_id, "handover", "Seoul Geumcheon", "Seoul Bangbae") == (
        card["id"],
        card["kind"],
        card["office_name"],
        card["alternate_name"],
    )
    assert [("gc-core1", "running"), ("gc-agg1", "running"), ("gc-olt1", "running")] == [
        (d["id"], d["status"]) for d in card["devices"]
    ]
    assert [] == snap["approvals"]  # the daemon reports approvals: none waits here
    assert snap["vantages"] is None
    assert {"paused": False, "shadow": False, "storm": False, "leader": True} == snap["flags"]


async def test_events_stream_snapshots_live_and_end_when_the_session_expires(board: Board) -> None:
    """/events sends a snapshot at once, another when a run progresses, and `expired` at the end."""
    cookie, _ = await sign_in(board, ttl_s=600)
    headers = {"Cookie": f"{wallboard.COOKIE}={cookie}"}
    async with (
        aiohttp.ClientSession() as session,
        session.get(board.base + "/v1/wallboard/events", headers=headers) as response,
    ):
        assert (200, "text/event-stream") == (response.status, response.content_type)
        events = _events(response)
        assert "hello" == (await anext(events))[0]
        name, snap = await anext(events)
        assert ("snapshot", []) == (name, snap["runs"])

        run = board.backend.controller.declare_closure(
            "seoul-geumcheon", who="alice", reason="fire alarm", until=None, to=None
        )
        assert run.run_id is not None
        snap = await _next_snapshot(events, lambda s: bool(s["runs"]))
        assert "running" == {d["id"]: d["status"] for d in snap["runs"][0]["devices"]}["gc-core1"]
        board.backend.runner.finish(run.run_id, "gc-core1")
        snap = await _next_snapshot(
            events, lambda s: any(d["status"] == "done" for d in s["runs"][0]["devices"])
        )
        assert "done" == next(d["status"] for d in snap["runs"][0]["devices"] if d["id"] == "gc-core1")

        board.clock.now += 601
        name, data = await _skip_until(events, "expired")
        assert "sign in again" in data["error"]
        assert await response.content.read() == b""  # and the stream ends


async def test_closing_the_api_ends_open_event_streams_at_once(workdir: Path) -> None:
    """A daemon shutting down does not wait for wall screens watching the events."""
    backend = make_backend(workdir)
    settings = ApiSettings(unix_socket=workdir / "api.sock", tcp_listen="127.0.0.1:0")
    listeners = await start_listeners(
        create_app(backend, tokens=[TOKEN], allow_peercred=True), settings, resolve
    )
    try:
        assert listeners.tcp is not None
        url = f"http://127.0.0.1:{listeners.tcp[1]}/v1/wallboard/events"
        async with (
            aiohttp.ClientSession() as session,
            session.get(url, headers={"Authorization": f"Bearer {TOKEN}"}) as response,
        ):
            assert 200 == response.status
            await response.content.readline()
            started = time.monotonic()
            await asyncio.wait_for(listeners.close(), timeout=10)
            assert time.monotonic() - started < 5
    finally:
        await listeners.close()
        backend.journal.close()


def test_the_page_loads_nothing_from_outside() -> None:
    """No CDN, no outside network: the assets reference only the daemon's own /v1/wallboard/ paths."""
    files = sorted(ASSETS.iterdir())
    assert {"index.html", "wallboard.js", "wallboard.css", "favicon.svg"} == {f.name for f in files}
    for path in files:
        text = path.read_text()
        text = text.replace('xmlns="http://www.w3.org/2000/svg"', "")  # a namespace name, not a fetch
        assert not re.search(r"https?://|//[a-z0-9.-]+\.[a-z]{2,}/|@import", text, re.I), path.name
        for ref in re.findall(r'(?:src|href)="([^"]+)"', text):
            assert ref.startswith("/v1/wallboard/"), (path.name, ref)


# --- reading server-sent events -----------------------------------------------------------------


async def _events(response: aiohttp.ClientResponse) -> AsyncIterator[tuple[str, Any]]:
    name, data = "message", ""
    while True:
        raw = await asyncio.wait_for(response.content.readline(), timeout=10)
        if not raw:
            return
        line = raw.decode().rstrip("\n")
        if line.startswith("event: "):
            name = line.removeprefix("event: ")
        elif line.startswith("data: "):
            data += line.removeprefix("data: ")
        elif not line and data:
            yield name, json.loads(data)
            name, data = "message", ""


async def _skip_until(events: AsyncIterator[tuple[str, Any]], wanted: str) -> tuple[str, Any]:
    async for name, data in events:
        if name == wanted:
            return name, data
    raise AssertionError(f"the stream ended before an '{wanted}' event")


async def _next_snapshot(events: AsyncIterator[tuple[str, Any]], condition: Any) -> dict[str, Any]:
    async for name, data in events:
        if name == "snapshot" and condition(data):
            snap: dict[str, Any] = data
            return snap
    raise AssertionError("the stream ended before the expected snapshot")


async def test_a_pending_approval_is_on_the_wallboard(board: Board) -> None:
    """Under an approval rule a declared closure waits for a second person: the snapshot lists
    it (kind, office, alternate, the requester's reason) until it is approved."""
    policy = Policy(approvals=(ApprovalRule(offices=("seoul-geumcheon",), name="operators.approvals[0]"),))
    controller = board.backend.controller
    controller.apply(
        config_event({o: s.alternates for o, s in controller.state.offices.items()}, False, policy)
    )
    asked = controller.declare_closure(
        "seoul-geumcheon", who="alice", reason="sealed for disinfection", until=None, to=None
    )
    assert asked.approval_id is not None
    cookie, _ = await sign_in(board)
    snap = (await request(board, "GET", "/v1/wallboard/snapshot", cookie=cookie)).json()
    [waiting] = snap["approvals"]
    assert (asked.approval_id, "handover", "seoul-geumcheon") == (
        waiting["id"],
        waiting["kind"],
        waiting["office"],
    )
    assert "sealed for disinfection" in json.dumps(waiting)
    assert [] == snap["runs"]  # nothing runs before the approval
