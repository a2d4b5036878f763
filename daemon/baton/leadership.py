"""Who may act: one vantage leads, on an etcd lease, with an epoch that fences what it does.

Theory of operation
-------------------
* **One leader.** Leadership is the key `<prefix>leader`, written by a transaction that succeeds
  only while the key does not exist (`create_revision == 0`), on this vantage's lease. The value
  says who leads. A vantage that finds the key taken follows, and campaigns again when it goes.
* **The epoch** is the number every run of a leader carries to the devices. It is the leader
  key's creation revision — it grows with every new leader of one cluster and stays fixed for a
  term — kept above a floor: the highest epoch any leader wrote to `<prefix>epoch`, and the
  highest this vantage has journaled (a cluster rebuilt from scratch starts its revisions at 1
  again). The new leader writes its epoch under its lease before it acts.
* **It knows when it stops being leader.** The lease is kept alive every TTL/3; the deadline is
  measured from when the keepalive was *sent* (monotonic clock) plus the TTL etcd granted, minus
  a margin of one request timeout — never from the reply, which would be optimistic. `held` is
  False from the deadline on, computed from the clock at every call (a process that was paused
  past its deadline wakes up not holding, before it has run a line), and `on_change(False)` is
  called at the deadline. A keepalive that fails because no member answers does not end the term
  by itself: the lease may well be alive (etcd does not elect a new raft leader in under 1–2 s,
  and extends every lease when it does), so it is retried until the deadline says otherwise; a
  partition and a dead store look the same from one node, and both end in the deadline (Patroni
  demotes too). A keepalive that says the lease is gone ends the term at once.
* **A term that lapsed stays over.** Once `held` was False — the deadline passed, even if a late
  keepalive answer shows the lease was still alive — the term is not resumed: the vantage finds
  its own key, deletes it and campaigns again, so whoever leads next (itself included) does so
  under a new, greater epoch, and nothing fenced with the old one is ever allowed again. The same
  happens when a campaign's answer was lost and its retry found the key already on this
  vantage's lease (without that, the vantage would follow itself forever while keeping the key
  alive: no leader at all).
* **Followers watch.** A vantage that lost a campaign watches the leader key until its next
  keepalive is due, and campaigns the moment the key is deleted (a revoked or expired lease), so a
  takeover takes the old lease's TTL, not a TTL plus a polling interval.
* **Presence.** Every vantage keeps `<prefix>vantages/<id>` on its own lease (who, API address,
  since) and publishes its office verdicts under `<prefix>verdicts/<id>/` the same way, so a dead
  vantage's votes vanish with it.

`held` is what the runner's fence asks before every change it makes to a device. `view` is one
object for the vantage's life (status and metrics hold on to it), updated in place.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from baton.adapters.etcd import KV, EtcdClient, EtcdError, EtcdUnavailable, created, delete, get, put
from baton.logs import get_logger

log = get_logger(component="leadership")

# held, epoch, the leader's vantage id (None: nobody known)
OnChange = Callable[[bool, int, str | None], None]


@dataclass(slots=True)
class LeaderView:
    """What this vantage knows of the leadership right now (status, metrics)."""

    me: str
    held: bool = False
    epoch: int = 0
    leader: str | None = None
    leader_api: str | None = None
    lease_left_s: float | None = None
    vantages: dict[str, dict[str, object]] = field(default_factory=dict)
    reason: str = "not started"  # why this vantage leads or does not, in a few words


class LocalLeadership:
    """A single vantage: the lease is always held (no etcd configured)."""

    def __init__(self, me: str = "local", floor: Callable[[], int] = lambda: 0) -> None:
        self.view = LeaderView(me, held=True, leader=me, reason="single vantage (no etcd)")
        self._floor = floor

    @property
    def held(self) -> bool:
        return True

    def fence(self, epoch: int) -> bool:
        return True

    async def run(self, on_change: OnChange) -> None:
        self.view.epoch = max(1, self._floor())
        on_change(True, self.view.epoch, self.view.me)
        await asyncio.Event().wait()  # hold it until cancelled


class EtcdLeadership:
    """Leadership among vantages over etcd (see the module docstring)."""

    def __init__(
        self,
        client: EtcdClient,
        *,
        prefix: str,
        me: str,
        ttl_s: float,
        request_timeout_s: float,
        api_address: str | None = None,
        floor: Callable[[], int] = lambda: 0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.client = client
        self.prefix = prefix
        self.ttl_s = ttl_s
        self.margin_s = request_timeout_s
        self.api_address = api_address
        self._floor = floor
        self._clock = clock
        self.view = LeaderView(me)
        self.lease = 0
        self._deadline = 0.0  # monotonic: past it, this vantage may not act
        self._next_keepalive = 0.0  # monotonic: when the lease is to be kept alive next
        self._create_revision = 0  # of the leader key this vantage wrote last
        self._watch_from = 0  # follower: the revision at which the leader key was last seen
        self._quiet_until = 0.0  # after step_down: no campaign before this (monotonic)
        self._on_change: OnChange | None = None

    @property
    def key(self) -> str:
        return f"{self.prefix}leader"

    @property
    def held(self) -> bool:
        return self.view.held and self._clock() < self._deadline

    @property
    def deadline(self) -> float:
        """The monotonic time from which this vantage may not act (meaningful while held)."""
        return self._deadline

    def fence(self, epoch: int) -> bool:
        """May a change stamped with `epoch` go to a device now?"""
        return self.held and epoch == self.view.epoch

    def lease_left_s(self) -> float | None:
        return max(0.0, self._deadline - self._clock()) if self.lease else None

    async def run(self, on_change: OnChange) -> None:
        self._on_change = on_change
        watch = asyncio.get_running_loop().create_task(self.watch_deadline(), name="lease deadline")
        try:
            unreachable = False
            while True:
                retry_s: float | None = None
                started = self._clock()
                try:
                    await self._cycle()
                    if unreachable:
                        log.warning("leadership.etcd_reachable", held=self.held, reason=self.view.reason)
                    unreachable = False
                except EtcdUnavailable as exc:
                    # The lease may be alive: keep it and try again — at once when this attempt
                    # already waited out its timeouts (a raft election ends any moment), else
                    # after one request timeout; the deadline ends the term.
                    self.view.reason = f"etcd unreachable: {exc}"
                    if not unreachable:  # one line when it starts, one when it ends
                        log.warning("leadership.etcd_unreachable", error=str(exc), held=self.held)
                    unreachable = True
                    retry_s = max(0.0, min(self.margin_s, self.ttl_s / 3) - (self._clock() - started))
                except EtcdError as exc:
                    # etcd answered, but not as asked (the lease is gone, credentials refused):
                    # start again on a new lease; the old one is revoked in case it lives on.
                    self._lost(f"etcd: {exc}")
                    if self.lease:
                        lease, self.lease = self.lease, 0
                        with contextlib.suppress(EtcdError):
                            await self.client.revoke(lease)
                    retry_s = min(self.margin_s, self.ttl_s / 3)
                await self._wait(retry_s)
        finally:
            watch.cancel()
            if self.lease:
                with contextlib.suppress(EtcdError):
                    await self.client.revoke(self.lease)
                self.lease = 0

    async def _wait(self, retry_s: float | None) -> None:
        """Until the next cycle: a retry pause, the next keepalive, or — following — the leader
        key's deletion, whichever comes first."""
        if retry_s is not None:
            await asyncio.sleep(retry_s)
            return
        if not self.lease:
            return  # the lease ended: a new one at once
        left = self._next_keepalive - self._clock()
        if left <= 0:
            return
        if not self.view.held and self._watch_from and self._clock() >= self._quiet_until:
            await self.client.wait_change(self.key, self._watch_from, left)
        else:
            await asyncio.sleep(left)

    def _extend(self, sent: float, ttl_s: float) -> None:
        """A keepalive sent at `sent` was answered: the deadline moves on — unless it had passed
        already, which ended the term (see "a term that lapsed stays over")."""
        if self.view.held and self._clock() >= self._deadline:
            self._lost("the lease deadline passed before a keepalive was answered")
        self._deadline = sent + ttl_s - self.margin_s
        self._next_keepalive = sent + self.ttl_s / 3

    async def _cycle(self) -> None:
        sent = self._clock()
        if not self.lease:
            self.lease, granted = await self.client.grant(self.ttl_s)
            self._extend(sent, granted)
        else:
            lease = self.lease
            left = await self.client.keepalive(lease)
            if self.lease != lease:
                return  # stepped down meanwhile: that lease is revoked
            if left <= 0:
                self._lost("the lease expired")
                self.lease = 0
                return
            self._extend(sent, left)
        await self._present()
        if self.view.held:
            owner = await self.client.get(self.key)
            if owner is not None and owner.create_revision == self._create_revision:
                self.view.lease_left_s = self.lease_left_s()
                return
            self._lost("the leader key is gone or someone else's")
        await self._campaign()

    async def _present(self) -> None:
        if not self.lease:
            return  # never a key without a lease: it would outlive this vantage
        value = json.dumps({"vantage": self.view.me, "api": self.api_address, "at": time.time()})
        await self.client.put(f"{self.prefix}vantages/{self.view.me}", value, lease=self.lease)
        self.view.vantages = {
            kv.key.removeprefix(f"{self.prefix}vantages/"): kv.json()
            for kv in await self.client.get_prefix(f"{self.prefix}vantages/")
        }

    async def _campaign(self) -> None:
        if self._clock() < self._quiet_until:
            owner = await self.client.get(self.key)
            self._follow(owner, 0)
            self.view.reason = "stepped down: not campaigning for one TTL"
            return
        value = json.dumps({"vantage": self.view.me, "api": self.api_address})
        for _ in range(2):
            if not self.lease:
                return  # stepped down meanwhile; a leader key without a lease would never go
            result = await self.client.txn(
                [created(self.key, 0)], [put(self.key, value, self.lease)], [get(self.key)]
            )
            if result.succeeded:
                await self._take(result.revision)
                return
            owner = result.ranges[0][0] if result.ranges and result.ranges[0] else None
            if owner is None or owner.lease != self.lease:
                self._follow(owner, result.revision)
                return
            # Our own lease holds the key, yet we do not lead: a term that lapsed, or a won
            # campaign whose answer was lost. End that term; campaign again for a new epoch.
            log.warning("leadership.own_key_deleted", create_revision=owner.create_revision)
            await self.client.txn([created(self.key, owner.create_revision)], [delete(self.key)])

    def term(self) -> list[dict[str, Any]]:
        """The compare that holds while this vantage's term does (its leader key, as it wrote
        it): a write conditioned on it never lands after another vantage took over."""
        return [created(self.key, self._create_revision if self.view.held else -1)]

    def _follow(self, owner: KV | None, revision: int) -> None:
        try:
            leader = owner.json() if owner is not None else {}
        except ValueError:
            leader = {}
        if not isinstance(leader, dict):
            leader = {}
        self.view.leader = str(leader["vantage"]) if leader.get("vantage") else None
        self.view.leader_api = str(leader["api"]) if leader.get("api") else None
        self.view.reason = f"following {self.view.leader}"
        self.view.lease_left_s = None
        self._watch_from = revision

    async def _take(self, create_revision: int) -> None:
        """The leader key is ours (created at `create_revision`): the epoch, above every floor,
        written while the key is still ours; then this vantage leads."""
        self._create_revision = create_revision
        lease = self.lease
        floor_kv = await self.client.get(f"{self.prefix}epoch")
        try:
            written_floor = int(floor_kv.text) if floor_kv is not None else 0
        except ValueError:
            written_floor = 0
        epoch = max(create_revision, max(self._floor(), written_floor) + 1)
        written = await self.client.txn(
            [created(self.key, create_revision)], [put(f"{self.prefix}epoch", str(epoch))]
        )
        if not written.succeeded or self.lease != lease:
            return  # the key went, or this vantage stepped down, meanwhile
        if self._clock() >= self._deadline:
            # Won too late to act on: the next cycle finds its own key and starts a new term.
            self.view.reason = "won the campaign after the lease deadline"
            return
        view = self.view
        view.held, view.epoch, view.leader, view.leader_api = True, epoch, view.me, self.api_address
        view.lease_left_s = self.lease_left_s()
        view.reason = f"leader since epoch {epoch}"
        self._watch_from = 0
        log.warning("leadership.acquired", epoch=epoch, lease_left_s=round(self.lease_left_s() or 0, 2))
        if self._on_change is not None:
            self._on_change(True, epoch, view.me)

    def _lost(self, why: str) -> None:
        was = self.view.held
        self.view.held = False
        self.view.reason = why
        self.view.lease_left_s = None
        if was:
            self.view.leader = self.view.leader_api = None
            log.warning("leadership.lost", why=why, epoch=self.view.epoch)
            if self._on_change is not None:
                self._on_change(False, self.view.epoch, None)

    async def watch_deadline(self) -> None:
        """Report the end of the term at the deadline, even while etcd does not answer. (`held`
        itself needs no one to report it: it reads the clock.)"""
        while True:
            if self.view.held:
                left = self._deadline - self._clock()
                if left <= 0:
                    self._lost("the lease deadline passed without a keepalive answered in time")
                    continue
                # Status and metrics show the time left now: while keepalives fail (etcd cut
                # off), it counts down to the deadline instead of standing at the last answer's.
                self.view.lease_left_s = left
                await asyncio.sleep(min(left, 0.1))  # the deadline only moves later while held
            else:
                await asyncio.sleep(0.1)

    async def step_down(self, why: str) -> None:
        """Give the leadership up (a device has seen a newer leader's epoch): stop acting, revoke
        the lease (the key goes with it, so a follower takes over at once), and do not campaign
        again for one TTL."""
        self._lost(why)
        self._quiet_until = self._clock() + self.ttl_s
        if self.lease:
            lease, self.lease = self.lease, 0
            with contextlib.suppress(EtcdError):
                await self.client.revoke(lease)
