"""Trap storms: how many SNMP traps the daemon's receiver and monitor take, and what they drop.

    .venv/bin/python bench/traps.py [--devices 1000] [--offices 50] [--floods 2] [--flood-size 20000]
                                    [--rate 0] [--office-alarms 50] [--repeat 3] [--baton-src DIR]

A RECEIVER process (this file with `--child`) runs what the daemon runs for traps: a `Monitor`
over an inventory of N devices in O offices, its `TrapReceiver` on 127.0.0.1 (a free port), the
daemon's logging (JSON at info, to /dev/null), and, with `--agents K` (default 4), SNMP polling
of every device every `--interval` s against K real `snmpd` agents that listen on the devices'
own addresses (127.20.x.y, one UDP socket per address), so every re-poll a trap causes is a real
poll. This process (the SENDER, on the other core) pre-encodes every trap with the BER helpers
of `baton.adapters.snmp_fast` (net-snmp's `snmptrap` forks a process per trap: far too slow to
make a storm) and sends `--floods` floods of `--flood-size` valid v2c traps each (linkDown /
linkUp with ifIndex, ifAdminStatus, ifOperStatus, from random devices, each from the device's
own address), as fast as Python sends (`--rate 0`, ~250,000/s) or paced at `--rate` per second,
`--gap` s apart. Into each flood, `--office-alarms` office-level vendor alarms (UPS-MIB
upsTrapOnBattery, office_level: true, as in baton.yaml) are mixed at random positions, one per
office in turn. `--v1-share` makes that share of the plain traps SNMPv1.

Reported per flood: traps sent; what the receiver processed (accepted + dropped by the receiver
with a reason, from /metrics, its receive_buffer count aside); what the kernel
dropped because the socket's receive buffer was full (the socket's `drops` in /proc/net/udp);
events the monitor handled; office-level alarms sent and handled; the receiver process's CPU
from the flood's start until the last trap was processed, traps processed per CPU-second (the
receiver is one asyncio thread: per CPU-second is per core) and per wall second, and the CPU
until the process was quiet for 1 s (the SNMP re-polls the traps caused included). `--decode-only N` also
times the receiver's decoder alone on N of the same datagrams (no socket, no monitor).

`--receive-buffer BYTES` sets the receiver's `receive_buffer_bytes` (what an unprivileged daemon
gets is capped by net.core.rmem_max). `--baton-src DIR` runs the receiver from another tree
(e.g. `git archive <commit> daemon | tar -x -C DIR`) for before/after figures; the sender always
uses this tree. Everything listens on 127.0.0.0/8;
the receiver and every agent are stopped at the end, also on failure or Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
COMMUNITY = "bench-traps"
LINK_DOWN, LINK_UP = "1.3.6.1.6.3.1.1.5.3", "1.3.6.1.6.3.1.1.5.4"
UPS_ON_BATTERY = "1.3.6.1.2.1.33.2.1"  # office_level in baton.yaml
SYS_UPTIME, SNMP_TRAP_OID = "1.3.6.1.2.1.1.3.0", "1.3.6.1.6.3.1.1.4.1.0"
IF_INDEX, IF_ADMIN, IF_OPER = "1.3.6.1.2.1.2.2.1.1", "1.3.6.1.2.1.2.2.1.7", "1.3.6.1.2.1.2.2.1.8"
ADDRESSES_PER_AGENT = 250


def address(n: int) -> str:
    """Management (and trap source) address of device n."""
    return f"127.20.{n // 250}.{n % 250 + 1}"


def office_of(n: int, offices: int) -> str:
    return f"office-{n % offices:03d}"


def oid(text: str) -> tuple[int, ...]:
    return tuple(int(arc) for arc in text.split("."))


def import_baton(src: Path) -> None:
    sys.path.insert(0, str(src / "daemon"))


# --- encoding (sender side; BER helpers of this tree) ----------------------------------------


def encode_trap(
    community: bytes, trap_oid: str, if_index: int, request_id: int, uptime: int, *, v1: bool = False
) -> bytes:
    from baton.adapters.snmp_fast import (
        TAG_INTEGER,
        TAG_OCTET_STRING,
        TAG_OID,
        encode_integer,
        encode_oid,
        tlv,
    )

    def integer(value: int) -> bytes:
        return tlv(TAG_INTEGER, encode_integer(value))

    def varbind(name: str, value: bytes) -> bytes:
        return tlv(0x30, tlv(TAG_OID, encode_oid(oid(name))) + value)

    link = (
        varbind(f"{IF_INDEX}.{if_index}", integer(if_index))
        + varbind(f"{IF_ADMIN}.{if_index}", integer(1))
        + varbind(f"{IF_OPER}.{if_index}", integer(2 if trap_oid == LINK_DOWN else 1))
    )
    if v1:
        generic = {LINK_DOWN: 2, LINK_UP: 3}.get(trap_oid)
        enterprise = "1.3.6.1.4.1.8072.3.2.10" if generic is not None else trap_oid.rsplit(".", 2)[0]
        specific = 0 if generic is not None else int(trap_oid.rsplit(".", 1)[1])
        pdu = tlv(
            0xA4,
            tlv(TAG_OID, encode_oid(oid(enterprise)))
            + tlv(0x40, bytes((127, 20, 0, 1)))
            + integer(6 if generic is None else generic)
            + integer(specific)
            + tlv(0x43, encode_integer(uptime))
            + tlv(0x30, link),
        )
        version = 0
    else:
        body = (
            varbind(SYS_UPTIME, tlv(0x43, encode_integer(uptime)))
            + varbind(SNMP_TRAP_OID, tlv(TAG_OID, encode_oid(oid(trap_oid))))
            + link
        )
        pdu = tlv(0xA7, integer(request_id) + integer(0) + integer(0) + tlv(0x30, body))
        version = 1
    return tlv(0x30, integer(version) + tlv(TAG_OCTET_STRING, community) + pdu)


def build_flood(
    rng: random.Random, devices: int, offices: int, size: int, office_alarms: int, v1_share: float
) -> list[tuple[int, bytes, bool]]:
    """(device index, datagram, office-level?) in sending order."""
    community = COMMUNITY.encode()
    flood: list[tuple[int, bytes, bool]] = []
    for i in range(size):
        n = rng.randrange(devices)
        trap_oid = LINK_DOWN if rng.random() < 0.6 else LINK_UP
        datagram = encode_trap(
            community,
            trap_oid,
            rng.randint(1, 48),
            rng.randint(1 << 24, (1 << 31) - 1),
            100_000 + i,
            v1=rng.random() < v1_share,
        )
        flood.append((n, datagram, False))
    # one alarm per office in turn, from the office's first device, at random positions
    for k in range(office_alarms):
        n = k % offices  # device n is in office n % offices
        datagram = encode_trap(community, UPS_ON_BATTERY, 1, rng.randint(1 << 24, (1 << 31) - 1), 100_000)
        flood.insert(rng.randrange(len(flood) + 1), (n, datagram, True))
    return flood


# --- the receiver (child process) ------------------------------------------------------------


def kernel_drops(port: int) -> int:
    """The `drops` column of the UDP socket bound to 127.0.0.1:port (/proc/net/udp)."""
    local = f"0100007F:{port:04X}"
    for line in Path("/proc/net/udp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[1] == local:
            return int(fields[-1])
    return 0


def samples(counter: Any) -> dict[str, float]:
    """label text -> value of one counter family's `_total` samples (without rendering the
    whole registry, which at 1,000 devices would cost the receiver more than the traps)."""
    out: dict[str, float] = {}
    for family in counter.collect():
        for sample in family.samples:
            if sample.name.endswith("_total"):
                labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
                out[labels] = float(sample.value)
    return out


async def child_main(args: argparse.Namespace) -> None:
    import logging

    from baton import logs
    from baton.adapters.traps import TrapReceiverConfig, VendorTrap
    from baton.core.model import Device, Inventory, Office, Policy, SecretRef, SnmpSettings
    from baton.metrics import Metrics
    from baton.monitor import Monitor

    logs.configure(level="info", stream=args.log_stream)  # the daemon's logging, to /dev/null
    logging.getLogger().setLevel(logging.WARNING)
    agents = json.loads(args.agent_ports)
    offices = {
        f"office-{k:03d}": Office(f"office-{k:03d}", f"Office {k}", "bench") for k in range(args.offices)
    }
    devices = {}
    for n in range(args.devices):
        snmp = None
        if agents:
            snmp = SnmpSettings(
                community=SecretRef("env", "C"), port=agents[n // ADDRESSES_PER_AGENT % len(agents)]
            )
        device = Device(
            f"dev{n:05d}", office_of(n, args.offices), "router", address(n), critical=True, snmp=snmp
        )
        devices[device.id] = device
    inventory = Inventory(offices=offices, devices=devices)
    policy = Policy(poll_interval_s=args.interval, hold_down_s=max(30.0, 3 * args.interval))
    settings = TrapReceiverConfig(
        host="127.0.0.1",
        port=0,
        communities=(SecretRef("env", "C"),),
        vendor_traps={UPS_ON_BATTERY: VendorTrap("upsOnBattery", office_level=True)},
        **({"receive_buffer_bytes": args.receive_buffer} if args.receive_buffer else {}),
    )
    metrics = Metrics()
    monitor = Monitor(
        inventory,
        policy,
        resolve=lambda ref: COMMUNITY,
        metrics=metrics,
        on_observed=lambda event: None,
        traps=settings,
    )
    handled = {"events": 0, "office_level": 0}
    office_alarms_seen: set[str] = set()
    original = monitor.handle_trap

    def handle_trap(event: Any) -> None:
        handled["events"] += 1
        if event.office_level:
            handled["office_level"] += 1
            office_alarms_seen.add(event.office_id)
        original(event)

    monitor.handle_trap = handle_trap  # type: ignore[method-assign]
    await monitor.start()
    if agents:
        await asyncio.wait_for(monitor.first_round_done.wait(), timeout=60)
    port = monitor.trap_port or 0
    loop = asyncio.get_running_loop()
    done = asyncio.Event()

    def stats() -> dict[str, Any]:
        receiver: Any = monitor._receiver
        extra = {}
        for name in ("datagrams", "coalesced", "max_queued"):
            value = getattr(receiver, name, None)
            if isinstance(value, int):
                extra[name] = value
        return {
            "cpu_s": time.process_time(),
            "at": time.monotonic(),
            "received": samples(metrics.traps_received_total),
            "dropped": samples(metrics.traps_dropped_total),
            "kernel_drops": kernel_drops(port),
            "handled": dict(handled),
            "offices_alarmed": len(office_alarms_seen),
            "trap_passes": monitor.trap_passes,
            "receive_buffer": receiver._socket.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF),
            **extra,
        }

    def reader() -> None:
        for line in sys.stdin:
            command = line.strip()
            if command == "stats":
                future = asyncio.run_coroutine_threadsafe(_call(stats), loop)
                print(json.dumps(future.result()), flush=True)
            elif command == "stop":
                break
        loop.call_soon_threadsafe(done.set)

    threading.Thread(target=reader, daemon=True).start()
    print(json.dumps({"port": port}), flush=True)
    await done.wait()
    await monitor.stop()


async def _call(fn: Any) -> Any:
    return fn()


# --- the decoder alone -------------------------------------------------------------------------


def decode_only(datagrams: Sequence[bytes], src: Path) -> float | None:
    """CPU per trap of this tree's fast decoder alone (None when the tree has none)."""
    try:
        from baton.adapters.trap_fast import TrapDecoder
    except ImportError:
        return None
    decoder = TrapDecoder()
    t0 = time.process_time()
    for datagram in datagrams:
        decoder.decode(datagram)
    return (time.process_time() - t0) / len(datagrams)


# --- the sender (parent) -----------------------------------------------------------------------


class Child:
    def __init__(self, argv: list[str]) -> None:
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdin is not None
        assert self.proc.stdout is not None
        self._in, self._out = self.proc.stdin, self.proc.stdout
        line = self._out.readline()
        if not line:
            raise RuntimeError(f"receiver exited {self.proc.wait()}")
        self.port = int(json.loads(line)["port"])

    def stats(self) -> dict[str, Any]:
        self._in.write("stats\n")
        self._in.flush()
        return dict(json.loads(self._out.readline()))

    def stop(self) -> None:
        with contextlib.suppress(BrokenPipeError, OSError):
            self._in.write("stop\n")
            self._in.flush()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def processed(s: dict[str, Any]) -> float:
    """Accepted + dropped by the receiver (the kernel's drops, which it also counts, aside)."""
    own = sum(v for k, v in s["dropped"].items() if "receive_buffer" not in k)
    return float(sum(s["received"].values()) + own)


def wait_idle(
    child: Child, quiet_s: float = 1.0, timeout_s: float = 120.0
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the last stats whose count changed, the final stats) once nothing changed for quiet_s."""
    last = child.stats()
    changed_at, last_change = time.monotonic(), last
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        time.sleep(0.05)
        now = child.stats()
        key = (processed(now), now["kernel_drops"], now["handled"]["events"])
        if key != (processed(last), last["kernel_drops"], last["handled"]["events"]):
            changed_at, last_change = time.monotonic(), now
        last = now
        if time.monotonic() - changed_at >= quiet_s:
            break
    return last_change, last


@contextlib.contextmanager
def agents_running(count: int, devices: int, workdir: Path) -> Iterator[list[int]]:
    """K snmpd agents, agent k listening on the addresses of devices k*250 .. k*250+249."""
    procs: list[subprocess.Popen[bytes]] = []
    ports: list[int] = []
    try:
        needed = min(count, (devices + ADDRESSES_PER_AGENT - 1) // ADDRESSES_PER_AGENT)
        for k in range(needed):
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
                probe.bind((address(k * ADDRESSES_PER_AGENT), 0))
                port = probe.getsockname()[1]
            d = workdir / f"agent{k}"
            (d / "persist").mkdir(parents=True)
            (d / "snmpd.conf").write_text(
                f"rocommunity {COMMUNITY} 127.0.0.0/8\nsysName bench-{k}\ndontLogTCPWrappersConnects yes\n"
            )
            listen = [
                f"udp:{address(n)}:{port}"
                for n in range(k * ADDRESSES_PER_AGENT, devices, ADDRESSES_PER_AGENT * needed)
                for n in range(n, min(n + ADDRESSES_PER_AGENT, devices))
            ]
            procs.append(
                subprocess.Popen(
                    [
                        "snmpd",
                        "-C",
                        "-c",
                        str(d / "snmpd.conf"),
                        "-f",
                        "-Lo",
                        "-m",
                        "",
                        "-I",
                        "-smux",
                        *listen,
                    ],
                    env={**os.environ, "SNMP_PERSISTENT_DIR": str(d / "persist")},
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
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


def send_flood(
    flood: Sequence[tuple[int, bytes, bool]],
    sockets: Sequence[socket.socket],
    target: tuple[str, int],
    rate: float,
) -> float:
    """Send every datagram; returns the seconds it took."""
    t0 = time.perf_counter()
    if rate <= 0:
        for n, datagram, _ in flood:
            sockets[n].sendto(datagram, target)
    else:
        step = max(1, int(rate / 1000))  # a batch per millisecond
        for i in range(0, len(flood), step):
            for n, datagram, _ in flood[i : i + step]:
                sockets[n].sendto(datagram, target)
            ahead = t0 + (i + step) / rate - time.perf_counter()
            if ahead > 0:
                time.sleep(ahead)
    return time.perf_counter() - t0


def run_once(
    args: argparse.Namespace, src: Path, agent_ports: list[int], rng: random.Random
) -> list[dict[str, Any]]:
    argv = [
        sys.executable,
        __file__,
        "--child",
        "--baton-src",
        str(src),
        "--devices",
        str(args.devices),
        "--offices",
        str(args.offices),
        "--interval",
        str(args.interval),
        "--agent-ports",
        json.dumps(agent_ports),
        "--receive-buffer",
        str(args.receive_buffer),
        *(["--profile", str(args.profile)] if args.profile else []),
    ]
    floods = [
        build_flood(rng, args.devices, args.offices, args.flood_size, args.office_alarms, args.v1_share)
        for _ in range(args.floods)
    ]
    sockets = []
    for n in range(args.devices):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind((address(n), 0))
        s.setblocking(True)
        sockets.append(s)
    child = Child(argv)
    results = []
    try:
        time.sleep(1.0)
        before = child.stats()
        for k, flood in enumerate(floods):
            if k:
                time.sleep(args.gap)
                before = child.stats()
            t0 = time.monotonic()
            send_s = send_flood(flood, sockets, ("127.0.0.1", child.port), args.rate)
            last_change, after = wait_idle(child)
            sent = len(flood)
            done = processed(after) - processed(before)
            kernel = after["kernel_drops"] - before["kernel_drops"]
            cpu = last_change["cpu_s"] - before["cpu_s"]
            wall = max(1e-9, last_change["at"] - t0)
            dropped = {
                key.split('"')[1]: after["dropped"][key] - before["dropped"].get(key, 0.0)
                for key in after["dropped"]
                if after["dropped"][key] - before["dropped"].get(key, 0.0)
            }
            alarms = sum(1 for _, _, level in flood if level)
            row = {
                "flood": k + 1,
                "sent": sent,
                "send_s": send_s,
                "processed": done,
                "accepted": sum(after["received"].values()) - sum(before["received"].values()),
                "dropped": dropped,
                "kernel_drops": kernel,
                "handled": after["handled"]["events"] - before["handled"]["events"],
                "alarms_sent": alarms,
                "alarms_handled": after["handled"]["office_level"] - before["handled"]["office_level"],
                "cpu_s": cpu,
                "cpu_total_s": after["cpu_s"] - before["cpu_s"],
                "wall_s": wall,
                "per_cpu_s": done / cpu if cpu > 0 else 0.0,
                "per_wall_s": done / wall,
                "receive_buffer": after["receive_buffer"],
                "coalesced": after.get("coalesced", 0) - before.get("coalesced", 0),
                "max_queued": after.get("max_queued", 0),
            }
            results.append(row)
            print(
                f"  flood {k + 1}: {sent} sent in {send_s:.3f} s; receiver processed {done:.0f} "
                f"(accepted {row['accepted']:.0f}, dropped {dropped or 0}), kernel dropped {kernel}; "
                f"monitor handled {row['handled']} events ({row['coalesced']} coalesced in the queue, "
                f"at most {row['max_queued']} waiting); "
                f"office alarms {row['alarms_handled']}/{alarms}; "
                f"receiver CPU {cpu:.2f} s over {wall:.2f} s: "
                f"{row['per_cpu_s']:.0f} traps/CPU-s, {row['per_wall_s']:.0f} traps/s wall "
                f"(CPU until quiet, the re-polls included: {row['cpu_total_s']:.2f} s); "
                f"SO_RCVBUF {row['receive_buffer']}",
                flush=True,
            )
    finally:
        child.stop()
        for s in sockets:
            s.close()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--offices", type=int, default=50)
    parser.add_argument("--floods", type=int, default=2)
    parser.add_argument("--flood-size", type=int, default=20_000)
    parser.add_argument("--gap", type=float, default=5.0, help="seconds between floods")
    parser.add_argument("--rate", type=float, default=0.0, help="traps per second (0: as fast as possible)")
    parser.add_argument("--office-alarms", type=int, default=50, help="office-level alarms per flood")
    parser.add_argument("--v1-share", type=float, default=0.0)
    parser.add_argument("--agents", type=int, default=4, help="snmpd agents answering the polls (0: no SNMP)")
    parser.add_argument("--interval", type=float, default=10.0)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--seed", type=int, default=13)
    parser.add_argument("--decode-only", type=int, default=0, metavar="N")
    parser.add_argument(
        "--receive-buffer",
        type=int,
        default=0,
        metavar="BYTES",
        help="the receiver's receive_buffer_bytes (0: its default); e.g. 212992 = Debian's rmem_max",
    )
    parser.add_argument("--baton-src", type=Path, default=ROOT)
    parser.add_argument("--profile", type=Path, help="cProfile the receiver process into this file")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--agent-ports", default="[]", help=argparse.SUPPRESS)
    args = parser.parse_args()
    src = args.baton_src.resolve()
    if args.child:
        import_baton(src)
        with open(os.devnull, "w") as devnull:
            args.log_stream = devnull
            if args.profile:
                import cProfile

                cProfile.runctx("asyncio.run(child_main(args))", globals(), {"args": args}, str(args.profile))
            else:
                asyncio.run(child_main(args))
        return
    import_baton(ROOT)
    if args.agents and shutil.which("snmpd") is None:
        sys.exit("snmpd not installed (or pass --agents 0)")
    rng = random.Random(args.seed)
    polling = (
        f"SNMP polls every {args.interval:g} s against {args.agents} snmpd" if args.agents else "no polling"
    )
    pace = "as fast as possible" if args.rate <= 0 else f"{args.rate:.0f}/s"
    print(
        f"receiver from {src}; {args.devices} devices in {args.offices} offices, {polling}; "
        f"{args.floods} floods of {args.flood_size} traps ({pace}), {args.office_alarms} office alarms each; "
        f"load {' '.join(Path('/proc/loadavg').read_text().split()[:3])}",
        flush=True,
    )
    if args.decode_only:
        sample = [
            d for _, d, _ in build_flood(rng, args.devices, args.offices, args.decode_only, 0, args.v1_share)
        ]
        per = decode_only(sample, src)
        figure = "n/a" if per is None else f"{1e6 * per:.1f} µs/trap = {1 / per:.0f} traps/CPU-s"
        print(f"decoder alone: {figure}")
    all_rows = []
    with (
        tempfile.TemporaryDirectory(prefix="baton-bench-traps-") as tmp,
        agents_running(args.agents, args.devices, Path(tmp)) as ports,
    ):
        for r in range(args.repeat):
            print(f"run {r + 1}:", flush=True)
            all_rows.extend(run_once(args, src, ports, rng))
    if all_rows:
        total_sent = sum(r["sent"] for r in all_rows)
        total_done = sum(r["processed"] for r in all_rows)
        alarms = f"{sum(r['alarms_handled'] for r in all_rows)}/{sum(r['alarms_sent'] for r in all_rows)}"
        print(
            f"all runs: {total_done:.0f}/{total_sent} processed ({100 * total_done / total_sent:.1f} %), "
            f"kernel dropped {sum(r['kernel_drops'] for r in all_rows)}, office alarms {alarms}; "
            f"median {statistics.median(r['per_cpu_s'] for r in all_rows):.0f} traps/CPU-s, "
            f"{statistics.median(r['per_wall_s'] for r in all_rows):.0f} traps/s wall"
        )


if __name__ == "__main__":
    main()
