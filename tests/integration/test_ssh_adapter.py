"""SshClient and run_command against a real OpenSSH sshd on loopback (`sshd_server`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from baton.adapters.errors import SshConnectError, SshError, SshHostKeyError, SshTimeoutError
from baton.adapters.hostkeys import parse_pinned_key
from baton.adapters.ssh import CommandResult, SshClient, run_command
from baton.core.model import Device, SecretRef, SshSettings
from tests.peers.endpoints import SshEndpoint

pytestmark = pytest.mark.peer("sshd")

# A valid key that no server here has: pinning it must be refused.
STRANGER_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHm6Lkhf7O5T6sWz9gWZJbTi0D6Y3dHkq4bJxWv3r0Yb"


def read_secret(ref: SecretRef) -> str:
    """Test resolver: file refs only, the file's content as is."""
    assert ref.kind == "file"
    return Path(ref.name).read_text()


def device_for(endpoint: SshEndpoint, *, host_key: str | None = "pinned", timeout_s: float = 10.0) -> Device:
    """An inventory Device for the endpoint (its pinned key unless host_key says otherwise)."""
    return Device(
        id="gc-agg-2",
        office="gc",
        role="aggregation",
        address=endpoint.host,
        host_key=endpoint.host_key if host_key == "pinned" else host_key,
        ssh=SshSettings(
            enabled=True,
            port=endpoint.port,
            username=endpoint.username,
            private_key=SecretRef("file", str(endpoint.private_key)),
            timeout_s=timeout_s,
        ),
    )


async def test_command_output_and_exit_status(sshd_server: Any) -> None:
    """A command's stdout, stderr and exit status come back as they were."""
    result = await run_command(
        device_for(sshd_server.endpoint), "echo up; echo warn >&2; exit 3", resolve=read_secret, timeout_s=10
    )
    assert CommandResult(exit_status=3, stdout="up\n", stderr="warn\n") == result


async def test_one_connection_runs_several_commands(sshd_server: Any) -> None:
    """A connection is reused for several commands; check=True turns a failure into SshError."""
    async with SshClient.connect(device_for(sshd_server.endpoint), resolve=read_secret) as ssh:
        first = await ssh.run("echo one")
        second = await ssh.run("echo two")
        with pytest.raises(SshError, match=r"ssh run false on gc-agg-2 failed: exit status 1"):
            await ssh.run("false", check=True)
    assert ("one\n", "two\n") == (first.stdout, second.stdout)


async def test_source_address_is_what_the_server_sees(sshd_server: Any) -> None:
    """With source_address, the connection comes from that address (management ACLs check it)."""
    result = await run_command(
        device_for(sshd_server.endpoint),
        'echo "${SSH_CONNECTION%% *}"',
        resolve=read_secret,
        source_address="127.0.0.3",
    )
    assert "127.0.0.3\n" == result.stdout


async def test_host_key_mismatch_is_refused(sshd_server: Any) -> None:
    """A server whose key is not the pinned one is refused, naming both fingerprints."""
    endpoint = sshd_server.endpoint
    with pytest.raises(SshHostKeyError) as caught:
        await run_command(device_for(endpoint, host_key=STRANGER_KEY), "true", resolve=read_secret)
    pinned = parse_pinned_key(STRANGER_KEY).fingerprint
    offered = parse_pinned_key(endpoint.host_key).fingerprint
    assert (pinned, offered) == (caught.value.pinned, caught.value.offered)
    assert (
        f"host key mismatch for gc-agg-2 at {endpoint.host}:{endpoint.port}: "
        f"pinned ssh-ed25519 {pinned}, server offered {offered}"
    ) == caught.value.cause


async def test_no_pinned_key_is_refused(sshd_server: Any) -> None:
    """Without a pinned host key there is no connection (verification is never skipped)."""
    with pytest.raises(SshHostKeyError, match="no pinned host key for gc-agg-2"):
        await run_command(device_for(sshd_server.endpoint, host_key=None), "true", resolve=read_secret)


async def test_overrunning_command_times_out_and_is_killed(sshd_server: Any) -> None:
    """A command past its timeout raises SshTimeoutError and does not keep running remotely."""
    async with SshClient.connect(device_for(sshd_server.endpoint), resolve=read_secret) as ssh:
        with pytest.raises(SshTimeoutError) as caught:
            await ssh.run("sleep 10.4242", timeout_s=1)
        # the [p] keeps pgrep from matching its own command line
        left = await ssh.run("pgrep -f 'slee[p] 10.4242' || true")
    assert ("run sleep", 1, "") == (caught.value.operation, caught.value.timeout_s, left.stdout)


async def test_stopped_server_is_a_connect_error(sshd_server: Any) -> None:
    """A stopped server gives SshConnectError with the cause."""
    endpoint = sshd_server.endpoint
    sshd_server.stop()
    with pytest.raises(SshConnectError) as caught:
        await run_command(device_for(endpoint), "true", resolve=read_secret, timeout_s=5)
    assert f"TCP connect to {endpoint.host}:{endpoint.port}: connection refused" == caught.value.cause
