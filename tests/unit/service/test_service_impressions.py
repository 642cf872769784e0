"""What the impression log sends Redis: the contract's stream entry and hash per impression,
in one pipelined write per batch, each impression counted as written or dropped."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from types import MappingProxyType
from typing import Any

import numpy as np
import orjson
from redis.exceptions import ResponseError

from model.contracts import event_log
from service.feature_store import FeatureRead
from service.impressions import ImpressionLog
from service.log_redis import Command

MOVIES = MappingProxyType(
    {
        "181": MappingProxyType({"title": "Return of the Jedi", "year": "1983", "genres": "A|S"}),
        "50": MappingProxyType({"title": "Star Wars", "year": "1977", "genres": "A"}),
    }
)
USER = {"gender": "F", "age": "25", "occupation": "7", "zip": "48067", "watched": "50|181"}
KEYS = {"k1": b"secret"}


class RecordingRedis:
    """A LogRedis that keeps what it is sent and answers OK, or ``reply`` per command."""

    def __init__(self, reply: Any = b"OK") -> None:
        self.sent: list[list[Command]] = []
        self.reply = reply

    async def run(self, commands: Sequence[Command]) -> list[Any]:
        self.sent.append(list(commands))
        return [self.reply] * len(commands)

    async def close(self) -> None:
        pass


def _logged(redis: RecordingRedis, **changes: object) -> tuple[ImpressionLog, str]:
    """An impression log over ``redis`` that logged one reply."""
    arguments: dict = {
        "version": 3,
        "arm": "stable",
        "user_id": 42,
        "read": FeatureRead(USER, MOVIES),
        "movie_ids": [7, 181, 50],
        "order": [1, 0],
        "probability": np.array([0.25, 0.43209999799728394, 0.1], np.float32),
        **changes,
    }
    log = ImpressionLog(KEYS, redis, prefix="afm:", max_length=1000, ttl_s=90_000, capacity=10)
    return log, log.log(**arguments)


def _write(log: ImpressionLog) -> None:
    async def main() -> None:
        log.start()
        await log.flush()
        await log.close(1.0)

    asyncio.run(main())


def test_an_impression_is_the_contracts_entry_and_hash() -> None:
    redis = RecordingRedis()
    log, impression_id = _logged(redis)
    _write(log)
    ((xadd, hset, expire),) = [redis.sent[0][i : i + 3] for i in range(0, len(redis.sent[0]), 3)]
    ts = int(impression_id.split(".")[5])
    parsed = event_log.parse_impression_id(impression_id, KEYS, ts, 3600)
    assert (parsed.version, parsed.arm, parsed.user_id) == (3, "stable", 42)
    assert xadd[:8] == (
        b"XADD", event_log.impressions_key("afm:", event_log.shard(42)), b"MAXLEN", b"~",
        1000, b"*", b"impression", impression_id,
    )  # fmt: skip
    data = orjson.loads(xadd[9])
    assert list(data) == list(event_log.IMPRESSION_FIELDS)
    assert data == {
        "user_id": 42,
        "ts": ts,
        "version": 3,
        "arm": "stable",
        "features": USER,
        "movies": {
            "movie_id": [181, 7],
            "score": [0.4321, 0.25],
            "year": ["1983", ""],
            "genres": ["A|S", ""],
        },
    }
    key = event_log.impression_key("afm:", impression_id)
    assert hset == (b"HSET", key, event_log.SHOWN_FIELD, b"181,7")
    assert expire == (b"EXPIRE", key, 90_000)
    assert log.logged_total == 1 and not any(log.dropped.values())


def test_a_reply_written_already_is_taken_as_written() -> None:
    """The route passes the ids and probabilities as its reply wrote them."""
    log, _ = _logged(RecordingRedis(), shown=b"181,7", scores=b"0.4321,0.25")
    again, _ = _logged(RecordingRedis())
    assert log._buffer[0][6:8] == again._buffer[0][6:8] == (b"181,7", b"0.4321,0.25")


def test_a_user_without_features_and_an_empty_reply() -> None:
    redis = RecordingRedis()
    log, _ = _logged(redis, read=FeatureRead(None, MOVIES), order=[])
    _write(log)
    xadd, hset, _ = redis.sent[0]
    data = event_log.read_impression_data(xadd[9])
    assert data.features == dict.fromkeys(event_log.USER_LOG_FIELDS, "")
    assert data.movie_ids == [] and data.movie_features == {"year": [], "genres": []}
    assert hset[3] == b""


def test_an_error_reply_drops_its_impression_counted() -> None:
    redis = RecordingRedis(ResponseError("WRONGTYPE Operation against a key"))
    log, _ = _logged(redis)
    _write(log)
    assert log.logged_total == 0 and log.dropped["redis_error"] == 1
    assert log._last_error.startswith("WRONGTYPE")


def test_a_new_movie_table_is_read_for_the_next_impressions() -> None:
    redis = RecordingRedis()
    log, _ = _logged(redis)
    newer = MappingProxyType({"181": MappingProxyType({"year": "1984", "genres": "S"})})
    log.log(3, "stable", 42, FeatureRead(USER, newer), [181], [0], np.array([0.5], np.float32))
    _write(log)
    years = [orjson.loads(command[9])["movies"]["year"] for command in redis.sent[0][::3]]
    assert years == [["1983", ""], ["1984"]]


def test_the_previous_entry_format_is_still_read() -> None:
    """Streams written before the columns: a list of movie objects."""
    data = {
        "user_id": 42, "ts": 1, "version": 3, "arm": "stable", "features": USER,
        "movies": [
            {"movie_id": 7, "position": 1, "score": 0.25, "features": {"year": ""}},
            {"movie_id": 181, "position": 0, "score": 0.5, "features": {"year": "1983"}},
        ],
    }  # fmt: skip
    read = event_log.read_impression_data(orjson.dumps(data))
    assert read.movie_ids == [181, 7] and read.scores == [0.5, 0.25]
    assert read.movie_features == {"year": ["1983", ""], "genres": [None, None]}  # not logged
