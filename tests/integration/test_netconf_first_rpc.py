"""netconfd (yuma123 2.13) holds back the reply to a request that reaches it with the client's
hello; the adapter waits a moment after the hellos. Fresh sessions, first RPC at once, many times."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from baton.adapters.errors import NetconfError
from baton.adapters.netconf import NetconfClient
from tests.integration.runner_helpers import device_for, read_secret
from tests.peers.netconfd import NetconfdProcess

pytestmark = pytest.mark.peer("netconfd")


@pytest.mark.parametrize("attempt", range(6))
async def test_the_first_rpc_of_a_fresh_session_is_answered(
    netconfd_factory: Callable[..., NetconfdProcess], attempt: int
) -> None:
    """Three fresh netconfd, a lock as the first RPC of each session: answered every time (it
    hung about once in 50 sessions before the adapter waited after the hellos)."""
    devices = [device_for(f"gc-nc-{i}", netconfd_factory().endpoint) for i in (1, 2, 3)]
    failures: list[str] = []

    async def first_rpc(device: object) -> None:
        for _ in range(4):
            async with NetconfClient.connect(device, resolve=read_secret, timeout_s=10) as nc:  # type: ignore[arg-type]
                try:
                    await nc.lock("candidate", rpc_timeout_s=4)
                    await nc.unlock("candidate", rpc_timeout_s=4)
                except NetconfError as exc:
                    failures.append(str(exc))

    await asyncio.gather(*(first_rpc(d) for d in devices))
    assert [] == failures
