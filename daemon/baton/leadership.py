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
  a margin of one request timeout — never from the reply, which would be optimistic. Past the
  deadline, or when a keepalive says the lease is gone, or etcd cannot be reached at all, the
  vantage stops acting at once (`held` is False; `on_change(False)`), whatever it believes
  otherwise: a partition and a dead store look the same from one node (Patroni demotes too).
* **Presence.** Every vantage keeps `<prefix>vantages/<id>` on its own lease (who, API address,
  since) and publishes its office verdicts under `<prefix>verdicts/<id>/` the same way, so a dead
  vantage's votes vanish with it.

`held` is what the runner's fence asks before every change it makes to a device.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from baton.adapters.etcd import EtcdClient, EtcdError, created, get, put
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
        self._create_revision = 0
        self._on_change: OnChange | None = None

    @property
    def key(self) -> str:
        return f"{self.prefix}leader"

    @property
    def held(self) -> bool:
        return self.view.held and self._clock() < self._deadline

    def fence(self, epoch: int) -> bool:
        """May a change stamped with `epoch` go to a device now?"""
        return self.held and epoch == self.view.epoch

    def lease_left_s(self) -> float | None:
        return max(0.0, self._deadline - self._clock()) if self.lease else None

    async def run(self, on_change: OnChange) -> None:
        self._on_change = on_change
        watch = asyncio.get_running_loop().create_task(self.watch_deadline(), name="lease deadline")
        try:
            while True:
                try:
                    await self._cycle()
                except EtcdError as exc:
                    self._lost(f"etcd: {exc}")
                    self.lease = 0
                await asyncio.sleep(self.ttl_s / 3)
        finally:
            watch.cancel()
            if self.lease:
                with contextlib.suppress(EtcdError):
                    await self.client.revoke(self.lease)

    async def _cycle(self) -> None:
        if not self.lease:
            sent = self._clock()
            self.lease, granted = await self.client.grant(self.ttl_s)
            self._deadline = sent + granted - self.margin_s
        else:
            sent = self._clock()
            left = await self.client.keepalive(self.lease)
            if left <= 0:
                self.lease = 0
                self._lost("lease expired")
                return
            self._deadline = sent + left - self.margin_s
        await self._present()
        if self.view.held:
            owner = await self.client.get(self.key)
            if owner is None or owner.create_revision != self._create_revision:
                self._lost("the leader key is gone or someone else's")
            else:
                self.view.lease_left_s = self.lease_left_s()
            return
        await self._campaign()

    async def _present(self) -> None:
        value = json.dumps({"vantage": self.view.me, "api": self.api_address, "at": time.time()})
        await self.client.put(f"{self.prefix}vantages/{self.view.me}", value, lease=self.lease)
        self.view.vantages = {
            kv.key.removeprefix(f"{self.prefix}vantages/"): kv.json()
            for kv in await self.client.get_prefix(f"{self.prefix}vantages/")
        }

    async def _campaign(self) -> None:
        value = json.dumps({"vantage": self.view.me, "api": self.api_address})
        result = await self.client.txn(
            [created(self.key, 0)], [put(self.key, value, self.lease)], [get(self.key)]
        )
        if not result.succeeded:
            owner = result.ranges[0][0] if result.ranges and result.ranges[0] else None
            leader = owner.json() if owner is not None else {}
            self.view.leader = str(leader.get("vantage")) if leader else None
            self.view.leader_api = leader.get("api") if leader else None
            self.view.reason = f"following {self.view.leader}"
            self.view.lease_left_s = None
            return
        self._create_revision = result.revision
        floor_kv = await self.client.get(f"{self.prefix}epoch")
        floor = max(self._floor(), int(floor_kv.text) if floor_kv is not None else 0)
        epoch = max(self._create_revision, floor + 1)
        # Written under the lease, while the leader key is still ours: the floor of every later leader.
        written = await self.client.txn(
            [created(self.key, self._create_revision)], [put(f"{self.prefix}epoch", str(epoch))]
        )
        if not written.succeeded:
            return
        self.view = LeaderView(
            self.view.me,
            held=True,
            epoch=epoch,
            leader=self.view.me,
            leader_api=self.api_address,
            lease_left_s=self.lease_left_s(),
            vantages=self.view.vantages,
            reason=f"leader since epoch {epoch}",
        )
        log.warning("leadership.acquired", epoch=epoch, lease_left_s=round(self.lease_left_s() or 0, 2))
        if self._on_change is not None:
            self._on_change(True, epoch, self.view.me)

    def _lost(self, why: str) -> None:
        was = self.view.held
        self.view.held = False
        self.view.reason = why
        self.view.lease_left_s = None
        if was:
            log.warning("leadership.lost", why=why, epoch=self.view.epoch)
            if self._on_change is not None:
                self._on_change(False, self.view.epoch, None)

    async def watch_deadline(self) -> None:
        """Stop acting the moment the deadline passes, even while etcd does not answer."""
        while True:
            if self.view.held and self._clock() >= self._deadline:
                self._lost("the lease deadline passed without a keepalive answered in time")
            await asyncio.sleep(0.1)

    async def step_down(self, why: str) -> None:
        """Give the leadership up (a device has seen a newer leader's epoch)."""
        self._lost(why)
        if self.lease:
            with contextlib.suppress(EtcdError):
                await self.client.revoke(self.lease)
            self.lease = 0
