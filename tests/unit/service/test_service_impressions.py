"""What the impression log sends Redis: per shard one script call storing the contract's
stream entries and hashes of its impressions, in one pipelined write per batch; a failed
batch sent again; each impression counted as written or dropped. (The script itself runs
on a real Redis in tests/integration/serving/test_impressions.py.)"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Sequence
from types import MappingProxyType
from typing import Any, NamedTuple

import numpy as np
import orjson
import pytest
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from model.contracts import event_log
from service import impressions
from service.feature_store import FeatureRead
from service.impressions import WRITE_SCRIPT, ImpressionLog
from service.log_redis import Command

MOVIES = MappingProxyType(
    {
        "181": MappingProxyType({"title": "Return of the Jedi", "year": "1983", "genres": "A|S"}),
        "50": MappingProxyType({"title": "Star Wars", "year": "1977", "genres": "A"}),
    }
)
USER = {
    "gender": "F", "age": "25", "occupation": "7", "zip": "48067",
    "last_watched": "12", "watched": "50|181",
}  # fmt: skip
KEYS = {"k1": b"secret"}


class RecordingRedis:
    """A LogRedis that keeps what it is sent; its first ``failures`` tries raise, the others
    answer ``reply`` per command."""

    def __init__(self, reply: Any = 1, failures: int = 0, scripts: bool = True) -> None:
        self.sent: list[list[Command]] = []
        self.reply = reply
        self.failures = failures
        self.scripts: list[bytes] = [WRITE_SCRIPT] if scripts else []  # loaded

    async def run(self, commands: Sequence[Command]) -> list[Any]:
        self.sent.append(list(commands))
        if len(self.sent) <= self.failures:
            raise RedisConnectionError("Connection closed by Redis")
        if not self.scripts:
            return [ResponseError("NOSCRIPT No matching script.")] * len(commands)
        return [self.reply] * len(commands)

    async def load_script(self, script: bytes) -> None:
        self.scripts.append(script)

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


class Call(NamedTuple):
    """A WRITE_SCRIPT call, read: its stream, its three fixed arguments, and per impression
    (hash key, id, data, shown)."""

    stream: bytes
    fixed: tuple
    impressions: list[tuple[bytes, bytes, bytes, bytes]]


def _read(command: Command) -> Call:
    assert command[:2] == (b"EVALSHA", hashlib.sha1(WRITE_SCRIPT).hexdigest().encode())
    n = int(command[2]) - 1
    keys, fixed, rest = command[4 : 4 + n], command[4 + n : 7 + n], command[7 + n :]
    assert len(rest) == 3 * n
    return Call(
        command[3], tuple(fixed), [(k, *rest[3 * i : 3 * i + 3]) for i, k in enumerate(keys)]
    )


def test_an_impression_is_one_script_with_the_contracts_entry_and_hash() -> None:
    redis = RecordingRedis()
    log, impression_id = _logged(redis)
    _write(log)
    ((command,),) = redis.sent
    ts = int(impression_id.split(".")[5])
    parsed = event_log.parse_impression_id(impression_id, KEYS, ts, 3600)
    assert (parsed.version, parsed.arm, parsed.user_id) == (3, "stable", 42)
    call = _read(command)
    assert call.stream == event_log.impressions_key("afm:", event_log.shard(42)).encode()
    assert call.fixed == (b"1000", b"90000", event_log.SHOWN_FIELD.encode())
    ((key, logged_id, data, shown),) = call.impressions
    assert key == event_log.impression_key("afm:", impression_id).encode()
    assert (logged_id, shown) == (impression_id.encode(), b"181,7")
    data = orjson.loads(data)
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
    assert log.logged_total == 1 and not any(log.dropped.values())


def test_impressions_go_per_shard_a_bounded_number_per_script_call() -> None:
    """Each call's keys share one slot; a shard's impressions keep their order; an error
    reply drops its call's impressions, the others are logged."""
    users = [u for u in range(1000) if event_log.shard(u) in (1, 2)][:80]
    redis = RecordingRedis()
    log = ImpressionLog(KEYS, redis, prefix="afm:", max_length=1000, ttl_s=90_000, capacity=100)
    ids = [log.log(3, "stable", u, FeatureRead(USER, MOVIES), [50], [0], np.ones(1)) for u in users]
    _write(log)
    calls = [_read(command) for command in redis.sent[0]]
    assert max(len(c.impressions) for c in calls) == impressions.SCRIPT_IMPRESSIONS
    for call in calls:
        shards = {event_log.shard(i.decode().split(".")[4]) for _, i, _, _ in call.impressions}
        assert [event_log.impressions_key("afm:", s).encode() for s in shards] == [call.stream]
        for key, impression_id, _, _ in call.impressions:
            assert key == event_log.impression_key("afm:", impression_id.decode()).encode()
    logged = [i.decode() for call in calls for _, i, _, _ in call.impressions]
    assert sorted(logged) == sorted(ids)
    for shard in (1, 2):
        of_shard = [i for i in ids if event_log.shard(i.split(".")[4]) == shard]
        assert [i for i in logged if i in of_shard] == of_shard
    assert log.logged_total == len(users)

    redis = RecordingRedis(ResponseError("WRONGTYPE Operation against a key"))
    log, _ = _logged(redis)
    log.log(3, "stable", users[0], FeatureRead(USER, MOVIES), [50], [0], np.ones(1))
    _write(log)
    assert log.dropped["redis_error"] == 2 and log.logged_total == 0


def test_a_reply_written_already_is_taken_as_written() -> None:
    """The route passes the ids and probabilities as its reply wrote them."""
    log, _ = _logged(RecordingRedis(), shown=b"181,7", scores=b"0.4321,0.25")
    again, _ = _logged(RecordingRedis())
    (written,), (computed,) = log._buffer, again._buffer
    assert (written.shown, written.scores) == (computed.shown, computed.scores)
    assert (written.shown, written.scores) == (b"181,7", b"0.4321,0.25")


def test_a_user_without_features_and_an_empty_reply() -> None:
    redis = RecordingRedis()
    log, _ = _logged(redis, read=FeatureRead(None, MOVIES), order=[])
    _write(log)
    ((command,),) = redis.sent
    ((_, _, data, shown),) = _read(command).impressions
    data = event_log.read_impression_data(data)
    assert data.features == dict.fromkeys(event_log.USER_LOG_FIELDS, "")
    assert data.movie_ids == [] and data.movie_features == {"year": [], "genres": []}
    assert shown == b""


def test_an_error_reply_drops_its_impression_counted() -> None:
    redis = RecordingRedis(ResponseError("WRONGTYPE Operation against a key"))
    log, _ = _logged(redis)
    _write(log)
    assert log.logged_total == 0 and log.dropped["redis_error"] == 1
    assert log._last_error.startswith("WRONGTYPE")


def test_a_failed_batch_is_sent_again_and_counted_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(impressions, "RETRY_PAUSE_S", 0.0)
    redis = RecordingRedis(failures=2)
    log, _ = _logged(redis)
    _write(log)
    assert len(redis.sent) == 3 and redis.sent[0] == redis.sent[2]
    assert log.logged_total == 1 and not any(log.dropped.values())


def test_a_redis_without_the_script_gets_it_and_the_batch_again() -> None:
    redis = RecordingRedis(scripts=False)
    log, _ = _logged(redis)
    _write(log)
    assert redis.scripts == [WRITE_SCRIPT] and len(redis.sent) == 2
    assert log.logged_total == 1 and not any(log.dropped.values())


def test_a_batch_answered_loading_is_sent_again(monkeypatch: pytest.MonkeyPatch) -> None:
    """A restarted Redis answers LOADING while it reads its data back: not a drop."""
    monkeypatch.setattr(impressions, "RETRY_PAUSE_S", 0.0)
    redis = RecordingRedis(ResponseError("LOADING Redis is loading the dataset in memory"))
    log, _ = _logged(redis)

    async def main() -> None:
        log.start()
        while len(redis.sent) < 3:
            await asyncio.sleep(0.001)
        redis.reply = 1  # loaded
        await log.flush()
        await log.close(1.0)

    asyncio.run(main())
    assert len(redis.sent) >= 4 and redis.sent[0] == redis.sent[-1]
    assert log.logged_total == 1 and not any(log.dropped.values())


def test_a_batch_failing_past_the_retry_time_is_dropped_counted(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(impressions, "RETRY_PAUSE_S", 0.0)
    monkeypatch.setattr(impressions, "RETRY_S", 0.0)
    log, _ = _logged(RecordingRedis(failures=100))
    _write(log)
    assert log.logged_total == 0 and log.dropped["redis_error"] == 1
    assert log._last_error == "Connection closed by Redis"


def test_a_new_movie_table_is_read_for_the_next_impressions() -> None:
    redis = RecordingRedis()
    log, _ = _logged(redis)
    newer = MappingProxyType({"181": MappingProxyType({"year": "1984", "genres": "S"})})
    log.log(3, "stable", 42, FeatureRead(USER, newer), [181], [0], np.array([0.5], np.float32))
    _write(log)
    ((command,),) = redis.sent  # one user, one shard: one call
    years = [orjson.loads(data)["movies"]["year"] for _, _, data, _ in _read(command).impressions]
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


def test_an_entry_not_written_as_the_contract_says_is_refused() -> None:
    for data in (b"{}", b"[1]", b"not json", orjson.dumps({"movies": {"movie_id": [1]}})):
        with pytest.raises(ValueError, match="not an impression entry"):
            event_log.read_impression_data(data)
    short = {"user_id": 1, "ts": 1, "version": 1, "arm": "stable",
             "movies": {"movie_id": [1, 2], "score": [0.5]}}  # fmt: skip
    with pytest.raises(ValueError, match="differ in length"):
        event_log.read_impression_data(orjson.dumps(short))


def test_movie_features_of_sparse_large_ids_and_unknown_ones() -> None:
    """Ids as a user's own data may have them (a billion apart), and ids no table has."""
    table = {"5": {"year": "1990", "genres": "A"}, "1000000000": {"year": "2001", "genres": "B|C"}}
    columns = impressions._MovieColumns(table)
    assert orjson.loads(orjson.dumps(columns.of([5, 7, 1000000000, 2000000000]))) == {
        "year": ["1990", "", "2001", ""],
        "genres": ["A", "", "B|C", ""],
    }
    assert orjson.loads(orjson.dumps(impressions._MovieColumns({}).of([5]))) == {
        "year": [""],
        "genres": [""],
    }
