"""One lab device's SSH server: the `netconf` subsystem (RFC 6241/6242) and a vendor-like CLI.

Theory of operation. `start_device_server` opens one asyncssh listener per device. Every new TCP
connection is checked against the device's faults and its running management ACL (the ACL is
data in the device's own datastore, so a handover that commits another office's prefix moves who
may connect). A `netconf` subsystem channel becomes a `_NetconfSession`: hello exchange, then one
RPC at a time, framed end-of-message (base:1.0) or chunked (base:1.1 when both sides say so). A
shell or exec channel goes to `baton.lab.ssh_cli`, which edits the same datastore.

The confirmed-commit timer is the only background work: one `loop.call_later` per device with a
pending confirmed commit, re-armed after every change. Nothing polls and no thread is started, so
a thousand devices in one process cost a listening socket each plus whatever sessions are open.
"""

from __future__ import annotations

import asyncio
import functools
import hmac
import itertools
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import asyncssh
import structlog
from lxml import etree  # type: ignore[import-untyped]  # no lxml-stubs in the env

from baton.lab import ssh_cli
from baton.lab.datastore import (
    IF_NS,
    LAB_MODULE,
    LAB_NS,
    LAB_REVISION,
    NC_NS,
    Element,
    RpcError,
    Target,
    parse_xml,
)
from baton.lab.device import LabDevice

log = structlog.get_logger(__name__)

BASE_10 = "urn:ietf:params:netconf:base:1.0"
BASE_11 = "urn:ietf:params:netconf:base:1.1"
CAPABILITIES: tuple[str, ...] = (
    BASE_10,
    BASE_11,
    "urn:ietf:params:netconf:capability:candidate:1.0",
    "urn:ietf:params:netconf:capability:confirmed-commit:1.0",
    "urn:ietf:params:netconf:capability:confirmed-commit:1.1",
    "urn:ietf:params:netconf:capability:rollback-on-error:1.0",
    "urn:ietf:params:netconf:capability:validate:1.1",
    f"{LAB_NS}?module={LAB_MODULE}&revision={LAB_REVISION}",
    f"{IF_NS}?module=ietf-interfaces&revision=2014-05-08",
    "urn:ietf:params:xml:ns:yang:ietf-netconf-acm?module=ietf-netconf-acm&revision=2012-02-22",
)

EOM = b"]]>]]>"
MAX_MESSAGE_BYTES = 4 * 1024 * 1024  # a lab device refuses anything bigger than any real edit
_CHUNK_HEADER = re.compile(rb"\n#([1-9][0-9]{0,9})\n")


class FramingError(Exception):
    """The peer broke RFC 6242 framing; the session cannot be resynchronised and is closed."""


class FrameReader:
    """Sans-I/O RFC 6242 deframer: feed bytes as they arrive, get whole messages back."""

    def __init__(self, max_message_bytes: int = MAX_MESSAGE_BYTES) -> None:
        self.chunked = False
        self._buf = bytearray()
        self._message = bytearray()
        self._max = max_message_bytes

    def feed(self, data: bytes) -> list[bytes]:
        self._buf += data
        out: list[bytes] = []
        while True:
            message = self._next_chunked() if self.chunked else self._next_eom()
            if message is None:
                break
            out.append(message)
        if len(self._buf) + len(self._message) > self._max:
            raise FramingError("message too large")
        return out

    def _next_eom(self) -> bytes | None:
        end = self._buf.find(EOM)
        if end < 0:
            return None
        message = bytes(self._buf[:end])
        del self._buf[: end + len(EOM)]
        return message

    def _next_chunked(self) -> bytes | None:
        while True:
            if len(self._buf) < 4:
                if self._buf and not b"\n##\n".startswith(bytes(self._buf[:2])):
                    raise FramingError("bad chunk header")
                return None
            if self._buf[:4] == b"\n##\n":
                del self._buf[:4]
                if not self._message:
                    raise FramingError("end of chunks without a chunk")
                message = bytes(self._message)
                self._message.clear()
                return message
            match = _CHUNK_HEADER.match(self._buf)
            if match is None:
                if self._buf[:2] != b"\n#" or len(self._buf) > 13 or self._buf.find(b"\n", 1) > 0:
                    raise FramingError("bad chunk header")
                return None
            size = int(match.group(1))
            if size > 4294967295:
                raise FramingError("chunk size out of range")
            start = match.end()
            if len(self._buf) < start + size:
                return None
            self._message += self._buf[start : start + size]
            del self._buf[: start + size]


def garble(reply: bytes) -> bytes:
    """What the garbage-reply fault sends instead of `reply`: its first half (the start tag, with
    the message-id, survives when it fits), then bytes no XML parser accepts."""
    return reply[: max(len(reply) // 2, 1)] + b"<\x00<<&garbage;</"


def frame(message: bytes, *, chunked: bool) -> bytes:
    if chunked:
        return b"\n#%d\n%s\n##\n" % (len(message), message)
    return message + EOM


# --- server handle -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class UserAuth:
    """How one user may log in: a password and/or OpenSSH public keys ("ssh-ed25519 AAAA...")."""

    password: str | None = None
    authorized_keys: tuple[str, ...] = ()

    def __repr__(self) -> str:  # never show the password
        return f"UserAuth(password={'***' if self.password else None}, keys={len(self.authorized_keys)})"


@dataclass(slots=True)
class SessionInfo:
    id: int
    kind: Literal["netconf", "cli"]
    username: str
    peer: str
    close: Callable[[], None] = field(repr=False)


@functools.lru_cache(maxsize=1024)
def _public_blob(line: str) -> bytes:
    """The wire form of an authorized key (cached: the lab's devices share their users' keys)."""
    return bytes(asyncssh.import_public_key(line).public_data)


class DeviceServer:
    """A running device server: its port, open sessions, and the confirmed-commit timer."""

    def __init__(self, device: LabDevice, users: dict[str, UserAuth]) -> None:
        self.device = device
        self.port = 0
        self.sessions: dict[int, SessionInfo] = {}
        self._users = users
        self._keys = {
            name: frozenset(_public_blob(k) for k in u.authorized_keys) for name, u in users.items()
        }
        self._ids = itertools.count(1)
        self._timer: asyncio.TimerHandle | None = None
        self._acceptor: asyncssh.SSHAcceptor | None = None
        self._connections: set[asyncssh.SSHServerConnection] = set()

    # --- sessions and the confirm timer

    def open_session(
        self, kind: Literal["netconf", "cli"], username: str, peer: str, close: Callable[[], None]
    ) -> SessionInfo:
        info = SessionInfo(next(self._ids), kind, username, peer, close)
        self.sessions[info.id] = info
        log.debug("lab.session_opened", device=self.device.id, session=info.id, kind=kind, peer=peer)
        return info

    def end_session(self, session_id: int) -> None:
        if self.sessions.pop(session_id, None) is None:
            return
        if self.device.datastore.close_session(session_id):
            log.info(
                "lab.netconf.confirmed_commit_rolled_back", device=self.device.id, reason="session closed"
            )
        self.datastore_changed()
        log.debug("lab.session_closed", device=self.device.id, session=session_id)

    def datastore_changed(self) -> None:
        """Re-arm the confirmed-commit timer; call after anything that may commit or roll back."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        deadline = self.device.datastore.next_deadline()
        if deadline is not None:
            delay = max(0.0, deadline - self.device.datastore.now())
            self._timer = asyncio.get_running_loop().call_later(delay, self._expire)

    def _expire(self) -> None:
        self._timer = None
        if self.device.datastore.expire():
            log.info("lab.netconf.confirmed_commit_rolled_back", device=self.device.id, reason="timeout")
        self.datastore_changed()

    # --- authentication

    def check_password(self, username: str, password: str) -> bool:
        user = self._users.get(username)
        if user is None or user.password is None:
            return False
        return hmac.compare_digest(user.password.encode(), password.encode())

    def check_key(self, username: str, blob: bytes) -> bool:
        return blob in self._keys.get(username, frozenset())

    def admits(self, peer: str) -> str | None:
        """Why a connection from `peer` is refused, or None when it is admitted."""
        if not self.device.faults.reaches(peer):
            return "unreachable"
        if not self.device.mgmt.allows(peer):
            return "acl"
        return None

    async def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._acceptor is not None:
            self._acceptor.close()
            await self._acceptor.wait_closed()
            self._acceptor = None
        for conn in list(self._connections):
            conn.close()
        for conn in list(self._connections):
            await conn.wait_closed()


def _peer_ip(conn: asyncssh.SSHServerConnection) -> str:
    peer = conn.get_extra_info("peername")
    ip = str(peer[0]) if peer else ""
    return ip.removeprefix("::ffff:")


class _SSHServer(asyncssh.SSHServer):
    def __init__(self, server: DeviceServer) -> None:
        self._server = server
        self._conn: asyncssh.SSHServerConnection | None = None

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        self._conn = conn
        peer = _peer_ip(conn)
        refusal = self._server.admits(peer)
        if refusal is not None:
            log.info("lab.ssh.refused", device=self._server.device.id, peer=peer, reason=refusal)
            conn.abort()
            return
        self._server._connections.add(conn)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._conn is not None:
            self._server._connections.discard(self._conn)

    def begin_auth(self, username: str) -> bool:
        return True

    def password_auth_supported(self) -> bool:
        return True

    def validate_password(self, username: str, password: str) -> bool:
        return self._server.check_password(username, password)

    def public_key_auth_supported(self) -> bool:
        return True

    def validate_public_key(self, username: str, key: asyncssh.SSHKey) -> bool:
        return self._server.check_key(username, bytes(key.public_data))


async def start_device_server(
    device: LabDevice,
    *,
    host: str,
    port: int,
    host_key: asyncssh.SSHKey,
    users: dict[str, UserAuth],
) -> DeviceServer:
    """Serve `device` over SSH on host:port (0: any free port, read `.port` back)."""
    server = DeviceServer(device, users)

    async def on_process(process: asyncssh.SSHServerProcess[bytes]) -> None:
        conn = process.get_extra_info("connection")
        username = str(process.get_extra_info("username") or "")
        peer = _peer_ip(conn)
        try:
            if process.subsystem == "netconf":
                await _NetconfSession(server, process, username, peer).run()
            elif process.subsystem:
                process.stderr.write(f"unknown subsystem {process.subsystem}\n".encode())
                process.exit(1)
            else:
                await ssh_cli.serve(server, process, username, peer)
        except (asyncssh.BreakReceived, asyncssh.TerminalSizeChanged, BrokenPipeError, ConnectionError):
            process.close()

    acceptor = await asyncssh.create_server(
        lambda: _SSHServer(server),
        host,
        port,
        server_host_keys=[host_key],
        process_factory=on_process,
        encoding=None,
        line_editor=False,
        allow_scp=False,
        agent_forwarding=False,
        x11_forwarding=False,
        keepalive_interval=0,
    )
    server._acceptor = acceptor
    server.port = acceptor.get_port()
    log.debug("lab.server_started", device=device.id, host=host, port=server.port)
    return server


# --- NETCONF session -----------------------------------------------------------------------


def _q(name: str) -> str:
    return f"{{{NC_NS}}}{name}"


def _param(op: Element, name: str) -> Element | None:
    """An operation's parameter; clients such as ncclient pass some (`<config>`) unqualified."""
    el = op.find(_q(name))
    return op.find(name) if el is None else el


def _hello(session_id: int, confirmed_commit: bool = True) -> bytes:
    hello = etree.Element(_q("hello"), nsmap={None: NC_NS})
    caps = etree.SubElement(hello, _q("capabilities"))
    for cap in CAPABILITIES:
        if not confirmed_commit and ":confirmed-commit" in cap:
            continue
        etree.SubElement(caps, _q("capability")).text = cap
    etree.SubElement(hello, _q("session-id")).text = str(session_id)
    return b'<?xml version="1.0" encoding="UTF-8"?>' + bytes(etree.tostring(hello))


def _error_element(err: RpcError) -> Element:
    el = etree.Element(_q("rpc-error"))
    etree.SubElement(el, _q("error-type")).text = err.error_type
    etree.SubElement(el, _q("error-tag")).text = err.tag
    etree.SubElement(el, _q("error-severity")).text = "error"
    msg = etree.SubElement(el, _q("error-message"))
    msg.set("{http://www.w3.org/XML/1998/namespace}lang", "en")
    msg.text = err.message
    if err.info:
        info = etree.SubElement(el, _q("error-info"))
        for key, value in err.info.items():
            etree.SubElement(info, _q(key)).text = value
    return el


def _target(op: Element, name: str) -> Target:
    holder = _param(op, name)
    kids = [] if holder is None else [c for c in holder if isinstance(c.tag, str)]
    if len(kids) != 1:
        raise RpcError(
            "missing-element",
            f"<{name}> needs one datastore",
            error_type="protocol",
            info={"bad-element": name},
        )
    ds = etree.QName(kids[0]).localname
    if ds not in ("running", "candidate"):
        raise RpcError(
            "invalid-value",
            f"datastore {ds} is not supported",
            error_type="protocol",
            info={"bad-element": ds},
        )
    return "running" if ds == "running" else "candidate"


def _subtree_filter(op: Element) -> Element | None:
    flt = _param(op, "filter")
    if flt is None:
        return None
    if flt.get("type", "subtree") != "subtree":
        raise RpcError("operation-not-supported", "only subtree filters are supported", error_type="protocol")
    return flt


class _NetconfSession:
    def __init__(
        self, server: DeviceServer, process: asyncssh.SSHServerProcess[bytes], username: str, peer: str
    ) -> None:
        self._server = server
        self._process = process
        self._reader = FrameReader()
        self._closing = False
        self._info = server.open_session("netconf", username, peer, self._kill)

    def _kill(self) -> None:
        self._process.get_extra_info("connection").abort()

    async def run(self) -> None:
        device = self._server.device
        try:
            hello = _hello(self._info.id, self._server.device.confirmed_commit)
            self._process.stdout.write(frame(hello, chunked=False))
            hello_seen = False
            while not self._closing:
                data = await self._process.stdin.read(65536)
                if not data:
                    break
                messages = self._reader.feed(data)
                while messages and not self._closing:
                    message = messages.pop(0)
                    if not hello_seen:
                        hello_seen = True
                        if self._read_hello(message):
                            # what followed the hello sat unparsed in the EOM buffer: re-read it chunked
                            self._reader.chunked = True
                            messages = self._reader.feed(b"")
                        continue
                    faults = device.faults
                    if not faults.reaches(self._info.peer) or faults.drop_mid_rpc:
                        faults.drop_mid_rpc = False
                        log.info("lab.netconf.dropped", device=device.id, session=self._info.id)
                        self._kill()
                        return
                    operation, reply = await self._handle(message)
                    if faults.drop_after_commit and operation == "commit":
                        faults.drop_after_commit = False
                        self._fired("drop-after-commit", operation)
                        self._kill()
                        return
                    if faults.slow_s > 0:
                        await asyncio.sleep(faults.slow_s)
                    if faults.take("no_reply", operation):
                        self._fired("no-reply", operation)
                        continue
                    if faults.take("endless_reply", operation):
                        self._fired("endless-reply", operation)
                        await self._stream_forever(reply)
                        return
                    if faults.take("garbage_reply", operation):
                        self._fired("garbage-reply", operation)
                        reply = garble(reply)
                    self._process.stdout.write(frame(reply, chunked=self._reader.chunked))
            if self._closing:
                await self._process.stdout.drain()
                self._process.exit(0)
        except FramingError as exc:
            log.info("lab.netconf.bad_framing", device=device.id, session=self._info.id, error=str(exc))
            self._process.exit(1)
        finally:
            self._server.end_session(self._info.id)

    def _fired(self, fault: str, operation: str) -> None:
        log.info(
            "lab.netconf.fault_fired",
            device=self._server.device.id,
            session=self._info.id,
            fault=fault,
            operation=operation or "unparsable",
        )

    async def _stream_forever(self, reply: bytes) -> None:
        """The endless-reply fault: the reply's start tag, then filler for ever, framed but never
        ended, until the client (or the lab) closes the session or the device goes dark."""
        head = reply[: reply.index(b">") + 1] if b">" in reply else b"<rpc-reply>"
        filler = b"<filler/>" * 7000  # ~63 KB a write; drain() waits for the client to read
        chunked = self._reader.chunked
        data = head + filler
        try:
            while (
                self._server.device.faults.reaches(self._info.peer)
                and self._info.id in self._server.sessions
                and not self._process.is_closing()
            ):
                self._process.stdout.write(b"\n#%d\n%s" % (len(data), data) if chunked else data)
                await self._process.stdout.drain()
                # drain() does not yield while the window is open: let the loop see a close
                await asyncio.sleep(0)
                data = filler
        except (BrokenPipeError, ConnectionError, asyncssh.Error):
            pass  # the client went away: what it was waiting for
        self._kill()

    def _read_hello(self, message: bytes) -> bool:
        """Check the client's hello; True if both sides speak base:1.1 (chunked framing from now)."""
        try:
            hello = parse_xml(message)
        except RpcError:
            raise FramingError("malformed hello") from None
        if hello.tag != _q("hello") or hello.find(_q("session-id")) is not None:
            raise FramingError("expected a client hello")
        caps = {(c.text or "").strip() for c in hello.iterfind(f"{_q('capabilities')}/{_q('capability')}")}
        if BASE_10 not in caps and BASE_11 not in caps:
            raise FramingError("client hello without a base capability")
        return BASE_11 in caps

    async def _handle(self, message: bytes) -> tuple[str, bytes]:
        """Carry out one RPC: (its operation's name, "" when unreadable; the reply to send)."""
        reply = etree.Element(_q("rpc-reply"), nsmap={None: NC_NS})
        operation = ""
        try:
            rpc = parse_xml(message)
            reply.attrib.update(rpc.attrib)
            if rpc.tag != _q("rpc"):
                raise RpcError("malformed-message", "expected <rpc>", error_type="rpc")
            if rpc.get("message-id") is None:
                raise RpcError(
                    "missing-attribute",
                    "rpc has no message-id",
                    error_type="rpc",
                    info={"bad-attribute": "message-id", "bad-element": "rpc"},
                )
            ops = [c for c in rpc if isinstance(c.tag, str)]
            if len(ops) != 1:
                raise RpcError(
                    "malformed-message", "an <rpc> carries exactly one operation", error_type="rpc"
                )
            if etree.QName(ops[0]).namespace == NC_NS:
                operation = etree.QName(ops[0]).localname
            self._dispatch(ops[0], reply)
        except RpcError as err:
            for child in list(reply):
                reply.remove(child)
            reply.append(_error_element(err))
        return operation, bytes(etree.tostring(reply))

    def _dispatch(self, op: Element, reply: Element) -> None:
        ds = self._server.device.datastore
        sid = self._info.id
        name = etree.QName(op).localname
        if etree.QName(op).namespace != NC_NS:
            name = ""
        if name in ("get", "get-config"):
            if name == "get":
                nodes = ds.get(_interfaces_state(self._server.device), _subtree_filter(op))
            else:
                nodes = ds.get_config(_target(op, "source"), _subtree_filter(op))
            data = etree.SubElement(reply, _q("data"))
            for node in nodes:
                data.append(node)
            return
        if name == "edit-config":
            config = _param(op, "config")
            if config is None:
                raise RpcError(
                    "missing-element",
                    "edit-config needs <config>",
                    error_type="protocol",
                    info={"bad-element": "config"},
                )
            default_op = _opt_text(op, "default-operation") or "merge"
            ds.edit_config(_target(op, "target"), config, sid, default_operation=default_op)
        elif name == "lock":
            ds.lock(_target(op, "target"), sid)
        elif name == "unlock":
            ds.unlock(_target(op, "target"), sid)
        elif name == "discard-changes":
            ds.discard_changes()
        elif name == "validate":
            source = _param(op, "source")
            if source is not None and _param(source, "config") is None:
                ds.validate(_target(op, "source"))
        elif name == "commit":
            self._commit(op)
        elif name == "cancel-commit":
            ds.cancel_commit(sid, persist_id=_opt_text(op, "persist-id"))
            log.info("lab.netconf.commit_cancelled", device=self._server.device.id, session=sid)
            self._server.datastore_changed()
        elif name == "close-session":
            # release locks and undo a non-persist confirmed commit before the client hears ok
            self._closing = True
            self._server.end_session(self._info.id)
        elif name == "kill-session":
            self._kill_session(op)
        else:
            raise RpcError(
                "operation-not-supported",
                f"operation {etree.QName(op).localname} is not supported",
                error_type="protocol",
            )
        etree.SubElement(reply, _q("ok"))

    def _commit(self, op: Element) -> None:
        device = self._server.device
        if device.faults.refuse_commits:
            raise RpcError("operation-failed", "commit refused (lab fault)")
        confirmed = _param(op, "confirmed") is not None
        if confirmed and not device.confirmed_commit:
            raise RpcError(
                "operation-not-supported", "this device has no :confirmed-commit", error_type="protocol"
            )
        timeout_text = _opt_text(op, "confirm-timeout")
        try:
            timeout_s = int(timeout_text) if timeout_text is not None else 600
            if timeout_s < 1:
                raise ValueError(timeout_text)
        except ValueError:
            raise RpcError(
                "invalid-value",
                "confirm-timeout must be a positive integer",
                error_type="protocol",
                info={"bad-element": "confirm-timeout"},
            ) from None
        device.datastore.commit(
            self._info.id,
            confirmed=confirmed,
            timeout_s=timeout_s,
            persist=_opt_text(op, "persist"),
            persist_id=_opt_text(op, "persist-id"),
        )
        log.info("lab.netconf.committed", device=device.id, session=self._info.id, confirmed=confirmed)
        self._server.datastore_changed()

    def _kill_session(self, op: Element) -> None:
        text = _opt_text(op, "session-id")
        target = self._server.sessions.get(int(text)) if text and text.isdigit() else None
        if target is None or target.id == self._info.id:
            raise RpcError(
                "invalid-value",
                "no such other session",
                error_type="protocol",
                info={"bad-element": "session-id"},
            )
        target.close()
        self._server.end_session(target.id)


def _opt_text(op: Element, name: str) -> str | None:
    el = _param(op, name)
    return None if el is None else (el.text or "").strip()


def _interfaces_state(device: LabDevice) -> list[Element]:
    state = etree.Element(f"{{{IF_NS}}}interfaces-state", nsmap={None: IF_NS})
    for iface in device.interfaces:
        entry = etree.SubElement(state, f"{{{IF_NS}}}interface")
        etree.SubElement(entry, f"{{{IF_NS}}}name").text = iface.name
        etree.SubElement(entry, f"{{{IF_NS}}}oper-status").text = "up" if iface.oper_up else "down"
        etree.SubElement(entry, f"{{{IF_NS}}}if-index").text = str(iface.if_index)
    return [state]
