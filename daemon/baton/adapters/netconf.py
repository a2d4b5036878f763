"""NETCONF over SSH on asyncssh: `NetconfClient` (one session with one device) and the NETCONF
health probe.

Theory of operation
-------------------
A session is an asyncssh connection (`baton.adapters.ssh.open_connection`: the device's pinned
host key, the inventory's credentials, the source address) with the `netconf` subsystem on one
channel. Everything runs on the event loop: no thread per session, so a thousand open sessions
cost a thousand channels, not two thousand threads, and dark devices (connects that wait for
their timeout) hold nothing but a pending coroutine. Calls on one `NetconfClient` are
serialised (one RPC in flight per session), which is what a playbook step wants and what keeps
the replies' order obvious.

Replies are deframed here (`Deframer`, RFC 6242 end-of-message and chunked framing) and refused
above `max_reply_bytes` (the device's inventory setting `netconf.max_reply_bytes`, 16 MiB unless
set): a reply that never ends fails with `NetconfReplyError` once it is that large, or with a
timeout before that, and never grows memory without bound. What a reply says is read by
ncclient's reply model (`RPCReply`, `GetReply`, `RPCError`: RFC 6241's <ok/>, <data> and
<rpc-error> with its tag, type, severity, path, message and info); <rpc-error>s of severity
"error" fail the call with `NetconfRpcError` (the outcome is known: not applied).

Bounds. Every call is bounded by its timeout, the request's write included (a peer that stops
reading holds the write until then). A call that times out, or is cancelled, had an unknown
outcome and leaves the session in an unknown state: the session is closed, and every later call
on it fails with `NetconfSessionError`. A reply that is not XML fails its call with
`NetconfReplyError` and the session stays usable (the framing held); broken framing, a reply
too large, or a reply to another request (its message-id) closes it.

Unreachable. A connect error carries `unreachable=True` exactly when the device never answered
at the SSH level: TCP refused, reset, timed out or unroutable, or the connection ended (or the
whole establishment timed out) before the server sent its SSH banner. Once a banner came, every
failure (host key, authentication, no NETCONF hello behind a running sshd) is unreachable=False.

Security: the server's SSH host key must equal the device's pinned `host_key` (no pinned key: no
session). Credentials are resolved from `SecretRef`s at connect time, handed to asyncssh (a
private key is imported from memory, never written to a file) and not kept. No SSH agent, no
~/.ssh keys, no ~/.ssh/config.

asyncssh and ncclient errors never leave this module: they become `baton.adapters.errors.
Netconf*Error`.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import re
import time
from collections.abc import AsyncIterator, Callable
from types import TracebackType
from typing import Any, Self

import asyncssh
import structlog
from lxml import etree  # type: ignore[import-untyped]  # no lxml-stubs in the env
from ncclient.operations.retrieve import GetReply
from ncclient.operations.rpc import RPCError, RPCReply
from ncclient.xml_ import to_ele

from baton.adapters.connecting import Connecting
from baton.adapters.errors import (
    NetconfConnectError,
    NetconfError,
    NetconfHostKeyError,
    NetconfReplyError,
    NetconfRpcError,
    NetconfSessionError,
    NetconfTimeoutError,
)
from baton.adapters.ssh import PinnedKeyClient, open_connection
from baton.core.health import Observation
from baton.core.model import NETCONF_MAX_REPLY_BYTES, Device, Protocol, SecretRef

log = structlog.get_logger(__name__)

Resolve = Callable[[SecretRef], str]

BASE_1_0 = "urn:ietf:params:netconf:base:1.0"
BASE_1_1 = "urn:ietf:params:netconf:base:1.1"
CONFIRMED_COMMIT = "urn:ietf:params:netconf:capability:confirmed-commit"
CONFIRMED_COMMIT_1_1 = "urn:ietf:params:netconf:capability:confirmed-commit:1.1"
CANDIDATE = "urn:ietf:params:netconf:capability:candidate:1.0"
# An empty subtree filter selects nothing (RFC 6241 §6.4.2): the cheapest RPC every server
# answers, used by the probe when the device has no probe_filter.
EMPTY_FILTER = '<filter xmlns="urn:ietf:params:xml:ns:netconf:base:1.0" type="subtree"/>'
_NC = "urn:ietf:params:xml:ns:netconf:base:1.0"
_NOTIFICATION = "{urn:ietf:params:xml:ns:netconf:notification:1.0}notification"
HELLO = (
    f'<?xml version="1.0" encoding="UTF-8"?><hello xmlns="{_NC}"><capabilities>'
    f"<capability>{BASE_1_0}</capability><capability>{BASE_1_1}</capability>"
    "</capabilities></hello>"
).encode()
# yuma123 netconfd 2.13 reads a request that reaches it together with the client's hello with
# the hello's end-of-message framing, and then waits for more data: the first RPC hangs until
# the next one arrives (seen ~1 session in 50 on loopback; the RPC was carried out, its reply
# held back). So the first request waits this long after the hellos.
_FIRST_RPC_DELAY_S = 0.05
_CLOSE_TIMEOUT_S = 2.0
# Replies above this many bytes are refused (NetconfReplyError) and their session closed, unless
# the device's `netconf.max_reply_bytes` says otherwise. The largest reply Baton reads (a device's
# running config) is far below it; it bounds what a broken or hostile server can make Baton hold
# per session. `NetconfClient.connect(max_reply_bytes=)` and `NetconfProbe(max_reply_bytes=)`
# override the device's setting (tests).
MAX_REPLY_BYTES = NETCONF_MAX_REPLY_BYTES
# Strict, no entity expansion, no network, no huge trees (ncclient's own limits, so its reply
# model accepts all this accepts).
_PARSER = etree.XMLParser(recover=False, resolve_entities=False, no_network=True)


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


class _Closed(Exception):
    """The session ended (the server closed it, or the connection broke)."""


class _Channel(asyncssh.SSHClientSession[bytes]):
    """The netconf subsystem's channel: what the server sends, deframed (bounded), and the
    write side's flow control (a peer that stops reading pauses our writes)."""

    def __init__(self, max_reply_bytes: int) -> None:
        self.deframer = Deframer(max_reply_bytes)
        self.chunked = False  # base:1.1 framing, once both hellos said so
        self.messages: collections.deque[bytes] = collections.deque()
        self.failure: Exception | None = None  # UnreadableReply or _Closed: nothing more comes
        self._arrived = asyncio.Event()
        self._writable = asyncio.Event()
        self._writable.set()
        self._chan: asyncssh.SSHClientChannel[bytes] | None = None

    def connection_made(self, chan: Any) -> None:
        self._chan = chan

    def data_received(self, data: bytes, datatype: asyncssh.DataType) -> None:
        if self.failure is not None:
            return
        try:
            self.messages.extend(self.deframer.feed(data, chunked=self.chunked))
        except UnreadableReply as exc:
            self._fail(UnreadableReply(f"{exc}; session closed"))
            self.close()
        self._arrived.set()

    def eof_received(self) -> bool:
        self._fail(_Closed("the server ended the session"))
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(_Closed(f"session closed: {exc}" if exc else "session closed"))
        self._writable.set()  # a write waiting for the window fails now (the session is gone)

    def pause_writing(self) -> None:
        self._writable.clear()

    def resume_writing(self) -> None:
        self._writable.set()

    def _fail(self, exc: Exception) -> None:
        if self.failure is None:
            self.failure = exc
        self._arrived.set()

    @property
    def open(self) -> bool:
        return self.failure is None and self._chan is not None

    def close(self) -> None:
        if self._chan is not None:
            self._chan.close()

    async def send(self, data: bytes) -> None:
        """Write one framed message; returns once the SSH window took it."""
        if self.failure is not None or self._chan is None:
            raise self.failure or _Closed("session closed")
        self._chan.write(data)
        await self._writable.wait()
        if self.failure is not None:
            raise self.failure

    async def message(self) -> bytes:
        """The next whole message from the server."""
        while not self.messages:
            if self.failure is not None:
                raise self.failure
            self._arrived.clear()
            await self._arrived.wait()
        return self.messages.popleft()

    def frame(self, message: bytes) -> bytes:
        if self.chunked:
            return b"\n#%d\n%s\n##\n" % (len(message), message)
        return message + EOM


def _parse(message: bytes) -> Any:
    """A message as XML, or UnreadableReply saying why not."""
    message = message.strip()  # whitespace around a message (after a base:1.0 EOM) is noise
    try:
        message.decode("utf-8")
    except UnicodeDecodeError:
        raise UnreadableReply("reply is not UTF-8 text") from None
    try:
        return etree.fromstring(message, parser=_PARSER)
    except etree.XMLSyntaxError as exc:
        detail = str(exc).splitlines()[0] if str(exc) else "unparsable"
        raise UnreadableReply(f"reply is not well-formed XML: {detail}") from None


def _element(xml: str, what: str) -> Any:
    """Caller-given XML (a filter, a config, an RPC), parsed before anything is sent."""
    try:
        return etree.fromstring(xml.strip().encode(), parser=_PARSER)
    except etree.XMLSyntaxError as exc:
        raise ValueError(f"invalid XML in the {what}: {exc}") from None


def _nc(tag: str, *children: Any, text: str | None = None) -> Any:
    element = etree.Element(f"{{{_NC}}}{tag}", nsmap={None: _NC})
    element.text = text
    element.extend(children)
    return element


def _datastore(tag: str, name: str) -> Any:
    return _nc(tag, _nc(name))


def _filter(filter_xml: str | None) -> list[Any]:
    """A <filter>: a whole <filter> element as given, else subtree content."""
    if filter_xml is None:
        return []
    if filter_xml.lstrip().startswith("<filter"):
        return [_element(filter_xml, "filter")]
    wrapped = _nc("filter")
    wrapped.set("type", "subtree")
    wrapped.append(_element(filter_xml, "filter"))
    return [wrapped]


def _hello_error(device: Device, exc: Exception) -> NetconfConnectError:
    where = _endpoint(device)
    if isinstance(exc, UnreadableReply):
        return NetconfConnectError(device.id, f"unreadable NETCONF hello from {where}: {exc}")
    reason = exc.reason if isinstance(exc, asyncssh.Error) else str(exc)
    # sshd answered but the netconf subsystem did not say hello (server down behind sshd,
    # subsystem refused, access denied): the SSH part worked, NETCONF did not.
    return NetconfConnectError(device.id, f"no NETCONF hello from {where}: {reason or type(exc).__name__}")


def _rpc_error_of(reply: RPCReply) -> RPCError | None:
    """What ncclient raises for the reply (RaiseMode.ERRORS): its <rpc-error>s when the first
    has severity error, as one RPCError (several as its errlist)."""
    errors = reply.errors
    if not errors or errors[0].severity != "error":
        return None
    return errors[0] if len(errors) == 1 else RPCError(to_ele(reply.xml), errs=errors)


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
        self,
        device: Device,
        conn: asyncssh.SSHClientConnection,
        channel: _Channel,
        capabilities: frozenset[str],
        session_id: str | None,
        *,
        timeout_s: float,
    ) -> None:
        """Use `NetconfClient.connect`; this wraps a session whose hellos were exchanged."""
        self.device = device
        self.timeout_s = timeout_s
        self._conn = conn
        self._channel = channel
        self._capabilities = capabilities
        self.session_id = session_id
        self._lock = asyncio.Lock()
        self._next_id = 0
        self._broken: str | None = None  # why the session was closed under its calls
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
        max_reply_bytes: int | None = None,
    ) -> Connecting[NetconfClient]:
        """Open a session: `nc = await NetconfClient.connect(...)` or `async with ... as nc`.

        timeout_s bounds the whole establishment (TCP, SSH, auth, hello) and is the default RPC
        timeout of the session; None means the device's `netconf.timeout_s`. Replies above
        max_reply_bytes (None: the device's `netconf.max_reply_bytes`) are refused with
        `NetconfReplyError` and the session is closed.
        """
        bound = device.netconf.max_reply_bytes if max_reply_bytes is None else max_reply_bytes
        if bound < 1:
            raise ValueError(f"max_reply_bytes must be >= 1, got {bound}")

        async def opened() -> NetconfClient:
            return await cls._open(device, resolve, timeout_s, source_address, bound)

        return Connecting(opened)

    @classmethod
    async def _open(
        cls,
        device: Device,
        resolve: Resolve,
        timeout_s: float | None,
        source_address: str | None,
        max_reply_bytes: int,
    ) -> NetconfClient:
        timeout = device.netconf.timeout_s if timeout_s is None else timeout_s
        started = time.monotonic()
        client = PinnedKeyClient()
        conn: asyncssh.SSHClientConnection | None = None
        try:
            async with asyncio.timeout(timeout):
                conn = await open_connection(
                    device,
                    device.netconf,
                    resolve,
                    timeout,
                    source_address,
                    NetconfConnectError,
                    NetconfHostKeyError,
                    "netconf",
                    client,
                )
                channel, capabilities, session_id = await cls._hello(device, conn, max_reply_bytes)
                await asyncio.sleep(_FIRST_RPC_DELAY_S)
        except TimeoutError:
            if conn is not None:
                conn.abort()
            raise NetconfConnectError(
                device.id,
                f"no NETCONF session with {_endpoint(device)} within {timeout:g} s",
                unreachable=not client.answered,
            ) from None
        except BaseException:
            if conn is not None:
                conn.abort()
            raise
        log.debug(
            "netconf.connected",
            device=device.id,
            session_id=session_id,
            source_address=source_address,
            connect_s=round(time.monotonic() - started, 4),
        )
        return cls(device, conn, channel, capabilities, session_id, timeout_s=timeout)

    @staticmethod
    async def _hello(
        device: Device, conn: asyncssh.SSHClientConnection, max_reply_bytes: int
    ) -> tuple[_Channel, frozenset[str], str | None]:
        """The netconf subsystem, and the hellos exchanged: the channel, the server's
        capabilities and session id."""
        try:
            channel = _Channel(max_reply_bytes)
            await conn.create_session(lambda: channel, subsystem="netconf", encoding=None)
            await channel.send(channel.frame(HELLO))
            root = _parse(await channel.message())
        except (asyncssh.Error, OSError, _Closed, UnreadableReply) as exc:
            raise _hello_error(device, exc) from None
        if etree.QName(root).localname != "hello":
            raise _hello_error(device, UnreadableReply(f"<{etree.QName(root).localname}> instead of <hello>"))
        ns = etree.QName(root).namespace
        tag = (lambda name: f"{{{ns}}}{name}") if ns else (lambda name: name)
        capabilities = frozenset((c.text or "").strip() for c in root.iter(tag("capability")))
        if BASE_1_0 not in capabilities and BASE_1_1 not in capabilities:
            raise _hello_error(device, UnreadableReply("the server's hello names no NETCONF base capability"))
        channel.chunked = BASE_1_1 in capabilities
        session_id = root.findtext(tag("session-id"))
        return channel, capabilities, session_id.strip() if session_id else None

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self, *, polite: bool = True) -> None:
        """Send <close-session> (bounded; skipped when not polite) and drop the connection, so
        the server frees the session (and its locks) now. Safe to call twice."""
        if self._closed:
            return
        polite = polite and self.is_connected  # no RPC to a dead session
        if polite:
            with contextlib.suppress(NetconfError, TimeoutError):
                await asyncio.wait_for(
                    self._rpc("close-session", _nc("close-session"), _CLOSE_TIMEOUT_S), _CLOSE_TIMEOUT_S
                )
        self._closed = True
        self._conn.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._conn.wait_closed(), _CLOSE_TIMEOUT_S)
        log.debug("netconf.closed", device=self.device.id, session_id=self.session_id)

    @property
    def is_connected(self) -> bool:
        return not self._closed and self._broken is None and self._channel.open

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

    @staticmethod
    def _stores(name: str) -> tuple[str, ...]:
        return (":candidate",) if name == "candidate" else (":startup",) if name == "startup" else ()

    def _need(self, operation: str, *capabilities: str) -> None:
        """As ncclient refuses an operation the server did not announce, before sending it."""
        for capability in capabilities:
            if not self.has_capability(capability):
                raise NetconfError(self.device.id, operation, f"server lacks capability {capability}")

    def _break(self, why: str) -> None:
        """The session's state is unknown (a call timed out, was cancelled, or its reply was
        not ours): closed, for every later call to fail at once."""
        if self._broken is None:
            self._broken = why
            log.warning("netconf.session_closed", device=self.device.id, session_id=self.session_id, why=why)
        self._conn.abort()

    async def _rpc(
        self, operation: str, request: Any, rpc_timeout_s: float | None, reply_cls: type[RPCReply] = RPCReply
    ) -> RPCReply:
        """Send `request` (the operation element) in an <rpc>, wait for its <rpc-reply>."""
        if self._closed:
            raise NetconfSessionError(self.device.id, operation, "session is closed")
        timeout = self.timeout_s if rpc_timeout_s is None else rpc_timeout_s
        async with self._lock:
            if self._broken is not None:
                raise NetconfSessionError(self.device.id, operation, f"session closed: {self._broken}")
            self._next_id += 1
            message_id = str(self._next_id)
            rpc = _nc("rpc", request)
            rpc.set("message-id", message_id)
            data = etree.tostring(rpc, xml_declaration=True, encoding="UTF-8")
            try:
                async with asyncio.timeout(timeout):
                    await self._channel.send(self._channel.frame(data))
                    raw = await self._reply(message_id)
            except TimeoutError:
                self._break(f"{operation}: no reply within {timeout:g} s")
                raise NetconfTimeoutError(self.device.id, operation, timeout) from None
            except _Closed as exc:
                self._break(str(exc))
                raise NetconfSessionError(self.device.id, operation, f"session broken: {exc}") from None
            except _Unusable as exc:
                self._break(str(exc))
                raise NetconfReplyError(self.device.id, operation, str(exc)) from None
            except UnreadableReply as exc:
                if not self._channel.open:
                    self._break(str(exc))  # the framing broke: the stream cannot be trusted
                raise NetconfReplyError(self.device.id, operation, str(exc)) from None
            except BaseException:
                self._break(f"{operation} cancelled")  # half-sent, or its reply still to come
                raise
        reply = reply_cls(raw)
        try:
            reply.parse()
        except Exception as exc:
            raise NetconfReplyError(self.device.id, operation, f"unusable reply: {exc}") from None
        error = _rpc_error_of(reply)
        if error is not None:
            raise _rpc_error(self.device.id, operation, error)
        return reply

    async def _reply(self, message_id: str) -> str:
        """The <rpc-reply> to `message_id`, parsed, and as text (notifications skipped)."""
        while True:
            message = await self._channel.message()
            root = _parse(message)
            if root.tag == _NOTIFICATION:
                continue
            if root.tag != f"{{{_NC}}}rpc-reply":
                raise UnreadableReply(f"unexpected message <{etree.QName(root).localname}>")
            theirs = root.get("message-id")
            if theirs is None:
                raise _Unusable("unusable reply: <rpc-reply> without a message-id")
            if theirs != message_id:
                raise _Unusable(f"unusable reply: message-id {theirs!r}, not {message_id!r} of the request")
            return message.strip().decode("utf-8")

    async def _call(
        self, operation: str, request: Callable[[], Any], rpc_timeout_s: float | None
    ) -> RPCReply:
        try:
            element = request()
        except ValueError as exc:
            raise NetconfError(self.device.id, operation, str(exc)) from None
        return await self._rpc(operation, element, rpc_timeout_s)

    async def _data(self, operation: str, request: Callable[[], Any], rpc_timeout_s: float | None) -> str:
        try:
            element = request()
        except ValueError as exc:
            raise NetconfError(self.device.id, operation, str(exc)) from None
        reply = await self._rpc(operation, element, rpc_timeout_s, GetReply)
        assert isinstance(reply, GetReply)
        if reply.data_ele is None:
            raise NetconfReplyError(self.device.id, operation, "reply without <data>")
        return str(reply.data_xml)

    async def get(self, filter_xml: str | None = None, *, rpc_timeout_s: float | None = None) -> str:
        """<get> (state and config); filter_xml is subtree content or a whole <filter> element.
        Returns the <data> element as XML text."""
        return await self._data("get", lambda: _nc("get", *_filter(filter_xml)), rpc_timeout_s)

    async def get_config(
        self, source: str = "running", filter_xml: str | None = None, *, rpc_timeout_s: float | None = None
    ) -> str:
        """<get-config> of source; returns the <data> element as XML text."""
        self._need("get-config", *self._stores(source))
        return await self._data(
            "get-config",
            lambda: _nc("get-config", _datastore("source", source), *_filter(filter_xml)),
            rpc_timeout_s,
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

        def request() -> Any:
            config = _element(config_xml, "config")
            if etree.QName(config).localname != "config" or etree.QName(config).namespace not in (None, _NC):
                raise ValueError(f"edit-config needs a <config> element, got <{config.tag}>")
            if etree.QName(config).namespace is None:
                # The unqualified <config> of a playbook is the base namespace's (as ncclient does).
                config.tag = f"{{{_NC}}}config"
            options = [_nc("default-operation", text=default_operation)] if default_operation else []
            return _nc("edit-config", _datastore("target", target), *options, config)

        self._need("edit-config", *self._stores(target))
        await self._call("edit-config", request, rpc_timeout_s)

    async def lock(self, target: str = "candidate", *, rpc_timeout_s: float | None = None) -> None:
        self._need("lock", *self._stores(target))
        await self._call("lock", lambda: _nc("lock", _datastore("target", target)), rpc_timeout_s)

    async def unlock(self, target: str = "candidate", *, rpc_timeout_s: float | None = None) -> None:
        self._need("unlock", *self._stores(target))
        await self._call("unlock", lambda: _nc("unlock", _datastore("target", target)), rpc_timeout_s)

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
        self._need("discard-changes", ":candidate")
        await self._call("discard-changes", lambda: _nc("discard-changes"), rpc_timeout_s)

    async def validate(self, source: str = "candidate", *, rpc_timeout_s: float | None = None) -> None:
        self._need("validate", ":validate", *self._stores(source))
        await self._call("validate", lambda: _nc("validate", _datastore("source", source)), rpc_timeout_s)

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
        self._need("commit", ":candidate", *([":confirmed-commit"] if confirmed else []))

        def request() -> Any:
            parts = [_nc("confirmed")] if confirmed else []
            if timeout_s is not None:
                parts.append(_nc("confirm-timeout", text=str(int(timeout_s))))
            if persist is not None:
                parts.append(_nc("persist", text=persist))
            if persist_id is not None:
                parts.append(_nc("persist-id", text=persist_id))
            return _nc("commit", *parts)

        await self._call("commit", request, rpc_timeout_s)

    async def cancel_commit(
        self, persist_id: str | None = None, *, rpc_timeout_s: float | None = None
    ) -> None:
        """<cancel-commit>: roll back an ongoing confirmed commit now."""
        self._need("cancel-commit", ":candidate", ":confirmed-commit")
        parts = [] if persist_id is None else [_nc("persist-id", text=persist_id)]
        await self._call("cancel-commit", lambda: _nc("cancel-commit", *parts), rpc_timeout_s)

    async def dispatch(self, rpc_xml: str, *, rpc_timeout_s: float | None = None) -> str:
        """Any other RPC: rpc_xml is the operation element (without <rpc>). Returns the reply XML."""
        reply = await self._call("dispatch", lambda: _element(rpc_xml, "rpc"), rpc_timeout_s)
        return str(reply.xml)


class _Unusable(UnreadableReply):
    """A reply that is not to the request (its message-id): the stream cannot be trusted."""


# --- the health probe --------------------------------------------------------------------------


class NetconfProbe:
    """Health probe of one device over NETCONF: a session and a <get> of the probe filter.

    One session is kept open between probes (re-established on any failure): a <get> on an open
    session takes ~12 ms where connect + get takes ~280 ms, and a fresh session per poll means an
    SSH login (sshd fork, subsystem, AAA accounting record) on the device every poll interval.
    The price is the idle session on our side (a channel on the event loop; nothing wakes up
    until the server sends) against the CPU of a fresh connect.

    A reused session that turns out broken (the server restarted since the last probe) is
    re-established once within the same probe, so a device that is back is not reported down
    for one interval; a timeout is not retried.

    The latency is the time the probe took, including the connect when there was one.
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
        max_reply_bytes: int | None = None,
    ) -> None:
        self.device = device
        self.timeout_s = device.netconf.timeout_s if timeout_s is None else timeout_s
        self._resolve = resolve
        self._source_address = source_address
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
