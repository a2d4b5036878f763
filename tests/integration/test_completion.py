"""Shell completion: `baton completion bash|zsh` scripts, run by real bash and zsh.

Completion is simulated the way the shells call it: bash with COMP_WORDS/COMP_CWORD and the
registered function, zsh with `words`/`CURRENT` and stand-ins for `compadd`/`_files` (which only
exist inside a completion widget). Office ids come from a stand-in daemon: an HTTP server on a
unix socket answering `/v1/offices` like the control API; when nothing listens, completion offers
nothing, quickly and silently.
"""

from __future__ import annotations

import http.server
import json
import os
import shlex
import shutil
import socketserver
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.peers.util import skip_or_fail

BATON = [sys.executable, "-m", "baton.cli"]
OFFICES = ["seoul-geumcheon", "seoul-bangbae", "busan-jung"]


class _Offices(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = json.dumps({"offices": [{"id": o} for o in OFFICES]}).encode()
        self.send_response(200 if self.path == "/v1/offices" else 404)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def address_string(self) -> str:
        return "unix"  # a unix socket's peer has no host to print

    def log_message(self, format: str, *args: object) -> None:
        pass


class _UnixHttp(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


@pytest.fixture
def api_socket(tmp_path: Path) -> Iterator[Path]:
    """A stand-in for the daemon's API socket that lists OFFICES; stopped after the test."""
    path = tmp_path / "api.sock"
    server = _UnixHttp(str(path), _Offices)
    thread = threading.Thread(target=server.serve_forever, name="fake-api", daemon=True)
    thread.start()
    try:
        yield path
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.fixture
def wrapper(tmp_path: Path) -> Path:
    """`baton` on PATH for the shells: this interpreter running baton.cli."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "baton"
    script.write_text(f'#!/bin/sh\nexec {" ".join(shlex.quote(a) for a in BATON)} "$@"\n')
    script.chmod(0o755)
    return bin_dir


def shell(name: str, program: str, bin_dir: Path, **env: str) -> str:
    found = shutil.which(name)
    if found is None:
        skip_or_fail(f"{name} is not installed (.ci/install-peers installs it)")
    environ = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", **env}
    environ.pop("BATON_SOCKET", None)
    environ.update(env)
    argv = [found, "-c", program] if name == "bash" else [found, "-f", "-c", program]
    result = subprocess.run(argv, capture_output=True, text=True, env=environ, timeout=60, check=False)
    assert 0 == result.returncode, result.stderr
    return result.stdout


BASH_COMPLETE = """
source <(baton completion bash)
t() {
    COMP_WORDS=("$@"); COMP_CWORD=$((${#COMP_WORDS[@]} - 1)); COMPREPLY=()
    _baton; echo "${COMPREPLY[*]}"
}
"""


def bash_complete(bin_dir: Path, *lines: str, **env: str) -> list[str]:
    return shell("bash", BASH_COMPLETE + "\n".join(lines), bin_dir, **env).splitlines()


def test_bash_script_registers_the_completion(wrapper: Path) -> None:
    """`source <(baton completion bash); complete -p baton` shows the function."""
    assert "complete -F _baton baton\n" == shell(
        "bash", "source <(baton completion bash); complete -p baton", wrapper
    )


def test_bash_completes_commands_subcommands_options_and_choices(wrapper: Path, tmp_path: Path) -> None:
    """Commands, lab subcommands (past its options), options, choices, files and directories."""
    (tmp_path / "conf.yaml").write_text("")
    (tmp_path / "labdir").mkdir()
    assert [
        "handover handback",
        "power-off power-on",
        "power-off power-on",
        "on off",
        "--reason",
        "json console",
        f"{tmp_path}/conf.yaml",
        f"{tmp_path}/labdir",
        "bash zsh",
    ] == bash_complete(
        wrapper,
        "t baton hand",
        "t baton lab po",
        f"t baton lab --dir {tmp_path} power-",
        't baton shadow ""',
        "t baton handback seoul-bangbae --re",
        't baton daemon --log-format ""',
        f"t baton validate --config {tmp_path}/co",
        f"t baton lab run --dir {tmp_path}/lab",
        't baton completion ""',
    )


def test_bash_completes_office_ids_from_the_daemon(wrapper: Path, api_socket: Path) -> None:
    """OFFICE arguments and --to/--office values are the running daemon's office ids, from the
    --socket on the command line, else $BATON_SOCKET."""
    assert ["seoul-geumcheon seoul-bangbae"] == bash_complete(
        wrapper, f"t baton handover --socket {api_socket} seoul-"
    )
    assert ["busan-jung", "seoul-geumcheon seoul-bangbae busan-jung", "busan-jung"] == bash_complete(
        wrapper,
        "t baton devices b",
        't baton handover seoul-bangbae --to ""',
        "t baton runs --office b",
        BATON_SOCKET=str(api_socket),
    )


def test_bash_offers_nothing_when_the_daemon_is_unreachable(wrapper: Path, tmp_path: Path) -> None:
    """No daemon on the socket: no office ids, no error output, and no wait."""
    started = time.monotonic()
    out = shell("bash", BASH_COMPLETE + f't baton handover --socket {tmp_path}/none.sock ""', wrapper)
    assert "\n" == out
    assert time.monotonic() - started < 10.0


ZSH_COMPLETE = """
autoload -Uz compinit && compinit -u -D
source <(baton completion zsh)
compadd() { shift; print -r -- "$*"; }
_files() { print -r -- "_files $*"; }
t() { words=("$@"); CURRENT=$#words; _baton || print -r -- "(none)"; }
"""


def test_zsh_script_completes_through_compadd(wrapper: Path, api_socket: Path) -> None:
    """zsh: the function is registered for baton; candidates reach compadd, files _files."""
    out = shell(
        "zsh",
        ZSH_COMPLETE
        + "\n".join(
            [
                'print -r -- "${_comps[baton]}"',
                "t baton lab po",
                't baton shadow ""',
                't baton validate --config ""',
                't baton lab run --dir ""',
                f't baton handover --socket {api_socket} ""',
                f't baton handover --socket {api_socket.parent}/none.sock ""',
            ]
        ),
        wrapper,
    )
    lab = out.splitlines()[1].split()
    assert ["power-off", "power-on"] == [w for w in lab if w.startswith("po")]
    assert [
        "_baton",
        "on off",
        "_files ",
        "_files -/",
        " ".join(OFFICES),
        "(none)",
    ] == [line for i, line in enumerate(out.splitlines()) if i != 1]
