"""SNMP poll throughput: Baton's SnmpPoller/PollScheduler (v2c, v3 authPriv, or half and half)
vs pysnmp, third-party v3 clients, net-snmp's C tools and prometheus-snmp-exporter.

Starts K snmpd agents on 127.0.0.2.. (free UDP ports; a v2c community and four v3 authPriv
users), simulates N devices as N distinct targets spread over those agents, and for `--duration`
seconds polls every device once per `--interval` (sysUpTime + ifOperStatus.1 + sysName in one
GET, as a device with one critical interface). `--version 2c|3|mixed` (mixed: every other
device is v3), `--v3-user`. Reports device-polls/s, client CPU per poll (process CPU / polls,
target building excluded and reported separately), RSS, the agents' CPU, poll latency p50/p99,
and whether the schedule was kept: every poll due (each device's phase, computed as the
scheduler does) until 1 s before the stop must have started within 1 s of its due time and
ended ok, with no failure and no overrun (a device's turn skipped because its previous poll was
still running).

`--impl fast` (default) is both fast paths (baton.adapters.snmp_fast, snmp_v3); `--impl before`
is v2c fast and v3 through pysnmp; `--impl pysnmp` is everything through pysnmp. `--workers W`:
W processes each poll N/W devices. `--repeat R` runs the Baton part R times (same agents) and
prints the median. Side by side, CPU per request: `--per-poll N` (N polls outside the
scheduler, per impl), `--candidates PYTHON|auto` (gufo-snmp, ezsnmp, netsnmp-cffi through
bench/v3_candidates.py in their own venv), `--netsnmp-cli N` (snmpget processes, and the C
engine's marginal cost from one snmpwalk), `--exporter` (prometheus-snmp-exporter, same OIDs,
v2c and/or v3). `--skip-schedule` skips the scheduled run. Everything started is stopped.
Logging is cut to warnings for every impl.

    .venv/bin/python bench/poll.py --version mixed --per-poll 3000 --repeat 3 --skip-schedule \
        --netsnmp-cli 200 --exporter --exporter-scrapes 2000 --candidates auto
    .venv/bin/python bench/poll.py --devices 10000 --duration 30 --repeat 3 --version mixed
    .venv/bin/python bench/poll.py --devices 10000 --duration 30 --repeat 1 --version mixed --impl before
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import json
import logging
import multiprocessing as mp
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import structlog

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "daemon"))

from baton.adapters.snmp import PollScheduler, SnmpPoller, SnmpReading, phase_offset
from baton.core.model import Device, SecretRef, SnmpSettings, frozen_map

COMMUNITY = "public"
AUTH_KEY = "authpass123"
PRIV_KEY = "privpass123"
SECRETS = {"C": COMMUNITY, "A": AUTH_KEY, "P": PRIV_KEY}
# v3 authPriv users every bench agent has: (user, auth, priv) in Baton's spelling
V3_USERS = {
    "SHA/AES": ("bench-sha-aes", "SHA", "AES"),
    "SHA256/AES": ("bench-sha256-aes", "SHA256", "AES"),
    "SHA256/AES256": ("bench-sha256-aes256", "SHA256", "AES256"),
    "SHA512/AES256": ("bench-sha512-aes256", "SHA512", "AES256"),
}
NETSNMP = {"SHA": "SHA", "SHA256": "SHA-256", "SHA512": "SHA-512", "AES": "AES", "AES256": "AES-256"}
GET_OIDS = ("1.3.6.1.2.1.1.3.0", "1.3.6.1.2.1.2.2.1.8.1", "1.3.6.1.2.1.1.5.0")
TICK = os.sysconf("SC_CLK_TCK")


def free_udp_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def free_tcp_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def proc_cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def rss_mb(pid: int | str = "self") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def start_agents(workdir: Path, count: int) -> list[tuple[subprocess.Popen[bytes], str, int]]:
    agents = []
    for i in range(count):
        host = f"127.0.0.{2 + i}"
        port = free_udp_port(host)
        d = workdir / f"agent{i}"
        (d / "persist").mkdir(parents=True)
        users = "".join(
            f'createUser {user} {NETSNMP[auth]} "{AUTH_KEY}" {NETSNMP[priv]} "{PRIV_KEY}"\n'
            f"rouser {user} priv\n"
            for user, auth, priv in V3_USERS.values()
        )
        (d / "snmpd.conf").write_text(
            f"agentAddress udp:{host}:{port}\nsysName bench-{i}\nrocommunity {COMMUNITY} 127.0.0.0/8\n"
            "override 1.3.6.1.2.1.2.2.1.8.1 integer 1\ndontLogTCPWrappersConnects yes\n" + users
        )
        proc = subprocess.Popen(
            ["snmpd", "-C", "-c", str(d / "snmpd.conf"), "-f", "-Lo", "-m", "", "-I", "-smux"],
            env={**os.environ, "SNMP_PERSISTENT_DIR": str(d / "persist")},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        agents.append((proc, host, port))
    time.sleep(0.5)
    return agents


def is_v3(n: int, version: str) -> bool:
    """Device n polls over v3 when --version 3, and every other device when --version mixed."""
    return version == "3" or (version == "mixed" and n % 2 == 1)


def devices_for(
    agents: list[tuple[str, int]], first: int, count: int, version: str = "2c", v3_user: str = "SHA/AES"
) -> list[Device]:
    out = []
    user, auth, priv = V3_USERS[v3_user]
    for n in range(first, first + count):
        host, port = agents[n % len(agents)]
        common: dict[str, Any] = {
            "port": port,
            "timeout_s": 2.0,
            "retries": 1,
            "critical_interfaces": (1,),
            "oids": frozen_map({"sys_name": "1.3.6.1.2.1.1.5.0"}),
        }
        if is_v3(n, version):
            settings = SnmpSettings(
                version="3",
                user=user,
                auth_protocol=auth,  # type: ignore[arg-type]
                auth_key=SecretRef("env", "A"),
                priv_protocol=priv,  # type: ignore[arg-type]
                priv_key=SecretRef("env", "P"),
                **common,
            )
        else:
            settings = SnmpSettings(community=SecretRef("env", "C"), **common)
        out.append(Device(f"co-{n // 20}-dev{n % 20}", f"co-{n // 20}", "router", host, snmp=settings))
    return out


IMPLS = {  # --impl -> (fast_v2c, fast_v3)
    "fast": (True, True),  # both fast paths (this code)
    "before": (True, False),  # v2c fast path, v3 through pysnmp (the code before the v3 fast path)
    "pysnmp": (False, False),  # everything through pysnmp
}


async def run_worker(
    devices: list[Device], duration_s: float, interval_s: float, impl: str
) -> dict[str, Any]:
    # readings stamped with the scheduler's clock, to match them with their due times
    fast_v2c, fast_v3 = IMPLS[impl]
    poller = SnmpPoller(
        lambda ref: SECRETS[ref.name],
        max_concurrency=1000,
        fast_v2c=fast_v2c,
        fast_v3=fast_v3,
        clock=time.monotonic,
    )
    cpu0 = time.process_time()
    # Build every target once (what a daemon does at start), 200 at a time.
    for i in range(0, len(devices), 200):
        await asyncio.gather(*(poller.poll(d) for d in devices[i : i + 200]))
    build_cpu = time.process_time() - cpu0
    counts = {"ok": 0, "fail": 0}
    latencies: list[float] = []
    ok_started: dict[str, list[float]] = {d.id: [] for d in devices}

    def deliver(reading: SnmpReading) -> None:
        counts["ok" if reading.ok else "fail"] += 1
        latencies.append(reading.latency_s or 0.0)
        if reading.ok:
            ok_started[reading.device].append(reading.at)

    grid_at: list[float] = []

    def clock() -> float:  # time.monotonic, remembering when the scheduler laid out the phases
        now = time.monotonic()
        if not grid_at:
            grid_at.append(now)
        return now

    scheduler = PollScheduler(poller, devices, interval_s, deliver=deliver, clock=clock)
    cpu1, wall1 = time.process_time(), time.perf_counter()
    scheduler.start()
    await asyncio.sleep(duration_s)
    t1 = time.monotonic()
    await scheduler.stop()
    cpu, wall = time.process_time() - cpu1, time.perf_counter() - wall1
    # Every poll due (each device's phase, computed as the scheduler does) until 1 s before the
    # stop must have started within 1 s of its due time and ended ok: "on time".
    t0 = grid_at[0]
    grid = t0 - t0 % interval_s
    due = on_time = 0
    for device in devices:
        first = grid + phase_offset(device.id, interval_s)
        at = first if first >= t0 else first + interval_s
        started = sorted(ok_started[device.id])
        while at < t1 - 1.0:
            due += 1
            i = bisect.bisect_left(started, at - 0.001)
            on_time += i < len(started) and started[i] < at + 1.0
            at += interval_s
    poller.close()
    return {
        "polls": counts["ok"] + counts["fail"],
        "fail": counts["fail"],
        "cpu_s": cpu,
        "wall_s": wall,
        "build_cpu_s": build_cpu,
        "rss_mb": rss_mb(),
        "overruns": scheduler.overruns,
        "latencies": latencies,
        "due": due,
        "on_time": on_time,
    }


def worker_main(
    args: tuple[list[tuple[str, int]], int, int, float, float, str, str, str],
    out: mp.Queue[dict[str, Any]],
) -> None:
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    agents, first, count, duration_s, interval_s, impl, version, v3_user = args
    devices = devices_for(agents, first, count, version, v3_user)
    out.put(asyncio.run(run_worker(devices, duration_s, interval_s, impl)))


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def bench_baton(
    agents: list[tuple[str, int]],
    n: int,
    workers: int,
    duration_s: float,
    interval_s: float,
    impl: str,
    version: str = "2c",
    v3_user: str = "SHA/AES",
) -> dict[str, float]:
    ctx = mp.get_context("fork")
    queue: mp.Queue[dict[str, Any]] = ctx.Queue()
    share = n // workers
    load0 = loadavg()
    procs = [
        ctx.Process(
            target=worker_main,
            args=((agents, w * share, share, duration_s, interval_s, impl, version, v3_user), queue),
        )
        for w in range(workers)
    ]
    for p in procs:
        p.start()
    results = [queue.get(timeout=duration_s + 900) for _ in procs]
    for p in procs:
        p.join(timeout=30)

    def total(key: str) -> float:
        return sum(float(r[key]) for r in results)

    polls, fail, cpu, overruns = total("polls"), total("fail"), total("cpu_s"), total("overruns")
    wall = max(float(r["wall_s"]) for r in results)
    due = total("due")
    ok = polls - fail
    lat = sorted(x for r in results for x in r["latencies"])
    p50 = 1000 * lat[len(lat) // 2] if lat else 0.0
    p99 = 1000 * lat[min(len(lat) - 1, int(len(lat) * 0.99))] if lat else 0.0
    on_time = total("on_time")
    met = on_time == due and fail == 0 and overruns == 0
    cpu_ms = 1000 * cpu / max(polls, 1)
    what = {"2c": "v2c", "3": f"v3 {v3_user}", "mixed": f"half v2c, half v3 {v3_user}"}[version]
    print(
        f"baton[{impl}] {what} N={n} workers={workers} interval={interval_s}s: "
        f"{polls / wall:.0f} device-polls/s "
        f"(target {n / interval_s:.0f}), CPU/poll {cpu_ms:.3f} ms, "
        f"ok {ok:.0f}, on time {on_time:.0f}/{due:.0f} due, "
        f"failed {fail:.0f}, overruns {overruns:.0f}, "
        f"latency p50 {p50:.1f} ms p99 {p99:.1f} ms, "
        f"RSS {' + '.join(str(round(float(r['rss_mb']))) for r in results)} MB, "
        f"target build {1000 * total('build_cpu_s') / n:.2f} ms CPU/device, "
        f"load {load0} -> {loadavg()}; {n}/{interval_s:g}s target {'MET' if met else 'NOT met'}"
    )
    return {"cpu_ms": cpu_ms, "rate": polls / wall, "met": float(met)}


def exporter_module(version: str, v3_user: str) -> str:
    """snmp_exporter 0.21 module `baton` for the same three numeric OIDs (no MIBs)."""
    if version == "3":
        user, auth, priv = V3_USERS[v3_user]
        auth_yaml = (
            f"  version: 3\n  auth: {{username: {user}, security_level: authPriv, password: {AUTH_KEY},"
            f" auth_protocol: {auth}, priv_protocol: {priv}, priv_password: {PRIV_KEY}}}\n"
        )
    else:
        auth_yaml = f"  version: 2\n  auth: {{community: {COMMUNITY}}}\n"
    return (
        "baton:\n" + auth_yaml + "  timeout: 2s\n  retries: 1\n"
        "  get: [1.3.6.1.2.1.1.3.0, 1.3.6.1.2.1.2.2.1.8.1, 1.3.6.1.2.1.1.5.0]\n"
        "  metrics:\n"
        "    - {name: sysUpTime, oid: 1.3.6.1.2.1.1.3, type: gauge}\n"
        "    - {name: sysName, oid: 1.3.6.1.2.1.1.5, type: DisplayString}\n"
        "    - name: ifOperStatus\n      oid: 1.3.6.1.2.1.2.2.1.8\n      type: gauge\n"
        "      indexes: [{labelname: ifIndex, type: gauge}]\n"
    )


def bench_exporter(
    workdir: Path, agents: list[tuple[str, int]], scrapes: int, version: str = "2c", v3_user: str = "SHA/AES"
) -> dict[str, float] | None:
    binary = shutil.which("prometheus-snmp-exporter")
    if binary is None:
        print("exporter: prometheus-snmp-exporter not installed, skipped")
        return None
    config = workdir / f"snmp-{version}.yml"
    config.write_text(exporter_module(version, v3_user))
    port = free_tcp_port()
    proc = subprocess.Popen(
        [binary, f"--config.file={config}", f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        for _ in range(50):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=1).read()
                break
            except OSError:
                time.sleep(0.1)
        agent_cpu0 = sum(proc_cpu_s(p) for p in agent_pids)
        cpu0, wall0, ok = proc_cpu_s(proc.pid), time.perf_counter(), 0

        def scrape(i: int) -> bool:
            host, aport = agents[i % len(agents)]
            url = f"http://127.0.0.1:{port}/snmp?module=baton&target={host}:{aport}"
            body = urllib.request.urlopen(url, timeout=10).read().decode()
            return "ifOperStatus{" in body

        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(16) as pool:
            ok = sum(pool.map(scrape, range(scrapes)))
        wall = time.perf_counter() - wall0
        cpu = proc_cpu_s(proc.pid) - cpu0
        agent_cpu = sum(proc_cpu_s(p) for p in agent_pids) - agent_cpu0
        what = "v2c" if version == "2c" else f"v3 {v3_user}"
        print(
            f"exporter {what} {scrapes} device-scrapes ({ok} ok, 16 in parallel): {scrapes / wall:.0f}/s, "
            f"exporter CPU/scrape {1000 * cpu / scrapes:.2f} ms, agents {1000 * agent_cpu / scrapes:.2f} ms, "
            f"RSS {rss_mb(proc.pid):.0f} MB"
        )
        return {"cpu_ms": 1000 * cpu / scrapes, "ok": ok}
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def netsnmp_argv(host: str, port: int, version: str, v3_user: str) -> list[str]:
    if version == "3":
        user, auth, priv = V3_USERS[v3_user]
        auth_args = ["-v3", "-l", "authPriv", "-u", user, "-a", NETSNMP[auth], "-A", AUTH_KEY]
        auth_args += ["-x", NETSNMP[priv], "-X", PRIV_KEY]
    else:
        auth_args = ["-v2c", "-c", COMMUNITY]
    return ["snmpget", "-m", "", "-On", "-t", "2", "-r", "1", *auth_args, f"{host}:{port}", *GET_OIDS]


def bench_netsnmp_cli(
    agents: list[tuple[str, int]], count: int, version: str, v3_user: str
) -> dict[str, float]:
    """net-snmp's C `snmpget`, one process per request (what a script or Nagios check does):
    CPU of the children (getrusage) per request; v3 includes its engine discovery each time."""
    import resource

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    wall0 = time.perf_counter()
    ok = 0
    for i in range(count):
        host, port = agents[i % len(agents)]
        result = subprocess.run(netsnmp_argv(host, port, version, v3_user), capture_output=True, check=False)
        ok += result.returncode == 0 and result.stdout.count(b"\n") == len(GET_OIDS)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    what = "v2c" if version == "2c" else f"v3 {v3_user}"
    print(
        f"net-snmp snmpget {what}: {count} requests ({ok} ok), one process each: "
        f"{1000 * cpu / count:.2f} ms CPU/request, {1000 * (time.perf_counter() - wall0) / count:.1f} ms wall"
    )
    # The C engine's marginal cost per request: one snmpwalk process sends one GETNEXT per row
    # (one varbind each); (its CPU - one snmpget's) / rows.
    host, port = agents[0]
    argv = netsnmp_argv(host, port, version, v3_user)[: -len(GET_OIDS)]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    walk = subprocess.run(["snmpwalk", *argv[1:], "1.3.6.1"], capture_output=True, check=False)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    rows = walk.stdout.count(b"\n")
    walk_cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    marginal = 1000 * max(0.0, walk_cpu - cpu / count) / max(rows, 1)
    print(f"net-snmp snmpwalk {what}: {rows} GETNEXTs in one process, {marginal:.3f} ms CPU/request marginal")
    return {"cpu_ms": 1000 * cpu / count, "ok": ok, "marginal_ms": marginal}


async def per_poll_worker(
    agents: list[tuple[str, int]], targets: int, gets: int, impl: str, version: str, v3_user: str
) -> dict[str, Any]:
    fast_v2c, fast_v3 = IMPLS[impl]
    poller = SnmpPoller(
        lambda ref: SECRETS[ref.name], max_concurrency=1000, fast_v2c=fast_v2c, fast_v3=fast_v3
    )
    devices = devices_for(agents, 0, targets, version, v3_user)
    cpu0 = time.process_time()
    await asyncio.gather(*(poller.poll(d) for d in devices))  # build targets, discover engines
    build = time.process_time() - cpu0
    ok = 0
    cpu0, wall0 = time.process_time(), time.perf_counter()
    for start in range(0, gets, 50):
        batch = [devices[i % targets] for i in range(start, min(gets, start + 50))]
        ok += sum(r.ok for r in await asyncio.gather(*(poller.poll(d) for d in batch)))
    cpu = time.process_time() - cpu0
    wall = time.perf_counter() - wall0
    poller.close()
    return {"cpu_s": cpu, "wall_s": wall, "ok": ok, "build_s": build}


def _per_poll_child(args: tuple[Any, ...], out: mp.Queue[dict[str, Any]]) -> None:
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    out.put(asyncio.run(per_poll_worker(*args)))


def bench_per_poll(
    agents: list[tuple[str, int]], targets: int, gets: int, impl: str, version: str, v3_user: str
) -> dict[str, float]:
    """CPU per poll outside the scheduler: `gets` polls round-robin over `targets` devices,
    50 in flight (targets built first, not timed), in a fresh process."""
    ctx = mp.get_context("fork")
    queue: mp.Queue[dict[str, Any]] = ctx.Queue()
    proc = ctx.Process(target=_per_poll_child, args=((agents, targets, gets, impl, version, v3_user), queue))
    proc.start()
    result = queue.get(timeout=600)
    proc.join(timeout=30)
    what = "v2c" if version == "2c" else f"v3 {v3_user}"
    cpu_ms = 1000 * result["cpu_s"] / gets
    print(
        f"baton[{impl}] {what}: {gets} polls over {targets} devices, 50 in flight: "
        f"{cpu_ms:.3f} ms CPU/poll, {result['ok']} ok, {gets / result['wall_s']:.0f} polls/s, "
        f"target build {1000 * result['build_s'] / targets:.2f} ms CPU/device"
    )
    return {"cpu_ms": cpu_ms, "ok": float(result["ok"])}


CANDIDATES_VENV = Path("/var/tmp/baton-bench/venv-v3")


def bench_candidates(
    agents: list[tuple[str, int]], python: str, targets: int, gets: int, v3_user: str
) -> dict[str, float]:
    """Third-party v3 clients (bench/v3_candidates.py) in their own interpreter."""
    if python == "auto":
        if not (CANDIDATES_VENV / "bin" / "python").exists():
            print(f"creating {CANDIDATES_VENV} (pip install ezsnmp gufo-snmp netsnmp-cffi)")
            subprocess.run([sys.executable, "-m", "venv", str(CANDIDATES_VENV)], check=True)
            subprocess.run(
                [
                    str(CANDIDATES_VENV / "bin" / "pip"),
                    "install",
                    "-q",
                    "ezsnmp",
                    "gufo-snmp",
                    "netsnmp-cffi",
                ],
                check=True,
            )
        python = str(CANDIDATES_VENV / "bin" / "python")
    user, auth, priv = V3_USERS[v3_user]
    cfg = {
        "agents": agents,
        "user": user,
        "auth": auth,
        "priv": priv,
        "auth_key": AUTH_KEY,
        "priv_key": PRIV_KEY,
        "targets": targets,
        "gets": gets,
        "oids": list(GET_OIDS),
    }
    script = Path(__file__).with_name("v3_candidates.py")
    out = subprocess.run([python, str(script), json.dumps(cfg)], capture_output=True, text=True, timeout=900)
    figures: dict[str, float] = {}
    for line in out.stdout.splitlines():
        row = json.loads(line)
        if "error" in row:
            print(f"{row['candidate']} v3 {v3_user}: {row['error']}")
            continue
        cpu_ms = 1000 * row["cpu_s"] / row["gets"]
        figures[row["candidate"]] = cpu_ms
        print(
            f"{row['candidate']} v3 {v3_user}: {row['gets']} GETs over {targets} devices ({row['ok']} ok): "
            f"{cpu_ms:.3f} ms CPU/GET, {row['gets'] / row['wall_s']:.0f} GETs/s"
        )
    if out.returncode != 0:
        print(f"candidates exited {out.returncode}: {out.stderr.strip()[-500:]}")
    return figures


agent_pids: list[int] = []


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--duration", type=float, default=30.0)
    parser.add_argument("--interval", type=float, default=10.0)
    parser.add_argument("--agents", type=int, default=4)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--impl", choices=tuple(IMPLS), default="fast")
    parser.add_argument("--version", choices=("2c", "3", "mixed"), default="2c")
    parser.add_argument("--v3-user", choices=tuple(V3_USERS), default="SHA/AES")
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--skip-schedule", action="store_true", help="no scheduled PollScheduler run")
    parser.add_argument("--exporter", action="store_true")
    parser.add_argument("--exporter-scrapes", type=int, default=2000)
    parser.add_argument("--netsnmp-cli", type=int, default=0, metavar="N", help="N snmpget processes")
    parser.add_argument(
        "--per-poll",
        type=int,
        default=0,
        metavar="N",
        help="N polls outside the scheduler, per impl (fast, before, pysnmp), side by side",
    )
    parser.add_argument("--per-poll-targets", type=int, default=200)
    parser.add_argument(
        "--candidates", metavar="PYTHON", help="also third-party v3 clients under PYTHON ('auto': own venv)"
    )
    args = parser.parse_args()
    if shutil.which("snmpd") is None:
        sys.exit("snmpd not installed")
    versions = ["2c", "3"] if args.version == "mixed" else [args.version]
    with tempfile.TemporaryDirectory(prefix="baton-bench-") as tmp:
        started = start_agents(Path(tmp), args.agents)
        agent_pids.extend(p.pid for p, _, _ in started)
        agents = [(h, p) for _, h, p in started]
        try:
            for _ in range(args.repeat if args.per_poll else 0):
                for version in versions:
                    impls = ("fast", "pysnmp") if version == "2c" else ("fast", "before")
                    for impl in impls:
                        bench_per_poll(
                            agents, args.per_poll_targets, args.per_poll, impl, version, args.v3_user
                        )
                    if args.candidates and version == "3":
                        bench_candidates(
                            agents, args.candidates, args.per_poll_targets, args.per_poll, args.v3_user
                        )
            runs = []
            for _ in range(0 if args.skip_schedule else args.repeat):
                a0 = sum(proc_cpu_s(p) for p in agent_pids)
                runs.append(
                    bench_baton(
                        agents,
                        args.devices,
                        args.workers,
                        args.duration,
                        args.interval,
                        args.impl,
                        args.version,
                        args.v3_user,
                    )
                )
                agent_cpu = sum(proc_cpu_s(p) for p in agent_pids) - a0
                print(f"agents: {len(agents)} snmpd, CPU during the Baton run {agent_cpu:.1f} s")
            if len(runs) > 1:
                print(
                    f"median of {len(runs)}: CPU/poll "
                    f"{statistics.median(r['cpu_ms'] for r in runs):.3f} ms, "
                    f"{statistics.median(r['rate'] for r in runs):.0f} device-polls/s, "
                    f"target met in {sum(int(r['met']) for r in runs)}/{len(runs)} runs"
                )
            for version in versions:
                if args.netsnmp_cli:
                    bench_netsnmp_cli(agents, args.netsnmp_cli, version, args.v3_user)
                if args.exporter:
                    bench_exporter(Path(tmp), agents, args.exporter_scrapes, version, args.v3_user)
        finally:
            for proc, _, _ in started:
                proc.terminate()
            for proc, _, _ in started:
                proc.wait(timeout=10)


if __name__ == "__main__":
    main()
