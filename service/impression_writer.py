"""The impression writer: a child process of the service that serialises impressions and
writes them to Redis, so that neither costs the event loop that answers ``/score``.

``service.impressions.ImpressionLog`` starts it (``python -m service.impression_writer FD``)
with one end of a socket pair and sends it frames: a ``config`` frame first, a ``table``
frame for each movie table the impressions were scored with, then ``batch`` frames of
compact records (``Record``: the reply's ids and probabilities as the reply wrote them).
For each batch it builds every impression's stream entry and per-impression hash
(``model.contracts.event_log``), writes them in one pipeline and answers a ``done`` frame:
the batch's number, how many impressions were written and how many failed, and the last
Redis error. It exits when the socket closes. Frames are a 4-byte length and ``marshal``
data: both ends are this interpreter.
"""

from __future__ import annotations

import asyncio
import contextlib
import marshal
import os
import socket
import struct
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import orjson

from model.contracts import event_log, export_format, feature_layout
from service import log_redis
from service.log_redis import Command, LogRedis

USER_LOG_FIELDS: tuple[str, ...] = (*feature_layout.USER_FIELDS, feature_layout.WATCHED)
"""A logged impression's user features: every user field the feature store holds, the
watched movies included ("" for none), whichever the version read, so a log can train any
field set without a join against a later feature set."""

MOVIE_LOG_FIELDS: tuple[str, ...] = export_format.ITEM_FIELDS
"""A logged movie's features (year, genres): what the feature set held for it, "" unknown."""

COMMANDS = 3
"""Commands per impression: XADD, HSET, EXPIRE."""

TABLES_KEPT = 4
"""Movie tables the writer keeps (a batch may straddle a load)."""

Record = tuple[str, int, int, int, str, tuple[str, ...], bytes, bytes, int]
"""(impression id, user id, ts, version, arm, USER_LOG_FIELDS values, the returned movie
ids "50,181,1", their probabilities "0.43,0.2,0.1" as the reply wrote them, table token)."""

_LENGTH = struct.Struct(">I")


async def read_frame(reader: asyncio.StreamReader) -> Any:
    """The next frame's value; IncompleteReadError at the end of the stream."""
    (length,) = _LENGTH.unpack(await reader.readexactly(_LENGTH.size))
    return marshal.loads(await reader.readexactly(length))


def frame(value: Any) -> bytes:
    data = marshal.dumps(value)
    return _LENGTH.pack(len(data)) + data


class Serialiser:
    """Impressions as Redis commands, under ``prefix``; movie heads serialised once per
    movie table."""

    def __init__(self, prefix: str, max_length: int, ttl_s: int) -> None:
        self._prefix = prefix
        self._max_length = max_length
        self._ttl = ttl_s
        self._tables: dict[int, Mapping[bytes, tuple[str, ...]]] = {}
        self._heads: dict[int, dict[bytes, bytes]] = {}
        self._positions: list[bytes] = []  # b'<p>,"score":' by position p
        self._xadd_heads: dict[str, bytes] = {}  # stream key -> _XADD_HEAD of it
        self._maxlen = _bulk(str(max_length).encode())
        self._ttl_bulk = _bulk(str(ttl_s).encode())

    def add_table(self, token: int, movies: Mapping[bytes, tuple[str, ...]]) -> None:
        """Movie id text -> MOVIE_LOG_FIELDS values, for the records naming ``token``."""
        self._tables[token] = movies
        self._heads[token] = {}
        for old in sorted(self._tables)[:-TABLES_KEPT]:
            del self._tables[old], self._heads[old]

    def resp(self, record: Record) -> bytes:
        """``commands`` in RESP, spliced from fragments encoded once."""
        impression_id, stream, key, data, shown = self._serialised(record)
        head = self._xadd_heads.get(stream)
        if head is None:
            head = self._xadd_heads[stream] = _XADD_HEAD % (_bulk(stream.encode()), self._maxlen)
        key_bulk = _bulk(key.encode())
        return b"".join(
            (head, _bulk(impression_id.encode()), _DATA, _bulk(data),
             _HSET, key_bulk, _SHOWN, _bulk(shown), _EXPIRE, key_bulk, self._ttl_bulk)
        )  # fmt: skip

    def commands(self, record: Record) -> tuple[Command, Command, Command]:
        """The stream entry (XADD ... MAXLEN ~) and the per-impression hash (HSET shown,
        EXPIRE) of ``record``."""
        impression_id, stream, key, data, shown = self._serialised(record)
        return (
            (b"XADD", stream, b"MAXLEN", b"~", self._max_length, b"*",
             b"impression", impression_id, b"data", data),
            (b"HSET", key, event_log.SHOWN_FIELD, shown),
            (b"EXPIRE", key, self._ttl),
        )  # fmt: skip

    def _serialised(self, record: Record) -> tuple[str, str, str, bytes, bytes]:
        """(impression id, stream key, hash key, the entry's data, the hash's shown)."""
        impression_id, user_id, ts, version, arm, user, shown, written, token = record
        data = orjson.dumps(
            {
                "user_id": user_id,
                "ts": ts,
                "version": version,
                "arm": arm,
                "features": dict(zip(USER_LOG_FIELDS, user, strict=True)),
                "movies": orjson.Fragment(self._movies_json(shown, written, token)),
            }
        )
        stream = event_log.impressions_key(self._prefix, event_log.shard(user_id))
        return (
            impression_id,
            stream,
            event_log.impression_key(self._prefix, impression_id),
            data,
            shown,
        )

    def _movies_json(self, shown: bytes, written: bytes, token: int) -> bytes:
        """The impression's ``movies`` list: each entry spliced from its movie's head (its
        id and features), its position and its score. An entry's keys come in the order
        movie_id, features, position, score."""
        if not shown:
            return b"[]"
        ids = shown.split(b",")
        n = len(ids)
        while len(self._positions) < n:
            self._positions.append(b'%d,"score":' % len(self._positions))
        cache = self._heads.get(token, {})
        heads = list(map(cache.get, ids))
        if None in heads:
            heads = [h or self._head(token, m) for h, m in zip(heads, ids, strict=True)]
        pieces = heads * 3  # a list of the right length, overwritten below
        pieces[0::3] = heads
        pieces[1::3] = self._positions[:n]
        pieces[2::3] = written.split(b",")
        return b"[" + b"".join(pieces)[2:] + b"}]"  # the first head's "}," dropped

    def _head(self, token: int, movie_id: bytes) -> bytes:
        """``},{"movie_id":181,"features":{...},"position":``: a movie's entry up to its
        position, after the end of the entry before it; kept for a movie of the table only
        (requests may name any number of unknown ids)."""
        values = self._tables.get(token, {}).get(movie_id)
        values = values or ("",) * len(MOVIE_LOG_FIELDS)
        features = orjson.dumps(dict(zip(MOVIE_LOG_FIELDS, values, strict=True)))
        head = b'},{"movie_id":%b,"features":%b,"position":' % (movie_id, features)
        if movie_id in self._tables.get(token, {}):
            self._heads[token][movie_id] = head
        return head


def movie_table(movies: Mapping[str, Mapping[str, str]]) -> dict[bytes, tuple[str, ...]]:
    """A feature set's movie table as the writer takes it: id text -> MOVIE_LOG_FIELDS."""
    return {
        movie_id.encode(): tuple(features.get(name, "") for name in MOVIE_LOG_FIELDS)
        for movie_id, features in movies.items()
        if movie_id.isdigit()
    }


async def write_batch(
    redis: LogRedis, serialiser: Serialiser, records: Sequence[Record]
) -> tuple[int, int, str]:
    """(written, failed, the last error) of one pipelined write of ``records``."""
    parts: list = []  # RESP bytes per impression (one Redis), else command tuples
    failed, error = 0, ""
    written: list[Record] = []
    for record in records:
        try:
            if redis.encoded:
                parts.append(serialiser.resp(record))
            else:
                parts.extend(serialiser.commands(record))
        except Exception as exc:  # a bug, not Redis: counted, the rest still written
            failed, error = failed + 1, f"unserialisable impression: {first_line(exc)}"
            continue
        written.append(record)
    try:
        if redis.encoded:
            replies = await redis.run_encoded(b"".join(parts), COMMANDS * len(written))
        else:
            replies = await redis.run(parts)
    except Exception as exc:  # FAILURES, or anything else: this batch is lost, not the writer
        return 0, failed + len(written), first_line(exc) or type(exc).__name__
    ok = 0
    for start in range(0, len(replies), COMMANDS):
        errors = [r for r in replies[start : start + COMMANDS] if isinstance(r, Exception)]
        if errors:
            failed, error = failed + 1, first_line(errors[0]) or type(errors[0]).__name__
        else:
            ok += 1
    return ok, failed, error


async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Answer frames until the stream ends."""
    kind, config = await read_frame(reader)
    assert kind == "config", kind
    redis = log_redis.connect(
        config["url"],
        config["timeout"],
        cluster=config["cluster"],
        max_connections=config["max_connections"],
    )
    serialiser = Serialiser(config["prefix"], config["max_length"], config["ttl"])
    try:
        while True:
            try:
                message = await read_frame(reader)
            except asyncio.IncompleteReadError:
                return
            if message[0] == "table":
                serialiser.add_table(message[1], message[2])
            elif message[0] == "batch":
                written, failed, error = await write_batch(redis, serialiser, message[2])
                writer.write(frame(("done", message[1], written, failed, error)))
                await writer.drain()
    finally:
        await redis.close()


async def _main(fd: int) -> None:
    sock = socket.socket(fileno=fd)
    reader, writer = await asyncio.open_unix_connection(sock=sock)
    try:
        await serve(reader, writer)
    finally:
        writer.close()


def first_line(exc: BaseException) -> str:
    """As ``service.errors.first_line``, which the writer does not import (nor FastAPI)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else ""


def _bulk(value: bytes) -> bytes:
    return b"$%d\r\n%b\r\n" % (len(value), value)


_XADD_HEAD = (
    b"*10\r\n" + _bulk(b"XADD") + b"%b" + _bulk(b"MAXLEN") + _bulk(b"~") + b"%b"
    + _bulk(b"*") + _bulk(b"impression")
)  # fmt: skip
"""XADD <stream> MAXLEN ~ <n> * impression, in RESP, the stream and n to fill in; the
impression id, "data" and the data follow."""
_DATA = _bulk(b"data")
_HSET = b"*4\r\n" + _bulk(b"HSET")
_SHOWN = _bulk(event_log.SHOWN_FIELD.encode())
_EXPIRE = b"*3\r\n" + _bulk(b"EXPIRE")

NICENESS = 10
"""The writer runs at this lower priority: on a busy host the service's event loop gets the
CPU first, and the writer the rest (the buffer absorbs the difference, and drops, counted,
when it cannot)."""

if __name__ == "__main__":
    with contextlib.suppress(OSError):
        os.nice(NICENESS)
    asyncio.run(_main(int(sys.argv[1])))
