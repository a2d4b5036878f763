"""Dark devices and bounds of the NETCONF adapter, against the lab and a real netconfd.

* Dark devices: sessions are channels on the event loop, so connects to devices that never
  answer hold no thread and leave a live device's RPCs alone; a connect to a silent device gives
  up at its own timeout.
* Bounds: a write to a peer that stopped reading fails within the call's timeout; a reply above
  `max_reply_bytes` is refused and its session closed.

Only sanity bounds on time (generous ones); what is asserted is which call finished and which
did not.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncssh
import pytest

from baton.adapters.errors import (
    NetconfConnectError,
    NetconfReplyError,
    NetconfSessionError,
    NetconfTimeoutError,
)
from baton.adapters.netconf import NetconfClient, NetconfProbe
from baton.core.model import Device, NetconfSettings, SecretRef
from baton.inventory import load_inventory
from baton.playbook.steps import Connectors
from tests.integration.test_netconf_adapter import IF_NS, INTERFACES_FILTER, device_for, read_secret
from tests.lab_fixtures import ThreadedLabDevice
from tests.peers.endpoints import SshEndpoint

# Far above what any step here needs: only catches a hang, never measures speed.
SANITY_S = 20.0


class SilentListener:
    """Accepts TCP connections on 127.0.0.1 and never says a word (a device that hangs)."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port: int = self.sock.getsockname()[1]
        self.accepted: list[socket.socket] = []
        self._changed = threading.Condition()
        self._thread = threading.Thread(target=self._serve, name="silent-listener", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with self._changed:
                self.accepted.append(conn)
                self._changed.notify_all()

    def wait_accepted(self, count: int, timeout_s: float = SANITY_S) -> int:
        """Block until `count` connections were accepted (bounded); how many were."""
        with self._changed:
            self._changed.wait_for(lambda: len(self.accepted) >= count, timeout_s)
            return len(self.accepted)

    def close(self) -> None:
        self.sock.close()
        self._thread.join(5)
        for conn in self.accepted:
            conn.close()


@pytest.fixture
def silent() -> Iterator[SilentListener]:
    listener = SilentListener()
    try:
        yield listener
    finally:
        listener.close()


def silent_device(endpoint: SshEndpoint, tmp_path: Path, port: int, index: int, timeout_s: float) -> Device:
    base = device_for(endpoint, tmp_path, timeout_s=timeout_s)
    return Device(
        id=f"dark-{index}",
        office="dark",
        role="olt",
        address="127.0.0.1",
        host_key=base.host_key,
        netconf=NetconfSettings(
            enabled=True,
            port=port,
            username=base.netconf.username,
            private_key=base.netconf.private_key,
            timeout_s=timeout_s,
        ),
    )


async def cancel_all(tasks: list[asyncio.Task[Any]]) -> None:
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


# --- dark devices cost no thread ------------------------------------------------------------


async def test_probes_of_dark_devices_hold_no_thread_and_do_not_delay_a_live_device(
    tmp_path: Path, silent: SilentListener, lab_netconf_device: ThreadedLabDevice
) -> None:
    """Forty probes of devices that accept TCP and never answer are in flight; a live device's
    connect and <get-config> completes meanwhile, and the process has no more threads than
    before (a session is a channel on the event loop, not a thread)."""
    endpoint = lab_netconf_device.endpoint
    threads_before = threading.active_count()
    probes = [
        NetconfProbe(silent_device(endpoint, tmp_path, silent.port, i, 30.0), resolve=read_secret)
        for i in range(40)
    ]
    in_flight = [asyncio.create_task(p.probe()) for p in probes]
    try:
        assert 40 == await asyncio.to_thread(silent.wait_accepted, 40)
        running = await asyncio.wait_for(_connect_and_get(device_for(endpoint, tmp_path)), SANITY_S)
        assert "<data" in running
        assert not any(t.done() for t in in_flight)  # the probes are still waiting on silence
        # At most the event loops' default executors (asyncio's name lookups; bounded by the CPU
        # count), whatever the number of sessions: a thread per session would be 40 more here.
        assert threading.active_count() < threads_before + 2 * ((os.cpu_count() or 1) + 4), [
            t.name for t in threading.enumerate()
        ]
    finally:
        await cancel_all(in_flight)
        await asyncio.gather(*(p.close() for p in probes))


async def _connect_and_get(device: Device) -> str:
    async with NetconfClient.connect(device, resolve=read_secret) as nc:
        return await nc.get_config("running")


async def test_a_connect_to_a_silent_device_gives_up_at_its_timeout(
    tmp_path: Path, silent: SilentListener, lab_netconf_device: ThreadedLabDevice
) -> None:
    """The connect to a silent device times out (unreachable) at its 1 s timeout, not after an
    SSH library's own banner wait; a live device answers right after."""
    endpoint = lab_netconf_device.endpoint
    started = time.monotonic()
    with pytest.raises(NetconfConnectError) as caught:
        await NetconfClient.connect(
            silent_device(endpoint, tmp_path, silent.port, 0, 1.0), resolve=read_secret
        )
    assert caught.value.unreachable
    assert time.monotonic() - started < 5
    assert "<data" in await _connect_and_get(device_for(endpoint, tmp_path, timeout_s=5))


# --- bounds: writes --------------------------------------------------------------------------


def big_edit(size: int) -> str:
    return (
        '<config xmlns="urn:ietf:params:xml:ns:netconf:base:1.0">'
        f'<interfaces xmlns="{IF_NS}"><interface><name>labbig</name>'
        f"<description>{'x' * size}</description></interface></interfaces></config>"
    )


@pytest.mark.peer("netconfd")
async def test_a_write_to_a_server_that_stopped_reading_times_out(
    tmp_path: Path, netconfd_device: Any
) -> None:
    """netconfd frozen: a 4 MB request fills sshd's window and the write fails within the call's
    timeout (outcome unknown), the half-written session closed."""
    async with NetconfClient.connect(
        device_for(netconfd_device.endpoint, tmp_path), resolve=read_secret
    ) as nc:
        os.kill(netconfd_device.pid, signal.SIGSTOP)
        try:
            started = time.monotonic()
            with pytest.raises(NetconfTimeoutError) as caught:
                await nc.edit_config("candidate", big_edit(4_000_000), rpc_timeout_s=2)
            took_s = time.monotonic() - started
        finally:
            os.kill(netconfd_device.pid, signal.SIGCONT)
        assert not nc.is_connected
        with pytest.raises(NetconfSessionError):
            await nc.get_config("running", INTERFACES_FILTER)
    assert ("edit-config", 2, True) == (
        caught.value.operation,
        caught.value.timeout_s,
        caught.value.outcome_unknown,
    )
    assert took_s < SANITY_S


async def test_a_write_to_a_frozen_lab_device_times_out(
    tmp_path: Path, lab_netconf_device: ThreadedLabDevice
) -> None:
    """The lab's loop frozen (it reads nothing): the write fails within the call's timeout."""
    big = (
        '<config><management xmlns="urn:baton:lab:mgmt:1.0"><contact>'
        + "x" * 3_500_000
        + "</contact></management></config>"
    )
    async with NetconfClient.connect(
        device_for(lab_netconf_device.endpoint, tmp_path), resolve=read_secret
    ) as nc:
        frozen = threading.Thread(target=lambda: lab_netconf_device.call(lambda: time.sleep(6)))
        frozen.start()
        try:
            with pytest.raises(NetconfTimeoutError) as caught:
                await nc.edit_config("candidate", big, rpc_timeout_s=2)
            assert not nc.is_connected
        finally:
            frozen.join()
    assert caught.value.outcome_unknown


# --- bounds: replies -------------------------------------------------------------------------


@pytest.mark.peer("netconfd")
async def test_a_reply_above_the_bound_is_refused_and_the_session_closed(
    tmp_path: Path, netconfd_device: Any
) -> None:
    """A <get> answer from netconfd larger than max_reply_bytes: NetconfReplyError, session closed."""
    device = device_for(netconfd_device.endpoint, tmp_path)
    # its hello (~5 KB) fits, a full <get> (~30 KB of state) does not
    async with NetconfClient.connect(device, resolve=read_secret, max_reply_bytes=16384) as nc:
        with pytest.raises(NetconfReplyError) as caught:
            await nc.get()
        assert not nc.is_connected
    assert (
        "reply larger than 16384 bytes (the device's netconf.max_reply_bytes); session closed"
        == caught.value.cause
    )
    assert caught.value.outcome_unknown


def described(name: str, size: int) -> str:
    """An edit of interface `name` (present in netconfd's startup config): a long description."""
    return (
        '<config xmlns="urn:ietf:params:xml:ns:netconf:base:1.0">'
        f'<interfaces xmlns="{IF_NS}"><interface><name>{name}</name>'
        f"<description>{'d' * size}</description></interface></interfaces></config>"
    )


def inventory_for(root: Path, endpoint: SshEndpoint, netconf_extra: str) -> Path:
    """An inventory directory with one NETCONF device, `gc-core-1`, at the endpoint; its group
    `core` sets `netconf_extra` in its netconf settings (flow YAML, e.g. "max_reply_bytes: 65536")."""
    root.mkdir()
    (root / "offices.yaml").write_text("offices:\n  - {id: gc, name: Geumcheon, region: seoul}\n")
    (root / "groups.yaml").write_text(f"groups:\n  core: {{role: core, netconf: {{{netconf_extra}}}}}\n")
    (root / "devices").mkdir()
    (root / "devices" / "gc.yaml").write_text(
        "devices:\n"
        f"  - id: gc-core-1\n    office: gc\n    address: {endpoint.host}\n    groups: [core]\n"
        f"    host_key: '{endpoint.host_key}'\n"
        f"    netconf: {{enabled: true, port: {endpoint.port}, username: {endpoint.username},"
        f" private_key: 'file:{endpoint.private_key}'}}\n"
    )
    return root


@pytest.mark.peer("netconfd")
async def test_the_inventory_bound_refuses_a_real_reply_in_runs_and_probes(
    tmp_path: Path, netconfd_device: Any
) -> None:
    """netconf.max_reply_bytes from the inventory bounds the sessions a run opens (Connectors) and
    the monitor's probe: netconfd's ~80 KB answer above a 64 KiB bound fails with the setting named."""
    endpoint = netconfd_device.endpoint
    async with NetconfClient.connect(device_for(endpoint, tmp_path), resolve=read_secret) as nc:
        await nc.edit_config("candidate", described("ge-0/0/1", 80_000))
        await nc.commit()
        assert len(await nc.get_config("running", INTERFACES_FILTER)) > 80_000  # the default bound reads it
    group_netconf = f"max_reply_bytes: 65536, probe_filter: '{INTERFACES_FILTER}'"
    inventory = load_inventory(inventory_for(tmp_path / "inventory", endpoint, group_netconf))
    device = inventory.devices["gc-core-1"]
    assert 65536 == device.netconf.max_reply_bytes  # from the group

    session = await Connectors(resolve=read_secret).netconf(device)
    try:
        with pytest.raises(NetconfReplyError) as caught:
            await session.get_config("running", INTERFACES_FILTER)
        assert not session.is_connected
    finally:
        await session.close()
    assert (
        "netconf get-config on gc-core-1 failed: reply larger than 65536 bytes"
        " (the device's netconf.max_reply_bytes); session closed"
    ) == str(caught.value)

    probe = NetconfProbe(device, resolve=read_secret)  # what the monitor builds
    try:
        observation = await probe.probe()
    finally:
        await probe.close()
    assert (
        False,
        "netconf get on gc-core-1 failed: reply larger than 65536 bytes"
        " (the device's netconf.max_reply_bytes); session closed",
    ) == (observation.ok, observation.reason)


@pytest.mark.peer("netconfd")
async def test_a_hello_above_the_bound_fails_the_connect(tmp_path: Path, netconfd_device: Any) -> None:
    """Even the server's hello is bounded; the device answered, so it is not unreachable."""
    device = device_for(netconfd_device.endpoint, tmp_path)
    with pytest.raises(NetconfConnectError) as caught:
        await NetconfClient.connect(device, resolve=read_secret, max_reply_bytes=256)
    assert not caught.value.unreachable
    assert "reply larger than 256 bytes" in caught.value.cause


async def test_a_probe_reports_an_oversized_reply_as_a_failure(
    tmp_path: Path, lab_netconf_device: ThreadedLabDevice
) -> None:
    """A probe whose reply is too large is a failed probe with the reason, nothing worse."""
    management = '<management xmlns="urn:baton:lab:mgmt:1.0"/>'
    device = device_for(lab_netconf_device.endpoint, tmp_path, probe_filter=management)
    async with NetconfClient.connect(device, resolve=read_secret) as nc:  # a running config of ~8 KB
        contact = (
            f"<config><management xmlns='urn:baton:lab:mgmt:1.0'><contact>{'n' * 8000}</contact>"
            "</management></config>"
        )
        await nc.edit_config("candidate", contact)
        await nc.commit()
    probe = NetconfProbe(device, resolve=read_secret, max_reply_bytes=4096)  # the ~1 KB hello fits
    try:
        observation = await probe.probe()
    finally:
        await probe.close()
    assert (
        False,
        "netconf get on gc-core-1 failed: reply larger than 4096 bytes"
        " (the device's netconf.max_reply_bytes); session closed",
    ) == (observation.ok, observation.reason)


# --- replies Baton cannot read, from a raw SSH server ----------------------------------------

NC = "urn:ietf:params:xml:ns:netconf:base:1.0"
RAW_HELLO = (
    f'<hello xmlns="{NC}"><capabilities><capability>urn:ietf:params:netconf:base:1.1</capability>'
    "</capabilities><session-id>7</session-id></hello>]]>]]>"
).encode()


class RawServer:
    """An SSH server whose netconf subsystem says hello (base:1.1), then answers the first RPC
    with a given reply as is and keeps the session open; `device` is pinned to its key."""

    def __init__(self, acceptor: asyncssh.SSHAcceptor, device: Device) -> None:
        self.acceptor = acceptor
        self.device = device
        self.connections: set[asyncssh.SSHServerConnection] = set()

    async def close(self) -> None:
        self.acceptor.close()
        await self.acceptor.wait_closed()
        for conn in list(self.connections):
            conn.close()
            await conn.wait_closed()


class _NoAuth(asyncssh.SSHServer):
    def __init__(self, connections: set[asyncssh.SSHServerConnection]) -> None:
        self._connections = connections

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        self._connections.add(conn)

    def begin_auth(self, username: str) -> bool:
        return False  # anyone may log in: this server only exists to answer badly


async def _raw_netconf_server(reply: bytes, tmp_path: Path) -> RawServer:
    host_key = asyncssh.generate_private_key("ssh-ed25519")
    connections: set[asyncssh.SSHServerConnection] = set()

    async def on_process(process: asyncssh.SSHServerProcess[bytes]) -> None:
        process.stdout.write(RAW_HELLO)
        seen = b""
        while b"]]>]]>" not in seen:  # the client's hello
            seen += await process.stdin.read(65536)
        await process.stdin.read(65536)  # its first RPC (chunked)
        process.stdout.write(reply)
        while await process.stdin.read(65536):  # until the client goes away
            pass
        process.exit(0)

    acceptor = await asyncssh.create_server(
        lambda: _NoAuth(connections),
        "127.0.0.1",
        0,
        server_host_keys=[host_key],
        process_factory=on_process,
        encoding=None,
    )
    key_file = tmp_path / "raw_client_ed25519"
    asyncssh.generate_private_key("ssh-ed25519").write_private_key(key_file)
    device = Device(
        id="raw-1",
        office="raw",
        role="core",
        address="127.0.0.1",
        host_key=" ".join(host_key.export_public_key().decode().split()[:2]),
        netconf=NetconfSettings(
            enabled=True,
            port=acceptor.get_port(),
            username="anyone",
            private_key=SecretRef("file", str(key_file)),
            timeout_s=5,
        ),
    )
    server = RawServer(acceptor, device)
    server.connections = connections
    return server


def chunk(message: bytes) -> bytes:
    return b"\n#%d\n%s\n##\n" % (len(message), message)


@pytest.mark.parametrize(
    ("reply", "cause", "session_kept"),
    [
        (b"\n#zz\n<rpc-reply/>", "broken chunked framing: bad chunk header", False),
        (b"\n##\n", "broken chunked framing: end of chunks without a chunk", False),
        (chunk(b"<rpc-reply><<<<<<<<<"), "reply is not well-formed XML", True),
        (
            chunk(f"<rpc-reply xmlns='{NC}'><ok/></rpc-reply>".encode()),
            "unusable reply: <rpc-reply> without a message-id",
            False,
        ),
        (chunk(b"<data>x</data>"), "unexpected message <data>", True),
    ],
)
async def test_an_unreadable_reply_is_a_reply_error(
    reply: bytes, cause: str, session_kept: bool, tmp_path: Path
) -> None:
    """Broken framing, XML that does not parse, a reply that is not an <rpc-reply> of ours: the
    call fails with NetconfReplyError (outcome unknown); broken framing, or a reply that may not
    be to the request, closes the session."""
    server = await _raw_netconf_server(reply, tmp_path)
    try:
        async with NetconfClient.connect(server.device, resolve=read_secret, timeout_s=5) as nc:
            with pytest.raises(NetconfReplyError) as caught:
                await nc.get()
            kept = nc.is_connected
    finally:
        await server.close()
    assert (True, True, session_kept) == (
        caught.value.cause.startswith(cause),
        caught.value.outcome_unknown,
        kept,
    ), caught.value.cause
