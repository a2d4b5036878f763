"""OpenSSH peers: the test user, the session's client key, and plain sshd servers on free ports.

The test user (``batontest``, home ``/var/lib/batontest``) is made by ``.ci/install-peers``; when
tests run as root and it is missing, the ``peer_test_user`` session fixture creates it the same way.
Each test session gets its own directory ``<home>/sessions/<random>/`` (root-owned, 0755) holding
the ``authorized_keys`` for its freshly generated client key; every sshd a fixture starts points
``AuthorizedKeysFile`` there, so concurrent sessions never touch each other's keys. It lives under the
home directory because sshd's StrictModes checks every directory from the key file up to the home
directory (a file under world-writable /tmp is refused), and is readable by the user because sshd
opens it with the user's uid. The NETCONF sockets live there too: ``netconf-subsystem`` runs as the
user and must reach them.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import pwd
import secrets
import shutil
import socket
import stat
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.peers.endpoints import SshEndpoint
from tests.peers.util import (
    PeerProcess,
    PeerStartError,
    free_port,
    require_binary,
    require_root,
    run,
    run_checked,
    skip_or_fail,
)

TEST_USER = "batontest"
TEST_HOME = Path("/var/lib/batontest")
# Read by install-peers and by the fixture; same value every time, so concurrent sessions agree.
PASSWORD_FILE_NAME = "password"
INSTALL_HINT = "run .ci/install-peers as root (it creates the test user batontest)"


@dataclass(frozen=True)
class TestUser:
    """The unprivileged user that SSH and NETCONF sessions log in as, plus this session's key."""

    __test__ = False  # not a test class, despite the name

    name: str
    home: Path
    password: str
    session_dir: Path  # root-owned 0755, readable by the user; AuthorizedKeysFile lives here
    private_key: Path
    public_key: str  # "ssh-ed25519 AAAA... comment"

    @property
    def authorized_keys(self) -> Path:
        return self.session_dir / "authorized_keys"


def _lock(path: Path) -> contextlib.AbstractContextManager[object]:
    @contextlib.contextmanager
    def locked() -> Iterator[object]:
        with path.open("a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield fh
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    return locked()


def _check_not_writable_by_others(path: Path) -> None:
    mode = path.stat().st_mode
    if mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise PeerStartError(
            f"{path} is group/world-writable: sshd's StrictModes refuses keys below it (chmod go-w {path})"
        )


def ensure_test_user() -> tuple[str, Path, str]:
    """Create the test user if missing (root only); return (name, home, password)."""
    require_root("the SSH/NETCONF test user")
    for tool in ("useradd", "chpasswd"):
        require_binary(tool, "passwd")
    Path("/run/lock").mkdir(parents=True, exist_ok=True)
    with _lock(Path("/run/lock/baton-test-user.lock")):
        try:
            entry = pwd.getpwnam(TEST_USER)
        except KeyError:
            home_opts = ["--no-create-home", "--home-dir", str(TEST_HOME), "--shell", "/bin/bash"]
            run_checked(["useradd", "--system", *home_opts, "--user-group", TEST_USER])
            entry = pwd.getpwnam(TEST_USER)
        home = Path(entry.pw_dir)
        if not home.is_dir():
            home.mkdir(parents=True, mode=0o755)
            os.chown(home, entry.pw_uid, entry.pw_gid)
        _check_not_writable_by_others(home)
        if entry.pw_shell in ("", "/usr/sbin/nologin", "/bin/false", "/sbin/nologin"):
            # netconf-subsystem is started through the user's shell
            skip_or_fail(f"{TEST_USER} has no login shell ({entry.pw_shell}); {INSTALL_HINT}")
        sessions = home / "sessions"
        sessions.mkdir(mode=0o755, exist_ok=True)
        os.chown(sessions, 0, 0)
        sessions.chmod(0o755)
        password_file = sessions / PASSWORD_FILE_NAME
        if not password_file.exists():
            fd = os.open(password_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write(secrets.token_urlsafe(12) + "\n")
        password = password_file.read_text().strip()
        # Also unlocks the account: with UsePAM no, sshd refuses even keys for a "!" password.
        chpasswd = run(["chpasswd"], input=f"{TEST_USER}:{password}\n")
        if chpasswd.returncode != 0:
            raise PeerStartError(f"chpasswd {TEST_USER} failed: {chpasswd.stderr.strip()}")
    return TEST_USER, home, password


def _remove_stale_session_dirs(sessions: Path) -> None:
    """Remove session dirs left by test runs that were killed (their pid is gone)."""
    for entry in sessions.glob("s*-*"):
        pid = entry.name[1:].split("-", 1)[0]
        if not pid.isdigit():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(entry, ignore_errors=True)
        except PermissionError:
            pass


@pytest.fixture(scope="session")
def peer_test_user(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestUser]:
    """The test user with a per-session client key (ed25519) and authorized_keys."""
    keygen = require_binary("ssh-keygen", "openssh-client")
    name, home, password = ensure_test_user()
    keydir = tmp_path_factory.mktemp("client-key")
    private_key = keydir / "id_ed25519"
    run_checked([keygen, "-q", "-t", "ed25519", "-N", "", "-C", "baton-tests", "-f", str(private_key)])
    public_key = (keydir / "id_ed25519.pub").read_text().strip()
    _remove_stale_session_dirs(home / "sessions")
    session_dir = home / "sessions" / f"s{os.getpid()}-{secrets.token_hex(4)}"
    session_dir.mkdir(mode=0o755)
    session_dir.chmod(0o755)
    try:
        (session_dir / "authorized_keys").write_text(public_key + "\n")
        (session_dir / "authorized_keys").chmod(0o644)
        yield TestUser(name, home, password, session_dir, private_key, public_key)
    finally:
        shutil.rmtree(session_dir, ignore_errors=True)


def ssh_banner(host: str, port: int, timeout_s: float = 0.5) -> bool:
    """True when host:port accepts TCP and sends an SSH identification string."""
    try:
        with socket.create_connection((host, port), timeout=timeout_s) as s:
            return s.recv(64).startswith(b"SSH-")
    except OSError:
        return False


class SshdProcess:
    """An OpenSSH sshd on 127.0.0.1:port with its own host key: ``.endpoint``, ``.start()``,
    ``.stop()``, ``.kill()``, ``.pid``. Pubkey only unless password_auth; AllowUsers the test user."""

    def __init__(
        self,
        workdir: Path,
        port: int,
        user: TestUser,
        *,
        password_auth: bool = False,
        subsystems: Mapping[str, str] | None = None,
        host: str = "127.0.0.1",
        ready_timeout_s: float = 10.0,
    ) -> None:
        self.sshd = require_binary("sshd", "openssh-server", paths=["/usr/sbin/sshd"])
        keygen = require_binary("ssh-keygen", "openssh-client")
        self.workdir = workdir
        self.host = host
        self.port = port
        self.user = user
        self.ready_timeout_s = ready_timeout_s
        self.ready_after_s: float | None = None
        workdir.mkdir(parents=True, exist_ok=True)
        host_key = workdir / "ssh_host_ed25519_key"
        if not host_key.exists():
            run_checked([keygen, "-q", "-t", "ed25519", "-N", "", "-C", "", "-f", str(host_key)])
        self.host_key = " ".join(Path(f"{host_key}.pub").read_text().split()[:2])
        self.known_hosts = workdir / "known_hosts"
        self.known_hosts.write_text(f"[{host}]:{port} {self.host_key}\n")
        self.config_path = workdir / "sshd_config"
        lines = [
            f"Port {port}",
            f"ListenAddress {host}",
            f"HostKey {host_key}",
            f"PidFile {workdir / 'sshd.pid'}",
            f"AuthorizedKeysFile {user.authorized_keys}",
            "PubkeyAuthentication yes",
            f"PasswordAuthentication {'yes' if password_auth else 'no'}",
            "KbdInteractiveAuthentication no",
            "UsePAM no",
            "PermitRootLogin no",
            f"AllowUsers {user.name}",
            # the default 10:30:100 randomly drops parallel test connections
            "MaxStartups 100:30:200",
            "PrintMotd no",
            "LogLevel VERBOSE",
        ]
        lines += [f"Subsystem {name} {command}" for name, command in (subsystems or {}).items()]
        self.config_path.write_text("\n".join(lines) + "\n")
        self.password = user.password if password_auth else None
        self._proc = PeerProcess(
            f"sshd :{port}", [self.sshd, "-D", "-e", "-f", str(self.config_path)], workdir / "sshd.log"
        )

    @property
    def endpoint(self) -> SshEndpoint:
        return SshEndpoint(
            host=self.host,
            port=self.port,
            username=self.user.name,
            private_key=self.user.private_key,
            known_hosts=self.known_hosts,
            host_key=self.host_key,
            password=self.password,
        )

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc.is_running() else None

    def start(self) -> SshdProcess:
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # privilege separation dir
        self._proc.spawn()
        self.ready_after_s = self._proc.wait_ready(
            lambda: ssh_banner(self.host, self.port), self.ready_timeout_s, "sending its SSH banner"
        )
        return self

    def lost_port_race(self) -> bool:
        return self._proc.lost_port_race()

    def terminate(self) -> None:
        self._proc.terminate()

    def stop(self) -> None:
        self._proc.stop()

    def kill(self) -> None:
        self._proc.kill()

    def log_tail(self) -> str:
        return self._proc.log_tail()

    def __repr__(self) -> str:
        return f"SshdProcess({self.host}:{self.port}, pid {self.pid})"


def start_sshd(workdir: Path, user: TestUser, **kwargs: object) -> SshdProcess:
    """Start an sshd on a free port; one retry on another port if it lost the race for it."""
    for attempt in (1, 2):
        server = SshdProcess(workdir / f"try{attempt}", free_port(), user, **kwargs)  # type: ignore[arg-type]
        try:
            return server.start()
        except PeerStartError:
            server.stop()
            if attempt == 2 or not server.lost_port_race():
                raise
    raise AssertionError("unreachable")


@pytest.fixture
def sshd_server(tmp_path_factory: pytest.TempPathFactory, peer_test_user: TestUser) -> Iterator[SshdProcess]:
    """A plain OpenSSH sshd (pubkey only, AllowUsers the test user) on a free 127.0.0.1 port."""
    server = start_sshd(tmp_path_factory.mktemp("sshd"), peer_test_user)
    try:
        yield server
    finally:
        server.stop()
