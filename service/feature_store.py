"""Async feature reads from Redis, following ``model.contracts.feature_layout``.

A request needs its user's features and the item features of its candidates. The user costs
one round trip; item features come from an in-process copy of the loaded namespace's movies
hash (~4k movies, a few hundred KB), fetched with its meta hash (what the load is: source,
counts, value labels, popular movies, sample users) only when a user read reports a
namespace the copy is not from: once after startup and once per load. Concurrent requests
share that one fetch.

A request never mixes two loads: it gets the table and meta of the namespace its user came
from. If the fetched table is already from a newer load (a switch landed between the two
reads), the user is read again, up to ``READ_ATTEMPTS`` times. ``feature_set`` does the same
with a read of the pointer in place of the user read.

Two ways to reach the keys, one per deployment:

* One Redis (``SingleRedis``): every command goes over one pipelined connection
  (``service.redis_connection``). A Lua script resolves the namespace pointer and reads the
  user's hash atomically, and says which namespace it read; another reads the movies and
  meta hashes the same way.
* A Redis Cluster (``ClusterRedis``, redis-py's cluster client): a script may touch one hash
  slot only, and a load's keys are spread over every master, so the user's hash is read
  (HGETALL) under the namespace a ``PointerCache`` holds, and the movies and meta hashes in one
  pipelined call. A request still costs one round trip, and the loader's cluster rules
  (``model.contracts.feature_layout``, "On a Redis Cluster") keep it on one load.

Every Redis failure, and any call slower than ``timeout`` seconds, becomes
``FeatureStoreUnavailable`` (on a cluster its subclass ``FeatureNodeUnavailable``: the node
holding the request's keys is down or its slots are moving, other users are still served);
callers never see a redis-py exception.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Protocol, TypeVar

from redis.exceptions import RedisClusterException, RedisError

from model.contracts import export_format, feature_layout
from model.contracts.feature_layout import FeatureSetMeta
from service.errors import (
    FeatureNodeUnavailable,
    FeaturesNotLoaded,
    FeatureStoreUnavailable,
    first_line,
)
from service.pointer_cache import PointerCache
from service.redis_connection import PipelinedConnection, cluster_client

log = logging.getLogger(__name__)

READ_ATTEMPTS = 3
"""Reads (of a user, or of the pointer for ``feature_set``) per call before giving up on a
feature set that keeps switching; a load takes far longer than a read, so a second attempt
always suffices in practice."""

_T = TypeVar("_T")
_NO_MOVIES: Mapping[str, Mapping[str, str]] = MappingProxyType({})
RawHash = Mapping[bytes, bytes]
_READ_USER_SHA = hashlib.sha1(feature_layout.READ_USER_SCRIPT.encode()).hexdigest()
_READ_MOVIES_SHA = hashlib.sha1(feature_layout.READ_MOVIES_SCRIPT.encode()).hexdigest()


@dataclass(frozen=True)
class FeatureRead:
    """What one request reads, all from the same loaded feature set."""

    user: dict[str, str] | None
    """``feature_layout.decode_user``: USER_FIELDS, what the user watched (WATCHED) and when
    (WATCHED_AT) as raw strings, from the one hash, and LAST_WATCHED as of the read; None for
    a user not in the feature set."""
    movies: Mapping[str, Mapping[str, str]]
    """movie_id string -> MOVIE_FEATURES as raw strings; read-only, shared between requests.
    Empty for a feature set loaded without movies; a movie not in it is unknown."""
    meta: FeatureSetMeta = FeatureSetMeta()
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


class Keys(Protocol):
    """How a deployment reaches a feature set's keys. Each method raises redis-py's errors
    (or TimeoutError) as they come; ``None`` namespace: nothing is loaded."""

    unavailable: type[FeatureStoreUnavailable]
    name: str  # for messages: "Redis", "Redis Cluster node"
    timeout: float  # seconds a call may take

    async def namespace(self) -> bytes | None: ...

    async def user(self, user_id: int | str) -> tuple[bytes | None, RawHash]: ...

    async def tables(self) -> tuple[bytes | None, RawHash, RawHash]: ...

    async def close(self) -> None: ...


class SingleRedis:
    """One Redis, over one pipelined connection; the scripts read pointer and hash together."""

    unavailable = FeatureStoreUnavailable
    name = "Redis"

    def __init__(self, url: str, prefix: str, timeout: float) -> None:
        self.timeout = timeout
        self._connection = PipelinedConnection(url, timeout)
        self._pointer = feature_layout.pointer_key(prefix)

    async def namespace(self) -> bytes | None:
        return await self._connection.call(b"GET", self._pointer)

    async def user(self, user_id: int | str) -> tuple[bytes | None, RawHash]:
        reply = await self._evalsha(feature_layout.READ_USER_SCRIPT, _READ_USER_SHA, [user_id])
        return (None, {}) if reply is None else (reply[0], _hash(reply[1]))

    async def tables(self) -> tuple[bytes | None, RawHash, RawHash]:
        reply = await self._evalsha(feature_layout.READ_MOVIES_SCRIPT, _READ_MOVIES_SHA, [])
        if reply is None:
            return None, {}, {}
        namespace, movies, meta = reply
        return namespace, _hash(movies), _hash(meta)

    async def close(self) -> None:
        self._connection.close()

    async def _evalsha(self, script: str, sha: str, args: list[int | str]) -> list | None:
        return await self._connection.evalsha(script, sha, [self._pointer], args)


class ClusterRedis:
    """A Redis Cluster through redis-py: the pointer kept by a ``PointerCache``, each call
    bounded by ``timeout``."""

    unavailable = FeatureNodeUnavailable
    name = "Redis Cluster node"

    def __init__(self, url: str, prefix: str, timeout: float, max_connections: int) -> None:
        feature_layout.check_cluster_prefix(prefix)
        self._client = cluster_client(url, timeout, max_connections)
        self.timeout = timeout
        self._pointer = PointerCache(self._client, feature_layout.pointer_key(prefix), timeout)

    async def namespace(self) -> bytes | None:
        return await self._pointer.namespace()

    async def user(self, user_id: int | str) -> tuple[bytes | None, RawHash]:
        namespace = await self._pointer.namespace()
        if namespace is None:
            return None, {}
        key = feature_layout.user_key(namespace.decode(), user_id)
        async with asyncio.timeout(self.timeout):
            return namespace, await self._client.hgetall(key)

    async def tables(self) -> tuple[bytes | None, RawHash, RawHash]:
        """The movies and meta hashes of the cached namespace, in one pipelined call.

        Every cluster load writes a meta hash, so an empty one means the namespace is gone
        (a copy of the pointer outlived it): forget the copy and fail this read.
        """
        namespace = await self._pointer.namespace()
        if namespace is None:
            return None, {}, {}
        text = namespace.decode()
        pipe = self._client.pipeline()
        pipe.hgetall(feature_layout.movies_key(text))
        pipe.hgetall(feature_layout.meta_key(text))
        async with asyncio.timeout(self.timeout):
            movies, meta = await pipe.execute()
        if not meta:
            self._pointer.forget()
            raise RedisError(f"feature set {text} is no longer in Redis; reading the current one")
        return namespace, movies, meta

    async def close(self) -> None:
        self._pointer.cancel()
        await self._client.aclose()


def last_watched(watched_at: str, now: float | None = None) -> str:
    """LAST_WATCHED for a user who last watched at ``watched_at`` (WATCHED_AT's raw string;
    "" or unreadable: "") as of ``now`` (default: the current time)."""
    try:
        gap = (time.time() if now is None else now) - float(watched_at)
        return export_format.last_watched_value(gap)
    except (ValueError, OverflowError):  # "", or not a finite number
        return ""


def _hash(flat: list) -> RawHash:
    """HGETALL's reply through Lua: a flat [field, value, ...] list."""
    return dict(zip(flat[::2], flat[1::2], strict=True))


@dataclass(frozen=True)
class _MovieTable:
    namespace: bytes
    movies: Mapping[str, Mapping[str, str]]
    info: FeatureSetInfo


class FeatureStore:
    """Reads user and movie features through ``keys``; close with ``aclose``."""

    def __init__(self, keys: Keys, prefix: str, retry_after: int = 1) -> None:
        self._keys = keys
        self._prefix = prefix
        self._retry_after = retry_after
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
        cluster: bool = False,
        max_connections: int = 32,
        retry_after: int = 1,
    ) -> FeatureStore:
        """A store for ``url``; connects lazily, so Redis may be down at startup.

        ``cluster``: ``url`` names any node of a Redis Cluster, whose slot map the client
        reads on first use; ``max_connections`` is then its pool size per node, and a burst
        beyond it fails at once. Raises ValueError for a cluster ``prefix`` holding a brace.
        """
        if cluster:
            keys: Keys = ClusterRedis(url, prefix, timeout, max_connections)
        else:
            keys = SingleRedis(url, prefix, timeout)
        return cls(keys, prefix, retry_after)

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
        raw, table = await self._with_table(lambda: self._keys.user(user_id))
        user = feature_layout.decode_user(raw)
        if user is not None:
            user[export_format.LAST_WATCHED] = last_watched(user[feature_layout.WATCHED_AT])
        return FeatureRead(user, table.movies, table.info.meta)

    async def feature_set(self) -> FeatureSetInfo:
        """The current feature set's meta and popular movies, from the in-process copy.

        One read of the pointer in the steady state (no user read); the shared table fetch
        too after a load. Raises as ``read`` does.
        """

        async def pointer() -> tuple[bytes | None, None]:
            return await self._keys.namespace(), None

        _, table = await self._with_table(pointer)
        return table.info

    async def namespace(self) -> str | None:
        """The namespace of the loaded feature set (None: nothing is loaded), as a read now
        would use it: for writing into a user's hash (``POST /events``' watched history).
        Raises FeatureStoreUnavailable as ``read`` does."""
        namespace = await self._call(self._keys.namespace())
        return None if namespace is None else namespace.decode()

    async def check(self) -> tuple[bool, bool]:
        """(Redis answers, a feature set is loaded), never raising."""
        try:
            namespace = await self._call(self._keys.namespace())
        except FeatureStoreUnavailable:
            return False, False
        return True, namespace is not None

    async def aclose(self) -> None:
        if self._fetching is not None:
            self._fetching.cancel()
        await self._keys.close()

    async def _with_table(
        self, read: Callable[[], Awaitable[tuple[bytes | None, _T]]]
    ) -> tuple[_T, _MovieTable]:
        """``read()``'s value and the movie table of the namespace it reports reading.

        The cached table when it is that namespace's, else the shared fetch; ``read`` again
        when the cache changed meanwhile or the fetch found another namespace.
        """
        for _ in range(READ_ATTEMPTS):
            cached = self._table
            namespace, value = await self._call(read())
            if namespace is None:
                raise self._not_loaded()
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
        namespace, raw, raw_meta = await self._keys.tables()
        if namespace is None:
            raise self._not_loaded()
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

    def _fetched(self, task: asyncio.Task[_MovieTable]) -> None:
        self._fetching = None
        if not task.cancelled():
            task.exception()  # retrieved here too: every waiter may have timed out already

    def _not_loaded(self) -> FeaturesNotLoaded:
        return FeaturesNotLoaded(
            f"no feature set under prefix {self._prefix!r}; run `afm-ctr load-features`",
            retry_after=self._retry_after,
        )

    async def _call(self, awaitable: Awaitable[_T]) -> _T:
        """``awaitable``'s result; its Redis errors and lateness as ``FeatureStoreUnavailable``."""
        try:
            return await awaitable
        except TimeoutError as exc:
            self.errors_total += 1
            raise self._keys.unavailable(
                f"{self._keys.name} did not answer within {self._keys.timeout:g}s",
                retry_after=self._retry_after,
            ) from exc
        except (RedisError, RedisClusterException) as exc:
            # The cluster client raises RedisClusterException (not a RedisError) for a slot
            # without a master or when no node answers.
            self.errors_total += 1
            message = first_line(exc)
            raise self._keys.unavailable(
                f"{self._keys.name} unavailable: {message}", retry_after=self._retry_after
            ) from exc
