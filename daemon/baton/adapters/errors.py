"""Baton's adapter errors: what a failed network call tells the rest of Baton.

Library exceptions (asyncssh, ncclient) never leave an adapter. They become one of
these, which always carry the device id, the operation that failed and a human-readable cause,
and never a secret (passwords and keys are never formatted into a message).
"""

from __future__ import annotations


class AdapterError(Exception):
    """A network operation on a device failed.

    Two structured facts tell the runner what the failure means for the device, so nothing
    downstream ever matches error text:

    * `unreachable`: the device did not answer at all (TCP refused, reset or timed out, no
      route, closed before the SSH banner). Set by connect errors at the place they are raised;
      never for a host key or authentication failure (something answered).
    * `outcome_unknown`: the request may have reached the device and been applied (no reply in
      time, session dropped while waiting, a reply that could not be read). A write that fails
      this way must be treated as possibly applied.
    """

    protocol = "unknown"
    outcome_unknown = False

    def __init__(self, device: str, operation: str, cause: str, *, unreachable: bool = False) -> None:
        self.device = device
        self.operation = operation
        self.cause = cause
        self.unreachable = unreachable
        super().__init__(f"{self.protocol} {operation} on {device} failed: {cause}")

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(device={self.device!r}, operation={self.operation!r}, "
            f"cause={self.cause!r})"
        )


class AdapterTimeoutError(AdapterError):
    """The operation did not finish within its timeout (the peer may still act on it)."""

    outcome_unknown = True

    def __init__(self, device: str, operation: str, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        super().__init__(device, operation, f"no answer within {timeout_s:g} s")


class HostKeyError:
    """Marker mixed into the connect errors raised when a pinned host key is missing or differs.

    `pinned` and `offered` are fingerprints ("SHA256:..."), `offered` is None when the server
    offered no key of the pinned type.
    """

    pinned: str | None
    offered: str | None


# --- NETCONF ---------------------------------------------------------------------------------


class NetconfError(AdapterError):
    protocol = "netconf"


class NetconfConnectError(NetconfError):
    """The session could not be established: transport, SSH, authentication or hello."""

    def __init__(self, device: str, cause: str, *, unreachable: bool = False) -> None:
        super().__init__(device, "connect", cause, unreachable=unreachable)


class NetconfHostKeyError(NetconfConnectError, HostKeyError):
    """The server's host key is not the pinned one (or none is pinned): refused."""

    def __init__(self, device: str, cause: str, *, pinned: str | None, offered: str | None) -> None:
        self.pinned = pinned
        self.offered = offered
        super().__init__(device, cause)


class NetconfTimeoutError(NetconfError, AdapterTimeoutError):
    def __init__(self, device: str, operation: str, timeout_s: float) -> None:
        AdapterTimeoutError.__init__(self, device, operation, timeout_s)


class NetconfSessionError(NetconfError):
    """The session broke (closed by the server, transport error) while an operation ran."""

    outcome_unknown = True


class NetconfReplyError(NetconfError):
    """The reply could not be read: malformed XML, broken framing, or larger than allowed."""

    outcome_unknown = True


class NetconfRpcError(NetconfError):
    """The server answered with <rpc-error>. `tag` is the RFC 6241 error-tag ("lock-denied",
    "unknown-element", "in-use"...); with several errors, the first error's fields and all
    messages joined."""

    def __init__(
        self,
        device: str,
        operation: str,
        tag: str,
        message: str,
        *,
        error_type: str | None = None,
        severity: str | None = None,
        path: str | None = None,
        app_tag: str | None = None,
        info: str | None = None,
    ) -> None:
        self.tag = tag
        self.message = message
        self.error_type = error_type
        self.severity = severity
        self.path = path
        self.app_tag = app_tag
        self.info = info
        detail = f"rpc-error {tag}"
        if message:
            detail += f": {message}"
        if path:
            detail += f" (at {path})"
        super().__init__(device, operation, detail)


# --- SSH -------------------------------------------------------------------------------------


class SshError(AdapterError):
    protocol = "ssh"


class SshConnectError(SshError):
    """The connection could not be established: transport, host key or authentication."""

    def __init__(self, device: str, cause: str, *, unreachable: bool = False) -> None:
        super().__init__(device, "connect", cause, unreachable=unreachable)


class SshHostKeyError(SshConnectError, HostKeyError):
    """The server's host key is not the pinned one (or none is pinned): refused."""

    def __init__(self, device: str, cause: str, *, pinned: str | None, offered: str | None) -> None:
        self.pinned = pinned
        self.offered = offered
        super().__init__(device, cause)


class SshTimeoutError(SshError, AdapterTimeoutError):
    def __init__(self, device: str, operation: str, timeout_s: float) -> None:
        AdapterTimeoutError.__init__(self, device, operation, timeout_s)
