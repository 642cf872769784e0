"""Write the impression and event log into Redis exactly as ``model/contracts/event_log.py``
says the service does, for the exporter's and trainer's tests."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import pyarrow.parquet as pq
import redis

from model.contracts import event_log
from model.data.click_log_files import TMP_PREFIX

KEYS = event_log.parse_keys("k1:test-secret")
HOUR_MS = 3_600_000
BASE_MS = 1_700_000_000_000  # 2023-11-14T22:13:20Z: every window long closed


def users_in_shard(shard: int, count: int) -> list[int]:
    """``count`` user ids whose entries land in impression stream ``shard``."""
    found = [u for u in range(1, 10_000) if event_log.shard(u) == shard]
    return found[:count]


def log_impression(
    client: redis.Redis,
    prefix: str,
    *,
    user_id: int,
    ts_ms: int,
    movies: Sequence[int],
    user_features: Mapping[str, str],
    movie_features: Mapping[int, Mapping[str, str]] | None = None,
    version: int = 1,
    arm: str = "stable",
    clicks: Iterable[int] = (),
) -> str:
    """One logged /score reply: its stream entry and its hash, then a click event on each of
    ``clicks``; returns the impression id."""
    impression_id = event_log.issue_impression_id(KEYS, version, arm, user_id, ts_ms)
    shown = [dict((movie_features or {}).get(m, default_movie(m))) for m in movies]
    data = event_log.impression_data(
        user_id,
        ts_ms,
        version,
        arm,
        dict(user_features),
        ",".join(map(str, movies)).encode(),
        ",".join(str(round(0.9 - 0.1 * p, 4)) for p in range(len(movies))).encode(),
        {name: [m.get(name, "") for m in shown] for name in event_log.MOVIE_LOG_FIELDS},
    )
    shard = event_log.shard(user_id)
    hash_key = event_log.impression_key(prefix, impression_id)
    pipe = client.pipeline(transaction=True)
    pipe.xadd(
        event_log.impressions_key(prefix, shard),
        {"impression": impression_id, "data": data},
    )
    pipe.hset(hash_key, event_log.SHOWN_FIELD, ",".join(str(m) for m in movies))
    pipe.expire(hash_key, event_log.ATTRIBUTION_WINDOW_S + event_log.ATTRIBUTION_TTL_GRACE_S)
    pipe.execute()
    for movie in clicks:
        log_event(client, prefix, impression_id, user_id, movie, "click", ts_ms + 1000)
    return impression_id


def log_event(
    client: redis.Redis,
    prefix: str,
    impression_id: str,
    user_id: int,
    movie_id: int,
    event_type: str,
    ts_ms: int,
) -> None:
    """One accepted event: its stream entry, and its field in the impression's hash if it is
    the first of its kind (HSETNX)."""
    pipe = client.pipeline(transaction=True)
    pipe.xadd(
        event_log.events_key(prefix, event_log.shard(user_id)),
        {"impression": impression_id, "movie_id": movie_id, "type": event_type, "ts": ts_ms},
    )
    pipe.hsetnx(
        event_log.impression_key(prefix, impression_id),
        event_log.event_field(movie_id, event_type),
        ts_ms,
    )
    pipe.execute()


def default_movie(movie: int) -> dict[str, str]:
    genres = ("Action", "Comedy", "Drama", "Horror")
    return {"year": str(1980 + movie % 20), "genres": f"{genres[movie % 4]}|{genres[movie % 3]}"}


def user_features(user_id: int, watched: str = "", last_watched: str = "") -> dict[str, str]:
    return {
        "gender": "MF"[user_id % 2],
        "age": str(18 + user_id % 5 * 7),
        "occupation": str(user_id % 21),
        "zip": f"{10000 + user_id}",
        "last_watched": last_watched,
        "watched": watched,
    }


def exported_rows(out: Path) -> list[dict]:
    """Every row of every complete file under ``out``, as dicts."""
    rows = []
    for path in sorted(out.glob("hour=*/*.parquet")):
        if not path.name.startswith(TMP_PREFIX):  # a file an exporter is still writing
            rows.extend(pq.read_table(path).to_pylist())
    return rows
