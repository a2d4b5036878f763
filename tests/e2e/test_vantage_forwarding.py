"""Three Baton vantages over a real three-member etcd, watching one lab, sharing the vantages'
credential (api.peer_token): an operator's command given on a follower is forwarded to the
leader, carried out there and journaled there as that operator's, via the follower; every
vantage then shows it. A handover declared on a follower is followed to its end from the leader.

Everything is done as an operator would: `baton` on each vantage's unix socket, the devices'
configuration from the lab, each vantage's audit trail (`baton audit --json`).
"""

from __future__ import annotations

import json
import os
import pwd
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
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

pytestmark = pytest.mark.slow

OFFICE = "seoul-geumcheon"
ALTERNATE = "seoul-bangbae"
VANTAGES = ("v1", "v2", "v3")
LEASE_TTL_S = 3.0
REQUEST_TIMEOUT_S = 0.5
TIMEOUT_S = 60.0
ROUTER = f"{OFFICE}-core1"
ME = pwd.getpwuid(os.getuid()).pw_name


@dataclass
class World:
    lab: LabProcess
    etcd: EtcdCluster
    daemons: dict[str, Daemon]

    def status(self, vantage: str) -> dict[str, Any] | None:
        result = self.daemons[vantage].cli("status", "--json")
        return result.json() if result.code == 0 else None

    def leader(self) -> str:
        def one() -> str | None:
            held = [v for v in VANTAGES if (s := self.status(v)) and s["daemon"]["leadership"]["held"]]
            # ...and every vantage names it (a follower forwards to the leader it knows).
            named = {
                (s or {}).get("daemon", {}).get("leadership", {}).get("leader")
                for s in map(self.status, VANTAGES)
            }
            return held[0] if len(held) == 1 and named == {held[0]} else None

        return wait_for(one, TIMEOUT_S, "one vantage leading, named by all")

    def address(self, vantage: str) -> str:
        return str(yaml.safe_load(self.daemons[vantage].config_path.read_text())["api"]["tcp_listen"])

    def audit(self, vantage: str) -> list[dict[str, Any]]:
        result = self.daemons[vantage].cli("audit", "--json")
        assert 0 == result.code, result
        return [json.loads(line) for line in result.out.splitlines() if line.strip()]

    def commands(self, vantage: str, what: str) -> list[dict[str, Any]]:
        return [r for r in self.audit(vantage) if r["kind"] == "command" and r["what"] == what]

    def every_vantage(self, check: Any, what: str) -> None:
        for vantage in VANTAGES:
            wait_for(lambda v=vantage: check(self.status(v)), TIMEOUT_S, f"{vantage}: {what}")

    def phase_everywhere(self, phase: str) -> None:
        for vantage in VANTAGES:
            wait_for(
                lambda v=vantage: self.daemons[v].office(OFFICE)["phase"] == phase,
                TIMEOUT_S,
                f"{vantage} shows {OFFICE} {phase}",
            )

    def handed_over(self) -> bool:
        return ALTERNATE in {e["name"] for e in self.lab.mgmt(ROUTER)["acl"]}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    base = tmp_path_factory.mktemp("forwarding")
    lab = LabProcess(base / "lab", f"{OFFICE},{ALTERNATE}", 3)
    daemons: dict[str, Daemon] = {}
    peer_token = base / "peer-token"
    peer_token.write_text(secrets.token_urlsafe(24) + "\n")
    peer_token.chmod(0o600)
    try:
        lab.start()
        lab.configure()
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
                        prefix="/baton-forwarding/",
                        lease_ttl_s=LEASE_TTL_S,
                        request_timeout_s=REQUEST_TIMEOUT_S,
                        peer_token=peer_token,
                    )
                    log_dir = base / vantage
                    log_dir.mkdir()
                    daemons[vantage] = Daemon(path, log_dir)
                start_together(daemons, TIMEOUT_S)
                yield World(lab, cluster, daemons)
            finally:
                stop_all(daemons)
    finally:
        lab.stop()
    leaks = [leak for daemon in daemons.values() for leak in leak_report(lab.dir, daemon)]
    # The vantages' credential: in no log line, journal row or audit row of any vantage.
    for daemon in daemons.values():
        texts = {str(log): log.read_text(errors="replace") for log in daemon.logs if log.exists()}
        texts["journal"] = daemon.journal.dump()
        leaks += find_secrets({"api.peer_token": peer_token.read_text().strip()}, texts)
    if leaks:
        pytest.fail("secrets leaked: " + "; ".join(leaks), pytrace=False)


def test_pause_and_resume_on_followers_take_effect_on_the_leader_and_show_everywhere(world: World) -> None:
    leader = world.leader()
    first, second = (v for v in VANTAGES if v != leader)

    paused = world.daemons[first].cli("pause", "--reason", "core router swap tonight")
    assert 0 == paused.code, paused
    assert f"forwarded to leader {leader} at {world.address(leader)}: automation paused by {ME}" in paused.out
    world.every_vantage(lambda s: s is not None and s["paused"], "paused")
    [row] = world.commands(leader, "pause")
    assert (ME, "core router swap tonight", first, True) == (
        row["who"],
        row["reason"],
        row["detail"]["args"]["via"],
        row["detail"]["accepted"],
    )
    assert [] == world.commands(first, "pause")  # decided by the leader, not here

    resumed = world.daemons[second].cli("resume", "--reason", "swap done")
    assert 0 == resumed.code, resumed
    assert f"forwarded to leader {leader}" in resumed.out
    world.every_vantage(lambda s: s is not None and not s["paused"], "resumed")
    assert [second] == [r["detail"]["args"]["via"] for r in world.commands(leader, "resume")]


def test_a_handover_declared_on_a_follower_is_run_by_the_leader_and_followed_to_its_end(world: World) -> None:
    leader = world.leader()
    first, second = (v for v in VANTAGES if v != leader)

    declared = world.daemons[first].cli("handover", OFFICE, "--reason", "planned works", "--yes")
    assert 0 == declared.code, declared  # the run was followed (read from the leader) and ended ok
    assert f"forwarded to leader {leader}" in declared.out
    assert f"handover of {OFFICE} to {ALTERNATE}: ok" in declared.out
    assert world.handed_over()
    world.phase_everywhere("HANDED_OVER")
    assert [OFFICE] == [r["office"] for r in world.daemons[leader].journal.runs(OFFICE)]
    assert [] == world.daemons[first].journal.runs(OFFICE)
    [row] = world.commands(leader, "handover")
    assert (ME, first) == (row["who"], row["detail"]["args"]["via"])

    back = world.daemons[second].cli("handback", OFFICE, "--reason", "works done", "--yes")
    assert 0 == back.code, back
    assert f"handback of {OFFICE} from {ALTERNATE}: ok" in back.out
    assert not world.handed_over()
    world.phase_everywhere("OPEN")
    assert [] == world.daemons[second].journal.runs(OFFICE)


def test_a_follower_reads_its_own_view(world: World) -> None:
    """Reads are not forwarded: each vantage answers `baton status` itself, naming itself."""
    leader = world.leader()
    for vantage in VANTAGES:
        status = world.status(vantage)
        assert status is not None
        assert (vantage, leader) == (status["vantage"], status["daemon"]["leadership"]["leader"])
