"""etcd (Debian's etcd-server) as a single-node cluster on free ports, and the promtool binary."""

from __future__ import annotations

import json
import secrets
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.peers.util import PeerProcess, PeerStartError, free_port, require_binary


def etcd_healthy(url: str, timeout_s: float = 0.5) -> bool:
    """True when GET {url}/health says {"health": "true"}."""
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=timeout_s) as response:  # noqa: S310 - http://127.0.0.1 only
            return bool(json.load(response).get("health") == "true")
    except (OSError, ValueError, urllib.error.URLError):
        return False


class EtcdProcess:
    """A single-node etcd: ``.host``, ``.port`` (client), ``.url``, ``.endpoints`` (for etcdctl),
    ``.start()`` (restart, same ports and data), ``.stop()``, ``.kill()``, ``.pid``."""

    def __init__(
        self, workdir: Path, client_port: int, peer_port: int, *, ready_timeout_s: float = 20.0
    ) -> None:
        self.etcd = require_binary("etcd", "etcd-server")
        self.host = "127.0.0.1"
        self.port = client_port
        self.peer_port = peer_port
        self.workdir = workdir
        self.ready_timeout_s = ready_timeout_s
        self.ready_after_s: float | None = None
        name = f"baton-test-{secrets.token_hex(3)}"
        peer_url = f"http://{self.host}:{peer_port}"
        argv = [
            self.etcd,
            "--name", name,
            "--data-dir", str(workdir / "data"),
            "--listen-client-urls", self.url,
            "--advertise-client-urls", self.url,
            "--listen-peer-urls", peer_url,
            "--initial-advertise-peer-urls", peer_url,
            "--initial-cluster", f"{name}={peer_url}",
            "--initial-cluster-state", "new",
            "--initial-cluster-token", name,
            "--logger", "zap",
            "--log-level", "warn",
        ]  # fmt: skip
        self._proc = PeerProcess(f"etcd :{client_port}", argv, workdir / "etcd.log", cwd=workdir)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def endpoints(self) -> str:
        """The value for ``etcdctl --endpoints=``."""
        return self.url

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc.is_running() else None

    def start(self) -> EtcdProcess:
        self._proc.spawn()
        self.ready_after_s = self._proc.wait_ready(
            lambda: etcd_healthy(self.url), self.ready_timeout_s, "healthy"
        )
        return self

    def lost_port_race(self) -> bool:
        return self._proc.lost_port_race()

    def stop(self) -> None:
        self._proc.stop()

    def kill(self) -> None:
        self._proc.kill()

    def __repr__(self) -> str:
        return f"EtcdProcess({self.url}, pid {self.pid})"


@pytest.fixture
def etcd_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdProcess]:
    """A healthy single-node etcd on free client/peer ports with a fresh data dir."""
    require_binary("etcd", "etcd-server")
    for attempt in (1, 2):
        workdir = tmp_path_factory.mktemp("etcd")
        server = EtcdProcess(workdir, free_port(), free_port())
        try:
            server.start()
            break
        except PeerStartError:
            server.stop()
            if attempt == 2 or not server.lost_port_race():
                raise
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def promtool() -> str:
    """Absolute path of promtool (from Debian's prometheus package)."""
    return require_binary("promtool", "prometheus")
