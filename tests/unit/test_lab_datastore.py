"""The lab datastore without a server: edit-config, locks, and the confirmed-commit state machine
(time is an injected clock, so nothing sleeps) plus the RFC 6242 deframer."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from baton.lab.datastore import LAB_NS, NC_NS, Datastore, RpcError, management_xml, parse_xml
from baton.lab.device import TrapTarget
from baton.lab.netconf_server import FrameReader, FramingError, frame

HOME = ("co-geumcheon", "127.10.1.0/24")
ALT = ("co-bangbae", "127.10.2.0/24")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def acl_config(office: str, prefix: str, operation: str = "") -> object:
    op = f' nc:operation="{operation}"' if operation else ""
    return parse_xml(
        f'<config xmlns:nc="{NC_NS}"><management xmlns="{LAB_NS}"><acl><entry{op}><name>{office}</name>'
        f"<prefix>{prefix}</prefix></entry></acl></management></config>"
    )


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def ds(clock: Clock) -> Datastore:
    return Datastore(management_xml(acl=[HOME], aaa_servers=["127.0.0.9"]), clock=clock)


def offices(ds: Datastore) -> tuple[str, ...]:
    return ds.running_mgmt().acl_offices


def test_management_xml_round_trips_to_the_view() -> None:
    """What management_xml builds is what running_mgmt reads back."""
    ds = Datastore(
        management_xml(
            acl=[HOME],
            aaa_servers=["127.0.0.9"],
            trap_targets=[TrapTarget("127.0.0.1", 1162, "lab")],
            syslog_servers=["127.0.0.8"],
            contact="noc",
        )
    )
    view = ds.running_mgmt()
    assert (
        ("co-geumcheon",),
        ("127.0.0.9",),
        (TrapTarget("127.0.0.1", 1162, "lab"),),
        ("127.0.0.8",),
        "noc",
    ) == (
        view.acl_offices,
        view.aaa_servers,
        view.trap_targets,
        view.syslog_servers,
        view.contact,
    )
    assert view.allows("127.10.1.7")
    assert not view.allows("127.10.2.1")


def test_confirmed_commit_expires_at_deadline(ds: Datastore, clock: Clock) -> None:
    """A confirmed commit rolls back once the clock passes its timeout, not before."""
    ds.edit_config("candidate", acl_config(*ALT), 1)
    ds.commit(1, confirmed=True, timeout_s=300)
    assert 1300.0 == ds.next_deadline()
    clock.now = 1299.9
    assert not ds.expire()
    assert ("co-geumcheon", "co-bangbae") == offices(ds)
    clock.now = 1300.0
    assert ds.expire()
    assert ("co-geumcheon",) == offices(ds)
    assert ds.next_deadline() is None


def test_follow_up_confirmed_commit_extends_and_keeps_first_rollback_point(
    ds: Datastore, clock: Clock
) -> None:
    """A second confirmed commit extends the timeout; expiry goes back to before the first."""
    ds.edit_config("candidate", acl_config(*ALT), 1)
    ds.commit(1, confirmed=True, timeout_s=100)
    clock.now = 1050.0
    ds.edit_config("candidate", acl_config("co-seocho", "127.10.3.0/24"), 1)
    ds.commit(1, confirmed=True, timeout_s=100)
    assert 1150.0 == ds.next_deadline()
    clock.now = 1150.0
    assert ds.expire()
    assert ("co-geumcheon",) == offices(ds)


def test_confirming_commit_keeps_the_change(ds: Datastore, clock: Clock) -> None:
    """A plain commit from the same session confirms; the timer no longer rolls back."""
    ds.edit_config("candidate", acl_config(*ALT), 1)
    ds.commit(1, confirmed=True, timeout_s=10)
    ds.commit(1)
    clock.now = 5000.0
    assert not ds.expire()
    assert ("co-geumcheon", "co-bangbae") == offices(ds)


def test_session_close_rolls_back_only_non_persist_commits(ds: Datastore) -> None:
    """Closing the committing session undoes a plain confirmed commit but not a persistent one."""
    ds.edit_config("candidate", acl_config(*ALT), 1)
    ds.commit(1, confirmed=True)
    assert ds.close_session(1)
    assert ("co-geumcheon",) == offices(ds)
    ds.edit_config("candidate", acl_config(*ALT), 2)
    ds.commit(2, confirmed=True, persist="tok")
    assert not ds.close_session(2)
    ds.commit(3, persist_id="tok")
    assert ("co-geumcheon", "co-bangbae") == offices(ds)
    assert not ds.confirm_pending


def test_persistent_commit_needs_its_persist_id(ds: Datastore) -> None:
    """With persist set, a confirming commit or cancel without the right persist-id fails."""
    ds.edit_config("candidate", acl_config(*ALT), 1)
    ds.commit(1, confirmed=True, persist="tok")
    with pytest.raises(RpcError):
        ds.commit(1)
    with pytest.raises(RpcError) as err:
        ds.cancel_commit(2, persist_id="wrong")
    assert "invalid-value" == err.value.tag
    ds.cancel_commit(2, persist_id="tok")
    assert ("co-geumcheon",) == offices(ds)


def test_other_session_cannot_confirm_or_cancel_a_plain_confirmed_commit(ds: Datastore) -> None:
    """Only the issuing session may confirm or cancel a non-persist confirmed commit."""
    ds.edit_config("candidate", acl_config(*ALT), 1)
    ds.commit(1, confirmed=True)
    with pytest.raises(RpcError) as commit_err:
        ds.commit(2)
    with pytest.raises(RpcError) as cancel_err:
        ds.cancel_commit(2)
    assert ("in-use", "operation-failed") == (commit_err.value.tag, cancel_err.value.tag)
    ds.cancel_commit(1)
    assert ("co-geumcheon",) == offices(ds)


def test_cancel_without_pending_commit_is_invalid(ds: Datastore) -> None:
    """cancel-commit with nothing pending fails with invalid-value."""
    with pytest.raises(RpcError) as err:
        ds.cancel_commit(1)
    assert "invalid-value" == err.value.tag


def test_lock_denied_names_the_holder_and_dies_with_its_session(ds: Datastore) -> None:
    """A held lock is denied to others with the holder's session-id, and released on close."""
    ds.lock("candidate", 4)
    with pytest.raises(RpcError) as err:
        ds.lock("candidate", 5)
    assert ("lock-denied", {"session-id": "4"}) == (err.value.tag, err.value.info)
    with pytest.raises(RpcError) as edit_err:
        ds.edit_config("candidate", acl_config(*ALT), 5)
    assert "in-use" == edit_err.value.tag
    ds.close_session(4)
    ds.lock("candidate", 5)
    assert {"candidate": 5} == ds.locks


def test_failed_edit_leaves_candidate_untouched(ds: Datastore) -> None:
    """An edit with one bad value changes nothing (rollback-on-error)."""
    config = parse_xml(
        f'<config><management xmlns="{LAB_NS}"><contact>x</contact><acl><entry><name>a</name>'
        "<prefix>nope</prefix></entry></acl></management></config>"
    )
    before = ds.candidate_xml()
    with pytest.raises(RpcError):
        ds.edit_config("candidate", config, 1)
    assert before == ds.candidate_xml()
    assert not ds.is_candidate_dirty


def test_replace_and_remove_operations(ds: Datastore) -> None:
    """replace swaps an entry's content; remove of a missing entry is not an error."""
    ds.edit_config("candidate", acl_config("co-geumcheon", "127.10.9.0/24", "replace"), 1)
    ds.edit_config("candidate", acl_config("co-nowhere", "127.10.8.0/24", "remove"), 1)
    ds.commit(1)
    assert ("127.10.9.0/24",) == tuple(str(n) for n in ds.running_mgmt().acl)


def test_default_operation_none_needs_existing_data(ds: Datastore) -> None:
    """default-operation none refuses data that does not exist without an operation."""
    config = parse_xml('<config><interfaces xmlns="urn:ietf:params:xml:ns:yang:ietf-interfaces"/></config>')
    with pytest.raises(RpcError) as err:
        ds.edit_config("candidate", config, 1, default_operation="none")
    assert "data-missing" == err.value.tag


def test_running_mgmt_is_cached_until_commit(ds: Datastore) -> None:
    """running_mgmt returns the same object until running changes."""
    first = ds.running_mgmt()
    ds.edit_config("candidate", acl_config(*ALT), 1)
    assert first is ds.running_mgmt()
    ds.commit(1)
    assert first is not ds.running_mgmt()


# --- RFC 6242 framing ------------------------------------------------------------------------


@given(st.lists(st.binary(min_size=1, max_size=300), min_size=1, max_size=4), st.integers(1, 17))
def test_chunked_frames_survive_any_split(messages: list[bytes], step: int) -> None:
    """Chunked-framed messages come back whole however the bytes are split."""
    reader = FrameReader()
    reader.chunked = True
    wire = b"".join(frame(m, chunked=True) for m in messages)
    got: list[bytes] = []
    for i in range(0, len(wire), step):
        got += reader.feed(wire[i : i + step])
    assert messages == got


def test_end_of_message_frames_split_across_reads() -> None:
    """base:1.0 messages are cut at ]]>]]> even when the marker is split."""
    reader = FrameReader()
    assert [] == reader.feed(b"<a/>]]>")
    assert [b"<a/>", b"<b/>"] == reader.feed(b"]]><b/>]]>]]>")


@pytest.mark.parametrize("wire", [b"\n#0\n", b"\n#abc\n", b"xx", b"\n##\n", b"\n#99999999999\n"])
def test_bad_chunk_framing_raises(wire: bytes) -> None:
    """Zero, non-numeric, oversized or missing chunk headers are framing errors."""
    reader = FrameReader()
    reader.chunked = True
    with pytest.raises(FramingError):
        reader.feed(wire)


def epoch_config(epoch: int) -> object:
    return parse_xml(f'<config><management xmlns="{LAB_NS}"><epoch>{epoch}</epoch></management></config>')


@pytest.mark.parametrize(
    ("device", "ours", "committed"), [(0, 0, True), (9, 9, True), (4, 9, True), (9, 4, False)]
)
def test_a_commit_that_lowers_the_epoch_is_refused(
    ds: Datastore, device: int, ours: int, committed: bool
) -> None:
    """The fencing token in the data: a deposed leader's commit fails and changes nothing."""
    ds.edit_config("candidate", epoch_config(device), 1)
    ds.commit(1)
    ds.edit_config("candidate", acl_config(*ALT), 1)
    ds.edit_config("candidate", epoch_config(ours), 1)
    if committed:
        ds.commit(1)
        assert ("co-geumcheon", "co-bangbae") == offices(ds)
        assert ours == ds.running_epoch()
        return
    with pytest.raises(RpcError, match=f"epoch {ours} is older than the device's {device}"):
        ds.commit(1)
    assert ("co-geumcheon",) == offices(ds)
    assert device == ds.running_epoch()
