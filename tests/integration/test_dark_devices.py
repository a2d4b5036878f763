"""Dark devices cost nothing extra: a poll waiting out its timeout gives its concurrency slot
back, and a NETCONF probe of a device that does not answer stops at a TCP connect.

"Dark" on loopback without a namespace: UDP to a socket that never reads, TCP to a listener
whose accept queue is full (the kernel drops further SYNs: the connect times out, as with a
powered-off device). bench/dark.py measures the same with 1,000 live devices and thousands of
dark ones behind an nftables drop rule.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import Iterator
from types import MappingProxyType

import pytest

from baton.adapters.snmp import SnmpPoller
from baton.core.model import Device, Inventory, NetconfSettings, Office, Policy, SecretRef, SnmpSettings
from baton.metrics import Metrics
from baton.monitor import Monitor, tcp_gate

HOST_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIMDiP6I9JyxJTypCB1No3v/A6ody1uSD4Li9QbMqiIP8"


@pytest.fixture
def silent_udp() -> Iterator[int]:
    """A UDP port where datagrams arrive and nothing ever answers."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


@pytest.fixture
def dark_tcp() -> Iterator[int]:
    """A TCP port whose connects time out: a listener with a full accept queue."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(0)
        port = server.getsockname()[1]
        fillers = []
        for _ in range(3):
            filler = socket.socket()
            filler.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                filler.connect(("127.0.0.1", port))
            fillers.append(filler)
        time.sleep(0.05)
        try:
            yield port
        finally:
            for filler in fillers:
                filler.close()


@pytest.fixture
def mute_tcp() -> Iterator[int]:
    """A TCP port that accepts and never says a word (no SSH banner)."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(16)
        yield server.getsockname()[1]


def closed_tcp_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def snmp_device(device_id: str, port: int) -> Device:
    settings = SnmpSettings(community=SecretRef("env", "C"), port=port, timeout_s=1.0, retries=0)
    return Device(device_id, "co-a", "router", "127.0.0.1", snmp=settings)


@pytest.mark.parametrize(("hold_s", "second_waits"), [(0.02, False), (30.0, True)])
async def test_a_poll_waiting_out_a_timeout_gives_its_slot_back(
    silent_udp: int, hold_s: float, second_waits: bool
) -> None:
    """With one concurrency slot, a second poll starts while the first is still waiting for a
    dark device's answer (after `slot_hold_s`), instead of after its timeout; with a hold longer
    than the timeout, it waits as before."""
    poller = SnmpPoller(lambda ref: "public", max_concurrency=1, slot_hold_s=hold_s, clock=time.monotonic)
    try:
        first, second = await asyncio.gather(
            poller.poll(snmp_device("dark-1", silent_udp)), poller.poll(snmp_device("dark-2", silent_udp))
        )
    finally:
        poller.close()
    first_ended = first.at + (first.latency_s or 0.0)
    assert ("timeout", "timeout") == (first.failure, second.failure)
    assert second_waits == (second.at >= first_ended)


def test_slot_hold_must_be_positive() -> None:
    """A poll must hold its slot for some time: 0 would make the limit meaningless."""
    with pytest.raises(ValueError, match="slot_hold_s"):
        SnmpPoller(lambda ref: "public", slot_hold_s=0)


def netconf_device(port: int, timeout_s: float = 0.3) -> Device:
    return Device(
        f"nc-{port}",
        "co-a",
        "router",
        "127.0.0.1",
        host_key=HOST_KEY,
        netconf=NetconfSettings(
            enabled=True, port=port, username="baton", password=SecretRef("env", "P"), timeout_s=timeout_s
        ),
    )


async def test_tcp_gate_tells_silence_from_an_answer(dark_tcp: int, mute_tcp: int) -> None:
    """The gate's reason when nothing answers (worded as the NETCONF adapter words it); None
    when something accepted the connection, even if it never speaks."""
    closed = closed_tcp_port()
    assert [
        f"TCP connect to 127.0.0.1:{dark_tcp} timed out after 0.3 s",
        f"TCP connect to 127.0.0.1:{closed}: connection refused",
        None,
    ] == [await tcp_gate(netconf_device(port)) for port in (dark_tcp, closed, mute_tcp)]


async def probed(device: Device) -> str:
    """The NETCONF reason the monitor's own probe gave, one device."""
    inventory = Inventory(
        offices=MappingProxyType({"co-a": Office("co-a", "A", "r")}),
        devices=MappingProxyType({device.id: device}),
    )
    monitor = Monitor(
        inventory,
        Policy(poll_interval_s=0.5),
        resolve=lambda ref: "secret",
        metrics=Metrics(),
        on_observed=lambda event: None,
    )
    await monitor.start()
    try:
        async with asyncio.timeout(30):
            while not (reason := monitor.device_views("co-a")[0]["probes"]["netconf"]["reason"]):  # noqa: ASYNC110
                await asyncio.sleep(0.05)
    finally:
        await monitor.stop()
    return str(reason)


async def test_a_dark_netconf_device_fails_its_probe_at_the_tcp_gate(dark_tcp: int) -> None:
    """A device whose connect times out fails its probe with the connect timeout (the TCP gate:
    no SSH attempt for it)."""
    assert f"TCP connect to 127.0.0.1:{dark_tcp} timed out after 0.3 s" == await probed(
        netconf_device(dark_tcp)
    )


async def test_a_device_that_answers_gets_the_real_probe(mute_tcp: int) -> None:
    """Something accepted the connection: the real NETCONF probe runs and says what went wrong
    past TCP."""
    reason = await probed(netconf_device(mute_tcp))
    assert "TCP connect" not in reason
    assert "NETCONF" in reason or "SSH" in reason
