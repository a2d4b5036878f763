"""NETCONF over SSH: an asyncio facade over ncclient, and the NETCONF health probe.

Theory of operation
-------------------
ncclient is blocking and runs one reader thread per session (here `_Session`, without ncclient's
TICK polling). Every call here runs the blocking ncclient call in a worker thread under
`asyncio.wait_for`; ncclient's own RPC timeout is set to the same value, so the worker normally
gives up on its own and the asyncio timeout is only a backstop. When the backstop fires anyway
(a worker stuck in a write to a peer that stopped reading), the session's socket is shut down,
which frees the worker at once; the session is then gone. Calls on one `NetconfClient` are
serialised (one RPC in flight per session), which is what a playbook step wants and what keeps
the replies' order obvious.

Bulkheads. Worker threads come from the session's `executor` (every blocking call of a session:
connect, RPCs, close), or the loop's default executor when none is given. `thread_pool` builds
named bounded pools, so probes of hundreds of dark devices (each holding a worker until its
connect times out) cannot starve the RPCs of a handover that runs in another pool. A call that
times out while still queued for a worker is cancelled before it ever runs.

Bounds. Every write is bounded by the call's timeout (a peer that stops reading fails the call
with `NetconfTimeoutError`, and the session is closed: a half-written request cannot be taken
back). Replies are deframed here (`Deframer`, RFC 6242 end-of-message and chunked framing) and
refused above `max_reply_bytes` (the device's inventory setting `netconf.max_reply_bytes`, 16 MiB
unless set): a reply that never ends fails with
`NetconfReplyError` once it is that large, or with a timeout before that, and never grows memory
without bound. A reply that is not XML fails its call with `NetconfReplyError` (the session stays
usable when the framing held; broken framing closes it).

Unreachable. A connect error carries `unreachable=True` exactly when the device never answered
at the SSH level: TCP refused, reset, timed out or unroutable, or the connection ended (or the
whole establishment timed out) before the server sent its SSH banner. Once a banner came, every
failure (host key, authentication, no NETCONF hello behind a running sshd) is unreachable=False.

Security: the server's SSH host key must equal the device's pinned `host_key` (no pinned key: no
session). Credentials are resolved from `SecretRef`s at connect time, handed to ncclient and not
kept; a private key travels through an anonymous in-memory file (memfd), never a named file.
No SSH agent, no ~/.ssh keys, no ~/.ssh/config.

Source address: the TCP socket is created here, bound to (source_address, 0) when one is given,
connected, and handed to ncclient as `sock=`. This works with ncclient 0.7 (the device sees the
chosen source, which is what management ACLs check); ncclient's own `bind_addr` would work too,
but owning the socket gives a precise cause ("connection refused") and an honest connect timeout.

ncclient errors never leave this module: they become `baton.adapters.errors.Netconf*Error`.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import logging
import os
import re
import selectors
import socket
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Callable, Generator
from concurrent.futures import Executor, ThreadPoolExecutor
from types import TracebackType
from typing import Any, Self, TypeVar, cast

import ncclient.transport.session
import structlog
from lxml import etree  # type: ignore[import-untyped]  # no lxml-stubs in the env
from ncclient import manager as nc_manager
from ncclient import transport as nc_transport
from ncclient.operations import RaiseMode
from ncclient.operations.errors import MissingCapabilityError, OperationError, TimeoutExpiredError
from ncclient.operations.rpc import RPCError
from ncclient.transport.errors import (
    AuthenticationError,
    SessionCloseError,
    SessionError,
    SSHError,
    SSHUnknownHostError,
    TransportError,
)
from ncclient.transport.session import END_DELIM, MSG_DELIM, NetconfBase
from ncclient.xml_ import XMLError

from baton.adapters.connecting import Connecting, is_no_answer
from baton.adapters.errors import (
    NetconfConnectError,
    NetconfError,
    NetconfHostKeyError,
    NetconfReplyError,
    NetconfRpcError,
    NetconfSessionError,
    NetconfTimeoutError,
)
from baton.adapters.hostkeys import HostKeyFormatError, PinnedKey, fingerprint, parse_pinned_key
from baton.core.health import Observation
from baton.core.model import NETCONF_MAX_REPLY_BYTES, Device, Protocol, SecretRef

# ncclient's session thread only looks at its send queue after select(timeout=TICK) returns, so
# every RPC waits up to TICK before it is even sent: ~100 ms per RPC at the default 0.1 s, which
# eats the failover budget (a handover is dozens of RPCs). Measured on loopback (get-config):
# TICK 0.1 → 103 ms/RPC, 0.13 % CPU per idle session; 0.01 → 13 ms, 0.36 %; 0.001 → 2.2 ms,
# 0.94 %. Baton's own sessions (`_Session` below) no longer depend on TICK at all: they write
# requests from the calling thread and their reader thread sleeps until data arrives. The global
# stays at 0.01 for any other ncclient session in the process (tests' own clients, say).
ncclient.transport.session.TICK = 0.01
# How often an idle `_Session` reader thread wakes up anyway (to notice a close it was not woken
# for); nothing waits on it: requests never queue, replies wake it up.
_IDLE_WAKE_S = 5.0
# paramiko's transport thread reads its socket with a 0.1 s timeout, so an idle session wakes it
# (and takes the GIL) 10 times a second only to see whether it was closed. Once the session is
# up, the timeout is raised to this: data and the peer's close still wake it at once; our own
# close is seen by the reader at once, by paramiko's thread within this (it then exits).
# Measured: 1,000 sessions held open at 0.1 s sank a 2-core box (load 500, a 1,000-device run
# 136 s instead of ~30 s).
_TRANSPORT_IDLE_S = 5.0

log = structlog.get_logger(__name__)

Resolve = Callable[[SecretRef], str]
T = TypeVar("T")

CONFIRMED_COMMIT = "urn:ietf:params:netconf:capability:confirmed-commit"
CONFIRMED_COMMIT_1_1 = "urn:ietf:params:netconf:capability:confirmed-commit:1.1"
CANDIDATE = "urn:ietf:params:netconf:capability:candidate:1.0"
# An empty subtree filter selects nothing (RFC 6241 §6.4.2): the cheapest RPC every server
# answers, used by the probe when the device has no probe_filter.
EMPTY_FILTER = '<filter xmlns="urn:ietf:params:xml:ns:netconf:base:1.0" type="subtree"/>'
# Room for ncclient's own timeout to fire first, so a slow reply is reported by ncclient (and
# its worker thread ends) rather than abandoned by asyncio.
_FIRST_RPC_DELAY_S = 0.05  # after the hellos, before the first request (see _blocking_connect)
_BACKSTOP_S = 1.0
_CLOSE_TIMEOUT_S = 2.0
# Replies above this many bytes are refused (NetconfReplyError) and their session closed, unless
# the device's `netconf.max_reply_bytes` says otherwise. The largest reply Baton reads (a device's
# running config) is far below it; it bounds what a broken or hostile server can make Baton hold
# per session. `NetconfClient.connect(max_reply_bytes=)` and `NetconfProbe(max_reply_bytes=)`
# override the device's setting (tests).
MAX_REPLY_BYTES = NETCONF_MAX_REPLY_BYTES


def thread_pool(name: str, threads: int) -> ThreadPoolExecutor:
    """A bounded pool of worker threads for NETCONF sessions (a bulkhead): give it as `executor`
    to `NetconfClient.connect` / `NetconfProbe`. Threads are named `name_0`, `name_1`...; whoever
    builds the pool shuts it down (after closing the sessions that use it)."""
    if threads < 1:
        raise ValueError(f"thread pool {name} needs at least 1 thread, got {threads}")
    return ThreadPoolExecutor(max_workers=threads, thread_name_prefix=name)


async def _in_thread(executor: Executor | None, fn: Callable[[], T]) -> T:
    """fn in a worker of `executor` (None: the loop's default executor), with the caller's
    contextvars (structlog's bound context), as asyncio.to_thread does. Cancelling the wait
    cancels a call still queued for a worker: it never runs."""
    loop = asyncio.get_running_loop()
    ctx = contextvars.copy_context()
    return await loop.run_in_executor(executor, functools.partial(ctx.run, fn))


# --- framing ---------------------------------------------------------------------------------


class UnreadableReply(Exception):
    """A reply that cannot be read (framing, size, encoding, XML). Raised by `Deframer` and the
    session's reader; it never leaves this module: callers get `NetconfReplyError`."""


EOM = b"]]>]]>"
_CHUNK_HEADER = re.compile(rb"\n#([1-9][0-9]{0,9})\n")
_END_OF_CHUNKS = b"\n##\n"
_MAX_CHUNK = 4294967295  # RFC 6242: chunk-size is 1..4294967295


def _is_header_prefix(head: bytes) -> bool:
    """Could `head` be the start of a chunk header ("\\n#<size>\\n") or of end-of-chunks?"""
    if _END_OF_CHUNKS.startswith(head):
        return True
    digits = head[2:]
    return head.startswith(b"\n#") and 0 < len(digits) <= 10 and digits.isdigit() and digits[:1] != b"0"


class Deframer:
    """Sans-I/O RFC 6242 deframing of what a server sends, bounded in memory.

    `feed(data, chunked=...)` returns the complete messages the bytes finished (end-of-message
    framing of base:1.0, or chunked framing of base:1.1 once both hellos said so). Raises
    `UnreadableReply` when a message (complete or still arriving) exceeds `max_message_bytes`, or when
    chunked framing is broken; the stream cannot be resynchronised after either.
    """

    def __init__(self, max_message_bytes: int = MAX_REPLY_BYTES) -> None:
        if max_message_bytes < 1:
            raise ValueError(f"max_message_bytes must be >= 1, got {max_message_bytes}")
        self.max_message_bytes = max_message_bytes
        self._buf = bytearray()
        self._scanned = 0  # end-of-message: no EOM starts before this offset of _buf
        self._message = bytearray()  # chunked: the chunks of the message so far
        self._need = 0  # chunked: bytes of the current chunk still to come

    def feed(self, data: bytes, *, chunked: bool) -> list[bytes]:
        self._buf += data
        return self._chunked() if chunked else self._end_of_message()

    def _too_large(self) -> UnreadableReply:
        # names the setting: the operator's fix is to raise it (or to find out why the device
        # sends that much)
        return UnreadableReply(
            f"reply larger than {self.max_message_bytes} bytes (the device's netconf.max_reply_bytes)"
        )

    def _end_of_message(self) -> list[bytes]:
        out: list[bytes] = []
        while True:
            end = self._buf.find(EOM, self._scanned)
            if end < 0:
                break
            if end > self.max_message_bytes:
                raise self._too_large()
            out.append(bytes(self._buf[:end]))
            del self._buf[: end + len(EOM)]
            self._scanned = 0
        # an EOM split across reads starts at most len(EOM) - 1 bytes before the end
        self._scanned = max(0, len(self._buf) - len(EOM) + 1)
        if len(self._buf) > self.max_message_bytes + len(EOM) - 1:
            raise self._too_large()
        return out

    def _chunked(self) -> list[bytes]:
        out: list[bytes] = []
        buf = self._buf
        while buf:
            if not self._need and not self._message:
                # Between messages: whitespace left after the server's end-of-message hello
                # (netconfd sends a newline after it, sometimes in the same read as the first
                # chunked reply) is not part of any frame; waiting on it lost that reply.
                while bytes(buf[:1]) in (b"\r", b" ", b"\t") or (
                    buf[:1] == b"\n" and bytes(buf[1:2]) not in (b"#", b"")
                ):
                    del buf[:1]
                if not buf:
                    break
            if self._need:
                take = min(self._need, len(buf))
                self._message += buf[:take]
                del buf[:take]
                self._need -= take
                continue
            if buf.startswith(_END_OF_CHUNKS):
                if not self._message:
                    raise UnreadableReply("broken chunked framing: end of chunks without a chunk")
                out.append(bytes(self._message))
                self._message.clear()
                del buf[: len(_END_OF_CHUNKS)]
                continue
            match = _CHUNK_HEADER.match(buf)
            if match is None:
                if not _is_header_prefix(bytes(buf)):
                    raise UnreadableReply(f"broken chunked framing: bad chunk header {bytes(buf[:16])!r}")
                break  # the rest of the header is still to come
            size = int(match.group(1))
            if size > _MAX_CHUNK:
                raise UnreadableReply(f"broken chunked framing: chunk size {size} out of range")
            if len(self._message) + size > self.max_message_bytes:
                raise self._too_large()
            self._need = size
            del buf[: match.end()]
        return out


def _endpoint(device: Device) -> str:
    host = f"[{device.address}]" if ":" in device.address else device.address
    return f"{host}:{device.netconf.port}"


class _ConnectParams:
    """What the blocking connect needs. Holds secrets: no repr, never logged, dropped after use."""

    __slots__ = ("key_text", "max_reply_bytes", "password", "source_address", "timeout_s", "username")

    def __init__(
        self,
        username: str,
        password: str | None,
        key_text: str | None,
        timeout_s: float,
        source_address: str | None,
        max_reply_bytes: int = MAX_REPLY_BYTES,
    ) -> None:
        self.username = username
        self.password = password
        self.key_text = key_text
        self.timeout_s = timeout_s
        self.source_address = source_address
        self.max_reply_bytes = max_reply_bytes

    def __repr__(self) -> str:
        return f"_ConnectParams(username={self.username!r}, <secrets hidden>)"


@contextlib.contextmanager
def _key_file(key_text: str | None) -> Generator[str | None, None, None]:
    """A path from which paramiko can read the private key, removed on exit.

    ncclient only takes key *file names*. An anonymous memfd never touches a file system; where
    memfd is missing, a 0600 file in a 0700 temporary directory, deleted right after use.
    """
    if key_text is None:
        yield None
        return
    data = key_text.encode()
    if hasattr(os, "memfd_create"):
        fd = os.memfd_create("baton-netconf-key", os.MFD_CLOEXEC)
        try:
            os.write(fd, data)
            yield f"/proc/self/fd/{fd}"
        finally:
            os.close(fd)
        return
    with tempfile.TemporaryDirectory(prefix="baton-key-") as tmp:
        path = os.path.join(tmp, "key")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        yield path


def _open_socket(device: Device, params: _ConnectParams) -> socket.socket:
    source = (params.source_address, 0) if params.source_address else None
    try:
        return socket.create_connection(
            (device.address, device.netconf.port), timeout=params.timeout_s, source_address=source
        )
    except TimeoutError:
        raise NetconfConnectError(
            device.id,
            f"TCP connect to {_endpoint(device)} timed out after {params.timeout_s:g} s",
            unreachable=True,
        ) from None
    except OSError as exc:
        where = _endpoint(device) + (f" from {params.source_address}" if params.source_address else "")
        reason = exc.strerror or str(exc)
        raise NetconfConnectError(
            device.id, f"TCP connect to {where}: {reason.lower()}", unreachable=is_no_answer(exc)
        ) from None


class _WriteTimeout(Exception):
    """A request could not be written within its timeout (the peer stopped reading)."""

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        super().__init__(f"request not written within {timeout_s:g} s")


class _Session(nc_transport.SSHSession):  # type: ignore[misc]  # ncclient is untyped
    """ncclient's SSH session without its TICK polling (ncclient 0.7's `Session.run` loop), with
    bounded writes and bounded, checked replies.

    Upstream, `send` queues the request and the session thread sends it after its next
    `select(timeout=TICK)`: up to TICK of latency per RPC, and an idle session wakes up 1/TICK
    times a second (100/s at 0.01), each time taking the GIL. Here `send` frames and writes the
    request itself, in the calling thread (paramiko's `Channel.send` is thread-safe; a lock keeps
    two requests from interleaving), within `send_timeout_s` (set by the caller to its RPC
    timeout), and the reader thread only wakes up for data, for the close, or every
    `_IDLE_WAKE_S`. Replies are deframed by a bounded `Deframer` (not ncclient's parsers, which
    buffer without limit) and dispatched to ncclient's listeners as upstream does; a reply that
    is not XML, or not an <rpc-reply> of ours, fails the waiting RPC with `UnreadableReply` instead of
    leaving it to time out.
    """

    def __init__(self, device_handler: Any, *, max_reply_bytes: int, send_timeout_s: float) -> None:
        super().__init__(device_handler)
        self._send_lock = threading.Lock()
        self._deframer = Deframer(max_reply_bytes)
        self.send_timeout_s = send_timeout_s

    def send(self, message: str) -> None:
        if not self.connected:
            raise TransportError("Not connected to NETCONF server")
        data = message.encode()
        if self._base == NetconfBase.BASE_11:
            data = b"\n#%i\n%s%s" % (len(data), data, END_DELIM)
        else:
            data = data + MSG_DELIM
        with self._send_lock:
            channel = self._channel
            if channel is None:
                raise TransportError("Not connected to NETCONF server")
            # Bounds waiting for the peer's SSH window (a peer that stopped reading); a full
            # TCP buffer is bounded by the caller's backstop, which shuts the socket down.
            timeout = self.send_timeout_s
            channel.settimeout(timeout)
            while data:
                try:
                    sent = channel.send(data)
                except TimeoutError:
                    # Part of the request may be on the wire: the framing cannot be resumed.
                    self.close()
                    raise _WriteTimeout(timeout) from None
                except OSError as exc:  # the channel closed under us: the session is gone
                    raise TransportError(f"session closed: {exc}") from None
                if sent <= 0:
                    raise SessionCloseError("", data)
                data = data[sent:]

    def run(self) -> None:
        selector = selectors.DefaultSelector()
        try:
            self._transport_register(selector, selectors.EVENT_READ)
            while True:
                if not selector.select(timeout=_IDLE_WAKE_S):
                    if self._closing.is_set():
                        break
                    continue
                data = self._transport_read()
                if data:
                    chunked = self._base == NetconfBase.BASE_11
                    for message in self._deframer.feed(data, chunked=chunked):
                        self._dispatch_bytes(message)
                elif self._closing.is_set():
                    break  # end of session, expected
                else:
                    raise SessionCloseError("")
        except Exception as exc:
            if isinstance(exc, UnreadableReply):
                exc = UnreadableReply(f"{exc}; session closed")
            self.logger.debug("Broke out of main loop, error=%r", exc)
            self.close()  # first: whoever hears of the error sees the session closed already
            self._dispatch_error(exc)
        finally:
            selector.close()

    def _dispatch_bytes(self, message: bytes) -> None:
        """Check one whole message, then hand it to ncclient's listeners as upstream does.

        Upstream logs a message it cannot parse and drops it, so its RPC times out; and it only
        parses the root start tag, leaving garbage after it to fail later. Here the message is
        parsed whole first (by a parser no more lenient than ncclient's), so an unreadable reply
        fails the waiting RPC at once with `UnreadableReply` and ncclient never meets bad XML. The
        framing held, so the session stays usable.
        """
        message = message.strip()  # whitespace around a message (after a base:1.0 EOM) is noise
        try:
            root = etree.fromstring(message, parser=_reply_parser())
        except etree.XMLSyntaxError as exc:
            detail = str(exc).splitlines()[0] if str(exc) else "unparsable"
            self._dispatch_error(UnreadableReply(f"reply is not well-formed XML: {detail}"))
            return
        if root.tag not in _MESSAGES:
            self._dispatch_error(UnreadableReply(f"unexpected message <{etree.QName(root).localname}>"))
            return
        try:
            raw = message.decode("utf-8")
        except UnicodeDecodeError:
            self._dispatch_error(UnreadableReply("reply is not UTF-8 text"))
            return
        with self._lock:
            listeners = list(self._listeners)
        for listener in listeners:
            try:
                listener.callback((root.tag, root.attrib), raw)
            except OperationError as exc:  # no message-id, or one no request of ours carries
                self._dispatch_error(UnreadableReply(f"unusable reply: {exc}"))


_NC = "urn:ietf:params:xml:ns:netconf:base:1.0"
_MESSAGES = frozenset(
    {
        f"{{{_NC}}}rpc-reply",
        f"{{{_NC}}}hello",
        "hello",  # some servers' hello is unqualified; ncclient accepts it
        "{urn:ietf:params:xml:ns:netconf:notification:1.0}notification",
    }
)
_parsers = threading.local()


def _reply_parser() -> Any:
    """This thread's reply parser (lxml parsers must not be shared between threads): strict, no
    entity expansion, no network, no huge trees (ncclient's own limits, so it accepts all we do)."""
    parser = getattr(_parsers, "parser", None)
    if parser is None:
        parser = _parsers.parser = etree.XMLParser(recover=False, resolve_entities=False, no_network=True)
    return parser


class _Attempt:
    """One connect, shared by the coroutine that waits for it and the worker thread making it.

    The worker registers its socket and session as it goes. The waiting side may `abandon()`
    the attempt (timeout, cancellation): a session that still comes up is closed at once, and
    the socket is shut down, so a worker blocked in the SSH handshake or the hello returns now
    rather than at paramiko's own timeouts (15 s for the banner, 30 s for authentication) while
    holding a thread of its pool. `ssh_answered()`: did the server ever send its SSH banner?
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._abandoned = False
        self.started = False  # a worker took it up (False: it was still queued for one)
        self._result: Any = None
        self._sock: socket.socket | None = None
        self.session: Any = None

    def begin(self) -> bool:
        """Called first by the worker: False when the caller gave up while it was queued."""
        with self._lock:
            self.started = not self._abandoned
            return self.started

    def opened(self, sock: socket.socket, session: Any) -> None:
        with self._lock:
            self._sock, self.session = sock, session
            abandoned = self._abandoned
        if abandoned:
            _shutdown(sock)

    def ssh_answered(self) -> bool:
        transport = getattr(self.session, "_transport", None)
        return bool(getattr(transport, "remote_version", ""))

    def deliver(self, mgr: Any) -> Any:
        with self._lock:
            if not self._abandoned:
                self._result = mgr
                return mgr
        _close_manager(mgr)
        return None

    def abandon(self) -> None:
        with self._lock:
            self._abandoned = True
            late, self._result = self._result, None
            sock = self._sock
        if late is not None:
            _close_manager(late)
        elif sock is not None:
            _shutdown(sock)


class _Gate:
    """Whether a call queued for a worker ran, or was given up before it could (then never)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._state = "queued"  # -> "running" (worker took it) or "closed" (caller gave up first)

    def enter(self) -> bool:
        with self._lock:
            if self._state == "queued":
                self._state = "running"
            return self._state == "running"

    def close(self) -> bool:
        """The caller gives up; True if a worker had taken the call up already."""
        with self._lock:
            if self._state == "queued":
                self._state = "closed"
            return self._state == "running"


def _shutdown(sock: socket.socket) -> None:
    """Wake every thread blocked on this socket (a close alone does not); they then fail."""
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)


def _blocking_connect(device: Device, pinned: PinnedKey, params: _ConnectParams, attempt: _Attempt) -> Any:
    """Open the SSH transport, verify the pinned host key, authenticate, exchange hellos.

    Returns an ncclient Manager. Built like `ncclient.manager.connect_ssh` does, but keeping the
    session at hand so a host key mismatch can report the key the server offered, and so the
    waiting side can tell whether the server ever answered (`attempt`).
    """
    sock = _open_socket(device, params)
    handler = nc_manager.make_device_handler({"name": "default"})
    session = _Session(handler, max_reply_bytes=params.max_reply_bytes, send_timeout_s=params.timeout_s)
    attempt.opened(sock, session)
    try:
        with _key_file(params.key_text) as key_path:
            session.connect(
                host=device.address,
                port=device.netconf.port,
                sock=sock,
                timeout=params.timeout_s,
                username=params.username,
                password=params.password,
                key_filename=key_path,
                allow_agent=False,
                look_for_keys=False,
                ssh_config=None,
                hostkey_verify=True,
                hostkey_b64=pinned.b64,
                # Never accept an unknown key interactively or otherwise: the pin is the truth.
                unknown_host_cb=lambda _host, _fp: False,
            )
    except SSHUnknownHostError:
        offered = _offered_fingerprint(session)
        _close_session_quietly(session, sock)
        raise NetconfHostKeyError(
            device.id,
            f"host key mismatch for {device.id} at {_endpoint(device)}: pinned {pinned}, "
            f"server offered {offered or 'an unreadable key'}",
            pinned=pinned.fingerprint,
            offered=offered,
        ) from None
    except BaseException as exc:
        _close_session_quietly(session, sock)
        if isinstance(exc, Exception):
            raise _connect_error(device, pinned, params, exc, answered=attempt.ssh_answered()) from None
        raise
    with contextlib.suppress(Exception):  # an optimisation only; the handshake is over
        session._transport.sock.settimeout(_TRANSPORT_IDLE_S)
    # yuma123 netconfd 2.13 reads a request that reaches it together with the client's hello
    # with the hello's end-of-message framing, and then waits for more data: the first RPC
    # hangs until the next one arrives (seen ~1 session in 50 on loopback; the RPC was carried
    # out, its reply held back). ncclient's own session loop sends 0-100 ms after the hello
    # (its TICK); ours sends at once, so it waits this long after the hellos first.
    time.sleep(_FIRST_RPC_DELAY_S)
    return nc_manager.Manager(session, handler, timeout=params.timeout_s, raise_mode=RaiseMode.ERRORS)


def _offered_fingerprint(session: Any) -> str | None:
    try:
        return fingerprint(session.transport.get_remote_server_key().asbytes())
    except Exception:  # the transport may already be gone; the mismatch is what matters
        return None


def _close_session_quietly(session: Any, sock: socket.socket) -> None:
    with contextlib.suppress(Exception):
        if session.transport is not None:
            session.close()
    with contextlib.suppress(OSError):
        sock.close()


def _connect_error(
    device: Device, pinned: PinnedKey, params: _ConnectParams, exc: Exception, *, answered: bool
) -> NetconfConnectError:
    """The Baton error for a failed establishment. `answered`: the server sent its SSH banner.
    Without one the device never answered (it closed or reset the connection before the banner,
    or accepted it and stayed silent): unreachable. Host key and authentication failures need
    an answer, so they never are."""
    where = _endpoint(device)
    text = str(exc)
    if isinstance(exc, NetconfConnectError):
        return exc
    if isinstance(exc, AuthenticationError):
        return NetconfConnectError(device.id, f"authentication failed for user {params.username} at {where}")
    if isinstance(exc, SSHError) and "no acceptable host key" in text.lower():
        return NetconfHostKeyError(
            device.id,
            f"host key mismatch for {device.id} at {where}: pinned {pinned}, "
            f"server offers no {pinned.algorithm} host key",
            pinned=pinned.fingerprint,
            offered=None,
        )
    if isinstance(exc, _WriteTimeout):
        cause = f"NETCONF hello to {where} not accepted: {exc}"
    elif isinstance(exc, UnreadableReply):
        cause = f"unreadable NETCONF hello from {where}: {exc}"
    elif isinstance(exc, SSHError):  # paramiko's "Error reading SSH protocol banner..." among others
        cause = f"SSH to {where} failed: {text}"
    elif isinstance(exc, SessionError | SessionCloseError | TransportError):
        # sshd answered but the netconf subsystem did not say hello (server down behind sshd,
        # subsystem refused, access denied): the SSH part worked, NETCONF did not.
        cause = f"no NETCONF hello from {where}: {text or type(exc).__name__}"
    elif isinstance(exc, OSError):
        cause = f"SSH to {where} failed: {exc.strerror or text}"
    else:
        cause = f"{type(exc).__name__} while connecting to {where}: {text}"
    # a socket error of our own making (say, a source address we cannot bind) is no silence
    unreachable = not answered and (is_no_answer(exc) if isinstance(exc, OSError) else True)
    return NetconfConnectError(device.id, cause, unreachable=unreachable)


def _rpc_error(device: str, operation: str, exc: RPCError) -> NetconfRpcError:
    first = exc.errlist[0] if exc.errlist else exc
    message = exc.message or first.message or ""
    return NetconfRpcError(
        device,
        operation,
        first.tag or "unknown",
        message.strip(),
        error_type=first.type,
        severity=first.severity,
        path=(first.path or "").strip() or None,
        app_tag=first.app_tag,
        info=first.info,
    )


def _operation_error(device: str, operation: str, timeout_s: float, exc: Exception) -> NetconfError:
    if isinstance(exc, NetconfError):
        return exc
    if isinstance(exc, RPCError):
        return _rpc_error(device, operation, exc)
    if isinstance(exc, TimeoutExpiredError):
        return NetconfTimeoutError(device, operation, timeout_s)
    if isinstance(exc, MissingCapabilityError):
        return NetconfError(device, operation, f"server lacks capability {exc}")
    if isinstance(exc, UnreadableReply):
        return NetconfReplyError(device, operation, str(exc))
    if isinstance(exc, _WriteTimeout):
        return NetconfTimeoutError(device, operation, exc.timeout_s)
    if isinstance(exc, XMLError | etree.XMLSyntaxError):
        # Replies are checked before ncclient sees them (`_Session._dispatch_bytes`): this is
        # the request's XML, refused before anything was sent.
        return NetconfError(device, operation, f"invalid XML: {exc}")
    if isinstance(exc, TransportError | SessionError):
        return NetconfSessionError(device, operation, f"session broken: {exc or type(exc).__name__}")
    if isinstance(exc, OperationError):
        return NetconfError(device, operation, str(exc))
    return NetconfError(device, operation, f"{type(exc).__name__}: {exc}")


def _as_filter(filter_xml: str | None) -> Any:
    """ncclient's filter argument: a full <filter> element as is, else subtree content."""
    if filter_xml is None:
        return None
    if filter_xml.lstrip().startswith("<filter"):
        return filter_xml
    return ("subtree", filter_xml)


def _close_manager(mgr: Any, *, polite: bool = True) -> None:
    """<close-session> first when polite, so the server frees the session (and its locks) now;
    then drop the transport. Impolite is for sessions known broken: no RPC to wait on."""
    if polite:
        try:
            mgr.timeout = _CLOSE_TIMEOUT_S
            mgr._session.send_timeout_s = _CLOSE_TIMEOUT_S
            mgr.close_session()
        except Exception:  # the session is going away either way
            log.debug("netconf.close_session_failed", exc_info=True)
    with contextlib.suppress(Exception):
        session = mgr._session  # ncclient's Manager has no public accessor for its session
        if session.transport is not None and session.transport.is_active():
            session.close()


def _shutdown_manager(mgr: Any) -> None:
    """Shut the session's socket down from any thread (the event loop's included: it does not
    block): a worker stuck writing to it, or its reader, fails at once and the session ends."""
    with contextlib.suppress(Exception):
        _shutdown(mgr._session._transport.sock)


class NetconfClient:
    """One NETCONF session with one device.

        async with NetconfClient.connect(device, resolve=resolve, timeout_s=10) as nc:
            async with nc.locked("candidate"):
                await nc.edit_config("candidate", CONFIG)
                await nc.commit(confirmed=True, timeout_s=300)

    Every method raises a `NetconfError` subclass on failure: `NetconfRpcError` for <rpc-error>
    replies (outcome known: not applied), `NetconfTimeoutError` (no reply in time, or the request
    could not be written), `NetconfSessionError` when the session broke, `NetconfReplyError` for
    a reply that cannot be read (not XML, broken framing, larger than `max_reply_bytes`). The
    last three carry `outcome_unknown`: a write may have been applied.
    """

    def __init__(
        self, device: Device, mgr: Any, *, timeout_s: float, executor: Executor | None = None
    ) -> None:
        """Use `NetconfClient.connect`; this wraps an already open ncclient Manager."""
        self.device = device
        self.timeout_s = timeout_s
        self._mgr = mgr
        self._executor = executor
        self._broken = False  # the socket was shut down after a stuck call: the session is gone
        self._lock = asyncio.Lock()
        self._capabilities = frozenset(str(c) for c in mgr.server_capabilities)
        self.session_id: str | None = str(mgr.session_id) if mgr.session_id is not None else None
        self._closed = False

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"session {self.session_id}"
        return f"NetconfClient({self.device.id} at {_endpoint(self.device)}, {state})"

    # --- connecting ------------------------------------------------------------------------

    @classmethod
    def connect(
        cls,
        device: Device,
        *,
        resolve: Resolve,
        timeout_s: float | None = None,
        source_address: str | None = None,
        executor: Executor | None = None,
        max_reply_bytes: int | None = None,
    ) -> Connecting[NetconfClient]:
        """Open a session: `nc = await NetconfClient.connect(...)` or `async with ... as nc`.

        timeout_s bounds the whole establishment (TCP, SSH, auth, hello) and is the default RPC
        timeout of the session; None means the device's `netconf.timeout_s`. executor runs every
        blocking call of the session (connect, RPCs, close); None means the loop's default
        executor (see `thread_pool` for bulkheads). Replies above max_reply_bytes (None: the
        device's `netconf.max_reply_bytes`) are refused with `NetconfReplyError` and the session
        is closed.
        """
        bound = device.netconf.max_reply_bytes if max_reply_bytes is None else max_reply_bytes
        if bound < 1:
            raise ValueError(f"max_reply_bytes must be >= 1, got {bound}")

        async def opened() -> NetconfClient:
            return await cls._open(device, resolve, timeout_s, source_address, executor, bound)

        return Connecting(opened)

    @classmethod
    async def _open(
        cls,
        device: Device,
        resolve: Resolve,
        timeout_s: float | None,
        source_address: str | None,
        executor: Executor | None,
        max_reply_bytes: int,
    ) -> NetconfClient:
        settings = device.netconf
        timeout = settings.timeout_s if timeout_s is None else timeout_s
        if device.host_key is None:
            raise NetconfHostKeyError(
                device.id,
                f"no pinned host key for {device.id}: refusing to connect to {_endpoint(device)} "
                "unverified (set host_key in the inventory)",
                pinned=None,
                offered=None,
            )
        try:
            pinned = parse_pinned_key(device.host_key)
        except HostKeyFormatError as exc:
            raise NetconfHostKeyError(
                device.id, f"pinned host key of {device.id} is unusable: {exc}", pinned=None, offered=None
            ) from None
        if settings.username is None:
            raise NetconfConnectError(device.id, "no netconf username in the inventory")
        if settings.password is None and settings.private_key is None:
            raise NetconfConnectError(device.id, "no netconf password or private_key in the inventory")
        try:
            params = _ConnectParams(
                username=settings.username,
                password=resolve(settings.password) if settings.password else None,
                key_text=resolve(settings.private_key) if settings.private_key else None,
                timeout_s=timeout,
                source_address=source_address,
                max_reply_bytes=max_reply_bytes,
            )
        except Exception as exc:
            # The resolver's message names the reference (env/file), never the value.
            raise NetconfConnectError(device.id, f"cannot resolve credentials: {exc}") from None

        attempt = _Attempt()
        started = time.monotonic()

        def work() -> Any:
            if not attempt.begin():
                return None  # given up while queued for a worker: never tried
            return attempt.deliver(_blocking_connect(device, pinned, params, attempt))

        try:
            mgr = await asyncio.wait_for(_in_thread(executor, work), timeout + _BACKSTOP_S)
        except TimeoutError:
            attempt.abandon()
            if not attempt.started:
                # Baton's own congestion (a saturated pool), not the device: nothing was tried.
                raise NetconfConnectError(
                    device.id, f"no worker thread free to connect to {_endpoint(device)} in {timeout:g} s"
                ) from None
            raise NetconfConnectError(
                device.id,
                f"no NETCONF session with {_endpoint(device)} within {timeout:g} s",
                unreachable=not attempt.ssh_answered(),
            ) from None
        except asyncio.CancelledError:
            attempt.abandon()
            raise
        client = cls(device, mgr, timeout_s=timeout, executor=executor)
        log.debug(
            "netconf.connected",
            device=device.id,
            session_id=client.session_id,
            source_address=source_address,
            connect_s=round(time.monotonic() - started, 4),
        )
        return client

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self, *, polite: bool = True) -> None:
        """Send <close-session> (bounded; skipped when not polite) and drop the transport.
        Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        polite = polite and not self._broken and bool(self._mgr.connected)  # no RPC to a dead session
        async with self._lock:
            try:
                await asyncio.wait_for(
                    _in_thread(self._executor, lambda: _close_manager(self._mgr, polite=polite)),
                    _CLOSE_TIMEOUT_S * 3,
                )
            except Exception:  # stuck or refused (a pool shut down): drop the transport under it
                _shutdown_manager(self._mgr)
        log.debug("netconf.closed", device=self.device.id, session_id=self.session_id)

    @property
    def is_connected(self) -> bool:
        return not self._closed and not self._broken and bool(self._mgr.connected)

    # --- capabilities ----------------------------------------------------------------------

    @property
    def capabilities(self) -> frozenset[str]:
        """The capability URIs of the server's hello."""
        return self._capabilities

    def has_capability(self, prefix: str) -> bool:
        """True when a capability URI starts with prefix (":candidate" style is accepted too)."""
        if prefix.startswith(":"):
            prefix = "urn:ietf:params:netconf:capability" + prefix
        return any(c.startswith(prefix) for c in self._capabilities)

    @property
    def supports_confirmed_commit(self) -> bool:
        return self.has_capability(CONFIRMED_COMMIT)

    @property
    def supports_persist(self) -> bool:
        """confirmed-commit 1.1: <persist>/<persist-id>, confirmed commits that survive the session."""
        return self.has_capability(CONFIRMED_COMMIT_1_1)

    @property
    def supports_candidate(self) -> bool:
        return self.has_capability(CANDIDATE)

    # --- operations ------------------------------------------------------------------------

    async def _call(self, operation: str, fn: Callable[[Any], T], rpc_timeout_s: float | None) -> T:
        if self._closed:
            raise NetconfSessionError(self.device.id, operation, "session is closed")
        timeout = self.timeout_s if rpc_timeout_s is None else rpc_timeout_s
        mgr = self._mgr

        gate = _Gate()

        def blocking() -> T | None:
            if not gate.enter():
                return None  # given up while queued for a worker: never sent
            # ncclient's per-RPC wait, and the bound on writing the request; calls are
            # serialised by self._lock
            mgr.timeout = timeout
            mgr._session.send_timeout_s = timeout
            return fn(mgr)

        async with self._lock:
            if self._broken:
                raise NetconfSessionError(
                    self.device.id, operation, "session was shut down after a stuck call"
                )
            call = _in_thread(self._executor, blocking)
            try:
                return cast(T, await asyncio.wait_for(call, timeout + _BACKSTOP_S))
            except TimeoutError:
                if not gate.close():
                    # Baton's own congestion (a saturated pool): the request was never sent.
                    raise NetconfError(
                        self.device.id, operation, f"no worker thread free within {timeout:g} s (not sent)"
                    ) from None
                # ncclient's own timeout did not fire: the worker is stuck (writing to a peer
                # that stopped reading). Shut the socket down so it returns now; the session
                # cannot be trusted after this anyway.
                self._broken = True
                _shutdown_manager(mgr)
                log.warning(
                    "netconf.call_stuck", device=self.device.id, operation=operation, timeout_s=timeout
                )
                raise NetconfTimeoutError(self.device.id, operation, timeout) from None
            except Exception as exc:
                raise _operation_error(self.device.id, operation, timeout, exc) from None

    async def get(self, filter_xml: str | None = None, *, rpc_timeout_s: float | None = None) -> str:
        """<get> (state and config); filter_xml is subtree content or a whole <filter> element.
        Returns the <data> element as XML text."""
        spec = _as_filter(filter_xml)
        return await self._call("get", lambda m: str(m.get(filter=spec).data_xml), rpc_timeout_s)

    async def get_config(
        self, source: str = "running", filter_xml: str | None = None, *, rpc_timeout_s: float | None = None
    ) -> str:
        """<get-config> of source; returns the <data> element as XML text."""
        spec = _as_filter(filter_xml)
        return await self._call(
            "get-config", lambda m: str(m.get_config(source=source, filter=spec).data_xml), rpc_timeout_s
        )

    async def edit_config(
        self,
        target: str,
        config_xml: str,
        default_operation: str | None = None,
        *,
        rpc_timeout_s: float | None = None,
    ) -> None:
        """<edit-config> of target with config_xml, a <config> element (base namespace or none)."""
        await self._call(
            "edit-config",
            lambda m: m.edit_config(config=config_xml, target=target, default_operation=default_operation),
            rpc_timeout_s,
        )

    async def lock(self, target: str = "candidate", *, rpc_timeout_s: float | None = None) -> None:
        await self._call("lock", lambda m: m.lock(target=target), rpc_timeout_s)

    async def unlock(self, target: str = "candidate", *, rpc_timeout_s: float | None = None) -> None:
        await self._call("unlock", lambda m: m.unlock(target=target), rpc_timeout_s)

    @contextlib.asynccontextmanager
    async def locked(self, target: str = "candidate") -> AsyncIterator[None]:
        """Hold the lock on target for the block; unlock even when the block fails."""
        await self.lock(target)
        try:
            yield
        finally:
            # An unlock that fails (session gone) must not hide the block's own error; the
            # server releases a dead session's locks itself.
            try:
                await self.unlock(target)
            except NetconfError:
                log.warning("netconf.unlock_failed", device=self.device.id, target=target, exc_info=True)

    async def discard_changes(self, *, rpc_timeout_s: float | None = None) -> None:
        await self._call("discard-changes", lambda m: m.discard_changes(), rpc_timeout_s)

    async def validate(self, source: str = "candidate", *, rpc_timeout_s: float | None = None) -> None:
        await self._call("validate", lambda m: m.validate(source=source), rpc_timeout_s)

    async def commit(
        self,
        confirmed: bool = False,
        timeout_s: int | None = None,
        persist: str | None = None,
        persist_id: str | None = None,
        *,
        rpc_timeout_s: float | None = None,
    ) -> None:
        """<commit>. confirmed=True with timeout_s (the *confirm* timeout, whole seconds; the
        server's default is 600) starts a confirmed commit; a later commit() confirms it.
        persist sets a token that lets the confirmed commit outlive this session (and lets
        another session confirm it with persist_id). rpc_timeout_s bounds the RPC itself."""
        if timeout_s is not None and not confirmed:
            raise ValueError("timeout_s (confirm timeout) needs confirmed=True")
        if persist is not None and not confirmed:
            raise ValueError("persist needs confirmed=True")
        # ncclient puts the value straight into the XML text: it must be a str, not an int.
        confirm_timeout = None if timeout_s is None else str(int(timeout_s))
        await self._call(
            "commit",
            lambda m: m.commit(
                confirmed=confirmed, timeout=confirm_timeout, persist=persist, persist_id=persist_id
            ),
            rpc_timeout_s,
        )

    async def cancel_commit(
        self, persist_id: str | None = None, *, rpc_timeout_s: float | None = None
    ) -> None:
        """<cancel-commit>: roll back an ongoing confirmed commit now."""
        await self._call("cancel-commit", lambda m: m.cancel_commit(persist_id=persist_id), rpc_timeout_s)

    async def dispatch(self, rpc_xml: str, *, rpc_timeout_s: float | None = None) -> str:
        """Any other RPC: rpc_xml is the operation element (without <rpc>). Returns the reply XML."""
        return await self._call("dispatch", lambda m: str(m.dispatch(rpc_xml).xml), rpc_timeout_s)


# --- the health probe --------------------------------------------------------------------------


class NetconfProbe:
    """Health probe of one device over NETCONF: a session and a <get> of the probe filter.

    One session is kept open between probes (re-established on any failure): a <get> on an open
    session takes ~12 ms where connect + get takes ~280 ms, and a fresh session per poll means an
    SSH login (sshd fork, subsystem, AAA accounting record) on the device every poll interval.
    The price is the idle session on our side (two threads that wake up every few seconds, see
    `_Session`; it was ~0.36 % CPU each with ncclient's TICK polling) against ~11 ms CPU per
    fresh connect.

    A reused session that turns out broken (the server restarted since the last probe) is
    re-established once within the same probe, so a device that is back is not reported down
    for one interval; a timeout is not retried.

    The latency is the time the probe took, including the connect when there was one.
    `executor` runs the session's blocking calls (a probe pool: see `thread_pool`);
    `max_reply_bytes` None means the device's `netconf.max_reply_bytes`.
    """

    def __init__(
        self,
        device: Device,
        *,
        resolve: Resolve,
        timeout_s: float | None = None,
        source_address: str | None = None,
        reuse_session: bool = True,
        clock: Callable[[], float] = time.time,
        executor: Executor | None = None,
        max_reply_bytes: int | None = None,
    ) -> None:
        self.device = device
        self.timeout_s = device.netconf.timeout_s if timeout_s is None else timeout_s
        self._resolve = resolve
        self._source_address = source_address
        self._executor = executor
        self._max_reply_bytes = max_reply_bytes
        self._reuse = reuse_session
        self._clock = clock
        self._client: NetconfClient | None = None
        self._filter = device.netconf.probe_filter or EMPTY_FILTER

    def __repr__(self) -> str:
        return f"NetconfProbe({self.device.id}, session={'open' if self._client else 'none'})"

    async def probe(self) -> Observation:
        started = time.monotonic()
        at = self._clock()
        try:
            await self._probe_once()
        except NetconfError as exc:
            await self._drop_session(polite=False)
            return self._observation(
                at, False, exc.cause if exc.operation == "connect" else str(exc), started, exc
            )
        finally:
            if not self._reuse:
                await self._drop_session()
        return self._observation(at, True, "", started)

    async def _probe_once(self) -> None:
        if self._client is not None and self._client.is_connected:
            try:
                await self._client.get(self._filter, rpc_timeout_s=self.timeout_s)
                return
            except NetconfSessionError:
                log.info("netconf.probe_session_stale", device=self.device.id)
                await self._drop_session(polite=False)
        self._client = await NetconfClient.connect(
            self.device,
            resolve=self._resolve,
            timeout_s=self.timeout_s,
            source_address=self._source_address,
            executor=self._executor,
            max_reply_bytes=self._max_reply_bytes,
        )
        await self._client.get(self._filter, rpc_timeout_s=self.timeout_s)

    def _observation(
        self, at: float, ok: bool, reason: str, started: float, error: BaseException | None = None
    ) -> Observation:
        latency = time.monotonic() - started
        if ok:
            log.debug("netconf.probe_ok", device=self.device.id, latency_s=round(latency, 4))
        else:
            # One event with the reason; its traceback (one field) only for whoever asked for debug.
            detail = {"exc_info": error} if error is not None and log.is_enabled_for(logging.DEBUG) else {}
            log.info("netconf.probe_failed", device=self.device.id, reason=reason, **detail)
        return Observation(
            device=self.device.id,
            protocol=Protocol.NETCONF,
            ok=ok,
            at=at,
            reason=reason,
            latency_s=latency if ok else None,
        )

    async def _drop_session(self, *, polite: bool = True) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.close(polite=polite)

    async def close(self) -> None:
        await self._drop_session()
