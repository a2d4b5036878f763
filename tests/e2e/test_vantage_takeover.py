"""Takeover mid-run: the leading vantage dies (SIGKILL) in the middle of a handover, and another
finishes that run — the same run, from the records etcd holds — within the lease TTL plus its
recovery, once.

Three Baton daemons over a real three-member etcd watch one lab. The first to start leads; it
runs under `tests.e2e.crashing_daemon`, which SIGKILLs it at a chosen journal write of the run:

* at the journal write after "forward" (every device passed verify, the decision journaled and
  shared, no confirm sent yet): the new leader confirms the pending commits with the run's
  persist id, from its own sessions: the office is handed over, by that one run;
* right after it journaled "forward" but before that decision reached etcd: the old leader never
  acted on it, and the new leader rolls the run back (<cancel-commit> with the persist id):
  every device as before, the office FAILED for an operator. (Right before the decision is the
  same story: the crash campaign covers each write on one vantage.)

What is checked is what an operator and the devices say: the phase on every vantage, the runs in
the new leader's journal, the router's running configuration and pending commit in the lab.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.harness import Daemon, start_together, wait_for
from tests.e2e.test_crash_campaign import CrashingDaemon
from tests.e2e.vantage_world import (
    ALTERNATE,
    EPOCH,
    LEASE_TTL_S,
    OFFICE,
    ROUTER,
    VANTAGES,
    VantageWorld,
    vantages_running,
)

pytestmark = pytest.mark.slow

TIMEOUT_S = 90.0


@dataclass
class World(VantageWorld):
    original: str  # the router's running configuration before any run (epoch leaf left out)
    at_death: dict[str, Any] = field(default_factory=dict)  # the router as the leader died

    def router(self) -> dict[str, Any]:
        shown: dict[str, Any] = self.lab("show", device=ROUTER)
        shown["running"] = EPOCH.sub("", shown["running"])
        return shown


def _world(base: Path, crash_at: str) -> Iterator[World]:
    def make_daemon(vantage: str, path: Path, log_dir: Path) -> Daemon:
        if vantage == "v1":
            return CrashingDaemon(path, log_dir, env={"BATON_CRASH_AT": crash_at})
        return Daemon(path, log_dir)

    with vantages_running(base, prefix="/baton-takeover/", make_daemon=make_daemon, start=False) as running:
        lab, _, daemons = running
        world = World(*running, EPOCH.sub("", lab("show", device=ROUTER)["running"]))
        # v1 first, alone: it leads; then the others follow.
        start_together({"v1": daemons["v1"]}, TIMEOUT_S)
        wait_for(lambda: world.leading("v1"), TIMEOUT_S, "v1 leads")
        start_together({v: daemons[v] for v in VANTAGES[1:]}, TIMEOUT_S)
        yield world


@pytest.fixture
def after_forward(tmp_path: Path) -> Iterator[World]:
    yield from _world(tmp_path, "before:decide+1")


@pytest.fixture
def forward_not_shared(tmp_path: Path) -> Iterator[World]:
    yield from _world(tmp_path, "after:decide")


def _leader_killed_mid_run(world: World) -> tuple[str, str, float]:
    """Close the office; v1 dies in its handover. The run's id, the new leader, how long it took."""
    leader = world.daemons["v1"]
    leader.signal(signal.SIGUSR1)  # arm the crash hook
    world.lab("power_off", office=OFFICE, ups=["core"])
    assert isinstance(leader, CrashingDaemon)
    wait_for(leader.exited, TIMEOUT_S, "v1 killed in the middle of its handover")
    died = time.monotonic()
    # Read now: the next leader may finish the run a moment after it takes the lease.
    world.at_death = world.router()
    runs = leader.journal.runs(OFFICE)
    assert 1 == len(runs), runs
    assert runs[0]["finished"] is None  # v1 died with its run unfinished
    new = wait_for(
        lambda: next((v for v in VANTAGES[1:] if world.leading(v)), None), TIMEOUT_S, "a new leader"
    )
    return str(runs[0]["id"]), new, died


def _the_same_run_finished_once(world: World, new: str, run_id: str, result: str) -> None:
    runs = world.daemons[new].journal.runs(OFFICE)
    assert [(run_id, result)] == [(r["id"], r["result"]) for r in runs], runs
    other = next(v for v in VANTAGES[1:] if v != new)
    assert not world.daemons[other].journal.runs(OFFICE)  # the follower ran nothing


def test_the_leader_killed_after_forward_the_new_leader_completes_the_handover(
    after_forward: World, record_property: Callable[[str, object], None]
) -> None:
    world = after_forward
    run_id, new, died = _leader_killed_mid_run(world)
    assert world.at_death["confirm_pending"]  # v1 died between its decision and the confirms
    world.daemons[new].wait_phase(OFFICE, "HANDED_OVER", TIMEOUT_S)
    took_s = time.monotonic() - died
    figure = f"takeover mid-run: handed over {took_s:.2f} s after SIGKILL (lease {LEASE_TTL_S:g} s)"
    print(figure)
    record_property("figure", figure)
    _the_same_run_finished_once(world, new, run_id, "ok")
    router = world.router()
    assert not router["confirm_pending"]
    assert ALTERNATE in {e["name"] for e in world.lab.mgmt(ROUTER)["acl"]}
    # The confirming commit carried the new leader's epoch: the device now stops the dead one.
    status = world.daemons[new].cli("status", "--json").json()
    epoch = int(status["daemon"]["leadership"]["epoch"])
    assert f"<epoch>{epoch}</epoch>" in world.lab("show", device=ROUTER)["running"]
    for vantage in VANTAGES[1:]:
        wait_for(
            lambda v=vantage: world.daemons[v].office(OFFICE)["phase"] == "HANDED_OVER",
            TIMEOUT_S,
            f"{vantage} sees the office handed over",
        )


def test_the_leader_killed_before_forward_was_shared_the_new_leader_rolls_the_run_back(
    forward_not_shared: World,
) -> None:
    world = forward_not_shared
    run_id, new, _ = _leader_killed_mid_run(world)
    assert world.at_death["confirm_pending"]  # committed and verified, the decision not shared
    world.daemons[new].wait_phase(OFFICE, "FAILED", TIMEOUT_S)
    _the_same_run_finished_once(world, new, run_id, "rolled_back")
    router = world.router()
    assert not router["confirm_pending"]
    assert world.original == router["running"]
    assert ALTERNATE not in {e["name"] for e in world.lab.mgmt(ROUTER)["acl"]}


# The leader killed at more points of its run: whichever it is, the next leader ends the story
# with every device forward (and the office HANDED_OVER) or every device back (FAILED), by the
# dead leader's run — or, when that run never touched a device, by one run of its own. (Every
# journal write in turn is the single-vantage campaign's, tests/e2e/test_crash_campaign.py.)
POINTS = {
    "after:set_plan": "the plan shared, no device touched",
    "after:set_confirm": "the window journaled (not shared), no commit sent",
    "before:decide": "committed and verified everywhere, nothing decided",
    "before:finish_run": "every device confirmed, the end not journaled",
}


@pytest.fixture(params=sorted(POINTS))
def killed_at(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[World]:
    yield from _world(tmp_path, str(request.param))


def test_a_leader_killed_anywhere_in_its_run_leaves_the_office_whole(killed_at: World) -> None:
    world = killed_at
    run_id, new, _ = _leader_killed_mid_run(world)
    phase = wait_for(
        lambda: (p := world.daemons[new].office(OFFICE)["phase"]) in ("HANDED_OVER", "FAILED") and p,
        TIMEOUT_S,
        "the office handed over or failed",
    )
    router = world.router()
    assert not router["confirm_pending"]
    runs = [(r["id"], r["result"]) for r in world.daemons[new].journal.runs(OFFICE)]
    if phase == "FAILED":
        assert world.original == router["running"]  # every device back, byte for byte
        assert [(run_id, "rolled_back")] == runs
    else:
        assert ALTERNATE in {e["name"] for e in world.lab.mgmt(ROUTER)["acl"]}
        # The dead leader's run finished, or — it never touched a device — one run of the new
        # leader's own (the dead one's not started, or never shared at all).
        again = runs[-1][0]
        assert runs in ([(run_id, "ok")], [(run_id, "not_started"), (again, "ok")], [(again, "ok")]), runs
    other = next(v for v in VANTAGES[1:] if v != new)
    assert not world.daemons[other].journal.runs(OFFICE)  # the other follower ran nothing
