"""What the impression writer sends Redis: the contract's stream entry and hash, the same
bytes whether spliced as RESP (one Redis) or given as commands (a cluster)."""

from __future__ import annotations

import asyncio
from types import MappingProxyType

import numpy as np
import orjson

from model.contracts import event_log
from service.feature_store import FeatureRead
from service.impression_writer import (
    USER_LOG_FIELDS,
    Record,
    Serialiser,
    frame,
    movie_table,
    read_frame,
)
from service.impressions import ImpressionLog, WriterConfig
from service.redis_connection import encode

MOVIES = MappingProxyType(
    {
        "181": MappingProxyType({"title": "Return of the Jedi", "year": "1983", "genres": "A|S"}),
        "50": MappingProxyType({"title": "Star Wars", "year": "1977", "genres": "A"}),
    }
)
USER = {"gender": "F", "age": "25", "occupation": "7", "zip": "48067", "watched": "50|181"}
CONFIG = WriterConfig("redis://127.0.0.1:1/0", 1.0, False, 1, "afm:", 1000, 90_000)


def _record(**changes: object) -> Record:
    """The writer's record of a reply as ``ImpressionLog.log`` takes it, table token 1."""
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
    log = ImpressionLog({"k1": b"secret"}, CONFIG, capacity=10)
    impression_id = log.log(**arguments)
    (pending, movies), *_ = log._buffer
    assert movies is arguments["read"].movies and pending[0] == impression_id
    return (*pending, 1)


def _serialiser() -> Serialiser:
    serialiser = Serialiser("afm:", 1000, 90_000)
    serialiser.add_table(1, movie_table(MOVIES))
    return serialiser


def test_an_impression_is_the_contracts_entry_and_hash() -> None:
    record = _record()
    impression_id, ts = record[0], record[2]
    parsed = event_log.parse_impression_id(impression_id, {"k1": b"secret"}, ts, 3600)
    assert (parsed.version, parsed.arm, parsed.user_id, parsed.issued_ms) == (3, "stable", 42, ts)
    xadd, hset, expire = _serialiser().commands(record)
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
        "movies": [
            {
                "movie_id": 181,
                "features": {"year": "1983", "genres": "A|S"},
                "position": 0,
                "score": 0.4321,
            },
            {"movie_id": 7, "features": {"year": "", "genres": ""}, "position": 1, "score": 0.25},
        ],
    }
    key = event_log.impression_key("afm:", impression_id)
    assert hset == (b"HSET", key, event_log.SHOWN_FIELD, b"181,7")
    assert expire == (b"EXPIRE", key, 90_000)


def test_spliced_resp_is_the_commands_encoded() -> None:
    serialiser = _serialiser()
    for record in (_record(), _record(order=[], read=FeatureRead(None, MOVIES))):
        assert serialiser.resp(record) == b"".join(map(encode, serialiser.commands(record)))


def test_a_reply_written_already_is_taken_as_written() -> None:
    """The route passes the ids and probabilities as its reply wrote them."""
    written = _record(shown=b"181,7", written=b"0.4321,0.25")
    assert written[6:8] == (b"181,7", b"0.4321,0.25")
    assert _record()[6:8] == written[6:8]  # as the log writes them when the reply did not


def test_a_user_without_features_logs_empty_values() -> None:
    data = orjson.loads(_serialiser().commands(_record(read=FeatureRead(None, MOVIES)))[0][9])
    assert data["features"] == dict.fromkeys(USER_LOG_FIELDS, "")


def test_an_impression_showing_nothing_logs_no_movies() -> None:
    commands = _serialiser().commands(_record(order=[]))
    assert orjson.loads(commands[0][9])["movies"] == []
    assert commands[1][3] == b""


def test_only_the_last_tables_are_kept() -> None:
    serialiser = Serialiser("afm:", 1000, 90_000)
    for token in range(1, 8):
        serialiser.add_table(token, movie_table(MOVIES))
    assert sorted(serialiser._tables) == [4, 5, 6, 7]
    # A record of a forgotten table still serialises, its movies without features.
    data = orjson.loads(serialiser.commands(_record())[0][9])
    assert data["movies"][0]["features"] == {"year": "", "genres": ""}


def test_frames_round_trip() -> None:
    async def main() -> list:
        reader = asyncio.StreamReader()
        record = _record()
        values = [("config", {"url": "redis://x"}), ("batch", 3, [record])]
        reader.feed_data(b"".join(map(frame, values)))
        reader.feed_eof()
        return [record, await read_frame(reader), await read_frame(reader)]

    record, first, second = asyncio.run(main())
    assert first == ("config", {"url": "redis://x"})
    assert second == ("batch", 3, [record])
