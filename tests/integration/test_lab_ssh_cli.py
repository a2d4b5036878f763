"""The lab device's SSH CLI: exec and interactive, sharing the NETCONF datastore."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncssh
import ncclient.transport.session
import pytest
from ncclient import manager

from tests.lab_fixtures import ThreadedLabDevice
from tests.peers.endpoints import SshEndpoint

TIMEOUT_S = 5.0
LAB = "urn:baton:lab:mgmt:1.0"


@pytest.fixture(autouse=True)
def fast_ncclient(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ncclient.transport.session, "TICK", 0.01)


def options(endpoint: SshEndpoint) -> dict[str, Any]:
    return {
        "port": endpoint.port,
        "username": endpoint.username,
        "client_keys": [str(endpoint.private_key)],
        "known_hosts": str(endpoint.known_hosts),
        "connect_timeout": TIMEOUT_S,
    }


async def run(endpoint: SshEndpoint, command: str) -> asyncssh.SSHCompletedProcess:
    async with asyncssh.connect(endpoint.host, **options(endpoint)) as conn:
        return await conn.run(command, timeout=TIMEOUT_S)


def netconf_running(endpoint: SshEndpoint) -> str:
    with manager.connect(
        host=endpoint.host,
        port=endpoint.port,
        username=endpoint.username,
        key_filename=str(endpoint.private_key),
        allow_agent=False,
        look_for_keys=False,
        hostkey_verify=True,
        hostkey_b64=endpoint.host_key_b64,
        timeout=10,
    ) as m:
        return str(m.get_config("running", filter=("subtree", f'<management xmlns="{LAB}"/>')).data_xml)


async def test_show_version_names_the_device(lab_netconf_device: ThreadedLabDevice) -> None:
    """`show version` over exec names the device and exits 0."""
    result = await run(lab_netconf_device.endpoint, "show version")
    assert 0 == result.exit_status
    assert "hostname lab-nc-1" in str(result.stdout)


async def test_unknown_command_exits_1(lab_netconf_device: ThreadedLabDevice) -> None:
    """An unknown command prints `% Unknown command` and exits 1."""
    result = await run(lab_netconf_device.endpoint, "frobnicate now")
    assert (1, "% Unknown command: frobnicate now\n") == (result.exit_status, result.stdout)


async def test_show_management_lists_acl_aaa_and_targets(lab_netconf_device: ThreadedLabDevice) -> None:
    """`show management` lists the running ACL, AAA, trap and syslog targets and contact."""
    result = await run(lab_netconf_device.endpoint, "show management")
    expected = (
        "acl test 127.0.0.1/32\naaa server 127.0.0.53\ntrap-target 127.0.0.1 port 1162\n"
        "syslog server 127.0.0.54\ncontact lab noc\n"
    )
    assert expected == result.stdout


async def test_cli_acl_change_is_seen_by_netconf(lab_netconf_device: ThreadedLabDevice) -> None:
    """`configure management acl add/remove` commits, and NETCONF get-config shows the result."""
    endpoint = lab_netconf_device.endpoint
    added = await run(endpoint, "configure management acl add co-bangbae 127.10.2.0/24")
    removed = await run(endpoint, "configure management acl remove co-bangbae")
    again = await run(endpoint, "configure management acl add co-seocho 127.10.3.0/24")
    assert (0, 0, 0) == (added.exit_status, removed.exit_status, again.exit_status)
    running = await asyncio.to_thread(netconf_running, endpoint)
    assert "co-seocho" in running
    assert "co-bangbae" not in running
    assert ("test", "co-seocho") == lab_netconf_device.device.mgmt.acl_offices


async def test_cli_aaa_and_contact_change_running(lab_netconf_device: ThreadedLabDevice) -> None:
    """`configure aaa server add` and `configure contact` change the running management view."""
    endpoint = lab_netconf_device.endpoint
    await run(endpoint, "configure aaa server add 127.0.0.77")
    await run(endpoint, "configure contact bangbae noc 24x7")
    mgmt = lab_netconf_device.device.mgmt
    assert (("127.0.0.53", "127.0.0.77"), "bangbae noc 24x7") == (mgmt.aaa_servers, mgmt.contact)


async def test_cli_bad_prefix_is_an_error(lab_netconf_device: ThreadedLabDevice) -> None:
    """A prefix that is not a network is refused with exit 1 and nothing changes."""
    result = await run(lab_netconf_device.endpoint, "configure management acl add co-x 300.1.2.0/24")
    assert 1 == result.exit_status
    assert str(result.stdout).startswith("% Error: invalid value")
    assert ("test",) == lab_netconf_device.device.mgmt.acl_offices


async def test_cli_refuses_to_commit_over_uncommitted_netconf_edit(
    lab_netconf_device: ThreadedLabDevice,
) -> None:
    """The CLI does not publish another session's half-done candidate edit."""
    endpoint = lab_netconf_device.endpoint
    config = f'<config><management xmlns="{LAB}"><contact>half done</contact></management></config>'

    def edit_without_commit() -> None:
        with manager.connect(
            host=endpoint.host,
            port=endpoint.port,
            username=endpoint.username,
            key_filename=str(endpoint.private_key),
            allow_agent=False,
            look_for_keys=False,
            hostkey_verify=True,
            hostkey_b64=endpoint.host_key_b64,
            timeout=10,
        ) as m:
            m.edit_config(target="candidate", config=config)
            result = asyncio.run(run(endpoint, "configure aaa server add 127.0.0.88"))
            assert (1, "% Error: candidate has uncommitted changes of another session\n") == (
                result.exit_status,
                result.stdout,
            )

    await asyncio.to_thread(edit_without_commit)
    assert "lab noc" == lab_netconf_device.device.mgmt.contact


async def test_interactive_shell_runs_commands_until_exit(lab_netconf_device: ThreadedLabDevice) -> None:
    """The shell prompts with `<device>#`, runs each line, and ends on `exit`."""
    endpoint = lab_netconf_device.endpoint
    async with asyncssh.connect(endpoint.host, **options(endpoint)) as conn:
        proc = await conn.create_process()
        proc.stdin.write("show interfaces\nshow sessions\nexit\n")
        async with asyncio.timeout(TIMEOUT_S):
            output = await proc.stdout.read()
            await proc.wait()
    lines = output.splitlines()
    assert lines[0].startswith("lab-nc-1#")
    assert "   1 ge-0/0/1         up" in output
    assert "   2 ge-0/0/2         down" in output
    assert "cli" in lines[-2]
    assert "lab-nc-1#" == lines[-1]
