"""Three Baton vantages over a real three-member etcd, watching one lab: one leads and acts, the
others follow with the same view; the leader killed, paused or cut off from etcd stops acting,
and another finishes the office's story under a greater epoch, which the devices carry.

Everything is read as an operator would: `baton status --json` on each vantage, `/metrics`, the
devices' running configuration from the lab, the journals and the JSON logs.
"""

from __future__ import annotations

import json
import os
import signal
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.e2e.harness import Daemon, wait_for
from tests.e2e.vantage_world import (
    EPOCH,
    LEASE_TTL_S,
    OFFICE,
    ROUTER,
    TIMEOUT_S,
    VANTAGES,
    VantageWorld,
    vantages_running,
)

pytestmark = pytest.mark.slow


class World(VantageWorld):
    def device_epochs(self) -> set[int]:
        epochs = set()
        for device in (ROUTER,):
            found = EPOCH.search(self.lab("show", device=device)["running"])
            epochs.add(int(found.group(1)) if found else 0)
        return epochs


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    # The power fails; the core router runs on its UPS, the rest goes dark (the OLTs count as
    # critical, as in the demo): the office closes, and the handover changes the core router.
    with vantages_running(tmp_path_factory.mktemp("vantages"), prefix="/baton-e2e/") as (lab, etcd, daemons):
        yield World(lab, etcd, daemons)


def _wallboard(daemon: Daemon) -> dict[str, Any]:
    """The wallboard's snapshot, through the vantage's TCP API and its token."""
    config = yaml.safe_load(daemon.config_path.read_text())["api"]
    token = Path(config["tokens"][0].removeprefix("file:")).read_text().strip()
    request = urllib.request.Request(
        f"http://{config['tcp_listen']}/v1/wallboard/snapshot", headers={"Authorization": f"Bearer {token}"}
    )
    with urllib.request.urlopen(request, timeout=10) as answer:  # noqa: S310 (http on loopback)
        snapshot: dict[str, Any] = json.loads(answer.read())
    return snapshot


def _phase(world: World, vantage: str) -> str:
    daemon = world.daemons[vantage]
    return str(daemon.office(OFFICE)["phase"])


def test_one_vantage_leads_and_the_others_name_it(world: World) -> None:
    leader = world.leader()
    seen = set()
    deadline = time.monotonic() + 3.0
    while time.monotonic() < deadline:  # sampled: never two at once
        leaders = world.leaders()
        assert len(leaders) <= 1, leaders
        seen.update(leaders)
    assert {leader} == seen
    for vantage in VANTAGES:
        status = world.status(vantage)
        assert status is not None
        assert leader == status["daemon"]["leadership"]["leader"]
        assert set(VANTAGES) == set(status["daemon"]["leadership"]["vantages"])
    daemon = world.daemons[leader]
    assert 1.0 == daemon.metric("baton_leader")
    assert world.epoch(leader) == daemon.metric("baton_leader_epoch")
    for follower in set(VANTAGES) - {leader}:
        assert 0.0 == world.daemons[follower].metric("baton_leader")
        # A declaration on a follower would be acted on by nobody: refused, naming the leader.
        refused = world.daemons[follower].cli("handover", OFFICE, "--reason", "test", "--yes", "--no-follow")
        assert 0 != refused.code
        assert f"vantage {leader} leads" in refused.out + refused.err
        listens = yaml.safe_load(world.daemons[leader].config_path.read_text())["api"]["tcp_listen"]
        assert f"{leader}'s API listens on {listens}" in refused.out + refused.err
        assert "OPEN" == _phase(world, follower)
        # The follower's wallboard lists the vantages, the leader marked.
        shown = _wallboard(world.daemons[follower])["vantages"]
        assert [(v, v == leader, v == follower) for v in VANTAGES] == [
            (item["id"], item["leader"], item["here"]) for item in shown
        ]


def test_the_leader_hands_over_and_the_devices_carry_its_epoch(world: World) -> None:
    leader = world.leader()
    epoch = world.epoch(leader)
    world.lab("power_off", office=OFFICE, ups=["core"])
    world.daemons[leader].wait_phase(OFFICE, "HANDED_OVER", TIMEOUT_S)
    assert world.handed_over()
    assert {epoch} == world.device_epochs()
    for follower in set(VANTAGES) - {leader}:
        # The leader's view (adopted from etcd), no run, no automation-blocked alert.
        wait_for(lambda f=follower: _phase(world, f) == "HANDED_OVER", TIMEOUT_S, f"{follower} sees it")
        assert not world.daemons[follower].journal.runs(OFFICE)
        alerts = world.daemons[follower].office(OFFICE).get("alerts", [])
        assert "AUTOMATION_BLOCKED" not in {a if isinstance(a, str) else a.get("alert") for a in alerts}
        refused = world.daemons[follower].cli("handback", OFFICE, "--reason", "test", "--yes", "--no-follow")
        assert 0 != refused.code
        assert f"vantage {leader} leads" in refused.out + refused.err


def test_the_leader_killed_another_takes_over_and_hands_back(
    world: World, record_property: Callable[[str, object], None]
) -> None:
    old = world.leader()
    old_epoch = world.epoch(old)
    killed_at = time.monotonic()
    world.daemons[old].kill()
    new = world.leader(besides=old)
    took_s = time.monotonic() - killed_at
    figure = f"takeover after SIGKILL of the leader: {took_s:.2f} s (lease {LEASE_TTL_S:g} s)"
    print(figure)
    record_property("figure", figure)
    assert world.epoch(new) > old_epoch
    # The new leader had adopted the old one's state: HANDED_OVER already, nothing run again
    # (the devices still carry the old epoch), the handback is its own (under its epoch). Its
    # journal holds the old leader's handover as etcd shared it, finished there.
    assert "HANDED_OVER" == _phase(world, new)
    [handover] = world.daemons[new].journal.runs(OFFICE)
    assert ("handover", "ok") == (handover["kind"], handover["result"])
    assert {old_epoch} == world.device_epochs()
    world.lab("power_on", office=OFFICE)
    wait_for(
        lambda: "HEALTHY" == world.daemons[new].office(OFFICE)["verdict"],
        TIMEOUT_S,
        "the office healthy again",
    )
    # The office can read HEALTHY (from the vantages' rounds) a moment before the leader's core
    # sees the pending device answer and starts its catch-up: the handback waits for that run.
    wait_for(
        lambda: any(
            r["id"].startswith("catchup-") and r["result"] == "ok"
            for r in world.daemons[new].journal.runs(OFFICE)
        ),
        TIMEOUT_S,
        "the catch-up of the device the handover left pending",
    )
    handback = world.daemons[new].cli("handback", OFFICE, "--reason", "power is back", "--yes")
    assert 0 == handback.code, handback
    world.daemons[new].wait_phase(OFFICE, "OPEN", TIMEOUT_S)
    assert not any(world.handed_over(d) for d in (ROUTER, f"{OFFICE}-agg1"))
    assert {world.epoch(new)} == world.device_epochs()
    # Its runs after the old leader's handover: the catch-up of the device that handover left
    # pending (it answered once the power was back), then the handback. No second handover.
    runs = world.daemons[new].journal.runs(OFFICE)
    assert [handover["id"]] == [
        r["id"] for r in runs if r["kind"] == "handover" and not r["id"].startswith("catchup-")
    ]
    assert [("handover", True), ("handback", False)] == [
        (r["kind"], r["id"].startswith("catchup-")) for r in runs if r["id"] != handover["id"]
    ]
    world.daemons[old].start(lambda offices: True)  # back as a follower
    wait_for(lambda: world.status(old) is not None, TIMEOUT_S, f"{old} answers")
    assert world.leaders() == [new]


def test_a_pause_given_a_moment_before_the_leader_dies_survives_the_takeover(world: World) -> None:
    """The leader publishes its state right after each decision, not at the next round: the
    operator's pause, given to the leader just before it is killed, is what the next leader
    starts from (it does not hand offices over that the operator had stopped it for)."""
    old = world.leader()
    paused = world.daemons[old].cli("pause", "--reason", "maintenance window")
    assert 0 == paused.code, paused
    world.daemons[old].kill()
    new = world.leader(besides=old)
    status = world.status(new)
    assert status is not None
    assert status["paused"] is True
    resumed = world.daemons[new].cli("resume", "--reason", "maintenance over")
    assert 0 == resumed.code, resumed
    world.daemons[old].start(lambda offices: True)  # back as a follower
    wait_for(
        lambda: (s := world.status(old)) is not None and s["paused"] is False, TIMEOUT_S, f"{old} resumed"
    )


def test_a_paused_leader_does_not_act_when_it_wakes(world: World) -> None:
    old = world.leader()
    daemon = world.daemons[old]
    assert daemon.process is not None
    assert daemon.process.pid is not None
    os.kill(daemon.process.pid, signal.SIGSTOP)
    try:
        new = world.leader(besides=old)
        assert new != old
    finally:
        os.kill(daemon.process.pid, signal.SIGCONT)
    woke = time.monotonic()
    lost = wait_for(lambda: daemon.events("leadership.lost"), TIMEOUT_S, f"{old} says it lost the lease")
    print(f"paused leader: leadership.lost {time.monotonic() - woke:.2f} s after SIGCONT ({lost[-1]['why']})")
    wait_for(lambda: world.leaders() == [new], TIMEOUT_S, f"only {new} leads")


def test_one_etcd_member_killed_interrupts_nothing(world: World) -> None:
    """A member that is not etcd's raft leader: the vantages' requests go to the members that
    answer; the same vantage leads throughout, under the same epoch."""
    leader = world.leader()
    epoch = world.epoch(leader)
    member = world.etcd.raft_followers()[0]
    member.kill()
    try:
        watched_until = time.monotonic() + 3 * LEASE_TTL_S
        while time.monotonic() < watched_until:
            assert [leader] == world.leaders()
            assert epoch == world.epoch(leader)
            time.sleep(0.2)
    finally:
        member.spawn()
        world.etcd.wait_healthy()
    assert [leader] == world.leaders()


def test_etcds_raft_leader_killed_never_two_leaders(world: World) -> None:
    """etcd elects another raft leader (the test cluster's election timeout is 1 s) and keeps
    every lease alive, but for that while no keepalive is answered. With a 3 s lease, a
    keepalive every 1 s and a 0.5 s margin, a vantage may reach its deadline first: it stops
    leading, as it must, and leads again at once under a new epoch. Never two leaders; a leader
    again within a TTL. (With the default 10 s lease nothing is interrupted.)"""
    leader = world.leader()
    epoch = world.epoch(leader)
    member = world.etcd.raft_leader()
    member.kill()
    killed = time.monotonic()
    try:
        while time.monotonic() < killed + 3 * LEASE_TTL_S:
            assert len(world.leaders()) <= 1
            time.sleep(0.2)
    finally:
        member.spawn()
        world.etcd.wait_healthy()
    back = world.leader()
    print(f"etcd raft leader killed: {leader} epoch {epoch} -> {back} epoch {world.epoch(back)}")


def test_without_etcd_nobody_acts_and_a_leader_returns_with_it(world: World) -> None:
    leader = world.leader()
    epoch = world.epoch(leader)
    phases = {vantage: _phase(world, vantage) for vantage in VANTAGES}
    stopped = time.monotonic()
    for member in world.etcd.members:
        member.terminate()
    for member in world.etcd.members:
        member.stop()
    wait_for(lambda: not world.leaders(), LEASE_TTL_S + 10, "no vantage leading")
    print(f"all etcd members down: no leader after {time.monotonic() - stopped:.2f} s")

    def everyone_says_why() -> bool:
        said = [world.status(v) for v in VANTAGES]
        return all(s is not None and "etcd unreachable" in s["daemon"]["leadership"]["reason"] for s in said)

    wait_for(everyone_says_why, LEASE_TTL_S + 10, "every vantage saying etcd is unreachable")
    for member in world.etcd.members:
        member.spawn()  # together: a member alone has no quorum to be healthy with
    world.etcd.wait_healthy()
    back = world.leader()
    assert world.epoch(back) > epoch
    # The whole cluster restarted: the state comes back (etcd's data, the vantages' journals).
    for vantage in VANTAGES:
        wait_for(lambda v=vantage: _phase(world, v) == phases[v], TIMEOUT_S, f"{vantage} as before")
