"""SSH commands on devices (asyncssh), with the device's pinned host key.

Theory of operation
-------------------
`SshClient.connect` opens one SSH connection (awaitable, or an async context manager) on which
`run` executes commands one channel each; `run_command` is connect + run + close for a single
command. The only trusted host key is the device's pinned `host_key`, given to asyncssh as an
in-memory known_hosts for `[address]:port`; no pinned key means no connection. No SSH agent,
no ~/.ssh keys, no ~/.ssh/config: credentials come only from the inventory's `SecretRef`s.

Timeouts: `connect` bounds TCP + key exchange + authentication (asyncssh's connect_timeout and
login_timeout); `run` bounds the command (asyncssh's run() would wait forever); `close` is
bounded too. A command that overruns, or prints more than `max_output_bytes`, is sent SIGKILL
(OpenSSH 7.9+ honours channel "signal" requests) and its channel is closed, so it does not keep
running on the device after Baton gave up on it. Nothing is ever written to a command (stdin is
empty), so no write can block.

Unreachable: a connect error carries `unreachable=True` exactly when the server never sent its
SSH banner (TCP refused, reset or timed out, closed before the banner, a silent listener); never
for host key or authentication failures.

Commands may carry secrets once a playbook renders them, so errors and logs name only the
command's first word. asyncssh errors never leave this module: they become `Ssh*Error`s.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Protocol, Self

import asyncssh
import structlog

from baton.adapters.connecting import Connecting, is_no_answer
from baton.adapters.errors import (
    NetconfConnectError,
    NetconfHostKeyError,
    SshConnectError,
    SshError,
    SshHostKeyError,
    SshTimeoutError,
)
from baton.adapters.hostkeys import HostKeyFormatError, PinnedKey, known_hosts_entry, parse_pinned_key
from baton.core.model import Device, SecretRef

log = structlog.get_logger(__name__)

Resolve = Callable[[SecretRef], str]

_CLOSE_TIMEOUT_S = 2.0
# A command's output (stdout and stderr together) above this is refused and the command killed:
# playbook commands print a few lines; this bounds what a runaway one makes Baton hold.
# `SshClient.connect(max_output_bytes=)` overrides it.
MAX_OUTPUT_BYTES = 4 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class CommandResult:
    exit_status: int | None  # None when the command ended by a signal
    stdout: str
    stderr: str
    exit_signal: str | None = None  # "KILL", "TERM"... when it ended by a signal

    @property
    def ok(self) -> bool:
        return self.exit_status == 0


def _endpoint(device: Device, port: int | None = None) -> str:
    host = f"[{device.address}]" if ":" in device.address else device.address
    return f"{host}:{device.ssh.port if port is None else port}"


def _program(command: str) -> str:
    """The command's first word: what errors and logs may show of a command."""
    words = command.split(maxsplit=1)
    return words[0] if words else "<empty>"


class PinnedKeyClient(asyncssh.SSHClient):
    """Notes the key a server offered when it is not the pinned one (then refuses it), and
    whether the server ever answered (sent its SSH banner)."""

    def __init__(self) -> None:
        self.offered: str | None = None
        self._conn: asyncssh.SSHClientConnection | None = None

    def connection_made(self, conn: asyncssh.SSHClientConnection) -> None:
        self._conn = conn

    @property
    def answered(self) -> bool:
        return self._conn is not None and bool(self._conn.get_extra_info("server_version"))

    def validate_host_public_key(self, host: str, addr: str, port: int, key: asyncssh.SSHKey) -> bool:
        self.offered = str(key.get_fingerprint("sha256"))
        return False


class _Settings(Protocol):
    @property
    def port(self) -> int: ...
    @property
    def username(self) -> str | None: ...
    @property
    def password(self) -> SecretRef | None: ...
    @property
    def private_key(self) -> SecretRef | None: ...


ConnectErrorType = type[SshConnectError] | type[NetconfConnectError]
HostKeyErrorType = type[SshHostKeyError] | type[NetconfHostKeyError]


async def open_connection(
    device: Device,
    settings: _Settings,
    resolve: Resolve,
    timeout_s: float,
    source_address: str | None,
    connect_error: ConnectErrorType,
    host_key_error: HostKeyErrorType,
    protocol: str,
    client: PinnedKeyClient | None = None,
) -> asyncssh.SSHClientConnection:
    """An authenticated SSH connection to the device at `settings.port`, its host key the pinned
    one (for SSH commands, and for NETCONF's subsystem). Errors are `connect_error` or
    `host_key_error` (the adapter's own classes), naming `protocol`'s settings. `client` (a new
    one if None) says afterwards whether the server answered, also when the caller gave up."""
    pinned = _pinned_key(device, settings.port, host_key_error)
    if settings.username is None:
        raise connect_error(device.id, f"no {protocol} username in the inventory")
    if settings.password is None and settings.private_key is None:
        raise connect_error(device.id, f"no {protocol} password or private_key in the inventory")
    try:
        password = resolve(settings.password) if settings.password else None
        client_keys = (
            [asyncssh.import_private_key(resolve(settings.private_key))] if settings.private_key else None
        )
    except (asyncssh.KeyImportError, ValueError) as exc:
        raise connect_error(device.id, f"private key unusable: {type(exc).__name__}") from None
    except Exception as exc:
        # The resolver's message names the reference (env/file), never the value.
        raise connect_error(device.id, f"cannot resolve credentials: {exc}") from None

    client = PinnedKeyClient() if client is None else client
    started = time.monotonic()
    try:
        # connect_timeout covers TCP + handshake + auth; wait_for is the backstop for the rest.
        conn = await asyncio.wait_for(
            asyncssh.connect(
                device.address,
                settings.port,
                username=settings.username,
                password=password,
                client_keys=client_keys,
                known_hosts=asyncssh.import_known_hosts(
                    known_hosts_entry(device.address, settings.port, pinned)
                ),
                client_factory=lambda: client,
                local_addr=(source_address, 0) if source_address else (),
                agent_path=None,
                config=[],
                gss_host=None,
                connect_timeout=timeout_s,
                login_timeout=timeout_s,
            ),
            timeout_s + 1.0,
        )
    except Exception as exc:
        raise _connect_error(
            device,
            settings.port,
            pinned,
            settings.username,
            timeout_s,
            client.offered,
            exc,
            answered=client.answered,
            errors=(connect_error, host_key_error),
        ) from None
    log.debug(
        "ssh.connected",
        device=device.id,
        purpose=protocol,
        source_address=source_address,
        connect_s=round(time.monotonic() - started, 4),
    )
    return conn


class SshClient:
    """One SSH connection to one device; several commands may run on it, one channel each."""

    def __init__(
        self, device: Device, conn: Any, *, timeout_s: float, max_output_bytes: int = MAX_OUTPUT_BYTES
    ) -> None:
        """Use `SshClient.connect`; this wraps an open asyncssh connection."""
        self.device = device
        self.timeout_s = timeout_s
        self.max_output_bytes = max_output_bytes
        self._conn = conn
        self._closed = False

    def __repr__(self) -> str:
        return f"SshClient({self.device.id} at {_endpoint(self.device)}{', closed' if self._closed else ''})"

    @classmethod
    def connect(
        cls,
        device: Device,
        *,
        resolve: Resolve,
        timeout_s: float | None = None,
        source_address: str | None = None,
        max_output_bytes: int = MAX_OUTPUT_BYTES,
    ) -> Connecting[SshClient]:
        """Connect and authenticate: `c = await SshClient.connect(...)` or `async with ... as c`.

        timeout_s bounds connect + authentication and is the default command timeout; None
        means the device's `ssh.timeout_s`. source_address binds the local end (management ACLs
        on devices check it). max_output_bytes bounds each command's output (see `run`)."""
        if max_output_bytes < 1:
            raise ValueError(f"max_output_bytes must be >= 1, got {max_output_bytes}")

        async def opened() -> SshClient:
            return await cls._open(device, resolve, timeout_s, source_address, max_output_bytes)

        return Connecting(opened)

    @classmethod
    async def _open(
        cls,
        device: Device,
        resolve: Resolve,
        timeout_s: float | None,
        source_address: str | None,
        max_output_bytes: int,
    ) -> SshClient:
        timeout = device.ssh.timeout_s if timeout_s is None else timeout_s
        conn = await open_connection(
            device, device.ssh, resolve, timeout, source_address, SshConnectError, SshHostKeyError, "ssh"
        )
        return cls(device, conn, timeout_s=timeout, max_output_bytes=max_output_bytes)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._conn.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._conn.wait_closed(), _CLOSE_TIMEOUT_S)

    async def run(
        self, command: str, *, timeout_s: float | None = None, check: bool = False
    ) -> CommandResult:
        """Run command (stdin empty) and collect its output; check=True raises on exit status != 0.

        timeout_s bounds the whole command (opening its channel, output, exit). On timeout the
        command is killed and its channel closed, then `SshTimeoutError`. Output (stdout and
        stderr together) above the connection's `max_output_bytes` kills the command too, then
        `SshError` with `outcome_unknown` (it ran, and was stopped part way)."""
        operation = f"run {_program(command)}"
        if self._closed:
            raise SshError(self.device.id, operation, "connection is closed")
        timeout = self.timeout_s if timeout_s is None else timeout_s
        deadline = asyncio.get_running_loop().time() + timeout
        try:
            async with asyncio.timeout_at(deadline):
                process = await self._conn.create_process(command, stdin=asyncssh.DEVNULL, encoding=None)
        except TimeoutError:
            raise SshTimeoutError(self.device.id, operation, timeout) from None
        except (asyncssh.Error, OSError) as exc:
            raise SshError(self.device.id, operation, _describe(exc)) from None
        budget = _Budget(self.max_output_bytes)
        try:
            async with asyncio.timeout_at(deadline):
                stdout, stderr = await asyncio.gather(
                    _read_all(process.stdout, budget), _read_all(process.stderr, budget)
                )
                await process.wait_closed()
        except TimeoutError:
            await _stop(process)
            log.warning(
                "ssh.command_timeout", device=self.device.id, program=_program(command), timeout_s=timeout
            )
            raise SshTimeoutError(self.device.id, operation, timeout) from None
        except _OutputTooLarge:
            await _stop(process)
            log.warning(
                "ssh.output_too_large",
                device=self.device.id,
                program=_program(command),
                max_output_bytes=self.max_output_bytes,
            )
            error = SshError(
                self.device.id, operation, f"output larger than {self.max_output_bytes} bytes; command killed"
            )
            error.outcome_unknown = True  # it ran and was stopped part way: it may have acted
            raise error from None
        except (asyncssh.Error, OSError) as exc:
            process.close()
            raise SshError(self.device.id, operation, _describe(exc)) from None
        exit_signal = process.exit_signal
        result = CommandResult(
            exit_status=process.exit_status if exit_signal is None else None,
            stdout=stdout.decode("utf-8", errors="replace"),
            stderr=stderr.decode("utf-8", errors="replace"),
            exit_signal=exit_signal[0] if exit_signal else None,
        )
        if check and not result.ok:
            status = (
                f"signal {result.exit_signal}" if result.exit_signal else f"exit status {result.exit_status}"
            )
            raise SshError(self.device.id, operation, f"{status}: {result.stderr.strip()[-500:]}")
        return result


class _OutputTooLarge(Exception):
    pass


class _Budget:
    """What is left of a command's output allowance, shared by its stdout and stderr."""

    def __init__(self, limit: int) -> None:
        self.left = limit

    def take(self, n: int) -> None:
        self.left -= n
        if self.left < 0:
            raise _OutputTooLarge


async def _read_all(stream: Any, budget: _Budget) -> bytes:
    parts: list[bytes] = []
    while data := await stream.read(65536):
        budget.take(len(data))
        parts.append(data)
    return b"".join(parts)


async def run_command(
    device: Device,
    command: str,
    *,
    resolve: Resolve,
    timeout_s: float | None = None,
    source_address: str | None = None,
) -> CommandResult:
    """Connect, run one command, close. timeout_s bounds the connect and the command each."""
    async with SshClient.connect(
        device, resolve=resolve, timeout_s=timeout_s, source_address=source_address
    ) as client:
        return await client.run(command)


async def _stop(process: Any) -> None:
    """Kill an overrunning command on the device, then close its channel (bounded)."""
    with contextlib.suppress(Exception):
        process.kill()  # channel "signal" request, SIGKILL on the device side
    process.close()
    with contextlib.suppress(Exception):
        await asyncio.wait_for(process.wait_closed(), _CLOSE_TIMEOUT_S)


def _pinned_key(device: Device, port: int, host_key_error: HostKeyErrorType) -> PinnedKey:
    if device.host_key is None:
        raise host_key_error(
            device.id,
            f"no pinned host key for {device.id}: refusing to connect to {_endpoint(device, port)} "
            "unverified (set host_key in the inventory)",
            pinned=None,
            offered=None,
        )
    try:
        return parse_pinned_key(device.host_key)
    except HostKeyFormatError as exc:
        raise host_key_error(
            device.id, f"pinned host key of {device.id} is unusable: {exc}", pinned=None, offered=None
        ) from None


def _describe(exc: BaseException) -> str:
    if isinstance(exc, asyncssh.Error):
        return f"{type(exc).__name__}: {exc.reason}"
    if isinstance(exc, OSError) and exc.errno:
        # asyncio's strerror for a refused connect is "Connect call failed (addr)": use errno's
        return os.strerror(exc.errno).lower()
    return f"{type(exc).__name__}: {exc}"


def _connect_error(
    device: Device,
    port: int,
    pinned: PinnedKey,
    username: str,
    timeout_s: float,
    offered: str | None,
    exc: Exception,
    *,
    answered: bool,
    errors: tuple[ConnectErrorType, HostKeyErrorType],
) -> SshConnectError | NetconfConnectError:
    """The Baton error for a failed connect. `answered`: the server sent its SSH banner. Without
    one the device never answered (refused, reset, timed out, closed before the banner, or a
    silent listener): unreachable. Host key and authentication failures need an answer."""
    connect_error, host_key_error = errors
    where = _endpoint(device, port)
    if isinstance(exc, asyncssh.HostKeyNotVerifiable):
        return host_key_error(
            device.id,
            f"host key mismatch for {device.id} at {where}: pinned {pinned}, "
            f"server offered {offered or 'no acceptable key'}",
            pinned=pinned.fingerprint,
            offered=offered,
        )
    if isinstance(exc, asyncssh.KeyExchangeFailed) and "host key" in exc.reason.lower():
        return host_key_error(
            device.id,
            f"host key mismatch for {device.id} at {where}: pinned {pinned}, "
            f"server offers no {pinned.algorithm} host key",
            pinned=pinned.fingerprint,
            offered=None,
        )
    if isinstance(exc, asyncssh.PermissionDenied):
        return connect_error(device.id, f"authentication failed for user {username} at {where}")
    # a socket error of our own making (say, a source address we cannot bind) is no silence
    unreachable = not answered and (is_no_answer(exc) if isinstance(exc, OSError) else True)
    if isinstance(exc, TimeoutError):
        cause = f"no SSH session with {where} within {timeout_s:g} s"
    elif isinstance(exc, ConnectionResetError | ConnectionAbortedError | BrokenPipeError):
        # after the TCP connect: the server (or something in between) ended it
        banner = "after" if answered else "before"
        cause = f"SSH to {where} failed: {_describe(exc)} {banner} the server's SSH banner"
    elif isinstance(exc, OSError):
        cause = f"TCP connect to {where}: {_describe(exc)}"
    else:
        cause = f"SSH to {where} failed: {_describe(exc)}"
    return connect_error(device.id, cause, unreachable=unreachable)
