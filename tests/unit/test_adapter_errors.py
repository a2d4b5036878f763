"""Adapter error facts and bounds that need no peer: RFC 6242 deframing with a size bound, what
counts as "nothing answered", which errors say a write may have been applied, bounded pools."""

from __future__ import annotations

import errno
import itertools
import socket

import pytest
from hypothesis import given
from hypothesis import strategies as st

from baton.adapters.connecting import is_no_answer
from baton.adapters.errors import (
    NetconfConnectError,
    NetconfError,
    NetconfReplyError,
    NetconfRpcError,
    NetconfSessionError,
    NetconfTimeoutError,
    SshConnectError,
    SshError,
    SshTimeoutError,
)
from baton.adapters.netconf import EOM, MAX_REPLY_BYTES, Deframer, UnreadableReply


def chunked(message: bytes, *, pieces: int = 1) -> bytes:
    """message framed as base:1.1 chunks (`pieces` of them, as even as possible)."""
    size = -(-len(message) // pieces)
    parts = [message[i : i + size] for i in range(0, len(message), size)]
    return b"".join(b"\n#%d\n%s" % (len(p), p) for p in parts) + b"\n##\n"


# --- deframing -------------------------------------------------------------------------------


def test_end_of_message_framing_yields_each_message() -> None:
    """base:1.0: messages end at ]]>]]>; one read may finish several, or none."""
    deframer = Deframer()
    assert [] == deframer.feed(b"<a/>]]>]", chunked=False)
    assert [b"<a/>", b"<b/>"] == deframer.feed(b"]><b/>]]>]]><c", chunked=False)
    assert [b"<c/>"] == deframer.feed(b"/>]]>]]>", chunked=False)


def test_chunked_framing_yields_each_message() -> None:
    """base:1.1: chunks (headers split across reads too) join into one message at end-of-chunks."""
    stream = chunked(b"<rpc-reply><ok/></rpc-reply>", pieces=3) + chunked(b"<x/>")
    deframer = Deframer()
    out = [m for i in range(len(stream)) for m in deframer.feed(stream[i : i + 1], chunked=True)]
    assert [b"<rpc-reply><ok/></rpc-reply>", b"<x/>"] == out


@given(
    messages=st.lists(st.binary(min_size=1, max_size=200).filter(lambda m: EOM not in m), max_size=5),
    cuts=st.lists(st.integers(min_value=0, max_value=2000), max_size=8),
    is_chunked=st.booleans(),
)
def test_any_split_of_a_stream_gives_the_same_messages(
    messages: list[bytes], cuts: list[int], is_chunked: bool
) -> None:
    """However the reads split the stream, the same messages come out, in order."""
    stream = b"".join(chunked(m, pieces=2) if is_chunked else m + EOM for m in messages)
    bounds = sorted({0, len(stream), *(c for c in cuts if c < len(stream))})
    deframer = Deframer(4096)
    out = [m for a, b in itertools.pairwise(bounds) for m in deframer.feed(stream[a:b], chunked=is_chunked)]
    assert messages == out


def test_default_bound_is_16_mib() -> None:
    """Replies are refused above 16 MiB unless the caller says otherwise."""
    assert (16 * 1024 * 1024, 16 * 1024 * 1024) == (MAX_REPLY_BYTES, Deframer().max_message_bytes)


@pytest.mark.parametrize("is_chunked", [False, True])
def test_a_reply_that_never_ends_is_refused_at_the_bound(is_chunked: bool) -> None:
    """An endless reply (no end-of-message) fails once it passes the bound; memory stays bounded."""
    deframer = Deframer(64 * 1024)
    piece = b"\n#1024\n" + b"x" * 1024 if is_chunked else b"x" * 1024
    fed = 0
    refused: UnreadableReply | None = None
    while refused is None and fed < 1024 * 1024:
        fed += len(piece)
        try:
            deframer.feed(piece, chunked=is_chunked)
        except UnreadableReply as exc:
            refused = exc
    assert "reply larger than 65536 bytes (the device's netconf.max_reply_bytes)" == str(refused)
    assert fed <= 64 * 1024 + 2 * len(piece)


def test_a_whole_message_above_the_bound_is_refused() -> None:
    """A complete message that is too large is refused too, in one read or announced by a chunk header."""
    with pytest.raises(UnreadableReply, match="reply larger than 100 bytes"):
        Deframer(100).feed(b"y" * 101 + EOM, chunked=False)
    with pytest.raises(UnreadableReply, match="reply larger than 100 bytes"):
        Deframer(100).feed(b"\n#101\n", chunked=True)
    assert [b"y" * 100] == Deframer(100).feed(b"y" * 100 + EOM, chunked=False)


@pytest.mark.parametrize(
    "stream",
    [b"<rpc-reply/>", b"\n#0\n", b"\n#x", b"\n##\n", b"\n#12345678901\n", b"#5\nhello"],
)
def test_broken_chunked_framing_is_refused(stream: bytes) -> None:
    """Bytes that cannot start a chunk header (or end-of-chunks before any chunk) are refused."""
    with pytest.raises(UnreadableReply, match="broken chunked framing"):
        Deframer().feed(stream, chunked=True)


def test_a_bound_below_one_byte_is_refused() -> None:
    with pytest.raises(ValueError, match="max_message_bytes must be >= 1"):
        Deframer(0)


# --- structured facts ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (ConnectionRefusedError(errno.ECONNREFUSED, "refused"), True),
        (ConnectionResetError(errno.ECONNRESET, "reset"), True),
        (OSError(errno.EHOSTUNREACH, "no route to host"), True),
        (OSError(errno.ENETUNREACH, "network is unreachable"), True),
        (TimeoutError("timed out"), True),
        (OSError(errno.EADDRNOTAVAIL, "cannot assign requested address"), False),
        (socket.gaierror(socket.EAI_NONAME, "name or service not known"), False),
        (PermissionError(errno.EACCES, "permission denied"), False),
        (ValueError("not a socket error"), False),
    ],
)
def test_which_socket_errors_mean_nothing_answered(exc: BaseException, expected: bool) -> None:
    """Refused, reset, timed out, unroutable: nothing answered. Our own bind/name problems: not."""
    assert expected == is_no_answer(exc)


def test_outcome_unknown_is_a_fact_of_the_error_class() -> None:
    """Timeouts, broken sessions and unreadable replies may hide an applied write; rpc-errors do not."""
    assert {
        "timeout": True,
        "session": True,
        "reply": True,
        "rpc-error": False,
        "connect": False,
        "other": False,
        "ssh-timeout": True,
        "ssh": False,
    } == {
        "timeout": NetconfTimeoutError("r1", "commit", 5).outcome_unknown,
        "session": NetconfSessionError("r1", "commit", "session broken").outcome_unknown,
        "reply": NetconfReplyError("r1", "commit", "reply larger than 10 bytes").outcome_unknown,
        "rpc-error": NetconfRpcError("r1", "commit", "operation-failed", "refused").outcome_unknown,
        "connect": NetconfConnectError("r1", "refused").outcome_unknown,
        "other": NetconfError("r1", "get", "x").outcome_unknown,
        "ssh-timeout": SshTimeoutError("r1", "run true", 5).outcome_unknown,
        "ssh": SshError("r1", "run true", "exit status 1").outcome_unknown,
    }


def test_connect_errors_are_reachable_unless_the_raise_site_says_otherwise() -> None:
    """unreachable is False by default: only a connect that met silence sets it."""
    assert (False, True, False, True) == (
        NetconfConnectError("r1", "authentication failed").unreachable,
        NetconfConnectError("r1", "TCP connect: connection refused", unreachable=True).unreachable,
        SshConnectError("r1", "authentication failed").unreachable,
        SshConnectError("r1", "TCP connect: connection refused", unreachable=True).unreachable,
    )
