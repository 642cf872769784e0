"""Async user-feature reads from Redis, following ``model.feature_layout``.

One request costs one round trip: EVALSHA of ``READ_USER_SCRIPT`` resolves the namespace
pointer and reads the user's hash atomically, so a reload never shows a mix of feature sets.
Every Redis failure, and any read slower than ``timeout`` seconds, becomes
``FeatureStoreUnavailable``; callers never see a redis-py exception.
"""

from __future__ import annotations

import asyncio
import logging

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from model import feature_layout
from service.errors import FeaturesNotLoaded, FeatureStoreUnavailable, first_line

log = logging.getLogger(__name__)


class FeatureStore:
    """Reads user features; owns its connection pool (close with ``aclose``)."""

    def __init__(
        self, client: aioredis.Redis, prefix: str, timeout: float, retry_after: int = 1
    ) -> None:
        self._client = client
        self._prefix = prefix
        self._pointer = feature_layout.pointer_key(prefix)
        self._timeout = timeout
        self._retry_after = retry_after
        self._read_user = client.register_script(feature_layout.READ_USER_SCRIPT)
        self.errors_total = 0  # read by the metrics collector

    @classmethod
    def connect(
        cls,
        url: str,
        prefix: str,
        timeout: float,
        *,
        max_connections: int = 32,
        retry_after: int = 1,
    ) -> FeatureStore:
        """A store for ``url``; connects lazily, so Redis may be down at startup."""
        # A blocking pool queues a burst beyond max_connections (up to the timeout) instead
        # of failing it at once.
        pool = aioredis.BlockingConnectionPool.from_url(
            url,
            max_connections=max_connections,
            timeout=timeout,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            # One immediate retry replaces a pooled connection that died with a restarted
            # Redis; more would stretch the bounded wait the client was promised.
            retry=Retry(NoBackoff(), 1),
        )
        client = aioredis.Redis(connection_pool=pool)
        return cls(client, prefix, timeout, retry_after)

    @property
    def prefix(self) -> str:
        return self._prefix

    async def user_features(self, user_id: int | str) -> dict[str, str] | None:
        """The user's USER_FIELDS as raw strings, or None for a user not in the feature set.

        Raises FeaturesNotLoaded when no feature set is loaded under the prefix and
        FeatureStoreUnavailable when Redis fails or is slower than the timeout.
        """
        raw = await self._call(self._read_user(keys=[self._pointer], args=[str(user_id)]))
        if raw is None:
            raise FeaturesNotLoaded(
                f"no feature set under prefix {self._prefix!r}; run `afm-ctr load-features`",
                retry_after=self._retry_after,
            )
        # HGETALL through Lua arrives as a flat [field, value, ...] list.
        return feature_layout.decode_user(dict(zip(raw[::2], raw[1::2], strict=True)))

    async def check(self) -> tuple[bool, bool]:
        """(Redis answers, a feature set is loaded), never raising."""
        try:
            current = await self._call(self._client.get(self._pointer))
        except FeatureStoreUnavailable:
            return False, False
        return True, current is not None

    async def aclose(self) -> None:
        await self._client.aclose(close_connection_pool=True)

    async def _call(self, awaitable):  # noqa: ANN001, ANN202 - thin wrapper over redis-py calls
        try:
            async with asyncio.timeout(self._timeout):
                return await awaitable
        except TimeoutError as exc:
            self.errors_total += 1
            raise FeatureStoreUnavailable(
                f"Redis did not answer within {self._timeout:g}s", retry_after=self._retry_after
            ) from exc
        except RedisError as exc:
            self.errors_total += 1
            message = first_line(exc) or type(exc).__name__
            raise FeatureStoreUnavailable(
                f"Redis unavailable: {message}", retry_after=self._retry_after
            ) from exc
