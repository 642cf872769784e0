"""Writes impressions and clicks into Redis as ``model/contracts/event_log.py`` says the
service does (through its key functions), for the online CTR reader's and judge's tests."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import redis

from model.contracts import event_log

KEYS = event_log.parse_keys("k1:test-secret")


def write_impression(
    client: redis.Redis,
    prefix: str,
    *,
    user_id: int,
    version: int,
    arm: str,
    movies: Sequence[int],
    clicks: Iterable[int] = (),
    ts_ms: int | None = None,
    pipe: redis.client.Pipeline | None = None,
) -> str:
    """One logged ``/score`` reply (stream entry, then its hash with ``shown``) and a click
    on each of ``clicks``; ``ts_ms`` sets the stream id's time (default: Redis' clock).
    With ``pipe``, the commands are queued on it instead of sent."""
    now = ts_ms if ts_ms is not None else 1_800_000_000_000
    impression_id = event_log.issue_impression_id(KEYS, version, arm, user_id, now)
    data = event_log.impression_data(
        user_id,
        now,
        version,
        arm,
        {"gender": "F", "age": "25", "occupation": "7", "zip": "1", "watched": ""},
        ",".join(map(str, movies)).encode(),
        ",".join("0.5" for _ in movies).encode(),
        {name: [""] * len(movies) for name in event_log.MOVIE_LOG_FIELDS},
    )
    target = pipe if pipe is not None else client.pipeline(transaction=False)
    key = event_log.impression_key(prefix, impression_id)
    target.xadd(
        event_log.impressions_key(prefix, event_log.shard(user_id)),
        {"impression": impression_id, "data": data},
        id="*" if ts_ms is None else f"{ts_ms}-*",
    )
    target.hset(key, event_log.SHOWN_FIELD, ",".join(str(m) for m in movies))
    for movie in clicks:
        target.hsetnx(key, event_log.event_field(movie, "click"), now + 1000)
    if pipe is None:
        target.execute()
    return impression_id
