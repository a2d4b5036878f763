"""etcd (Debian's etcd-server) as a single-node cluster or a three-member cluster on free ports,
and the promtool binary."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from tests.peers.util import PeerProcess, PeerStartError, free_port, require_binary

# Raft timing of the test cluster: etcd's defaults, which stay stable on two loaded cores (smaller
# election timeouts made members campaign against each other while the test machine was busy).
HEARTBEAT_MS = 100
ELECTION_MS = 1000


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


def _distinct_free_ports(count: int) -> list[int]:
    ports: list[int] = []
    while len(ports) < count:
        port = free_port()
        if port not in ports:
            ports.append(port)
    return ports


def _scratch_dir(prefix: str) -> Path:
    """A fresh directory for etcd data: on /dev/shm when there is one (fsync is then cheap)."""
    shm = Path("/dev/shm")
    base = shm if shm.is_dir() and os.access(shm, os.W_OK) else None
    return Path(tempfile.mkdtemp(prefix=prefix, dir=base))


class EtcdMember:
    """One member of an `EtcdCluster`: ``.name``, ``.url`` (client), ``.peer_url``, ``.pid``,
    ``.start()`` (again: same data and ports), ``.stop()``, ``.kill()``, ``.pause()`` (SIGSTOP),
    ``.resume()`` (SIGCONT), ``.paused``."""

    def __init__(
        self,
        name: str,
        client_port: int,
        peer_port: int,
        data_dir: Path,
        log_path: Path,
        *,
        initial_cluster: str,
        token: str,
        extra_args: Sequence[str] = (),
    ) -> None:
        self.name = name
        self.host = "127.0.0.1"
        self.port = client_port
        self.peer_port = peer_port
        self.data_dir = data_dir
        self.paused = False
        argv = [
            require_binary("etcd", "etcd-server"),
            "--name", name,
            "--data-dir", str(data_dir),
            "--listen-client-urls", self.url,
            "--advertise-client-urls", self.url,
            "--listen-peer-urls", self.peer_url,
            "--initial-advertise-peer-urls", self.peer_url,
            "--initial-cluster", initial_cluster,
            "--initial-cluster-state", "new",  # ignored on a restart: the data dir knows the cluster
            "--initial-cluster-token", token,  # unique per cluster: two test clusters never join
            "--heartbeat-interval", str(HEARTBEAT_MS),
            "--election-timeout", str(ELECTION_MS),
            "--logger", "zap",
            "--log-level", "warn",
            *extra_args,
        ]  # fmt: skip
        self._proc = PeerProcess(f"etcd {name} :{client_port}", argv, log_path, cwd=data_dir.parent)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def peer_url(self) -> str:
        return f"http://{self.host}:{self.peer_port}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc.is_running() else None

    def is_running(self) -> bool:
        return self._proc.is_running()

    def healthy(self) -> bool:
        return etcd_healthy(self.url)

    def status(self, timeout_s: float = 0.5) -> dict[str, int] | None:
        """{"member_id", "leader"} from /v3/maintenance/status (leader 0: none known), or None."""
        request = urllib.request.Request(  # noqa: S310 - http://127.0.0.1 only
            f"{self.url}/v3/maintenance/status", data=b"{}", headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=timeout_s) as response:  # noqa: S310
                data = json.load(response)
            return {"member_id": int(data["header"]["member_id"]), "leader": int(data.get("leader", 0))}
        except (OSError, ValueError, KeyError, urllib.error.URLError):
            return None

    def spawn(self) -> None:
        self._proc.spawn()
        self.paused = False

    def start(self, ready_timeout_s: float = 20.0) -> float:
        """(Re)start with the same data dir and ports; the seconds until it said healthy."""
        self.spawn()
        return self.wait_healthy(ready_timeout_s)

    def wait_healthy(self, timeout_s: float = 20.0) -> float:
        return self._proc.wait_ready(self.healthy, timeout_s, "healthy")

    def pause(self) -> None:
        """SIGSTOP: the member keeps its sockets (connections are accepted) but answers nothing."""
        self._proc.signal(signal.SIGSTOP)
        self.paused = True

    def resume(self) -> None:
        self._proc.signal(signal.SIGCONT)
        self.paused = False

    def terminate(self) -> None:
        """SIGTERM without waiting (a paused member is woken first, or it would never exit)."""
        if self.paused:
            self.resume()
        self._proc.terminate()

    def stop(self) -> None:
        if self.paused:
            self.resume()
        self._proc.stop()

    def kill(self) -> None:
        self._proc.kill()
        self.paused = False

    def lost_port_race(self) -> bool:
        return self._proc.lost_port_race()

    def log_tail(self, max_chars: int = 2000) -> str:
        return self._proc.log_tail(max_chars)

    def __repr__(self) -> str:
        return f"EtcdMember({self.name}, {self.url}, pid {self.pid}{', paused' if self.paused else ''})"


class EtcdCluster:
    """Three (or `size`) etcd members on free loopback ports: ``.endpoints`` (client URLs),
    ``.members``, ``.etcdctl_endpoints``, ``.start()``, ``.stop()``, ``.wait_healthy()``.

    Data dirs live on /dev/shm when present, logs in `workdir`. `stop()` ends every member, a
    paused one too, and removes the data. A member's own `stop()` is a graceful SIGTERM (a raft
    leader hands over first); stopping several that way is quicker in parallel: `terminate()`
    each, then `stop()` each."""

    def __init__(self, workdir: Path, *, size: int = 3, extra_args: Sequence[str] = ()) -> None:
        require_binary("etcd", "etcd-server")
        self.workdir = workdir
        self.data_root = _scratch_dir("baton-etcd-")
        ports = _distinct_free_ports(2 * size)
        names = [f"m{i + 1}" for i in range(size)]
        token = f"baton-test-{secrets.token_hex(3)}"
        peers = ",".join(f"{n}=http://127.0.0.1:{ports[2 * i + 1]}" for i, n in enumerate(names))
        workdir.mkdir(parents=True, exist_ok=True)
        self.members = [
            EtcdMember(
                n,
                ports[2 * i],
                ports[2 * i + 1],
                self.data_root / n,
                workdir / f"{n}.log",
                initial_cluster=peers,
                token=token,
                extra_args=extra_args,
            )
            for i, n in enumerate(names)
        ]
        self.started_after_s: float | None = None

    @property
    def endpoints(self) -> list[str]:
        return [m.url for m in self.members]

    @property
    def etcdctl_endpoints(self) -> str:
        """The value for ``etcdctl --endpoints=``."""
        return ",".join(self.endpoints)

    def start(self, ready_timeout_s: float = 30.0) -> float:
        """Start every member at once (they need each other for a quorum) and wait until all say
        healthy; the seconds that took."""
        started = time.monotonic()
        try:
            for member in self.members:
                member.spawn()
            self.wait_healthy(ready_timeout_s)
        except PeerStartError:
            self.stop(remove_data=False)
            raise
        self.started_after_s = time.monotonic() - started
        return self.started_after_s

    def wait_healthy(self, timeout_s: float = 30.0) -> None:
        """Every running member says healthy (it has a leader and answers a quorum read)."""
        deadline = time.monotonic() + timeout_s
        for member in self.members:
            if member.is_running():
                member.wait_healthy(max(0.1, deadline - time.monotonic()))

    def lost_port_race(self) -> bool:
        return any(m.lost_port_race() for m in self.members)

    def raft_leader(self, timeout_s: float = 10.0) -> EtcdMember:
        """The member that is raft leader now (asked of every running member that is not paused),
        waiting up to `timeout_s` for one to be elected."""
        deadline = time.monotonic() + timeout_s
        while True:
            for member in self.members:
                if member.is_running() and not member.paused:
                    status = member.status()
                    if status is not None and status["leader"] == status["member_id"]:
                        return member
            if time.monotonic() >= deadline:
                raise PeerStartError(f"no raft leader among {self.members} within {timeout_s} s")
            time.sleep(0.05)

    def raft_followers(self) -> list[EtcdMember]:
        leader = self.raft_leader()
        return [m for m in self.members if m is not leader]

    def stop(self, *, remove_data: bool = True) -> None:
        """End every member at once, a paused one too (SIGCONT, then SIGKILL). Not SIGTERM: a
        terminated raft leader first tries to hand its leadership over and, with every member
        going, waits 5 s for it."""
        for member in self.members:
            if member.paused:
                member.resume()
            member.kill()
        if remove_data:
            shutil.rmtree(self.data_root, ignore_errors=True)

    def logs(self) -> str:
        return "\n".join(f"--- {m.name} ---\n{m.log_tail()}" for m in self.members)

    def __repr__(self) -> str:
        return f"EtcdCluster({', '.join(map(repr, self.members))})"


@contextlib.contextmanager
def etcd_cluster_running(
    workdir: Path, *, size: int = 3, extra_args: Sequence[str] = ()
) -> Iterator[EtcdCluster]:
    """A healthy cluster for the block (retried once on new ports if a port was taken meanwhile)."""
    for attempt in (1, 2):
        cluster = EtcdCluster(workdir / f"try{attempt}", size=size, extra_args=extra_args)
        try:
            cluster.start()
            break
        except PeerStartError:
            cluster.stop()
            if attempt == 2 or not cluster.lost_port_race():
                raise
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def etcd_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdCluster]:
    """A healthy three-member etcd cluster on free loopback ports, fresh data; all stopped after."""
    require_binary("etcd", "etcd-server")
    with etcd_cluster_running(tmp_path_factory.mktemp("etcd-cluster")) as cluster:
        yield cluster


@pytest.fixture(scope="session")
def promtool() -> str:
    """Absolute path of promtool (from Debian's prometheus package)."""
    return require_binary("promtool", "prometheus")
