"""Three Baton vantages over a real three-member etcd, watching one lab, each in a cgroup of its
own so that the test can cut one vantage's paths and no one else's (`tests.peers.partition`):

* a follower cut off from etcd keeps out of the way and says why in `baton status`;
* one vantage's path to an office cut: the office is UNREACHABLE from it, not DOWN, nobody hands
  over, and the leader's alert names who sees what;
* two of three vantages see the office dark: DOWN, and the leader — who still sees it — hands
  it over;
* the leader cut off from etcd says it does not hold the lease before the lease can have
  expired in etcd (measured from etcd's side), another vantage takes over, and the cut-off one
  changes nothing on any device while the new leader hands the office over.

Everything is read as an operator would: `baton status --json`, `baton offices --json` and
`baton devices OFFICE --json` on each vantage, the alerts, the devices' running configuration
from the lab, the journals.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import json
import os
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.e2e.harness import Daemon, wait_for
from tests.e2e.vantage_world import (
    ALTERNATE,
    EPOCH,
    LEASE_TTL_S,
    OFFICE,
    TIMEOUT_S,
    VANTAGES,
    VantageWorld,
    vantages_running,
)
from tests.peers.partition import Cut, Group, Partition, partition_usable
from tests.peers.util import PeerProcess, require_binary, skip_or_fail

pytestmark = pytest.mark.slow

PREFIX = "/baton-faults/"
ROUTERS = (f"{OFFICE}-core1", f"{OFFICE}-agg1")  # what the handover changes (routers, not OLTs)
SPLIT_VIEW = "split_view"


@dataclass
class CgroupDaemon(Daemon):
    """`baton daemon` started inside a cgroup (every socket it opens is the group's)."""

    group: Group | None = None

    def spawn(self) -> None:
        assert self.group is not None
        self.starts += 1
        log = self.log_dir / f"daemon-{self.starts}.log"
        self.logs.append(log)
        command = [sys.executable, "-m", "baton.cli", "daemon", "--config", str(self.config_path)]
        self.process = PeerProcess(
            "baton daemon",
            self.group.argv([*command, "--log-format", "json"]),
            log,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **self.env},
        )
        self.process.spawn()


@dataclass
class World(VantageWorld):
    daemons: dict[str, CgroupDaemon]  # type: ignore[assignment]
    partition: Partition
    office_addresses: tuple[str, ...]
    cuts: list[Cut] = field(default_factory=list)

    def followers(self, leader: str) -> list[str]:
        return [v for v in VANTAGES if v != leader]

    def cut_from_etcd(self, vantage: str) -> Cut:
        group = self.daemons[vantage].group
        assert group is not None
        cut = group.cut_ports([m.port for m in self.etcd.members], "cut off from etcd")
        self.cuts.append(cut)
        return cut

    def cut_from_office(self, vantage: str) -> Cut:
        group = self.daemons[vantage].group
        assert group is not None
        cut = group.cut_addresses(self.office_addresses, f"path to {OFFICE} cut")
        self.cuts.append(cut)
        return cut

    def restore_all(self) -> None:
        for cut in self.cuts:
            cut.restore()
        self.cuts.clear()

    def office(self, vantage: str) -> dict[str, Any]:
        return self.daemons[vantage].office(OFFICE)

    def wait_verdict(self, vantage: str, verdict: str) -> dict[str, Any]:
        return wait_for(
            lambda: (o := self.office(vantage))["verdict"] == verdict and o,
            TIMEOUT_S,
            f"{OFFICE} {verdict} on {vantage}",
        )

    def devices(self, vantage: str) -> dict[str, str]:
        """`baton devices OFFICE --json` on a vantage: its own view, device -> verdict."""
        result = self.daemons[vantage].cli("devices", OFFICE, "--json")
        assert result.code == 0, result
        return {d["id"]: d["verdict"] for d in result.json()["devices"]}

    def alerts(self, vantage: str, alert: str) -> list[dict[str, Any]]:
        status = self.status(vantage)
        assert status is not None
        return [a for a in status["alerts"] if a["alert"] == alert and a["office"] == OFFICE]

    def device_epochs(self) -> dict[str, int]:
        epochs = {}
        for device in ROUTERS:
            found = EPOCH.search(self.lab("show", device=device)["running"])
            epochs[device] = int(found.group(1)) if found else 0
        return epochs

    def routers_handed_over(self) -> dict[str, bool]:
        return {d: ALTERNATE in {e["name"] for e in self.lab.mgmt(d)["acl"]} for d in ROUTERS}

    def runs(self) -> dict[str, int]:
        return {v: len(self.daemons[v].journal.runs()) for v in VANTAGES}

    def steps(self, vantage: str) -> int:
        return int(self.daemons[vantage].journal.rows("SELECT count(*) AS n FROM steps")[0]["n"])


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    nft = require_binary("nft", "nftables")
    why_not = partition_usable(nft)
    if why_not is not None:
        skip_or_fail(why_not)
    base = tmp_path_factory.mktemp("vantage-faults")
    partition = Partition(nft)

    def make_daemon(vantage: str, path: Path, log_dir: Path) -> Daemon:
        return CgroupDaemon(path, log_dir, group=partition.group(vantage))

    try:
        partition.open()
        with vantages_running(base, prefix=PREFIX, make_daemon=make_daemon) as (lab, etcd, daemons):
            devices = yaml.safe_load((lab.dir / "inventory" / "devices" / f"{OFFICE}.yaml").read_text())
            addresses = tuple(d["address"] for d in devices["devices"])
            world = World(lab, etcd, daemons, partition, addresses)  # type: ignore[arg-type]
            try:
                yield world
            finally:
                world.restore_all()
    finally:
        problems = partition.close()
    if problems:
        pytest.fail("; ".join(problems), pytrace=False)


@pytest.fixture
def restored(world: World) -> Iterator[World]:
    """The world, every cut restored after the test (passed or not)."""
    try:
        yield world
    finally:
        world.restore_all()


def _hold(seconds: float, check: Callable[[], None], interval_s: float = 0.5) -> None:
    """Call `check` (which asserts) again and again for `seconds`."""
    deadline = time.monotonic() + seconds
    while True:
        check()
        if time.monotonic() >= deadline:
            return
        time.sleep(interval_s)


# --- etcd, seen from the test (which is never cut off) ----------------------------------------


def _etcd_post(world: World, path: str, body: dict[str, Any]) -> dict[str, Any]:
    errors = []
    for url in world.etcd.endpoints:
        request = urllib.request.Request(  # noqa: S310 - http://127.0.0.1 only
            f"{url}/v3/{path}", data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=1.0) as answer:  # noqa: S310
                data: dict[str, Any] = json.load(answer)
                return data
        except (OSError, ValueError, urllib.error.URLError) as exc:
            errors.append(f"{url}: {exc}")
    raise AssertionError(f"etcd did not answer the test: {errors}")


def _leader_lease(world: World) -> tuple[str, int]:
    """(the vantage the leader key names, the lease it is on), read from etcd."""
    key = base64.b64encode(f"{PREFIX}leader".encode()).decode()
    kvs = _etcd_post(world, "kv/range", {"key": key}).get("kvs") or []
    assert kvs, "no leader key in etcd"
    value = json.loads(base64.b64decode(kvs[0]["value"]))
    return str(value["vantage"]), int(kvs[0]["lease"])


class LeaseWatch(threading.Thread):
    """Polls a lease's time to live in etcd, from before a cut until it is gone.

    etcd answers the seconds left truncated to a whole number, as seen by its raft leader at some
    moment between our request and its answer: so, with `asked` the (monotonic) time a request
    was sent, the lease cannot end before `asked + ttl`. `ends_no_sooner_than` is the greatest
    such bound over every answer — with polls every few tens of milliseconds, within one poll of
    the real end, and never after it (an election only extends leases). `gone_by` is when an
    answer first said the lease no longer exists."""

    def __init__(self, world: World, lease: int) -> None:
        super().__init__(name="lease watch", daemon=True)
        self.world = world
        self.lease = lease
        self.ends_no_sooner_than = 0.0
        self.gone_by: float | None = None
        self.polls = 0
        self._done = threading.Event()

    def run(self) -> None:
        while not self._done.is_set():
            asked = time.monotonic()
            try:
                answer = _etcd_post(self.world, "lease/timetolive", {"ID": str(self.lease)})
            except AssertionError:
                continue
            self.polls += 1
            ttl = int(answer.get("TTL", 0))  # 0 is left out of the gateway's JSON; gone is -1
            if ttl < 0:
                self.gone_by = time.monotonic()
                return
            self.ends_no_sooner_than = max(self.ends_no_sooner_than, asked + ttl)
            self._done.wait(0.02)

    def stop(self) -> None:
        self._done.set()
        self.join(timeout=5)


def _logged_at(event: dict[str, Any]) -> float:
    """A JSON log line's timestamp, on this process's monotonic clock."""
    wall = dt.datetime.fromisoformat(str(event["timestamp"]).replace("Z", "+00:00")).timestamp()
    return wall - (time.time() - time.monotonic())


# --- the tests --------------------------------------------------------------------------------


def test_a_follower_cut_off_from_etcd_says_why_and_the_leader_goes_on(restored: World) -> None:
    """A follower cut off from etcd says so in `baton status`, drops out of the leader's vantages
    and back in when the cut is restored; the leader leads on throughout."""
    world = restored
    leader = world.leader()
    follower = world.followers(leader)[0]
    cut = world.cut_from_etcd(follower)
    cut_at = time.monotonic()
    said = wait_for(
        lambda: "etcd unreachable" in (r := world.leadership(follower)["reason"]) and r,
        TIMEOUT_S,
        f"{follower} says etcd is unreachable",
    )
    print(f"follower cut off from etcd: says so after {time.monotonic() - cut_at:.2f} s: {said}")
    assert not world.leadership(follower)["held"]
    human = world.daemons[follower].cli("status")
    assert 0 == human.code
    assert "etcd unreachable" in human.out
    assert "not held: another vantage acts" in human.out
    # Its lease ends in etcd: the leader no longer lists it among the vantages.
    wait_for(
        lambda: follower not in world.leadership(leader)["vantages"],
        TIMEOUT_S,
        f"{leader} sees {follower} gone",
    )

    def same_leader() -> None:
        assert [leader] == world.leaders()

    _hold(2 * LEASE_TTL_S, same_leader)
    assert "OPEN" == world.office(leader)["phase"]

    cut.restore()
    wait_for(
        lambda: world.leadership(follower)["reason"] == f"following {leader}",
        TIMEOUT_S,
        f"{follower} follows {leader} again",
    )
    wait_for(
        lambda: set(VANTAGES) == set(world.leadership(leader)["vantages"]),
        TIMEOUT_S,
        f"{leader} lists {follower} again",
    )
    assert [leader] == world.leaders()


def test_one_vantage_cut_from_an_office_sees_it_unreachable_and_nobody_hands_over(
    restored: World,
) -> None:
    """One vantage's path to the office cut: its own devices view is dark, the office is
    UNREACHABLE (not DOWN) everywhere with an alert naming who sees what, and nothing is handed
    over for three hold-downs."""
    world = restored
    leader = world.leader()
    cut_off, other = world.followers(leader)
    runs = world.runs()
    world.cut_from_office(cut_off)
    cut_at = time.monotonic()
    # Its own view: the office's devices do not answer it. The others still see them.
    wait_for(
        lambda: all(v in ("DOWN", "UNREACHABLE") for v in world.devices(cut_off).values()),
        TIMEOUT_S,
        f"{cut_off} sees {OFFICE}'s devices dark",
    )
    dark_s = time.monotonic() - cut_at
    assert {"UP"} == set(world.devices(leader).values())
    assert {"UP"} == set(world.devices(other).values())
    # The leader's verdict: UNREACHABLE from that vantage (not DOWN), and an alert naming who sees what.
    seen = world.wait_verdict(leader, "UNREACHABLE")
    unreachable_s = time.monotonic() - cut_at
    print(
        f"path cut: {cut_off} sees the devices dark after {dark_s:.2f} s, "
        f"UNREACHABLE after {unreachable_s:.2f} s "
        f"on {leader}"
    )
    views = sorted([leader, other])
    expected = f"DOWN from {cut_off} only (quorum 2); HEALTHY from {views[0]}, HEALTHY from {views[1]}"
    assert expected == seen["verdict_detail"]
    alert = wait_for(lambda: world.alerts(leader, SPLIT_VIEW), TIMEOUT_S, "the split-view alert")
    assert [f"office {OFFICE}: {expected}; not closing"] == [a["message"] for a in alert]

    for follower in (cut_off, other):  # the followers adopt the leader's view
        world.wait_verdict(follower, "UNREACHABLE")

    # No closure, no handover: not on the leader, not anywhere, for well past the hold-down.
    def nothing_moves() -> None:
        for vantage in VANTAGES:
            office = world.office(vantage)
            assert ("OPEN", "UNREACHABLE") == (office["phase"], office["verdict"]), (vantage, office)
        assert runs == world.runs()
        assert not any(world.routers_handed_over().values())

    _hold(3 * 4.0, nothing_moves)  # three hold-downs (FAST_POLICY hold_down_s)

    world.restore_all()
    world.wait_verdict(leader, "HEALTHY")
    wait_for(lambda: not world.alerts(leader, SPLIT_VIEW), TIMEOUT_S, "the split-view alert cleared")
    assert runs == world.runs()


def test_a_majority_sees_the_office_dark_so_it_is_down_and_handed_over(restored: World) -> None:
    """Two of three vantages see the office dark while the leader still sees it: DOWN by quorum,
    and the leader hands it over once, under its epoch."""
    world = restored
    leader = world.leader()
    epoch = int(world.leadership(leader)["epoch"])
    dark = world.followers(leader)
    runs = world.runs()
    cut_at = time.monotonic()
    for vantage in dark:
        world.cut_from_office(vantage)
    down = world.wait_verdict(leader, "DOWN")
    down_s = time.monotonic() - cut_at
    # The leader itself still sees the office: two of three say dark, and that is a quorum.
    assert {"UP"} == set(world.devices(leader).values())
    assert f"(DOWN from 2/3 vantages: {', '.join(sorted(dark))})" in down["verdict_detail"]
    assert not world.alerts(leader, SPLIT_VIEW)
    world.daemons[leader].wait_phase(OFFICE, "HANDED_OVER", TIMEOUT_S)
    handed_s = time.monotonic() - cut_at
    print(f"majority dark: DOWN after {down_s:.2f} s, HANDED_OVER after {handed_s:.2f} s (hold-down 4 s)")
    assert dict.fromkeys(ROUTERS, True) == world.routers_handed_over()
    assert dict.fromkeys(ROUTERS, epoch) == world.device_epochs()
    after = world.runs()
    assert {**runs, leader: runs[leader] + 1} == after  # one run, the leader's
    assert ["handover"] == [r["kind"] for r in world.daemons[leader].journal.runs(OFFICE)][-1:]
    for follower in dark:
        world.daemons[follower].wait_phase(OFFICE, "HANDED_OVER", TIMEOUT_S)  # the leader's view, adopted

    # Back to where the module started: paths restored, handed back by an operator.
    world.restore_all()
    world.wait_verdict(leader, "HEALTHY")
    handback = world.daemons[leader].cli("handback", OFFICE, "--reason", "paths restored", "--yes")
    assert 0 == handback.code, handback
    world.daemons[leader].wait_phase(OFFICE, "OPEN", TIMEOUT_S)
    assert not any(world.routers_handed_over().values())
    for vantage in VANTAGES:
        world.daemons[vantage].wait_phase(OFFICE, "OPEN", TIMEOUT_S)


def test_the_leader_cut_off_from_etcd_stops_before_its_lease_can_expire(
    restored: World, record_property: Callable[[str, object], None]
) -> None:
    """The leader cut off from etcd says it does not hold the lease before the lease can end in
    etcd; another vantage takes over and hands the office over; the cut-off one changes nothing."""
    world = restored
    old = world.leader()
    old_epoch = int(world.leadership(old)["epoch"])
    named, lease = _leader_lease(world)
    assert old == named
    runs, steps = world.runs(), world.steps(old)
    started = len(world.daemons[old].events("run.started"))
    shown: list[float] = []  # the lease time left its status showed while it still held
    watch = LeaseWatch(world, lease)
    watch.start()
    try:
        time.sleep(0.3)  # a few answers before the cut
        world.cut_from_etcd(old)
        cut_at = time.monotonic()

        def stopped() -> float | None:
            leadership = world.leadership(old)
            if leadership["held"]:
                shown.append(float(leadership["lease_left_s"]))
                return None
            return time.monotonic()

        stopped_by = wait_for(stopped, TIMEOUT_S, f"{old} says it does not hold the lease", interval_s=0.02)
        wait_for(lambda: watch.gone_by is not None, TIMEOUT_S, "the lease gone from etcd")
    finally:
        watch.stop()
    lost = world.daemons[old].events("leadership.lost")
    assert lost, f"{old} logged no leadership.lost"
    lost_at = _logged_at(lost[-1])
    ends = watch.ends_no_sooner_than
    figure = (
        f"leader cut off from etcd: status says not held {ends - stopped_by:.2f} s before the lease could "
        f"end in etcd (leadership.lost logged {ends - lost_at:.2f} s before, {lost_at - cut_at:.2f} s "
        f"after the cut: {lost[-1]['why']}); the lease ended in etcd {ends - cut_at:.2f}–"
        f"{(watch.gone_by or 0) - cut_at:.2f} s after the cut (TTL {LEASE_TTL_S:g} s, {watch.polls} polls)"
    )
    print(figure)
    record_property("figure", figure)
    assert watch.polls >= 10, "too few answers from etcd to bound the lease's end"
    assert stopped_by < ends, figure
    assert lost_at < ends, figure
    # Meanwhile its status counted the lease time left down (not the last keepalive's figure).
    assert shown[0] - shown[-1] > 1.0, shown
    assert shown[-1] < 1.0, shown

    new = world.leader(besides=old)
    took_s = time.monotonic() - cut_at
    print(f"takeover after the leader was cut off from etcd: {took_s:.2f} s")
    new_epoch = int(world.leadership(new)["epoch"])
    assert new_epoch > old_epoch
    said = wait_for(
        lambda: "etcd unreachable" in (r := world.leadership(old)["reason"]) and r,
        TIMEOUT_S,
        f"{old} says etcd is unreachable",
    )
    assert not world.leadership(old)["held"]

    # The office goes dark while the old leader is still cut off: its own monitor sees it too.
    # The new leader hands over; the old one changes nothing (no run, no step, its epoch nowhere).
    world.lab("power_off", office=OFFICE, ups=["core"])
    try:
        world.daemons[new].wait_phase(OFFICE, "HANDED_OVER", TIMEOUT_S)
        assert world.routers_handed_over()[ROUTERS[0]]
        assert {new_epoch} == set(world.device_epochs().values()) - {old_epoch}
        assert new_epoch == world.device_epochs()[ROUTERS[0]]
        wait_for(
            lambda: world.devices(old)[f"{OFFICE}-agg1"] == "DOWN", TIMEOUT_S, f"{old} sees the office dark"
        )
        assert not world.leadership(old)["held"]
        assert "etcd unreachable" in world.leadership(old)["reason"], said
        assert runs[old] == world.runs()[old]
        assert steps == world.steps(old)
        assert started == len(world.daemons[old].events("run.started"))

        world.restore_all()
        wait_for(
            lambda: world.leadership(old)["reason"] == f"following {new}", TIMEOUT_S, f"{old} follows {new}"
        )
        wait_for(lambda: world.office(old)["phase"] == "HANDED_OVER", TIMEOUT_S, f"{old} adopts HANDED_OVER")
        assert [new] == world.leaders()
        assert runs[old] == world.runs()[old]
        assert steps == world.steps(old)
        assert new_epoch == world.device_epochs()[ROUTERS[0]]
    finally:
        with contextlib.suppress(Exception):
            world.lab("power_on", office=OFFICE)
