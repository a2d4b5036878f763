"""The e2e harness: a lab process, the daemon as a child process, and ways to look at them.

`LabProcess` runs `baton lab run` (free SNMP/SSH ports, traps aimed at the daemon's trap port),
which writes `<dir>/inventory/` and `<dir>/baton.yaml`; `LabProcess.configure` then adapts that
baton.yaml for a test daemon (the repo's playbooks, a free metrics port, short timers). `Daemon`
starts `baton daemon --config <dir>/baton.yaml --log-format json` (its own process group, output
in `daemon-N.log`, one file per start), and stops it terminate → kill, also when a test fails.

Everything a test asserts on is read the way an operator would: the CLI (`cli`), `/metrics`
(`Daemon.metrics`), the journal (`Journal`, read-only SQLite), the log lines (`Daemon.events`).
Every wait is for a condition, with a deadline (`wait_for`); nothing sleeps for a fixed time.
Every log, scrape and journal the harness saw is kept so `find_secrets` can check none of them
carries a credential.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import random
import re
import secrets
import signal
import socket
import sqlite3
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

from baton.cli import main as baton_main
from baton.lab.control import ControlError, request
from tests.peers.util import PeerProcess, PeerStartError

# Ports are picked below the kernel's ephemeral range (32768+), so that the many outgoing
# connections of labs and benchmarks running on the same machine cannot take them first.
PORT_RANGE = (20000, 32000)

T = TypeVar("T")

REPO = Path(__file__).resolve().parents[2]
PLAYBOOKS = REPO / "playbooks"
LAB_START_TIMEOUT_S = 60.0
DAEMON_START_TIMEOUT_S = 60.0
DAEMON_STOP_TIMEOUT_S = 30.0

# Timers for drills that take seconds, and still hold on a loaded 2-core CI runner: the lab's
# SNMP timing (1 s x 2 tries) fits the 2 s poll interval the daemon requires for it.
FAST_POLICY: dict[str, Any] = {
    "poll_interval_s": 2.0,
    "failures_to_down": 2,
    "office_down_ratio": 0.5,
    "hold_down_s": 4.0,
    "confirm_window_s": 120.0,
    "run_timeout_s": 60.0,
    "anti_flap_block_s": 4.0,
    "handback_hold_s": 4.0,
}


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    """A port free on 127.0.0.1 for both TCP and UDP right now, outside the ephemeral range."""
    rng = random.SystemRandom()
    while True:
        port = rng.randrange(*PORT_RANGE)
        try:
            for sock_kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
                with socket.socket(socket.AF_INET, sock_kind) as s:
                    s.bind(("127.0.0.1", port))
        except OSError:
            continue
        return port


def wait_for(condition: Callable[[], T | None], timeout_s: float, what: str, interval_s: float = 0.1) -> T:
    """Poll `condition` until it returns something truthy (returned); AssertionError at the deadline."""
    deadline = time.monotonic() + timeout_s
    last: T | None = None
    while True:
        last = condition()
        if last:
            return last
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what} (last: {last!r})")
        time.sleep(interval_s)


@dataclass
class CliResult:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


def cli(socket_path: Path, *args: str) -> CliResult:
    """`baton ARGS --socket PATH`, in this process (the daemon sees this process's uid)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = baton_main([*args, "--socket", str(socket_path)])
    return CliResult(code, out.getvalue(), err.getvalue())


# --- the journal ---------------------------------------------------------------------------------


class Journal:
    """The daemon's SQLite journal, opened read-only for each query (the daemon keeps writing)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    @contextlib.contextmanager
    def _conn(self) -> Iterator[sqlite3.Connection]:
        conn = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=5.0)
        conn.row_factory = sqlite3.Row
        try:
            yield conn
        finally:
            conn.close()

    def rows(self, sql: str, *params: Any) -> list[dict[str, Any]]:
        with self._conn() as conn:
            return [dict(r) for r in conn.execute(sql, params)]

    def transitions(self, office: str) -> list[tuple[str | None, str]]:
        rows = self.rows("SELECT from_phase, to_phase FROM transitions WHERE office = ? ORDER BY id", office)
        return [(r["from_phase"], r["to_phase"]) for r in rows]

    def phases(self, office: str) -> list[str]:
        """The phases the office went through, in order, without repeats."""
        seen: list[str] = []
        for _, to in self.transitions(office):
            if not seen or seen[-1] != to:
                seen.append(to)
        return seen

    def runs(self, office: str | None = None) -> list[dict[str, Any]]:
        if office is None:
            return self.rows("SELECT * FROM runs ORDER BY started")
        return self.rows("SELECT * FROM runs WHERE office = ? ORDER BY started", office)

    def steps(self, run_id: str) -> list[dict[str, Any]]:
        return self.rows("SELECT * FROM steps WHERE run_id = ? ORDER BY id", run_id)

    def dump(self) -> str:
        """Every row of every table, as text (for the secret check)."""
        with self._conn() as conn:
            tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
            lines = []
            for table in tables:
                for row in conn.execute(f'SELECT * FROM "{table}"'):  # noqa: S608 - names from sqlite_master
                    lines.append(f"{table}: {tuple(row)}")
        return "\n".join(lines)


# --- the lab ---------------------------------------------------------------------------------------


class LabProcess:
    """`baton lab run` in a child process; faults through its control socket."""

    def __init__(self, base: Path, offices: str, devices_per_office: int) -> None:
        self.dir = base
        self._offices = offices
        self._devices_per_office = devices_per_office
        self.process = self._process()

    def _process(self) -> PeerProcess:
        base = self.dir
        self.trap_port = free_port()  # the daemon's trap listener
        self.snmp_port = free_port()
        self.ssh_port = free_port()
        return PeerProcess(
            "baton lab",
            [
                sys.executable,
                "-m",
                "baton.cli",
                "lab",
                "run",
                "--dir",
                str(base),
                "--offices",
                self._offices,
                "--devices-per-office",
                str(self._devices_per_office),
                "--trap-target",
                f"127.0.0.1:{self.trap_port}",
                "--snmp-port",
                str(self.snmp_port),
                "--ssh-port",
                str(self.ssh_port),
            ],
            base.parent / f"{base.name}-lab.log",
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )

    def start(self) -> None:
        for attempt in range(3):
            if attempt:
                self.process = self._process()  # new ports: someone took one between pick and bind
            self.process.spawn()
            try:
                self.process.wait_ready(self._ready, LAB_START_TIMEOUT_S, "the control socket answers")
                return
            except PeerStartError:
                if attempt == 2 or "Address already in use" not in self.process.log_tail():
                    raise

    def _ready(self) -> bool:
        if not (self.dir / "baton.yaml").exists():
            return False
        try:
            request(self.dir, "status", timeout_s=2.0)
        except (ControlError, OSError):
            return False
        return True

    def stop(self) -> None:
        self.process.stop(timeout_s=15.0)

    def __call__(self, cmd: str, **args: Any) -> Any:
        """One fault or query: `lab("device_down", device="x")`."""
        return request(self.dir, cmd, **args)

    def mgmt(self, device: str) -> dict[str, Any]:
        """The device's running management config (acl, aaa_servers, contact, ...)."""
        shown: dict[str, Any] = self("show", device=device)["mgmt"]
        return shown

    @property
    def config_path(self) -> Path:
        return self.dir / "baton.yaml"

    def configure(self, policy: Mapping[str, Any] | None = None, **top: Any) -> dict[str, Any]:
        """Rewrite the lab's baton.yaml for a test daemon; return the free ports chosen."""
        config = yaml.safe_load(self.config_path.read_text())
        ports = {"metrics": free_port()}
        config["playbooks"] = str(PLAYBOOKS)
        config["metrics_listen"] = f"127.0.0.1:{ports['metrics']}"
        config["api"] = {"unix_socket": str(self.dir / "baton.sock")}
        config["policy"] = {**FAST_POLICY, **(policy or {})}
        config.update(top)
        self.config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        return ports


# --- the daemon ------------------------------------------------------------------------------------


@dataclass
class Daemon:
    """`baton daemon` as a child process; start() may be called again after stop()/kill()."""

    config_path: Path
    log_dir: Path
    env: dict[str, str] = field(default_factory=dict)
    starts: int = 0
    process: PeerProcess | None = None
    logs: list[Path] = field(default_factory=list)
    scraped: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        config = yaml.safe_load(self.config_path.read_text())
        self.socket = Path(config["api"]["unix_socket"])
        self.metrics_url = f"http://{config['metrics_listen']}/metrics"
        self.journal = Journal(Path(config["journal_path"]))

    @property
    def log(self) -> Path:
        return self.logs[-1]

    def spawn(self) -> None:
        self.starts += 1
        log = self.log_dir / f"daemon-{self.starts}.log"
        self.logs.append(log)
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **self.env}
        self.process = PeerProcess(
            "baton daemon",
            [
                sys.executable,
                "-m",
                "baton.cli",
                "daemon",
                "--config",
                str(self.config_path),
                "--log-format",
                "json",
            ],
            log,
            env=env,
        )
        self.process.spawn()

    def start(self, offices_ready: Callable[[list[dict[str, Any]]], bool] | None = None) -> None:
        """Start and wait until the API answers and `offices_ready` (default: all OPEN and HEALTHY)."""
        ready = offices_ready or (
            lambda offices: all(o["phase"] == "OPEN" and o["verdict"] == "HEALTHY" for o in offices)
        )
        self.spawn()
        assert self.process is not None

        def is_ready() -> bool:
            if not self.events("monitor.first_round_done"):
                return False
            result = cli(self.socket, "offices", "--json")
            return result.code == 0 and ready(result.json()["offices"])

        self.process.wait_ready(is_ready, DAEMON_START_TIMEOUT_S, "the API answers with the offices ready")

    def stop(self) -> int | None:
        """SIGTERM, wait, SIGKILL if needed; the exit code (None if it never ran)."""
        if self.process is None or self.process.popen is None:
            return None
        self.process.stop(timeout_s=DAEMON_STOP_TIMEOUT_S)
        return self.process.popen.returncode

    def kill(self) -> None:
        if self.process is not None:
            self.process.kill()

    def signal(self, signum: int) -> None:
        assert self.process is not None
        self.process.signal(signum)

    def reload(self) -> None:
        self.signal(signal.SIGHUP)

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.is_running()

    # --- what it says

    def lines(self, log: Path | None = None) -> list[dict[str, Any]]:
        """The JSON log lines of the current start (or of `log`); other lines are skipped."""
        out = []
        path = log or self.log
        with contextlib.suppress(FileNotFoundError):
            for line in path.read_text(errors="replace").splitlines():
                if line.startswith("{"):
                    with contextlib.suppress(json.JSONDecodeError):
                        out.append(json.loads(line))
        return out

    def events(self, name: str, **match: Any) -> list[dict[str, Any]]:
        return [
            e for e in self.lines() if e.get("event") == name and all(e.get(k) == v for k, v in match.items())
        ]

    def cli(self, *args: str) -> CliResult:
        return cli(self.socket, *args)

    def office(self, office: str) -> dict[str, Any]:
        result = self.cli("offices", "--json")
        assert result.code == 0, result
        found: dict[str, Any] = next(o for o in result.json()["offices"] if o["id"] == office)
        return found

    def wait_phase(self, office: str, phase: str, timeout_s: float) -> dict[str, Any]:
        return wait_for(
            lambda: (o := self.office(office))["phase"] == phase and o,
            timeout_s,
            f"office {office} {phase}",
        )

    def metrics(self) -> str:
        with urllib.request.urlopen(self.metrics_url, timeout=5) as response:  # noqa: S310 - loopback
            text: str = response.read().decode()
        self.scraped.append(text)
        return text

    def metric(self, name: str, **labels: str) -> float | None:
        """The value of one sample of `name` with exactly these labels (None if absent)."""
        for sample, value in parse_metrics(self.metrics()).items():
            sample_name, sample_labels = sample
            if sample_name == name and dict(sample_labels) == labels:
                return value
        return None


_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)$")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse_metrics(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    samples = {}
    for line in text.splitlines():
        match = _SAMPLE.match(line)
        if match is None or line.startswith("#"):
            continue
        name, labels, value = match.groups()
        key = tuple(sorted(_LABEL.findall(labels or "")))
        samples[(name, key)] = float(value)
    return samples


# --- secrets ---------------------------------------------------------------------------------------


def lab_secrets(lab_dir: Path) -> dict[str, str]:
    """Every secret value Baton was given for the lab: credential files (not public keys)."""
    found: dict[str, str] = {}
    for path in sorted((lab_dir / "inventory" / "credentials").iterdir()):
        if path.suffix == ".pub":
            continue
        text = path.read_text().strip()
        found[path.name] = text
        if "PRIVATE KEY" in text:
            # Any base64 line of the key body but the first (the same "openssh-key-v1" header in
            # every key) would be a leak on its own.
            body = [line for line in text.splitlines() if not line.startswith("-----")]
            for index, line in enumerate(body[1:], start=2):
                if len(line) >= 16:
                    found[f"{path.name} line {index}"] = line
    return found


def find_secrets(secrets: Mapping[str, str], texts: Mapping[str, str]) -> list[str]:
    """'<secret name> in <where>' for every secret value that occurs in any of `texts`."""
    return [
        f"{name} in {where}"
        for name, value in secrets.items()
        for where, text in texts.items()
        if value and value in text
    ]


def leak_report(lab_dir: Path, daemon: Daemon) -> list[str]:
    """Secrets of the lab found in the daemon's logs, scraped /metrics or journal."""
    texts = {str(log): log.read_text(errors="replace") for log in daemon.logs if log.exists()}
    texts.update({f"/metrics scrape #{i}": text for i, text in enumerate(daemon.scraped, start=1)})
    if daemon.journal.path.exists():
        texts["journal"] = daemon.journal.dump()
    secrets = lab_secrets(lab_dir)
    assert secrets, "no secrets collected: the check would prove nothing"
    return find_secrets(secrets, texts)


def vantage_config(
    lab: LabProcess,
    vantage: str,
    vantages: tuple[str, ...],
    endpoints: list[str],
    office: str,
    traps_port: int,
    *,
    prefix: str,
    lease_ttl_s: float,
    request_timeout_s: float,
    peer_token: Path | None = None,
) -> Path:
    """The lab's baton.yaml for one of several vantages over etcd: its own id, journal, API (a
    unix socket, and TCP with a token, as the leader's address a follower names), metrics and
    trap ports. `peer_token`: the vantages' shared credential file (api.peer_token), with which
    a follower forwards commands to the leader; without it, a follower refuses them."""
    config = yaml.safe_load(lab.config_path.read_text())
    config["vantage"] = {"id": vantage, "office": office}
    token = lab.dir / f"{vantage}.token"
    token.write_text(secrets.token_urlsafe(24) + "\n")
    token.chmod(0o600)
    config["api"] = {
        "unix_socket": str(lab.dir / f"{vantage}.sock"),
        "tcp_listen": f"127.0.0.1:{free_port()}",
        "tokens": [f"file:{token}"],
    }
    if peer_token is not None:
        config["api"]["peer_token"] = f"file:{peer_token}"
    config["metrics_listen"] = f"127.0.0.1:{free_port()}"
    config["journal_path"] = str(lab.dir / f"{vantage}.sqlite3")
    config["traps"] = {**config["traps"], "port": traps_port}
    config["etcd"] = {
        "endpoints": endpoints,
        "prefix": prefix,
        "lease_ttl_s": lease_ttl_s,
        "request_timeout_s": request_timeout_s,
        "vantages": list(vantages),
    }
    path = lab.dir / f"baton-{vantage}.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def start_together(daemons: Mapping[str, Daemon], timeout_s: float) -> None:
    """Spawn every daemon, then wait until each has done its first poll round."""
    for daemon in daemons.values():
        daemon.spawn()
    for daemon in daemons.values():
        assert daemon.process is not None
        daemon.process.wait_ready(
            lambda d=daemon: bool(d.events("monitor.first_round_done")), timeout_s, "first round"
        )


def stop_all(daemons: Mapping[str, Daemon]) -> None:
    """Stop every daemon, waking a paused one first (a stopped process cannot handle SIGTERM)."""
    for daemon in daemons.values():
        with contextlib.suppress(ProcessLookupError, AssertionError):
            if daemon.running:
                daemon.signal(signal.SIGCONT)
        daemon.stop()
