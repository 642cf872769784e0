"""Write user features to Redis as a fresh namespace, then switch the pointer to it.

The order gives readers (``READ_USER_SCRIPT``) a clean cut-over: the new namespace is complete
before one SET makes it current, and the previous namespace is deleted only after nobody can
resolve to it any more. A failed load deletes what it wrote and leaves the pointer alone.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Mapping

import numpy as np
import redis

from model import feature_layout
from model.dataset import USER_COLUMNS
from model.errors import AfmError, MalformedInput

log = logging.getLogger(__name__)

CHUNK = 2000  # hashes per pipeline round trip: ~100 KB of commands, few trips for ML-1M


def load_features(users: Mapping[str, np.ndarray], redis_url: str, prefix: str) -> int:
    """Load one hash per user under a new namespace of ``prefix``; return the user count.

    ``users`` maps USER_COLUMNS to equal-length arrays of raw strings (row i is one user).
    Raises MalformedInput for inconsistent columns or duplicate user ids, AfmError when
    Redis fails (after removing the half-written namespace; the pointer is untouched).
    """
    columns = _columns(users)
    user_ids = columns["user_id"]
    try:
        client = redis.Redis.from_url(redis_url, socket_connect_timeout=5, socket_timeout=30)
    except ValueError as exc:
        raise AfmError(f"invalid Redis URL {redis_url!r}: {exc}") from None

    namespace = feature_layout.namespace(prefix, _new_generation())
    try:
        try:
            _write_namespace(client, namespace, columns)
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
    return len(user_ids)


def _new_generation() -> str:
    """Milliseconds since the epoch (sorts by load time) plus a random tag (two loads per ms)."""
    return f"{time.time_ns() // 1_000_000}-{secrets.token_hex(3)}"


def _columns(users: Mapping[str, np.ndarray]) -> dict[str, list[str]]:
    missing = [c for c in USER_COLUMNS if c not in users]
    if missing:
        raise MalformedInput(f"user table lacks column(s) {', '.join(missing)}")
    columns = {c: [str(v) for v in np.asarray(users[c]).tolist()] for c in USER_COLUMNS}
    lengths = {c: len(v) for c, v in columns.items()}
    if len(set(lengths.values())) != 1:
        raise MalformedInput(f"user columns differ in length: {lengths}")
    ids = columns["user_id"]
    if len(set(ids)) != len(ids):
        raise MalformedInput("user table has duplicate user_id values")
    return columns


def _write_namespace(client: redis.Redis, namespace: str, columns: dict[str, list[str]]) -> None:
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
