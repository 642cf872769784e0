"""The current namespace as a Redis Cluster reader knows it: the pointer's value, kept.

On one Redis a Lua call resolves the pointer and reads in one step. On a cluster the pointer
and a user's hash sit on different nodes, so the reader keeps the pointer's value and reads
with it directly, one round trip per request (``model.contracts.feature_layout``, "On a Redis
Cluster"). The copy is re-read in the background once ``CLUSTER_REFRESH_SECONDS`` old and is
never used past ``CLUSTER_MAX_AGE_SECONDS`` (counted from when its GET was sent): a read then
waits for a fresh GET, so a namespace the loader retired is not read after its keys expire.
Concurrent callers share one GET.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from redis.asyncio.cluster import RedisCluster

from model.contracts import feature_layout
from service.errors import first_line

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _PointerRead:
    namespace: bytes | None
    """The pointer's value; None when nothing is loaded under the prefix."""
    sent_at: float
    """Clock reading just before the GET was sent."""


class PointerCache:
    """The namespace ``pointer_key`` names, read at most about once per refresh interval."""

    def __init__(
        self,
        client: RedisCluster,
        pointer_key: str,
        timeout: float,
        *,
        refresh_after: float = feature_layout.CLUSTER_REFRESH_SECONDS,
        max_age: float = feature_layout.CLUSTER_MAX_AGE_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._client = client
        self._pointer = pointer_key
        self._timeout = timeout
        self._refresh_after = refresh_after
        self._max_age = max_age
        self._clock = clock
        self._read: _PointerRead | None = None
        self._getting: asyncio.Task[_PointerRead] | None = None

    async def namespace(self) -> bytes | None:
        """The current namespace, None if nothing is loaded.

        Without waiting while the copy is younger than the max age (a refresh starts in the
        background once it is older than the refresh interval); else after the shared GET,
        raising what it raised (a redis-py error or TimeoutError).
        """
        read = self._read
        age = self._clock() - read.sent_at if read is not None else float("inf")
        if age < self._refresh_after:
            return read.namespace  # type: ignore[union-attr]  # age is finite: read is set
        getting = self._get()
        if age < self._max_age:
            return read.namespace  # type: ignore[union-attr]
        return (await asyncio.shield(getting)).namespace

    def forget(self) -> None:
        """Drop the copy (its namespace is gone): the next call waits for a fresh GET."""
        self._read = None

    def cancel(self) -> None:
        if self._getting is not None:
            self._getting.cancel()

    def _get(self) -> asyncio.Task[_PointerRead]:
        if self._getting is None:
            self._getting = asyncio.create_task(self._fetch())
            self._getting.add_done_callback(self._fetched)
        return self._getting

    async def _fetch(self) -> _PointerRead:
        sent_at = self._clock()
        async with asyncio.timeout(self._timeout):
            namespace = await self._client.get(self._pointer)
        self._read = _PointerRead(namespace, sent_at)
        return self._read

    def _fetched(self, task: asyncio.Task[_PointerRead]) -> None:
        self._getting = None
        if task.cancelled():
            return
        exc = task.exception()  # retrieved here too: a background refresh has no waiter
        if exc is not None:
            log.warning(
                "could not re-read %s: %s; keeping the namespace read %s",
                self._pointer,
                first_line(exc),
                "never" if self._read is None else f"{self._clock() - self._read.sent_at:.1f}s ago",
            )
