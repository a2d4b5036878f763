"""etcd v3 through its JSON gateway (`/v3/...`), on aiohttp: leases, linearizable reads, txns.

Theory of operation. Patroni talks to etcd the same way (no client library: the maintained
Python ones either do not import with current protobuf or talk to one host only, see
../shared/ha-notes.md). Every request has a hard deadline per endpoint tried and goes to the
endpoint that last answered, then to the others in turn; `EtcdUnavailable` says that none
answered in time. Reads are linearizable (etcd's default for range: not `serializable`).
64-bit numbers arrive as strings and keys and values as base64: both are handled here, and
nothing of the gateway's JSON leaves this module. With `user`/`password`, a token from
/v3/auth/authenticate is sent with every request and renewed once when refused.
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
        """POST to the endpoint that last answered, then to each other one; each attempt bounded."""
        errors: list[str] = []
        count = len(self.endpoints)
        for step in range(count):
            index = (self._current + step) % count
            endpoint = self.endpoints[index]
            headers = {}
            if auth and self._user is not None:
                if self._token is None:
                    await self._authenticate(endpoint)
                if self._token is not None:
                    headers["Authorization"] = self._token
            try:
                async with asyncio.timeout(self.timeout_s):
                    async with self._http().post(
                        f"{endpoint}/v3/{path}", json=body, headers=headers
                    ) as response:
                        text = await response.text()
                        status = response.status
            except (TimeoutError, aiohttp.ClientError, OSError) as exc:
                errors.append(f"{endpoint}: {type(exc).__name__} {exc}".strip())
                continue
            self._current = index
            data = json.loads(text) if text else {}
            if status == 200:
                return dict(data)
            message = str(data.get("message") or data.get("error") or text[:200])
            if status == 401 and auth and self._user is not None and "token" in message.lower():
                self._token = None
                return await self._post(path, body, auth=auth)
            raise EtcdError(f"etcd {path}: {status} {message}")
        raise EtcdUnavailable(f"no etcd endpoint answered within {self.timeout_s:g} s: {'; '.join(errors)}")

    async def _authenticate(self, endpoint: str) -> None:
        body = {"name": self._user, "password": self._password}
        try:
            async with asyncio.timeout(self.timeout_s):
                async with self._http().post(f"{endpoint}/v3/auth/authenticate", json=body) as response:
                    data = await response.json(content_type=None)
        except (TimeoutError, aiohttp.ClientError, OSError, ValueError):
            return
        token = data.get("token") if isinstance(data, dict) else None
        if not token:
            raise EtcdError("etcd refused the credentials (etcd.user / etcd.password)")
        self._token = str(token)

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
