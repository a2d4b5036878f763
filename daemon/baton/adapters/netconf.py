"""NETCONF over SSH: an asyncio facade over ncclient, and the NETCONF health probe.

Theory of operation
-------------------
ncclient is blocking and runs one reader thread per session (here `_Session`, without ncclient's
TICK polling). Every call here runs the blocking ncclient call in a worker thread
(`asyncio.to_thread`) under `asyncio.wait_for`; ncclient's own RPC timeout is set to the same
value, so the worker normally gives up on its own and the asyncio timeout is only a backstop.
Calls on one `NetconfClient` are serialised (one RPC in flight per session), which is what a
playbook step wants and what keeps the replies' order obvious.

Worker threads come from the loop's default executor (min(32, cores + 4) threads). A daemon that
probes many devices at once should give the loop a larger default executor, or connects queue.

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
import os
import selectors
import socket
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Callable, Generator
from types import TracebackType
from typing import Any, Self, TypeVar

import ncclient.transport.session
import structlog
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
from ncclient.transport.parser import DefaultXMLParser, SAXFilterXMLNotFoundError
from ncclient.transport.session import END_DELIM, MSG_DELIM, NetconfBase
from ncclient.xml_ import XMLError

from baton.adapters.connecting import Connecting
from baton.adapters.errors import (
    NetconfConnectError,
    NetconfError,
    NetconfHostKeyError,
    NetconfRpcError,
    NetconfSessionError,
    NetconfTimeoutError,
)
from baton.adapters.hostkeys import HostKeyFormatError, PinnedKey, fingerprint, parse_pinned_key
from baton.core.health import Observation
from baton.core.model import Device, Protocol, SecretRef

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
_BACKSTOP_S = 1.0
_CLOSE_TIMEOUT_S = 2.0


def _endpoint(device: Device) -> str:
    host = f"[{device.address}]" if ":" in device.address else device.address
    return f"{host}:{device.netconf.port}"


class _ConnectParams:
    """What the blocking connect needs. Holds secrets: no repr, never logged, dropped after use."""

    __slots__ = ("key_text", "password", "source_address", "timeout_s", "username")

    def __init__(
        self,
        username: str,
        password: str | None,
        key_text: str | None,
        timeout_s: float,
        source_address: str | None,
    ) -> None:
        self.username = username
        self.password = password
        self.key_text = key_text
        self.timeout_s = timeout_s
        self.source_address = source_address

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
            device.id, f"TCP connect to {_endpoint(device)} timed out after {params.timeout_s:g} s"
        ) from None
    except OSError as exc:
        where = _endpoint(device) + (f" from {params.source_address}" if params.source_address else "")
        reason = exc.strerror or str(exc)
        raise NetconfConnectError(device.id, f"TCP connect to {where}: {reason.lower()}") from None


class _Session(nc_transport.SSHSession):  # type: ignore[misc]  # ncclient is untyped
    """ncclient's SSH session without its TICK polling (ncclient 0.7's `Session.run` loop).

    Upstream, `send` queues the request and the session thread sends it after its next
    `select(timeout=TICK)`: up to TICK of latency per RPC, and an idle session wakes up 1/TICK
    times a second (100/s at 0.01), each time taking the GIL. Here `send` frames and writes the
    request itself, in the calling thread (paramiko's `Channel.send` is thread-safe; a lock keeps
    two requests from interleaving), and the reader thread only wakes up for data, for the close,
    or every `_IDLE_WAKE_S`. Replies are parsed and dispatched exactly as upstream does.
    """

    parser: Any  # ncclient's SAX or DOM reply parser

    def __init__(self, device_handler: Any) -> None:
        super().__init__(device_handler)
        self._send_lock = threading.Lock()

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
            while data:
                try:
                    sent = channel.send(data)
                except OSError as exc:  # the channel closed under us: the session is gone
                    raise TransportError(f"session closed: {exc}") from None
                if sent <= 0:
                    raise SessionCloseError(self._buffer.getvalue(), data)
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
                    try:
                        self.parser.parse(data)
                    except SAXFilterXMLNotFoundError:
                        self.parser = DefaultXMLParser(self)
                        self.parser.parse(data)
                elif self._closing.is_set():
                    break  # end of session, expected
                else:
                    raise SessionCloseError(self._buffer.getvalue())
        except Exception as exc:
            self.logger.debug("Broke out of main loop, error=%r", exc)
            self._dispatch_error(exc)
            self.close()
        finally:
            selector.close()


def _blocking_connect(device: Device, pinned: PinnedKey, params: _ConnectParams) -> Any:
    """Open the SSH transport, verify the pinned host key, authenticate, exchange hellos.

    Returns an ncclient Manager. Built like `ncclient.manager.connect_ssh` does, but keeping the
    session at hand so a host key mismatch can report the key the server offered.
    """
    sock = _open_socket(device, params)
    handler = nc_manager.make_device_handler({"name": "default"})
    session = _Session(handler)
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
            raise _connect_error(device, pinned, params, exc) from None
        raise
    with contextlib.suppress(Exception):  # an optimisation only; the handshake is over
        session._transport.sock.settimeout(_TRANSPORT_IDLE_S)
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
    device: Device, pinned: PinnedKey, params: _ConnectParams, exc: Exception
) -> NetconfConnectError:
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
    if isinstance(exc, SSHError):
        return NetconfConnectError(device.id, f"SSH to {where} failed: {text}")
    if isinstance(exc, SessionError | SessionCloseError | TransportError):
        # sshd answered but the netconf subsystem did not say hello (server down behind sshd,
        # subsystem refused, access denied): the SSH part worked, NETCONF did not.
        return NetconfConnectError(device.id, f"no NETCONF hello from {where}: {text or type(exc).__name__}")
    if isinstance(exc, OSError):
        return NetconfConnectError(device.id, f"SSH to {where} failed: {exc.strerror or text}")
    return NetconfConnectError(device.id, f"{type(exc).__name__} while connecting to {where}: {text}")


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
    if isinstance(exc, XMLError):
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


class _Abandonable:
    """Closes a session whose connect finished after the caller stopped waiting for it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._abandoned = False
        self._result: Any = None

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
        if late is not None:
            _close_manager(late)


def _close_manager(mgr: Any, *, polite: bool = True) -> None:
    """<close-session> first when polite, so the server frees the session (and its locks) now;
    then drop the transport. Impolite is for sessions known broken: no RPC to wait on."""
    if polite:
        try:
            mgr.timeout = _CLOSE_TIMEOUT_S
            mgr.close_session()
        except Exception:  # the session is going away either way
            log.debug("netconf.close_session_failed", exc_info=True)
    with contextlib.suppress(Exception):
        session = mgr._session  # ncclient's Manager has no public accessor for its session
        if session.transport is not None and session.transport.is_active():
            session.close()


class NetconfClient:
    """One NETCONF session with one device.

        async with NetconfClient.connect(device, resolve=resolve, timeout_s=10) as nc:
            async with nc.locked("candidate"):
                await nc.edit_config("candidate", CONFIG)
                await nc.commit(confirmed=True, timeout_s=300)

    Every method raises a `NetconfError` subclass on failure: `NetconfRpcError` for <rpc-error>
    replies, `NetconfTimeoutError`, `NetconfSessionError` when the session broke.
    """

    def __init__(self, device: Device, mgr: Any, *, timeout_s: float) -> None:
        """Use `NetconfClient.connect`; this wraps an already open ncclient Manager."""
        self.device = device
        self.timeout_s = timeout_s
        self._mgr = mgr
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
    ) -> Connecting[NetconfClient]:
        """Open a session: `nc = await NetconfClient.connect(...)` or `async with ... as nc`.

        timeout_s bounds the whole establishment (TCP, SSH, auth, hello) and is the default RPC
        timeout of the session; None means the device's `netconf.timeout_s`.
        """

        async def opened() -> NetconfClient:
            return await cls._open(device, resolve, timeout_s, source_address)

        return Connecting(opened)

    @classmethod
    async def _open(
        cls, device: Device, resolve: Resolve, timeout_s: float | None, source_address: str | None
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
            )
        except Exception as exc:
            # The resolver's message names the reference (env/file), never the value.
            raise NetconfConnectError(device.id, f"cannot resolve credentials: {exc}") from None

        holder = _Abandonable()
        started = time.monotonic()
        try:
            mgr = await asyncio.wait_for(
                asyncio.to_thread(lambda: holder.deliver(_blocking_connect(device, pinned, params))),
                timeout + _BACKSTOP_S,
            )
        except TimeoutError:
            holder.abandon()
            raise NetconfConnectError(
                device.id, f"no NETCONF session with {_endpoint(device)} within {timeout:g} s"
            ) from None
        except asyncio.CancelledError:
            holder.abandon()
            raise
        client = cls(device, mgr, timeout_s=timeout)
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
        async with self._lock:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(
                    asyncio.to_thread(_close_manager, self._mgr, polite=polite), _CLOSE_TIMEOUT_S * 3
                )
        log.debug("netconf.closed", device=self.device.id, session_id=self.session_id)

    @property
    def is_connected(self) -> bool:
        return not self._closed and bool(self._mgr.connected)

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

        def blocking() -> T:
            mgr.timeout = timeout  # ncclient's per-RPC wait; calls are serialised by self._lock
            return fn(mgr)

        async with self._lock:
            try:
                return await asyncio.wait_for(asyncio.to_thread(blocking), timeout + _BACKSTOP_S)
            except TimeoutError:
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
    ) -> None:
        self.device = device
        self.timeout_s = device.netconf.timeout_s if timeout_s is None else timeout_s
        self._resolve = resolve
        self._source_address = source_address
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
                at, False, exc.cause if exc.operation == "connect" else str(exc), started
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
            self.device, resolve=self._resolve, timeout_s=self.timeout_s, source_address=self._source_address
        )
        await self._client.get(self._filter, rpc_timeout_s=self.timeout_s)

    def _observation(self, at: float, ok: bool, reason: str, started: float) -> Observation:
        latency = time.monotonic() - started
        if ok:
            log.debug("netconf.probe_ok", device=self.device.id, latency_s=round(latency, 4))
        else:
            log.info("netconf.probe_failed", device=self.device.id, reason=reason)
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
