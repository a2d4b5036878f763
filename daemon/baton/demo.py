"""`baton demo`: Baton's main job on the built-in lab, told for someone who has never seen it.

Theory of operation. The demo is a director, not a part of Baton: it starts two child processes
in a directory of its own — `baton lab run` (simulated Seoul offices on loopback) and
`baton daemon` (the real service, JSON logs to `daemon.log`) — then drives a story through the
same doors an operator uses: the lab's control socket (`baton lab power-off ...`) for the faults,
the operator CLI (`baton offices`, `baton handover ...`, run progress) for everything Baton does,
and `/metrics` for what a monitoring system would see. Every CLI call runs in this process
through `baton.cli.main`, so what is shown is exactly what an operator typing it would see.

The story is checked as it goes: each step waits (bounded) for the phase it expects, read from
the API; a deviation stops the demo with what was expected, what was seen and where the daemon's
log is, and the exit code is 1. The children run in their own process groups and are stopped in a
`finally` (SIGTERM, then SIGKILL), also on Ctrl-C; when the demo itself is killed they get SIGTERM
from the kernel (PR_SET_PDEATHSIG). `--keep` leaves them running for exploring.

Two variants of the power failure, chosen by what the handover playbook can do:

* the playbook skips devices that do not answer (`unreachable: skip`): the UPS carries the core
  router only; the aggregation router and the OLTs go dark; the handover changes the core router
  and reports the dark one pending, and Baton catches it up when power returns;
* otherwise the UPS carries both routers (every device the playbook changes) and the OLTs, which
  serve the subscribers and count as critical in the demo's inventory, go dark.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import pwd
import random
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, Protocol

import yaml

from baton.apiclient import ApiClient, ClientError

CLOSED_OFFICE = "seoul-geumcheon"  # loses its mains power
ALTERNATE = "seoul-bangbae"  # geumcheon's first alternate
SEALED_OFFICE = "seoul-suwon"  # declared closed by an operator
SEALED_ALTERNATE = "seoul-gwacheon"
VANTAGE_OFFICE = "seoul-gwacheon"  # where this Baton runs
MIN_OFFICES = 4
MAX_OFFICES = 8
DEVICES_PER_OFFICE = 4  # core1, agg1, olt01, olt02
LAB_READY_LINE = "Ctrl-C stops the lab."
STOP_GRACE_S = 15.0
PR_SET_PDEATHSIG = 1
PORT_RANGE = (20000, 32000)

# /metrics families worth showing a newcomer, and only the samples of those that changed.
SHOWN_METRICS = (
    "baton_office_phase",
    "baton_office_verdict",
    "baton_office_health_ratio",
    "baton_traps_received_total",
    "baton_runs_total",
    "baton_run_duration_seconds_count",
    "baton_handover_seconds_count",
)


class DemoError(Exception):
    """The story did not happen as told: what was expected, what was seen."""

    def __init__(self, expected: str, seen: str) -> None:
        super().__init__(f"expected {expected}; saw {seen}")
        self.expected = expected
        self.seen = seen


@dataclass(frozen=True, slots=True)
class DemoOptions:
    dir: Path | None = None
    keep: bool = False
    offices: int = MIN_OFFICES
    fast: bool = False
    playbooks: Path | None = None
    vantages: int = 1  # 3: the scene of `baton.demo_vantages` (three vantages over etcd)


# --- small parts --------------------------------------------------------------------------------


def free_ports(count: int) -> list[int]:
    """Ports nothing is bound to on any address, for TCP and UDP alike. Below the kernel's
    ephemeral range (32768+), so outgoing connections cannot take them before the children bind."""
    rng = random.SystemRandom()
    ports: list[int] = []
    while len(ports) < count:
        port = rng.randrange(*PORT_RANGE)
        if port in ports:
            continue
        try:
            for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
                with socket.socket(socket.AF_INET, kind) as s:
                    s.bind(("0.0.0.0", port))  # noqa: S104 - a probe: the lab binds 127.x on it
        except OSError:
            continue
        ports.append(port)
    return ports


def find_playbooks(explicit: Path | None = None) -> Path:
    """The directory with the lab playbooks: --playbooks, the source tree, or ./playbooks."""
    candidates = [explicit] if explicit is not None else []
    candidates += [Path(__file__).resolve().parents[2] / "playbooks", Path.cwd() / "playbooks"]
    for candidate in candidates:
        if candidate is not None and _playbook_file(candidate, "lab-handover") is not None:
            return candidate.resolve()
    where = ", ".join(str(c) for c in candidates if c is not None)
    raise DemoError(
        "the lab playbooks (lab-handover, lab-handback)", f"none in {where}; pass --playbooks DIR"
    )


def _playbook_file(directory: Path, name: str) -> dict[str, Any] | None:
    if not directory.is_dir():
        return None
    for path in sorted(directory.glob("*.y*ml")):
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError):
            continue
        if isinstance(data, dict) and data.get("name") == name:
            return data
    return None


def skips_unreachable(playbooks: Path) -> bool:
    """Does the lab handover playbook skip devices that do not answer (`unreachable: skip`)?"""
    data = _playbook_file(playbooks, "lab-handover") or {}
    targets = data.get("targets") if isinstance(data.get("targets"), dict) else {}
    return "skip" in (data.get("unreachable"), (targets or {}).get("unreachable"))


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text exposition → {'name{labels}': value} (comments, buckets, _created dropped)."""
    samples: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        key, _, value = line.rpartition(" ")
        name = key.split("{", 1)[0]
        if name.endswith(("_bucket", "_created")):
            continue
        with contextlib.suppress(ValueError):
            samples[key] = float(value)
    return samples


def metric_changes(
    before: dict[str, float], after: dict[str, float], families: Sequence[str] = SHOWN_METRICS
) -> list[str]:
    """One line per shown sample whose value changed (appeared, vanished, moved)."""

    def shown(key: str) -> bool:
        return key.split("{", 1)[0] in families

    def fmt(value: float | None) -> str:
        return "-" if value is None else f"{value:g}"

    keys = sorted(
        {k for k in (*before, *after) if shown(k)}, key=lambda k: (families.index(k.split("{")[0]), k)
    )
    lines = []
    for key in keys:
        old, new = before.get(key), after.get(key)
        if old != new:
            lines.append(f"{key}  {fmt(old)} → {fmt(new)}")
    return lines


def pending_devices(run: dict[str, Any]) -> list[str]:
    """Devices a run skipped because they did not answer (`unreachable: skip`)."""
    return sorted(
        {
            str(step["device"])
            for step in run.get("steps") or []
            if step.get("status") == "skipped" and "pending" in str(step.get("detail") or "")
        }
    )


def _pdeathsig() -> None:  # pragma: no cover - runs in the child between fork and exec
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


@dataclass
class Child:
    """A child process in its own process group, its output in `log`."""

    name: str
    argv: list[str]
    log: Path
    outlive_parent: bool = False
    proc: subprocess.Popen[bytes] | None = None

    def start(self, env: dict[str, str]) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,  # Ctrl-C on the terminal reaches the demo, which stops us
                preexec_fn=None if self.outlive_parent else _pdeathsig,
            )

    @property
    def pid(self) -> int | None:
        return None if self.proc is None else self.proc.pid

    def exited(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def stop(self, *, signalled: bool = False) -> None:
        """SIGTERM to the process group (not again when `signalled`: a second one can land after
        the child's own handler is gone, as it exits, and kill it), SIGKILL after STOP_GRACE_S;
        idempotent."""
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        if not signalled:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)

    def tail(self, lines: int = 12) -> str:
        try:
            text = self.log.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


# --- the demo -----------------------------------------------------------------------------------


@dataclass
class Demo:
    options: DemoOptions
    out: Callable[[str], None] = print
    dir: Path = field(init=False)
    playbooks: Path = field(init=False)
    skip: bool = field(init=False)
    lab: Child | None = field(init=False, default=None)
    daemon: Child | None = field(init=False, default=None)
    metrics_port: int = field(init=False, default=0)
    started: float = field(init=False, default_factory=time.monotonic)
    _step: int = field(init=False, default=0)

    STEPS = 6

    # --- narration

    def say(self, text: str = "") -> None:
        self.out(text)

    def title(self, text: str) -> None:
        self._step += 1
        self.say()
        self.say(f"[{self._step}/{self.STEPS}] {text}  (t+{time.monotonic() - self.started:.0f}s)")
        self.say("-" * min(100, 12 + len(text)))

    def checkpoint(self, text: str) -> None:
        self.say(f"==> {text}")

    def pause(self, seconds: float = 2.5) -> None:
        """Time to read, for people at a terminal; none with --fast or without a terminal."""
        if not self.options.fast and sys.stdout.isatty():
            time.sleep(seconds)

    def cli(self, shown: str, argv: list[str], *, ok: Sequence[int] = (0,)) -> int:
        """Run a `baton` command in this process, as an operator would type it."""
        from baton import cli

        self.say(f"$ {shown}")
        sys.stdout.flush()
        code = cli.main(argv)
        sys.stdout.flush()
        if code == 130:
            raise KeyboardInterrupt
        if code not in ok:
            raise DemoError(f"`{shown}` to succeed", f"exit code {code}")
        return code

    def lab_cli(self, *args: str) -> None:
        self.cli(f'baton lab --dir "$DEMO" {" ".join(args)}', ["lab", "--dir", str(self.dir), *args])

    # --- reading the daemon

    @property
    def socket_path(self) -> Path:
        return self.dir / "baton.sock"

    def client(self) -> ApiClient:
        return ApiClient(socket_path=self.socket_path, timeout_s=10.0)

    def office(self, office: str) -> dict[str, Any]:
        data: dict[str, Any] = self.client().get(f"/v1/offices/{office}")
        return data

    def metrics(self) -> dict[str, float]:
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as response:
            return parse_metrics(response.read().decode())

    def show_metrics(self, before: dict[str, float], office_filter: Sequence[str] = ()) -> dict[str, float]:
        after = self.metrics()
        lines = [
            line
            for line in metric_changes(before, after)
            if not office_filter or "office=" not in line or any(f'"{o}"' in line for o in office_filter)
        ]
        self.say(f"$ curl -s http://127.0.0.1:{self.metrics_port}/metrics   # what changed:")
        for line in lines or ["(no change)"]:
            self.say(f"  {line}")
        return after

    def check_children(self) -> None:
        for child in (self.lab, self.daemon):
            if child is not None and (code := child.exited()) is not None:
                raise DemoError(f"{child.name} to keep running", f"it exited with code {code}")

    def wait_for(
        self, what: str, probe: Callable[[], Any], timeout_s: float, *, interval_s: float = 0.25
    ) -> Any:
        """Poll `probe` until it returns something truthy; DemoError with its last answer if not."""
        deadline = time.monotonic() + timeout_s
        last: Any = None
        while True:
            self.check_children()
            try:
                last = probe()
            except ClientError as exc:
                last = str(exc)
            else:
                if last and not isinstance(last, str):
                    return last
            if time.monotonic() >= deadline:
                raise DemoError(f"{what} within {timeout_s:g} s", str(last) if last else "nothing yet")
            time.sleep(interval_s)

    def watch_office(self, office: str, until: Sequence[str], timeout_s: float) -> dict[str, Any]:
        """Print each phase/verdict change of `office` until its phase is in `until`."""
        seen: tuple[str, str] | None = None
        t0 = time.monotonic()

        def probe() -> dict[str, Any] | str:
            nonlocal seen
            view = self.office(office)
            now = (view["phase"], view["verdict"])
            if now != seen:
                # The decision when the phase moved; otherwise what the verdict rests on now.
                moved = seen is not None and seen[0] != now[0]
                why = view.get("reason") if moved else view.get("verdict_detail")
                seen = now
                self.say(
                    f"  +{time.monotonic() - t0:4.1f}s  {office}  phase {now[0]:<12} verdict {now[1]:<9}"
                    f" {why or ''}"
                )
            return view if view["phase"] in until else f"phase {view['phase']}, verdict {view['verdict']}"

        result: dict[str, Any] = self.wait_for(f"{office} to reach {' or '.join(until)}", probe, timeout_s)
        return result

    def expect_phase(self, office: str, phase: str, view: dict[str, Any] | None = None) -> dict[str, Any]:
        view = view or self.office(office)
        if view["phase"] != phase:
            raise DemoError(
                f"{office} in phase {phase}",
                f"phase {view['phase']} (verdict {view['verdict']}): {view.get('reason')}",
            )
        return view

    # --- the story

    def run(self) -> int:
        self.setup()
        self.watching()
        self.power_failure()
        self.power_returns()
        self.declared_closure()
        self.summary()
        return 0

    def setup(self) -> None:
        opts = self.options
        self.dir = (opts.dir or Path(tempfile.mkdtemp(prefix="baton-demo-"))).resolve()
        self.dir.mkdir(parents=True, exist_ok=True)
        self.playbooks = find_playbooks(opts.playbooks)
        self.skip = skips_unreachable(self.playbooks)
        ssh_port, self.metrics_port, snmp_port, trap_port, self.api_port = free_ports(5)
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        os.environ["BATON_SOCKET"] = str(self.socket_path)

        self.say("Baton keeps a telecom operator's network operated when a central office closes:")
        self.say("it watches every office's devices, decides when an office is closed, and hands")
        self.say("control of its routers to a designated alternate office — then hands it back when")
        self.say("the office reopens. This demo runs the real daemon against a simulated network")
        self.say("on this machine (loopback only).")
        self.title("Setting up: a lab of simulated offices, and the Baton daemon watching them")
        self.say(f"Everything lives in {self.dir}; to type the commands below yourself (with --keep):")
        self.say(f"  export DEMO={self.dir} BATON_SOCKET={self.socket_path}")
        self.start_lab(env, opts, f"127.0.0.1:{trap_port}", snmp_port, ssh_port)
        self.say(
            f"lab: {opts.offices} offices × {DEVICES_PER_OFFICE} devices (a core router, an aggregation "
            f"router, 2 OLTs), SNMP on udp/{snmp_port}, NETCONF over SSH on tcp/{ssh_port} — log: lab.log"
        )
        self.write_config()
        self.daemon = Child(
            "the daemon (baton daemon)",
            [
                sys.executable,
                "-m",
                "baton.cli",
                "daemon",
                "--config",
                str(self.dir / "baton.yaml"),
                "--log-format",
                "json",
            ],
            self.dir / "daemon.log",
            outlive_parent=opts.keep,
        )
        self.daemon.log.write_text("")
        self.daemon.start(env)
        self.say(
            f"daemon: baton daemon --config $DEMO/baton.yaml (pid {self.daemon.pid}); traps on "
            f"udp/{trap_port}, /metrics on tcp/{self.metrics_port}, JSON logs in daemon.log"
        )

        def all_up() -> Any:
            client = self.client()
            offices = client.get("/v1/offices")["offices"]
            bad = [f"{o['id']} {o['phase']}/{o['verdict']}" for o in offices if o["verdict"] != "HEALTHY"]
            for office in offices:
                devices = client.get(f"/v1/offices/{office['id']}/devices")["devices"]
                bad += [f"{d['id']} {d['verdict']}" for d in devices if d["verdict"] != "UP"]
            return offices if not bad else "not yet: " + ", ".join(bad)

        self.wait_for("every device UP and every office HEALTHY", all_up, 90)

    def start_lab(
        self, env: dict[str, str], opts: DemoOptions, trap_target: str, snmp_port: int, ssh_port: int
    ) -> None:
        """`baton lab run` as a child, waited for until it says it is ready."""
        self.lab = Child(
            "the lab (baton lab run)",
            [
                sys.executable,
                "-m",
                "baton.cli",
                "lab",
                "run",
                "--dir",
                str(self.dir),
                "--offices",
                str(opts.offices),
                "--devices-per-office",
                str(DEVICES_PER_OFFICE),
                "--trap-target",
                trap_target,
                "--snmp-port",
                str(snmp_port),
                "--ssh-port",
                str(ssh_port),
            ],
            self.dir / "lab.log",
            outlive_parent=opts.keep,
        )
        self.lab.log.write_text("")
        self.lab.start(env)
        self.wait_for("the lab to start", lambda: LAB_READY_LINE in self.lab_log(), 90)

    def lab_log(self) -> str:
        assert self.lab is not None
        return self.lab.log.read_text(encoding="utf-8", errors="replace")

    def write_config(self) -> None:
        """Tune the lab's baton.yaml for a one-minute story, and pick what counts as critical."""
        path = self.dir / "baton.yaml"
        config = yaml.safe_load(path.read_text(encoding="utf-8"))
        config["playbooks"] = str(self.playbooks)
        config["metrics_listen"] = f"127.0.0.1:{self.metrics_port}"
        config["vantage"] = {"id": "demo-noc-gwacheon", "office": VANTAGE_OFFICE}
        config["shadow"] = False
        config["policy"].update(
            {
                "poll_interval_s": 2.0,
                "failures_to_down": 3,
                "hold_down_s": 4.0 if self.options.fast else 6.0,
                "anti_flap_block_s": 30.0,
                "handback_hold_s": 10.0,
                "auto_handback": False,
                "storm_max_ratio": 0.5,  # one office of four DOWN is not a storm
            }
        )
        # Two people for the sealed office's handover: whoever runs the demo asks (an admin),
        # the duty manager approves with a token of their own, on the TCP API.
        self.duty_token.write_text(secrets.token_urlsafe(24) + "\n")
        self.duty_token.chmod(0o600)
        config.setdefault("api", {})["tcp_listen"] = f"127.0.0.1:{self.api_port}"
        config["api"]["tokens"] = [f"file:{self.duty_token.relative_to(self.dir)}"]
        config["operators"] = {
            "grants": [
                {"to": pwd.getpwuid(os.getuid()).pw_name, "role": "admin", "scope": ["all"]},
                {"to": "token:duty-manager", "role": "operator", "scope": ["region:seoul"]},
            ],
            "approvals": [
                {"scope": [f"office:{SEALED_OFFICE}"], "runs": ["handover"], "approvals": 1, "ttl_s": 900}
            ],
        }
        path.write_text(
            "# Written by `baton demo` from the lab's baton.yaml: short timers, this demo's ports.\n"
            + yaml.safe_dump(config, sort_keys=False)
        )
        if not self.skip:
            groups_path = self.dir / "inventory" / "groups.yaml"
            groups = yaml.safe_load(groups_path.read_text(encoding="utf-8"))
            groups["groups"]["olt"]["critical"] = True
            groups_path.write_text(
                "# Written by `baton lab`; `baton demo` counts the OLTs (subscriber access) as critical.\n"
                + yaml.safe_dump(groups, sort_keys=False)
            )

    @property
    def duty_token(self) -> Path:
        return self.dir / "inventory" / "credentials" / "duty-manager"

    def watching(self) -> None:
        self.title(f"Baton watches {self.options.offices} offices")
        self.say("Every 2 s Baton polls each device (SNMP, and NETCONF for routers); the lab's devices")
        self.say("also send SNMP traps to it. Every device answers, so every office is HEALTHY and OPEN.")
        self.cli("baton offices", ["offices"])
        self.pause()
        self.say()
        self.say(f"{CLOSED_OFFICE}'s devices (critical ones decide the office's health):")
        self.cli(f"baton devices {CLOSED_OFFICE}", ["devices", CLOSED_OFFICE])
        self.pause()

    def power_failure(self) -> None:
        self.title(f"Mains power fails at {CLOSED_OFFICE}")
        before = self.metrics()
        if self.skip:
            ups, dark = "core", "the aggregation router and both OLTs"
            why = "1 of its 2 critical devices (the aggregation router) is down"
        else:
            ups, dark = "core,agg", "both OLTs, which connect the subscribers,"
            why = "2 of its 4 critical devices (the OLTs) are down"
        self.say(f"The UPS carries {'the core router' if self.skip else 'both routers'}; {dark} go dark.")
        self.say("The core router sends a power alarm trap; Baton re-polls the office at once.")
        self.lab_cli("power-off", CLOSED_OFFICE, "--ups", ups)
        self.say()
        self.say(f"Baton's view of {CLOSED_OFFICE}, as it changes (from the API):")
        view = self.watch_office(CLOSED_OFFICE, ("HANDING_OVER", "HANDED_OVER", "FAILED"), 60)
        self.say()
        self.say(f"The office is DOWN because {why}.")
        self.say("DOWN for the whole hold-down time, it is CLOSED: Baton hands it over to its first")
        self.say(f"alternate, {ALTERNATE}.")
        run_id = view.get("run_id")
        if not run_id:
            raise DemoError(f"a handover run for {CLOSED_OFFICE}", f"no run id: {view.get('reason')}")
        run = self.follow(str(run_id))
        pending = pending_devices(run)
        view = self.watch_office(CLOSED_OFFICE, ("HANDED_OVER", "FAILED", "OPEN"), 60)
        self.expect_phase(CLOSED_OFFICE, "HANDED_OVER", view)
        if view.get("alternate") != ALTERNATE:
            raise DemoError(f"alternate {ALTERNATE}", f"alternate {view.get('alternate')}")
        self.checkpoint(f"{CLOSED_OFFICE} HANDED_OVER to {ALTERNATE}")
        if pending:
            self.say(
                f"{', '.join(pending)} did not answer: the run skipped it and reports it pending."
                if len(pending) == 1
                else f"{', '.join(pending)} did not answer: the run skipped them and reports them pending."
            )
            self.say("Baton hands pending devices over as soon as they answer again (a catch-up run).")
        self.say(f"{ALTERNATE}'s NOC now operates {CLOSED_OFFICE}'s routers: their ACL lets it in, and AAA,")
        self.say("syslog, traps and the contact point go to it. The run, as the journal keeps it:")
        self.cli(f"baton run {run_id}", ["run", str(run_id)])
        self.pause()
        self.say()
        self.show_metrics(before, (CLOSED_OFFICE,))
        self.pause()

    def follow(self, run_id: str, timeout_s: float = 180) -> dict[str, Any]:
        """Print each device's progress as it changes (what `baton handover` shows) until the run ends.

        A catch-up run is not the core's run in progress: the API says "unfinished" until the
        journal has its result, so that counts as still running here, within `timeout_s`."""
        from baton.commands.operator import device_progress

        self.say(f"Following run {run_id} live, device by device:")
        seen: dict[str, tuple[str, str]] = {}

        def ended() -> Any:
            run: dict[str, Any] = self.client().get(f"/v1/runs/{run_id}")
            devices = device_progress(run)
            for device, (step, status) in sorted(devices.items()):
                if seen.get(device) != (step, status):
                    self.say(f"  {device}: {step} {status}".rstrip())
            seen.update(devices)
            return (
                run if run.get("status") not in ("running", "unfinished") else f"status {run.get('status')}"
            )

        run: dict[str, Any] = self.wait_for(f"run {run_id} to end", ended, timeout_s, interval_s=0.2)
        self.say(f"run {run_id}: {run.get('status')} ({run.get('detail') or '-'})")
        if run.get("status") != "ok":
            raise DemoError(f"run {run_id} to succeed", f"status {run.get('status')}: {run.get('detail')}")
        return run

    def power_returns(self) -> None:
        self.title(f"Power returns at {CLOSED_OFFICE}")
        runs_before = {r["id"] for r in self.client().get("/v1/runs", {"office": CLOSED_OFFICE})["runs"]}
        self.say("Mains power is back: the dark devices boot and send coldStart traps.")
        self.lab_cli("power-on", CLOSED_OFFICE)

        def healthy() -> Any:
            view = self.office(CLOSED_OFFICE)
            return view if view["verdict"] == "HEALTHY" else f"verdict {view['verdict']}"

        self.wait_for(f"{CLOSED_OFFICE} HEALTHY again", healthy, 60)
        if self.skip:
            self.catch_up(runs_before)
        view = self.expect_phase(CLOSED_OFFICE, "HANDED_OVER")
        self.say(f"Every device answers again: {CLOSED_OFFICE} is HEALTHY, and still {view['phase']}.")
        self.say("Baton does not hand an office back by itself (policy auto_handback: false): people decide")
        self.say("when a building is fit to run its own network again, with `baton handback`.")
        self.cli("baton offices", ["offices"])
        self.pause()

    def catch_up(self, runs_before: set[str]) -> None:
        """With `unreachable: skip`, devices left pending are caught up when they answer again."""

        def new_run() -> Any:
            runs = self.client().get("/v1/runs", {"office": CLOSED_OFFICE})["runs"]
            fresh = [r for r in runs if r["id"] not in runs_before]
            return fresh[0] if fresh else "no new run"

        try:
            run = self.wait_for("a catch-up run", new_run, 30)
        except DemoError:
            return  # nothing was left pending
        self.say("The devices the handover could not reach are back: Baton catches them up.")
        self.follow(str(run["id"]))

    def declared_closure(self) -> None:
        self.title(f"An operator closes {SEALED_OFFICE}: sealed for disinfection")
        before = self.metrics()
        self.say(f"A confirmed infection seals {SEALED_OFFICE}. Its devices are all fine, so no")
        self.say("automation would close it: an operator declares the closure, and Baton hands the")
        self.say(f"office to its alternate, {SEALED_ALTERNATE} — once a second person agrees:")
        self.cli(
            f'baton handover {SEALED_OFFICE} --reason "sealed for disinfection" --yes',
            ["handover", SEALED_OFFICE, "--reason", "sealed for disinfection", "--yes"],
        )
        approval = self.office(SEALED_OFFICE).get("approval") or {}
        if not approval.get("id"):
            raise DemoError(f"the handover of {SEALED_OFFICE} waiting for an approval", "none waits")
        self.checkpoint(
            f"{SEALED_OFFICE} still {self.office(SEALED_OFFICE)['phase']}: its handover waits for approval "
            f"{approval['id']} (baton.yaml operators.approvals: two people for this office)"
        )
        self.pause()
        self.say("Whoever asked cannot approve it too:")
        self.cli(f"baton approve {approval['id']}", ["approve", approval["id"]], ok=(1,))
        self.say()
        self.say("The duty manager, on another machine with a token of their own (the TCP API), sees")
        self.say("the request and approves it:")
        tcp = ["--url", f"http://127.0.0.1:{self.api_port}", "--token-file", str(self.duty_token)]
        shown = (
            f'--url http://127.0.0.1:{self.api_port} --token-file "$DEMO/inventory/credentials/duty-manager"'
        )
        self.cli(f"baton approvals {shown}", ["approvals", *tcp])
        self.cli(
            f'baton approve {approval["id"]} --reason "confirmed with the site" {shown}',
            ["approve", approval["id"], "--reason", "confirmed with the site", *tcp],
        )
        view = self.expect_phase(SEALED_OFFICE, "HANDED_OVER")
        closure = view.get("closure") or {}
        if closure.get("kind") != "declared" or not closure.get("approved_by"):
            raise DemoError(f"a declared, approved closure of {SEALED_OFFICE}", f"closure {closure}")
        self.checkpoint(
            f"{SEALED_OFFICE} declared closed by {closure.get('who')} ({closure.get('reason')}), approved "
            f"by {', '.join(closure['approved_by'])}: HANDED_OVER to {view.get('alternate')}, "
            f"verdict {view['verdict']}"
        )
        self.pause()
        self.say()
        self.say("Later the building is disinfected and staff are back; an operator hands it back:")
        self.cli(
            f'baton handback {SEALED_OFFICE} --reason "disinfected, staff back" --yes',
            ["handback", SEALED_OFFICE, "--reason", "disinfected, staff back", "--yes"],
        )
        view = self.expect_phase(SEALED_OFFICE, "OPEN")
        self.checkpoint(f"{SEALED_OFFICE} OPEN again, operated by its own NOC")
        self.say()
        self.show_metrics(before, (SEALED_OFFICE,))
        self.pause()

    def summary(self) -> None:
        self.title("What happened")
        self.cli("baton runs", ["runs"])
        took = time.monotonic() - self.started
        self.say()
        self.say(f"In {took:.0f} s Baton:")
        self.say(f"  - saw {CLOSED_OFFICE} lose mains power (a power alarm trap, then polls),")
        self.say(f"    judged it DOWN, closed it after the hold-down and handed it over to {ALTERNATE}")
        self.say("    on its own;")
        self.say(
            f"  - handed {SEALED_OFFICE} over to {SEALED_ALTERNATE} on an operator's word and a second "
            "person's approval, and back;"
        )
        self.say("  - kept who asked, who approved and what it decided in a hash-chained audit trail:")
        self.cli(f"baton audit --office {SEALED_OFFICE}", ["audit", "--office", SEALED_OFFICE])
        self.say("Every handover committed with a NETCONF confirmed commit, verified, then confirmed:")
        self.say("had Baton died midway, the routers would have rolled back on their own.")
        self.say()
        self.say(f"Journal (every phase, run, step and command): {self.dir / 'journal.sqlite3'}")
        self.say(f"Daemon log (JSON, one event per line):        {self.dir / 'daemon.log'}")
        self.say(f"Lab log:                                      {self.dir / 'lab.log'}")
        if self.options.keep:
            assert self.lab is not None
            assert self.daemon is not None
            self.say()
            # `baton` as the newcomer can type it: on PATH, or next to this Python (the venv's).
            exe = "baton" if shutil.which("baton") else str(Path(sys.executable).with_name("baton"))
            self.say("The lab and the daemon keep running (--keep). Explore:")
            self.say(f"  export DEMO={self.dir} BATON_SOCKET={self.socket_path}")
            self.say(f"  {exe} status; {exe} offices; {exe} devices seoul-geumcheon; {exe} runs")
            self.say(f'  {exe} handback {CLOSED_OFFICE} --reason "power is back"')
            self.say(f'  {exe} lab --dir "$DEMO" status; {exe} lab --dir "$DEMO" cut seoul-gwacheon')
            self.say(f"  curl -s http://127.0.0.1:{self.metrics_port}/metrics | grep ^baton_office")
            self.say(f"Stop them with: kill -TERM -{self.daemon.pid} -{self.lab.pid}")
        else:
            self.say("(run `baton demo --keep` to keep the lab and daemon running and explore)")

    def stop(self, *, failed: bool) -> None:
        """Stop the children (the daemon first: it may still be talking to the lab)."""
        if self.options.keep and not failed:
            return
        for child in (self.daemon, self.lab):
            if child is not None:
                child.stop()


def _raise_interrupt(signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


@contextlib.contextmanager
def _terminate_as_interrupt() -> Iterator[None]:
    """SIGTERM/SIGHUP end the demo like Ctrl-C does: through the `finally` that stops children."""
    previous = {sig: signal.signal(sig, _raise_interrupt) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


class DemoUnavailable(Exception):
    """A tool the demo needs is not on this machine: what to install."""


class Scene(Protocol):
    def run(self) -> int: ...
    def say(self, text: str = "") -> None: ...
    def stop(self, *, failed: bool) -> None: ...


def play(scene: Scene, children: Callable[[], Iterable[Child | None]], stopping: str) -> int:
    """The scene to its end; the exit code (0: the story happened, 1: it did not, 69: a tool it
    needs is missing, 130: interrupted). Its children are stopped however it ends."""
    failed = True
    with _terminate_as_interrupt():
        try:
            code = scene.run()
            failed = False
            return code
        except DemoUnavailable as exc:
            scene.say(f"baton demo: {exc}")
            return 69  # EX_UNAVAILABLE
        except DemoError as exc:
            scene.say()
            scene.say(f"DEMO FAILED: expected {exc.expected}")
            scene.say(f"             saw {exc.seen}")
            for child in children():
                if child is not None and child.log.exists():
                    scene.say(f"{child.name}: log {child.log}; last lines:")
                    for line in child.tail(8).splitlines():
                        scene.say(f"  {line[:300]}")
            return 1
        except KeyboardInterrupt:
            scene.say(f"\nbaton demo: interrupted; stopping {stopping}")
            return 130
        finally:
            scene.stop(failed=failed)


def run_demo(options: DemoOptions) -> int:
    """The whole demo (`play`)."""
    demo = Demo(options)
    return play(demo, lambda: (demo.daemon, demo.lab), "the lab and the daemon")
