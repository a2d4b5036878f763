"""NETCONF behaviours Baton relies on, checked against the lab device AND real netconfd.

If a test passes on `netconfd` but not on `lab`, the lab lies to Baton's tests; the payload is
ietf-interfaces with made-up names (`labgeNNN`), because netconfd's SIL runs ifconfig on the host
when an interface entry is created and those names match no host interface.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

import ncclient.transport.session
import pytest
from lxml import etree  # type: ignore[import-untyped]
from ncclient import manager
from ncclient.operations.rpc import RPCError

from tests.peers.endpoints import SshEndpoint

pytestmark = pytest.mark.peer("netconfd")

IF_NS = "urn:ietf:params:xml:ns:yang:ietf-interfaces"
IF_FILTER = ("subtree", f'<interfaces xmlns="{IF_NS}"/>')
# netconfd checks its confirm timer only when idle, about once a second: rollback lands within
# [timeout - 1 s, timeout + 2 s] (lab recipes §4), so the tests wait quietly past that window
CONFIRM_TIMEOUT_S = 2
QUIET_WAIT_S = CONFIRM_TIMEOUT_S + 2.5


@pytest.fixture(params=["lab", "netconfd"])
def endpoint(request: pytest.FixtureRequest) -> SshEndpoint:
    name = "lab_netconf_device" if request.param == "lab" else "netconfd_device"
    result: SshEndpoint = request.getfixturevalue(name).endpoint
    return result


@pytest.fixture(autouse=True)
def fast_ncclient(monkeypatch: pytest.MonkeyPatch) -> None:
    # ncclient polls its send queue every TICK (0.1 s default), a floor on every RPC
    monkeypatch.setattr(ncclient.transport.session, "TICK", 0.01)


@contextmanager
def connect(endpoint: SshEndpoint) -> Iterator[manager.Manager]:
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
    )
    try:
        yield m
    finally:
        if m.connected:
            m.close_session()


def interface_config(name: str, *, operation: str | None = None) -> str:
    op = (
        f' xmlns:nc="urn:ietf:params:xml:ns:netconf:base:1.0" nc:operation="{operation}"' if operation else ""
    )
    return (
        f'<config><interfaces xmlns="{IF_NS}"><interface{op}><name>{name}</name>'
        '<type xmlns:ianaift="urn:ietf:params:xml:ns:yang:iana-if-type">ianaift:ethernetCsmacd</type>'
        "<enabled>true</enabled></interface></interfaces></config>"
    )


def interface_names(m: manager.Manager, source: str = "running") -> set[str]:
    data = etree.fromstring(m.get_config(source, filter=IF_FILTER).data_xml.encode())
    return {el.text for el in data.iter(f"{{{IF_NS}}}name")}


def test_confirmed_commit_kept_after_confirming_commit(endpoint: SshEndpoint) -> None:
    """A confirmed commit followed by a confirming commit stays in running."""
    with connect(endpoint) as m:
        m.edit_config(target="candidate", config=interface_config("labge001"))
        m.commit(confirmed=True, timeout="60")
        m.commit()
    with connect(endpoint) as other:
        assert "labge001" in interface_names(other)


@pytest.mark.slow
def test_confirmed_commit_rolls_back_when_not_confirmed(endpoint: SshEndpoint) -> None:
    """An unconfirmed confirmed commit is rolled back once its timeout has passed."""
    with connect(endpoint) as m:
        m.edit_config(target="candidate", config=interface_config("labge002"))
        m.commit(confirmed=True, timeout=str(CONFIRM_TIMEOUT_S), persist="contract-expiry")
        assert "labge002" in interface_names(m)
    time.sleep(QUIET_WAIT_S)  # quiet: netconfd's timer only runs while it is idle
    with connect(endpoint) as m:
        assert "labge002" not in interface_names(m)


def test_persistent_confirmed_commit_confirmed_from_another_session(endpoint: SshEndpoint) -> None:
    """persist lets another session confirm with persist-id after the first session closed."""
    with connect(endpoint) as first:
        first.edit_config(target="candidate", config=interface_config("labge003"))
        first.commit(confirmed=True, timeout="60", persist="contract-persist")
    with connect(endpoint) as second:
        assert "labge003" in interface_names(second)
        second.commit(persist_id="contract-persist")
    with connect(endpoint) as third:
        # confirmed: a cancel now finds nothing pending
        with pytest.raises(RPCError):
            third.cancel_commit(persist_id="contract-persist")
        assert "labge003" in interface_names(third)


def test_cancel_commit_restores_previous_running(endpoint: SshEndpoint) -> None:
    """cancel-commit puts running back as it was before the confirmed commit."""
    with connect(endpoint) as m:
        before = interface_names(m)
        m.edit_config(target="candidate", config=interface_config("labge004"))
        m.commit(confirmed=True, timeout="60")
        assert "labge004" in interface_names(m)
        m.cancel_commit()
        assert before == interface_names(m)


def test_discard_changes_resets_candidate_to_running(endpoint: SshEndpoint) -> None:
    """discard-changes throws away uncommitted candidate edits."""
    with connect(endpoint) as m:
        m.edit_config(target="candidate", config=interface_config("labge005"))
        assert "labge005" in interface_names(m, "candidate")
        m.discard_changes()
        assert interface_names(m, "running") == interface_names(m, "candidate")
        assert "labge005" not in interface_names(m, "candidate")


def test_lock_held_by_one_session_is_denied_to_another(endpoint: SshEndpoint) -> None:
    """A second session's lock on a locked datastore fails with lock-denied."""
    with connect(endpoint) as first, connect(endpoint) as second:
        first.lock("candidate")
        with pytest.raises(RPCError) as denied:
            second.lock("candidate")
        assert "lock-denied" == denied.value.tag
        first.unlock("candidate")
        second.lock("candidate")
        second.unlock("candidate")


def test_unknown_element_is_rejected(endpoint: SshEndpoint) -> None:
    """edit-config with an element the model lacks fails with unknown-element."""
    bad = f'<config><interfaces xmlns="{IF_NS}"><no-such-leaf>1</no-such-leaf></interfaces></config>'
    with connect(endpoint) as m:
        with pytest.raises(RPCError) as err:
            m.edit_config(target="candidate", config=bad)
        assert "unknown-element" == err.value.tag
        m.discard_changes()


def test_confirmed_commit_rolled_back_when_its_session_closes(endpoint: SshEndpoint) -> None:
    """A non-persist confirmed commit is undone when the session that made it closes."""
    with connect(endpoint) as m:
        m.edit_config(target="candidate", config=interface_config("labge006"))
        m.commit(confirmed=True, timeout="60")
        assert "labge006" in interface_names(m)
    with connect(endpoint) as other:
        assert "labge006" not in interface_names(other)
