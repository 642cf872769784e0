"""Impressions: the signed id each ``/score`` reply carries, and the log of what it showed.

The route hands ``ImpressionLog.log`` what it already holds (the feature read, the reply's
ids and scores as it wrote them) and gets the impression id back; a compact record goes on a
bounded in-memory buffer. A background task, started and drained by the lifespan, writes the
buffer in batches (once records wait LINGER_S or fill WRITE_BATCH) to the feature store's
Redis, pipelined in one write: per shard and up to SCRIPT_IMPRESSIONS impressions one
WRITE_SCRIPT, which stores each impression's stream entry (``event_log.impression_data``,
XADD to its user's shard, MAXLEN ~) and its hash (``shown``, expiring after the attribution
window and its grace) together, or nothing if the hash says it is stored already. The entry
is serialised after the reply has left, from columns the reply already wrote, so a
``/score`` pays for the id and the record only.

A batch whose write fails (Redis restarting, a lost connection) is sent again until RETRY_S
have passed: the script makes that exact, since an impression the first write stored is not
stored twice, and one it did not store is stored now. So every impression is either logged
once or counted dropped. Logging never fails or slows a ``/score``: a full buffer drops the
record, a batch still failing after RETRY_S is dropped; each is counted by reason
(``afm_impressions_dropped``) and logged at most once per ``DROP_LOG_INTERVAL_S``, one line
with the counts.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import logging
import secrets
import time
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from contextlib import suppress
from typing import NamedTuple

import numpy as np
import orjson
from redis.exceptions import BusyLoadingError

from model.contracts import event_log
from service.errors import first_line
from service.feature_store import FeatureRead
from service.log_redis import FAILURES, Command, LogRedis

log = logging.getLogger(__name__)

WRITE_BATCH = 256
"""Most impressions one write carries; more wait for the next."""

LINGER_S = 0.05
"""Once records arrive the task waits this long (or for WRITE_BATCH of them) before it
writes: fewer, larger pipelines cost Redis less per impression."""

DROP_LOG_INTERVAL_S = 10.0
"""Drops are logged at most this often: one line with the counts since the last."""

SCRIPT_IMPRESSIONS = 8
"""Most impressions (of one shard) one WRITE_SCRIPT call stores: a call per impression cost
Redis a third more than calls of 8 or 32, and a larger call holds up the feature reads
queued behind it for longer."""

SERIALISE_CHUNK = 4
"""Impressions serialised between two turns of the event loop: more at once would hold up
the requests waiting behind them (32 at once raised /score's p99 by a quarter)."""

RETRY_S = 10.0
"""A failed batch is sent again for this long (long enough for a Redis restart); meanwhile
new impressions wait in the buffer."""

RETRY_PAUSE_S = 0.25
"""Between two tries of a failed batch."""

DROP_REASONS = ("buffer_full", "redis_error", "shutdown")

TRANSIENT_ERRORS = ("LOADING", "BUSY", "TRYAGAIN", "CLUSTERDOWN", "MASTERDOWN")
"""Error replies after which a batch is sent again (within RETRY_S), not dropped."""

WRITE_SCRIPT = b"""
local stored = 0
for i = 2, #KEYS do
  local at = 3 * i - 3
  if redis.call('HSETNX', KEYS[i], ARGV[3], ARGV[at + 3]) == 1 then
    redis.call('EXPIRE', KEYS[i], ARGV[2])
    redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*',
               'impression', ARGV[at + 1], 'data', ARGV[at + 2])
    stored = stored + 1
  end
end
return stored
"""
"""KEYS = a shard's impression stream, then each impression's hash (one slot:
``event_log``); ARGV = the stream's MAXLEN, the hashes' TTL, SHOWN_FIELD, then per impression
its id, its data and the shown ids. Returns how many it stored: an impression whose hash is
there already was stored by a try whose reply was lost, and is not written again. Sent by
its SHA1 (EVALSHA), and loaded when Redis does not have it (a new or restarted Redis)."""

WRITE_SHA = hashlib.sha1(WRITE_SCRIPT).hexdigest().encode()  # noqa: S324 (Redis' script name)
SHOWN = event_log.SHOWN_FIELD.encode()


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


class Pending(NamedTuple):
    """An impression as the route leaves it, serialised when its batch is written."""

    impression_id: str
    user_id: int
    shard: int  # event_log.shard(user_id)
    ts: int
    version: int
    arm: str
    user: Mapping[str, str] | None  # the feature read's user, None for an unknown user
    shown: bytes  # the returned movie ids as the reply wrote them: "50,181,1"
    scores: bytes  # their probabilities as the reply wrote them: "0.43,0.2,0.1"
    movies: Mapping[str, Mapping[str, str]]  # the movie table they were scored with


class ImpressionLog:
    """Issues impression ids and logs impressions to ``redis`` under ``prefix``; ``start``
    the background task, ``close`` to drain it (the connection is the caller's)."""

    def __init__(
        self,
        keys: Mapping[str, bytes],
        redis: LogRedis,
        *,
        prefix: str,
        max_length: int,
        ttl_s: int,
        capacity: int,
    ) -> None:
        if not keys:
            raise ValueError("ImpressionLog needs at least one signing key")
        self.keys = dict(keys)
        self._redis = redis
        self._prefix = prefix
        self._streams = [
            event_log.impressions_key(prefix, shard).encode()
            for shard in range(event_log.LOG_SHARDS)
        ]
        self._arguments = (str(max_length).encode(), str(ttl_s).encode(), SHOWN)
        self._capacity = capacity
        self._buffer: deque[Pending] = deque()
        self._wake = asyncio.Event()  # set: the buffer has records
        self._hurry = asyncio.Event()  # set: write without lingering (a full batch, a flush)
        self._idle = asyncio.Event()  # set: nothing buffered, nothing being written
        self._idle.set()
        self._writing = 0  # impressions of the batch being written
        self._task: asyncio.Task[None] | None = None
        self._columns = _MovieColumns({})
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
        shown: bytes | None = None,
        scores: bytes | None = None,
    ) -> str:
        """A new impression id for this reply, its impression buffered (or dropped and
        counted if the buffer is full). ``shown``, ``scores``: the returned ids and their
        probabilities as the reply wrote them, if it did. Never raises, never waits."""
        ts = now_ms()
        impression_id = event_log.issue_impression_id(self.keys, version, arm, user_id, ts)
        if shown is None or scores is None:
            shown, scores = written_rows(movie_ids, order, probability)
        pending = Pending(
            impression_id, user_id, event_log.shard(user_id), ts, version, arm, read.user, shown,
            scores, read.movies,
        )  # fmt: skip
        self.record(pending)
        return impression_id

    def record(self, pending: Pending) -> None:
        """Buffer ``pending``; drop it (counted) when the buffer is full."""
        if len(self._buffer) >= self._capacity:
            self._drop("buffer_full", 1)
            return
        self._buffer.append(pending)
        self._idle.clear()
        if not self._wake.is_set():
            self._wake.set()
        elif len(self._buffer) == WRITE_BATCH:
            self._hurry.set()

    def start(self) -> None:
        """Start the background task (in the running loop)."""
        if self._task is None:
            self._task = asyncio.create_task(self._write_forever(), name="impression-log")

    async def flush(self) -> None:
        """Wait until every impression buffered so far is written (or dropped), writing
        without lingering."""
        if not self._idle.is_set():
            self._hurry.set()
            await self._idle.wait()

    async def close(self, timeout: float) -> None:
        """Write what is buffered (for at most ``timeout`` seconds; the rest is dropped as
        "shutdown"), stop the task, report the drops not reported yet."""
        if self._task is not None:
            with suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self.flush()
            self._task.cancel()
            with suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self._drop("shutdown", len(self._buffer) + self._writing)
        self._buffer.clear()
        self._report_drops(force=True)

    async def _write_forever(self) -> None:
        while True:
            if not self._buffer:
                self._hurry.clear()
                self._idle.set()
                self._report_drops()
                await self._wait_for_records()
                continue
            await self._linger()
            batch = [self._buffer.popleft() for _ in range(min(WRITE_BATCH, len(self._buffer)))]
            self._writing = len(batch)
            try:
                await self._write(batch)
            except Exception:  # a bug, not Redis: this batch is lost, not the log
                log.exception("could not log %d impression(s)", len(batch))
                self._drop("redis_error", len(batch))
            finally:
                self._writing = 0
            self._report_drops()  # also while the buffer never empties (an overload)

    async def _wait_for_records(self) -> None:
        """Until a record arrives; no longer than the drop-log interval while drops wait to
        be reported."""
        self._wake.clear()
        timeout = DROP_LOG_INTERVAL_S if any(self._unreported.values()) else None
        with suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._wake.wait()

    async def _linger(self) -> None:
        """LINGER_S for more records, unless told to hurry (until the buffer is empty)."""
        if len(self._buffer) < WRITE_BATCH and not self._hurry.is_set():
            with suppress(TimeoutError):
                async with asyncio.timeout(LINGER_S):
                    await self._hurry.wait()

    async def _write(self, batch: list[Pending]) -> None:
        """One pipelined write of ``batch``, sent again while it fails (for RETRY_S), then
        counted: each impression logged, or dropped as "redis_error"."""
        entries: list[tuple[Pending, bytes]] = []
        for start in range(0, len(batch), SERIALISE_CHUNK):
            entries += ((p, self._data(p)) for p in batch[start : start + SERIALISE_CHUNK])
            await asyncio.sleep(0)  # let waiting requests run between chunks
        calls = list(_script_calls(entries))
        commands = [self._command(shard, group) for shard, group in calls]
        sizes = [len(group) for _, group in calls]
        give_up, loaded = time.monotonic() + RETRY_S, False
        while True:
            try:
                replies = await self._redis.run(commands)
                if not loaded and any(map(_no_script, replies)):
                    await self._redis.load_script(WRITE_SCRIPT)  # and send the batch again
                    loaded = True
                    continue
                error = next((str(r) for r in replies if _transient(r)), "")
            except FAILURES as exc:
                replies, error = [], first_line(exc)
            if not error:
                break
            self._last_error = error
            if time.monotonic() + RETRY_PAUSE_S > give_up:
                break
            await asyncio.sleep(RETRY_PAUSE_S)
        if not replies:
            self._drop("redis_error", len(batch))
            return
        for reply, size in zip(replies, sizes, strict=True):
            if isinstance(reply, Exception):
                self._last_error = first_line(reply)
                self._drop("redis_error", size)
            else:
                self.logged_total += size

    def _command(self, shard: int, group: Sequence[tuple[Pending, bytes]]) -> Command:
        """WRITE_SCRIPT for ``group``, impressions of ``shard`` and their data: their stream
        entries and their hashes."""
        keys, arguments = [self._streams[shard]], list(self._arguments)
        for pending, data in group:
            keys.append(event_log.impression_key(self._prefix, pending.impression_id).encode())
            arguments += (pending.impression_id.encode(), data, pending.shown)
        return (b"EVALSHA", WRITE_SHA, str(len(keys)).encode(), *keys, *arguments)

    def _data(self, pending: Pending) -> bytes:
        """``pending``'s stream entry data (``event_log.impression_data``)."""
        if pending.movies is not self._columns.table:
            self._columns = _MovieColumns(pending.movies)
        user = pending.user or {}
        return event_log.impression_data(
            pending.user_id,
            pending.ts,
            pending.version,
            pending.arm,
            {name: user.get(name, "") for name in event_log.USER_LOG_FIELDS},
            pending.shown,
            pending.scores,
            self._columns.of(orjson.loads(b"[%b]" % pending.shown)),
        )

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


class _MovieColumns:
    """A movie table's MOVIE_LOG_FIELDS as columns of JSON strings (row 0 blank) and each
    movie's row: built once per table, so a logged impression's movie features are a lookup
    per movie and a gather per field (a dict lookup per movie and field missed the CPU cache
    at every turn: a sixth of the event loop's time)."""

    def __init__(self, table: Mapping[str, Mapping[str, str]]) -> None:
        self.table = table
        ids = [m for m in table if m.isdigit()]
        self._rows = {int(m): row for row, m in enumerate(ids, start=1)}
        self._columns = {
            name: [b'""', *(orjson.dumps(table[m].get(name, "")) for m in ids)]
            for name in event_log.MOVIE_LOG_FIELDS
        }

    def of(self, movie_ids: Sequence[int]) -> dict[str, orjson.Fragment]:
        """Each field's values for ``movie_ids``, "" for a movie not in the table, as JSON
        arrays."""
        rows = list(map(self._rows.get, movie_ids, itertools.repeat(0, len(movie_ids))))
        return {
            name: orjson.Fragment(b"[%b]" % b",".join(map(column.__getitem__, rows)))
            for name, column in self._columns.items()
        }


def _script_calls(
    entries: Sequence[tuple[Pending, bytes]],
) -> Iterator[tuple[int, list[tuple[Pending, bytes]]]]:
    """``entries`` (impressions and their data) as WRITE_SCRIPT calls: (shard, up to
    SCRIPT_IMPRESSIONS of its impressions), each shard's in the order they came."""

    def by_shard(entry: tuple[Pending, bytes]) -> int:
        return entry[0].shard

    for shard, group in itertools.groupby(sorted(entries, key=by_shard), key=by_shard):
        of_shard = list(group)
        for start in range(0, len(of_shard), SCRIPT_IMPRESSIONS):
            yield shard, of_shard[start : start + SCRIPT_IMPRESSIONS]


def _transient(reply: object) -> bool:
    """Whether ``reply`` is an error Redis gives while it cannot write for a while (loading
    its data after a restart, a busy script, a cluster failing over): worth a second try."""
    text = str(reply) if isinstance(reply, Exception) else ""
    return isinstance(reply, BusyLoadingError) or text.startswith(TRANSIENT_ERRORS)


def _no_script(reply: object) -> bool:
    """Whether ``reply`` says Redis does not have the script (NOSCRIPT)."""
    return isinstance(reply, Exception) and "No matching script" in str(reply)  # both clients


def written_rows(
    movie_ids: Sequence[int], order: Sequence[int], probability: np.ndarray
) -> tuple[bytes, bytes]:
    """The rows in ``order`` as a reply writes them: their movie ids ("50,181,1") and their
    probabilities, each the shortest decimal of its float32 value ("0.43,0.2,0.1")."""
    shown = orjson.dumps([movie_ids[row] for row in order])[1:-1]
    rows = np.asarray(order, dtype=np.intp)
    values = np.ascontiguousarray(probability[rows], np.float32)
    return shown, orjson.dumps(values, option=orjson.OPT_SERIALIZE_NUMPY)[1:-1]
