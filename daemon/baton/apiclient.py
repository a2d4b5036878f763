"""The CLI's client for the control API: JSON over HTTP on the unix socket, or on TCP with a token.

Synchronous on purpose (stdlib `http.client`): the CLI does one request at a time, and a plain
blocking call with an explicit timeout is the simplest thing that cannot hang. Every failure is
one of three exceptions carrying one clear sentence: the daemon cannot be reached
(`DaemonUnreachable`), the socket refuses us (`NotPermitted`), or the API answered with an error
(`ApiError`, with the HTTP status and the API's own sentence). The token is sent, never shown.
"""

from __future__ import annotations

import errno
import http.client
import json
import socket
import ssl
import urllib.parse
from pathlib import Path
from typing import Any

DEFAULT_SOCKET = "/run/baton/api.sock"
DEFAULT_TIMEOUT_S = 10.0


class ClientError(Exception):
    """Base of the client's errors; the message is one sentence for people."""


class DaemonUnreachable(ClientError):
    pass


class NotPermitted(ClientError):
    pass


class ApiError(ClientError):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self._path)
        except BaseException:
            sock.close()
            raise
        self.sock = sock


_CAUSES = {
    errno.ENOENT: "No such file",
    errno.ECONNREFUSED: "connection refused",
    errno.ENOTSOCK: "not a socket",
}


class ApiClient:
    """One daemon, reached on `socket_path`, or on `url` (http:// or https://) with `token`."""

    def __init__(
        self,
        *,
        socket_path: str | Path = DEFAULT_SOCKET,
        url: str | None = None,
        token: str | None = None,
        ca_file: str | Path | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
    ) -> None:
        self._socket_path = str(socket_path)
        self._token = token
        self._timeout_s = timeout_s
        self._url = None if url is None else urllib.parse.urlsplit(url)
        if self._url is not None and (self._url.scheme not in ("http", "https") or not self._url.hostname):
            raise ValueError(f"--url must look like https://host:port, not {url!r}")
        self._ca_file = None if ca_file is None else str(ca_file)

    @property
    def where(self) -> str:
        """The daemon's address, for messages."""
        if self._url is None:
            return self._socket_path
        return f"{self._url.scheme}://{self._url.netloc}"

    def get(self, path: str, params: dict[str, str | int] | None = None) -> Any:
        if params:
            path = f"{path}?{urllib.parse.urlencode(params)}"
        return self._request("GET", path, None)

    def post(self, path: str, body: dict[str, Any] | None = None) -> Any:
        return self._request("POST", path, {} if body is None else body)

    def _connection(self) -> http.client.HTTPConnection:
        if self._url is None:
            return _UnixConnection(self._socket_path, self._timeout_s)
        host = self._url.hostname or ""
        if self._url.scheme == "https":
            context = ssl.create_default_context(cafile=self._ca_file)
            return http.client.HTTPSConnection(
                host, self._url.port or 443, timeout=self._timeout_s, context=context
            )
        return http.client.HTTPConnection(host, self._url.port or 80, timeout=self._timeout_s)

    def _request(self, method: str, path: str, body: dict[str, Any] | None) -> Any:
        headers = {"Accept": "application/json"}
        payload = None
        if body is not None:
            payload = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        if self._url is not None:
            prefix = self._url.path.rstrip("/")
            path = prefix + path
            if self._token is not None:
                headers["Authorization"] = f"Bearer {self._token}"
        connection = self._connection()
        try:
            connection.request(method, path, body=payload, headers=headers)
            response = connection.getresponse()
            status = response.status
            raw = response.read()
        except PermissionError:
            raise NotPermitted(
                f"permission denied on {self.where}: is your user in the socket's group (api.socket_group)?"
            ) from None
        except ssl.SSLError as exc:
            raise DaemonUnreachable(
                f"cannot reach the daemon at {self.where}: TLS failed ({exc.reason})"
            ) from None
        except TimeoutError:
            raise DaemonUnreachable(
                f"cannot reach the daemon at {self.where}: no answer within {self._timeout_s:g}s"
            ) from None
        except (OSError, http.client.HTTPException) as exc:
            cause = _CAUSES.get(exc.errno or 0) if isinstance(exc, OSError) else None
            cause = cause or (exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc))
            cause = cause or type(exc).__name__
            hint = " — is baton.service running?" if self._url is None else ""
            raise DaemonUnreachable(f"cannot reach the daemon at {self.where}: {cause}{hint}") from None
        finally:
            connection.close()
        try:
            data = json.loads(raw) if raw else None
        except (json.JSONDecodeError, UnicodeDecodeError):
            data = None
        if status >= 400:
            message = data.get("error") if isinstance(data, dict) else None
            raise ApiError(
                status, message if isinstance(message, str) else f"the daemon answered HTTP {status}"
            )
        if data is None:
            raise ApiError(status, f"the daemon answered HTTP {status} without JSON")
        return data


def read_token(path: str | Path) -> str:
    """The token in `path` (one trailing newline removed); ValueError with a sentence if unusable."""
    try:
        token = Path(path).read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        raise ValueError(f"token file {path} does not exist") from None
    except PermissionError:
        raise ValueError(f"token file {path} is not readable (permission denied)") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"cannot read token file {path}: {getattr(exc, 'strerror', None) or exc}") from None
    if not token:
        raise ValueError(f"token file {path} is empty")
    return token


__all__ = ["ApiClient", "ApiError", "ClientError", "DaemonUnreachable", "NotPermitted", "read_token"]
