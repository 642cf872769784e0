"""Write user and movie features and the load's meta to Redis as a fresh namespace, then
switch the pointer to it.

The order gives readers (``READ_USER_SCRIPT``, ``READ_MOVIES_SCRIPT``) a clean cut-over: the
new namespace, users, movies and meta alike, is complete before one SET makes it current, so
they switch together; the previous namespace is deleted only after nobody can resolve to it
any more. A failed load deletes what it wrote and leaves the pointer alone.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from types import MappingProxyType

import numpy as np
import redis

from model import feature_layout
from model.dataset import MOVIE_COLUMNS, USER_COLUMNS
from model.errors import AfmError, MalformedInput

log = logging.getLogger(__name__)

CHUNK = 2000  # hashes (or movie fields) per pipeline round trip: ~100 KB of commands


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
) -> tuple[int, int]:
    """Load one hash per user, one movies hash and one meta hash under a new namespace of
    ``prefix``.

    ``users`` maps USER_COLUMNS and ``movies`` maps MOVIE_COLUMNS to equal-length arrays of
    raw strings (row i is one user or movie; a movie table may have no rows). The meta hash
    (``feature_layout.FeatureSetMeta``) records ``source``, ``labels`` (field -> raw value ->
    label), ``popular`` movie ids, ``sample_users`` ids, both counts, the users per value of
    each user feature (``user_values``) and the load time (UTC).
    Returns (user count, movie count). Raises MalformedInput for inconsistent columns,
    duplicate ids, labels that are not strings, or popular or sample ids that are not
    strings of the tables, before touching Redis; AfmError when Redis fails (after removing
    the half-written namespace; the pointer is untouched).
    """
    user_columns = _columns(users, USER_COLUMNS, "user")
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
    try:
        client = redis.Redis.from_url(redis_url, socket_connect_timeout=5, socket_timeout=30)
    except ValueError as exc:
        raise AfmError(f"invalid Redis URL {redis_url!r}: {exc}") from None

    namespace = feature_layout.namespace(prefix, _new_generation())
    try:
        try:
            _write_users(client, namespace, user_columns)
            _write_movies(client, namespace, movie_columns)
            _write_meta(client, namespace, meta)
            previous = client.set(feature_layout.pointer_key(prefix), namespace, get=True)
        except redis.RedisError as exc:
            _delete_namespace_quietly(client, namespace)
            raise AfmError(f"loading features into {redis_url} failed: {_one_line(exc)}") from None
        if previous is not None and previous.decode() != namespace:
            try:
                _delete_namespace(client, previous.decode())
            except redis.RedisError as exc:
                # The new feature set is live; only the old keys leak. Say so, don't fail.
                log.warning("could not delete previous namespace %s: %s", previous, _one_line(exc))
    finally:
        client.close()
    return len(user_columns["user_id"]), len(movie_columns["movie_id"])


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


def _write_users(client: redis.Redis, namespace: str, columns: dict[str, list[str]]) -> None:
    pipe = client.pipeline(transaction=False)
    rows = zip(*(columns[f] for f in feature_layout.USER_FIELDS), strict=True)
    for i, (user_id, values) in enumerate(zip(columns["user_id"], rows, strict=True), start=1):
        features = dict(zip(feature_layout.USER_FIELDS, values, strict=True))
        pipe.hset(
            feature_layout.user_key(namespace, user_id),
            mapping=feature_layout.encode_user(features),
        )
        if i % CHUNK == 0:
            pipe.execute()
    pipe.execute()


def _write_movies(client: redis.Redis, namespace: str, columns: dict[str, list[str]]) -> None:
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


def _write_meta(client: redis.Redis, namespace: str, meta: feature_layout.FeatureSetMeta) -> None:
    client.hset(feature_layout.meta_key(namespace), mapping=feature_layout.encode_meta(meta))


def _delete_namespace(client: redis.Redis, namespace: str) -> None:
    """UNLINK every key of ``namespace`` (non-blocking on the server), pipelined per SCAN page."""
    pipe = client.pipeline(transaction=False)
    pending = 0
    for key in client.scan_iter(match=_glob_escape(namespace) + "*", count=CHUNK):
        pipe.unlink(key)
        pending += 1
        if pending == CHUNK:
            pipe.execute()
            pending = 0
    pipe.execute()


def _delete_namespace_quietly(client: redis.Redis, namespace: str) -> None:
    try:
        _delete_namespace(client, namespace)
    except redis.RedisError as exc:
        log.warning("could not remove half-written namespace %s: %s", namespace, _one_line(exc))


def _glob_escape(text: str) -> str:
    return "".join("\\" + ch if ch in "*?[]\\" else ch for ch in text)


def _one_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
