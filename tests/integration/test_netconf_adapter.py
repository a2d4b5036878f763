"""NetconfClient and NetconfProbe against real NETCONF servers on loopback.

Runs against yuma123 netconfd behind OpenSSH (`netconfd_device`) and, where the case does not
need to stop or freeze the server, against the lab's NETCONF server too (`lab_netconf_device`).
Payloads are ietf-interfaces entries with made-up names (netconfd runs `ifconfig NAME` on the
host when an interface entry is created or deleted, so never a real interface name).
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from baton.adapters.errors import NetconfConnectError, NetconfHostKeyError, NetconfRpcError
from baton.adapters.hostkeys import parse_pinned_key
from baton.adapters.netconf import NetconfClient, NetconfProbe
from baton.core.model import Device, NetconfSettings, Protocol, SecretRef
from tests.peers.endpoints import SshEndpoint

pytestmark = pytest.mark.peer("netconfd")

IF_NS = "urn:ietf:params:xml:ns:yang:ietf-interfaces"
MONITORING_SESSIONS = (
    '<netconf-state xmlns="urn:ietf:params:xml:ns:yang:ietf-netconf-monitoring"><sessions/></netconf-state>'
)
INTERFACES_FILTER = f'<interfaces xmlns="{IF_NS}"/>'
# A valid key that no server here has: pinning it must be refused.
STRANGER_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHm6Lkhf7O5T6sWz9gWZJbTi0D6Y3dHkq4bJxWv3r0Yb"


def interface_config(name: str, *, enabled: bool = True) -> str:
    return (
        '<config xmlns="urn:ietf:params:xml:ns:netconf:base:1.0">'
        f'<interfaces xmlns="{IF_NS}"><interface><name>{name}</name>'
        '<type xmlns:ianaift="urn:ietf:params:xml:ns:yang:iana-if-type">ianaift:ethernetCsmacd</type>'
        f"<enabled>{'true' if enabled else 'false'}</enabled></interface></interfaces></config>"
    )


def read_secret(ref: SecretRef) -> str:
    """Test resolver: file refs only, the file's content as is."""
    assert ref.kind == "file"
    return Path(ref.name).read_text()


def device_for(
    endpoint: SshEndpoint,
    tmp_path: Path,
    *,
    host_key: str | None = "pinned",
    use_password: bool = False,
    timeout_s: float = 10.0,
    probe_filter: str | None = None,
) -> Device:
    """An inventory Device for the endpoint (its pinned key unless host_key says otherwise)."""
    password = None
    if use_password:
        assert endpoint.password is not None
        secret = tmp_path / "netconf-password"
        secret.write_text(endpoint.password)
        password = SecretRef("file", str(secret))
    return Device(
        id="gc-core-1",
        office="gc",
        role="core",
        address=endpoint.host,
        host_key=endpoint.host_key if host_key == "pinned" else host_key,
        netconf=NetconfSettings(
            enabled=True,
            port=endpoint.port,
            username=endpoint.username,
            password=password,
            private_key=None if use_password else SecretRef("file", str(endpoint.private_key)),
            timeout_s=timeout_s,
            probe_filter=probe_filter,
        ),
    )


@dataclass
class Server:
    name: str
    endpoint: SshEndpoint


@pytest.fixture(params=["netconfd", "lab"])
def server(request: pytest.FixtureRequest) -> Server:
    """Each NETCONF server the adapter must work with."""
    if request.param == "netconfd":
        return Server("netconfd", request.getfixturevalue("netconfd_device").endpoint)
    return Server("lab", request.getfixturevalue("lab_netconf_device").endpoint)


@pytest.fixture
def connect(server: Server, tmp_path: Path) -> Callable[..., Any]:
    def opener(**kwargs: Any) -> Any:
        return NetconfClient.connect(device_for(server.endpoint, tmp_path), resolve=read_secret, **kwargs)

    return opener


async def test_probe_reports_ok_with_latency(server: Server, tmp_path: Path) -> None:
    """A probe of a healthy server is ok, with no reason and a latency, and stays ok on reuse."""
    probe = NetconfProbe(device_for(server.endpoint, tmp_path), resolve=read_secret, clock=lambda: 42.0)
    try:
        first = await probe.probe()
        second = await probe.probe()
    finally:
        await probe.close()
    assert (True, "", Protocol.NETCONF, 42.0) == (first.ok, first.reason, first.protocol, first.at)
    assert first.latency_s is not None
    assert first.latency_s > 0
    assert (True, "gc-core-1") == (second.ok, second.device)


async def test_probe_with_a_subtree_filter(tmp_path: Path, netconfd_device: Any) -> None:
    """A device's probe_filter is what the probe <get>s."""
    device = device_for(netconfd_device.endpoint, tmp_path, probe_filter=MONITORING_SESSIONS)
    probe = NetconfProbe(device, resolve=read_secret, reuse_session=False)
    try:
        observation = await probe.probe()
    finally:
        await probe.close()
    assert (True, "") == (observation.ok, observation.reason)


async def test_password_login_and_capabilities(server: Server, tmp_path: Path) -> None:
    """Password authentication works, and the hello's capabilities are exposed."""
    device = device_for(server.endpoint, tmp_path, use_password=True)
    async with NetconfClient.connect(device, resolve=read_secret, timeout_s=10) as nc:
        running = await nc.get_config("running", INTERFACES_FILTER)
        assert (True, True, True) == (
            nc.supports_candidate,
            nc.supports_confirmed_commit,
            nc.supports_persist,
        )
    assert "<data " in running


async def test_host_key_mismatch_is_refused(server: Server, tmp_path: Path) -> None:
    """A server whose key is not the pinned one is refused, naming both fingerprints."""
    device = device_for(server.endpoint, tmp_path, host_key=STRANGER_KEY)
    with pytest.raises(NetconfHostKeyError) as caught:
        await NetconfClient.connect(device, resolve=read_secret, timeout_s=10)
    offered = parse_pinned_key(server.endpoint.host_key).fingerprint
    pinned = parse_pinned_key(STRANGER_KEY).fingerprint
    assert (pinned, offered) == (caught.value.pinned, caught.value.offered)
    assert (
        f"host key mismatch for gc-core-1 at {server.endpoint.host}:{server.endpoint.port}: "
        f"pinned ssh-ed25519 {pinned}, server offered {offered}"
    ) == caught.value.cause


async def test_no_pinned_key_is_refused(tmp_path: Path, netconfd_device: Any) -> None:
    """Without a pinned host key there is no session (verification is never skipped)."""
    device = device_for(netconfd_device.endpoint, tmp_path, host_key=None)
    with pytest.raises(NetconfHostKeyError, match="no pinned host key for gc-core-1"):
        await NetconfClient.connect(device, resolve=read_secret)


async def test_secret_never_in_error(tmp_path: Path, netconfd_device: Any) -> None:
    """A failed password login names the user, never the password."""
    endpoint = netconfd_device.endpoint
    secret = tmp_path / "wrong-password"
    secret.write_text("not-the-Secret-123")
    device = device_for(endpoint, tmp_path, use_password=True)
    device = Device(
        id=device.id,
        office=device.office,
        role=device.role,
        address=device.address,
        host_key=device.host_key,
        netconf=NetconfSettings(
            enabled=True,
            port=endpoint.port,
            username=endpoint.username,
            password=SecretRef("file", str(secret)),
        ),
    )
    with pytest.raises(NetconfConnectError) as caught:
        await NetconfClient.connect(device, resolve=read_secret, timeout_s=10)
    assert f"authentication failed for user {endpoint.username} at {endpoint.host}:{endpoint.port}" == (
        caught.value.cause
    )
    assert "not-the-Secret-123" not in repr(caught.value) + str(caught.value)


async def test_probe_fails_while_stopped_and_recovers(tmp_path: Path, netconfd_device: Any) -> None:
    """A stopped server makes the probe fail with a reason; after start() it is ok again."""
    probe = NetconfProbe(device_for(netconfd_device.endpoint, tmp_path, timeout_s=5), resolve=read_secret)
    try:
        before = await probe.probe()
        netconfd_device.stop()
        during = await probe.probe()
        netconfd_device.start()
        after = await probe.probe()
    finally:
        await probe.close()
    endpoint = netconfd_device.endpoint
    assert (True, False, True) == (before.ok, during.ok, after.ok)
    assert f"TCP connect to {endpoint.host}:{endpoint.port}: connection refused" == during.reason
    assert during.latency_s is None


async def test_probe_after_a_restart_between_probes_is_ok(tmp_path: Path, netconfd_device: Any) -> None:
    """A server restarted since the last probe is ok at once: the stale session is replaced."""
    probe = NetconfProbe(device_for(netconfd_device.endpoint, tmp_path, timeout_s=5), resolve=read_secret)
    try:
        before = await probe.probe()
        netconfd_device.kill()
        netconfd_device.start()
        after = await probe.probe()
    finally:
        await probe.close()
    assert (True, True, "") == (before.ok, after.ok, after.reason)


async def test_probe_of_a_frozen_server_times_out(tmp_path: Path, netconfd_device: Any) -> None:
    """A server that stops answering (SIGSTOP) fails the probe with a timeout, not a hang."""
    probe = NetconfProbe(device_for(netconfd_device.endpoint, tmp_path, timeout_s=1), resolve=read_secret)
    try:
        assert (await probe.probe()).ok
        os.kill(netconfd_device.pid, signal.SIGSTOP)
        try:
            frozen = await probe.probe()
        finally:
            os.kill(netconfd_device.pid, signal.SIGCONT)
    finally:
        await probe.close()
    assert (False, "netconf get on gc-core-1 failed: no answer within 1 s") == (frozen.ok, frozen.reason)


async def test_source_address_is_what_the_server_sees(tmp_path: Path, netconfd_device: Any) -> None:
    """With source_address, the session comes from that address (management ACLs check it)."""
    device = device_for(netconfd_device.endpoint, tmp_path)
    async with NetconfClient.connect(device, resolve=read_secret, source_address="127.0.0.2") as nc:
        sessions = await nc.get(MONITORING_SESSIONS)
        session_id = nc.session_id
    assert f"<session-id>{session_id}</session-id>" in sessions
    assert "<source-host>127.0.0.2</source-host>" in sessions


async def test_confirmed_commit_then_confirming_commit_is_kept(
    connect: Callable[..., Any], server: Server
) -> None:
    """edit-config on candidate, confirmed commit, confirming commit: the change is in running."""
    async with connect() as nc:
        async with nc.locked("candidate"):
            await nc.discard_changes()
            await nc.edit_config("candidate", interface_config("labge001"))
            await nc.commit(confirmed=True, timeout_s=60)
            pending = await nc.get_config("running", INTERFACES_FILTER)
            await nc.commit()
        running = await nc.get_config("running", INTERFACES_FILTER)
    assert "<name>labge001</name>" in pending
    assert "<name>labge001</name>" in running


async def test_validate_accepts_a_good_candidate(connect: Callable[..., Any], server: Server) -> None:
    """<validate> of a candidate holding a good edit succeeds; discard-changes empties it again."""
    async with connect() as nc:
        await nc.edit_config("candidate", interface_config("labge005"))
        await nc.validate("candidate")
        await nc.discard_changes()
        candidate = await nc.get_config("candidate", INTERFACES_FILTER)
    assert "<name>labge005</name>" not in candidate


async def test_persisted_confirmed_commit_confirmed_from_another_session(
    connect: Callable[..., Any], server: Server
) -> None:
    """A confirmed commit with persist outlives its session; persist-id confirms it from another."""
    async with connect() as first:
        await first.edit_config("candidate", interface_config("labge002"))
        await first.commit(confirmed=True, timeout_s=60, persist="baton-run-7")
    async with connect() as second:
        await second.commit(persist_id="baton-run-7")
        running = await second.get_config("running", INTERFACES_FILTER)
        # confirmed already: nothing is pending any more, so there is nothing to cancel
        with pytest.raises(NetconfRpcError):
            await second.cancel_commit(persist_id="baton-run-7")
    assert "<name>labge002</name>" in running


async def test_cancel_commit_rolls_back(connect: Callable[..., Any], server: Server) -> None:
    """cancel-commit undoes a pending confirmed commit at once."""
    async with connect() as nc:
        await nc.edit_config("candidate", interface_config("labge003"))
        await nc.commit(confirmed=True, timeout_s=60)
        pending = await nc.get_config("running", INTERFACES_FILTER)
        await nc.cancel_commit()
        after = await nc.get_config("running", INTERFACES_FILTER)
    assert ("<name>labge003</name>" in pending, "<name>labge003</name>" in after) == (True, False)


async def test_bad_element_is_an_rpc_error_with_its_tag(connect: Callable[..., Any], server: Server) -> None:
    """An element the server does not know becomes NetconfRpcError tag unknown-element."""
    bad = interface_config("labge004").replace("<enabled>", "<no-such-leaf>1</no-such-leaf><enabled>")
    async with connect() as nc:
        with pytest.raises(NetconfRpcError) as caught:
            await nc.edit_config("candidate", bad)
        await nc.discard_changes()
    assert ("unknown-element", "edit-config", "gc-core-1") == (
        caught.value.tag,
        caught.value.operation,
        caught.value.device,
    )


async def test_lock_conflict_is_lock_denied(connect: Callable[..., Any], server: Server) -> None:
    """A second session cannot lock what the first holds: rpc-error tag lock-denied."""
    async with connect() as holder, connect() as other:
        async with holder.locked("candidate"):
            with pytest.raises(NetconfRpcError) as caught:
                await other.lock("candidate")
        await other.lock("candidate")  # free again once the holder unlocked
        await other.unlock("candidate")
    assert ("lock-denied", "lock") == (caught.value.tag, caught.value.operation)
