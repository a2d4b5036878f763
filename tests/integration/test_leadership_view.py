"""What a vantage's leadership view says (`baton status`, metrics) while etcd does not answer it:
the lease time left counts down to the deadline, it does not stand at the last answer's."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import pytest

from baton.adapters.etcd import EtcdClient, EtcdUnavailable
from baton.leadership import EtcdLeadership
from tests.peers.etcd import EtcdProcess

pytestmark = pytest.mark.peer("etcd")

TTL_S = 3.0
TIMEOUT_S = 0.5
SAMPLE_S = 0.05


class CutClient(EtcdClient):
    """A real client that, once `cut`, answers every request as no endpoint would: not at all
    within the timeout (a partition between this vantage and every member)."""

    cut = False

    async def _post(self, path: str, body: Any, *, auth: bool = True) -> dict[str, Any]:
        if self.cut:
            await asyncio.sleep(self.timeout_s)
            raise EtcdUnavailable(f"no etcd endpoint answered within {self.timeout_s:g} s: cut off")
        return await super()._post(path, body, auth=auth)


async def test_the_lease_time_left_counts_down_while_etcd_does_not_answer(etcd_server: EtcdProcess) -> None:
    client = CutClient([etcd_server.url], timeout_s=TIMEOUT_S)
    leadership = EtcdLeadership(
        client, prefix="/baton-view/", me="v1", ttl_s=TTL_S, request_timeout_s=TIMEOUT_S
    )
    task = asyncio.create_task(leadership.run(lambda *_: None))

    def leading() -> bool:
        return leadership.view.held

    try:
        started = time.monotonic()
        while not leading():
            assert time.monotonic() - started < 10, "never led"
            await asyncio.sleep(SAMPLE_S)
        client.cut = True
        samples: list[tuple[float, float | None, float]] = []  # (now, shown, deadline)
        while leading():
            samples.append((time.monotonic(), leadership.view.lease_left_s, leadership.deadline))
            await asyncio.sleep(SAMPLE_S)
        assert leadership.view.lease_left_s is None
        assert len(samples) >= 10, samples
        # What the view shows is the time left to the deadline now (give or take its 0.1 s
        # refresh and this loop's own lateness), not the figure of the last keepalive answered.
        off = [
            (round(now - samples[0][0], 2), shown, round(deadline - now, 2))
            for now, shown, deadline in samples
        ]
        wrong = [(t, shown, left) for t, shown, left in off if shown is None or abs(shown - left) > 0.25]
        assert [] == wrong, off
        last = samples[-1][1]
        assert last is not None, off
        assert last < 0.5, off
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        client.cut = False
        await client.close()
