"""The attacks the issue lists, each against the real API: a 4xx with one sentence, nothing
journaled, no token in any log line or answer, and nothing raw on an operator's terminal."""

from __future__ import annotations

import asyncio
import io
import json
import time
from collections.abc import Iterator

import pytest
import structlog

from baton.cli import main
from baton.journal import StepStatus
from baton.logs import configure
from tests.integration.test_api import TOKEN, Served, call, served, workdir

# The API fixtures of test_api, used here by name.

__all__ = ["served", "workdir"]


@pytest.fixture
def logged() -> Iterator[io.StringIO]:
    """Every log line the daemon's code and its libraries write, as JSON."""
    stream = io.StringIO()
    configure(json=True, stream=stream)
    try:
        yield stream
    finally:
        structlog.reset_defaults()


async def raw(served: Served, data: bytes) -> tuple[int, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", served.port)
    try:
        writer.write(data)
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), timeout=10)
    finally:
        writer.close()
    status = answer.split(b"\r\n", 1)[0].split()
    return int(status[1]), answer


def post(path: str, body: bytes, token: str = TOKEN) -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: Bearer {token}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body


@pytest.mark.parametrize(
    ("body", "error"),
    [
        (b'{"reason": ' + b"[" * 1000 + b"]" * 1000 + b"}", "the body nests deeper than 8 levels"),
        (b'{"reason": "\\ud800"}', "the body holds a character that is not UTF-8 text (a lone surrogate)"),
        (b'{"reason": "sealed\\u0000 for good"}', "'reason' holds a control character (U+0000)"),
        (b'{"reason": "\\u001b[2Jgone"}', "'reason' holds a control character (U+001B)"),
        (b'{"reason": "ring \\u0007"}', "'reason' holds a control character (U+0007)"),
        (b'{"reason": "\\u202egnp.exe"}', "'reason' holds a control character (U+202E)"),
        (b'{"reason": "ok", "until": ' + b"9" * 5000 + b"}", "the body holds a value out of any range"),
        (b'{"reason": "ok", "until": 1e999}', "'until' must be a positive, finite number"),
    ],
    ids=["deep", "surrogate", "nul", "esc", "bel", "rlo", "huge-int", "inf"],
)
async def test_hostile_bodies_get_a_sentence_and_change_nothing(
    served: Served, logged: io.StringIO, body: bytes, error: str
) -> None:
    status, answer = await raw(served, post("/v1/offices/seoul-geumcheon/handover", body))
    text = answer.split(b"\r\n\r\n", 1)[1].decode()
    assert (400, True) == (status, json.loads(text)["error"].startswith(error)), text
    assert [] == served.backend.journal.commands()
    assert [] == served.backend.runner.started
    assert "Traceback" not in logged.getvalue()


async def test_a_bearer_header_that_is_not_text_is_401(served: Served, logged: io.StringIO) -> None:
    status, answer = await raw(
        served,
        b"GET /v1/status HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer \xff\xfe\r\nConnection: close\r\n\r\n",
    )
    assert 401 == status, answer
    assert b"authentication required" in answer


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"GET /v1/status HTTP/1.1\r\nHost: x\r\nAuthorization : Bearer %s\r\n\r\n",
        b"GET /v1/status HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\nX-Bad: a\x01b\r\n\r\n",
        b"POST /v1/pause HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\nContent-Length: abc\r\n\r\n",
        b"GET /v1/sta tus HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n\r\n",
    ],
    ids=["space-before-colon", "control-in-header", "bad-length", "bad-status-line"],
)
async def test_a_malformed_request_never_echoes_its_token(
    served: Served, logged: io.StringIO, request_bytes: bytes
) -> None:
    """aiohttp used to put the request's bytes (the valid token among them) in the 400 body and
    its error log: the answer is one JSON sentence, the log one line without them."""
    status, answer = await raw(served, request_bytes % TOKEN.encode())
    assert 400 == status
    assert TOKEN.encode() not in answer
    body = json.loads(answer.split(b"\r\n\r\n", 1)[1])
    assert body["error"].startswith("malformed HTTP request")
    await asyncio.sleep(0.05)
    lines = logged.getvalue()
    assert TOKEN not in lines
    assert "api.bad_request" in lines
    assert "Traceback" not in lines


async def test_what_is_journaled_is_shown_escaped_on_a_terminal(
    served: Served, capsys: pytest.CaptureFixture[str]
) -> None:
    """A device's answer (not checked: it is not ours) holding ESC and U+202E, printed by
    `baton run`: escaped, not interpreted by the terminal."""

    status, answer = await call(
        served, "POST", "/v1/offices/seoul-geumcheon/handover", body={"reason": "sealed for disinfection"}
    )
    assert 202 == status
    run_id = answer["run_id"]
    journal = served.backend.journal
    [step, *_] = journal.steps_of(run_id)
    journal.step_result(
        step.id, StepStatus.FAILED, "error: \x1b[2J\x1b]0;owned\x07 \u202etxt.exe", time.time()
    )
    socket_path = str(served.listeners.unix_socket)
    code = await asyncio.get_running_loop().run_in_executor(
        None, main, ["run", run_id, "--socket", socket_path]
    )
    out = capsys.readouterr().out
    assert 0 == code
    assert ("\x1b", "\u202e", "\x07") == tuple(c for c in ("\x1b", "\u202e", "\x07") if c not in out)
    assert "\\x1b[2J" in out
    assert "\\u202etxt.exe" in out
