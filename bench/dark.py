"""Dark devices: do probes of powered-off devices delay the polls of live ones, or a run?

    .venv/bin/python bench/dark.py [--live 1000] [--dark 0,1000,2000,4000] [--duration 60]
                                   [--live-netconf 20] [--baton-src DIR]
    .venv/bin/python bench/dark.py --handover 100 --dark 1000 [--layouts daemon,daemon-ungated] [--repeat 3]

Needs root (a network namespace) and snmpd. Everything runs in a fresh network namespace
`baton-dark-<pid>` (deleted at the end) whose only interface is its own loopback: an nftables
rule in its input hook drops every packet to 127.66.0.0/16, so a device there behaves as a
powered-off one: SNMP requests time out, TCP connects (NETCONF) time out, nothing is refused.
Inside it (this file re-run with `--inner`):

* `--live` devices answer SNMP v2c from K real snmpd agents (`--agents`, 250 device
  addresses each, 127.30.x.y), default SNMP settings (timeout 2 s, 1 retry);
* `--live-netconf` devices of a `baton lab` network (one office, its own process) answer SNMP
  and NETCONF (sessions kept between probes, as the monitor does);
* N dark devices (127.66.x.y) per `--dark` figure, each with SNMP v2c and NETCONF enabled
  (default timeouts: SNMP 2 s × 2 tries, NETCONF connect 10 s).

For each N, the daemon's `Monitor` (its own `SnmpPoller` with the daemon's defaults, its
NETCONF probes, poll interval `--interval` 10 s) runs for `--duration` s, and every probe is
recorded. Reported: live SNMP polls due (from each device's phase, as the scheduler lays them
out) until `--settle` s before the end, how many started within 1 s of their due time and
answered ("on time"), the lag of their start (p50/p99/max), live NETCONF probes (ok/failed and
why), dark SNMP polls and NETCONF probes made, the process's peak
thread count, CPU, RSS. "Live polls kept" = every due live SNMP poll on time and every live
NETCONF probe ok. `--baton-src DIR` runs the monitor from another tree (before/after).
Everything started is stopped at the end, also on failure or Ctrl-C.

`--handover N`: does a dark office delay a run? A `baton lab` of two offices of N devices (its
own process, `bench/handover.py --serve-lab`: every device a NETCONF target of
`playbooks/handover.yaml`) is handed over by the runner's real path (`plan_run` + `execute`, a
real SQLite journal, `--concurrency` devices at a time) while the daemon's `Monitor` probes the
lab (SNMP and NETCONF, poll interval `--interval`) and, in half the runs, also the first `--dark`
dark devices (SNMP v2c and NETCONF, connects time out after 10 s), started `--warmup` s before
the run so their probes are in flight. Runs with and without the dark office alternate, `--repeat`
times each, per layout (`--layouts`):

* `daemon`: as the daemon runs it: the monitor's probes behind the TCP gate, NETCONF sessions on
  the event loop (asyncssh: no thread per session), the journal's own thread;
* `daemon-ungated`: the same without the TCP gate (dark probes try SSH, and wait out the
  connect timeout on the event loop).

Before NETCONF sessions moved to the event loop, the layouts compared thread pools (one shared
pool as the control: a 326x slower journal write, no commit in 120 s); there are none left.

Timed in this process: every `<commit>` RPC (`NetconfClient.commit`, from the call to its
reply) and every `Journal.call` of a step intent or result (queueing included). A run still
going after `--run-cap` s is stopped and reported with what it timed.
Every run is checked on the lab's devices, and every device reset before the next.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import contextlib
import os
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
COMMUNITY = "bench-dark"
PER_AGENT = 250
DARK_NET = "127.66.0.0/16"
LAB_SNMP_PORT, LAB_SSH_PORT = 17161, 17830


def live_address(n: int) -> str:
    return f"127.30.{n // 250}.{n % 250 + 1}"


def dark_address(n: int) -> str:
    return f"127.66.{n // 250}.{n % 250 + 1}"


def percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


# --- outside: the namespace ----------------------------------------------------------------------


def outer(args: argparse.Namespace) -> int:
    for tool in ("ip", "nft", "snmpd"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} not installed")
    if os.geteuid() != 0:
        sys.exit("needs root (a network namespace with an nftables drop rule)")
    ns = f"baton-dark-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        subprocess.run(["ip", "-n", ns, "link", "set", "lo", "up"], check=True)
        rules = (
            "table inet baton_dark {\n  chain input {\n"
            "    type filter hook input priority 0; policy accept;\n"
            f"    ip daddr {DARK_NET} drop\n  }}\n}}\n"
        )
        subprocess.run(["ip", "netns", "exec", ns, "nft", "-f", "-"], input=rules, text=True, check=True)
        argv = [sys.executable, __file__, "--inner", *sys.argv[1:]]
        return subprocess.run(["ip", "netns", "exec", ns, *argv], check=False).returncode
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)


# --- inside ----------------------------------------------------------------------------------------


@contextlib.contextmanager
def snmpd_agents(count: int, devices: int, workdir: Path) -> Iterator[list[int]]:
    procs: list[subprocess.Popen[bytes]] = []
    ports: list[int] = []
    try:
        for k in range(min(count, (devices + PER_AGENT - 1) // PER_AGENT)):
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
                probe.bind((live_address(k * PER_AGENT), 0))
                port = probe.getsockname()[1]
            d = workdir / f"agent{k}"
            (d / "persist").mkdir(parents=True)
            (d / "snmpd.conf").write_text(
                f"rocommunity {COMMUNITY} 127.0.0.0/8\nsysName bench-{k}\ndontLogTCPWrappersConnects yes\n"
            )
            listen = [f"udp:{live_address(n)}:{port}" for n in range(devices) if n // PER_AGENT % count == k]
            argv = ["snmpd", "-C", "-c", str(d / "snmpd.conf"), "-f", "-Lo", "-m", "", "-I", "-smux", *listen]
            env = {**os.environ, "SNMP_PERSISTENT_DIR": str(d / "persist")}
            procs.append(
                subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            )
            ports.append(port)
        time.sleep(1.0)
        yield ports
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()


@contextlib.contextmanager
def lab_running(devices: int, workdir: Path) -> Iterator[Path | None]:
    """A `baton lab` of one office with `devices` devices; yields its inventory directory."""
    if devices <= 0:
        yield None
        return
    argv = [
        str(ROOT / ".venv" / "bin" / "baton"),
        "lab",
        "run",
        "--dir",
        str(workdir / "lab"),
        "--offices",
        "1",
        "--devices-per-office",
        str(devices),
        "--snmp-port",
        str(LAB_SNMP_PORT),
        "--ssh-port",
        str(LAB_SSH_PORT),
    ]
    log = (workdir / "lab.log").open("w")
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
    try:
        inventory = workdir / "lab" / "inventory"
        deadline = time.monotonic() + 120
        while not (workdir / "lab.log").read_text().count("baton lab:"):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"lab did not start: {(workdir / 'lab.log').read_text()[-2000:]}")
            time.sleep(0.2)
        yield inventory
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def build_inventory(args: argparse.Namespace, ports: list[int], lab_inventory: Path | None, dark: int) -> Any:
    from baton.core.model import Device, Inventory, Office, SecretRef, SnmpSettings
    from baton.inventory import load_inventory

    offices: dict[str, Office] = {}
    devices: dict[str, Device] = {}
    host_key = None
    key_ref = SecretRef("env", "NONE")
    if lab_inventory is not None:
        lab = load_inventory(lab_inventory)
        offices.update(lab.offices)
        for device in lab.devices.values():
            devices[device.id] = replace(device, netconf=replace(device.netconf, enabled=True))
            host_key = host_key or device.host_key
            key_ref = device.netconf.private_key or key_ref
    for k in range(max(1, args.live // 20)):
        offices[f"live-{k:03d}"] = Office(f"live-{k:03d}", f"Live {k}", "bench")
    community = SecretRef("env", "BENCH_COMMUNITY")
    for n in range(args.live):
        port = ports[n // PER_AGENT % len(ports)]
        devices[f"live{n:05d}"] = Device(
            f"live{n:05d}",
            f"live-{n // 20:03d}",
            "router",
            live_address(n),
            critical=True,
            snmp=SnmpSettings(community=community, port=port),
        )
    host_key = host_key or "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIMDiP6I9JyxJTypCB1No3v/A6ody1uSD4Li9QbMqiIP8"
    add_dark(offices, devices, dark, host_key, key_ref)
    return Inventory(offices=offices, devices=devices)


def add_dark(offices: dict[str, Any], devices: dict[str, Any], dark: int, host_key: str, key: Any) -> None:
    """`dark` powered-off devices (SNMP v2c + NETCONF, never answering) in offices of 20."""
    from baton.core.model import Device, NetconfSettings, Office, SecretRef, SnmpSettings

    for k in range(max(1, (dark + 19) // 20)):
        offices[f"dark-{k:03d}"] = Office(f"dark-{k:03d}", f"Dark {k}", "bench")
    netconf = NetconfSettings(enabled=True, port=830, username="baton", private_key=key)
    for n in range(dark):
        devices[f"dark{n:05d}"] = Device(
            f"dark{n:05d}",
            f"dark-{n // 20:03d}",
            "router",
            dark_address(n),
            critical=True,
            host_key=host_key,
            snmp=SnmpSettings(community=SecretRef("env", "BENCH_COMMUNITY"), port=161),
            netconf=netconf,
        )


async def run_scenario(
    args: argparse.Namespace, inventory: Any, lab_inventory: Path | None
) -> dict[str, Any]:
    from baton.adapters.snmp import SnmpPoller
    from baton.core.model import Policy
    from baton.metrics import Metrics
    from baton.monitor import Monitor
    from baton.secrets import resolve

    def resolver(ref: Any) -> str:
        if ref.name == "BENCH_COMMUNITY":
            return COMMUNITY
        return resolve(ref, base_dir=lab_inventory)

    interval = args.interval
    metrics = Metrics()
    poller = SnmpPoller(resolver, metrics=metrics, clock=time.monotonic)  # the daemon's defaults
    snmp: dict[str, list[tuple[float, bool, float]]] = {d: [] for d in inventory.devices}  # (at, ok, s)
    netconf: dict[str, list[tuple[float, bool, str]]] = {d: [] for d in inventory.devices}
    original_poll = poller.poll

    async def poll(device: Any) -> Any:
        reading = await original_poll(device)
        snmp[device.id].append((reading.at, reading.ok, reading.latency_s or 0.0))
        return reading

    poller.poll = poll  # type: ignore[method-assign]
    monitor = Monitor(
        inventory,
        Policy(poll_interval_s=interval, hold_down_s=max(30.0, 3 * interval)),
        resolve=resolver,
        metrics=metrics,
        on_observed=lambda event: None,
        poller=poller,  # the daemon's own, with a monotonic clock to match due times
    )
    fold = monitor._fold

    def record(obs: Any) -> None:  # every observation; NETCONF ones recorded when they land
        if obs.protocol == "netconf":
            netconf[obs.device].append((time.monotonic(), obs.ok, obs.reason))
        fold(obs)

    monitor._fold = record  # type: ignore[method-assign]
    threads_peak = threading.active_count()
    cpu0, wall0 = time.process_time(), time.monotonic()
    await monitor.start()
    scheduler = monitor._scheduler
    assert scheduler is not None
    first_due = {device: due for due, device in scheduler._heap}
    start = time.monotonic()
    end = start + args.duration
    while time.monotonic() < end:
        await asyncio.sleep(0.5)
        threads_peak = max(threads_peak, threading.active_count())
    await monitor.stop()
    poller.close()
    cpu, wall = time.process_time() - cpu0, time.monotonic() - wall0

    cutoff = end - args.settle
    due = on_time = late_polls = failed_live = 0
    lags: list[float] = []
    for device in inventory.devices.values():
        if not device.id.startswith("live"):
            continue
        starts = sorted((at, ok) for at, ok, _ in snmp[device.id])
        times = [at for at, _ in starts]
        at = first_due[device.id]
        while at < cutoff:
            due += 1
            i = bisect.bisect_left(times, at - 0.001)
            if i < len(times):
                lag = times[i] - at
                lags.append(lag)
                if lag < 1.0 and starts[i][1]:
                    on_time += 1
                elif lag >= 1.0:
                    late_polls += 1
                else:
                    failed_live += 1
            else:
                late_polls += 1
            at += interval
    nc_live = [
        (started, ok, reason)
        for device_id, rows in netconf.items()
        if not device_id.startswith("dark")
        for started, ok, reason in rows
        if started < cutoff
    ]
    nc_fail = [reason for _, ok, reason in nc_live if not ok]
    dark_snmp = sum(len(rows) for d, rows in snmp.items() if d.startswith("dark"))
    dark_nc = sum(len(rows) for d, rows in netconf.items() if d.startswith("dark"))
    return {
        "due": due,
        "on_time": on_time,
        "late": late_polls,
        "failed": failed_live,
        "lag_p50_ms": 1000 * percentile(lags, 0.5),
        "lag_p99_ms": 1000 * percentile(lags, 0.99),
        "lag_max_ms": 1000 * max(lags, default=0.0),
        "netconf_live": len(nc_live),
        "netconf_live_failed": len(nc_fail),
        "netconf_fail_reasons": sorted({r[:90] for r in nc_fail})[:3],
        "dark_snmp_polls": dark_snmp,
        "dark_netconf_probes": dark_nc,
        "threads_peak": threads_peak,
        "cpu_s": cpu,
        "wall_s": wall,
        "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


# --- a handover while an office is dark -------------------------------------------------------------

LAYOUTS = ("daemon", "daemon-ungated")


class Timings:
    """What the patched commit and the timed journal record while `on` is set."""

    def __init__(self) -> None:
        self.on = False
        self.commits: list[float] = []  # the office-wide confirmed commits
        self.confirms: list[float] = []  # the confirming commits
        self.journal: list[float] = []  # step_intent / step_result, queueing included

    def clear(self) -> None:
        self.commits, self.confirms, self.journal = [], [], []


TIMINGS = Timings()


def patch_commit() -> None:
    """Time every NetconfClient.commit in this process (queueing for a worker included)."""
    from baton.adapters.netconf import NetconfClient

    original = NetconfClient.commit

    async def timed(self: Any, confirmed: bool = False, *args: Any, **kwargs: Any) -> None:
        started = time.perf_counter()
        try:
            await original(self, confirmed, *args, **kwargs)
        finally:
            if TIMINGS.on:
                (TIMINGS.commits if confirmed else TIMINGS.confirms).append(time.perf_counter() - started)

    NetconfClient.commit = timed  # type: ignore[method-assign]


def timed_journal(path: Path) -> Any:
    from baton.journal import Journal

    class TimedJournal(Journal):
        async def call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return await super().call(fn, *args, **kwargs)
            finally:
                if TIMINGS.on and getattr(fn, "__name__", "") in ("step_intent", "step_result"):
                    TIMINGS.journal.append(time.perf_counter() - started)

    return TimedJournal.open(path)


def dark_inventory(lab_inventory: Path, dark: int) -> Any:
    """The lab's inventory plus `dark` powered-off devices (SNMP v2c + NETCONF) in offices of 20."""
    from baton.core.model import Inventory
    from baton.inventory import load_inventory

    lab = load_inventory(lab_inventory)
    offices, devices = dict(lab.offices), dict(lab.devices)
    some = next(d for d in lab.devices.values() if d.netconf.enabled)
    add_dark(offices, devices, dark, some.host_key, some.netconf.private_key)
    return Inventory(offices=offices, devices=devices)


async def _handover_sample(
    args: argparse.Namespace,
    layout: str,
    inventory: Any,
    lab_inventory: Path,
    info: dict[str, Any],
    journal_path: Path,
) -> dict[str, Any]:
    from baton.core.model import Policy, RunKind
    from baton.metrics import Metrics
    from baton.monitor import Monitor
    from baton.playbook.plan import RunInfo, plan_run
    from baton.playbook.runner import execute
    from baton.playbook.schema import load_playbook
    from baton.playbook.steps import Connectors
    from baton.secrets import resolve

    def resolver(ref: Any) -> str:
        return COMMUNITY if ref.name == "BENCH_COMMUNITY" else resolve(ref, base_dir=lab_inventory)

    async def no_gate(device: Any) -> str | None:
        return None  # probe for real: SSH waits out the connect timeout

    monitor = Monitor(
        inventory,
        Policy(poll_interval_s=args.interval, hold_down_s=max(30.0, 3 * args.interval)),
        resolve=resolver,
        metrics=Metrics(),
        on_observed=lambda event: None,
        netconf_gate=None if layout == "daemon" else no_gate,  # None: the TCP gate
    )
    journal = timed_journal(journal_path)
    result: dict[str, Any] = {"layout": layout}
    try:
        await monitor.start()
        await asyncio.sleep(args.warmup)
        playbook = load_playbook(ROOT / "playbooks" / "handover.yaml")
        plan = plan_run(
            playbook,
            inventory,
            info["office"],
            info["alternate"],
            RunInfo(f"bench-{layout}-{time.monotonic_ns()}", RunKind.HANDOVER, "bench", "bench"),
        )
        TIMINGS.clear()
        TIMINGS.on = True
        started = time.perf_counter()
        run = asyncio.ensure_future(
            execute(
                plan,
                journal=journal,
                connectors=Connectors(resolve=resolver),
                concurrency=args.concurrency,
                confirm_window_s=playbook.window_for(300.0),
                run_timeout_s=240.0,
            )
        )
        done, _ = await asyncio.wait([run], timeout=args.run_cap)
        result["wall_s"] = time.perf_counter() - started
        TIMINGS.on = False
        if run in done:
            outcome = run.result()
            result["ok"] = outcome.ok
            result["detail"] = "" if outcome.ok else f"{outcome.result}: {outcome.detail}"[:200]
        else:
            run.cancel()
            await asyncio.gather(run, return_exceptions=True)
            result["ok"] = False
            result["detail"] = f"did not finish within {args.run_cap:g} s (stopped)"
        result["threads"] = threading.active_count()
    finally:
        TIMINGS.on = False
        await monitor.stop()
        journal.close()
    result["commits"] = list(TIMINGS.commits)
    result["confirms"] = list(TIMINGS.confirms)
    result["journal"] = list(TIMINGS.journal)
    return result


def _ms(values: list[float], q: float = 0.5) -> str:
    return f"{1000 * percentile(values, q):.1f}" if values else "–"


def handover_bench(args: argparse.Namespace) -> int:
    sys.path.insert(0, str(ROOT / "bench"))
    sys.path.insert(1, str(ROOT))
    import logging

    from handover import LabProcess  # bench/handover.py

    from baton import logs

    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    patch_commit()
    dark = int(args.dark.split(",")[-1])
    layouts = [x for x in args.layouts.split(",") if x]
    unknown = sorted(set(layouts) - set(LAYOUTS))
    if unknown:
        sys.exit(f"unknown layout(s) {', '.join(unknown)}; known: {', '.join(LAYOUTS)}")
    with open(os.devnull, "w") as devnull, tempfile.TemporaryDirectory(prefix="baton-bench-darkrun-") as tmp:
        logs.configure(level="info", stream=devnull)
        logging.getLogger().setLevel(logging.WARNING)
        workdir = Path(tmp)
        lab = LabProcess(workdir, args.handover, LAB_SSH_PORT, LAB_SNMP_PORT)
        try:
            info = lab.info
            lab_inventory = Path(info["inventory"])
            print(
                f"lab: 2 offices x {args.handover} devices (pid {lab.pid}); dark devices {dark}; "
                f"concurrency {args.concurrency}; poll {args.interval:g} s; warm-up {args.warmup:g} s; "
                f"load {' '.join(Path('/proc/loadavg').read_text().split()[:3])}",
                flush=True,
            )
            rows: dict[tuple[str, int], list[dict[str, Any]]] = {}
            for rep in range(args.repeat):
                for layout in layouts:
                    order = (0, dark) if rep % 2 == 0 else (dark, 0)  # alternate which goes first
                    for n in order:
                        inventory = dark_inventory(lab_inventory, n)
                        r = asyncio.run(
                            _handover_sample(
                                args,
                                layout,
                                inventory,
                                lab_inventory,
                                info,
                                workdir / f"j-{layout}-{n}-{rep}.sqlite3",
                            )
                        )
                        check = lab.ask("check")
                        if r["ok"] and check["bad_count"]:
                            r["ok"], r["detail"] = False, f"check: {check['bad'][:2]}"
                        lab.ask("reset")
                        rows.setdefault((layout, n), []).append(r)
                        print(
                            f"{layout} dark={n} run {rep + 1}: "
                            f"{'ok' if r['ok'] else 'FAILED ' + r['detail']}, wall {r['wall_s']:.2f} s; "
                            f"commit RPC p50 {_ms(r['commits'])} ms (max {_ms(r['commits'], 1.0)}, "
                            f"n={len(r['commits'])}); confirm p50 {_ms(r['confirms'])} ms; "
                            f"journal write p50 {_ms(r['journal'])} ms (p99 {_ms(r['journal'], 0.99)}, "
                            f"max {_ms(r['journal'], 1.0)}, n={len(r['journal'])}); threads {r['threads']}; "
                            f"load {' '.join(Path('/proc/loadavg').read_text().split()[:3])}",
                            flush=True,
                        )
            print("summary (medians over every sample of the runs; ratio = with the dark office / without):")
            for layout in layouts:
                without, with_dark = rows[(layout, 0)], rows[(layout, dark)]

                def pooled(runs: list[dict[str, Any]], key: str) -> list[float]:
                    return [v for r in runs for v in r[key]]

                parts = []
                for key, name in (
                    ("commits", "commit RPC"),
                    ("journal", "journal write"),
                    ("confirms", "confirm"),
                ):
                    a, b = pooled(without, key), pooled(with_dark, key)
                    if a and b:
                        ratio = percentile(b, 0.5) / percentile(a, 0.5)
                        parts.append(f"{name} {_ms(a)} -> {_ms(b)} ms ({ratio:.2f}x)")
                    else:
                        parts.append(f"{name} {_ms(a)} -> {_ms(b)} ms (n={len(a)}/{len(b)})")
                walls = (
                    statistics.median(r["wall_s"] for r in without),
                    statistics.median(r["wall_s"] for r in with_dark),
                )
                ok = (sum(r["ok"] for r in without), sum(r["ok"] for r in with_dark))
                print(
                    f"  {layout}: {'; '.join(parts)}; run wall {walls[0]:.2f} -> {walls[1]:.2f} s "
                    f"({walls[1] / walls[0]:.2f}x); runs ok {ok[0]}/{len(without)} -> "
                    f"{ok[1]}/{len(with_dark)}",
                    flush=True,
                )
        finally:
            lab.close()
    return 0


def inner(args: argparse.Namespace) -> int:
    if args.handover:
        return handover_bench(args)
    sys.path.insert(0, str(args.baton_src.resolve() / "daemon"))
    import logging

    from baton import logs

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # as a unit with LimitNOFILE= would
    with open(os.devnull, "w") as devnull, tempfile.TemporaryDirectory(prefix="baton-bench-dark-") as tmp:
        logs.configure(level="info", stream=devnull)
        logging.getLogger().setLevel(logging.WARNING)
        workdir = Path(tmp)
        with (
            snmpd_agents(args.agents, args.live, workdir) as ports,
            lab_running(args.live_netconf, workdir) as lab_inventory,
        ):
            print(
                f"monitor from {args.baton_src.resolve()}; "
                f"{args.live} live SNMP devices ({len(ports)} snmpd), "
                f"{args.live_netconf} live lab devices (SNMP + NETCONF), interval {args.interval:g} s, "
                f"{args.duration:g} s per run; RLIMIT_NOFILE {hard} (was {soft}); "
                f"load {' '.join(Path('/proc/loadavg').read_text().split()[:3])}",
                flush=True,
            )
            results = []
            for dark in [int(x) for x in args.dark.split(",")]:
                for rep in range(args.repeat):
                    inventory = build_inventory(args, ports, lab_inventory, dark)
                    r = asyncio.run(run_scenario(args, inventory, lab_inventory))
                    kept = r["on_time"] == r["due"] and r["netconf_live_failed"] == 0
                    results.append((dark, r, kept))
                    print(
                        f"dark={dark} run {rep + 1}: live SNMP on time {r['on_time']}/{r['due']} "
                        f"(late {r['late']}, failed {r['failed']}), start lag p50 {r['lag_p50_ms']:.1f} ms "
                        f"p99 {r['lag_p99_ms']:.1f} ms max {r['lag_max_ms']:.0f} ms; "
                        f"live NETCONF {r['netconf_live'] - r['netconf_live_failed']}/{r['netconf_live']} ok"
                        f"{' ' + str(r['netconf_fail_reasons']) if r['netconf_fail_reasons'] else ''}; "
                        f"dark: {r['dark_snmp_polls']} SNMP polls, "
                        f"{r['dark_netconf_probes']} NETCONF probes; threads peak {r['threads_peak']}, "
                        f"CPU {r['cpu_s']:.1f} s / {r['wall_s']:.0f} s, max RSS {r['rss_mb']:.0f} MB; "
                        f"live polls {'KEPT' if kept else 'NOT kept'}",
                        flush=True,
                    )
            by_dark: dict[int, list[bool]] = {}
            for dark, _, kept in results:
                by_dark.setdefault(dark, []).append(kept)
            print(
                "summary: "
                + ", ".join(f"dark={d}: kept {sum(k)}/{len(k)}" for d, k in by_dark.items())
                + f"; median CPU {statistics.median(r['cpu_s'] for _, r, _ in results):.1f} s"
            )
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--live", type=int, default=1000)
    parser.add_argument("--live-netconf", type=int, default=20)
    parser.add_argument("--dark", default="0,1000,2000,4000", help="dark device counts, one run each")
    parser.add_argument("--agents", type=int, default=4)
    parser.add_argument("--interval", type=float, default=10.0)
    parser.add_argument("--duration", type=float, default=60.0)
    parser.add_argument(
        "--settle", type=float, default=5.0, help="polls due this close to the end are not judged"
    )
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--baton-src", type=Path, default=ROOT)
    parser.add_argument("--handover", type=int, default=0, help="N: a handover of N lab devices (see above)")
    parser.add_argument("--layouts", default="daemon", help=f"with --handover: of {','.join(LAYOUTS)}")
    parser.add_argument("--concurrency", type=int, default=64, help="with --handover: devices at once")
    parser.add_argument("--warmup", type=float, default=20.0, help="with --handover: monitor first")
    parser.add_argument("--run-cap", type=float, default=120.0, help="with --handover: stop a run after")
    parser.add_argument("--inner", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    return inner(args) if args.inner else outer(args)


if __name__ == "__main__":
    sys.exit(main())
