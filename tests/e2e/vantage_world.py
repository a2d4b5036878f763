"""The world of the vantage e2e tests (tests/e2e/test_vantage*.py): three Baton vantages over a
real three-member etcd, watching one lab of two offices.

`vantages_running(base, prefix=...)` starts the lab (the OLTs critical, as in the demo: a power
cut closes the office, and the handover changes the routers on their UPS), a three-member etcd
and one daemon per vantage (the lab traps to v1; the others poll only), yields them, stops
everything, and fails the module if any vantage leaked a secret. `VantageWorld` reads what each
vantage says as an operator would: `baton status --json`.
"""

from __future__ import annotations

import contextlib
import re
import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.e2e.harness import (
    Daemon,
    LabProcess,
    find_secrets,
    free_port,
    leak_report,
    start_together,
    stop_all,
    vantage_config,
    wait_for,
)
from tests.peers.etcd import EtcdCluster, etcd_cluster_running

OFFICE = "seoul-geumcheon"
ALTERNATE = "seoul-bangbae"
ROUTER = f"{OFFICE}-core1"  # on its UPS: a power cut leaves it up, and the handover changes it
VANTAGES = ("v1", "v2", "v3")
LEASE_TTL_S = 3.0
REQUEST_TIMEOUT_S = 0.5
TIMEOUT_S = 60.0
EPOCH = re.compile(r"<epoch>(\d+)</epoch>")


@dataclass
class VantageWorld:
    lab: LabProcess
    etcd: EtcdCluster
    daemons: dict[str, Daemon]

    def status(self, vantage: str) -> dict[str, Any] | None:
        daemon = self.daemons[vantage]
        if not daemon.running:
            return None
        result = daemon.cli("status", "--json")
        return result.json() if result.code == 0 else None

    def leadership(self, vantage: str) -> dict[str, Any]:
        status = self.status(vantage)
        assert status is not None, f"{vantage} does not answer"
        found: dict[str, Any] = status["daemon"]["leadership"]
        return found

    def epoch(self, vantage: str) -> int:
        return int(self.leadership(vantage)["epoch"])

    def leading(self, vantage: str) -> bool:
        status = self.status(vantage)
        return status is not None and bool(status["daemon"]["leadership"]["held"])

    def leaders(self) -> list[str]:
        return [vantage for vantage in VANTAGES if self.leading(vantage)]

    def leader(self, *, besides: str | None = None) -> str:
        def one() -> str | None:
            leaders = [v for v in self.leaders() if v != besides]
            return leaders[0] if len(leaders) == 1 else None

        return wait_for(one, TIMEOUT_S, "exactly one vantage leading")

    def handed_over(self, *devices: str) -> bool:
        return all(ALTERNATE in {e["name"] for e in self.lab.mgmt(d)["acl"]} for d in devices or (ROUTER,))


@contextlib.contextmanager
def vantages_running(
    base: Path,
    *,
    prefix: str,
    critical_olts: bool = True,
    peer_token: bool = False,
    make_daemon: Callable[[str, Path, Path], Daemon] | None = None,
    start: bool = True,
) -> Iterator[tuple[LabProcess, EtcdCluster, dict[str, Daemon]]]:
    """The lab, the etcd cluster and the vantages' daemons (`make_daemon(vantage, config, log_dir)`,
    a plain `Daemon` by default), started together unless `start` is false. `peer_token`: the
    vantages share a credential (api.peer_token) to forward commands with, found nowhere after."""
    lab = LabProcess(base / "lab", f"{OFFICE},{ALTERNATE}", 3)
    daemons: dict[str, Daemon] = {}
    token = base / "peer-token"
    if peer_token:
        token.write_text(secrets.token_urlsafe(24) + "\n")
        token.chmod(0o600)
    try:
        lab.start()
        lab.configure()
        if critical_olts:
            groups_path = lab.dir / "inventory" / "groups.yaml"
            groups = yaml.safe_load(groups_path.read_text())
            groups["groups"]["olt"]["critical"] = True
            groups_path.write_text(yaml.safe_dump(groups, sort_keys=False))
        with etcd_cluster_running(base / "etcd") as cluster:
            try:
                for i, vantage in enumerate(VANTAGES):
                    path = vantage_config(
                        lab,
                        vantage,
                        VANTAGES,
                        list(cluster.endpoints),
                        ALTERNATE,
                        lab.trap_port if i == 0 else free_port(),
                        prefix=prefix,
                        lease_ttl_s=LEASE_TTL_S,
                        request_timeout_s=REQUEST_TIMEOUT_S,
                        peer_token=token if peer_token else None,
                    )
                    log_dir = base / vantage
                    log_dir.mkdir()
                    daemons[vantage] = (
                        make_daemon(vantage, path, log_dir) if make_daemon else Daemon(path, log_dir)
                    )
                if start:
                    start_together(daemons, TIMEOUT_S)
                yield lab, cluster, daemons
            finally:
                stop_all(daemons)
    finally:
        lab.stop()
    leaks = [leak for daemon in daemons.values() for leak in leak_report(lab.dir, daemon)]
    if peer_token:  # the vantages' credential: in no log line, journal row or audit row of any vantage
        for daemon in daemons.values():
            texts = {str(log): log.read_text(errors="replace") for log in daemon.logs if log.exists()}
            texts["journal"] = daemon.journal.dump()
            leaks += find_secrets({"api.peer_token": token.read_text().strip()}, texts)
    if leaks:
        pytest.fail("secrets leaked: " + "; ".join(leaks), pytrace=False)
