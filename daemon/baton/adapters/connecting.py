"""What an adapter's `connect()` returns: await it for a client, or use it as an async context
manager that closes the client on the way out; and what counts as "nothing answered" when a
connect fails at the socket level (the adapters' `unreachable` fact)."""

from __future__ import annotations

import errno
import socket
from collections.abc import Awaitable, Callable, Generator
from types import TracebackType
from typing import Any, Generic, Protocol, TypeVar


class Closable(Protocol):
    async def close(self) -> None: ...


C = TypeVar("C", bound=Closable)


class Connecting(Generic[C]):
    def __init__(self, factory: Callable[[], Awaitable[C]]) -> None:
        self._factory = factory
        self._client: C | None = None

    def __await__(self) -> Generator[Any, None, C]:
        return self._factory().__await__()

    async def __aenter__(self) -> C:
        self._client = await self._factory()
        return self._client

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._client is not None:
            await self._client.close()


# What a TCP connect (or the first read) gives when nothing answers for the device. Not in the
# set: a source address that cannot be bound, a name that does not resolve (our side's problem).
NO_ANSWER_ERRNOS = frozenset(
    {
        errno.ECONNREFUSED,
        errno.ECONNRESET,
        errno.ECONNABORTED,
        errno.ETIMEDOUT,
        errno.EHOSTUNREACH,
        errno.ENETUNREACH,
        errno.EHOSTDOWN,
        errno.ENETDOWN,
        errno.EPIPE,
    }
)


def is_no_answer(exc: BaseException) -> bool:
    """Is this socket error what a device that does not answer at all gives?"""
    if isinstance(exc, TimeoutError):
        return True
    return isinstance(exc, OSError) and not isinstance(exc, socket.gaierror) and exc.errno in NO_ANSWER_ERRNOS
