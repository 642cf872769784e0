"""Write user and movie features and the load's meta to Redis as a fresh namespace, then
switch the pointer to it.

The order gives readers (``READ_USER_SCRIPT``, ``READ_MOVIES_SCRIPT``) a clean cut-over: the
new namespace, users, movies and meta alike, is complete before one SET makes it current, so
they switch together; the previous namespace is deleted only after nobody can resolve to it
any more. A failed load deletes what it wrote and leaves the pointer alone.

On a Redis Cluster (``cluster=True``) readers cannot resolve the pointer and read in one
script, so the loader keeps the cluster rules of ``model.contracts.feature_layout``: it waits until
every master's replicas hold the new namespace, and then the pointer, before it counts as
loaded, and retires the previous namespace with a TTL (``retire_after``) instead of deleting
it, since a reader may still be using the namespace it resolved a moment ago.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from types import MappingProxyType

import numpy as np
import redis
from redis.cluster import RedisCluster

from model.contracts import feature_layout
from model.data.dataset import MOVIE_COLUMNS, USER_COLUMNS
from model.errors import AfmError, MalformedInput, one_line

log = logging.getLogger(__name__)

# redis-py's cluster client raises RedisClusterException, not a RedisError, e.g. when no
# node answers or a slot has no master.
_FAILURES = (redis.RedisError, redis.exceptions.RedisClusterException)

CHUNK = 2000  # hashes (or movie fields) per pipeline round trip: ~100 KB of commands
REPLICATION_TIMEOUT_MS = 10_000  # how long a master's replicas may take to catch up


def load_features(
    users: Mapping[str, np.ndarray],
    movies: Mapping[str, np.ndarray],
    redis_url: str,
    prefix: str,
    *,
    source: str = "",
    labels: Mapping[str, Mapping[str, str]] | None = None,
    popular: Sequence[str] = (),
    sample_users: Sequence[str] = (),
    watched: Sequence[str] | np.ndarray | None = None,
    watched_at: Sequence[str] | np.ndarray | None = None,
    cluster: bool = False,
    retire_after: int = feature_layout.CLUSTER_RETIRE_SECONDS,
) -> tuple[int, int]:
    """Load one hash per user, one movies hash and one meta hash under a new namespace of
    ``prefix``.

    ``users`` maps USER_COLUMNS and ``movies`` maps MOVIE_COLUMNS to equal-length arrays of
    raw strings (row i is one user or movie; a movie table may have no rows). The meta hash
    (``feature_layout.FeatureSetMeta``) records ``source``, ``labels`` (field -> raw value ->
    label), ``popular`` movie ids, ``sample_users`` ids, both counts, the users per value of
    each user feature (``user_values``) and the load time (UTC).
    ``watched``: per user row, the raw history string (``feature_layout.WATCHED``, e.g.
    ``FeatureSet.watched``), written into the user's hash; None writes no history.
    ``watched_at``: likewise when the user watched the latest of them
    (``feature_layout.WATCHED_AT``, ``FeatureSet.watched_at``; "" writes none for that user).
    ``cluster``: ``redis_url`` names any node of a Redis Cluster; the previous namespace's
    keys then expire ``retire_after`` seconds after the switch instead of going at once.
    Returns (user count, movie count). Raises MalformedInput for inconsistent columns,
    duplicate ids, labels that are not strings, or popular or sample ids that are not
    strings of the tables, before touching Redis; AfmError when Redis fails or, on a
    cluster, a replica does not catch up (after removing the half-written namespace; the
    pointer is untouched), or for a cluster prefix holding a brace.
    """
    user_columns = _columns(users, USER_COLUMNS, "user")
    optional = {feature_layout.WATCHED: watched, feature_layout.WATCHED_AT: watched_at}
    for name, values in optional.items():
        if values is not None:
            user_columns[name] = _per_user(values, len(user_columns["user_id"]), name)
    movie_columns = _columns(movies, MOVIE_COLUMNS, "movie")
    meta = feature_layout.FeatureSetMeta(
        source=_string(source, "source"),
        users=len(user_columns["user_id"]),
        movies=len(movie_columns["movie_id"]),
        loaded_at=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        labels=_labels(labels or {}),
        popular=_ids(popular, movie_columns["movie_id"], "popular movie"),
        sample_users=_ids(sample_users, user_columns["user_id"], "sample user"),
        user_values=_value_counts(user_columns),
    )
    if cluster:
        try:
            feature_layout.check_cluster_prefix(prefix)
        except ValueError as exc:
            raise AfmError(str(exc)) from None
    client = _connect(redis_url, cluster)

    namespace = feature_layout.namespace(prefix, _new_generation())
    try:
        try:
            _write_users(client, namespace, user_columns)
            _write_movies(client, namespace, movie_columns)
            _write_meta(client, namespace, meta)
            if cluster:
                _wait_for_replicas(client)
            previous = client.set(feature_layout.pointer_key(prefix), namespace, get=True)
        except _FAILURES as exc:
            _delete_namespace_quietly(client, namespace)
            raise AfmError(f"loading features into {redis_url} failed: {one_line(exc)}") from None
        _remove_previous(client, previous, namespace, cluster, retire_after)
    finally:
        client.close()
    return len(user_columns["user_id"]), len(movie_columns["movie_id"])


def _connect(redis_url: str, cluster: bool) -> redis.Redis | RedisCluster:
    """A client for one Redis, or for the cluster ``redis_url``'s node belongs to."""
    try:
        if not cluster:
            return redis.Redis.from_url(redis_url, socket_connect_timeout=5, socket_timeout=30)
        return RedisCluster.from_url(redis_url, socket_connect_timeout=5, socket_timeout=30)
    except ValueError as exc:
        raise AfmError(f"invalid Redis URL {redis_url!r}: {exc}") from None
    except _FAILURES as exc:  # the cluster client asks for the slot map at once
        raise AfmError(f"no Redis Cluster at {redis_url}: {one_line(exc)}") from None


def _remove_previous(
    client: redis.Redis | RedisCluster,
    previous: bytes | None,
    current: str,
    cluster: bool,
    retire_after: int,
) -> None:
    """Delete (one Redis) or retire (cluster) the namespace the switch replaced.

    The new feature set is live whatever happens here: a failure only leaves the old keys in
    place, so it is logged, not raised.
    """
    try:
        if cluster:
            # A switch a failover could undo must not retire what it would bring back.
            _wait_for_replicas(client)
        if previous is None or previous.decode() == current:
            return
        if cluster:
            _retire_namespace(client, previous.decode(), retire_after)
        else:
            _delete_namespace(client, previous.decode())
    except _FAILURES as exc:
        log.warning(
            "switched to %s, but the previous namespace %s stays: %s",
            current,
            previous.decode() if previous is not None else "(none)",
            one_line(exc),
        )


def _new_generation() -> str:
    """Milliseconds since the epoch (sorts by load time) plus a random tag (two loads per ms)."""
    return f"{time.time_ns() // 1_000_000}-{secrets.token_hex(3)}"


def _columns(
    table: Mapping[str, np.ndarray], names: tuple[str, ...], what: str
) -> dict[str, list[str]]:
    """``names`` -> lists of strings; the first name is the id column and must be unique."""
    missing = [c for c in names if c not in table]
    if missing:
        raise MalformedInput(f"{what} table lacks column(s) {', '.join(missing)}")
    columns = {c: [str(v) for v in np.asarray(table[c]).tolist()] for c in names}
    lengths = {c: len(v) for c, v in columns.items()}
    if len(set(lengths.values())) != 1:
        raise MalformedInput(f"{what} columns differ in length: {lengths}")
    ids = columns[names[0]]
    if len(set(ids)) != len(ids):
        raise MalformedInput(f"{what} table has duplicate {names[0]} values")
    return columns


def _per_user(column: Sequence[str] | np.ndarray, users: int, name: str) -> list[str]:
    """``column`` as a list of strings, one per user row."""
    values = np.asarray(column, dtype=object).tolist()
    if len(values) != users:
        raise MalformedInput(f"{name} has {len(values)} values for {users} users")
    for value in values:
        if not isinstance(value, str):
            raise MalformedInput(f"{name} value {value!r} ({type(value).__name__}) is not a string")
    return values


def _string(value: object, what: str) -> str:
    if not isinstance(value, str):
        raise MalformedInput(f"{what} must be a string, got {value!r}")
    return value


def _labels(labels: Mapping[str, Mapping[str, str]]) -> Mapping[str, Mapping[str, str]]:
    """A read-only copy of ``labels``: field -> raw value -> label, all strings."""
    if not isinstance(labels, Mapping):
        raise MalformedInput(f"labels must map field -> value -> label, got {labels!r}")
    copy = {}
    for name, values in labels.items():
        if not isinstance(values, Mapping):
            raise MalformedInput(f"labels of {name!r} must map value -> label, got {values!r}")
        for text in (name, *values.keys(), *values.values()):
            if not isinstance(text, str):
                raise MalformedInput(
                    f"labels of {name!r}: {text} ({type(text).__name__}) is not a string"
                )
        copy[name] = MappingProxyType(dict(values))
    return MappingProxyType(copy)


def _ids(ids: Sequence[str], known: list[str], what: str) -> tuple[str, ...]:
    """``ids`` as a tuple; each must be a string of ``known``."""
    if isinstance(ids, str):  # a str is a Sequence[str] of its characters
        raise MalformedInput(f"{what} ids must be a sequence of strings, got {ids!r}")
    table = set(known)
    for value in ids:
        if not isinstance(value, str):
            raise MalformedInput(f"{what} id {value} ({type(value).__name__}) is not a string")
        if value not in table:
            raise MalformedInput(f"{what} id {value!r} is not in the table")
    return tuple(ids)


def _value_counts(columns: dict[str, list[str]]) -> Mapping[str, Mapping[str, int]]:
    """USER_FIELDS -> raw value -> users with it, values sorted (a stable meta hash)."""
    return MappingProxyType(
        {
            name: MappingProxyType(dict(sorted(Counter(columns[name]).items())))
            for name in feature_layout.USER_FIELDS
        }
    )


def _write_users(
    client: redis.Redis | RedisCluster, namespace: str, columns: dict[str, list[str]]
) -> None:
    """One hash per user: USER_FIELDS, and WATCHED and WATCHED_AT when ``columns`` has them."""
    pipe = client.pipeline(transaction=False)
    optional = (feature_layout.WATCHED, feature_layout.WATCHED_AT)
    names = [f for f in (*feature_layout.USER_FIELDS, *optional) if f in columns]
    rows = zip(*(columns[f] for f in names), strict=True)
    for i, (user_id, values) in enumerate(zip(columns["user_id"], rows, strict=True), start=1):
        features = dict(zip(names, values, strict=True))
        pipe.hset(
            feature_layout.user_key(namespace, user_id),
            mapping=feature_layout.encode_user(features),
        )
        if i % CHUNK == 0:
            pipe.execute()
    pipe.execute()


def _write_movies(
    client: redis.Redis | RedisCluster, namespace: str, columns: dict[str, list[str]]
) -> None:
    """One hash, field = movie_id, value = encode_movie(row): HSETs of CHUNK fields, pipelined."""
    key, ids = feature_layout.movies_key(namespace), columns["movie_id"]
    pipe = client.pipeline(transaction=False)
    for start in range(0, len(ids), CHUNK):
        chunk = range(start, min(start + CHUNK, len(ids)))
        pipe.hset(
            key,
            mapping={
                ids[i]: feature_layout.encode_movie(
                    {f: columns[f][i] for f in feature_layout.MOVIE_FEATURES}
                )
                for i in chunk
            },
        )
    pipe.execute()


def _write_meta(
    client: redis.Redis | RedisCluster, namespace: str, meta: feature_layout.FeatureSetMeta
) -> None:
    client.hset(feature_layout.meta_key(namespace), mapping=feature_layout.encode_meta(meta))


def _wait_for_replicas(client: RedisCluster) -> None:
    """Return once every master's replicas hold all this client has written to it.

    WAIT counts the writes of its own connection: this loader is single-threaded, so each
    node's pool holds the one connection that wrote. A master without replicas is skipped.
    Raises redis.RedisError naming a master whose replica did not catch up in time.
    """
    for node in client.get_primaries():
        info = client.info("replication", target_nodes=node)
        expected = int(info.get("connected_slaves", 0))
        if expected == 0:
            continue
        acked = client.execute_command("WAIT", expected, REPLICATION_TIMEOUT_MS, target_nodes=node)
        if acked < expected:
            raise redis.RedisError(
                f"{acked} of {expected} replica(s) of {node.name} acknowledged the load "
                f"within {REPLICATION_TIMEOUT_MS} ms"
            )


def _delete_namespace(client: redis.Redis | RedisCluster, namespace: str) -> None:
    """UNLINK every key of ``namespace`` (non-blocking on the server), pipelined per SCAN page
    (on a cluster, SCAN walks every master)."""
    _for_each_key(client, namespace, lambda pipe, key: pipe.unlink(key))


def _retire_namespace(client: RedisCluster, namespace: str, seconds: int) -> None:
    """Give every key of ``namespace`` a TTL of ``seconds``; Redis removes them then."""
    _for_each_key(client, namespace, lambda pipe, key: pipe.expire(key, seconds))


def _for_each_key(
    client: redis.Redis | RedisCluster,
    namespace: str,
    command: Callable[[redis.client.Pipeline, bytes], object],
) -> None:
    pipe = client.pipeline(transaction=False)
    pending = 0
    for key in client.scan_iter(match=_glob_escape(namespace) + "*", count=CHUNK):
        command(pipe, key)
        pending += 1
        if pending == CHUNK:
            pipe.execute()
            pending = 0
    pipe.execute()


def _delete_namespace_quietly(client: redis.Redis | RedisCluster, namespace: str) -> None:
    try:
        _delete_namespace(client, namespace)
    except _FAILURES as exc:
        log.warning("could not remove half-written namespace %s: %s", namespace, one_line(exc))


def _glob_escape(text: str) -> str:
    return "".join("\\" + ch if ch in "*?[]\\" else ch for ch in text)
