"""Reads what the impression log says about a time window: who was shown what by which
version and arm, and which shown movies were clicked.

Through the keys of ``model.contracts.event_log`` only: each impression stream shard is read
with XRANGE over the window (paged, by stream id, i.e. the time Redis stored the entry), and
the per-impression hashes of a page are fetched with HGETALL in one pipeline. On a Redis
Cluster the same code runs through redis-py's cluster client, whose pipeline sends each
HGETALL to the master holding it. A click counts when its movie was shown (the exporter's
rule) and it arrived within the attribution window, which the service already enforces.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import UTC, datetime

import redis

from model.contracts import event_log
from model.data.click_logs import FAILURES, Client, connect  # noqa: F401 (one connect for both)
from model.errors import AfmError, one_line

PAGE = 2000
"""Stream entries per XRANGE, and HGETALLs per pipeline."""


@dataclass(frozen=True, slots=True)
class LoggedOutcome:
    """One logged ``/score`` reply and what came of it."""

    user_id: int
    version: int
    arm: str
    positions: tuple[int, ...]
    """The position (0 first) of every movie shown."""
    clicked: tuple[int, ...]
    """The positions of the shown movies that were clicked."""


@dataclass
class LogWindow:
    """The impressions of ``[start_ms, end_ms]`` and what could not be counted."""

    start_ms: int
    end_ms: int
    impressions: list[LoggedOutcome] = field(default_factory=list)
    unreadable: int = 0
    """Stream entries not written as the contract says (skipped)."""
    without_hash: int = 0
    """Impressions whose per-impression hash is gone (expired) or was never written: their
    clicks are unknown, so they are left out."""
    log_begins_ms: int | None = None
    """Set when a shard's stream was trimmed (MAXLEN) past ``start_ms``: the window is
    covered only from here."""
    trimmed_length: int = 0
    """The entries a trimmed stream held when read: about the service's stream length."""

    def trimmed(self) -> str | None:
        """In plain words, when the streams were trimmed past the window's start: what is
        gone, and the stream length the window needs (impressions/s × window ÷ shards, the
        rate taken over the part still there)."""
        if self.log_begins_ms is None:
            return None
        read = len(self.impressions) + self.without_hash + self.unreadable
        per_s = read / max(1.0, (self.end_ms - self.log_begins_ms) / 1000)
        needed = math.ceil(per_s * (self.end_ms - self.start_ms) / 1000 / event_log.LOG_SHARDS)
        return (
            f"the impression log was trimmed: a stream now begins at "
            f"{_clock(self.log_begins_ms)} UTC, after the window's start "
            f"({_clock(self.start_ms)} UTC), so the window's impressions before then are "
            f"gone; the streams keep about {self.trimmed_length:,} entries each and this window "
            f"needs about {needed:,} (impressions/s × window ÷ {event_log.LOG_SHARDS}): raise the "
            "service's AFM_LOG_STREAM_MAX_LENGTH"
        )

    def notes(self) -> list[str]:
        """What a reader of the figures should know, one line each (a trimmed log is
        ``trimmed``'s)."""
        out = []
        if self.without_hash:
            out.append(
                f"{self.without_hash:,} impressions had no per-impression hash (expired or not "
                "written) and were left out"
            )
        if self.unreadable:
            out.append(f"{self.unreadable:,} stream entries were unreadable and skipped")
        return out


def read_window(client: Client, prefix: str, start_ms: int, end_ms: int) -> LogWindow:
    """Every logged impression stored in ``[start_ms, end_ms]`` (ms since the epoch), with
    its clicks; AfmError in one line when Redis cannot be read."""
    window = LogWindow(start_ms, end_ms)
    try:
        for shard in range(event_log.LOG_SHARDS):
            _read_shard(client, prefix, shard, window)
    except FAILURES as exc:
        raise AfmError(f"reading the impression log failed: {one_line(exc)}") from None
    return window


def _read_shard(client: Client, prefix: str, shard: int, window: LogWindow) -> None:
    key = event_log.impressions_key(prefix, shard)
    _check_trimmed(client, key, window)
    low = str(window.start_ms)
    while page := client.xrange(key, min=low, max=str(window.end_ms), count=PAGE):
        _read_page(client, prefix, page, window)
        if len(page) < PAGE:
            break
        low = f"({page[-1][0]}"


def _check_trimmed(client: Client, key: str, window: LogWindow) -> None:
    """Set ``window.log_begins_ms`` when entries of the window were trimmed away (MAXLEN): the
    stream has lost entries (Redis >= 7 counts those added; older ones cannot tell) and now
    begins after the start. XINFO STREAM's first entry, not XRANGE, so an empty window in a
    busy stream costs no read."""
    try:
        info = client.xinfo_stream(key)
    except redis.ResponseError:  # no such stream: nothing logged to this shard
        return
    added, first = info.get("entries-added"), info.get("first-entry")
    if added is None or not first or int(added) <= int(info["length"]):
        return
    begins = _stream_ms(first[0])
    if begins > window.start_ms:
        window.log_begins_ms = max(window.log_begins_ms or 0, begins)
        window.trimmed_length = max(window.trimmed_length, int(info["length"]))


def _read_page(
    client: Client, prefix: str, page: list[tuple[str, dict[str, str]]], window: LogWindow
) -> None:
    entries = []
    for _, fields in page:
        entry = _parse(fields)
        if entry is None:
            window.unreadable += 1
        else:
            entries.append(entry)
    pipe = client.pipeline(transaction=False)
    for entry in entries:
        pipe.hgetall(event_log.impression_key(prefix, entry.impression_id))
    for entry, recorded in zip(entries, pipe.execute(), strict=True):
        if not recorded:
            window.without_hash += 1
            continue
        clicked: tuple[int, ...] = ()
        if len(recorded) > 1:  # more than ``shown``: something happened
            clicked = tuple(
                position
                for movie_id, position in zip(entry.movies, entry.positions, strict=True)
                if event_log.event_field(movie_id, "click") in recorded
            )
        window.impressions.append(
            LoggedOutcome(entry.user_id, entry.version, entry.arm, entry.positions, clicked)
        )


@dataclass(frozen=True, slots=True)
class _Entry:
    impression_id: str
    user_id: int
    version: int
    arm: str
    movies: tuple[int, ...]
    positions: tuple[int, ...]
    """Of each movie in ``movies``: where it was shown."""


def _parse(fields: dict[str, str]) -> _Entry | None:
    """A stream entry's impression; None if it is not written as the contract says."""
    try:
        data = event_log.read_impression_data(fields["data"])
        impression_id = str(fields["impression"])
    except (KeyError, ValueError):
        return None
    return _Entry(
        impression_id=impression_id,
        user_id=data.user_id,
        version=data.version,
        arm=data.arm,
        movies=tuple(data.movie_ids),
        positions=tuple(range(len(data.movie_ids))),
    )


def _stream_ms(stream_id: str) -> int:
    return int(stream_id.partition("-")[0])


def _clock(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S")
