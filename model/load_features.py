"""Write user and movie features to Redis as a fresh namespace, then switch the pointer to it.

The order gives readers (``READ_USER_SCRIPT``, ``READ_MOVIES_SCRIPT``) a clean cut-over: the
new namespace, users and movies alike, is complete before one SET makes it current, so users
and movies switch together; the previous namespace is deleted only after nobody can resolve
to it any more. A failed load deletes what it wrote and leaves the pointer alone.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Mapping

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
) -> tuple[int, int]:
    """Load one hash per user and one movies hash under a new namespace of ``prefix``.

    ``users`` maps USER_COLUMNS and ``movies`` maps MOVIE_COLUMNS to equal-length arrays of
    raw strings (row i is one user or movie; a movie table may have no rows). Returns
    (user count, movie count). Raises MalformedInput for inconsistent columns or duplicate
    ids, before touching Redis; AfmError when Redis fails (after removing the half-written
    namespace; the pointer is untouched).
    """
    user_columns = _columns(users, USER_COLUMNS, "user")
    movie_columns = _columns(movies, MOVIE_COLUMNS, "movie")
    try:
        client = redis.Redis.from_url(redis_url, socket_connect_timeout=5, socket_timeout=30)
    except ValueError as exc:
        raise AfmError(f"invalid Redis URL {redis_url!r}: {exc}") from None

    namespace = feature_layout.namespace(prefix, _new_generation())
    try:
        try:
            _write_users(client, namespace, user_columns)
            _write_movies(client, namespace, movie_columns)
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
