"""Vantages over etcd, measured: takeover after the leader's death, etcd traffic at rest and per
device handed over, and the time from "a majority sees the office dark" to the handover started.

    .venv/bin/python bench/takeover.py                  # 10 kills, 2 offices x 3 devices, lease 3 s
    .venv/bin/python bench/takeover.py --workdir /dev/shm --labs 2 --offices 8 \
        --devices-per-office 125 --snmp-v2c --policy example --lease 10 --request-timeout 2 \
        --concurrency 64 --kills 0 --quiet-s 120 --handovers 2 --power-failures 5

What it does. The world of `tests/e2e/test_vantages.py`: a `baton lab` (its own process) of
`--offices` x `--devices-per-office` (`--labs 2`: two lab processes, their inventories merged into
one: a single Python lab cannot answer 3 x 1,000 devices in time on 2 cores), a three-member etcd
on loopback (Debian's etcd-server, raft timing as in the tests), three `baton daemon` vantages
v1..v3 (`--log-format json`, traps sent nowhere: polling alone decides). `--policy example` takes
the `policy:` block of the repository's example `baton.yaml` as it is (poll 10 s, DOWN after 3
failed polls, hold-down 30 s, ...); `fast` is the e2e tests' policy (poll 2 s). Each vantage
reaches etcd through its own counting proxy (one per member, in a child process, so that this
one's work never delays it): every HTTP request it sends (by path: kv/txn, kv/put, kv/range,
lease/keepalive, watch) and the bytes each way are counted per vantage, on the wire as the daemon
speaks it (etcd's JSON gateway: base64 values). etcd's own counters (`grpc_server_handled_total`,
`etcd_network_client_grpc_{received,sent}_bytes_total`, summed over the members) are read beside
them. Then, in this order:

* **at rest** (`--quiet-s`, once a poll interval passed without a failed SNMP poll, `--settle-s`
  at most): requests and bytes per vantage per minute, leader and followers apart, the CPU each
  process used (daemons, labs, etcd) and the SNMP polls that failed over that window;
* **`--handovers K`**: K operator-declared handovers of the first office (every device of it a
  target: its OLTs get NETCONF and the playbook's tag `bng`, as in bench/handover.py), each
  followed by its handback. Counted from the command to the leader's `run.finished`, less what
  the same window at rest would have cost: requests and bytes per device handed over (and back);
* **`--power-failures K`**: K power failures (lab `power_off`, no UPS: every device dark), each
  of a different office (not the first two; at most as many per `storm_window_s` as the storm
  guard allows), then `power_on` and a handback, before the next. From the JSON logs: when each vantage's
  monitor said the office DOWN (`monitor.office_verdict_changed`), the moment the second of three
  did (a majority: the quorum), the leader's decision that took the office to SUSPECT
  (`decision`, trigger `RoundObserved`) and its `run.started`;
* **`--kills K`**: the leading vantage gets SIGKILL at wall time T0; the takeover time is from T0
  to the `lease.changed held` event the next leader logs; the killed one is started again (a
  follower) before the next kill.

Every process started here is stopped at the end, also on Ctrl-C; everything is on 127.0.0.0/8.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "daemon"))
sys.path.insert(1, str(ROOT))

import yaml  # noqa: E402
from tests.e2e.harness import (  # noqa: E402
    FAST_POLICY,
    Daemon,
    LabProcess,
    free_port,
    start_together,
    stop_all,
    vantage_config,
    wait_for,
)
from tests.peers.etcd import EtcdCluster, etcd_cluster_running  # noqa: E402

VANTAGES = ("v1", "v2", "v3")
EXAMPLE_CONFIG = ROOT / "baton.yaml"
_COUNTERS = re.compile(
    r"^(grpc_server_handled_total|etcd_network_client_grpc_received_bytes_total"
    r"|etcd_network_client_grpc_sent_bytes_total)(\{[^}]*\})? (\S+)$",
    re.M,
)
_CLK_TCK = os.sysconf("SC_CLK_TCK")


def say(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def event_time(event: Mapping[str, Any]) -> float:
    return datetime.fromisoformat(str(event["timestamp"]).replace("Z", "+00:00")).timestamp()


def cpu_of(pids: Sequence[int]) -> float:
    """CPU seconds (user + system) of these processes and their reaped children so far."""
    total = 0.0
    for pid in pids:
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += sum(int(x) for x in fields[11:15]) / _CLK_TCK  # utime stime cutime cstime
    return total


def load() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


# --- the daemons' JSON logs, read incrementally --------------------------------------------------

_LOGS: dict[Path, tuple[int, list[dict[str, Any]]]] = {}


def events(daemon: Daemon, name: str, **match: Any) -> list[dict[str, Any]]:
    """`Daemon.events` of its current log, parsing only what was appended since the last call
    (re-reading megabytes of JSON every 0.2 s took a core of this process)."""
    path = daemon.log
    offset, seen = _LOGS.get(path, (0, []))
    with contextlib.suppress(FileNotFoundError), path.open("rb") as f:
        f.seek(offset)
        data = f.read()
        end = data.rfind(b"\n") + 1
        for line in data[:end].splitlines():
            if line.startswith(b"{"):
                with contextlib.suppress(ValueError):
                    seen.append(json.loads(line))
        offset += end
    _LOGS[path] = (offset, seen)
    return [e for e in seen if e.get("event") == name and all(e.get(k) == v for k, v in match.items())]


# --- counting proxies: what each vantage sends to etcd and gets back ----------------------------


@dataclass
class Tally:
    requests: Counter[str] = field(default_factory=Counter)  # by path: kv/txn, lease/keepalive...
    up: int = 0  # bytes vantage -> etcd
    down: int = 0  # bytes etcd -> vantage

    def copy(self) -> Tally:
        return Tally(Counter(self.requests), self.up, self.down)

    def __sub__(self, other: Tally) -> Tally:
        requests = Counter(self.requests)
        requests.subtract(other.requests)
        return Tally(requests, self.up - other.up, self.down - other.down)

    def scaled(self, factor: float) -> Tally:
        return Tally(
            Counter({k: v * factor for k, v in self.requests.items()}),
            round(self.up * factor),
            round(self.down * factor),
        )

    @property
    def total(self) -> float:
        return float(sum(self.requests.values()))


class _RequestCounter:
    """Counts the HTTP/1.1 requests in one client->server byte stream (Content-Length bodies,
    as aiohttp sends them; anything else is counted once, as "unparsed", and not followed)."""

    def __init__(self, tally: Tally) -> None:
        self.tally = tally
        self.buffer = b""
        self.body_left = 0
        self.lost = False

    def feed(self, data: bytes) -> None:
        if self.lost:
            return
        self.buffer += data
        while True:
            if self.body_left:
                taken = min(self.body_left, len(self.buffer))
                self.buffer = self.buffer[taken:]
                self.body_left -= taken
                if self.body_left:
                    return
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buffer[:end].decode("latin-1").split("\r\n")
            self.buffer = self.buffer[end + 4 :]
            parts = head[0].split(" ")
            path = parts[1].removeprefix("/v3/") if len(parts) > 1 else "?"
            headers = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in head[1:])}
            if "content-length" not in headers:
                self.tally.requests["unparsed"] += 1
                self.lost = True
                return
            self.tally.requests[path] += 1
            self.body_left = int(headers["content-length"])


class _Tap:
    """One TCP proxy per (vantage, etcd member) on 127.0.0.1, counting per vantage (an asyncio
    loop; it runs in its own process, `--serve-tap`, so that this one's work never delays it)."""

    def __init__(self, vantages: Sequence[str], members: Sequence[str]) -> None:
        self.vantages = tuple(vantages)
        self.members = [m.removeprefix("http://") for m in members]
        self.tallies = {v: Tally() for v in self.vantages}
        self.endpoints: dict[str, list[str]] = {}

    async def listen(self) -> None:
        for vantage in self.vantages:
            for member in self.members:
                host, _, port = member.rpartition(":")
                server = await asyncio.start_server(
                    lambda r, w, v=vantage, h=host, p=int(port): self._serve(v, h, p, r, w), "127.0.0.1", 0
                )
                listen = server.sockets[0].getsockname()
                self.endpoints.setdefault(vantage, []).append(f"http://{listen[0]}:{listen[1]}")

    async def _serve(
        self, vantage: str, host: str, port: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        tally = self.tallies[vantage]
        try:
            up_reader, up_writer = await asyncio.open_connection(host, port)
        except OSError:
            writer.close()
            return
        counter = _RequestCounter(tally)

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter, upward: bool) -> None:
            try:
                while data := await src.read(65536):
                    if upward:
                        tally.up += len(data)
                        counter.feed(data)
                    else:
                        tally.down += len(data)
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                with contextlib.suppress(Exception):
                    dst.close()

        await asyncio.gather(pump(reader, up_writer, True), pump(up_reader, writer, False))


def serve_tap(spec: str) -> int:
    """Child process: the proxies; prints their endpoints, then a snapshot per line read."""
    given = json.loads(spec)
    tap = _Tap(given["vantages"], given["members"])

    async def main() -> None:
        await tap.listen()
        print(json.dumps(tap.endpoints), flush=True)
        loop = asyncio.get_running_loop()
        while await loop.run_in_executor(None, sys.stdin.readline):
            snap = {v: [dict(t.requests), t.up, t.down] for v, t in tap.tallies.items()}
            print(json.dumps(snap), flush=True)

    asyncio.run(main())
    return 0


class EtcdTap:
    """The counting proxies (`_Tap`) in a child process; `endpoints[vantage]` for its config."""

    def __init__(self, vantages: Sequence[str], members: Sequence[str]) -> None:
        self.spec = json.dumps({"vantages": list(vantages), "members": list(members)})
        self.endpoints: dict[str, list[str]] = {}
        self.proc: subprocess.Popen[str] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--serve-tap", self.spec],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        self.endpoints = json.loads(self.proc.stdout.readline())

    def snapshot(self) -> dict[str, Tally]:
        assert self.proc is not None
        assert self.proc.stdin is not None
        assert self.proc.stdout is not None
        self.proc.stdin.write("snap\n")
        self.proc.stdin.flush()
        snap = json.loads(self.proc.stdout.readline())
        return {v: Tally(Counter(r), up, down) for v, (r, up, down) in snap.items()}

    def stop(self) -> None:
        if self.proc is None:
            return
        with contextlib.suppress(OSError):
            assert self.proc.stdin is not None
            self.proc.stdin.close()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)


def etcd_counters(cluster: EtcdCluster) -> tuple[float, float, float]:
    """(gRPC requests handled, gRPC bytes received, gRPC bytes sent), summed over the members."""
    requests = received = sent = 0.0
    for endpoint in cluster.endpoints:
        with urllib.request.urlopen(f"{endpoint}/metrics", timeout=5) as answer:  # noqa: S310
            text = answer.read().decode()
        for name, _labels, value in _COUNTERS.findall(text):
            if name == "grpc_server_handled_total":
                requests += float(value)
            elif "received" in name:
                received += float(value)
            else:
                sent += float(value)
    return requests, received, sent


# --- the world ---------------------------------------------------------------------------------


@dataclass
class World:
    labs: list[LabProcess]
    lab_of: dict[str, LabProcess]  # office -> the lab process that simulates it
    cluster: EtcdCluster
    tap: EtcdTap
    daemons: dict[str, Daemon]
    policy: dict[str, Any]
    offices: list[str]
    alternates: dict[str, str]
    devices_per_office: int

    def leaders(self) -> list[str]:
        found = []
        for vantage, daemon in self.daemons.items():
            if not daemon.running:
                continue
            result = daemon.cli("status", "--json")
            if result.code == 0 and result.json()["daemon"]["leadership"]["held"]:
                found.append(vantage)
        return found

    def leader(self, timeout_s: float = 120.0, besides: str | None = None) -> str:
        def one() -> str | None:
            leaders = [v for v in self.leaders() if v != besides]
            return leaders[0] if len(leaders) == 1 else None

        return wait_for(one, timeout_s, "exactly one vantage leading")

    def pids(self) -> dict[str, list[int]]:
        out: dict[str, list[int]] = {
            v: [d.process.pid] for v, d in self.daemons.items() if d.process and d.process.pid
        }
        out["lab"] = [lab.process.pid for lab in self.labs if lab.process.pid]
        out["etcd"] = [m.pid for m in self.cluster.members if m.pid]
        return out


def example_policy() -> dict[str, Any]:
    policy: dict[str, Any] = yaml.safe_load(EXAMPLE_CONFIG.read_text())["policy"]
    return policy


def give_office_netconf(lab: LabProcess, office: str) -> int:
    """Every device of `office` a handover target: its OLTs get NETCONF and the tag `bng` (the
    lab serves NETCONF on every device). Returns the office's device count."""
    path = lab.dir / "inventory" / "devices" / f"{office}.yaml"
    doc = yaml.safe_load(path.read_text())
    for entry in doc["devices"]:
        if "olt" in entry.get("groups", []):
            entry["netconf"] = {"enabled": True}
            entry["tags"] = ["access", "gpon", "bng"]
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return len(doc["devices"])


def merge_lab(into: LabProcess, other: LabProcess, name: str, only: Sequence[str]) -> None:
    """Add `other`'s offices `only` and their devices to `into`'s inventory: its credentials
    copied under `<name>-...`, and a group `<name>` (its ports and credentials; `<name>-v3` for
    its SNMPv3 devices) appended to each of its devices. A lab numbers its offices (and so their
    127.x addresses) in the order it was given them: `other` simulates `into`'s offices too,
    first, on its own ports, so that the offices taken from it have addresses of their own."""
    src, dst = other.dir / "inventory", into.dir / "inventory"
    for path in (src / "credentials").iterdir():
        target = dst / "credentials" / f"{name}-{path.name}"
        target.write_bytes(path.read_bytes())
        target.chmod(0o600)
    offices = yaml.safe_load((dst / "offices.yaml").read_text())
    offices["offices"] += [
        o for o in yaml.safe_load((src / "offices.yaml").read_text())["offices"] if o["id"] in only
    ]
    (dst / "offices.yaml").write_text(yaml.safe_dump(offices, sort_keys=False))
    ref = f"file:credentials/{name}-"
    theirs = yaml.safe_load((src / "groups.yaml").read_text())["groups"]
    groups = yaml.safe_load((dst / "groups.yaml").read_text())
    remote = {"port": other.ssh_port, "private_key": ref + "baton_ed25519"}
    groups["groups"][name] = {
        "snmp": {"port": other.snmp_port, "community": ref + "snmp-community"},
        "netconf": remote,
        "ssh": remote,
    }
    v3 = dict(theirs["snmp-v3-seoul"]["snmp"])
    v3.update(auth_key=ref + "snmp-v3-auth", priv_key=ref + "snmp-v3-priv")
    groups["groups"][f"{name}-v3"] = {"snmp": v3}
    (dst / "groups.yaml").write_text(yaml.safe_dump(groups, sort_keys=False))
    for path in (src / "devices").glob("*.yaml"):
        if path.stem not in only:
            continue
        doc = yaml.safe_load(path.read_text())
        for entry in doc["devices"]:
            extra = [name] + ([f"{name}-v3"] if "snmp-v3-seoul" in entry["groups"] else [])
            entry["groups"] = [*entry["groups"], *extra]
        (dst / "devices" / path.name).write_text(yaml.safe_dump(doc, sort_keys=False))


def bench_playbooks(directory: Path, concurrency: int) -> Path:
    """The repository's playbooks with `concurrency:` set: the shipped 4 devices at a time cannot
    fit a 100-device office in the 300 s window (validation refuses it and says to raise it)."""
    directory.mkdir(parents=True, exist_ok=True)
    for source in (ROOT / "playbooks").glob("*.yaml"):
        text = re.sub(r"^concurrency: *\d+", f"concurrency: {concurrency}", source.read_text(), flags=re.M)
        (directory / source.name).write_text(text)
    return directory


# Two lab processes: a region's offices split so that SNMPv3 (Seoul), dearer for the lab to
# answer, is shared between them; every office keeps an alternate in its own lab.
SPLIT = (
    "seoul-geumcheon,seoul-bangbae,busan-jung,busan-haeundae",
    "seoul-suwon,seoul-gwacheon,daegu-dongdaegu,daegu-suseong",
)


@contextlib.contextmanager
def world_running(args: argparse.Namespace, base: Path) -> Iterator[World]:
    from baton.lab.network import select_offices

    if args.labs == 1:
        simulated = [str(args.offices)]
    elif args.offices == len(",".join(SPLIT).split(",")):
        simulated = [SPLIT[0], ",".join(SPLIT)]
    else:  # generated offices: the first half in one lab, the second half in the other
        simulated = [str(args.offices // 2), str(args.offices)]
    everything = select_offices(simulated[-1])
    offices = [o.id for o in everything]
    first = {o.id for o in select_offices(simulated[0])}
    served = [[o for o in offices if o in first], [o for o in offices if o not in first]][: args.labs]
    labs = [
        LabProcess(base / ("lab" if i == 0 else f"lab-{i + 1}"), spec, args.devices_per_office)
        for i, spec in enumerate(simulated)
    ]
    lab_of = {o: lab for lab, ids in zip(labs, served, strict=True) for o in ids}
    alternates = {}
    for lab_spec in simulated:
        for o in select_offices(lab_spec):
            if o.alternates and o.id not in alternates and o.alternates[0] in lab_of:
                alternates[o.id] = o.alternates[0]
    lab = labs[0]
    daemons: dict[str, Daemon] = {}
    policy = example_policy() if args.policy == "example" else dict(FAST_POLICY)
    tap: EtcdTap | None = None
    try:
        for k, each in enumerate(labs):
            say(
                f"lab {k + 1}/{len(labs)}: {len(served[k])} offices x {args.devices_per_office} devices, "
                "starting"
            )
            if len(select_offices(simulated[k])) != len(served[k]):
                say(f"  (it simulates {simulated[k]}: the first ones idle, for the address plan)")
            each.start()
        for k, each in enumerate(labs[1:], start=2):
            merge_lab(lab, each, f"lab{k}", served[k - 1])
        lab.configure(policy)
        config = yaml.safe_load(lab.config_path.read_text())
        config["policy"] = policy  # exactly this block, not merged with the tests' fast timers
        if args.concurrency:
            config["playbooks"] = str(bench_playbooks(base / "playbooks", args.concurrency))
        lab.config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        if args.snmp_v2c:
            groups_path = lab.dir / "inventory" / "groups.yaml"
            groups = yaml.safe_load(groups_path.read_text())
            groups["groups"]["snmp-v3-seoul"] = groups["groups"]["snmp-v2c"]
            for name in [g for g in groups["groups"] if g.endswith("-v3")]:
                groups["groups"][name] = {}
            groups_path.write_text(yaml.safe_dump(groups, sort_keys=False))
            say("lab: every office polled with SNMP v2c (the lab answers v3 at ~2.4x the CPU of v2c)")
        defaults_path = lab.dir / "inventory" / "defaults.yaml"
        defaults = yaml.safe_load(defaults_path.read_text())
        for protocol in ("netconf", "ssh"):  # Baton's default, not the lab's 5 s for drills
            defaults["defaults"][protocol]["timeout_s"] = args.netconf_timeout
        defaults_path.write_text(yaml.safe_dump(defaults, sort_keys=False))
        if args.handovers:
            n = give_office_netconf(lab, offices[0])
            say(f"lab: every device of {offices[0]} ({n}) is a handover target (OLTs with NETCONF, tag bng)")
        with etcd_cluster_running(base / "etcd") as cluster:
            tap = EtcdTap(VANTAGES, list(cluster.endpoints))
            tap.start()
            try:
                for vantage in VANTAGES:
                    path = vantage_config(
                        lab,
                        vantage,
                        VANTAGES,
                        tap.endpoints[vantage],
                        offices[1],
                        free_port(),  # the lab's traps go elsewhere: polling alone decides
                        prefix="/baton-bench/",
                        lease_ttl_s=args.lease,
                        request_timeout_s=args.request_timeout,
                    )
                    (base / vantage).mkdir()
                    daemons[vantage] = Daemon(path, base / vantage)
                say("vantages: starting v1, v2, v3")
                start_together(daemons, args.start_timeout)
                world = World(
                    labs, lab_of, cluster, tap, daemons, policy, offices, alternates, args.devices_per_office
                )
                world.leader()
                settle(world, args.settle_s)
                yield world
            finally:
                stop_all(daemons)
                tap.stop()
    finally:
        for each in labs:
            each.stop()


def settle(world: World, most_s: float) -> None:
    """After the start (every vantage's first sessions and SNMPv3 discoveries at once: the labs
    fall behind), wait for a poll interval without a failed SNMP poll, `most_s` at most."""
    interval = float(world.policy.get("poll_interval_s", 10))
    started = time.monotonic()
    last = -1
    quiet_since = time.monotonic()
    while time.monotonic() - started < most_s:
        failing = sum(len(events(d, "snmp.device_failing")) for d in world.daemons.values())
        if failing != last:
            last, quiet_since = failing, time.monotonic()
        elif time.monotonic() - quiet_since >= interval:
            say(f"settled after {time.monotonic() - started:.0f} s (a poll interval without a failed poll)")
            return
        time.sleep(1.0)
    say(f"not settled after {most_s:g} s: SNMP polls still fail now and then (see the window's count)")


# --- at rest -------------------------------------------------------------------------------------


def kib(n: float) -> str:
    return f"{n / 1024:.1f} KiB"


def describe(t: Tally, minutes: float) -> str:
    by = ", ".join(f"{k} {v / minutes:.0f}" for k, v in sorted(t.requests.items()) if v)
    return (
        f"{t.total / minutes:.0f} requests ({by}), {kib(t.up / minutes)} sent, "
        f"{kib(t.down / minutes)} received per minute"
    )


def at_rest(world: World, seconds: float) -> dict[str, Tally]:
    """Traffic per vantage over `seconds` with nothing happening; per-minute rates returned."""
    leader = world.leader()
    pids = world.pids()
    failing0 = {v: len(events(d, "snmp.device_failing")) for v, d in world.daemons.items()}
    cpu0 = {k: cpu_of(v) for k, v in pids.items()}
    tap0, etcd0, t0 = world.tap.snapshot(), etcd_counters(world.cluster), time.monotonic()
    time.sleep(seconds)
    tap1, etcd1, t1 = world.tap.snapshot(), etcd_counters(world.cluster), time.monotonic()
    cpu1 = {k: cpu_of(v) for k, v in pids.items()}
    minutes = (t1 - t0) / 60
    if world.leaders() != [leader]:
        say(f"WARNING: the leader changed during the quiet window ({leader} -> {world.leaders()})")
    rates = {v: (tap1[v] - tap0[v]).scaled(1 / minutes) for v in VANTAGES}
    poll = world.policy.get("poll_interval_s")
    devices = len(world.offices) * world.devices_per_office
    say(
        f"etcd traffic at rest, {len(world.offices)} offices x {world.devices_per_office} devices "
        f"({devices}), poll {poll} s, lease {world_lease(world)} s, over {t1 - t0:.0f} s, load {load()}:"
    )
    for vantage in VANTAGES:
        role = "leader" if vantage == leader else "follower"
        say(f"  {vantage} ({role}): {describe(rates[vantage], 1)}")
    mean = Tally()
    for vantage in VANTAGES:
        mean.requests.update(rates[vantage].requests)
        mean.up += rates[vantage].up
        mean.down += rates[vantage].down
    mean = mean.scaled(1 / len(VANTAGES))
    say(f"  mean per vantage: {describe(mean, 1)}")
    per = len(VANTAGES) * minutes
    say(
        f"  etcd's counters: {(etcd1[0] - etcd0[0]) / per:.0f} gRPC requests, "
        f"{kib((etcd1[1] - etcd0[1]) / per)} received, {kib((etcd1[2] - etcd0[2]) / per)} sent "
        "per vantage per minute"
    )
    cpu = ", ".join(f"{k} {(cpu1[k] - cpu0[k]) / (t1 - t0) * 100:.0f} %" for k in pids)
    say(f"  CPU over the window (% of one core): {cpu}; load {load()}")
    failing = {v: len(events(d, "snmp.device_failing")) - failing0[v] for v, d in world.daemons.items()}
    polls = devices * (t1 - t0) / float(poll or 10)
    say(
        "  SNMP polls that failed over the window (snmp.device_failing), of ~"
        f"{polls:.0f} per vantage: " + ", ".join(f"{v} {n}" for v, n in failing.items())
    )
    return rates


def world_lease(world: World) -> float:
    config = yaml.safe_load(world.daemons["v1"].config_path.read_text())
    return float(config["etcd"]["lease_ttl_s"])


# --- handovers: traffic per device -----------------------------------------------------------------


def _wait_run(daemon: Daemon, office: str, kind: str, after: float, timeout_s: float) -> dict[str, Any]:
    def finished() -> dict[str, Any] | None:
        for event in events(daemon, "run.finished"):
            if event.get("office") == office and event.get("kind") == kind and event_time(event) >= after:
                return event
        return None

    return wait_for(finished, timeout_s, f"the {kind} of {office} finished", interval_s=0.2)


def run_traffic(
    world: World, rest: Mapping[str, Tally], argv: Sequence[str], office: str, kind: str, devices: int
) -> tuple[Tally, float, bool]:
    """One operator command on the leader and its run: traffic beyond rest (all vantages)."""
    leader = world.leader()
    daemon = world.daemons[leader]
    tap0, t0, wall0 = world.tap.snapshot(), time.monotonic(), time.time()
    result = daemon.cli(*argv, "--yes", "--no-follow")
    if result.code != 0:
        raise RuntimeError(f"{' '.join(argv)} refused: {result.out}{result.err}")
    finished = _wait_run(daemon, office, kind, wall0 - 1, 600)
    if not finished.get("ok"):
        raise RuntimeError(f"the {kind} of {office} failed: {finished.get('detail')}")
    tap1, t1 = world.tap.snapshot(), time.monotonic()
    minutes = (t1 - t0) / 60
    extra = Tally()
    for vantage in VANTAGES:
        spent = (tap1[vantage] - tap0[vantage]) - rest[vantage].scaled(minutes)
        extra.requests.update(spent.requests)
        extra.up += spent.up
        extra.down += spent.down
    per = extra.scaled(1 / devices)
    say(
        f"  {kind} of {office} ({devices} devices) on {leader}: {t1 - t0:.1f} s, ok={finished.get('ok')}; "
        f"beyond rest, all vantages: {extra.total:.0f} requests, {kib(extra.up)} sent, "
        f"{kib(extra.down)} received; per device: {per.total:.1f} requests "
        f"({', '.join(f'{k} {v:.1f}' for k, v in sorted(per.requests.items()) if abs(v) >= 0.05)}), "
        f"{kib(per.up)} sent, {kib(per.down)} received"
    )
    return per, t1 - t0, bool(finished.get("ok"))


def _attempt(
    world: World, rest: Mapping[str, Tally], kind: str, office: str, k: int, tries: int = 2
) -> Tally | None:
    """One handover or handback, tried again (`tries` in all) if it failed: a failed run is
    rolled back, so the office is set back by hand (`baton resolve`) first."""
    devices = world.devices_per_office
    for attempt in range(1, tries + 1):
        try:
            per, _, _ = run_traffic(
                world, rest, (kind, office, "--reason", f"bench {k} try {attempt}"), office, kind, devices
            )
            return per
        except RuntimeError as exc:
            say(f"  {kind} {k} try {attempt} FAILED: {exc}")
            lead = world.daemons[world.leader()]
            lead.wait_phase(office, "FAILED", 120)
            back = ("--phase", "OPEN") if kind == "handover" else ("--phase", "HANDED_OVER")
            to = () if kind == "handover" else ("--to", world.alternates[office])
            lead.cli("resolve", office, *back, *to, "--reason", "bench: the run rolled back", "--yes")
    return None


def handovers(world: World, count: int, rest: Mapping[str, Tally]) -> list[tuple[str, Tally]]:
    office = world.offices[0]
    found: list[tuple[str, Tally]] = []
    for k in range(1, count + 1):
        say(f"handover {k}/{count}:")
        per = _attempt(world, rest, "handover", office, k)
        if per is None:
            continue
        found.append(("handover", per))
        daemon = world.daemons[world.leader()]
        daemon.wait_phase(office, "HANDED_OVER", 120)
        per = _attempt(world, rest, "handback", office, k)
        if per is not None:
            found.append(("handback", per))
        daemon.wait_phase(office, "OPEN", 120)
    return found


# --- power failures: majority dark -> handover started ---------------------------------------------


@dataclass
class Failure:
    office: str
    down_at: dict[str, float]  # vantage -> its monitor's office DOWN
    majority_s: float  # power off -> the second vantage's DOWN
    suspect_s: float  # power off -> the leader's SUSPECT decision
    started_s: float  # power off -> the leader's run.started
    leader: str

    @property
    def to_start_s(self) -> float:
        return self.started_s - self.majority_s


def _first_after(events: list[dict[str, Any]], after: float) -> float | None:
    times = sorted(t for e in events if (t := event_time(e)) >= after)
    return times[0] if times else None


def power_failure(world: World, office: str, timeout_s: float) -> Failure:
    leader = world.leader()
    lead = world.daemons[leader]
    at = time.time()
    world.lab_of[office]("power_off", office=office)

    def started() -> float | None:
        runs = [
            e
            for e in events(lead, "run.started")
            if e.get("office") == office and e.get("kind") == "handover"
        ]
        return _first_after(runs, at)

    run_at = wait_for(started, timeout_s, f"the handover of {office} started on {leader}", interval_s=0.2)
    down_at: dict[str, float] = {}
    for vantage, daemon in world.daemons.items():
        downs = [
            e
            for e in events(daemon, "monitor.office_verdict_changed")
            if e.get("office") == office and e.get("verdict") == "DOWN"
        ]
        when = _first_after(downs, at)
        if when is not None:
            down_at[vantage] = when
    quorum = len(VANTAGES) // 2 + 1
    ordered = sorted(down_at.values())
    if len(ordered) < quorum:
        raise RuntimeError(f"only {len(ordered)} vantages logged {office} DOWN, yet the run started")
    decisions = [
        e
        for e in events(lead, "decision")
        if office in (e.get("offices") or [])
        and e.get("trigger") == "RoundObserved"
        and "SUSPECT" in str(e.get("reason"))
    ]
    suspect = _first_after(decisions, at)
    failure = Failure(
        office,
        {v: t - at for v, t in down_at.items()},
        ordered[quorum - 1] - at,
        (suspect or run_at) - at,
        run_at - at,
        leader,
    )
    say(
        f"  {office}: DOWN seen by "
        + ", ".join(f"{v} +{t:.1f} s" for v, t in sorted(failure.down_at.items(), key=lambda x: x[1]))
        + f"; majority +{failure.majority_s:.1f} s; leader {leader} SUSPECT +{failure.suspect_s:.1f} s, "
        f"run.started +{failure.started_s:.1f} s: majority -> handover started {failure.to_start_s:.1f} s"
    )
    return failure


def restore(world: World, office: str, timeout_s: float) -> None:
    """Power back, then handed back (which stops a catch-up of the pending devices first):
    OPEN and HEALTHY again, every device as before."""
    world.lab_of[office]("power_on", office=office)
    lead = world.daemons[world.leader()]
    wait_for(lambda: lead.office(office)["verdict"] == "HEALTHY", timeout_s, f"{office} healthy", 1.0)
    if lead.office(office)["phase"] != "OPEN":
        result = lead.cli("handback", office, "--reason", "bench: power back", "--yes")
        if result.code != 0:
            raise RuntimeError(f"handback of {office} refused: {result.out}{result.err}")
    lead.wait_phase(office, "OPEN", timeout_s)


def power_failures(world: World, count: int, timeout_s: float) -> list[Failure]:
    candidates = [o for o in world.offices[2:] if o in world.alternates] or world.offices[:1]
    if count > len(candidates) and float(world.policy.get("anti_flap_block_s", 0)) > 60:
        raise SystemExit(
            f"--power-failures {count}: only {len(candidates)} offices to fail once each, and the "
            f"policy's anti_flap_block_s ({world.policy['anti_flap_block_s']}) blocks a second "
            "automatic handover of the same office: add offices or use --policy fast"
        )
    # The storm guard counts the offices going DOWN within storm_window_s: no more than `limit`
    # of these failures fall in one window, or the guard (rightly) holds the next one back.
    window = float(world.policy.get("storm_window_s", 120))
    most, ratio, total = (
        int(world.policy.get("storm_max_offices", 2)),
        float(world.policy.get("storm_max_ratio", 0.25)),
        len(world.offices),
    )
    limit = 1  # as core.machine._is_storm: count > most, or count >= 2 and count / total > ratio
    while not (limit + 1 > most or (limit + 1 >= 2 and (limit + 1) / total > ratio)):
        limit += 1
    found = []
    offs: list[float] = []
    for k in range(count):
        office = candidates[k % len(candidates)]
        if len(offs) >= limit:
            wait_s = offs[-limit] + window + 5 - time.monotonic()
            if wait_s > 0:
                say(f"  waiting {wait_s:.0f} s: at most {limit} offices DOWN per {window:g} s (storm guard)")
                time.sleep(wait_s)
        offs.append(time.monotonic())
        say(
            f"power failure {k + 1}/{count}: {office} (alternate {world.alternates.get(office)}), "
            f"load {load()}"
        )
        found.append(power_failure(world, office, timeout_s))
        restore(world, office, timeout_s)
    return found


# --- kills: takeover after the leader's death ------------------------------------------------------


def _held_at(daemon: Daemon, after: float) -> float | None:
    """Wall time of the first `lease.changed held` this vantage logged after `after`."""
    for event in events(daemon, "lease.changed", held=True):
        at = event_time(event)
        if at >= after:
            return at
    return None


def kill_leader(world: World, timeout_s: float) -> tuple[str, str, float]:
    """SIGKILL the leader; who leads next and after how long; the killed one back as a follower."""
    old = world.leader()
    killed_at = time.time()
    world.daemons[old].kill()
    new = world.leader(timeout_s, besides=old)
    held = wait_for(lambda: _held_at(world.daemons[new], killed_at), timeout_s, "its lease.changed")
    world.daemons[old].spawn()
    wait_for(lambda: world.daemons[old].cli("status").code == 0, timeout_s, f"{old} back")
    return old, new, held - killed_at


# --- main ------------------------------------------------------------------------------------------


def code_version() -> str:
    head = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    )
    dirty = subprocess.run(
        ["git", "-C", str(ROOT), "status", "--porcelain", "--", "daemon"], capture_output=True, text=True
    )
    changed = [line[3:] for line in dirty.stdout.splitlines()]
    return head.stdout.strip() + (f" + uncommitted {', '.join(changed)}" if changed else "")


def summary(values: Sequence[float]) -> str:
    return f"median {statistics.median(values):.1f} s, min {min(values):.1f} s, max {max(values):.1f} s"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--offices", type=int, default=2)
    parser.add_argument(
        "--labs", type=int, choices=(1, 2), default=1, help="2: the 8 built-in offices in 2 processes"
    )
    parser.add_argument("--devices-per-office", type=int, default=3)
    parser.add_argument("--policy", choices=("fast", "example"), default="fast")
    parser.add_argument("--kills", type=int, default=10)
    parser.add_argument("--handovers", type=int, default=0, help="declared handovers (+ handbacks)")
    parser.add_argument(
        "--snmp-v2c", action="store_true", help="poll the Seoul offices with v2c too (the lab's CPU)"
    )
    parser.add_argument("--concurrency", type=int, default=0, help="the playbooks' (default: as shipped, 4)")
    parser.add_argument("--power-failures", type=int, default=0)
    parser.add_argument("--lease", type=float, default=3.0, help="etcd.lease_ttl_s")
    parser.add_argument("--request-timeout", type=float, default=0.5, help="etcd.request_timeout_s")
    parser.add_argument("--quiet-s", type=float, default=60.0, help="how long traffic at rest is counted")
    parser.add_argument("--start-timeout", type=float, default=300.0)
    parser.add_argument("--settle-s", type=float, default=120.0, help="at most, after the start")
    parser.add_argument(
        "--netconf-timeout", type=float, default=10.0, help="the devices' NETCONF/SSH timeout_s"
    )
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--serve-tap", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_tap:
        return serve_tap(args.serve_tap)
    base = Path(tempfile.mkdtemp(prefix="baton-takeover-", dir=args.workdir))
    say(f"code {code_version()}; workdir {base}; load {load()}")
    took: list[float] = []
    failures: list[Failure] = []
    moved: list[tuple[str, Tally]] = []
    with world_running(args, base) as world:
        say(f"policy: {world.policy}")
        rest = at_rest(world, args.quiet_s)
        if args.handovers:
            moved = handovers(world, args.handovers, rest)
        if args.power_failures:
            failures = power_failures(world, args.power_failures, 600.0)
        for k in range(args.kills):
            old, new, seconds = kill_leader(world, 120.0)
            took.append(seconds)
            say(f"kill {k + 1}: {old} killed, {new} leads after {seconds:.2f} s")
    for kind in ("handover", "handback"):
        runs = [t for k, t in moved if k == kind]
        if runs:
            say(
                f"{kind} of {world.devices_per_office} devices, etcd traffic per device (beyond rest, all "
                f"vantages), {len(runs)} runs: requests "
                f"{statistics.median(t.total for t in runs):.1f}, sent "
                f"{kib(statistics.median(t.up for t in runs))}, received "
                f"{kib(statistics.median(t.down for t in runs))} (medians)"
            )
    if failures:
        policy = world.policy
        say(
            f"power failures, {len(failures)}: majority sees DOWN after power-off: "
            f"{summary([f.majority_s for f in failures])}; majority DOWN -> run.started on the leader: "
            f"{summary([f.to_start_s for f in failures])} (poll {policy.get('poll_interval_s')} s, "
            f"failures_to_down {policy.get('failures_to_down')}, hold_down {policy.get('hold_down_s')} s); "
            f"majority DOWN -> leader's SUSPECT: {summary([f.suspect_s - f.majority_s for f in failures])}"
        )
    if took:
        say(
            f"takeover after SIGKILL of the leader (lease {args.lease:g} s, request timeout "
            f"{args.request_timeout:g} s), {len(took)} kills: median {statistics.median(took):.2f} s, "
            f"min {min(took):.2f} s, max {max(took):.2f} s"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
