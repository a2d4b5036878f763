"""The lab device's NETCONF server: framing, errors, the management ACL and injected faults."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import asyncssh
import ncclient.transport.session
import pytest
from lxml import etree  # type: ignore[import-untyped]
from ncclient import manager
from ncclient.operations.errors import TimeoutExpiredError
from ncclient.operations.rpc import RPCError
from ncclient.transport.errors import TransportError

from tests.lab_fixtures import ThreadedLabDevice
from tests.peers.endpoints import SshEndpoint

NC = "urn:ietf:params:xml:ns:netconf:base:1.0"
LAB = "urn:baton:lab:mgmt:1.0"
EOM = b"]]>]]>"


def client_hello(base: str) -> bytes:
    return (
        f'<hello xmlns="{NC}"><capabilities><capability>urn:ietf:params:netconf:base:{base}</capability>'
        "</capabilities></hello>"
    ).encode()


HELLO_10 = client_hello("1.0")
HELLO_11 = client_hello("1.1")
BANGBAE_NOC = "127.10.2.1"
READ_TIMEOUT_S = 5.0


@pytest.fixture(autouse=True)
def fast_ncclient(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ncclient.transport.session, "TICK", 0.01)


@contextmanager
def connect(endpoint: SshEndpoint, **kwargs: Any) -> Iterator[manager.Manager]:
    m = manager.connect(
        host=endpoint.host,
        port=endpoint.port,
        username=endpoint.username,
        key_filename=str(endpoint.private_key),
        allow_agent=False,
        look_for_keys=False,
        hostkey_verify=True,
        hostkey_b64=endpoint.host_key_b64,
        timeout=10,
        **kwargs,
    )
    try:
        yield m
    finally:
        if m.connected:
            m.close_session()


def ssh_options(endpoint: SshEndpoint, local_ip: str | None = None) -> dict[str, Any]:
    return {
        "port": endpoint.port,
        "username": endpoint.username,
        "client_keys": [str(endpoint.private_key)],
        "known_hosts": str(endpoint.known_hosts),
        "local_addr": (local_ip, 0) if local_ip else None,
        "connect_timeout": READ_TIMEOUT_S,
    }


@asynccontextmanager
async def netconf_channel(
    endpoint: SshEndpoint,
) -> AsyncIterator[asyncssh.SSHClientProcess[bytes]]:
    async with asyncssh.connect(endpoint.host, **ssh_options(endpoint)) as conn:
        proc = await conn.create_process(subsystem="netconf", encoding=None)
        try:
            yield proc
        finally:
            proc.close()


async def read_until(proc: asyncssh.SSHClientProcess[bytes], marker: bytes) -> bytes:
    buf = b""
    async with asyncio.timeout(READ_TIMEOUT_S):
        while marker not in buf:
            data = await proc.stdout.read(65536)
            if not data:
                raise EOFError(buf)
            buf += data
    return buf


async def rpc_10(proc: asyncssh.SSHClientProcess[bytes], body: str, message_id: str = "7") -> Any:
    """Send one base:1.0 rpc and parse the reply (the hello exchange must be done)."""
    proc.stdin.write(f'<rpc xmlns="{NC}" message-id="{message_id}">{body}</rpc>'.encode() + EOM)
    reply = await read_until(proc, EOM)
    return etree.fromstring(reply[: reply.index(EOM)])


async def hello_10(proc: asyncssh.SSHClientProcess[bytes]) -> None:
    await read_until(proc, EOM)
    proc.stdin.write(HELLO_10 + EOM)


def acl_entry(office: str, prefix: str) -> str:
    return (
        f'<config><management xmlns="{LAB}"><acl><entry><name>{office}</name><prefix>{prefix}</prefix>'
        "</entry></acl></management></config>"
    )


def wait_for(predicate: Callable[[], bool], limit_s: float = READ_TIMEOUT_S) -> None:
    """Wait (bounded) for something the server does after the client already saw the effect."""
    deadline = time.monotonic() + limit_s
    while not predicate() and time.monotonic() < deadline:
        time.sleep(0.02)


# --- framing and protocol errors -----------------------------------------------------------


async def test_base10_client_gets_end_of_message_framing(lab_netconf_device: ThreadedLabDevice) -> None:
    """A client that only speaks base:1.0 gets ]]>]]>-framed replies carrying its message-id."""
    async with netconf_channel(lab_netconf_device.endpoint) as proc:
        await hello_10(proc)
        reply = await rpc_10(proc, "<get-config><source><running/></source></get-config>", "m-42")
    assert "m-42" == reply.get("message-id")
    assert ["test"] == reply.xpath("//l:acl/l:entry/l:name/text()", namespaces={"l": LAB})


async def test_chunked_rpc_split_across_writes_is_answered(lab_netconf_device: ThreadedLabDevice) -> None:
    """A base:1.1 rpc arriving in fragments (even inside the chunk header) is reassembled."""
    body = "<get-config><source><running/></source></get-config>"
    rpc = f'<rpc xmlns="{NC}" message-id="9">{body}</rpc>'.encode()
    framed = b"\n#%d\n%s\n##\n" % (len(rpc), rpc)
    async with netconf_channel(lab_netconf_device.endpoint) as proc:
        await read_until(proc, EOM)
        proc.stdin.write(HELLO_11 + EOM)
        for piece in (framed[:2], framed[2:5], framed[5:40], framed[40:]):
            proc.stdin.write(piece)
            await asyncio.sleep(0)
        reply = await read_until(proc, b"\n##\n")
    assert reply.startswith(b"\n#")
    assert b'message-id="9"' in reply


async def test_bad_chunk_framing_closes_session(lab_netconf_device: ThreadedLabDevice) -> None:
    """Garbage where a chunk header belongs ends the session."""
    async with netconf_channel(lab_netconf_device.endpoint) as proc:
        await read_until(proc, EOM)
        proc.stdin.write(HELLO_11 + EOM)
        proc.stdin.write(b"\n#xyz\n<rpc/>\n##\n")
        async with asyncio.timeout(READ_TIMEOUT_S):
            assert b"" == await proc.stdout.read()


async def test_malformed_xml_gets_malformed_message(lab_netconf_device: ThreadedLabDevice) -> None:
    """XML that does not parse is answered with malformed-message."""
    async with netconf_channel(lab_netconf_device.endpoint) as proc:
        await hello_10(proc)
        proc.stdin.write(b"<rpc message-id='1'><get></rpc>" + EOM)
        reply = etree.fromstring((await read_until(proc, EOM))[: -len(EOM)])
    assert ["malformed-message"] == reply.xpath("//nc:error-tag/text()", namespaces={"nc": NC})


async def test_unknown_operation_is_not_supported(lab_netconf_device: ThreadedLabDevice) -> None:
    """An RPC the device does not know gets operation-not-supported, echoing the message-id."""
    async with netconf_channel(lab_netconf_device.endpoint) as proc:
        await hello_10(proc)
        reply = await rpc_10(proc, "<reboot-now/>", "x1")
    assert "x1" == reply.get("message-id")
    assert ["operation-not-supported"] == reply.xpath("//nc:error-tag/text()", namespaces={"nc": NC})


# --- the management ACL ---------------------------------------------------------------------


async def test_source_outside_acl_refused_until_a_commit_allows_it(
    lab_netconf_device: ThreadedLabDevice,
) -> None:
    """Bangbae's NOC is refused until a commit adds Bangbae's prefix to the device's ACL."""
    endpoint = lab_netconf_device.endpoint
    with pytest.raises((asyncssh.Error, OSError)):
        async with asyncssh.connect(endpoint.host, **ssh_options(endpoint, BANGBAE_NOC)):
            pass

    def hand_over() -> None:
        with connect(endpoint) as m:
            m.edit_config(target="candidate", config=acl_entry("co-bangbae", "127.10.2.0/24"))
            m.commit()

    await asyncio.to_thread(hand_over)
    async with asyncssh.connect(endpoint.host, **ssh_options(endpoint, BANGBAE_NOC)) as conn:
        result = await conn.run("show management", check=True, timeout=READ_TIMEOUT_S)
    assert "acl co-bangbae 127.10.2.0/24" in str(result.stdout)


def test_ncclient_bind_addr_is_refused_then_admitted(lab_netconf_device: ThreadedLabDevice) -> None:
    """ncclient's bind_addr picks the source address the device's ACL judges."""
    endpoint = lab_netconf_device.endpoint
    with pytest.raises((TransportError, OSError)), connect(endpoint, bind_addr=BANGBAE_NOC):
        pass
    with connect(endpoint) as m:
        m.edit_config(target="candidate", config=acl_entry("co-bangbae", "127.10.2.0/24"))
        m.commit()
    with connect(endpoint, bind_addr=BANGBAE_NOC) as m:
        assert m.connected


# --- faults --------------------------------------------------------------------------------


def test_refuse_commits_fault_fails_commit(lab_netconf_device: ThreadedLabDevice) -> None:
    """With refuse_commits set, commit fails with operation-failed and running is unchanged."""
    lab_netconf_device.device.faults.refuse_commits = True
    with connect(lab_netconf_device.endpoint) as m:
        m.edit_config(target="candidate", config=acl_entry("co-x", "127.10.9.0/24"))
        with pytest.raises(RPCError) as err:
            m.commit()
    assert ("operation-failed", "commit refused (lab fault)") == (err.value.tag, err.value.message)
    assert ("test",) == lab_netconf_device.device.mgmt.acl_offices


def test_drop_mid_rpc_fault_closes_session_without_reply(lab_netconf_device: ThreadedLabDevice) -> None:
    """With drop_mid_rpc set, the next RPC ends the session instead of being answered."""
    m = open_manager(lab_netconf_device.endpoint)
    try:
        lab_netconf_device.device.faults.drop_mid_rpc = True
        with pytest.raises((TransportError, TimeoutExpiredError)):
            m.get_config("running")
        # the server forgets the session once the dropped connection is torn down
        wait_for(lambda: not lab_netconf_device.call(lambda: bool(lab_netconf_device.server.sessions)))
        assert {} == lab_netconf_device.call(lambda: dict(lab_netconf_device.server.sessions))
    finally:
        m._session.close()  # no close-session: there is no session left to ask


def test_slow_fault_delays_replies(lab_netconf_device: ThreadedLabDevice) -> None:
    """With slow_s set beyond the client's timeout, the reply does not come in time."""
    with connect(lab_netconf_device.endpoint) as m:
        lab_netconf_device.device.faults.slow_s = 1.5
        m.timeout = 0.2
        with pytest.raises(TimeoutExpiredError):
            m.get_config("running")
        lab_netconf_device.device.faults.slow_s = 0.0
        m.timeout = 10  # close-session queues behind the slow reply


async def test_cut_device_refuses_connections(lab_netconf_device: ThreadedLabDevice) -> None:
    """A device whose path is cut drops every new connection."""
    endpoint = lab_netconf_device.endpoint
    lab_netconf_device.device.faults.cut = True
    with pytest.raises((asyncssh.Error, OSError)):
        async with asyncssh.connect(endpoint.host, **ssh_options(endpoint)):
            pass


# --- edit-config semantics, filters, state ---------------------------------------------------


def test_create_of_existing_entry_is_data_exists(lab_netconf_device: ThreadedLabDevice) -> None:
    """operation=create on an ACL entry that exists fails with data-exists."""
    config = acl_entry("test", "127.0.0.1/32").replace(
        "<entry>", f'<entry xmlns:nc="{NC}" nc:operation="create">'
    )
    with connect(lab_netconf_device.endpoint) as m, pytest.raises(RPCError) as err:
        m.edit_config(target="candidate", config=config)
    assert "data-exists" == err.value.tag


def test_delete_of_missing_entry_is_data_missing(lab_netconf_device: ThreadedLabDevice) -> None:
    """operation=delete on an ACL entry that is not there fails with data-missing."""
    config = (
        f'<config><management xmlns="{LAB}"><acl><entry xmlns:nc="{NC}" nc:operation="delete">'
        "<name>co-nowhere</name></entry></acl></management></config>"
    )
    with connect(lab_netconf_device.endpoint) as m, pytest.raises(RPCError) as err:
        m.edit_config(target="candidate", config=config)
    assert "data-missing" == err.value.tag


def test_bad_prefix_is_invalid_value(lab_netconf_device: ThreadedLabDevice) -> None:
    """An ACL prefix that is not a network fails with invalid-value."""
    with connect(lab_netconf_device.endpoint) as m, pytest.raises(RPCError) as err:
        m.edit_config(target="candidate", config=acl_entry("co-x", "not-a-prefix"))
    assert "invalid-value" == err.value.tag


def test_unknown_namespace_is_rejected(lab_netconf_device: ThreadedLabDevice) -> None:
    """Config in a namespace the device has no model for fails with unknown-namespace."""
    with connect(lab_netconf_device.endpoint) as m, pytest.raises(RPCError) as err:
        m.edit_config(target="candidate", config='<config><system xmlns="urn:example:system"/></config>')
    assert "unknown-namespace" == err.value.tag


def test_subtree_filter_selects_one_acl_entry(lab_netconf_device: ThreadedLabDevice) -> None:
    """A content-match filter on the entry name returns only that entry."""
    flt = f'<management xmlns="{LAB}"><acl><entry><name>co-b</name></entry></acl></management>'
    with connect(lab_netconf_device.endpoint) as m:
        m.edit_config(target="candidate", config=acl_entry("co-b", "127.10.2.0/24"))
        m.commit()
        data = etree.fromstring(m.get_config("running", filter=("subtree", flt)).data_xml.encode())
    ns = {"l": LAB}
    assert ["127.10.2.0/24"] == data.xpath("//l:entry/l:prefix/text()", namespaces=ns)
    assert [] == data.xpath("//l:aaa", namespaces=ns)


def test_get_reports_interface_oper_status(lab_netconf_device: ThreadedLabDevice) -> None:
    """get returns interfaces-state with the device's oper-status."""
    if_ns = "urn:ietf:params:xml:ns:yang:ietf-interfaces"
    lab_netconf_device.device.interfaces[0].oper_up = False
    with connect(lab_netconf_device.endpoint) as m:
        reply = m.get(filter=("subtree", f'<interfaces-state xmlns="{if_ns}"/>'))
    data = etree.fromstring(reply.data_xml.encode())
    status = data.xpath("//i:interface/i:oper-status/text()", namespaces={"i": if_ns})
    assert ["down", "down"] == status


def open_manager(endpoint: SshEndpoint) -> manager.Manager:
    return manager.connect(
        host=endpoint.host,
        port=endpoint.port,
        username=endpoint.username,
        key_filename=str(endpoint.private_key),
        allow_agent=False,
        look_for_keys=False,
        hostkey_verify=True,
        hostkey_b64=endpoint.host_key_b64,
        timeout=READ_TIMEOUT_S,
    )


def test_kill_session_releases_its_lock(lab_netconf_device: ThreadedLabDevice) -> None:
    """kill-session ends another session and frees the lock it held."""
    endpoint = lab_netconf_device.endpoint
    holder = open_manager(endpoint)
    try:
        with connect(endpoint) as admin:
            holder.lock("running")
            admin.kill_session(holder.session_id)
            admin.lock("running")
            admin.unlock("running")
    finally:
        holder._session.close()  # killed: no close-session to send
