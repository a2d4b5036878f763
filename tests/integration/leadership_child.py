"""One vantage's EtcdLeadership in a child process, so that a test can SIGKILL or SIGSTOP it.

    python -m tests.integration.leadership_child SPEC.json

SPEC: {"endpoints": [url, ...], "me": str, "prefix": str, "ttl_s": float, "timeout_s": float}.
The child samples its own `held` every 10 ms and prints one line per thing that happened, each
with `t=` its CLOCK_MONOTONIC (the same clock as the test's `time.monotonic()`):

    HELD t= epoch=          held became True        UNHELD t=        held became False
    CHANGE t= held= epoch= leader=                  on_change was called
    LEADER t= leader=                               view.leader changed
    WOKE t= gap= held= fence=                       first sample after a gap > 0.5 s (SIGCONT)
    REQUEST t= path= held=                          first etcd request after that wake

SIGTERM ends it cleanly (the lease is revoked).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from baton.adapters.etcd import EtcdClient
from baton.leadership import EtcdLeadership

SAMPLE_S = 0.01
GAP_S = 0.5


def say(kind: str, **fields: object) -> None:
    text = " ".join(f"{k}={v}" for k, v in fields.items())
    print(f"{kind} t={time.monotonic():.4f} {text}", flush=True)


class WatchedClient(EtcdClient):
    """Reports the first request made after a wake, and whether `held` was already False."""

    leadership: EtcdLeadership | None = None
    woke = False

    async def _post(self, path: str, body: Mapping[str, Any], *, auth: bool = True) -> dict[str, Any]:
        if self.woke:
            self.woke = False
            say("REQUEST", path=path, held=self.leadership.held if self.leadership else None)
        return await super()._post(path, body, auth=auth)


async def main(spec: Mapping[str, Any]) -> None:
    client = WatchedClient(spec["endpoints"], timeout_s=spec["timeout_s"])
    leadership = EtcdLeadership(
        client,
        prefix=spec["prefix"],
        me=spec["me"],
        ttl_s=spec["ttl_s"],
        request_timeout_s=spec["timeout_s"],
        api_address=f"http://{spec['me']}.test",
    )
    client.leadership = leadership

    def changed(held: bool, epoch: int, leader: str | None) -> None:
        say("CHANGE", held=held, epoch=epoch, leader=leader)

    async def sample() -> None:
        held, leader, last = False, None, time.monotonic()
        while True:
            await asyncio.sleep(SAMPLE_S)
            now = time.monotonic()
            if now - last > GAP_S:
                client.woke = True
                fence = leadership.fence(leadership.view.epoch)
                say("WOKE", gap=f"{now - last:.3f}", held=leadership.held, fence=fence)
            last = now
            if leadership.held != held:
                held = leadership.held
                say("HELD" if held else "UNHELD", epoch=leadership.view.epoch)
            if leadership.view.leader != leader:
                leader = leadership.view.leader
                say("LEADER", leader=leader)

    sampler = asyncio.create_task(sample())
    running = asyncio.create_task(leadership.run(changed))
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, running.cancel)
    say("READY", pid=os.getpid())
    try:
        await running
    except asyncio.CancelledError:
        pass
    finally:
        sampler.cancel()
        await client.close()
        say("STOPPED")


if __name__ == "__main__":
    asyncio.run(main(json.loads(Path(sys.argv[1]).read_text())))
