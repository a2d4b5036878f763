"""Plumbing shared by the peer fixtures: the CI no-skip rule, free ports, binaries, and a child
process that is started with a bounded readiness wait and always stopped (terminate → wait → kill)."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import NoReturn

import pytest

# A peer that exits early with one of these in its log lost the race for its free port.
_ADDR_IN_USE = re.compile(
    r"address already in use|bind failed|cannot bind|error opening specified endpoint",
    re.IGNORECASE,
)


class PeerStartError(RuntimeError):
    """A peer did not become ready in time, or exited while starting (message has its log tail)."""


def is_ci() -> bool:
    """True when running in CI (env CI set to anything but "", "0", "false", "no")."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def skip_or_fail(reason: str) -> NoReturn:
    """Skip the test for a missing peer locally; in CI fail instead, since CI installs every peer."""
    if is_ci():
        pytest.fail(f"{reason} [CI is set: a missing peer fails instead of skipping]", pytrace=False)
    pytest.skip(reason)


def require_binary(name: str, package: str, *, paths: Sequence[str] = ()) -> str:
    """Absolute path of a peer binary, or skip/fail naming the Debian package that provides it."""
    for candidate in paths:
        if os.access(candidate, os.X_OK):
            return candidate
    found = shutil.which(name, path=os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"]))
    if found is None:
        skip_or_fail(f"{name} not installed (apt-get install {package})")
    return found


def require_root(what: str) -> None:
    """Skip/fail when not root: sshd with privilege separation, netns and useradd need it."""
    if os.geteuid() != 0:
        skip_or_fail(f"{what} needs root (run the tests as root, as CI does)")


def free_port(host: str = "127.0.0.1", *, kind: int = socket.SOCK_STREAM) -> int:
    """A port that is free on host right now (bind port 0); the caller accepts the small race."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, kind) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def free_tcp_udp_port(host: str = "127.0.0.1") -> int:
    """A port number free for both TCP and UDP on host."""
    for _ in range(50):
        port = free_port(host)
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.bind((host, port))
        except OSError:
            continue
        return port
    raise PeerStartError(f"no port free for both TCP and UDP on {host}")


def tcp_accepts(host: str, port: int, timeout_s: float = 0.2) -> bool:
    """True when a TCP connection to host:port succeeds."""
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def tail(path: Path, max_chars: int = 3000) -> str:
    """The last max_chars of a log file (what a failing fixture shows)."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        return f"<no log: {exc}>"
    return data[-max_chars:].decode(errors="replace")


class PeerProcess:
    """One peer child process with its output in a log file.

    Started in its own process group so that stop() reaches helpers it forks; stop() is
    terminate → wait → kill and is safe to call twice or on a process that already died.
    """

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        log_path: Path,
        *,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        self.env = dict(env) if env is not None else None
        self.cwd = cwd
        self.popen: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self.popen.pid if self.popen is not None else None

    def is_running(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def spawn(self) -> None:
        if self.is_running():
            raise PeerStartError(f"{self.name} already running (pid {self.pid})")
        with self.log_path.open("ab") as log:
            log.write(f"--- start {time.strftime('%H:%M:%S')}: {' '.join(self.argv)}\n".encode())
            log.flush()
            self.popen = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
                cwd=self.cwd,
                start_new_session=True,
            )

    def log_tail(self, max_chars: int = 3000) -> str:
        return tail(self.log_path, max_chars)

    def lost_port_race(self) -> bool:
        """True when the process exited and its log says its address was taken."""
        return (
            self.popen is not None
            and self.popen.poll() is not None
            and bool(_ADDR_IN_USE.search(self.log_tail()))
        )

    def wait_ready(self, is_ready: Callable[[], bool], timeout_s: float, what: str) -> float:
        """Poll is_ready until true; return the seconds it took. On exit or timeout: stop, raise."""
        started = time.monotonic()
        deadline = started + timeout_s
        delay = 0.01
        while True:
            if self.popen is None or self.popen.poll() is not None:
                code = None if self.popen is None else self.popen.returncode
                raise PeerStartError(
                    f"{self.name} exited (code {code}) before {what}; log {self.log_path} ends:\n"
                    f"{self.log_tail()}"
                )
            if is_ready():
                return time.monotonic() - started
            if time.monotonic() >= deadline:
                self.stop()
                raise PeerStartError(
                    f"{self.name} not ready ({what}) within {timeout_s} s; log {self.log_path} ends:\n"
                    f"{self.log_tail()}"
                )
            time.sleep(delay)
            delay = min(delay * 1.5, 0.1)

    def signal(self, signum: int) -> None:
        if self.is_running():
            assert self.popen is not None
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signum)

    def terminate(self) -> None:
        """SIGTERM the process group without waiting (stop() several peers in parallel)."""
        self.signal(signal.SIGTERM)

    def stop(self, timeout_s: float = 5.0) -> None:
        """SIGTERM the process group, wait, then SIGKILL; reap the child."""
        if self.popen is None:
            return
        if self.popen.poll() is None:
            self.signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.kill()

    def kill(self) -> None:
        """SIGKILL the process group at once and reap the child."""
        if self.popen is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.popen.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(timeout=5)


def run(argv: Sequence[str], timeout_s: float = 10.0, **kwargs: object) -> subprocess.CompletedProcess[str]:
    """Run a short command, text output captured, with a hard timeout."""
    return subprocess.run(  # type: ignore[call-overload, no-any-return]
        list(argv), capture_output=True, text=True, timeout=timeout_s, check=False, **kwargs
    )


def run_checked(argv: Sequence[str], timeout_s: float = 10.0) -> subprocess.CompletedProcess[str]:
    """Run a setup command; raise with its stderr when it fails."""
    result = run(argv, timeout_s)
    if result.returncode != 0:
        raise PeerStartError(f"{' '.join(argv)} failed ({result.returncode}): {result.stderr.strip()}")
    return result
