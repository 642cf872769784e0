"""Export the impression log from Redis into hourly Parquet files, labelled with the clicks,
so that training can learn from what was shown and clicked (``afm-ctr logs export``).

Each impression stream (``event_log.impressions_key``, one per shard) is read through one
consumer group (GROUP, created at the stream's start if missing), so what was exported is
remembered in Redis. Per shard, entries are taken in stream order, the consumer's pending ones
first: an impression whose attribution window is still open stops the shard there (it and the
rest stay for a later run, which re-reads the pending ones first) unless ``flush`` labels it
with the clicks seen so far. A batch of closed impressions gets its per-impression hashes in
one pipelined read, becomes one file per UTC hour (``click_log_files.write_rows``: a durable
write and rename), and only then is acknowledged (XACK).

Killed at any point, a restart neither loses nor duplicates rows: an entry is acknowledged
only after the file holding it is complete, a temporary file left by a kill is deleted, and an
entry that a complete file already holds (killed between the rename and the XACK, or a group
reset or rolled back by a failover) is acknowledged without being written again: only the
files of its shard and hour whose names cover its id are opened. One exporter writes a
directory at a time (a lock file); the consumer group belongs to the prefix, so exporting to
another directory goes on from where the last export stopped.
"""

from __future__ import annotations

import fcntl
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, fields
from pathlib import Path
from typing import NamedTuple

import redis
from redis.cluster import RedisCluster

from model.contracts import event_log
from model.data import click_log_files as files
from model.data.click_log_files import LogFile
from model.errors import AfmError, one_line

log = logging.getLogger(__name__)

GROUP = "afm-ctr-export"
"""The consumer group that remembers, per impression stream, what has been exported."""
CONSUMER = "exporter"
DEFAULT_BATCH = 5000
"""Impressions read per XREADGROUP: at most one file per hour per batch."""
LOCK_FILE = ".export.lock"


@dataclass
class ExportSummary:
    """What one pass exported, and what it left."""

    impressions: int = 0
    rows: int = 0
    clicks: int = 0
    dropped_clicks: int = 0  # clicks on a movie the impression did not show
    held_back: int = 0  # impressions left in the streams: window still open, or not read yet
    files: int = 0
    already_exported: int = 0  # entries a complete file held (a killed export's, say)
    unreadable: int = 0  # entries trimmed away or not readable as an impression
    without_hash: int = 0  # impressions whose hash had expired: clicks unknown, not exported
    trimmed: int = 0  # impressions the streams' MAXLEN removed before this group read them

    def add(self, other: ExportSummary) -> None:
        """Add ``other``'s counts to these; ``held_back`` becomes ``other``'s (the latest)."""
        for field in fields(self):
            if field.name != "held_back":
                setattr(self, field.name, getattr(self, field.name) + getattr(other, field.name))
        self.held_back = other.held_back

    def line(self) -> str:
        """The summary line the command prints."""
        text = (
            f"exported {self.impressions:,} impressions ({self.rows:,} rows, {self.clicks:,} "
            f"clicks) in {self.files:,} files; dropped {self.dropped_clicks:,} clicks on "
            f"movies not shown; held back {self.held_back:,} impressions"
        )
        extras = {
            "already in a file": self.already_exported,
            "unreadable": self.unreadable,
            "without their hash (expired)": self.without_hash,
            "trimmed from the streams before export": self.trimmed,
        }
        shown = [f"{count:,} {what}" for what, count in extras.items() if count]
        return text + (f"; {', '.join(shown)}" if shown else "")


@dataclass(frozen=True)
class LoggedImpression:
    """One impression stream entry, read: the impression's id, time, user and shown movies."""

    stream_id: str
    impression_id: str
    user_id: str
    ts: int  # ms since the epoch
    version: int
    arm: str
    features: dict[str, str | None]  # files.USER_FEATURES, None when not logged
    movies: list[ShownMovie]  # in reply order


class ShownMovie(NamedTuple):
    """One movie an impression showed, as logged."""

    movie_id: str
    position: int
    score: float
    features: dict[str, str | None]  # files.MOVIE_FEATURES, None when not logged


FAILURES: tuple[type[BaseException], ...] = (
    redis.RedisError,
    redis.exceptions.RedisClusterException,  # not a RedisError: e.g. no node answers
)
"""What reading the log may raise when Redis cannot be reached or fails."""

Client = redis.Redis | RedisCluster


def connect(redis_url: str, cluster: bool = False) -> Client:
    """A client for one Redis, or for the Redis Cluster ``redis_url``'s node belongs to (its
    pipelines send each command to the master holding its key); AfmError in one line for a
    URL that is not one, or no cluster there."""
    options = {"decode_responses": True, "socket_connect_timeout": 5, "socket_timeout": 30}
    try:
        if cluster:
            return RedisCluster.from_url(redis_url, **options)
        return redis.Redis.from_url(redis_url, **options)
    except ValueError as exc:
        raise AfmError(f"invalid Redis URL {redis_url!r}: {exc}") from None
    except FAILURES as exc:  # the cluster client asks for the slot map at once
        raise AfmError(f"no Redis Cluster at {redis_url}: {one_line(exc)}") from None


def _id(stream_id: str) -> tuple[int, int]:
    milliseconds, _, sequence = stream_id.partition("-")
    return int(milliseconds), int(sequence or 0)


@contextmanager
def export_lock(out: Path) -> Iterator[None]:
    """Hold ``out``'s lock file (created with ``out``) for the block; AfmError if another
    exporter holds it. The lock goes with the process, however it ends."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        handle = open(out / LOCK_FILE, "a+")  # noqa: SIM115 -- held for the whole block
    except OSError as exc:
        raise AfmError(f"cannot write to {out}: {exc.strerror}") from None
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise AfmError(f"another `afm-ctr logs export` is writing to {out}") from None
        yield
    finally:
        handle.close()


class LogExporter:
    """Moves closed impressions from the streams of ``prefix`` into files under ``out``."""

    def __init__(
        self,
        client: Client,
        prefix: str,
        out: Path,
        *,
        window_s: int = event_log.ATTRIBUTION_WINDOW_S,
        flush: bool = False,
        batch: int = DEFAULT_BATCH,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.client, self.prefix, self.out = client, prefix, out
        self.window_ms, self.flush, self.batch, self.clock = window_s * 1000, flush, batch, clock
        self._listed: dict[tuple[Path, int], list[LogFile]] = {}
        self._held_ids: dict[Path, set[str]] = {}

    def export(self) -> ExportSummary:
        """One pass over every shard; AfmError when Redis or the directory fails."""
        summary = ExportSummary()
        self._listed.clear()
        self._held_ids.clear()
        try:
            removed = files.remove_partial_files(self.out)
            if removed:
                log.info(f"[logs] removed {removed} partial files of an interrupted export")
            for shard in range(event_log.LOG_SHARDS):
                self._drain(shard, summary)
            summary.held_back = self._held_back()
        except FAILURES as exc:
            raise AfmError(
                f"reading the impression log from Redis failed: {one_line(exc)}"
            ) from None
        except OSError as exc:
            raise AfmError(f"cannot write the exported log to {self.out}: {exc}") from None
        if summary.trimmed:
            log.warning(
                f"{summary.trimmed:,} impressions were trimmed from the streams before they "
                "were exported: raise the service's AFM_LOG_STREAM_MAX_LENGTH or export more "
                "often"
            )
        if summary.without_hash:
            log.warning(
                f"{summary.without_hash} impressions had no per-impression hash (it expires "
                f"{event_log.ATTRIBUTION_TTL_GRACE_S} s after the window): not exported"
            )
        return summary

    def _drain(self, shard: int, summary: ExportSummary) -> None:
        """Export shard ``shard``'s closed impressions: pending ones first, then new ones,
        until the first whose window is open (or the end)."""
        key = event_log.impressions_key(self.prefix, shard)
        try:
            self.client.xgroup_create(key, GROUP, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        summary.trimmed += self._trimmed_unread(key)
        cursor = "0"  # "0": this consumer's pending entries, after the id; ">": new ones
        while True:
            reply = self.client.xreadgroup(GROUP, CONSUMER, {key: cursor}, count=self.batch)
            entries = reply[0][1] if reply else []
            if not entries:
                if cursor == ">":
                    return
                cursor = ">"
                continue
            if self._export_batch(shard, key, entries, summary):
                return  # an open window: the rest waits
            if cursor != ">":
                cursor = entries[-1][0]

    def _export_batch(
        self,
        shard: int,
        key: str,
        entries: list[tuple[str, dict[str, str]]],
        summary: ExportSummary,
    ) -> bool:
        """Write and acknowledge the closed prefix of ``entries``; True if it stopped at an
        impression whose window is open."""
        now_ms, open_window = int(self.clock() * 1000), False
        done: list[str] = []
        impressions: list[LoggedImpression] = []
        for stream_id, entry in entries:
            impression = _read_entry(stream_id, entry)
            if impression is not None and self._window_open(impression, now_ms):
                open_window = True
                break
            done.append(stream_id)
            if impression is None:
                summary.unreadable += 1
            else:
                impressions.append(impression)
        fresh = [i for i in impressions if not self._in_a_file(shard, i)]
        if len(fresh) < len(impressions):  # written by an export killed before its XACK
            log.info(
                f"[logs] {len(impressions) - len(fresh)} impressions of shard {shard} are in a "
                "file already (an interrupted export's): acknowledged"
            )
        summary.already_exported += len(impressions) - len(fresh)
        self._write(shard, fresh, summary)
        files.crash_point("before-ack")
        if done:
            self.client.xack(key, GROUP, *done)
        return open_window

    def _window_open(self, impression: LoggedImpression, now_ms: int) -> bool:
        """Whether an event may still be accepted for ``impression`` (never with flush)."""
        return not self.flush and now_ms <= impression.ts + self.window_ms

    def _write(
        self, shard: int, impressions: list[LoggedImpression], summary: ExportSummary
    ) -> None:
        """The rows of ``impressions``, labelled from their hashes, as one file per hour."""
        pipe = self.client.pipeline(transaction=False)
        for impression in impressions:
            pipe.hgetall(event_log.impression_key(self.prefix, impression.impression_id))
        by_hour: dict[str, _HourRows] = {}
        for impression, recorded in zip(impressions, pipe.execute(), strict=True):
            if not recorded:
                summary.without_hash += 1
                continue
            hour = files.hour_of(impression.ts)
            rows = by_hour.setdefault(hour, _HourRows())
            clicks, dropped = rows.add(impression, shard, recorded)
            summary.impressions += 1
            summary.clicks += clicks
            summary.dropped_clicks += dropped
        for hour, rows in by_hour.items():
            name = files.file_name(shard, rows.stream_ids)
            files.write_rows(self.out, hour, name, rows.columns)
            summary.files += 1
            summary.rows += rows.count
            log.info(
                f"[logs] wrote {hour}/{name}: {rows.count:,} rows of "
                f"{len(rows.stream_ids):,} impressions, {rows.clicks:,} clicks"
            )

    def _in_a_file(self, shard: int, impression: LoggedImpression) -> bool:
        """Whether a complete file already holds ``impression``'s stream entry. Only the
        files of its shard in its hour, whose names cover its id, are opened."""
        folder = self.out / files.hour_of(impression.ts)
        listed = self._listed.get((folder, shard))
        if listed is None:
            named = (files.parse_name(p) for p in folder.glob(f"s{shard}_*.parquet"))
            listed = self._listed[(folder, shard)] = [f for f in named if f is not None]
        for log_file in listed:
            if log_file.may_hold(impression.stream_id):
                if log_file.path not in self._held_ids:
                    self._held_ids[log_file.path] = log_file.stream_ids()
                if impression.stream_id in self._held_ids[log_file.path]:
                    return True
        return False

    def _trimmed_unread(self, key: str) -> int:
        """Entries of ``key`` that MAXLEN removed before this group read them: Redis (>= 7)
        counts the group's lag over every entry ever added, trimmed ones too, and when the
        stream's first entry is newer than the last one delivered, everything left is lag."""
        group = next((g for g in self.client.xinfo_groups(key) if g["name"] == GROUP), None)
        if group is None or group.get("lag") is None:
            return 0  # Redis cannot tell (older than 7, or after XDEL)
        info = self.client.xinfo_stream(key)
        first = info.get("first-entry")
        if not first or _id(first[0]) <= _id(group["last-delivered-id"]):
            return 0
        return max(0, int(group["lag"]) - int(info["length"]))

    def _held_back(self) -> int:
        """Impressions still in the streams for this group: pending, or not yet read."""
        total = 0
        for shard in range(event_log.LOG_SHARDS):
            key = event_log.impressions_key(self.prefix, shard)
            groups = [g for g in self.client.xinfo_groups(key) if g["name"] == GROUP]
            if not groups:  # the stream was deleted during the pass
                continue
            group = groups[0]
            lag = group.get("lag")
            if lag is None:  # Redis cannot tell after some deletions: count what is left
                lag = self._count_after(key, group["last-delivered-id"])
            total += int(group["pending"]) + int(lag)
        return total

    def _count_after(self, key: str, last: str) -> int:
        count, start = 0, f"({last}"
        while page := self.client.xrange(key, min=start, max="+", count=10_000):
            count += len(page)
            start = f"({page[-1][0]}"
        return count


class _HourRows:
    """The columns of one file being built: rows of one shard's impressions in one hour."""

    def __init__(self) -> None:
        self.columns: dict[str, list] = {name: [] for name in files.ROW_SCHEMA.names}
        self.stream_ids: list[str] = []
        self.count = self.clicks = 0

    def add(
        self, impression: LoggedImpression, shard: int, recorded: dict[str, str]
    ) -> tuple[int, int]:
        """Append one row per shown movie, labelled from the hash ``recorded``; returns the
        clicks kept and the clicks dropped (on movies the impression did not show)."""
        shown = {movie.movie_id for movie in impression.movies}
        done: dict[str, set[str]] = {}
        dropped = 0
        for field in recorded:
            movie_id, _, event = field.rpartition(":")
            if event not in event_log.EVENT_TYPES:
                continue  # "shown", or a field this exporter does not know
            if movie_id in shown:
                done.setdefault(movie_id, set()).add(event)
            elif event == "click":
                dropped += 1
        columns, clicks = self.columns, 0
        for movie in impression.movies:
            events = done.get(movie.movie_id, set())
            clicks += "click" in events
            columns["impression_id"].append(impression.impression_id)
            columns["movie_id"].append(movie.movie_id)
            columns["label"].append(int("click" in events))
            columns["position"].append(movie.position)
            columns["score"].append(movie.score)
            columns["model_version"].append(impression.version)
            columns["arm"].append(impression.arm)
            columns["user_id"].append(impression.user_id)
            columns["ts"].append(impression.ts)
            for name in files.USER_FEATURES:
                columns[name].append(impression.features[name])
            for name in files.MOVIE_FEATURES:
                columns[name].append(movie.features[name])
            for event in files.OTHER_EVENTS:
                columns[event].append(int(event in events))
            columns["shard"].append(shard)
            columns["stream_id"].append(impression.stream_id)
        self.stream_ids.append(impression.stream_id)
        self.count += len(impression.movies)
        self.clicks += clicks
        return clicks, dropped


def _read_entry(stream_id: str, entry: dict[str, str]) -> LoggedImpression | None:
    """The impression of a stream entry; None (with a warning) for one trimmed away or not
    written as the contract says."""
    if not entry:
        log.warning(f"[logs] impression {stream_id} was trimmed from its stream before export")
        return None
    try:
        data = event_log.read_impression_data(entry["data"])
        impression_id = str(entry["impression"])
    except (KeyError, ValueError) as exc:
        log.warning(f"[logs] impression {stream_id} is not readable ({exc}): skipped")
        return None
    movies = [
        ShownMovie(
            movie_id=str(movie_id),
            position=position,
            score=data.scores[position],
            features={name: data.movie_features[name][position] for name in files.MOVIE_FEATURES},
        )
        for position, movie_id in enumerate(data.movie_ids)
    ]
    return LoggedImpression(
        stream_id=stream_id,
        impression_id=impression_id,
        user_id=str(data.user_id),
        ts=data.ts,
        version=data.version,
        arm=data.arm,
        features={name: data.features[name] for name in files.USER_FEATURES},
        movies=movies,
    )
