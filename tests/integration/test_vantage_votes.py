"""Verdicts shared through a real etcd: what each vantage publishes is what the core is given,
a vantage's votes vanish with its lease, stale or malformed documents are not counted."""

from __future__ import annotations

import json
from dataclasses import replace
from types import MappingProxyType

import pytest

from baton.adapters.etcd import EtcdClient, created, delete
from baton.core.events import OfficeObserved
from baton.core.machine import step
from baton.core.model import OfficeVerdict, Phase, Policy
from baton.vantages import VerdictBoard
from tests.peers.etcd import EtcdProcess
from tests.unit.core_builders import make_state

PREFIX = "/baton-test/"
LEADER_KEY = PREFIX + "leader"
TERM = [created(LEADER_KEY, 0)]  # as a leader's term compare: holds while that key is as it was


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def board(client: EtcdClient, me: str, clock: Clock, voters: tuple[str, ...] = ()) -> VerdictBoard:
    return VerdictBoard(client, prefix=PREFIX, me=me, quorum=2, voters=voters, stale_s=30, clock=clock)


async def test_votes_from_every_vantage_reach_the_core(etcd_server: EtcdProcess) -> None:
    clock = Clock()
    client = EtcdClient([etcd_server.url], timeout_s=2)
    try:
        boards = {v: board(client, v, clock) for v in ("v1", "v2", "v3")}
        leases = {v: (await client.grant(30))[0] for v in boards}
        said = {"v1": OfficeVerdict.DOWN, "v2": OfficeVerdict.DOWN, "v3": OfficeVerdict.HEALTHY}
        for v, b in boards.items():
            b.note(OfficeObserved("gc", said[v], f"{v} says {said[v].value}"))
            b.note(OfficeObserved("bb", OfficeVerdict.HEALTHY, "fine"))
            await b.publish(leases[v])
        round_ = await boards["v1"].collect({"gc": frozenset({"gc-r1"})})
        assert {"gc": said, "bb": dict.fromkeys(boards, OfficeVerdict.HEALTHY)} == {
            office: {v: verdict for v, (verdict, _) in by.items()} for office, by in round_.votes.items()
        }
        assert 2 == round_.quorum
        assert {"gc": frozenset({"gc-r1"})} == dict(round_.answering)
        # Two of three see gc down: the core, given the round, takes gc down (SUSPECT: the hold-down starts).
        state = step(make_state({"gc": ("bb",), "bb": ("gc",)}), round_, Policy(), clock.now).state
        assert Phase.SUSPECT == state.offices["gc"].phase

        # v2's lease ends (it died): its vote is gone, a minority of one is not enough.
        await client.revoke(leases["v2"])
        round_ = await boards["v1"].collect({})
        assert {"v1", "v3"} == set(round_.votes["gc"])
    finally:
        await client.close()


async def test_stale_foreign_and_malformed_documents_are_not_counted(etcd_server: EtcdProcess) -> None:
    clock = Clock()
    client = EtcdClient([etcd_server.url], timeout_s=2)
    try:
        lease, _ = await client.grant(30)
        mine = board(client, "v1", clock, voters=("v1", "v2"))
        mine.note(OfficeObserved("gc", OfficeVerdict.DOWN, "down"))
        await mine.publish(lease)
        stale = board(client, "v2", Clock(), voters=("v1", "v2"))
        stale._clock.now = clock.now - 31  # type: ignore[attr-defined]  # its monitor stalled
        stale.note(OfficeObserved("gc", OfficeVerdict.DOWN, "down"))
        await stale.publish(lease)
        stranger = board(client, "v9", clock)  # not one of the configured vantages
        stranger.note(OfficeObserved("gc", OfficeVerdict.DOWN, "down"))
        await stranger.publish(lease)
        await client.put(f"{PREFIX}verdicts/v1-broken", "{not json", lease=lease)
        await client.put(
            f"{PREFIX}verdicts/v2",
            json.dumps({"at": clock.now, "offices": {"gc": ["MELTED", ""]}}),
            lease=lease,
        )
        round_ = await mine.collect({})
        assert {"gc": {"v1"}} == {o: set(by) for o, by in round_.votes.items()}
    finally:
        await client.close()


@pytest.mark.parametrize("quorum", [1, 2, 3])
async def test_the_quorum_is_carried_as_configured(etcd_server: EtcdProcess, quorum: int) -> None:
    client = EtcdClient([etcd_server.url], timeout_s=2)
    try:
        b = VerdictBoard(client, prefix=PREFIX, me="v1", quorum=quorum, stale_s=30)
        assert quorum == (await b.collect({})).quorum
    finally:
        await client.close()


async def test_followers_adopt_what_the_leader_published_once(etcd_server: EtcdProcess) -> None:
    """The leader's state through etcd: a follower gets every office once, then only changes;
    nothing from a vantage that does not lead; nothing once the leader's lease ended."""
    clock = Clock()
    client = EtcdClient([etcd_server.url], timeout_s=2)
    try:
        lease, _ = await client.grant(30)
        leader, follower = board(client, "v1", clock), board(client, "v2", clock)
        state = make_state({"gc": ("bb",), "bb": ("gc",)}, epoch=7, paused=True)
        handed = replace(state.offices["gc"], phase=Phase.HANDED_OVER, alternate="bb", since=5.0)
        state = replace(state, offices=MappingProxyType({**state.offices, "gc": handed}))
        assert await leader.publish_state(lease, state, TERM)

        report = await follower.leader_report("v1")
        assert report is not None
        assert (7, True, {"gc", "bb"}) == (report.epoch, report.paused, set(report.offices))
        assert (Phase.HANDED_OVER, "bb") == (report.offices["gc"].phase, report.offices["gc"].alternate)
        followed = step(make_state({"gc": ("bb",), "bb": ("gc",)}, leader=False), report, Policy(), 6.0).state
        assert (Phase.HANDED_OVER, "bb", True) == (
            followed.offices["gc"].phase,
            followed.offices["gc"].alternate,
            followed.paused,
        )
        assert await follower.leader_report("v1") is None  # nothing new
        assert await follower.leader_report("v3") is None  # v1's document, and v3 leads now

        back = replace(handed, phase=Phase.OPEN, alternate=None)
        moved = replace(state, offices=MappingProxyType({**state.offices, "gc": back}))
        # A leader whose term ended (another vantage's leader key now) writes nothing.
        await client.put(LEADER_KEY, "v3")
        assert not await leader.publish_state(lease, moved, TERM)
        assert await follower.leader_report("v1") is None
        await client.txn([], [delete(LEADER_KEY)])
        assert await leader.publish_state(lease, moved, TERM)
        report = await follower.leader_report("v1")
        assert report is not None
        assert {"gc"} == set(report.offices)

        await client.revoke(lease)
        assert await follower.leader_report("v1") is None
    finally:
        await client.close()
