"""Takeover after the leader's death, and etcd traffic per vantage: three real `baton daemon`
processes over a real three-member etcd, watching one lab.

    .venv/bin/python bench/takeover.py                  # 10 kills, lease 3 s
    .venv/bin/python bench/takeover.py --kills 20 --lease 10 --request-timeout 2

What it does. The world of `tests/e2e/test_vantages.py` (its fixtures' pieces): a lab with two
offices, an etcd cluster of three members on loopback, three vantages v1..v3 with the lease and
request timeout given. Then `--kills` times: the leading vantage (the one whose `baton status`
says it holds the lease) gets SIGKILL at wall time T0; the takeover time is from T0 to the
`lease.changed` event with `held: true` that a surviving vantage logs (its own timestamp), and the
killed one is started again (a follower) before the next kill. Before the kills, etcd's own
counters (`grpc_server_handled_total`, `etcd_network_client_grpc_received_bytes_total` on every
member's /metrics) are read over a quiet minute: requests and bytes per vantage per minute.

Every process started here is stopped at the end, also on Ctrl-C; everything is on 127.0.0.0/8.
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
import tempfile
import time
import urllib.request
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "daemon"))
sys.path.insert(1, str(ROOT))

import yaml  # noqa: E402
from tests.e2e.harness import (  # noqa: E402
    Daemon,
    LabProcess,
    free_port,
    start_together,
    stop_all,
    vantage_config,
    wait_for,
)
from tests.peers.etcd import EtcdCluster, etcd_cluster_running  # noqa: E402

OFFICE, ALTERNATE = "seoul-geumcheon", "seoul-bangbae"
VANTAGES = ("v1", "v2", "v3")
TIMEOUT_S = 60.0
_COUNTERS = re.compile(
    r"^(grpc_server_handled_total|etcd_network_client_grpc_received_bytes_total)(\{[^}]*\})? (\S+)$", re.M
)


def _leaders(daemons: dict[str, Daemon]) -> list[str]:
    found = []
    for vantage, daemon in daemons.items():
        if not daemon.running:
            continue
        result = daemon.cli("status", "--json")
        if result.code == 0 and result.json()["daemon"]["leadership"]["held"]:
            found.append(vantage)
    return found


def _one_leader(daemons: dict[str, Daemon]) -> str:
    def one() -> str | None:
        leaders = _leaders(daemons)
        return leaders[0] if len(leaders) == 1 else None

    return wait_for(one, TIMEOUT_S, "exactly one vantage leading")


def _etcd_counters(cluster: EtcdCluster) -> tuple[float, float]:
    requests = received = 0.0
    for endpoint in cluster.endpoints:
        assert endpoint.startswith("http"), endpoint
        with urllib.request.urlopen(f"{endpoint}/metrics", timeout=5) as answer:  # noqa: S310
            text = answer.read().decode()
        for name, _labels, value in _COUNTERS.findall(text):
            if name == "grpc_server_handled_total":
                requests += float(value)
            else:
                received += float(value)
    return requests, received


def _held_at(daemon: Daemon, after: float) -> float | None:
    """Wall time of the first `lease.changed held` this vantage logged after `after`."""
    for event in daemon.events("lease.changed", held=True):
        at = datetime.fromisoformat(event["timestamp"].replace("Z", "+00:00")).timestamp()
        if at >= after:
            return at
    return None


def _kill_leader(daemons: dict[str, Daemon]) -> tuple[str, str, float]:
    """SIGKILL the leader; who leads next and after how long; the killed one back as a follower."""
    old = _one_leader(daemons)
    killed_at = time.time()
    daemons[old].kill()

    def other() -> str | None:
        leaders = _leaders(daemons)
        return leaders[0] if len(leaders) == 1 and leaders[0] != old else None

    new = wait_for(other, TIMEOUT_S, "another vantage leading")
    held = wait_for(lambda: _held_at(daemons[new], killed_at), TIMEOUT_S, "its lease.changed")
    daemons[old].spawn()
    wait_for(lambda: daemons[old].cli("status").code == 0, TIMEOUT_S, f"{old} back")
    return old, new, held - killed_at


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--kills", type=int, default=10)
    parser.add_argument("--lease", type=float, default=3.0, help="etcd.lease_ttl_s")
    parser.add_argument("--request-timeout", type=float, default=0.5, help="etcd.request_timeout_s")
    parser.add_argument("--quiet-s", type=float, default=60.0, help="how long etcd traffic is counted")
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="baton-takeover-"))
    lab = LabProcess(base / "lab", f"{OFFICE},{ALTERNATE}", 3)
    daemons: dict[str, Daemon] = {}
    took: list[float] = []
    try:
        lab.start()
        lab.configure()
        with etcd_cluster_running(base / "etcd") as cluster:
            try:
                for vantage in VANTAGES:
                    path = vantage_config(
                        lab,
                        vantage,
                        VANTAGES,
                        list(cluster.endpoints),
                        ALTERNATE,
                        free_port(),
                        prefix="/baton-bench/",
                        lease_ttl_s=args.lease,
                        request_timeout_s=args.request_timeout,
                    )
                    (base / vantage).mkdir()
                    daemons[vantage] = Daemon(path, base / vantage)
                start_together(daemons, TIMEOUT_S)
                _one_leader(daemons)
                before, started = _etcd_counters(cluster), time.monotonic()
                time.sleep(args.quiet_s)
                after, minutes = _etcd_counters(cluster), (time.monotonic() - started) / 60
                per = len(VANTAGES) * minutes
                policy = yaml.safe_load(daemons["v1"].config_path.read_text()).get("policy") or {}
                print(
                    f"etcd traffic, {len(VANTAGES)} vantages, 2 offices x 3 devices, poll "
                    f"{policy.get('poll_interval_s', 10)} s: "
                    f"{(after[0] - before[0]) / per:.0f} requests and "
                    f"{(after[1] - before[1]) / per / 1024:.1f} KiB received by etcd per vantage per minute"
                )
                for k in range(args.kills):
                    old, new, seconds = _kill_leader(daemons)
                    took.append(seconds)
                    print(f"kill {k + 1}: {old} killed, {new} leads after {seconds:.2f} s", flush=True)
            finally:
                stop_all(daemons)
    finally:
        lab.stop()
    if took:
        print(
            f"takeover after SIGKILL of the leader (lease {args.lease:g} s, request timeout "
            f"{args.request_timeout:g} s), {len(took)} kills: median {statistics.median(took):.2f} s, "
            f"min {min(took):.2f} s, max {max(took):.2f} s"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
