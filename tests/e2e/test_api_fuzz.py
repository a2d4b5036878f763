"""The API as an attacker meets it: ≥ 10,000 generated requests against the running daemon.

Every endpoint, every method, hostile paths, queries, headers and bodies (JSON nested 1,000
deep, lone surrogates, NUL/ESC/BEL/U+202E, numbers beyond range, non-UTF-8 bytes, bodies too
large), requests aiohttp cannot even parse that carry a valid token, bearer headers that are not
text. Sent raw over TCP (a viewer's token, wrong ones, none) and over the unix socket as root
(an admin: only requests that must be refused). After every batch: no 5xx, the daemon alive, no
refused request reached the core (no command journaled, flags and offices unchanged), no
credential in any response; at the end, none in any log line (the module's leak check) and no
traceback in the log.
"""

from __future__ import annotations

import contextlib
import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.e2e.conftest import E2E, office_lab
from tests.e2e.harness import LabProcess, free_port, lab_secrets

pytestmark = pytest.mark.slow

OFFICES = "seoul-geumcheon,seoul-bangbae"
VIEWER_TOKEN = "fuzz-viewer-" + "3" * 20
ADMIN_TOKEN = "fuzz-admin-" + "9" * 20  # only ever sent inside requests that cannot be parsed
BATCH = 25
BATCHES = 410  # 10,250 requests
READ_TIMEOUT_S = 10.0


@pytest.fixture(scope="module")
def e2e(tmp_path_factory: pytest.TempPathFactory) -> Iterator[E2E]:
    def prepare(lab: LabProcess, ports: dict[str, Any]) -> None:
        creds = lab.dir / "inventory" / "credentials"  # the leak check looks for everything here
        for name, token in (("api-fuzz-viewer", VIEWER_TOKEN), ("api-fuzz-admin", ADMIN_TOKEN)):
            (creds / name).write_text(token + "\n")
            (creds / name).chmod(0o600)
        ports["api"] = free_port()
        data = yaml.safe_load(lab.config_path.read_text())
        data["api"]["tcp_listen"] = f"127.0.0.1:{ports['api']}"
        data["api"]["tokens"] = [
            f"file:inventory/credentials/{n}" for n in ("api-fuzz-viewer", "api-fuzz-admin")
        ]
        data["shadow"] = True  # even a request that got through could not touch a device
        data["operators"] = {
            "grants": [
                {"to": "root", "role": "admin", "scope": ["all"]},
                {"to": "token:api-fuzz-viewer", "role": "viewer", "scope": ["all"]},
                {"to": "token:api-fuzz-admin", "role": "admin", "scope": ["all"]},
            ]
        }
        lab.config_path.write_text(yaml.safe_dump(data, sort_keys=False))

    with office_lab(
        tmp_path_factory.mktemp("fuzz"),
        offices=OFFICES,
        devices_per_office=1,
        policy={
            "failures_to_down": 5,
            "hold_down_s": 20.0,
            "anti_flap_block_s": 20.0,
            "handback_hold_s": 20.0,
        },
        prepare=prepare,
    ) as running:
        yield running


# --- requests --------------------------------------------------------------------------------

KNOWN = ["seoul-geumcheon", "seoul-bangbae"]
HOSTILE_TEXT = st.one_of(
    st.text(max_size=40),
    st.sampled_from(
        [
            "\ud800",
            "\x00",
            "\x1b[2J\x1b[H",
            "\x07",
            "\u202egnp.exe",
            "..",
            "../../etc/passwd",
            "%00",
            "%ff%fe",
            "a" * 5000,
            "9" * 5000,
            "'; DROP TABLE audit; --",
            "<script>",
            "{{7*7}}",
        ]
    ),
)
SEGMENT = st.one_of(
    st.sampled_from([*KNOWN, "approval-seoul-geumcheon-1", "handover-x-1"]),
    st.sampled_from(KNOWN),
    HOSTILE_TEXT,
)
ROUTES = [
    ("GET", "/healthz"),
    ("GET", "/v1/status"),
    ("GET", "/v1/offices"),
    ("GET", "/v1/offices/{}"),
    ("GET", "/v1/offices/{}/devices"),
    ("GET", "/v1/offices/{}/plan"),
    ("POST", "/v1/offices/{}/handover"),
    ("POST", "/v1/offices/{}/handback"),
    ("POST", "/v1/offices/{}/ack"),
    ("POST", "/v1/offices/{}/resolve"),
    ("POST", "/v1/pause"),
    ("POST", "/v1/resume"),
    ("POST", "/v1/shadow"),
    ("GET", "/v1/runs"),
    ("GET", "/v1/runs/{}"),
    ("POST", "/v1/runs/{}/abort"),
    ("GET", "/v1/approvals"),
    ("POST", "/v1/approvals/{}/approve"),
    ("POST", "/v1/approvals/{}/deny"),
    ("GET", "/v1/grants"),
    ("GET", "/v1/audit"),
    ("GET", "/v1/audit/verify"),
    ("GET", "/v1/wallboard/"),
    ("GET", "/v1/wallboard/snapshot"),
    ("GET", "/v1/wallboard/events"),
    ("GET", "/v1/wallboard/assets/{}"),
    ("POST", "/v1/wallboard/session"),
    ("GET", "/v1/wallboard/login"),
    ("POST", "/v1/wallboard/logout"),
    ("GET", "/nowhere/{}"),
]
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | HOSTILE_TEXT,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(HOSTILE_TEXT, inner, max_size=4),
    max_leaves=12,
)
FIELDS = ["reason", "until", "to", "on", "phase", "ttl_s"]


@st.composite
def bodies(draw: st.DrawFn) -> bytes | None:
    kind = draw(st.sampled_from(["none", "json", "fields", "deep", "surrogate", "control", "raw", "big"]))
    if kind == "none":
        return None
    if kind == "json":
        return json.dumps(draw(json_values)).encode()
    if kind == "fields":
        fields = draw(st.dictionaries(st.sampled_from(FIELDS), json_values, max_size=4))
        return json.dumps(fields).encode()
    if kind == "deep":
        depth = draw(st.sampled_from([9, 100, 1000, 100_000]))
        return b'{"reason": ' + b"[" * depth + b"]" * depth + b"}"
    if kind == "surrogate":
        return b'{"reason": "\\ud800 lone", "to": "\\udfff"}'
    if kind == "control":
        char = draw(st.sampled_from(["\\u0000", "\\u001b[31m", "\\u0007", "\\u202e", "\\u0085", "\\u2066"]))
        return f'{{"reason": "sealed {char} for good"}}'.encode()
    if kind == "big":
        return b'{"reason": "' + b"x" * 70_000 + b'"}'
    return draw(st.binary(max_size=200))


@st.composite
def well_formed(draw: st.DrawFn) -> bytes:
    """A parseable HTTP/1.1 request: any route, method, path segment, query, auth and body."""
    method, template = draw(st.sampled_from(ROUTES))
    method = draw(st.sampled_from([method] * 6 + ["GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS"]))
    path = template.replace("{}", _quote(draw(SEGMENT)))
    query = draw(
        st.one_of(
            st.just({}),
            st.just({}),
            st.dictionaries(
                st.sampled_from(["limit", "office", "since", "to", "ticket", "x"]), HOSTILE_TEXT, max_size=3
            ),
        )
    )
    if query:
        path += "?" + "&".join(f"{_quote(k)}={_quote(v)}" for k, v in query.items())
    auth = draw(
        st.sampled_from(
            [
                None,
                f"Bearer {VIEWER_TOKEN}",
                f"Bearer {VIEWER_TOKEN}",
                f"Bearer {VIEWER_TOKEN}x",
                "Bearer ",
                "Bearer \xff\xfe",
                "Basic dXNlcjpwYXNz",
                f"bearer {VIEWER_TOKEN[:-1]}",
            ]
        )
    )
    body = draw(bodies())
    headers = ["Host: 127.0.0.1", "Connection: close"]
    if auth is not None:
        headers.append(f"Authorization: {auth}")
    if body is not None:
        headers.append(f"Content-Type: {draw(st.sampled_from(['application/json', 'text/plain', 'x/y']))}")
        headers.append(f"Content-Length: {len(body)}")
    head = f"{method} {path} HTTP/1.1\r\n" + "\r\n".join(headers) + "\r\n\r\n"
    return head.encode("utf-8", "surrogateescape") + (body or b"")


@st.composite
def malformed(draw: st.DrawFn) -> bytes:
    """What aiohttp cannot parse, with a valid token in it (the token must never come back)."""
    token = draw(st.sampled_from([VIEWER_TOKEN, ADMIN_TOKEN]))
    broken = draw(
        st.sampled_from(
            [
                f"GET /v1/status HTTP/1.1\r\nAuthorization : Bearer {token}\r\n\r\n",
                f"GET /v1/status HTTP/1.1\r\nAuthorization: Bearer {token}\r\nX-Bad: a\x01b\r\n\r\n",
                f"GET /v1/sta tus HTTP/1.1\r\nAuthorization: Bearer {token}\r\n\r\n",
                f"POST /v1/pause HTTP/1.1\r\nAuthorization: Bearer {token}\r\nContent-Length: abc\r\n\r\n",
                f"POST /v1/pause HTTP/1.1\r\nAuthorization: Bearer {token}\r\nContent-Length: 5\r\n"
                "Transfer-Encoding: chunked\r\n\r\nzzzz\r\n",
                f"POST /v1/pause HTTP/1.1\r\nAuthorization: Bearer {token}\r\n"
                "Transfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n",
                f"G\x00T /v1/status HTTP/1.1\r\nAuthorization: Bearer {token}\r\n\r\n",
                f"GET /v1/status HTTP/9.9\r\nAuthorization: Bearer {token}\r\n\r\n",
                f"GET /v1/status HTTP/1.1\r\nAuthorization: Bearer {token}\r\n"
                + "X-Long: "
                + "a" * 9000
                + "\r\n\r\n",
                "GET /v1/status HTTP/1.1\r\n"
                + "".join(f"X-{i}: {i}\r\n" for i in range(200))
                + f"Authorization: Bearer {token}\r\n\r\n",
                f"GET /{token} HTTP/1.1\r\nHost: \x7f\r\n\r\n",
            ]
        )
    )
    return broken.encode("latin-1", "replace") + draw(st.binary(max_size=20))


@st.composite
def admin_hostile(draw: st.DrawFn) -> bytes:
    """As root (an admin) on the unix socket: commands whose input must be refused."""
    method, template = draw(
        st.sampled_from([r for r in ROUTES if r[0] == "POST" and "wallboard" not in r[1]])
    )
    path = template.replace("{}", draw(st.sampled_from(KNOWN)))
    body = draw(
        st.sampled_from(
            [
                b'{"reason": ' + b"[" * 1000 + b"]" * 1000 + b"}",
                b'{"reason": "\\ud800"}',
                b'{"reason": "sealed \\u0000 for good", "on": true, "phase": "OPEN"}',
                b'{"reason": "\\u001b]0;pwned\\u0007", "on": false, "phase": "OPEN"}',
                b'{"reason": "\\u202eevil", "on": true, "phase": "OPEN"}',
                b'{"reason": "ok", "bogus": 1, "on": true, "phase": "OPEN"}',
                b'{"reason": 12, "on": true, "phase": "OPEN"}',
                b'["reason"]',
                b'{"reason": "ok", "until": 1e999, "on": "yes", "phase": "NOT_A_PHASE"}',
                b'{"reason": "ok", "until": ' + b"9" * 5000 + b', "on": 1, "phase": 7}',
                b'{"reason": "ok"',
                b"\xff\xfe\x00",
                b'{"reason": "' + b"x" * 70_000 + b'"}',
            ]
        )
    )
    head = f"{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n"
    head += "Content-Type: application/json\r\n"
    return (head + f"Content-Length: {len(body)}\r\n\r\n").encode() + body


def _quote(text: str) -> str:
    raw = text.encode("utf-8", "surrogatepass")
    return "".join(chr(b) if chr(b).isalnum() or chr(b) in "-._~" else f"%{b:02X}" for b in raw)


def send(address: str | tuple[str, int], request: bytes) -> tuple[int, bytes]:
    """One raw request on a new connection: the status (-1: no status line) and the response."""
    family = socket.AF_UNIX if isinstance(address, str) else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.settimeout(READ_TIMEOUT_S)
        sock.connect(address)
        # A server that gave up on a request too large still answered: read that below.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(request)
        data = b""
        while True:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                break
            except TimeoutError:
                if b"text/event-stream" in data:
                    break  # the wallboard's event stream stays open: its head is the answer
                raise
            if not chunk:
                break
            data += chunk
            if b"text/event-stream" in data and b"\r\n\r\n" in data:
                break
    line = data.split(b"\r\n", 1)[0].split()
    return (int(line[1]) if len(line) >= 2 and line[1].isdigit() else -1), data


def core_view(e2e: E2E) -> Any:
    """What a refused request must never change: the commands that reached the core, the
    flags, each office's closure, alternate, run and approval."""
    daemon = e2e.daemon
    status = daemon.cli("status", "--json").json()
    offices = daemon.cli("offices", "--json").json()["offices"]
    commands = daemon.journal.rows("SELECT COUNT(*) AS n FROM commands")[0]["n"]
    return (
        commands,
        (status["paused"], status["shadow"], status["approvals"]),
        [(o["id"], o["closure"], o["alternate"], o["run_id"]) for o in offices],
    )


@pytest.mark.timeout(1800)
def test_hostile_requests_never_hurt_the_api(e2e: E2E) -> None:
    """≥ 10,000 generated requests: no 5xx, the daemon alive, refusals change nothing, no
    credential in any answer (nor, by the module's leak check, in any log line)."""
    daemon = e2e.daemon
    tcp = ("127.0.0.1", int(e2e.ports["api"]))
    unix = str(daemon.socket)
    secrets = {**lab_secrets(e2e.lab.dir), "viewer token": VIEWER_TOKEN, "admin token": ADMIN_TOKEN}
    sent: list[int] = []
    before = core_view(e2e)
    requests = st.one_of(
        well_formed().map(lambda r: (tcp, r)),
        well_formed().map(lambda r: (tcp, r)),
        well_formed().map(lambda r: (tcp, r)),
        malformed().map(lambda r: (tcp, r)),
        admin_hostile().map(lambda r: (unix, r)),
    )

    @settings(
        max_examples=BATCHES,
        deadline=None,
        database=None,
        suppress_health_check=[
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
            HealthCheck.large_base_example,
        ],
    )
    @given(batch=st.lists(requests, min_size=BATCH, max_size=BATCH))
    def attack(batch: list[tuple[str | tuple[str, int], bytes]]) -> None:
        for address, request in batch:
            status, response = send(address, request)
            sent.append(status)
            assert status != -1, f"no answer to {request[:200]!r}"
            assert status < 500, f"{status} for {request[:200]!r}: {response[:300]!r}"
            leaked = [name for name, value in secrets.items() if value.encode() in response]
            assert [] == leaked, f"{leaked} in the answer to {request[:200]!r}"
            if address == unix:
                assert 400 <= status < 500, f"an admin's hostile request got {status}: {request[:200]!r}"
        assert daemon.running
        assert before == core_view(e2e), "a refused request changed what the core holds"

    attack()
    counts: dict[int, int] = {}
    for status in sent:
        counts[status] = counts.get(status, 0) + 1
    print(f"fuzz: {len(sent)} requests, statuses {dict(sorted(counts.items()))}")
    assert len(sent) >= 10_000
    assert daemon.running
    assert 200 == send(tcp, b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")[0]
    log = Path(daemon.log).read_text(errors="replace")
    assert "Traceback" not in log
    assert [] == daemon.events("api.internal_error")
