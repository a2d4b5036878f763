"""etcd v3 through its JSON gateway (`/v3/...`), on aiohttp: leases, linearizable reads, txns.

Theory of operation. Patroni talks to etcd the same way (no client library: the maintained
Python ones either do not import with current protobuf or talk to one host only, see
../shared/ha-notes.md). Every request has a hard deadline per endpoint tried (authentication
included) and goes to the endpoint that last answered, then to the others in turn; a member
that answers that it cannot serve (no raft leader, no quorum: every request asks it to say so
at once) counts as not answering. `EtcdUnavailable` says that none answered in time; any other
`EtcdError` is etcd's own answer. Reads are linearizable (etcd's default for range: not
`serializable`). 64-bit numbers arrive as strings and keys and values as base64: both are
handled here, and nothing of the gateway's JSON leaves this module. With `user`/`password`, a
token from /v3/auth/authenticate is sent with every request and renewed once when refused.
`wait_change` watches one key (a follower waiting for the leader key to go).
"""

from __future__ import annotations

import asyncio
import base64
import json
import ssl
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp

from baton.logs import get_logger

log = get_logger(component="etcd")


class EtcdError(Exception):
    """etcd answered, but not as asked (an error from the server)."""


class EtcdUnavailable(EtcdError):
    """No endpoint answered within its deadline."""


@dataclass(frozen=True, slots=True)
class KV:
    key: str
    value: bytes
    create_revision: int
    mod_revision: int
    lease: int

    @property
    def text(self) -> str:
        return self.value.decode()

    def json(self) -> Any:
        return json.loads(self.value)


def _b64(data: str | bytes) -> str:
    raw = data.encode() if isinstance(data, str) else data
    return base64.b64encode(raw).decode()


def _unb64(text: str | None) -> bytes:
    return base64.b64decode(text) if text else b""


def range_end(prefix: str) -> str:
    """The key just past every key that starts with `prefix` (etcd's prefix range)."""
    raw = bytearray(prefix.encode())
    while raw and raw[-1] == 0xFF:
        raw.pop()
    if not raw:
        return _b64(b"\0")
    raw[-1] += 1
    return _b64(bytes(raw))


def _kv(item: Mapping[str, Any]) -> KV:
    return KV(
        key=_unb64(item.get("key")).decode(),
        value=_unb64(item.get("value")),
        create_revision=int(item.get("create_revision", 0)),
        mod_revision=int(item.get("mod_revision", 0)),
        lease=int(item.get("lease", 0)),
    )


# gRPC metadata through the gateway (etcd's clientv3.WithRequireLeader): a member that has lost
# its raft leader (cut off from the quorum, or during an election) answers "no leader" at once
# instead of holding the request until etcd's own timeout (7 s) — the client moves on to another.
REQUIRE_LEADER = {"Grpc-Metadata-hasleader": "true"}

# gRPC codes that say "this member cannot serve now" (Unavailable: no leader, request timed out;
# DeadlineExceeded), and the HTTP statuses the gateway maps them to: try another endpoint.
_UNAVAILABLE = frozenset({4, 14, 503, 504})


def _first_message(text: str) -> dict[str, Any]:
    """The gateway's answer: one JSON object (unary) or newline-separated objects (a stream:
    keepalive), of which the first one is the answer."""
    for line in text.splitlines():
        if line.strip():
            data = json.loads(line)
            if not isinstance(data, dict):
                raise ValueError(f"not a JSON object: {line[:100]}")
            return data
    return {}


def _message_of(data: Mapping[str, Any]) -> str:
    error = data.get("error")
    if isinstance(error, Mapping):  # a stream's error: {"error": {"grpc_code", "http_code", "message"}}
        return str(error.get("message") or error)
    return str(data.get("message") or error or data)[:300]


def _failure(status: int, data: Mapping[str, Any]) -> tuple[int, str] | None:
    """None for a good answer, else (gRPC code or HTTP status, message)."""
    error = data.get("error")
    if status == 200 and error is None:
        return None
    code = data.get("code")
    if isinstance(error, Mapping):
        code = error.get("grpc_code", error.get("http_code"))
    try:
        number = int(code) if code is not None else status
    except (TypeError, ValueError):
        number = status
    message = _message_of(data)
    if status in _UNAVAILABLE:
        number = status
    elif "deadline exceeded" in message.lower():  # etcd's own deadline, as gRPC Unknown (code 2)
        number = 4
    return number, f"{status} {message}"


def _token_refused(message: str) -> bool:
    text = message.lower()
    return "invalid auth token" in text or "auth store is old" in text or "user name is empty" in text


# --- txn building blocks (the gateway's JSON, built here only) --------------------------------


def created(key: str, revision: int) -> dict[str, Any]:
    """Compare: the key's create_revision equals `revision` (0: the key does not exist)."""
    return {"key": _b64(key), "target": "CREATE", "result": "EQUAL", "create_revision": str(revision)}


def put(key: str, value: str | bytes, lease: int = 0) -> dict[str, Any]:
    request: dict[str, Any] = {"key": _b64(key), "value": _b64(value)}
    if lease:
        request["lease"] = str(lease)
    return {"request_put": request}


def get(key: str) -> dict[str, Any]:
    return {"request_range": {"key": _b64(key)}}


def delete(key: str) -> dict[str, Any]:
    return {"request_delete_range": {"key": _b64(key)}}


def delete_prefix(prefix: str) -> dict[str, Any]:
    return {"request_delete_range": {"key": _b64(prefix), "range_end": range_end(prefix)}}


@dataclass(frozen=True, slots=True)
class TxnResult:
    succeeded: bool
    revision: int  # the store's revision after the txn
    ranges: tuple[tuple[KV, ...], ...]  # the kvs of each range response, in order


class EtcdClient:
    """One vantage's connection to the cluster (see the module docstring)."""

    def __init__(
        self,
        endpoints: Sequence[str],
        *,
        timeout_s: float = 2.0,
        ssl_context: ssl.SSLContext | None = None,
        user: str | None = None,
        password: str | None = None,
    ) -> None:
        if not endpoints:
            raise ValueError("etcd needs at least one endpoint")
        self.endpoints = tuple(e.rstrip("/") for e in endpoints)
        self.timeout_s = timeout_s
        self._ssl = ssl_context
        self._user = user
        self._password = password
        self._token: str | None = None
        self._current = 0
        self._session: aiohttp.ClientSession | None = None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(ssl=self._ssl if self._ssl is not None else False, limit=16)
            self._session = aiohttp.ClientSession(connector=connector)
        return self._session

    async def _post(self, path: str, body: Mapping[str, Any], *, auth: bool = True) -> dict[str, Any]:
        """POST to the endpoint that last answered, then to each other one; each attempt bounded
        by `timeout_s`, authentication included. A member that answers but cannot serve (no raft
        leader, no quorum: gRPC Unavailable or DeadlineExceeded) counts as not answering."""
        errors: list[str] = []
        count = len(self.endpoints)
        for step in range(count):
            index = (self._current + step) % count
            endpoint = self.endpoints[index]
            try:
                async with asyncio.timeout(self.timeout_s):
                    status, data = await self._attempt(endpoint, path, body, auth=auth)
            except (TimeoutError, aiohttp.ClientError, OSError, ValueError) as exc:
                # ValueError: an answer cut short or garbled (a member dying mid-answer)
                errors.append(f"{endpoint}: {type(exc).__name__} {exc}".strip())
                continue
            failure = _failure(status, data)
            if failure is None:
                self._current = index
                return data
            code, message = failure
            if code in _UNAVAILABLE:
                errors.append(f"{endpoint}: {message}")
                continue
            self._current = index
            raise EtcdError(f"etcd {path}: {message}")
        raise EtcdUnavailable(f"no etcd endpoint answered within {self.timeout_s:g} s: {'; '.join(errors)}")

    async def _attempt(
        self, endpoint: str, path: str, body: Mapping[str, Any], *, auth: bool
    ) -> tuple[int, dict[str, Any]]:
        """One endpoint: (HTTP status, the first JSON message). A token refused as invalid or
        stale is renewed once."""
        renewed = False
        while True:
            headers = await self._headers(endpoint) if auth else {}
            async with self._http().post(
                f"{endpoint}/v3/{path}", json=body, headers={**REQUIRE_LEADER, **headers}
            ) as response:
                status, data = response.status, _first_message(await response.text())
            failure = _failure(status, data)
            if failure is not None and headers and not renewed and _token_refused(failure[1]):
                self._token = None
                renewed = True
                continue
            return status, data

    async def _headers(self, endpoint: str) -> dict[str, str]:
        if self._user is None:
            return {}
        if self._token is None:
            body = {"name": self._user, "password": self._password or ""}
            url = f"{endpoint}/v3/auth/authenticate"
            async with self._http().post(url, json=body, headers=REQUIRE_LEADER) as response:
                status, data = response.status, _first_message(await response.text())
            failure = _failure(status, data)
            if failure is not None:
                if failure[0] in _UNAVAILABLE:
                    raise aiohttp.ClientError(failure[1])  # this endpoint cannot serve: try the next
                raise EtcdError(f"etcd refused the credentials (etcd.user / etcd.password): {failure[1]}")
            token = data.get("token")
            if not token:
                raise EtcdError("etcd answered the authentication without a token")
            self._token = str(token)
        return {"Authorization": self._token}

    async def wait_change(self, key: str, after_revision: int, timeout_s: float) -> bool:
        """Wait up to `timeout_s` for `key` to change (put or delete) after `after_revision`:
        True when it did (or the watch was cancelled: look again), False when the time ran out.
        A watch that cannot be set up or breaks sleeps out the rest of the time, so a caller's
        loop around it never spins faster than `timeout_s`."""
        started = time.monotonic()
        endpoint = self.endpoints[self._current]
        body = {"create_request": {"key": _b64(key), "start_revision": str(after_revision + 1)}}
        try:
            async with asyncio.timeout(timeout_s):
                try:
                    headers = await self._headers(endpoint)
                    url = f"{endpoint}/v3/watch"
                    headers = {**REQUIRE_LEADER, **headers}
                    async with self._http().post(url, json=body, headers=headers) as response:
                        if response.status != 200:
                            raise EtcdError(f"etcd watch: HTTP {response.status}")
                        async for line in response.content:
                            message = json.loads(line) if line.strip() else {}
                            result = message.get("result") if isinstance(message, dict) else None
                            if result is None and message:
                                raise EtcdError(f"etcd watch: {_message_of(message)}")
                            if result and (result.get("events") or result.get("canceled")):
                                return True
                except (aiohttp.ClientError, OSError, ValueError, EtcdError) as exc:
                    log.debug("etcd.watch_failed", endpoint=endpoint, error=f"{type(exc).__name__} {exc}")
                await asyncio.sleep(max(0.0, timeout_s - (time.monotonic() - started)))
        except TimeoutError:
            pass
        return False

    # --- leases -----------------------------------------------------------------------------

    async def grant(self, ttl_s: float) -> tuple[int, float]:
        """A new lease: (id, the TTL granted)."""
        data = await self._post("lease/grant", {"TTL": str(max(1, round(ttl_s)))})
        return int(data["ID"]), float(data.get("TTL", 0))

    async def keepalive(self, lease: int) -> float:
        """Refresh the lease; the TTL left, 0 when it has expired (the gateway then answers
        without a TTL field, or with 0: both mean gone)."""
        data = await self._post("lease/keepalive", {"ID": str(lease)})
        result = data.get("result", data)
        return float(result.get("TTL", 0) or 0)

    async def revoke(self, lease: int) -> None:
        await self._post("lease/revoke", {"ID": str(lease)})

    # --- keys -------------------------------------------------------------------------------

    async def get(self, key: str) -> KV | None:
        data = await self._post("kv/range", {"key": _b64(key)})
        kvs = data.get("kvs") or []
        return _kv(kvs[0]) if kvs else None

    async def get_prefix(self, prefix: str) -> list[KV]:
        data = await self._post("kv/range", {"key": _b64(prefix), "range_end": range_end(prefix)})
        return [_kv(item) for item in data.get("kvs") or []]

    async def put(self, key: str, value: str | bytes, lease: int = 0) -> int:
        body: dict[str, Any] = {"key": _b64(key), "value": _b64(value)}
        if lease:
            body["lease"] = str(lease)
        data = await self._post("kv/put", body)
        return int(data.get("header", {}).get("revision", 0))

    async def txn(
        self,
        compare: Sequence[Mapping[str, Any]],
        success: Sequence[Mapping[str, Any]],
        failure: Sequence[Mapping[str, Any]] = (),
    ) -> TxnResult:
        data = await self._post(
            "kv/txn", {"compare": list(compare), "success": list(success), "failure": list(failure)}
        )
        ranges = tuple(
            tuple(_kv(item) for item in (r.get("response_range") or {}).get("kvs") or [])
            for r in data.get("responses") or []
            if "response_range" in r
        )
        return TxnResult(
            succeeded=bool(data.get("succeeded", False)),
            revision=int(data.get("header", {}).get("revision", 0)),
            ranges=ranges,
        )


def monotonic() -> float:
    return time.monotonic()
