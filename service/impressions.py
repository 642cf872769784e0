"""Impressions: the signed id each ``/score`` reply carries, and the log of what it showed.

The route hands ``ImpressionLog.log`` what it already holds (the feature read, the reply's
ids and probabilities as it wrote them) and gets the impression id back; a compact record
goes on a bounded in-memory buffer and the request's objects are freed at once. A background
task, started and drained by the lifespan, sends the buffer in batches (once records wait
LINGER_S or fill WRITE_BATCH) to the impression writer, a child process
(``service.impression_writer``), which serialises each impression and writes it to the
feature store's Redis pipelined: the stream entry of ``model.contracts.event_log`` (XADD to its
user's shard, MAXLEN ~) and the per-impression hash (``shown``, expiring after the
attribution window and its grace). Serialising a 100-movie impression (10 KB of JSON) and
sending it cost the event loop a tenth of a ``/score`` and more; a batch's compact records
cost it a few microseconds per impression.

Logging never fails or slows a ``/score``: a full buffer drops the record, a Redis error
drops the batch, a writer that dies drops what it held (and is started again); each is
counted by reason (``afm_impressions_dropped``) and logged at most once per
``DROP_LOG_INTERVAL_S``, one line with the counts.
"""

from __future__ import annotations

import asyncio
import logging
import operator
import os
import secrets
import socket
import sys
import time
from collections import deque
from collections.abc import Mapping, Sequence
from contextlib import suppress
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import orjson

from model.contracts import event_log
from service.feature_store import FeatureRead
from service.impression_writer import USER_LOG_FIELDS, Record, frame, movie_table, read_frame

log = logging.getLogger(__name__)

WRITE_BATCH = 256
"""Most impressions one batch carries; more wait for the next."""

LINGER_S = 0.05
"""Once records arrive the writer waits this long (or for WRITE_BATCH of them) before it
sends them: fewer, larger batches cost less per impression, here and in Redis (an XADD of a
100-movie impression takes Redis about half the CPU in a pipeline of 100 that it takes in
one of 10)."""

IN_FLIGHT = 2
"""Batches sent to the writer and not yet answered; more wait in the buffer."""

UNANSWERED_S = 10.0
"""A writer that answers no batch for this long (or four Redis timeouts) is restarted."""

RESTART_AFTER_S = 1.0
"""A writer that died or would not start is started again after this long at the soonest."""

DROP_LOG_INTERVAL_S = 10.0
"""Drops are logged at most this often: one line with the counts since the last."""

DROP_REASONS = ("buffer_full", "redis_error", "writer_lost", "shutdown")


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


@dataclass(frozen=True)
class WriterConfig:
    """Where and how the impression writer writes (the service's settings)."""

    url: str
    timeout: float
    cluster: bool
    max_connections: int
    prefix: str
    max_length: int
    ttl: int


Pending = tuple[str, int, int, int, str, tuple[str, ...], bytes, bytes]
"""An impression as the route leaves it: a ``Record`` without its movie table's token (the
background task names the table). Compact, so that a request's objects are freed at once
rather than held for the linger."""

_NO_USER = ("",) * len(USER_LOG_FIELDS)
_USER_VALUES = operator.itemgetter(*USER_LOG_FIELDS)


class ImpressionLog:
    """Issues impression ids and logs impressions through the writer (``config``); ``start``
    the background task, ``close`` to drain it and stop the writer."""

    def __init__(self, keys: Mapping[str, bytes], config: WriterConfig, *, capacity: int) -> None:
        if not keys:
            raise ValueError("ImpressionLog needs at least one signing key")
        self.keys = dict(keys)
        self._config = config
        self._capacity = capacity
        self._buffer: deque[tuple[Pending, Mapping[str, Mapping[str, str]]]] = deque()
        self._wake = asyncio.Event()  # set: the buffer has records
        self._hurry = asyncio.Event()  # set: send without lingering (a full batch, a flush)
        self._idle = asyncio.Event()  # set: nothing buffered, nothing in flight
        self._idle.set()
        self._answered = asyncio.Event()  # set: a batch in flight was answered
        self._task: asyncio.Task[None] | None = None
        self._writer: _Writer | None = None
        self._restart_at = 0.0
        self._sequence = 0
        self._in_flight: dict[int, int] = {}  # batch number -> its impressions
        self._table: Mapping[str, Mapping[str, str]] | None = None  # the last one sent
        self._token = 0  # the writer's name of ``_table``
        self.logged_total = 0  # read by the metrics collector
        self.dropped: dict[str, int] = dict.fromkeys(DROP_REASONS, 0)
        self._unreported: dict[str, int] = dict.fromkeys(DROP_REASONS, 0)
        self._last_error = ""
        self._reported_at = -DROP_LOG_INTERVAL_S

    @property
    def buffered(self) -> int:
        """Impressions waiting to be sent to the writer."""
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
        written: bytes | None = None,
    ) -> str:
        """A new impression id for this reply, its impression buffered (or dropped and
        counted if the buffer is full). ``shown``, ``written``: the returned ids and their
        probabilities as the reply wrote them ("50,181,1", "0.43,0.2,0.1"), if it did.
        Never raises, never waits."""
        ts = now_ms()
        impression_id = event_log.issue_impression_id(self.keys, version, arm, user_id, ts)
        if shown is None or written is None:
            shown, written = written_rows(movie_ids, order, probability)
        self.record(
            (impression_id, user_id, ts, version, arm, _user_values(read.user), shown, written),
            read.movies,
        )
        return impression_id

    def record(self, pending: Pending, movies: Mapping[str, Mapping[str, str]]) -> None:
        """Buffer ``pending`` (scored with ``movies``) for the writer; drop it (counted)
        when the buffer is full."""
        if len(self._buffer) >= self._capacity:
            self._drop("buffer_full", 1)
            return
        self._buffer.append((pending, movies))
        self._idle.clear()
        if not self._wake.is_set():
            self._wake.set()
        elif len(self._buffer) == WRITE_BATCH:
            self._hurry.set()

    def start(self) -> None:
        """Start the background task (in the running loop); the writer starts with the
        first batch."""
        if self._task is None:
            self._task = asyncio.create_task(self._send_forever(), name="impression-log")

    async def flush(self) -> None:
        """Wait until every impression buffered so far is written (or dropped), sending
        without lingering."""
        if not self._idle.is_set():
            self._hurry.set()
            await self._idle.wait()

    async def close(self, timeout: float) -> None:
        """Write what is buffered (for at most ``timeout`` seconds; the rest is dropped as
        "shutdown"), stop the task and the writer, report the drops not reported yet."""
        if self._task is not None:
            with suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self.flush()
            self._task.cancel()
            with suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self._drop("shutdown", len(self._buffer) + sum(self._in_flight.values()))
        self._buffer.clear()
        self._in_flight.clear()
        if self._writer is not None:
            await self._writer.stop()
            self._writer = None
        self._report_drops(force=True)

    async def _send_forever(self) -> None:
        while True:
            if not self._buffer:
                self._hurry.clear()
                self._check_idle()
                self._report_drops()
                await self._wait_for_records()
                continue
            await self._linger()
            while len(self._in_flight) >= IN_FLIGHT:
                await self._wait_for_answer()
            batch = [self._buffer.popleft() for _ in range(min(WRITE_BATCH, len(self._buffer)))]
            await self._send(batch)

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

    async def _wait_for_answer(self) -> None:
        """Until the writer answers a batch; a writer silent for UNANSWERED_S is stopped
        (what it held is dropped) and another started with the next batch."""
        self._answered.clear()
        try:
            async with asyncio.timeout(max(UNANSWERED_S, 4 * self._config.timeout)):
                await self._answered.wait()
        except TimeoutError:
            writer = self._writer
            if writer is not None:
                self._lost(writer, "no answer")
                await writer.stop(grace=0)

    async def _send(self, batch: list[tuple[Pending, Mapping]]) -> None:
        """``batch`` to the writer (started if there is none), its tables first; dropped
        as "writer_lost" when no writer can be started."""
        writer = self._writer
        if writer is None:
            writer = await self._start_writer()
            if writer is None:
                self._drop("writer_lost", len(batch))
                return
        frames: list[bytes] = []
        records: list[Record] = []
        for pending, movies in batch:
            if movies is not self._table:
                self._table, self._token = movies, self._token + 1
                frames.append(frame(("table", self._token, movie_table(movies))))
            records.append((*pending, self._token))
        self._sequence += 1
        self._in_flight[self._sequence] = len(records)
        frames.append(frame(("batch", self._sequence, records)))
        writer.send(b"".join(frames))

    async def _start_writer(self) -> _Writer | None:
        if time.monotonic() < self._restart_at:
            await asyncio.sleep(self._restart_at - time.monotonic())
        self._restart_at = time.monotonic() + RESTART_AFTER_S
        try:
            writer = await _Writer.start(self._config, self._answer, self._lost)
        except OSError as exc:
            log.error("could not start the impression writer: %s", exc)
            return None
        self._writer, self._table = writer, None  # a new writer knows no table
        return writer

    def _answer(self, sequence: int, written: int, failed: int, error: str) -> None:
        """A batch written: count it."""
        self._in_flight.pop(sequence, None)
        self.logged_total += written
        if failed:
            self._last_error = error
            self._drop("redis_error", failed)
        self._answered.set()
        self._check_idle()

    def _lost(self, writer: _Writer, why: str) -> None:
        """The writer died: what it held is dropped; the next batch starts another."""
        if self._writer is writer:
            self._writer = None
        lost = sum(self._in_flight.values())
        self._in_flight.clear()
        self._drop("writer_lost", lost)
        log.error("the impression writer stopped (%s); %d impression(s) lost", why, lost)
        self._answered.set()
        self._check_idle()

    def _check_idle(self) -> None:
        if not self._buffer and not self._in_flight:
            self._idle.set()

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


def written_rows(
    movie_ids: Sequence[int], order: Sequence[int], probability: np.ndarray
) -> tuple[bytes, bytes]:
    """The rows in ``order`` as a reply writes them: their movie ids ("50,181,1") and their
    probabilities, each the shortest decimal of its float32 value ("0.43,0.2,0.1")."""
    shown = orjson.dumps([movie_ids[row] for row in order])[1:-1]
    rows = np.asarray(order, dtype=np.intp)
    values = np.ascontiguousarray(probability[rows], np.float32)
    return shown, orjson.dumps(values, option=orjson.OPT_SERIALIZE_NUMPY)[1:-1]


def _user_values(user: Mapping[str, str] | None) -> tuple[str, ...]:
    """USER_LOG_FIELDS of a feature read's user ("" for a user it does not have)."""
    if user is None:
        return _NO_USER
    try:
        return _USER_VALUES(user)
    except KeyError:  # decode_user gives every field; anything else, field by field
        return tuple(user.get(name, "") for name in USER_LOG_FIELDS)


class _Writer:
    """The writer process and our end of its socket; ``answer`` is called with each batch
    written, ``lost`` once if it stops answering."""

    def __init__(self, process: asyncio.subprocess.Process, stream: asyncio.StreamWriter) -> None:
        self.process = process
        self.stream = stream
        self.reading: asyncio.Task[None] | None = None

    @classmethod
    async def start(cls, config: WriterConfig, answer, lost) -> _Writer:  # noqa: ANN001
        ours, theirs = socket.socketpair()
        try:
            root = str(Path(__file__).resolve().parent.parent)  # where ``service`` is
            path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "service.impression_writer", str(theirs.fileno()),
                pass_fds=(theirs.fileno(),), stdin=asyncio.subprocess.DEVNULL,
                env={**os.environ, "PYTHONPATH": path},
            )  # fmt: skip
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        reader, stream = await asyncio.open_unix_connection(sock=ours)
        writer = cls(process, stream)
        writer.send(frame(("config", asdict(config))))
        writer.reading = asyncio.create_task(writer._read(reader, answer, lost))
        return writer

    def send(self, data: bytes) -> None:
        """Queue ``data`` for the writer (the socket's buffer absorbs what it has not read:
        at most IN_FLIGHT batches)."""
        self.stream.write(data)

    async def _read(self, reader: asyncio.StreamReader, answer, lost) -> None:  # noqa: ANN001
        try:
            while True:
                kind, sequence, written, failed, error = await read_frame(reader)
                if kind == "done":
                    answer(sequence, written, failed, error)
        except asyncio.CancelledError:
            raise
        except (asyncio.IncompleteReadError, OSError, ValueError, EOFError) as exc:
            code = self.process.returncode
            why = f"exit code {code}" if code is not None else type(exc).__name__
            lost(self, why)

    async def stop(self, grace: float = 5.0) -> None:
        """Close our end (the writer exits at the end of its stream); kill it if it has
        not exited within ``grace`` seconds."""
        if self.reading is not None:
            self.reading.cancel()
        self.stream.close()
        try:
            async with asyncio.timeout(grace):
                await self.process.wait()
        except TimeoutError:
            with suppress(ProcessLookupError):
                self.process.kill()
            await self.process.wait()
