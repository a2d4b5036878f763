"""SNMP poll throughput: Baton's SnmpPoller/PollScheduler vs prometheus-snmp-exporter.

Starts K snmpd agents on 127.0.0.2.. (free UDP ports), simulates N devices as N distinct targets
spread over those agents, and for `--duration` seconds polls every device once per `--interval`
(sysUpTime + ifOperStatus.1 + sysName in one GET, as a device with one critical interface).
Reports device-polls/s, client CPU per poll (process CPU / polls, target building excluded and
reported separately), RSS, the agents' CPU, poll latency p50/p99, and whether the schedule was
kept: every poll due (each device's phase, computed as the scheduler does) until 1 s before the
stop must have started within 1 s of its due time and ended ok, with no failure and no overrun
(a device's turn skipped because its previous poll was still running).

`--impl fast` (default) is the v2c fast path (baton.adapters.snmp_fast); `--impl pysnmp` is the
same poller with v2c through pysnmp (the code before the fast path). `--workers W`: W processes
each poll N/W devices. `--repeat R` runs the Baton part R times (same agents) and prints the
median. `--exporter` also runs prometheus-snmp-exporter for the same OIDs against the same agents
and reports its CPU per device-scrape. Everything started is stopped. Logging is cut to warnings
for both impls.

    .venv/bin/python bench/poll.py --devices 1000 --duration 20 --repeat 3 --exporter --exporter-scrapes 2000
    .venv/bin/python bench/poll.py --devices 10000 --duration 30 --repeat 3
    .venv/bin/python bench/poll.py --devices 10000 --duration 20 --repeat 3 --impl pysnmp --workers 2
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
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
        (d / "snmpd.conf").write_text(
            f"agentAddress udp:{host}:{port}\nsysName bench-{i}\nrocommunity {COMMUNITY} 127.0.0.0/8\n"
            "override 1.3.6.1.2.1.2.2.1.8.1 integer 1\ndontLogTCPWrappersConnects yes\n"
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


def devices_for(agents: list[tuple[str, int]], first: int, count: int, interval_s: float) -> list[Device]:
    out = []
    for n in range(first, first + count):
        host, port = agents[n % len(agents)]
        settings = SnmpSettings(
            port=port,
            timeout_s=2.0,
            retries=1,
            community=SecretRef("env", "C"),
            critical_interfaces=(1,),
            oids=frozen_map({"sys_name": "1.3.6.1.2.1.1.5.0"}),
        )
        out.append(Device(f"co-{n // 20}-dev{n % 20}", f"co-{n // 20}", "router", host, snmp=settings))
    return out


async def run_worker(
    devices: list[Device], duration_s: float, interval_s: float, fast: bool
) -> dict[str, Any]:
    # readings stamped with the scheduler's clock, to match them with their due times
    poller = SnmpPoller(lambda _ref: COMMUNITY, max_concurrency=1000, fast_v2c=fast, clock=time.monotonic)
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
    args: tuple[list[tuple[str, int]], int, int, float, float, bool],
    out: mp.Queue[dict[str, Any]],
) -> None:
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    agents, first, count, duration_s, interval_s, fast = args
    devices = devices_for(agents, first, count, interval_s)
    out.put(asyncio.run(run_worker(devices, duration_s, interval_s, fast)))


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def bench_baton(
    agents: list[tuple[str, int]], n: int, workers: int, duration_s: float, interval_s: float, impl: str
) -> dict[str, float]:
    ctx = mp.get_context("fork")
    queue: mp.Queue[dict[str, Any]] = ctx.Queue()
    share = n // workers
    load0 = loadavg()
    procs = [
        ctx.Process(
            target=worker_main,
            args=((agents, w * share, share, duration_s, interval_s, impl == "fast"), queue),
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
    print(
        f"baton[{impl}] N={n} workers={workers} interval={interval_s}s: {polls / wall:.0f} device-polls/s "
        f"(target {n / interval_s:.0f}), CPU/poll {cpu_ms:.3f} ms, "
        f"ok {ok:.0f}, on time {on_time:.0f}/{due:.0f} due, "
        f"failed {fail:.0f}, overruns {overruns:.0f}, "
        f"latency p50 {p50:.1f} ms p99 {p99:.1f} ms, "
        f"RSS {' + '.join(str(round(float(r['rss_mb']))) for r in results)} MB, "
        f"target build {1000 * total('build_cpu_s') / n:.2f} ms CPU/device, "
        f"load {load0} -> {loadavg()}; {n}/{interval_s:g}s target {'MET' if met else 'NOT met'}"
    )
    return {"cpu_ms": cpu_ms, "rate": polls / wall, "met": float(met)}


def bench_exporter(workdir: Path, agents: list[tuple[str, int]], scrapes: int) -> None:
    binary = shutil.which("prometheus-snmp-exporter")
    if binary is None:
        print("exporter: prometheus-snmp-exporter not installed, skipped")
        return
    config = workdir / "snmp.yml"
    config.write_text(
        "baton:\n"
        "  version: 2\n"
        f"  auth: {{community: {COMMUNITY}}}\n"
        "  timeout: 2s\n  retries: 1\n"
        "  get: [1.3.6.1.2.1.1.3.0, 1.3.6.1.2.1.2.2.1.8.1, 1.3.6.1.2.1.1.5.0]\n"
        "  metrics:\n"
        "    - {name: sysUpTime, oid: 1.3.6.1.2.1.1.3, type: gauge}\n"
        "    - {name: sysName, oid: 1.3.6.1.2.1.1.5, type: DisplayString}\n"
        "    - name: ifOperStatus\n      oid: 1.3.6.1.2.1.2.2.1.8\n      type: gauge\n"
        "      indexes: [{labelname: ifIndex, type: gauge}]\n"
    )
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
            return "ifOperStatus" in body

        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(16) as pool:
            ok = sum(pool.map(scrape, range(scrapes)))
        wall = time.perf_counter() - wall0
        cpu = proc_cpu_s(proc.pid) - cpu0
        agent_cpu = sum(proc_cpu_s(p) for p in agent_pids) - agent_cpu0
        print(
            f"exporter {scrapes} device-scrapes ({ok} ok, 16 in parallel): {scrapes / wall:.0f}/s, "
            f"exporter CPU/scrape {1000 * cpu / scrapes:.2f} ms, agents {1000 * agent_cpu / scrapes:.2f} ms, "
            f"RSS {rss_mb(proc.pid):.0f} MB"
        )
    finally:
        proc.terminate()
        proc.wait(timeout=10)


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
    parser.add_argument("--impl", choices=("fast", "pysnmp"), default="fast")
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--exporter", action="store_true")
    parser.add_argument("--exporter-scrapes", type=int, default=2000)
    args = parser.parse_args()
    if shutil.which("snmpd") is None:
        sys.exit("snmpd not installed")
    with tempfile.TemporaryDirectory(prefix="baton-bench-") as tmp:
        started = start_agents(Path(tmp), args.agents)
        agent_pids.extend(p.pid for p, _, _ in started)
        agents = [(h, p) for _, h, p in started]
        try:
            runs = []
            for _ in range(args.repeat):
                a0 = sum(proc_cpu_s(p) for p in agent_pids)
                runs.append(
                    bench_baton(agents, args.devices, args.workers, args.duration, args.interval, args.impl)
                )
                agent_cpu = sum(proc_cpu_s(p) for p in agent_pids) - a0
                print(f"agents: {len(agents)} snmpd, CPU during the Baton run {agent_cpu:.1f} s")
            if args.repeat > 1:
                print(
                    f"median of {args.repeat}: CPU/poll "
                    f"{statistics.median(r['cpu_ms'] for r in runs):.3f} ms, "
                    f"{statistics.median(r['rate'] for r in runs):.0f} device-polls/s, "
                    f"target met in {sum(int(r['met']) for r in runs)}/{args.repeat} runs"
                )
            if args.exporter:
                bench_exporter(Path(tmp), agents, args.exporter_scrapes)
        finally:
            for proc, _, _ in started:
                proc.terminate()
            for proc, _, _ in started:
                proc.wait(timeout=10)


if __name__ == "__main__":
    main()
