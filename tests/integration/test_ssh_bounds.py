"""SshClient bounds against a real OpenSSH sshd: a command's output is bounded, and a command
that runs past it is killed on the device, like one that runs past its timeout."""

from __future__ import annotations

from typing import Any

import pytest

from baton.adapters.errors import SshError
from baton.adapters.ssh import MAX_OUTPUT_BYTES, SshClient
from tests.integration.test_ssh_adapter import device_for, read_secret

pytestmark = pytest.mark.peer("sshd")


async def test_endless_output_is_cut_at_the_bound_and_the_command_killed(sshd_server: Any) -> None:
    """`yes` never ends: past max_output_bytes it is killed; the error says the outcome is unknown."""
    async with SshClient.connect(
        device_for(sshd_server.endpoint), resolve=read_secret, max_output_bytes=100_000
    ) as ssh:
        with pytest.raises(SshError) as caught:
            await ssh.run("yes baton-bound-4242", timeout_s=20)
        # the [b] keeps pgrep from matching its own command line
        left = await ssh.run("pgrep -f '[b]aton-bound-4242' || true", timeout_s=10)
    assert ("run yes", "output larger than 100000 bytes; command killed", True) == (
        caught.value.operation,
        caught.value.cause,
        caught.value.outcome_unknown,
    )
    assert "" == left.stdout


async def test_output_below_the_bound_is_whole(sshd_server: Any) -> None:
    """Stdout and stderr together up to the bound come back whole (default bound: 4 MiB)."""
    async with SshClient.connect(device_for(sshd_server.endpoint), resolve=read_secret) as ssh:
        result = await ssh.run("head -c 3000000 /dev/zero | tr '\\0' x; echo err >&2", timeout_s=20)
    assert (4 * 1024 * 1024, 3_000_000, "err\n", 0) == (
        MAX_OUTPUT_BYTES,
        len(result.stdout),
        result.stderr,
        result.exit_status,
    )
