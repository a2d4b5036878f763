"""EtcdLeadership against a real three-member etcd cluster, with small TTLs: one leader at a time,
takeover after a SIGKILL, a SIGSTOPped leader that must not act on waking, etcd down altogether,
a member lost, the epoch floor, and stepping down.

Vantages run in this process (their `held` sampled every few ms) or, where the test needs to
kill or pause one for real, in a child process (tests/integration/leadership_child.py) that
reports on its stdout with CLOCK_MONOTONIC times. Figures are printed (`pytest -s`); the only
timed assertions are contracts: `held` is False from the vantage's own deadline on, a revoked
lease is taken over well before its TTL would have run out.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from baton.adapters.etcd import EtcdClient, TxnResult
from baton.config import EtcdSettings
from baton.leadership import EtcdLeadership
from tests.peers.etcd import ELECTION_MS, EtcdCluster
from tests.peers.util import PeerProcess

pytestmark = pytest.mark.peer("etcd")

REPO = Path(__file__).resolve().parents[2]
TTL_S = 2.0  # etcd's smallest lease with a 1 s election timeout
TIMEOUT_S = 0.4
PREFIX = "/baton-test/"
SAMPLE_S = 0.02


def test_the_timing_is_one_config_accepts() -> None:
    """The TTL and timeout used here pass config's rule: ttl/3 + 2 × timeout <= ttl."""
    settings = EtcdSettings(
        endpoints=("http://127.0.0.1:2379",), lease_ttl_s=TTL_S, request_timeout_s=TIMEOUT_S
    )
    assert settings.keepalive_s + 2 * settings.request_timeout_s <= settings.lease_ttl_s


# -- vantages in this process -------------------------------------------------------------------


@dataclass
class Vantage:
    """One vantage's leadership running in this process, with what it reported."""

    me: str
    leadership: EtcdLeadership
    client: EtcdClient
    changes: list[tuple[float, bool, int, str | None]] = field(default_factory=list)
    task: asyncio.Task[None] | None = None

    def changed(self, held: bool, epoch: int, leader: str | None) -> None:
        self.changes.append((time.monotonic(), held, epoch, leader))

    @property
    def held(self) -> bool:
        return self.leadership.held

    @property
    def epoch(self) -> int:
        return self.leadership.view.epoch


class FaultyClient(EtcdClient):
    """A real client with one fault a test arms: the answer of the next keepalive comes late (a
    slow network or a loaded host), or the next txn that wins loses its answer and is retried (as
    `_post` does on the next endpoint after a timeout) — the retry sees the key already there."""

    delay_next_keepalive_s = 0.0
    lose_next_won_txn = False

    async def keepalive(self, lease: int) -> float:
        left = await super().keepalive(lease)
        delay, self.delay_next_keepalive_s = self.delay_next_keepalive_s, 0.0
        await asyncio.sleep(delay)
        return left

    async def txn(self, compare: Any, success: Any, failure: Any = ()) -> TxnResult:
        result = await super().txn(compare, success, failure)
        if result.succeeded and self.lose_next_won_txn:
            self.lose_next_won_txn = False
            return await super().txn(compare, success, failure)
        return result


def vantage(
    endpoints: list[str],
    me: str,
    *,
    floor: Callable[[], int] = lambda: 0,
    ttl_s: float = TTL_S,
    client: EtcdClient | None = None,
) -> Vantage:
    client = client or EtcdClient(endpoints, timeout_s=TIMEOUT_S)
    leadership = EtcdLeadership(
        client,
        prefix=PREFIX,
        me=me,
        ttl_s=ttl_s,
        request_timeout_s=TIMEOUT_S,
        api_address=f"http://{me}.test",
        floor=floor,
    )
    return Vantage(me, leadership, client)


@contextlib.asynccontextmanager
async def campaigning(*vantages: Vantage) -> AsyncIterator[None]:
    """The vantages' `run` for the block; cancelled (the lease revoked) and closed after."""
    for v in vantages:
        v.task = asyncio.create_task(v.leadership.run(v.changed), name=f"leadership {v.me}")
    try:
        yield
    finally:
        for v in vantages:
            assert v.task is not None
            v.task.cancel()
        for v in vantages:
            assert v.task is not None
            with contextlib.suppress(asyncio.CancelledError):
                await v.task
            await v.client.close()


async def wait_until(predicate: Callable[[], bool], timeout_s: float, what: str) -> float:
    """Poll every SAMPLE_S until true; the seconds it took. Fails after timeout_s."""
    started = time.monotonic()
    while not predicate():
        if time.monotonic() - started > timeout_s:
            pytest.fail(f"not within {timeout_s} s: {what}")
        await asyncio.sleep(SAMPLE_S)
    return time.monotonic() - started


def holders(vantages: list[Vantage]) -> list[Vantage]:
    return [v for v in vantages if v.held]


class Sampler:
    """`held` of every vantage every SAMPLE_S, in the background: (time, names holding)."""

    def __init__(self, vantages: list[Vantage]) -> None:
        self.vantages = vantages
        self.samples: list[tuple[float, tuple[str, ...]]] = []
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        while True:
            self.samples.append((time.monotonic(), tuple(v.me for v in self.vantages if v.held)))
            await asyncio.sleep(SAMPLE_S)

    def __enter__(self) -> Sampler:
        self._task = asyncio.get_running_loop().create_task(self._run())
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        self.samples.append((time.monotonic(), tuple(v.me for v in self.vantages if v.held)))

    def first_held(self, after: float = 0.0) -> tuple[float, str] | None:
        for t, names in self.samples:
            if t >= after and names:
                return t, names[0]
        return None

    def never_two(self) -> None:
        both = [(round(t, 3), names) for t, names in self.samples if len(names) > 1]
        assert [] == both, f"two vantages held the lease at once: {both[:5]}"


# -- a vantage in a child process ---------------------------------------------------------------


class ChildVantage:
    """tests/integration/leadership_child.py as a process: its report lines, kill/pause/resume."""

    def __init__(self, workdir: Path, endpoints: list[str], me: str) -> None:
        self.me = me
        spec = workdir / f"{me}.json"
        spec.write_text(
            json.dumps(
                {"endpoints": endpoints, "me": me, "prefix": PREFIX, "ttl_s": TTL_S, "timeout_s": TIMEOUT_S}
            )
        )
        self.proc = PeerProcess(
            f"vantage {me}",
            [sys.executable, "-m", "tests.integration.leadership_child", str(spec)],
            workdir / f"{me}.log",
            env={**os.environ, "PYTHONPATH": f"{REPO}:{REPO / 'daemon'}"},
            cwd=REPO,
        )

    def lines(self, kind: str) -> list[dict[str, str]]:
        found = []
        for line in self.proc.log_tail(1_000_000).splitlines():
            words = line.split()
            if words and words[0] == kind:
                found.append(dict(w.split("=", 1) for w in words[1:] if "=" in w))
        return found

    def first(self, kind: str, where: Callable[[dict[str, str]], bool]) -> dict[str, str] | None:
        return next((x for x in self.lines(kind) if where(x)), None)

    async def wait_line(
        self, kind: str, timeout_s: float, what: str, where: Callable[[dict[str, str]], bool] = lambda _: True
    ) -> dict[str, str]:
        """The first `kind` line that `where` accepts, waiting up to timeout_s for it."""
        await wait_until(
            lambda: self.first(kind, where) is not None, timeout_s, f"{what} (log {self.proc.log_path})"
        )
        found = self.first(kind, where)
        assert found is not None
        return found

    async def start(self) -> None:
        self.proc.spawn()
        await self.wait_line("READY", 20, f"{self.me} started")

    def kill(self) -> None:
        self.proc.kill()

    def pause(self) -> None:
        self.proc.signal(signal.SIGSTOP)

    def resume(self) -> None:
        self.proc.signal(signal.SIGCONT)

    def stop(self) -> None:
        self.resume()  # a stopped process would never see the SIGTERM
        self.proc.stop()


@contextlib.contextmanager
def child_vantage(workdir: Path, endpoints: list[str], me: str) -> Iterator[ChildVantage]:
    child = ChildVantage(workdir, endpoints, me)
    try:
        yield child
    finally:
        child.stop()


# -- the tests ----------------------------------------------------------------------------------


async def test_exactly_one_of_three_holds_the_lease(etcd_cluster: EtcdCluster) -> None:
    """Three vantages campaign: at no sampled moment do two hold the lease, one does, and the
    others' view names it."""
    vs = [vantage(etcd_cluster.endpoints, f"v{i}") for i in (1, 2, 3)]
    views = [v.leadership.view for v in vs]  # status and metrics hold on to these
    async with campaigning(*vs):
        with Sampler(vs) as sampler:
            took = await wait_until(lambda: len(holders(vs)) == 1, 10, "one leader")
            await asyncio.sleep(2 * TTL_S)
        sampler.never_two()
        (leader,) = holders(vs)
        await wait_until(
            lambda: all(v.leadership.view.leader == leader.me for v in vs),
            2 * TTL_S,
            "every view names the leader",
        )
        exactly_one = sum(1 for _, names in sampler.samples if len(names) == 1)
        print(
            f"\nleader {leader.me} (epoch {leader.epoch}) after {took:.2f} s; "
            f"{len(sampler.samples)} samples, {exactly_one} with exactly one holder"
        )
        assert all(v.leadership.view is view for v, view in zip(vs, views, strict=True))
        assert leader.leadership.view.held
        followers = [v for v in vs if v is not leader]
        assert all(v.leadership.view.leader_api == f"http://{leader.me}.test" for v in followers)
        assert {"v1", "v2", "v3"} == set(leader.leadership.view.vantages)
        assert 1 == len({t[2] for t in leader.changes if t[1]}), "the leader's epoch changed while it held"
        # Only the leader's term compare holds: what followers would write under theirs is refused.
        client = leader.leadership.client
        assert (await client.txn(leader.leadership.term(), [])).succeeded
        assert not any([(await client.txn(v.leadership.term(), [])).succeeded for v in followers])


async def test_leader_sigkilled_another_leads_with_a_greater_epoch(
    etcd_cluster: EtcdCluster, tmp_path: Path
) -> None:
    """The leader's process is SIGKILLed: after its lease expires another vantage leads with a
    strictly greater epoch, and none held while the old one was alive."""
    with child_vantage(tmp_path, etcd_cluster.endpoints, "child") as child:
        await child.start()
        held = await child.wait_line("HELD", 10, "the child leads")
        vs = [vantage(etcd_cluster.endpoints, f"v{i}") for i in (1, 2)]
        async with campaigning(*vs):
            await wait_until(
                lambda: all(v.leadership.view.leader == "child" for v in vs),
                2 * TTL_S,
                "both follow the child",
            )
            with Sampler(vs) as sampler:
                await asyncio.sleep(0.5)
                killed = time.monotonic()
                child.kill()
                await wait_until(lambda: bool(holders(vs)), 3 * TTL_S, "another vantage leads")
            sampler.never_two()
            first = sampler.first_held()
            assert first is not None
            assert first[0] > killed, "a vantage held the lease while the old leader was alive"
            (leader,) = holders(vs)
            print(
                f"\nchild (epoch {held['epoch']}) SIGKILLed; {leader.me} leads "
                f"{first[0] - killed:.2f} s later with epoch {leader.epoch} (TTL {TTL_S:g} s)"
            )
            assert leader.epoch > int(held["epoch"])


async def test_paused_leader_does_not_act_on_waking(etcd_cluster: EtcdCluster, tmp_path: Path) -> None:
    """The leader's process SIGSTOPped for longer than the TTL, then SIGCONTed: its `held` and
    fence are False at once on waking, before it talks to etcd again, and it follows the new
    leader."""
    with child_vantage(tmp_path, etcd_cluster.endpoints, "child") as child:
        await child.start()
        held = await child.wait_line("HELD", 10, "the child leads")
        vs = [vantage(etcd_cluster.endpoints, f"v{i}") for i in (1, 2)]
        async with campaigning(*vs):
            await wait_until(
                lambda: all(v.leadership.view.leader == "child" for v in vs),
                2 * TTL_S,
                "both follow the child",
            )
            paused = time.monotonic()
            child.pause()
            await wait_until(lambda: bool(holders(vs)), 3 * TTL_S, "another vantage leads")
            (leader,) = holders(vs)
            await asyncio.sleep(max(0.0, paused + TTL_S + 0.5 - time.monotonic()))
            resumed = time.monotonic()
            child.resume()
            woke = await child.wait_line("WOKE", 5, "the child wakes", lambda x: float(x["t"]) > resumed)
            request = await child.wait_line(
                "REQUEST", 5, "the child talks to etcd again", lambda x: float(x["t"]) > resumed
            )
            await child.wait_line(
                "LEADER", 3 * TTL_S, f"the child follows {leader.me}", lambda x: x["leader"] == leader.me
            )
            print(
                f"\nchild (epoch {held['epoch']}) paused {resumed - paused:.2f} s; {leader.me} led after "
                f"{leader.changes[0][0] - paused:.2f} s (epoch {leader.epoch}); on waking the child's held "
                f"was {woke['held']} {float(woke['t']) - resumed:.3f} s after SIGCONT, its first request "
                f"({request['path']}) {float(request['t']) - resumed:.3f} s after, held {request['held']}"
            )
            assert ("False", "False") == (woke["held"], woke["fence"])
            assert "False" == request["held"]
            assert [] == [x for x in child.lines("HELD") if float(x["t"]) > paused]
            assert leader.epoch > int(held["epoch"])
            assert leader.held


@pytest.mark.parametrize("how", ["all killed", "quorum lost"])
async def test_etcd_down_the_leader_lets_go_by_its_deadline(etcd_cluster: EtcdCluster, how: str) -> None:
    """Every etcd member killed, or two of three (the one left answers "no leader"): the leader's
    `held` is False from its deadline (sent + TTL − margin) on, reported then — not when etcd
    answers again; with etcd back a leader is elected again with a greater epoch."""
    vs = [vantage(etcd_cluster.endpoints, f"v{i}") for i in (1, 2)]
    down_members = etcd_cluster.members if how == "all killed" else etcd_cluster.members[1:]
    async with campaigning(*vs):
        await wait_until(lambda: len(holders(vs)) == 1, 10, "one leader")
        (leader,) = holders(vs)
        epoch = leader.epoch
        with Sampler(vs) as sampler:
            down = time.monotonic()
            for member in down_members:
                member.kill()
            # All killed: no keepalive can succeed after `down`. Quorum lost: the member left may
            # be the raft leader, which renews leases on its own until it notices it lost the
            # quorum (up to 2 election timeouts; etcd's next leader extends every lease by one
            # election timeout for exactly that reason). Measured: up to 1.9 s; 1 s of slack for
            # a loaded machine, where raft's ticks run late.
            renewals_s = 0.0 if how == "all killed" else 2 * ELECTION_MS / 1000 + 1.0
            await wait_until(lambda: not leader.held, renewals_s + TTL_S + 1, "the leader lets go")
            deadline = leader.leadership.deadline  # the last one: etcd did not answer since
            await wait_until(lambda: any(not held for _, held, _, _ in leader.changes), 1, "on_change(False)")
            await asyncio.sleep(0.2)
        late = [(round(t - deadline, 3), names) for t, names in sampler.samples if t >= deadline and names]
        assert [] == late, "held after its deadline"
        told = next(t for t, held, _, _ in leader.changes if not held)
        unheld = next(t for t, names in sampler.samples if t > down and leader.me not in names)
        print(
            f"\netcd {how}; {leader.me}'s deadline {deadline - down:.3f} s after; held first sampled False "
            f"{unheld - deadline:+.3f} s from it, on_change(False) {told - deadline:+.3f} s from it"
        )
        # The deadline is that of a keepalive sent before etcd went (sent + TTL − margin), and the
        # end of the term is reported then, while etcd is still down.
        assert deadline <= down + renewals_s + TTL_S - TIMEOUT_S
        assert told < deadline + 1.0

        for member in down_members:
            member.spawn()
        back = time.monotonic()
        etcd_cluster.wait_healthy()
        await wait_until(lambda: len(holders(vs)) == 1, 6 * TTL_S, "a leader again")
        (again,) = holders(vs)
        print(
            f"etcd back; {again.me} leads {time.monotonic() - back:.2f} s later, "
            f"epoch {again.epoch} > {epoch}"
        )
        assert again.epoch > epoch


@pytest.mark.parametrize(
    ("which", "ttl_s"),
    [
        ("follower", TTL_S),
        # Killing the raft leader leaves etcd without one for 1.4–2 s here (up to 2 × election
        # timeout), keepalives fail meanwhile. The lease survives that (etcd extends leases on a
        # raft leader change); the vantage's own deadline survives it only when the TTL leaves
        # more than that after a keepalive interval and the margin: with a kill just before a
        # keepalive, 2/3 × TTL − timeout = 3.6 s at a TTL of 6 s (at 4 s, 2.3 s: it lost).
        pytest.param("leader", 6.0, marks=pytest.mark.slow),
    ],
)
async def test_a_member_killed_the_leader_keeps_holding(
    etcd_cluster: EtcdCluster, which: str, ttl_s: float
) -> None:
    """One of three members killed (the leader's first endpoint): a quorum of two remains and the
    leader holds without a gap, same epoch — also while etcd elects a new raft leader."""
    raft_leader = etcd_cluster.raft_leader()
    victim = raft_leader if which == "leader" else etcd_cluster.raft_followers()[0]
    endpoints = [victim.url, *(u for u in etcd_cluster.endpoints if u != victim.url)]
    vs = [vantage(endpoints, f"v{i}", ttl_s=ttl_s) for i in (1, 2)]
    async with campaigning(*vs):
        await wait_until(lambda: len(holders(vs)) == 1, 10, "one leader")
        (leader,) = holders(vs)
        epoch = leader.epoch
        await asyncio.sleep(ttl_s / 3 * 0.9)  # kill in the middle of a keepalive interval
        with Sampler(vs) as sampler:
            killed = time.monotonic()
            victim.kill()
            await asyncio.sleep(max(ttl_s, 2 * TTL_S))
            etcd_cluster.raft_leader()
        gaps = [round(t - killed, 3) for t, names in sampler.samples if names != (leader.me,)]
        print(f"\nraft {which} killed; {leader.me} held throughout: {not gaps}")
        assert [] == gaps, "the leader did not hold at these moments after the kill"
        assert epoch == leader.epoch


async def test_a_won_campaign_whose_answer_was_lost_is_not_a_deadlock(etcd_cluster: EtcdCluster) -> None:
    """The txn that created the leader key lost its answer, and its retry found the key taken —
    by this vantage's own lease. Some vantage must lead soon all the same (not: this one follows
    itself forever while keeping the key alive)."""
    lossy = FaultyClient(etcd_cluster.endpoints, timeout_s=TIMEOUT_S)
    lossy.lose_next_won_txn = True
    vs = [vantage(etcd_cluster.endpoints, "v1", client=lossy)]
    async with campaigning(*vs):
        await wait_until(lambda: not lossy.lose_next_won_txn, 10, "v1 won a campaign and lost its answer")
        vs.append(vantage(etcd_cluster.endpoints, "v2"))
        async with campaigning(vs[1]), contextlib.AsyncExitStack():
            with Sampler(vs) as sampler:
                took = await wait_until(lambda: len(holders(vs)) == 1, 3 * TTL_S, "a leader")
            sampler.never_two()
            (leader,) = holders(vs)
            print(
                f"\nlost answer of a won campaign: {leader.me} leads {took:.2f} s later "
                f"(epoch {leader.epoch})"
            )


async def test_a_keepalive_answered_after_the_deadline_does_not_revive_the_term(
    etcd_cluster: EtcdCluster,
) -> None:
    """A keepalive whose answer comes after the deadline: held went False at the deadline, and
    the late answer does not make it True again in the same term (same epoch); a leader —
    this one in a new term, or another — leads again soon."""
    slow = FaultyClient(etcd_cluster.endpoints, timeout_s=TIMEOUT_S)
    vs = [vantage(etcd_cluster.endpoints, "v1", client=slow), vantage(etcd_cluster.endpoints, "v2")]
    async with campaigning(vs[0]):
        await wait_until(lambda: vs[0].held, 10, "v1 leads")
        async with campaigning(vs[1]):
            await wait_until(lambda: vs[1].leadership.view.leader == "v1", 2 * TTL_S, "v2 follows v1")
            epoch = vs[0].epoch
            with Sampler(vs) as sampler:
                # Answered after the deadline (at most TTL/3 + TTL − margin after the keepalive
                # before it was sent), early enough that the next keepalive still finds the lease.
                slow.delay_next_keepalive_s = TTL_S - TIMEOUT_S - TTL_S / 3 + 0.2
                await wait_until(lambda: not vs[0].held, 2 * TTL_S, "v1's deadline passes")
                lapsed = time.monotonic()
                await wait_until(lambda: slow.delay_next_keepalive_s == 0, TTL_S, "the slow keepalive")
                took = await wait_until(lambda: len(holders(vs)) == 1, 3 * TTL_S, "a leader again")
                await asyncio.sleep(TTL_S)
            sampler.never_two()
            revived = [(round(t - lapsed, 3), e) for t, held, e, _ in vs[0].changes if held and t > lapsed]
            assert all(e > epoch for _, e in revived), f"v1 held again in its old term: {revived}"
            assert all(v.epoch > epoch for v in holders(vs))
            (leader,) = holders(vs)
            print(
                f"\nv1 lapsed; {leader.me} leads {took:.2f} s after the slow keepalive (epoch {leader.epoch})"
            )


async def test_epoch_floor_on_a_fresh_cluster(etcd_cluster: EtcdCluster) -> None:
    """A fresh cluster starts its revisions at 1: with a floor of 50 the first epoch is above 50,
    and the next leader's above that."""
    first = vantage(etcd_cluster.endpoints, "v1", floor=lambda: 50)
    async with campaigning(first):
        await wait_until(lambda: first.held, 10, "v1 leads")
        assert first.leadership.view.epoch > 50
        assert first.leadership._create_revision < 50  # the floor, not the revision, decided
    second = vantage(etcd_cluster.endpoints, "v2")
    async with campaigning(second):
        await wait_until(lambda: second.held, 10, "v2 leads")
        print(f"\nepochs: {first.epoch} (floor 50), then {second.epoch}")
        assert second.epoch > first.epoch


async def test_step_down_revokes_and_another_takes_over(etcd_cluster: EtcdCluster) -> None:
    """step_down: held is False at once, the lease is revoked, and another vantage leads well
    before the TTL would have run out."""
    vs = [vantage(etcd_cluster.endpoints, f"v{i}") for i in (1, 2)]
    async with campaigning(*vs):
        await wait_until(lambda: len(holders(vs)) == 1, 10, "one leader")
        (leader,) = holders(vs)
        (other,) = [v for v in vs if v is not leader]
        await wait_until(lambda: other.leadership.view.leader == leader.me, TTL_S, "the other follows")
        lease, epoch = leader.leadership.lease, leader.epoch
        with Sampler(vs) as sampler:
            started = time.monotonic()
            await leader.leadership.step_down("a device saw a newer epoch")
            assert not leader.held
            took = await wait_until(lambda: other.held, TTL_S, "the other leads")
        sampler.never_two()
        print(
            f"\n{leader.me} stepped down; {other.me} leads {took:.3f} s later (epoch {other.epoch} > {epoch})"
        )
        assert await other.client.keepalive(lease) <= 0
        assert other.epoch > epoch
        assert time.monotonic() - started < TTL_S
