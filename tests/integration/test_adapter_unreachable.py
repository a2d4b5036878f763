"""Which connect failures are `unreachable` (the device did not answer at all), against real peers.

The runner skips unreachable devices (pending, caught up later) and fails on the others, so this
fact must be right: nothing answered (powered-off or cut lab device, closed port, a listener that
accepts and never speaks or closes before the SSH banner) is unreachable; anything that answered
(wrong host key, wrong key or password, netconfd stopped behind a running sshd, a server that
sent its banner and then stalled) is not. NETCONF (`NetconfClient`) and SSH (`SshClient`) both.
"""

from __future__ import annotations

import dataclasses
import socket
import threading
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import asyncssh
import pytest

from baton.adapters.errors import AdapterError, HostKeyError, NetconfConnectError, SshConnectError
from baton.adapters.netconf import NetconfClient
from baton.adapters.ssh import SshClient
from baton.core.model import Device, NetconfSettings, SecretRef, SshSettings
from tests.lab_fixtures import ThreadedLabDevice
from tests.peers.endpoints import SshEndpoint

# A valid key that no server here has: pinning it must be refused.
STRANGER_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHm6Lkhf7O5T6sWz9gWZJbTi0D6Y3dHkq4bJxWv3r0Yb"
PROTOCOLS = ("netconf", "ssh")


def read_secret(ref: SecretRef) -> str:
    assert ref.kind == "file"
    return Path(ref.name).read_text()


def device_for(
    endpoint: SshEndpoint,
    *,
    port: int | None = None,
    key: Path | None = None,
    password: Path | None = None,
    host_key: str | None = None,
    timeout_s: float = 10.0,
) -> Device:
    """A device reached over NETCONF and SSH at the endpoint (or another port of its host)."""
    credentials: dict[str, Any] = (
        {"password": SecretRef("file", str(password))}
        if password is not None
        else {"private_key": SecretRef("file", str(key or endpoint.private_key))}
    )
    port = port or endpoint.port
    return Device(
        id="gc-core-9",
        office="gc",
        role="core",
        address=endpoint.host,
        host_key=host_key or endpoint.host_key,
        netconf=NetconfSettings(
            enabled=True, port=port, username=endpoint.username, timeout_s=timeout_s, **credentials
        ),
        ssh=SshSettings(
            enabled=True, port=port, username=endpoint.username, timeout_s=timeout_s, **credentials
        ),
    )


async def connect_error(protocol: str, device: Device) -> AdapterError:
    """The error a connect over `protocol` fails with (the test fails if it connects)."""
    connect: Callable[..., Awaitable[Any]] = (
        NetconfClient.connect if protocol == "netconf" else SshClient.connect
    )
    expected = NetconfConnectError if protocol == "netconf" else SshConnectError

    async def connect_and_close() -> None:
        client = await connect(device, resolve=read_secret)
        await client.close()

    with pytest.raises(expected) as caught:
        await connect_and_close()
    return caught.value


class Listener:
    """A TCP listener on 127.0.0.1 that never speaks SSH: `silent` (accepts, says nothing),
    `close` (accepts and closes at once) or `banner` (sends an SSH banner, then says nothing)."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port: int = self.sock.getsockname()[1]
        self._held: list[socket.socket] = []
        self._thread = threading.Thread(target=self._serve, name=f"listener-{mode}", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return  # closed
            if self.mode == "close":
                conn.close()
                continue
            if self.mode == "banner":
                conn.sendall(b"SSH-2.0-OpenSSH_9.2p1 Debian-2\r\n")
            self._held.append(conn)

    def close(self) -> None:
        self.sock.close()
        self._thread.join(5)
        for conn in self._held:
            conn.close()


@pytest.fixture
def listener(request: pytest.FixtureRequest) -> Iterator[Listener]:
    opened = Listener(request.param)
    try:
        yield opened
    finally:
        opened.close()


def closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- nothing answered: unreachable -----------------------------------------------------------


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_a_powered_off_lab_device_is_unreachable(
    protocol: str, lab_netconf_device: ThreadedLabDevice
) -> None:
    """A powered-off lab device accepts TCP and drops it before the SSH banner: unreachable."""
    lab_netconf_device.device.faults.powered = False
    error = await connect_error(protocol, device_for(lab_netconf_device.endpoint))
    assert (True, "connect") == (error.unreachable, error.operation)


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_a_cut_lab_device_is_unreachable(protocol: str, lab_netconf_device: ThreadedLabDevice) -> None:
    """A lab device behind a cut uplink: unreachable."""
    lab_netconf_device.device.faults.cut = True
    assert (await connect_error(protocol, device_for(lab_netconf_device.endpoint))).unreachable


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_a_closed_port_is_unreachable(protocol: str, lab_netconf_device: ThreadedLabDevice) -> None:
    """Nothing listening (connection refused): unreachable, and the cause says so."""
    port = closed_port()
    error = await connect_error(protocol, device_for(lab_netconf_device.endpoint, port=port))
    assert (True, f"TCP connect to 127.0.0.1:{port}: connection refused") == (error.unreachable, error.cause)


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("listener", ["silent", "close"], indirect=True)
async def test_a_listener_that_never_speaks_ssh_is_unreachable(
    protocol: str, listener: Listener, lab_netconf_device: ThreadedLabDevice
) -> None:
    """Accepted, then silence until the timeout, or closed before any banner: unreachable."""
    device = device_for(lab_netconf_device.endpoint, port=listener.port, timeout_s=1)
    assert (await connect_error(protocol, device)).unreachable


@pytest.mark.peer("netconfd")
async def test_netconfd_and_its_sshd_stopped_is_unreachable(tmp_path: Path, netconfd_device: Any) -> None:
    """The whole device down (netconfd and its sshd stopped): refused, unreachable."""
    endpoint = netconfd_device.endpoint
    netconfd_device.stop()
    for protocol in PROTOCOLS:
        assert (await connect_error(protocol, device_for(endpoint, timeout_s=5))).unreachable


@pytest.mark.peer("sshd")
async def test_a_stopped_sshd_is_unreachable(sshd_server: Any) -> None:
    """Plain OpenSSH stopped: the SSH connect is refused, unreachable."""
    endpoint = sshd_server.endpoint
    sshd_server.stop()
    assert (await connect_error("ssh", device_for(endpoint, timeout_s=5))).unreachable


# --- something answered: not unreachable -----------------------------------------------------


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("listener", ["banner"], indirect=True)
async def test_a_server_that_sent_its_banner_then_stalled_is_not_unreachable(
    protocol: str, listener: Listener, lab_netconf_device: ThreadedLabDevice
) -> None:
    """An SSH banner, then nothing until the timeout: something answered, so not unreachable."""
    device = device_for(lab_netconf_device.endpoint, port=listener.port, timeout_s=1)
    error = await connect_error(protocol, device)
    assert (False, True) == (error.unreachable, "within 1 s" in error.cause)


@pytest.mark.peer("netconfd")
async def test_netconfd_stopped_behind_a_running_sshd_is_not_unreachable(netconfd_device: Any) -> None:
    """sshd answers but the netconf subsystem has no server behind it: a failure, not unreachable."""
    netconfd_device._netconfd.kill()  # netconfd only; its sshd keeps running
    error = await connect_error("netconf", device_for(netconfd_device.endpoint, timeout_s=5))
    assert (False, True) == (error.unreachable, "NETCONF hello" in error.cause), error.cause


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_a_wrong_host_key_is_not_unreachable(
    protocol: str, lab_netconf_device: ThreadedLabDevice
) -> None:
    """A server whose key is not the pinned one answered: host key error, not unreachable."""
    error = await connect_error(protocol, device_for(lab_netconf_device.endpoint, host_key=STRANGER_KEY))
    assert (False, True) == (error.unreachable, isinstance(error, HostKeyError))


@pytest.mark.peer("netconfd")
async def test_a_wrong_host_key_at_netconfd_is_not_unreachable(netconfd_device: Any) -> None:
    """The same against netconfd's OpenSSH, for NETCONF and SSH."""
    for protocol in PROTOCOLS:
        error = await connect_error(protocol, device_for(netconfd_device.endpoint, host_key=STRANGER_KEY))
        assert (False, True) == (error.unreachable, isinstance(error, HostKeyError))


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_a_wrong_key_is_not_unreachable(
    protocol: str, tmp_path: Path, lab_netconf_device: ThreadedLabDevice
) -> None:
    """A client key the device does not know: authentication failed, not unreachable."""
    key = tmp_path / "stranger_ed25519"
    asyncssh.generate_private_key("ssh-ed25519").write_private_key(key)
    error = await connect_error(protocol, device_for(lab_netconf_device.endpoint, key=key))
    assert (False, True) == (error.unreachable, error.cause.startswith("authentication failed"))


@pytest.mark.peer("netconfd")
async def test_a_wrong_password_at_netconfd_is_not_unreachable(tmp_path: Path, netconfd_device: Any) -> None:
    """A wrong password at a real netconfd/sshd: authentication failed, not unreachable."""
    password = tmp_path / "password"
    password.write_text("not-the-password")
    error = await connect_error("netconf", device_for(netconfd_device.endpoint, password=password))
    assert (False, "authentication failed") == (error.unreachable, error.cause[:21])


@pytest.mark.peer("sshd")
async def test_a_wrong_key_at_sshd_is_not_unreachable(tmp_path: Path, sshd_server: Any) -> None:
    """A client key OpenSSH does not know: authentication failed, not unreachable."""
    key = tmp_path / "stranger_ed25519"
    asyncssh.generate_private_key("ssh-ed25519").write_private_key(key)
    error = await connect_error("ssh", device_for(sshd_server.endpoint, key=key))
    assert (False, "authentication failed") == (error.unreachable, error.cause[:21])


async def test_missing_credentials_are_not_unreachable(lab_netconf_device: ThreadedLabDevice) -> None:
    """No username in the inventory: refused before any connect, never unreachable."""
    device = device_for(lab_netconf_device.endpoint)
    device = dataclasses.replace(
        device,
        netconf=dataclasses.replace(device.netconf, username=None),
        ssh=dataclasses.replace(device.ssh, username=None),
    )
    for protocol in PROTOCOLS:
        assert not (await connect_error(protocol, device)).unreachable
