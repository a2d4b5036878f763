"""The operator CLI against a running API (its own event loop in a thread), over a real Controller."""

from __future__ import annotations

import asyncio
import io
import json
import os
import re
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import pytest
import structlog

from baton.api import create_app, start_listeners
from baton.cli import main
from baton.commands.operator import parse_when
from baton.config import ApiSettings
from baton.core.model import Phase, SecretRef
from baton.logs import configure
from baton.secrets import resolve
from tests.integration.test_api import ME, TOKEN, ApiTestBackend, make_backend, short_tmpdir

T = TypeVar("T")


@dataclass
class Daemon:
    backend: ApiTestBackend
    socket: Path
    port: int
    token_file: Path
    loop: asyncio.AbstractEventLoop

    def in_loop(self, func: Callable[[], T]) -> T:
        """Run `func` on the daemon's loop thread (the controller is the loop's, not the test's)."""

        async def call() -> T:
            return func()

        return asyncio.run_coroutine_threadsafe(call(), self.loop).result(10)

    def handover(self, office: str = "seoul-geumcheon") -> str:
        outcome = self.in_loop(
            lambda: self.backend.controller.declare_closure(office, who="ops", reason="fire")
        )
        assert outcome.run_id is not None
        return outcome.run_id


@pytest.fixture
def daemon() -> Iterator[Daemon]:
    for directory in short_tmpdir():
        backend = make_backend(directory)
        token_file = directory / "api-ops"
        token_file.write_text(TOKEN + "\n")
        settings = ApiSettings(
            unix_socket=directory / "api.sock",
            tcp_listen="127.0.0.1:0",
            tokens=(SecretRef("file", str(token_file)),),
        )
        # The daemon's log lines go to their own stream, not into the CLI output the tests read.
        configure(json=True, stream=io.StringIO())
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=loop.run_forever, name="api-loop", daemon=True)
        thread.start()
        try:
            app = create_app(backend, tokens=(), allow_peercred=True)
            listeners = asyncio.run_coroutine_threadsafe(
                start_listeners(app, settings, resolve), loop
            ).result(10)
            assert listeners.tcp is not None
            try:
                yield Daemon(backend, settings.unix_socket, listeners.tcp[1], token_file, loop)
            finally:
                asyncio.run_coroutine_threadsafe(listeners.close(), loop).result(10)
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(10)
            loop.close()
            backend.journal.close()
            structlog.reset_defaults()


def baton(daemon: Daemon, *args: str) -> int:
    return main([*args, "--socket", str(daemon.socket)])


class Terminal(io.StringIO):
    """Typed-in answers, on something that says it is a terminal."""

    def isatty(self) -> bool:
        return True


# baton.controller binds its logger at import, before this module can point logging elsewhere, and
# structlog's default PrintLogger writes to whatever sys.stdout is: the daemon's decision lines
# (console format) land in the captured stdout next to the CLI's. They are dropped here.
_LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d \[\w+\s*\] ")


def stdout(capsys: pytest.CaptureFixture[str]) -> str:
    """What the CLI printed on stdout, without the in-process daemon's log lines."""
    return "".join(
        line for line in capsys.readouterr().out.splitlines(keepends=True) if not _LOG_LINE.match(line)
    )


def rows(text: str) -> list[list[str]]:
    """A rendered table's rows, split on the two-space column gaps."""
    return [[cell.strip() for cell in line.split("  ") if cell.strip()] for line in text.splitlines()]


# --- reading ----------------------------------------------------------------------------------


def test_offices_table_has_a_row_per_office(daemon: Daemon, capsys: pytest.CaptureFixture[str]) -> None:
    """`baton offices`: a header and one row per office with phase, verdict, alternate and reason."""
    daemon.handover()
    assert 0 == baton(daemon, "offices")
    table = rows(stdout(capsys))
    assert ["OFFICE", "PHASE", "VERDICT", "ALTERNATE", "SINCE", "REASON"] == table[0]
    assert ["seoul-bangbae", "seoul-geumcheon", "suwon-paldal"] == [r[0] for r in table[1:]]
    geumcheon = table[2]
    assert ["seoul-geumcheon", "HANDING_OVER", "UNKNOWN", "seoul-bangbae"] == geumcheon[:4]
    assert geumcheon[4] in ("just now", "1s ago", "2s ago")
    expected_reason = "office seoul-geumcheon declared closed by ops (fire); handing over to seoul-bangbae"
    assert expected_reason == geumcheon[5]
    assert ["suwon-paldal", "OPEN", "UNKNOWN", "(seoul-geumcheon)", "-", "-"] == table[3]


def test_devices_table(daemon: Daemon, capsys: pytest.CaptureFixture[str]) -> None:
    """`baton devices OFFICE`: one row per device with role, criticality, address and verdict."""
    assert 0 == baton(daemon, "devices", "seoul-geumcheon")
    table = rows(stdout(capsys))
    assert ["DEVICE", "ROLE", "CRIT", "ADDRESS", "VERDICT", "REASON"] == table[0]
    assert ["gc-core1", "core", "yes", "10.1.0.1", "UP", "answers SNMP"] == table[1]
    assert ["gc-olt1", "olt", "no", "10.1.0.3", "UP", "answers SNMP"] == table[3]


def test_json_prints_the_api_json(daemon: Daemon, capsys: pytest.CaptureFixture[str]) -> None:
    """`--json` prints the API's JSON, which parses."""
    assert 0 == baton(daemon, "offices", "--json")
    data = json.loads(stdout(capsys))
    assert ["seoul-bangbae", "seoul-geumcheon", "suwon-paldal"] == [o["id"] for o in data["offices"]]
    assert 0 == baton(daemon, "status", "--json")
    assert "vantage-seoul-1" == json.loads(stdout(capsys))["vantage"]


def test_status_pause_resume(daemon: Daemon, capsys: pytest.CaptureFixture[str]) -> None:
    """`pause` is journaled with who and why, and `status` says automation is paused."""
    assert 0 == baton(daemon, "pause", "--reason", "fiber cut drill")
    assert 0 == baton(daemon, "status")
    out = stdout(capsys)
    assert "automation   PAUSED (operator commands only)" in out
    assert "offices      3: 3 OPEN" in out
    [command] = daemon.backend.journal.commands()
    assert (ME, "pause", "fiber cut drill") == (command.who, command.command, command.reason)
    assert 0 == baton(daemon, "resume")
    assert daemon.backend.controller.state.paused is False


# --- confirmation -----------------------------------------------------------------------------


def test_handover_without_yes_and_without_a_terminal_refuses(
    daemon: Daemon, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """No --yes and stdin not a terminal: exit 64 with one line, nothing sent."""
    monkeypatch.setattr(sys, "stdin", io.StringIO("seoul-geumcheon\n"))
    assert 64 == baton(daemon, "handover", "seoul-geumcheon", "--reason", "fire")
    err = capsys.readouterr().err
    assert 1 == len(err.splitlines())
    assert "pass --yes" in err
    assert [] == daemon.backend.journal.commands()


def test_handover_asks_and_needs_the_office_id_typed(
    daemon: Daemon, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a terminal the operator is asked what will happen; a wrong answer changes nothing."""
    monkeypatch.setattr(sys, "stdin", Terminal("yes\n"))
    assert 1 == baton(daemon, "handover", "seoul-geumcheon", "--reason", "fire")
    err = capsys.readouterr().err
    expected = (
        "Hand over seoul-geumcheon (Seoul Geumcheon) to its alternate (seoul-bangbae unless unavailable)? "
        "This changes 3 devices. Type the office id to confirm: "
    )
    assert err.startswith(expected)
    assert [] == daemon.backend.journal.commands()
    monkeypatch.setattr(sys, "stdin", Terminal("seoul-geumcheon\n"))
    assert 0 == baton(daemon, "handover", "seoul-geumcheon", "--reason", "fire", "--no-follow")
    [started] = daemon.backend.runner.started
    assert f"run {started.run_id} started; follow it with: baton run {started.run_id}" in stdout(capsys)


# --- following a run --------------------------------------------------------------------------


def finish_when_started(daemon: Daemon, ok: bool) -> list[asyncio.Task[None]]:
    """Once a run starts (on the daemon's loop): finish its devices' steps, then apply RunFinished."""
    tasks: list[asyncio.Task[None]] = []

    async def finish(run_id: str) -> None:
        await asyncio.sleep(0.6)  # let the CLI see the run in progress at least once
        for device in ("gc-core1", "gc-agg1", "gc-olt1"):
            daemon.backend.runner.finish(run_id, device)
        await asyncio.sleep(0.6)
        daemon.backend.finish_run(run_id, ok=ok)

    daemon.backend.runner.on_start = lambda action: tasks.append(asyncio.create_task(finish(action.run_id)))
    return tasks


def test_handover_with_yes_follows_the_run_to_its_end(
    daemon: Daemon, capsys: pytest.CaptureFixture[str]
) -> None:
    """--yes: the handover is sent, each device's progress printed as it changes, then the result; exit 0."""
    finished = finish_when_started(daemon, ok=True)
    assert 0 == baton(daemon, "handover", "seoul-geumcheon", "--reason", "fire", "--yes")
    out = stdout(capsys).splitlines()
    run_id = daemon.backend.runner.started[0].run_id
    assert "gc-core1: reroute-uplinks running" in out
    assert "gc-core1: reroute-uplinks done" in out
    assert out[-1].startswith("handover of seoul-geumcheon to seoul-bangbae: ok after ")
    assert out[-1].endswith(f" — run {run_id}")
    assert Phase.HANDED_OVER == daemon.backend.controller.state.offices["seoul-geumcheon"].phase
    assert [True] == [t.done() for t in finished]


def test_a_failed_run_exits_1(daemon: Daemon, capsys: pytest.CaptureFixture[str]) -> None:
    """A followed run that fails ends with a FAILED result line and exit 1; --json gives one document."""
    finished = finish_when_started(daemon, ok=False)
    assert 1 == baton(daemon, "handover", "seoul-geumcheon", "--reason", "fire", "--yes", "--json")
    data = json.loads(stdout(capsys))
    assert (True, "failed") == (data["command"]["accepted"], data["run"]["status"])
    assert [True] == [t.done() for t in finished]


# --- errors and exit codes --------------------------------------------------------------------


def test_refused_command_exits_1_with_the_core_reason(
    daemon: Daemon, capsys: pytest.CaptureFixture[str]
) -> None:
    """A handback of an OPEN office: the core's reason on one line, exit 1."""
    assert 1 == baton(daemon, "handback", "seoul-geumcheon", "--reason", "reopened", "--yes")
    expected = (
        f"baton: handback of seoul-geumcheon requested by {ME} (reopened) refused: OPEN, "
        "nothing is handed over\n"
    )
    assert expected == capsys.readouterr().err


def test_unknown_office_exits_64(daemon: Daemon, capsys: pytest.CaptureFixture[str]) -> None:
    """An unknown office is a usage error naming the known ones."""
    assert 64 == baton(daemon, "devices", "seoul-gumchon")
    assert "known offices: seoul-bangbae, seoul-geumcheon, suwon-paldal" in capsys.readouterr().err


def test_daemon_not_running_exits_69(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """No daemon on the socket: exit 69 with one line saying where and what to check."""
    path = tmp_path / "api.sock"
    assert 69 == main(["status", "--socket", str(path)])
    captured = capsys.readouterr()
    expected = f"baton: cannot reach the daemon at {path}: No such file — is baton.service running?\n"
    assert (expected, "") == (captured.err, captured.out)


def test_tcp_with_token_file(daemon: Daemon, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """--url with a good token file works; a wrong token is 77; no token file is 64; a missing one 78."""
    url = f"http://127.0.0.1:{daemon.port}"
    assert 0 == main(["status", "--url", url, "--token-file", str(daemon.token_file)])
    wrong = tmp_path / "wrong"
    wrong.write_text("not-the-token\n")
    assert 77 == main(["status", "--url", url, "--token-file", str(wrong)])
    assert 64 == main(["status", "--url", url])
    assert 78 == main(["status", "--url", url, "--token-file", str(tmp_path / "missing")])
    err = capsys.readouterr().err.splitlines()
    assert [
        "baton: authentication required: send 'Authorization: Bearer <token>' "
        "with a token the daemon accepts",
        "baton: --url needs --token-file: the TCP API accepts only requests with a token",
        f"baton: token file {tmp_path / 'missing'} does not exist",
    ] == err
    assert "not-the-token" not in "\n".join(err)


# --- the socket's mode and group are the authentication ----------------------------------------


def _baton_as(uid: int, gid: int, *args: str) -> subprocess.CompletedProcess[str]:
    """The CLI in a process that becomes `uid`/`gid` once everything is imported (the interpreter
    may live where only root can read, so privileges are dropped after the imports, not before)."""
    code = (
        "import os, sys; from baton.cli import build_parser, main; build_parser(); "
        f"os.setgroups([]); os.setgid({gid}); os.setuid({uid}); sys.exit(main(sys.argv[1:]))"
    )
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": os.environ.get("PATH", ""), "PYTHONDONTWRITEBYTECODE": "1"},
        cwd="/",
        check=False,
    )


@pytest.mark.skipif(os.geteuid() != 0, reason="running the CLI as other users needs root")
def test_only_the_socket_group_gets_in_and_is_named_by_uid(daemon: Daemon) -> None:
    """A user outside the socket's group is refused (77); one inside is journaled as uid:N if unnamed."""
    daemon.socket.parent.chmod(0o755)
    socket_gid = daemon.socket.stat().st_gid
    outsider = _baton_as(54321, 54321, "ack", "seoul-geumcheon", "--socket", str(daemon.socket))
    assert 77 == outsider.returncode, outsider.stderr
    assert "permission denied on" in outsider.stderr
    insider = _baton_as(54321, socket_gid, "ack", "seoul-geumcheon", "--socket", str(daemon.socket))
    assert 1 == insider.returncode, insider.stderr  # nothing to lift: the core says no, but heard who
    [command] = daemon.backend.journal.commands()
    assert ("uid:54321", "ack") == (command.who, command.command)


def test_until_takes_durations_epochs_and_iso_times(
    daemon: Daemon, capsys: pytest.CaptureFixture[str]
) -> None:
    """--until: a duration from now, epoch seconds, or ISO 8601; anything else is a usage error (64)."""
    assert 1000.0 + 4 * 3600 == parse_when("4h", 1000.0)
    assert 1000.0 + 86400 + 12 * 3600 == parse_when("1d12h", 1000.0)
    assert 4102444800.0 == parse_when("4102444800", 0.0)
    assert 4102444800.0 - 9 * 3600 == parse_when("2100-01-01T00:00:00+09:00", 0.0)
    assert 64 == baton(daemon, "handover", "seoul-geumcheon", "--reason", "x", "--yes", "--until", "soon")
    assert "--until 'soon' is not a time" in capsys.readouterr().err
    assert [] == daemon.backend.journal.commands()
