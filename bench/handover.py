"""Bench the handover of N devices: Baton's runner side by side with `ansible-playbook`.

    .venv/bin/python bench/handover.py [--devices 200[,1000]] [--repeat 3] [--skip-ansible]
                                       [--only lab|netconfd] [--netconfd 8] [--concurrency 64]

Scenario A (lab, Baton): a `baton.lab` network in a SEPARATE process (`--serve-lab`), two
offices of N devices each (the closed office and its alternate); its inventory is written with
`write_inventory`; Baton loads it, plans `playbooks/handover.yaml` with `plan_run` and executes
it with the runner (`baton.playbook.runner.execute`): two edits to every device's candidate, an
office-wide confirmed commit, verify on running, confirm. Measured: wall and CPU of plan +
execute in this process (the daemon's 128-thread executor, JSON logs to a file, a real SQLite
journal), and the lab process's CPU separately.

Scenario B (lab, Ansible): the same devices and the same edits (the <config> bodies Baton's plan
rendered) with `ansible-playbook` and `bench/ansible/handover.yml` (recipes §10): netconf_config
to candidate with `lock: never`, netconf_rpc commit confirmed, netconf_get + assert, netconf_config
confirm_commit. ansible.netcommon.netconf, host keys checked against a known_hosts built from the
lab's pinned keys, the lab's client key, forks = N. Its CPU is the children's (getrusage
RUSAGE_CHILDREN); this process is a child subreaper so the persistent `ansible-connection`
processes, which daemonize, are reaped here and counted too.

Scenario C (netconfd): K real yuma123 netconfd instances, each behind its own OpenSSH sshd (the
test peers' code, `tests/peers/netconfd.py`), handed over by Baton with
`playbooks/netconfd-handover.yaml` and by Ansible with the same edit.

Every run is checked: on the lab, every device's running config (read in the lab process) has the
alternate's ACL entry and contact and no confirmed commit pending; on netconfd, running (read over
NETCONF) has the alternate's group. Each device is reset to its starting config before the next
run. A run that fails its check is reported as failed, not timed.

Ansible lives in its own venv outside the repository (`--ansible-venv`, default
/var/tmp/baton-bench/venv-ansible), created on first use with `pip install ansible ncclient`
(~40 s, ~570 MB; the `ansible` bundle includes ansible.netcommon). Not part of CI.
Everything listens on 127.0.0.0/8 only; every process started here is stopped at the end,
also on Ctrl-C or failure.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import json
import os
import resource
import secrets
import select
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "daemon"))
sys.path.insert(1, str(ROOT))  # tests.peers: how real netconfd instances are started

BENCH = Path(__file__).resolve().parent
PLAYBOOKS = ROOT / "playbooks"
ANSIBLE_PLAYBOOK = BENCH / "ansible" / "handover.yml"
DEFAULT_WORKDIR = Path("/var/tmp/baton-bench")
LAB_CLOSED, LAB_ALTERNATE = "seoul-geumcheon", "seoul-bangbae"  # select_offices("2")
NC_CLOSED, NC_ALTERNATE, NC_GROUP = "gc", "bb", "bb-noc"
NACM_NS = "urn:ietf:params:xml:ns:yang:ietf-netconf-acm"
PR_SET_CHILD_SUBREAPER = 36
BENCH_WINDOW_S = 7200.0  # the confirmed-commit window of Baton's bench runs (see _baton_run)
DEFAULT_MAX_FORKS = 50  # forks = N up to this: 200 forks × ~58 MB would crowd out a shared box
CONNECTION_MB, FORK_MB = 50, 58  # RSS per ansible-connection and per fork, measured at N=20


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def cpu_self() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def cpu_children() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def rss_mb() -> float:
    return status_mb("VmRSS")


def status_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    return 0.0


# --- children: orphans re-parented to us are reaped (and their CPU counted) ----------------------


def become_subreaper() -> bool:
    """Orphaned descendants (Ansible's daemonized ansible-connection) become our children."""
    libc = ctypes.CDLL(None, use_errno=True)
    return bool(libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0)


def child_pids() -> set[int]:
    me = os.getpid()
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == me:
            found.add(int(entry.name))
    return found


def reap_orphans(keep: set[int], grace_s: float) -> int:
    """Wait (bounded) for children not in `keep` to exit, then kill what is left; reap all."""
    deadline = time.monotonic() + grace_s
    killed = 0
    while True:
        pending = child_pids() - keep
        for pid in list(pending):
            with contextlib.suppress(ChildProcessError):
                done, _ = os.waitpid(pid, os.WNOHANG)
                if done:
                    pending.discard(pid)
        if not pending:
            return killed
        if time.monotonic() >= deadline:
            for pid in pending:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                    killed += 1
            for pid in pending:
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(pid, 0)
            return killed
        time.sleep(0.1)


def _raise_interrupt(signum: int, _frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


# --- results ---------------------------------------------------------------------------------


@dataclass
class Sample:
    wall_s: float
    cpu_s: float
    peer_cpu_s: float
    ok: bool
    detail: str = ""
    threads: int = 0  # Baton: the process's peak thread count during the run
    rss_mb: float = 0.0  # Baton: the process's peak RSS (VmHWM) after the run


@dataclass
class Row:
    scenario: str
    n: int
    tool: str
    note: str = ""
    samples: list[Sample] = field(default_factory=list)

    @property
    def good(self) -> list[Sample]:
        return [s for s in self.samples if s.ok]

    def median(self, attr: str) -> float | None:
        values = [getattr(s, attr) for s in self.good]
        return statistics.median(values) if values else None


def report(what: str, n: int, rep: int, sample: Sample) -> None:
    state = "ok" if sample.ok else "FAILED " + sample.detail
    log(
        f"  {what} N={n} run {rep + 1}: wall {sample.wall_s:.2f} s, CPU {sample.cpu_s:.2f} s, "
        f"peer CPU {sample.peer_cpu_s:.2f} s"
        + (f", threads peak {sample.threads}, RSS peak {sample.rss_mb:.0f} MB" if sample.threads else "")
        + f", {state}"
    )


def fmt(value: float | None, unit: str = "s", digits: int = 2) -> str:
    return "–" if value is None else f"{value:.{digits}f} {unit}".strip()


def table(rows: Sequence[Row]) -> str:
    header = (
        "| scenario | N | tool | runs ok | wall median | CPU median | per device (wall / CPU) "
        "| peer CPU median | Ansible/Baton wall (CPU) | Baton peak threads / RSS |"
    )
    lines = [header, "|" + "---|" * 10]
    baton = {(r.scenario, r.n): r for r in rows if r.tool == "baton"}
    for r in rows:
        wall, cpu, peer = r.median("wall_s"), r.median("cpu_s"), r.median("peer_cpu_s")
        capped = [s for s in r.samples if s.detail.startswith("did not finish")]
        over = "> " if wall is None and capped else ""  # killed at the cap: lower bounds
        if over:
            wall, cpu, peer = capped[0].wall_s, capped[0].cpu_s, capped[0].peer_cpu_s
        per = "–"
        if wall is not None and cpu is not None:
            per = f"{over}{wall * 1000 / r.n:.1f} / {cpu * 1000 / r.n:.1f} ms"
        ratio = "–"
        ref = baton.get((r.scenario, r.n))
        if r.tool != "baton" and ref is not None and wall is not None and cpu is not None:
            bw, bc = ref.median("wall_s"), ref.median("cpu_s")
            if bw and bc:
                ratio = f"{over}{wall / bw:.1f}× ({cpu / bc:.1f}×)"
        tool = r.tool + (f" ({r.note})" if r.note else "")
        threads, rss = r.median("threads"), r.median("rss_mb")
        peaks = f"{threads:.0f} / {rss:.0f} MB" if threads else "–"
        lines.append(
            f"| {r.scenario} | {r.n} | {tool} | {len(r.good)}/{len(r.samples)} | {over}{fmt(wall)} "
            f"| {over}{fmt(cpu)} | {per} | {over}{fmt(peer)} | {ratio} | {peaks} |"
        )
    failures = [(r, s) for r in rows for s in r.samples if not s.ok]
    for r, s in failures:
        lines.append(f"\nFAILED: {r.scenario} N={r.n} {r.tool}: {s.detail}")
    return "\n".join(lines)


# --- the lab process -----------------------------------------------------------------------------


def serve_lab(spec: dict[str, Any]) -> int:
    """Child process: run a lab, answer JSON commands on stdin (cpu, check, reset, quit)."""
    import yaml
    from lxml import etree  # type: ignore[import-untyped]

    from baton.lab.datastore import Datastore
    from baton.lab.inventory_writer import write_inventory
    from baton.lab.network import LabConfig, LabThread, select_offices
    from baton.logs import configure

    configure(level="warning", stream=sys.stderr)
    signal.signal(signal.SIGTERM, _raise_interrupt)
    config = LabConfig(
        dir=Path(spec["dir"]),
        offices=select_offices("2"),
        devices_per_office=spec["devices_per_office"],
        snmp_port=spec["snmp_port"],
        ssh_port=spec["ssh_port"],
        control=False,
    )
    thread = LabThread(config)
    lab = thread.start(timeout_s=900)
    try:
        inventory = write_inventory(lab, trap_collector="127.0.0.1")
        # Every device of the office is a handover target: give the OLTs NETCONF (the lab serves
        # it on every device) and the playbook's target tag `bng`.
        groups_path = inventory / "groups.yaml"
        doc = yaml.safe_load(groups_path.read_text())
        olt = doc["groups"]["olt"]
        olt["netconf"] = {"enabled": True}
        olt["tags"] = [*olt.get("tags", []), "bng"]
        groups_path.write_text(yaml.safe_dump(doc, sort_keys=False))
        pristine = {
            dev_id: [etree.tostring(el, encoding="unicode") for el in dev.datastore.config("running")]
            for dev_id, dev in lab.devices.items()
        }
        closed = lab.plan.office(LAB_CLOSED)
        alternate = lab.plan.office(LAB_ALTERNATE)
        targets = [
            {"id": d.id, "address": d.address, "host_key": lab.host_key(d.id)}
            for d in lab.office_devices(LAB_CLOSED)
        ]
        ready = {
            "pid": os.getpid(),
            "startup_s": lab.startup_s,
            "rss_mb": rss_mb(),
            "inventory": str(inventory),
            "client_key": str(lab.state_dir / "client_ed25519"),
            "ssh_port": config.ssh_port,
            "office": closed.id,
            "alternate": alternate.id,
            "alternate_prefix": alternate.noc_prefix,
            "alternate_contact": alternate.contact,
            "targets": targets,
        }
        print(json.dumps(ready), flush=True)

        async def check() -> dict[str, Any]:
            bad = []
            for dev in lab.office_devices(LAB_CLOSED):
                mgmt = dev.mgmt
                acl = dict(zip(mgmt.acl_offices, (str(n) for n in mgmt.acl), strict=False))
                if acl.get(alternate.id) != alternate.noc_prefix:
                    bad.append(f"{dev.id}: no ACL entry {alternate.id} {alternate.noc_prefix}")
                elif mgmt.contact != alternate.contact:
                    bad.append(f"{dev.id}: contact {mgmt.contact!r}")
                elif dev.datastore.confirm_pending:
                    bad.append(f"{dev.id}: confirmed commit still pending (not confirmed)")
            return {"checked": len(lab.office_devices(LAB_CLOSED)), "bad": bad[:5], "bad_count": len(bad)}

        async def reset() -> dict[str, Any]:
            for dev_id, dev in lab.devices.items():
                dev.datastore = Datastore(pristine[dev_id])
            return {"reset": len(pristine)}

        for line in sys.stdin:
            cmd = json.loads(line)["cmd"]
            if cmd == "quit":
                break
            if cmd == "cpu":
                reply: dict[str, Any] = {"cpu_s": cpu_self(), "rss_mb": rss_mb()}
            elif cmd == "check":
                reply = thread.run(check(), 120)
            elif cmd == "reset":
                reply = thread.run(reset(), 120)
            else:
                reply = {"error": f"unknown command {cmd}"}
            print(json.dumps(reply), flush=True)
    except KeyboardInterrupt:
        pass
    finally:
        thread.stop()
    return 0


class LabProcess:
    """The lab in a child process, driven over its stdin/stdout."""

    def __init__(self, workdir: Path, per_office: int, ssh_port: int, snmp_port: int) -> None:
        spec = {
            "dir": str(workdir),
            "devices_per_office": per_office,
            "ssh_port": ssh_port,
            "snmp_port": snmp_port,
        }
        self.stderr = (workdir / "lab.stderr").open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--serve-lab", json.dumps(spec)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.stderr,
            start_new_session=True,  # Ctrl-C reaches us only; we stop it
        )
        self.info: dict[str, Any] = self._read(900)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _read(self, timeout_s: float) -> dict[str, Any]:
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout_s)
        line = self.proc.stdout.readline() if ready else b""
        if not line:
            raise RuntimeError(f"lab process gave no answer within {timeout_s:g} s (see lab.stderr)")
        reply: dict[str, Any] = json.loads(line)
        return reply

    def ask(self, cmd: str, timeout_s: float = 120) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"cmd": cmd}).encode() + b"\n")
        self.proc.stdin.flush()
        return self._read(timeout_s)

    def cpu(self) -> float:
        return float(self.ask("cpu")["cpu_s"])

    def close(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(Exception):
                assert self.proc.stdin is not None
                self.proc.stdin.write(b'{"cmd": "quit"}\n')
                self.proc.stdin.close()
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self.stderr.close()


# --- Baton ---------------------------------------------------------------------------------------


async def _baton_run(
    inventory: Any,
    resolve: Any,
    playbook_path: Path,
    office: str,
    alternate: str,
    run_id: str,
    journal_path: Path,
    concurrency: int,
) -> tuple[float, float, Any]:
    from baton.core.model import RunKind
    from baton.journal import Journal
    from baton.playbook.plan import RunInfo, plan_run
    from baton.playbook.runner import execute
    from baton.playbook.schema import load_playbook
    from baton.playbook.steps import Connectors

    # The window as large as the run needs: the runner refuses a run its confirm window cannot
    # cover (at N=200 and concurrency 64 the playbook's 300 s would not), and this measures speed.
    playbook = load_playbook(playbook_path).model_copy(update={"confirm_window_s": BENCH_WINDOW_S})
    with Journal.open(journal_path) as journal:
        c0, t0 = cpu_self(), time.perf_counter()
        plan = plan_run(
            playbook, inventory, office, alternate, RunInfo(run_id, RunKind.HANDOVER, "bench", "bench")
        )
        log(f"  baton: planned in {time.perf_counter() - t0:.2f} s (CPU {cpu_self() - c0:.2f} s)")
        outcome = await execute(
            plan, journal=journal, connectors=Connectors(resolve), concurrency=concurrency
        )
        wall, cpu = time.perf_counter() - t0, cpu_self() - c0
    return wall, cpu, outcome


def baton_run(
    inventory: Any,
    resolve: Any,
    playbook: Path,
    office: str,
    alternate: str,
    run_id: str,
    journal_path: Path,
    concurrency: int,
) -> tuple[float, float, Any, int, float]:
    """wall, CPU, the outcome, the peak thread count during the run (sampled every 50 ms), and
    the process's peak RSS (VmHWM) after it."""
    done = threading.Event()
    peak = [threading.active_count()]

    def sample() -> None:
        while not done.wait(0.05):
            peak[0] = max(peak[0], threading.active_count())

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        wall, cpu, outcome = asyncio.run(
            _baton_run(inventory, resolve, playbook, office, alternate, run_id, journal_path, concurrency)
        )
    finally:
        done.set()
        sampler.join()
    return wall, cpu, outcome, peak[0] - 1, status_mb("VmHWM")  # the sampler itself not counted


def describe_outcome(outcome: Any) -> str:
    if outcome.ok:
        return ""
    errors = [f"{d.device}: {d.error}" for d in outcome.devices if d.error][:3]
    return f"{outcome.result}: {outcome.detail}; " + "; ".join(errors)


def ansible_edits(inventory: Any, playbook_path: Path, office: str, alternate: str) -> tuple[list[str], str]:
    """The <config> bodies and the verify filter Baton's plan renders (first target device)."""
    from baton.core.model import RunKind
    from baton.playbook.plan import RunInfo, plan_run
    from baton.playbook.schema import NetconfEdit, NetconfGet, load_playbook
    from baton.playbook.steps import wrap_config

    plan = plan_run(
        load_playbook(playbook_path),
        inventory,
        office,
        alternate,
        RunInfo("ansible", RunKind.HANDOVER, "bench", "bench"),
    )
    if not plan.ok:
        raise RuntimeError("plan has problems: " + "; ".join(str(p) for p in plan.problems[:5]))
    first = plan.devices[0]
    edits = [wrap_config(ps.step.config) for ps in first.steps if isinstance(ps.step, NetconfEdit)]
    gets = [ps.step for ps in first.steps if isinstance(ps.step, NetconfGet)]
    verify_filter = gets[0].filter if gets and gets[0].filter else ""
    return edits, verify_filter.strip()


# --- Ansible -------------------------------------------------------------------------------------


def ensure_ansible(venv: Path) -> Path:
    """ansible-playbook from its own venv; created on first use (pip install ansible ncclient)."""
    exe = venv / "bin" / "ansible-playbook"
    if exe.exists():
        return exe
    log(f"creating the Ansible venv {venv} (pip install ansible ncclient: ~40 s, ~570 MB)")
    venv.parent.mkdir(parents=True, exist_ok=True)
    python = shutil.which("python3", path="/usr/bin:/usr/local/bin") or sys.executable
    subprocess.run([python, "-m", "venv", str(venv)], check=True, timeout=300)
    subprocess.run(
        [str(venv / "bin" / "pip"), "install", "-q", "ansible", "ncclient"], check=True, timeout=1800
    )
    return exe


def mem_available_mb() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) / 1024
    return 0.0


def ansible_memory_problem(hosts: int, forks: int) -> str:
    """Why a run would not fit in memory, or "". Measured RSS (N=20): every host keeps an
    ansible-connection process (~50 MB) for the whole play; every fork is ~58 MB."""
    need = hosts * CONNECTION_MB + forks * FORK_MB
    avail = mem_available_mb()
    if need > 0.6 * avail:
        return (
            f"needs ~{need / 1024:.0f} GB ({hosts} persistent connections × {CONNECTION_MB} MB + "
            f"{forks} forks × {FORK_MB} MB), {avail / 1024:.0f} GB available"
        )
    return ""


@dataclass(frozen=True)
class AnsibleHost:
    name: str
    address: str
    port: int
    host_key: str  # "ssh-ed25519 AAAA..."


def write_ansible(
    directory: Path,
    hosts: Sequence[AnsibleHost],
    *,
    user: str,
    private_key: str,
    python: Path,
    forks: int,
    variables: dict[str, Any],
) -> None:
    """inventory.ini, ssh_config, known_hosts (the pinned keys), ansible.cfg and vars.json."""
    if directory.exists():
        shutil.rmtree(directory)
    for sub in ("home", "tmp", "pc"):
        (directory / sub).mkdir(parents=True)
    known_hosts = directory / "known_hosts"
    known_hosts.write_text("".join(f"[{h.address}]:{h.port} {h.host_key}\n" for h in hosts))
    ssh_config = directory / "ssh_config"
    ssh_config.write_text(f"Host *\n  UserKnownHostsFile {known_hosts}\n  StrictHostKeyChecking yes\n")
    lines = ["[devices]"]
    lines += [f"{h.name} ansible_host={h.address} ansible_port={h.port}" for h in hosts]
    lines += [
        "",
        "[devices:vars]",
        "ansible_connection=ansible.netcommon.netconf",
        "ansible_network_os=ansible.netcommon.default",
        f"ansible_user={user}",
        f"ansible_ssh_private_key_file={private_key}",
        "ansible_host_key_checking=true",
        f"ansible_netconf_ssh_config={ssh_config}",
        f"ansible_python_interpreter={python}",
    ]
    (directory / "inventory.ini").write_text("\n".join(lines) + "\n")
    (directory / "ansible.cfg").write_text(
        "[defaults]\n"
        f"forks = {forks}\n"
        "host_key_checking = True\n"
        "gathering = explicit\n"
        "retry_files_enabled = False\n"
        "\n[persistent_connection]\n"
        # generous: a timeout must not be what makes Ansible fail under load; the cap is the run's
        "connect_timeout = 300\n"
        "command_timeout = 300\n"
    )
    (directory / "vars.json").write_text(json.dumps(variables, indent=1))


def run_ansible(exe: Path, directory: Path, timeout_s: float, keep: set[int]) -> tuple[float, float, str]:
    """Run the playbook; (wall, CPU of all its processes, problem or "")."""
    env = {
        "PATH": f"{exe.parent}:/usr/sbin:/usr/bin:/sbin:/bin",
        "HOME": str(directory / "home"),
        "LANG": "C.UTF-8",
        "ANSIBLE_CONFIG": str(directory / "ansible.cfg"),
        "ANSIBLE_HOME": str(directory / "home"),
        "ANSIBLE_LOCAL_TEMP": str(directory / "tmp"),
        "ANSIBLE_PERSISTENT_CONTROL_PATH_DIR": str(directory / "pc"),
        "ANSIBLE_NOCOLOR": "1",
    }
    argv = [
        str(exe),
        "-i",
        str(directory / "inventory.ini"),
        str(ANSIBLE_PLAYBOOK),
        "-e",
        f"@{directory / 'vars.json'}",
    ]
    out_path = directory / "ansible.log"
    problem = ""
    c0, t0 = cpu_children(), time.perf_counter()
    with out_path.open("wb") as out:
        proc = subprocess.Popen(
            argv, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=directory, start_new_session=True
        )
        try:
            rc = proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(30)
            rc = None
            problem = f"did not finish within {timeout_s:g} s (killed)"
        except BaseException:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(30)
            reap_orphans(keep, 0)
            raise
    wall = time.perf_counter() - t0
    killed = reap_orphans(keep, 30 if rc is not None else 0)  # persistent connections
    cpu = cpu_children() - c0
    text = out_path.read_text(errors="replace")
    recap = text.rsplit("PLAY RECAP", 1)[-1] if "PLAY RECAP" in text else ""
    bad = [
        line.split()[0]
        for line in recap.splitlines()
        if ":" in line and (" failed=0" not in line or " unreachable=0" not in line)
    ]
    if not problem and rc != 0:
        hosts = ", ".join(bad[:3])
        problem = (
            f"ansible-playbook exit {rc}; {len(bad)} host(s) failed/unreachable ({hosts}); see {out_path}"
        )
    if killed:
        log(f"  killed {killed} leftover Ansible process(es) after the run")
    return wall, cpu, problem


# --- scenario A/B: the lab -----------------------------------------------------------------------


def bench_lab(n: int, args: argparse.Namespace, rows: list[Row]) -> None:
    from baton.inventory import load_inventory
    from baton.secrets import resolve

    workdir = args.workdir / f"lab-{n}"
    workdir.mkdir(parents=True, exist_ok=True)
    log(f"lab: starting 2 offices × {n} devices (separate process)")
    t0 = time.perf_counter()
    lab = LabProcess(workdir, n, args.ssh_port, args.snmp_port)
    try:
        info = lab.info
        log(
            f"lab: ready in {time.perf_counter() - t0:.1f} s (lab start {info['startup_s']:.1f} s, "
            f"RSS {info['rss_mb']:.0f} MB), pid {lab.pid}"
        )
        inv_dir = Path(info["inventory"])
        t0 = time.perf_counter()
        inventory = load_inventory(inv_dir)
        log(
            f"baton: inventory of {len(inventory.devices)} devices loaded in {time.perf_counter() - t0:.2f} s"
        )
        resolver = lambda ref: resolve(ref, base_dir=inv_dir)  # noqa: E731
        office, alternate = info["office"], info["alternate"]
        playbook = PLAYBOOKS / "handover.yaml"
        keep = {lab.pid}

        def checked(sample: Sample) -> Sample:
            result = lab.ask("check")
            if result["bad_count"] or result["checked"] != n:
                sample.ok = False
                sample.detail += (
                    f" check: {result['bad_count']}/{result['checked']} devices wrong: {result['bad']}"
                )
            lab.ask("reset")
            return sample

        row = Row("lab", n, "baton", f"concurrency {args.concurrency}")
        rows.append(row)
        for rep in range(args.repeat):
            p0 = lab.cpu()
            run_id = f"bench-{n}-{rep}-{secrets.token_hex(3)}"
            wall, cpu, outcome, threads, rss = baton_run(
                inventory,
                resolver,
                playbook,
                office,
                alternate,
                run_id,
                workdir / "journal.sqlite3",
                args.concurrency,
            )
            sample = checked(
                Sample(wall, cpu, lab.cpu() - p0, outcome.ok, describe_outcome(outcome), threads, rss)
            )
            row.samples.append(sample)
            report("baton lab", n, rep, sample)

        if args.skip_ansible:
            return
        forks = args.ansible_forks or min(n, DEFAULT_MAX_FORKS)
        too_big = ansible_memory_problem(n, forks)
        if too_big:
            log(f"ansible lab N={n}: not run: {too_big}")
            rows.append(Row("lab", n, "ansible", f"not run: {too_big}"))
            return
        exe = ensure_ansible(args.ansible_venv)
        edits, verify_filter = ansible_edits(inventory, playbook, office, alternate)
        hosts = [AnsibleHost(t["id"], t["address"], info["ssh_port"], t["host_key"]) for t in info["targets"]]
        adir = workdir / "ansible"
        write_ansible(
            adir,
            hosts,
            user="baton",
            private_key=info["client_key"],
            python=exe.parent / "python",
            forks=forks,
            variables={
                "handover_edits": edits,
                "confirm_timeout": 300,
                "verify_filter": verify_filter,
                "verify_needles": [
                    f"<name>{alternate}</name>",
                    info["alternate_prefix"],
                    info["alternate_contact"],
                ],
            },
        )
        row = Row("lab", n, "ansible", f"forks {forks}")
        rows.append(row)
        for rep in range(args.ansible_repeat or args.repeat):
            p0 = lab.cpu()
            wall, cpu, problem = run_ansible(exe, adir, args.ansible_timeout, keep)
            sample = checked(Sample(wall, cpu, lab.cpu() - p0, not problem, problem))
            row.samples.append(sample)
            report("ansible lab", n, rep, sample)
            if problem.startswith("did not finish"):
                break  # no point repeating a run that hit the cap
    finally:
        lab.close()


# --- scenario C: real netconfd -------------------------------------------------------------------


@contextlib.contextmanager
def netconfd_devices(count: int, workdir: Path) -> Iterator[tuple[Any, list[Any]]]:
    """`count` netconfd+sshd pairs (tests/peers/netconfd.py), started and always stopped."""
    from tests.peers.netconfd import NetconfdProcess
    from tests.peers.sshd import TestUser, ensure_test_user
    from tests.peers.util import PeerStartError, free_port, run_checked

    name, home, password = ensure_test_user()
    keydir = workdir / "client-key"
    shutil.rmtree(keydir, ignore_errors=True)
    keydir.mkdir(parents=True)
    private_key = keydir / "id_ed25519"
    run_checked(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "baton-bench", "-f", str(private_key)])
    public_key = (keydir / "id_ed25519.pub").read_text().strip()
    # "s<pid>-..." like the test sessions: their fixture removes it if this process dies
    session_dir = home / "sessions" / f"s{os.getpid()}-bench{secrets.token_hex(3)}"
    session_dir.mkdir(mode=0o755)
    devices: list[Any] = []
    try:
        (session_dir / "authorized_keys").write_text(public_key + "\n")
        (session_dir / "authorized_keys").chmod(0o644)
        user = TestUser(name, home, password, session_dir, private_key, public_key)
        for i in range(1, count + 1):
            for attempt in (1, 2):
                device = NetconfdProcess(session_dir / f"nc{i}-{attempt}", free_port(), user)
                devices.append(device)
                try:
                    device.start()
                    break
                except PeerStartError:
                    if attempt == 2 or not device.lost_port_race():
                        raise
        yield user, [d for d in devices if d.pid is not None]
    finally:
        for device in devices:
            device.kill()
        shutil.rmtree(session_dir, ignore_errors=True)


def netconfd_inventory(endpoints: Sequence[Any]) -> Any:
    from baton.core.model import Device, Inventory, NetconfSettings, Office, SecretRef

    devices = {
        f"gc-nc{i}": Device(
            id=f"gc-nc{i}",
            office=NC_CLOSED,
            role="core",
            address=ep.host,
            tags=("netconfd",),
            host_key=ep.host_key,
            netconf=NetconfSettings(
                enabled=True,
                port=ep.port,
                username=ep.username,
                private_key=SecretRef("file", str(ep.private_key)),
                timeout_s=10.0,
            ),
        )
        for i, ep in enumerate(endpoints, 1)
    }
    offices = {
        NC_CLOSED: Office(NC_CLOSED, "Geumcheon", "seoul", (NC_ALTERNATE,), {"operator_group": "gc-noc"}),
        NC_ALTERNATE: Office(NC_ALTERNATE, "Bangbae", "seoul", (NC_CLOSED,), {"operator_group": NC_GROUP}),
    }
    return Inventory(offices, devices)


async def _netconfd_check_and_reset(inventory: Any, resolver: Any) -> list[str]:
    """Devices whose running lacks the group (check), then remove the group and rule-list (reset)."""
    from baton.adapters.netconf import NetconfClient

    remove = (
        f'<config xmlns="urn:ietf:params:xml:ns:netconf:base:1.0"><nacm xmlns="{NACM_NS}" '
        'xmlns:nc="urn:ietf:params:xml:ns:netconf:base:1.0">'
        f'<groups><group nc:operation="remove"><name>{NC_GROUP}</name></group></groups>'
        f'<rule-list nc:operation="remove"><name>{NC_GROUP}-handover</name></rule-list></nacm></config>'
    )

    async def one(device: Any) -> str | None:
        async with NetconfClient.connect(device, resolve=resolver, timeout_s=20) as nc:
            running = await nc.get_config("running", f'<nacm xmlns="{NACM_NS}"><groups/></nacm>')
            async with nc.locked("candidate"):
                await nc.discard_changes()
                await nc.edit_config("candidate", remove)
                await nc.commit()
        return (
            None if f"<name>{NC_GROUP}</name>" in running else f"{device.id}: group {NC_GROUP} not in running"
        )

    results = await asyncio.gather(*(one(d) for d in inventory.devices.values()))
    return [r for r in results if r]


def bench_netconfd(args: argparse.Namespace, rows: list[Row]) -> None:
    from tests.peers.util import PeerStartError

    workdir = args.workdir / "netconfd"
    workdir.mkdir(parents=True, exist_ok=True)
    log(f"netconfd: starting {args.netconfd} netconfd+sshd pairs")
    t0 = time.perf_counter()
    try:
        ctx = netconfd_devices(args.netconfd, workdir)
        user, devices = ctx.__enter__()
    except (PeerStartError, BaseException) as exc:
        if isinstance(exc, KeyboardInterrupt):
            raise
        log(f"netconfd: cannot start the peers: {exc}")
        rows.append(Row("netconfd", args.netconfd, "baton", f"peers did not start: {str(exc)[:120]}"))
        return
    try:
        n = len(devices)
        log(f"netconfd: {n} ready in {time.perf_counter() - t0:.1f} s")
        inventory = netconfd_inventory([d.endpoint for d in devices])
        resolver = lambda ref: Path(ref.name).read_text()  # noqa: E731
        playbook = PLAYBOOKS / "netconfd-handover.yaml"
        peer_pids = [p for d in devices for p in (d.pid, d.sshd.pid) if p]
        keep = {p for d in devices for p in (d.pid, d.sshd.pid) if p}

        def peer_cpu() -> float:
            total = 0.0
            tick = os.sysconf("SC_CLK_TCK")
            for pid in peer_pids:  # netconfd and sshd, with the session processes sshd reaped
                with contextlib.suppress(OSError):
                    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                    total += sum(int(f) for f in fields[11:15]) / tick  # utime stime cutime cstime
            return total

        def checked(sample: Sample) -> Sample:
            bad = asyncio.run(_netconfd_check_and_reset(inventory, resolver))
            if bad:
                sample.ok = False
                sample.detail += f" check: {len(bad)}/{n} devices wrong: {bad[:3]}"
            return sample

        row = Row("netconfd", n, "baton", f"concurrency {args.concurrency}")
        rows.append(row)
        for rep in range(args.repeat):
            p0 = peer_cpu()
            run_id = f"bench-nc-{rep}-{secrets.token_hex(3)}"
            wall, cpu, outcome, threads, rss = baton_run(
                inventory,
                resolver,
                playbook,
                NC_CLOSED,
                NC_ALTERNATE,
                run_id,
                workdir / "journal.sqlite3",
                args.concurrency,
            )
            sample = checked(
                Sample(wall, cpu, peer_cpu() - p0, outcome.ok, describe_outcome(outcome), threads, rss)
            )
            row.samples.append(sample)
            report("baton netconfd", n, rep, sample)
        if args.skip_ansible:
            return
        exe = ensure_ansible(args.ansible_venv)
        edits, verify_filter = ansible_edits(inventory, playbook, NC_CLOSED, NC_ALTERNATE)
        hosts = [AnsibleHost(d.id, d.address, d.netconf.port, d.host_key) for d in inventory.devices.values()]
        adir = workdir / "ansible"
        write_ansible(
            adir,
            hosts,
            user=user.name,
            private_key=str(user.private_key),
            python=exe.parent / "python",
            forks=args.ansible_forks or n,
            variables={
                "handover_edits": edits,
                "confirm_timeout": 300,
                "verify_filter": verify_filter,
                "verify_needles": [f"<name>{NC_GROUP}</name>"],
            },
        )
        row = Row("netconfd", n, "ansible", f"forks {args.ansible_forks or n}")
        rows.append(row)
        for rep in range(args.ansible_repeat or args.repeat):
            p0 = peer_cpu()
            wall, cpu, problem = run_ansible(exe, adir, args.ansible_timeout, keep)
            sample = checked(Sample(wall, cpu, peer_cpu() - p0, not problem, problem))
            row.samples.append(sample)
            report("ansible netconfd", n, rep, sample)
    finally:
        ctx.__exit__(None, None, None)


# --- main ----------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--serve-lab", metavar="SPEC", help=argparse.SUPPRESS)
    parser.add_argument(
        "--devices", default="200", help="lab sizes N (devices in the closed office), comma-separated"
    )
    parser.add_argument("--repeat", type=int, default=3, help="runs per scenario and tool (medians reported)")
    parser.add_argument("--ansible-repeat", type=int, default=0, help="runs of Ansible (default: --repeat)")
    parser.add_argument("--skip-ansible", action="store_true")
    parser.add_argument("--only", choices=("lab", "netconfd"))
    parser.add_argument("--netconfd", type=int, default=8, help="real netconfd instances for scenario C")
    parser.add_argument("--concurrency", type=int, default=64, help="Baton: devices at once (playbook: 4)")
    parser.add_argument(
        "--ansible-forks", type=int, default=0, help=f"default: N, at most {DEFAULT_MAX_FORKS}"
    )
    parser.add_argument(
        "--ansible-timeout", type=float, default=600, help="cap on one ansible-playbook run (s)"
    )
    parser.add_argument("--ansible-venv", type=Path, default=DEFAULT_WORKDIR / "venv-ansible")
    parser.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR / "handover")
    parser.add_argument("--ssh-port", type=int, default=38300)
    parser.add_argument("--snmp-port", type=int, default=36100)
    args = parser.parse_args()
    if args.serve_lab:
        return serve_lab(json.loads(args.serve_lab))

    from baton.logs import configure

    args.workdir.mkdir(parents=True, exist_ok=True)
    baton_log = (args.workdir / "baton.log").open("a")
    configure(level="info", stream=baton_log)  # as the daemon logs: JSON, every step at info
    if not become_subreaper():
        log("warning: not a child subreaper; Ansible's persistent connections' CPU is not counted")
    signal.signal(signal.SIGTERM, _raise_interrupt)
    load = os.getloadavg()
    log(f"load average before: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} on {os.cpu_count()} cores")
    rows: list[Row] = []
    try:
        if args.only in (None, "lab"):
            for n in (int(x) for x in args.devices.split(",")):
                bench_lab(n, args, rows)
        if args.only in (None, "netconfd"):
            bench_netconfd(args, rows)
    except KeyboardInterrupt:
        log("interrupted: stopping everything")
    finally:
        reap_orphans(set(), 5)
        baton_log.close()
    print(table(rows))
    load = os.getloadavg()
    print(f"\nload average after: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} on {os.cpu_count()} cores")
    return 0 if all(s.ok for r in rows for s in r.samples) and rows else 1


if __name__ == "__main__":
    sys.exit(main())
