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
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from tests.e2e.harness import wait_for
from tests.e2e.vantage_world import ALTERNATE, OFFICE, TIMEOUT_S, VANTAGES, VantageWorld, vantages_running

pytestmark = pytest.mark.slow

ME = pwd.getpwuid(os.getuid()).pw_name


class World(VantageWorld):
    def leader(self) -> str:  # type: ignore[override]
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


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    base = tmp_path_factory.mktemp("forwarding")
    with vantages_running(base, prefix="/baton-forwarding/", critical_olts=False, peer_token=True) as running:
        yield World(*running)


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
