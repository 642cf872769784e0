"""Async feature reads from Redis, following ``model.contracts.feature_layout``.

A request needs its user's features and the item features of its candidates. The user costs
one round trip: EVALSHA of ``READ_USER_SCRIPT`` resolves the namespace pointer and reads the
user's hash atomically, and says which namespace it read. User reads share one pipelined
connection (``service.redis_pipeline``: concurrent reads leave in one write); the rest goes
through redis-py's pool. Item features come from an
in-process copy of that namespace's movies hash (~4k movies, a few hundred KB), fetched with
``READ_MOVIES_SCRIPT`` only when the user read reports a namespace the copy is not from:
once after startup and once per load. Concurrent requests share that one fetch. The same
script returns the namespace's meta hash (what the load is: source, counts, value labels,
popular movies, sample users), cached and shared with the table.

A request never mixes two loads: it gets the table and meta of the namespace its user came
from. If the fetched table is already from a newer load (a switch landed between the two
reads), the user is read again, up to ``READ_ATTEMPTS`` times. ``feature_set`` does the same
with a GET of the pointer in place of the user read.

On a Redis Cluster (``connect(..., cluster=True)``) no script runs: a script may touch one
hash slot only, and a load's keys are spread over every master. The store reads the user's
hash (HGETALL) under the namespace its ``PointerCache`` holds, and the movies and meta hashes
of that namespace in one pipelined call (one round trip per node, in parallel); a request
still costs one round trip. The pointer is re-read in the background about once a second,
and the loader keeps a replaced namespace for minutes (``model.contracts.feature_layout``,
"On a Redis Cluster"), so a request still reads one load only and never a removed one.

Every Redis failure, and any call slower than ``timeout`` seconds, becomes
``FeatureStoreUnavailable`` (on a cluster its subclass ``FeatureNodeUnavailable``: the node
holding the request's keys is down or its slots are moving, other users are still served);
callers never see a redis-py exception.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import TypeVar

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisClusterException, RedisError

from model.contracts import feature_layout
from model.contracts.feature_layout import FeatureSetMeta
from service.errors import (
    FeatureNodeUnavailable,
    FeaturesNotLoaded,
    FeatureStoreUnavailable,
    first_line,
)
from service.pointer_cache import PointerCache
from service.redis_pipeline import PipelinedConnection

log = logging.getLogger(__name__)

READ_ATTEMPTS = 3
"""Reads (of a user, or of the pointer for ``feature_set``) per call before giving up on a
feature set that keeps switching; a load takes far longer than a read, so a second attempt
always suffices in practice."""

_T = TypeVar("_T")
_NO_MOVIES: Mapping[str, Mapping[str, str]] = MappingProxyType({})
_NO_META = FeatureSetMeta()
_READ_USER_SHA = hashlib.sha1(feature_layout.READ_USER_SCRIPT.encode()).hexdigest()


@dataclass(frozen=True)
class FeatureRead:
    """What one request reads, all from the same loaded feature set."""

    user: dict[str, str] | None
    """USER_FIELDS as raw strings; None for a user not in the feature set."""
    movies: Mapping[str, Mapping[str, str]]
    """movie_id string -> MOVIE_FEATURES as raw strings; read-only, shared between requests.
    Empty for a feature set loaded without movies; a movie not in it is unknown."""
    meta: FeatureSetMeta = _NO_META
    """What the load is: ``meta.labels[field][value]`` is a raw value's readable label where
    the dataset documents one. Read-only, shared; ``FeatureSetMeta()`` for a feature set
    loaded without meta (no labels, no samples)."""


@dataclass(frozen=True)
class FeatureSetInfo:
    """What the loaded feature set is: its meta and popular movies for people, its
    namespace and movie ids for comparing it with a model (``service.coverage``)."""

    meta: FeatureSetMeta
    popular_movies: tuple[tuple[str, Mapping[str, str]], ...]
    """(movie_id, MOVIE_FEATURES) of ``meta.popular``, most rated first; ids missing from
    the movie table are left out."""
    namespace: str = ""
    """The namespace read; a new one per load."""
    movie_ids: frozenset[str] = frozenset()
    """Ids of the movie table (readable movies only)."""


@dataclass(frozen=True)
class _MovieTable:
    namespace: bytes
    movies: Mapping[str, Mapping[str, str]]
    info: FeatureSetInfo


class FeatureStore:
    """Reads user and movie features; owns its connections (close with ``aclose``).

    ``user_reads``: the connection user reads share on a single Redis (``connect`` opens
    it); None on a cluster.
    """

    def __init__(
        self,
        client: aioredis.Redis | RedisCluster,
        prefix: str,
        timeout: float,
        retry_after: int = 1,
        user_reads: PipelinedConnection | None = None,
    ) -> None:
        self._client = client
        self._prefix = prefix
        self._pointer = feature_layout.pointer_key(prefix)
        self._timeout = timeout
        self._retry_after = retry_after
        self._cluster: PointerCache | None = None  # set on a cluster: no scripts there
        self._unavailable: type[FeatureStoreUnavailable] = FeatureStoreUnavailable
        if isinstance(client, RedisCluster):
            self._cluster = PointerCache(client, self._pointer, timeout)
            self._unavailable = FeatureNodeUnavailable
        else:
            if user_reads is None:
                raise ValueError("a single Redis needs user_reads: FeatureStore.connect")
            self._user_reads = user_reads
            self._read_movies = client.register_script(feature_layout.READ_MOVIES_SCRIPT)
        self._table: _MovieTable | None = None  # the last fetched movie table
        self._fetching: asyncio.Task[_MovieTable] | None = None  # the fetch requests share
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
        cluster: bool = False,
        alone: Callable[[], bool] = lambda: False,
    ) -> FeatureStore:
        """A store for ``url``; connects lazily, so Redis may be down at startup.

        ``cluster``: ``url`` names any node of a Redis Cluster, whose slot map the client
        reads on first use. ``max_connections`` is then per node, and a burst beyond it
        fails at once (redis-py's cluster pool does not queue) instead of waiting.
        ``alone``: whether the caller's request is the only one in the server (its user
        read then leaves at once, ``PipelinedConnection``). Raises ValueError for a cluster
        ``prefix`` holding a brace.
        """
        # One immediate retry replaces a pooled connection that died with a restarted
        # Redis (on a cluster: re-reads the slot map after a failover); more would stretch
        # the bounded wait the client was promised.
        retry = Retry(NoBackoff(), 1)
        if cluster:
            feature_layout.check_cluster_prefix(prefix)
            client = RedisCluster.from_url(
                url,
                max_connections=max_connections,
                socket_timeout=timeout,
                socket_connect_timeout=timeout,
                retry=retry,
            )
            return cls(client, prefix, timeout, retry_after)
        # A blocking pool queues a burst beyond max_connections (up to the timeout) instead
        # of failing it at once.
        pool = aioredis.BlockingConnectionPool.from_url(
            url,
            max_connections=max_connections,
            timeout=timeout,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=retry,
        )
        client = aioredis.Redis(connection_pool=pool)
        user_reads = PipelinedConnection(url, timeout, alone)
        return cls(client, prefix, timeout, retry_after, user_reads)

    @property
    def prefix(self) -> str:
        return self._prefix

    @property
    def movies_loaded(self) -> int:
        """Movies in the in-process table (0 before the first read); no Redis call."""
        return len(self._table.movies) if self._table is not None else 0

    async def read(self, user_id: int | str) -> FeatureRead:
        """The user's features and the movie table and meta of the same loaded feature set.

        One round trip in the steady state; a second (shared by concurrent requests) after a
        load switched the feature set. Raises FeaturesNotLoaded when no feature set is loaded
        under the prefix and FeatureStoreUnavailable when Redis fails, a call is slower than
        the timeout, or loads keep switching for READ_ATTEMPTS reads.
        """
        user, table = await self._with_table(lambda: self._user(user_id))
        return FeatureRead(user, table.movies, table.info.meta)

    async def feature_set(self) -> FeatureSetInfo:
        """The current feature set's meta and popular movies, from the in-process copy.

        One GET of the pointer in the steady state (no user read); the shared table fetch
        too after a load. Raises as ``read`` does.
        """
        _, table = await self._with_table(self._namespace)
        return table.info

    async def check(self) -> tuple[bool, bool]:
        """(Redis answers, a feature set is loaded), never raising."""
        try:
            current = await self._call(self._client.get(self._pointer))
        except FeatureStoreUnavailable:
            return False, False
        return True, current is not None

    async def aclose(self) -> None:
        if self._fetching is not None:
            self._fetching.cancel()
        if self._cluster is not None:
            self._cluster.cancel()
            await self._client.aclose()
        else:
            self._user_reads.close()
            await self._client.aclose(close_connection_pool=True)

    async def _with_table(
        self, read: Callable[[], Awaitable[tuple[bytes, _T]]]
    ) -> tuple[_T, _MovieTable]:
        """``read()``'s value and the movie table of the namespace it reports reading.

        The cached table when it is that namespace's, else the shared fetch; ``read`` again
        when the cache changed meanwhile or the fetch found another namespace.
        """
        for _ in range(READ_ATTEMPTS):
            cached = self._table
            namespace, value = await read()
            table = self._table
            if table is None or table.namespace != namespace:
                if table is not cached:
                    continue  # refreshed while ``read`` ran: read again
                table = await self._call(asyncio.shield(self._refresh()))
            if table.namespace == namespace:
                return value, table
        raise FeatureStoreUnavailable(
            f"the feature set switched during each of {READ_ATTEMPTS} reads",
            retry_after=self._retry_after,
        )

    async def _namespace(self) -> tuple[bytes, None]:
        if self._cluster is not None:
            namespace = await self._call(self._cluster.namespace())
        else:
            namespace = await self._call(self._client.get(self._pointer))
        if namespace is None:
            raise self._not_loaded()
        return namespace, None

    async def _user(self, user_id: int | str) -> tuple[bytes, dict[str, str] | None]:
        if self._cluster is not None:
            namespace, _ = await self._namespace()
            key = feature_layout.user_key(namespace.decode(), user_id)
            return namespace, feature_layout.decode_user(
                await self._call(self._client.hgetall(key))
            )
        reply = await self._call(
            self._user_reads.evalsha(
                feature_layout.READ_USER_SCRIPT, _READ_USER_SHA, [self._pointer], [user_id]
            ),
            timed=False,  # the pipelined connection times its commands out itself
        )
        if reply is None:
            raise self._not_loaded()
        namespace, raw = reply
        # HGETALL through Lua arrives as a flat [field, value, ...] list.
        return namespace, feature_layout.decode_user(dict(zip(raw[::2], raw[1::2], strict=True)))

    def _refresh(self) -> asyncio.Task[_MovieTable]:
        """The movie-table fetch in flight, started if there is none (single flight)."""
        if self._fetching is None:
            self._fetching = asyncio.create_task(self._fetch_table())
            self._fetching.add_done_callback(self._fetched)
        return self._fetching

    async def _fetch_table(self) -> _MovieTable:
        """Fetch and decode the current namespace's movies and meta hashes; raw redis-py
        errors escape to every waiter's ``_call``, which translates and counts them per
        request."""
        if self._cluster is not None:
            namespace, raw, raw_meta = await self._read_cluster_tables(self._cluster)
        else:
            reply = await self._read_movies(keys=[self._pointer])
            if reply is None:
                raise self._not_loaded()
            namespace, flat, flat_meta = reply
            # HGETALL through Lua arrives as a flat [field, value, ...] list.
            raw = dict(zip(flat[::2], flat[1::2], strict=True))
            raw_meta = dict(zip(flat_meta[::2], flat_meta[1::2], strict=True))
        movies: dict[str, Mapping[str, str]] = {}
        for movie_id, value in raw.items():
            features = feature_layout.decode_movie(value)
            if features is not None:
                movies[movie_id.decode()] = MappingProxyType(features)
        if len(movies) != len(raw):
            log.warning(
                "skipped %d unreadable movie(s) in %s",
                len(raw) - len(movies),
                feature_layout.movies_key(namespace.decode()),
            )
        meta = feature_layout.decode_meta(raw_meta)
        popular = tuple((m, movies[m]) for m in meta.popular if m in movies)
        table = _MovieTable(
            namespace,
            MappingProxyType(movies) if movies else _NO_MOVIES,
            FeatureSetInfo(meta, popular, namespace.decode(), frozenset(movies)),
        )
        self._table = table
        log.info(
            "movie table of %s: %d movies (%s, loaded %s)",
            namespace.decode(),
            len(movies),
            meta.source or "source unknown",
            meta.loaded_at or "at an unknown time",
        )
        return table

    async def _read_cluster_tables(
        self, pointer: PointerCache
    ) -> tuple[bytes, dict[bytes, bytes], dict[bytes, bytes]]:
        """(namespace, movies hash, meta hash) of the cached namespace, in one pipelined call.

        Every cluster load writes a meta hash, so an empty one means the namespace is gone
        (a copy of the pointer outlived it): forget the copy and fail this read.
        """
        namespace = await pointer.namespace()
        if namespace is None:
            raise self._not_loaded()
        text = namespace.decode()
        pipe = self._client.pipeline()
        pipe.hgetall(feature_layout.movies_key(text))
        pipe.hgetall(feature_layout.meta_key(text))
        raw, raw_meta = await pipe.execute()
        if not raw_meta:
            pointer.forget()
            raise self._unavailable(
                f"feature set {text} is no longer in Redis; reading the current one",
                retry_after=self._retry_after,
            )
        return namespace, raw, raw_meta

    def _fetched(self, task: asyncio.Task[_MovieTable]) -> None:
        self._fetching = None
        if not task.cancelled():
            task.exception()  # retrieved here too: every waiter may have timed out already

    def _not_loaded(self) -> FeaturesNotLoaded:
        return FeaturesNotLoaded(
            f"no feature set under prefix {self._prefix!r}; run `afm-ctr load-features`",
            retry_after=self._retry_after,
        )

    async def _call(self, awaitable, timed: bool = True):  # noqa: ANN001, ANN202 - thin wrapper
        """``awaitable``'s result, its Redis errors and lateness (beyond ``timeout`` s, bounded
        here unless ``timed`` is false) as ``FeatureStoreUnavailable``."""
        try:
            if not timed:
                return await awaitable
            async with asyncio.timeout(self._timeout):
                return await awaitable
        except TimeoutError as exc:
            self.errors_total += 1
            raise self._unavailable(
                f"{self._what} did not answer within {self._timeout:g}s",
                retry_after=self._retry_after,
            ) from exc
        except (RedisError, RedisClusterException) as exc:
            # The cluster client raises RedisClusterException (not a RedisError) for a slot
            # without a master or when no node answers.
            self.errors_total += 1
            message = first_line(exc) or type(exc).__name__
            raise self._unavailable(
                f"{self._what} unavailable: {message}", retry_after=self._retry_after
            ) from exc

    @property
    def _what(self) -> str:
        return "Redis" if self._cluster is None else "Redis Cluster node"
