"""Impressions: the signed id each ``/score`` reply carries, and the log of what it showed.

The route hands ``ImpressionLog.log`` what it already holds (references: the feature read,
the reply's row order, the probabilities) and gets the impression id back; the record goes
on a bounded in-memory buffer, nothing is serialised or sent. A background task, started and
drained by the lifespan, writes the buffer in batches over a connection of its own, each batch
pipelined: per impression the stream entry of ``model.contracts.event_log`` (XADD to its
user's shard, MAXLEN ~) and the per-impression hash (``shown``, expiring after the attribution
window and its grace).

Logging never fails or slows a ``/score``: a full buffer drops the record, a Redis error drops
the batch, both counted by reason (``afm_impressions_dropped``) and logged at most once per
``DROP_LOG_INTERVAL_S``, one line with the counts.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections import deque
from collections.abc import Mapping, Sequence
from contextlib import suppress
from dataclasses import dataclass

import numpy as np
import orjson

from model.contracts import event_log, export_format, feature_layout
from service.errors import first_line
from service.feature_store import FeatureRead
from service.log_redis import FAILURES, Command, LogRedis

log = logging.getLogger(__name__)

WRITE_BATCH = 256
"""Most impressions one pipelined write carries; more wait for the next."""

DROP_LOG_INTERVAL_S = 10.0
"""Drops are logged at most this often: one line with the counts since the last."""

DROP_REASONS = ("buffer_full", "redis_error", "shutdown")

USER_LOG_FIELDS: tuple[str, ...] = (*feature_layout.USER_FIELDS, feature_layout.WATCHED)
"""A logged impression's user features: every user field the feature store holds, the
watched movies included ("" for none), whichever the version read, so a log can train any
field set without a join against a later feature set."""

MOVIE_LOG_FIELDS: tuple[str, ...] = export_format.ITEM_FIELDS
"""A logged movie's features (year, genres): what the feature set held for it, "" unknown."""

_EMPTY_MOVIE = orjson.dumps(dict.fromkeys(MOVIE_LOG_FIELDS, ""))


def signing_keys(configured: Mapping[str, bytes]) -> dict[str, bytes]:
    """The configured impression keys, or a random one for this process (logged once: its
    ids verify only here, until a restart)."""
    if configured:
        return dict(configured)
    key_id = f"r{secrets.token_hex(4)}"
    log.warning(
        "no AFM_IMPRESSION_KEYS or AFM_IMPRESSION_KEYS_FILE: impression ids are signed with a "
        "random key (%s), so they will not verify on another replica or after a restart",
        key_id,
    )
    return {key_id: secrets.token_bytes(32)}


def now_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass(frozen=True, slots=True)
class Impression:
    """One ``/score`` reply as the route had it: nothing copied, nothing serialised yet."""

    impression_id: str
    user_id: int
    ts: int
    version: int
    arm: str
    user: Mapping[str, str] | None
    """The feature read's user (None: unknown to the feature set)."""
    movie_ids: Sequence[int]
    """Every candidate of the request, in request order."""
    order: Sequence[int]
    """The rows returned, in reply order (after ``top_k`` and the unknown-movie policy)."""
    probability: np.ndarray
    """Every candidate's probability, in request order."""
    movies: Mapping[str, Mapping[str, str]]
    """The feature set's movie table the request was scored with."""


class ImpressionLog:
    """Issues impression ids and logs impressions to ``redis`` under ``prefix``; ``start``
    the writer, ``close`` to drain it."""

    def __init__(
        self,
        keys: Mapping[str, bytes],
        redis: LogRedis,
        prefix: str,
        *,
        capacity: int,
        max_length: int,
        window_s: int,
    ) -> None:
        if not keys:
            raise ValueError("ImpressionLog needs at least one signing key")
        self.keys = dict(keys)
        self._redis = redis
        self._prefix = prefix
        self._capacity = capacity
        self._max_length = max_length
        self._ttl = window_s + event_log.ATTRIBUTION_TTL_GRACE_S
        self._buffer: deque[Impression] = deque()
        self._wake = asyncio.Event()  # set: the buffer has records
        self._idle = asyncio.Event()  # set: the buffer is empty and no write is in flight
        self._idle.set()
        self._task: asyncio.Task[None] | None = None
        self._movie_json: dict[str, bytes] = {}  # a movie's features, serialised once
        self._movie_table: Mapping[str, Mapping[str, str]] | None = None  # of this table
        self.logged_total = 0  # read by the metrics collector
        self.dropped: dict[str, int] = dict.fromkeys(DROP_REASONS, 0)
        self._unreported: dict[str, int] = dict.fromkeys(DROP_REASONS, 0)
        self._last_error = ""
        self._reported_at = -DROP_LOG_INTERVAL_S

    @property
    def buffered(self) -> int:
        """Impressions waiting to be written."""
        return len(self._buffer)

    def log(
        self,
        version: int,
        arm: str,
        user_id: int,
        read: FeatureRead,
        movie_ids: Sequence[int],
        order: Sequence[int],
        probability: np.ndarray,
    ) -> str:
        """A new impression id for this reply, its impression buffered (or dropped and
        counted if the buffer is full). Never raises, never waits."""
        ts = now_ms()
        impression_id = event_log.issue_impression_id(self.keys, version, arm, user_id, ts)
        self.record(
            Impression(
                impression_id,
                user_id,
                ts,
                version,
                arm,
                read.user,
                movie_ids,
                order,
                probability,
                read.movies,
            )
        )
        return impression_id

    def record(self, impression: Impression) -> None:
        """Buffer ``impression`` for the writer; drop it (counted) when the buffer is full."""
        if len(self._buffer) >= self._capacity:
            self._drop("buffer_full", 1)
            return
        self._buffer.append(impression)
        self._idle.clear()
        if not self._wake.is_set():
            self._wake.set()

    def start(self) -> None:
        """Start the writer (in the running loop)."""
        if self._task is None:
            self._task = asyncio.create_task(self._write_forever(), name="impression-writer")

    async def flush(self) -> None:
        """Wait until every impression buffered so far is written (or dropped)."""
        await self._idle.wait()

    async def close(self, timeout: float) -> None:
        """Write what is buffered (for at most ``timeout`` seconds; the rest is dropped as
        "shutdown"), stop the writer, report the drops not reported yet."""
        if self._task is not None:
            with suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self.flush()
            self._task.cancel()
            with suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._buffer:
            self._drop("shutdown", len(self._buffer))
            self._buffer.clear()
        self._report_drops(force=True)
        await self._redis.close()

    async def _write_forever(self) -> None:
        while True:
            if not self._buffer:
                self._idle.set()
                self._report_drops()
                await self._wait_for_records()
                continue
            batch = [self._buffer.popleft() for _ in range(min(WRITE_BATCH, len(self._buffer)))]
            await self._write(batch)

    async def _wait_for_records(self) -> None:
        """Until a record arrives; no longer than the drop-log interval while drops wait to
        be reported."""
        self._wake.clear()
        timeout = DROP_LOG_INTERVAL_S if any(self._unreported.values()) else None
        with suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._wake.wait()

    async def _write(self, batch: list[Impression]) -> None:
        commands: list[Command] = []
        written: list[int] = []  # per impression: how many commands it sent
        for impression in batch:
            try:
                commands.extend(self._commands(impression))
            except Exception:  # a bug, not the request's fault: logged, counted, skipped
                log.exception("could not serialise impression %s", impression.impression_id)
                self._drop("redis_error", 1)
                continue
            written.append(3)
        try:
            replies = await self._redis.run(commands)
        except FAILURES as exc:
            self._last_error = first_line(exc) or type(exc).__name__
            self._drop("redis_error", len(written))
            return
        except Exception as exc:  # never let the writer die
            log.exception("writing impressions failed")
            self._last_error = first_line(exc) or type(exc).__name__
            self._drop("redis_error", len(written))
            return
        start = 0
        for count in written:
            failed = [r for r in replies[start : start + count] if isinstance(r, Exception)]
            start += count
            if failed:
                self._last_error = first_line(failed[0]) or type(failed[0]).__name__
                self._drop("redis_error", 1)
            else:
                self.logged_total += 1

    def _commands(self, impression: Impression) -> tuple[Command, Command, Command]:
        """The stream entry and the per-impression hash of ``impression``, as commands."""
        ids = [impression.movie_ids[row] for row in impression.order]
        shown = orjson.dumps(ids)[1:-1]  # "50,181,1"
        movies = self._movies_json(impression, ids, shown) if ids else b"[]"
        user = impression.user or {}
        data = orjson.dumps(
            {
                "user_id": impression.user_id,
                "ts": impression.ts,
                "version": impression.version,
                "arm": impression.arm,
                "features": {name: user.get(name, "") for name in USER_LOG_FIELDS},
                "movies": orjson.Fragment(movies),
            }
        )
        stream = event_log.impressions_key(self._prefix, event_log.shard(impression.user_id))
        key = event_log.impression_key(self._prefix, impression.impression_id)
        return (
            (b"XADD", stream, b"MAXLEN", b"~", self._max_length, b"*",
             b"impression", impression.impression_id, b"data", data),
            (b"HSET", key, event_log.SHOWN_FIELD, shown),
            (b"EXPIRE", key, self._ttl),
        )  # fmt: skip

    def _movies_json(self, impression: Impression, ids: list[int], shown: bytes) -> bytes:
        """The impression's ``movies`` list, serialised: entries spliced from the ids, the
        float32 scores (their shortest decimals) and each movie's features, serialised once
        per movie table."""
        if impression.movies is not self._movie_table:
            self._movie_table, self._movie_json = impression.movies, {}
        index = np.asarray(impression.order, dtype=np.intp)
        values = np.ascontiguousarray(impression.probability[index], np.float32)
        scores = orjson.dumps(values, option=orjson.OPT_SERIALIZE_NUMPY)[1:-1].split(b",")
        entries = [
            b'{"movie_id":%b,"position":%d,"score":%b,"features":%b}'
            % (movie, position, score, self._movie_features(impression.movies, ids[position]))
            for position, (movie, score) in enumerate(zip(shown.split(b","), scores, strict=True))
        ]
        return b"[" + b",".join(entries) + b"]"

    def _movie_features(self, movies: Mapping[str, Mapping[str, str]], movie_id: int) -> bytes:
        key = str(movie_id)
        cached = self._movie_json.get(key)
        if cached is None:
            features = movies.get(key)
            if features is None:  # not cached: requests may name any number of unknown ids
                return _EMPTY_MOVIE
            cached = self._movie_json[key] = orjson.dumps(
                {name: features.get(name, "") for name in MOVIE_LOG_FIELDS}
            )
        return cached

    def _drop(self, reason: str, count: int) -> None:
        if count:
            self.dropped[reason] += count
            self._unreported[reason] += count

    def _report_drops(self, *, force: bool = False) -> None:
        """One line with the drops since the last one, at most once per interval."""
        if not any(self._unreported.values()):
            return
        now = time.monotonic()
        if not force and now - self._reported_at < DROP_LOG_INTERVAL_S:
            return
        counts = ", ".join(f"{n} {reason}" for reason, n in self._unreported.items() if n)
        error = f"; last Redis error: {self._last_error}" if self._unreported["redis_error"] else ""
        log.warning(
            "dropped %d impression(s) not logged (%s)%s",
            sum(self._unreported.values()),
            counts,
            error,
        )
        self._unreported = dict.fromkeys(DROP_REASONS, 0)
        self._reported_at = now
