"""What people did with what ``/score`` showed them: ``POST /events``' batches, checked and
recorded in the log of ``model.contracts.event_log``.

Each event on its own: its impression id is checked without a lookup (signature, attribution
window), its time must lie between the impression and the window's end; then one Lua call
on the per-impression hash refuses a movie the impression did not show (when the hash is
there: an event may come before its impression is written) and records the event with
HSETNX, so a repeat answers "duplicate" and writes nothing else. An accepted event is added
to its user's events stream, and a click puts its movie first in the user's watched movies,
where the next ``/score`` reads them. Two round trips per batch, each pipelined.

The per-impression hash is the record of what was done: should the second round trip fail,
the events stay accepted there (a repeat answers "duplicate"), and the failure is counted.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from model.contracts import event_log, export_format, feature_layout
from model.contracts.event_log import ImpressionId, ImpressionIdError
from service.errors import (
    EventLogUnavailable,
    EventOutsideWindow,
    EventRefused,
    ExpiredImpression,
    FeatureStoreUnavailable,
    ForgedImpression,
    InvalidEvent,
    MalformedImpression,
    MovieNotShown,
    ServiceError,
    field_path,
    first_line,
    problem_of,
)
from service.feature_store import FeatureStore
from service.impressions import now_ms
from service.log_redis import FAILURES, Command, LogRedis
from service.schemas import Event, NotAnEvent

log = logging.getLogger(__name__)

CLOCK_SKEW_S = 60
"""An event's ``ts`` may be this much before its impression was issued or after now: the
client's clock is not the service's."""

INSTANCE = "/events"
OUTCOMES = ("accepted", "duplicate", "refused")

RECORD_SCRIPT = """
local shown = redis.call('HGET', KEYS[1], ARGV[1])
local position = -1
if shown then
  local at = 0
  for movie in string.gmatch(shown, '[^,]+') do
    if movie == ARGV[4] then position = at break end
    at = at + 1
  end
  if position < 0 then return -1 end
end
local fresh = redis.call('EXISTS', KEYS[1]) == 0
if redis.call('HSETNX', KEYS[1], ARGV[2], ARGV[3]) == 0 then return 0 end
if fresh then redis.call('EXPIRE', KEYS[1], ARGV[5]) end
return position + 2
"""
"""KEYS[1] = the per-impression hash; ARGV = SHOWN_FIELD, the event's field, its ts, the
movie id, the hash's TTL in seconds. -1: the impression did not show the movie; 0: recorded
before (nothing written); 1 or more: recorded (a hash created here expires like the
impression's), the movie's position in the reply + 2, or 1 when the hash did not say yet:
one integer, so the per-position click counts cost no second round trip."""

WATCHED_SCRIPT = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local movie, limit = ARGV[2], tonumber(ARGV[3])
local parts = {movie}
local watched = redis.call('HGET', KEYS[1], ARGV[1]) or ''
if watched ~= '' then
  local start = 1
  while #parts < limit do
    local stop = string.find(watched, '|', start, true)
    local part = string.sub(watched, start, (stop or 0) - 1)
    if part ~= movie then parts[#parts + 1] = part end
    if not stop then break end
    start = stop + 1
  end
end
redis.call('HSET', KEYS[1], ARGV[1], table.concat(parts, '|'))
local at = tonumber(redis.call('HGET', KEYS[1], ARGV[4]) or '')
if not at or at < tonumber(ARGV[5]) then redis.call('HSET', KEYS[1], ARGV[4], ARGV[5]) end
return 1
"""
"""KEYS[1] = the user's hash in the current namespace; ARGV = WATCHED, the movie id,
HISTORY_LENGTH, WATCHED_AT, the click's time in Unix seconds. Puts the movie first in the
user's watched movies (moved there if it was further down; empty parts keep their places),
keeping at most HISTORY_LENGTH, and moves WATCHED_AT forward to the click's time. 0: no such
user (a click creates no user), 1: done."""


@dataclass(frozen=True, slots=True)
class _Checked:
    """An event that passed the checks made without Redis."""

    index: int
    event: Event
    impression: ImpressionId
    ts: int


class EventRecorder:
    """Records ``POST /events`` batches through ``redis`` under ``prefix``; the watched
    movies of a click go to the feature set ``store`` reads."""

    def __init__(
        self,
        keys: dict[str, bytes],
        redis: LogRedis,
        store: FeatureStore,
        prefix: str,
        *,
        window_s: int,
        max_length: int,
        retry_after: int,
    ) -> None:
        self._keys = keys
        self._redis = redis
        self._store = store
        self._prefix = prefix
        self._window_s = window_s
        self._max_length = max_length
        self._retry_after = retry_after
        self.counts: Counter[tuple[str, str]] = Counter()  # (type, outcome or reason)
        self.clicks: Counter[tuple[int, str, int | None]] = Counter()
        """Accepted clicks by their impression's (version, arm) and the movie's position in
        the reply (None: the click came before the impression's hash)."""
        self.write_errors_total = 0  # accepted events whose stream entry or history failed

    async def record(self, entries: Sequence[Event | NotAnEvent]) -> list[dict[str, Any]]:
        """One result per entry, in order: ``{"outcome": "accepted"}``, ``"duplicate"``, or
        ``"refused"`` with a ``problem``. Raises EventLogUnavailable when Redis fails before
        the batch is recorded."""
        now = now_ms()
        results: list[dict[str, Any] | None] = [None] * len(entries)
        checked: list[_Checked] = []
        for index, entry in enumerate(entries):
            try:
                checked.append(self._check(index, entry, now))
            except EventRefused as exc:
                results[index] = self._refused(entry, exc)
        recorded = await self._record(checked, now)
        accepted: list[_Checked] = []
        for item, reply in zip(checked, recorded, strict=True):
            if isinstance(reply, int) and reply >= 1:
                accepted.append(item)
                results[item.index] = self._outcome(item.event.type, "accepted")
                if item.event.type == "click":
                    self._count_click(item.impression, None if reply == 1 else reply - 2)
            elif reply == 0:
                results[item.index] = self._outcome(item.event.type, "duplicate")
            elif reply == -1:
                shown = MovieNotShown(f"impression did not show movie {item.event.movie_id}")
                results[item.index] = self._refused(item.event, shown)
            else:  # an error reply for this event alone: it may be sent again
                detail = f"Redis refused to record the event: {first_line(reply)}"
                unavailable = EventLogUnavailable(detail, retry_after=self._retry_after)
                results[item.index] = self._refused(item.event, unavailable)
        if accepted:
            await self._follow_up(accepted)
        return results  # type: ignore[return-value]  # every index was set above

    def _check(self, index: int, entry: Event | NotAnEvent, now: int) -> _Checked:
        if isinstance(entry, NotAnEvent):
            raise _invalid(index, entry)
        try:
            impression = event_log.parse_impression_id(
                entry.impression_id, self._keys, now, self._window_s
            )
        except ImpressionIdError as exc:
            refused = {"malformed": MalformedImpression, "forged": ForgedImpression}
            raise refused.get(exc.reason, ExpiredImpression)(str(exc)) from None
        ts = now if entry.ts is None else entry.ts
        skew = CLOCK_SKEW_S * 1000
        end = min(impression.issued_ms + self._window_s * 1000, now + skew)
        if not impression.issued_ms - skew <= ts <= end:
            raise EventOutsideWindow(
                f"ts {ts} is not between the impression ({impression.issued_ms}) and the end "
                f"of its {self._window_s} s attribution window or now ({now}, give or take "
                f"{CLOCK_SKEW_S} s)"
            )
        return _Checked(index, entry, impression, ts)

    async def stream_lengths(self) -> dict[tuple[str, int], int]:
        """(stream, shard) -> entries, for every impressions and events stream (XLEN,
        pipelined); empty when Redis does not answer."""
        streams = [
            (name, shard, key(self._prefix, shard))
            for name, key in (("impressions", event_log.impressions_key),
                              ("events", event_log.events_key))
            for shard in range(event_log.LOG_SHARDS)
        ]  # fmt: skip
        try:
            replies = await self._redis.run([(b"XLEN", key) for _, _, key in streams])
        except FAILURES:
            return {}
        return {
            (name, shard): reply
            for (name, shard, _), reply in zip(streams, replies, strict=True)
            if isinstance(reply, int)
        }

    async def close(self) -> None:
        await self._redis.close()

    async def _record(self, checked: list[_Checked], now: int) -> list[Any]:
        """Round trip 1: RECORD_SCRIPT per event; its reply (or error) per event."""
        grace = event_log.ATTRIBUTION_TTL_GRACE_S
        commands: list[Command] = []
        for item in checked:
            expires = item.impression.issued_ms + (self._window_s + grace) * 1000
            commands.append(
                (b"EVAL", RECORD_SCRIPT, 1,
                 event_log.impression_key(self._prefix, item.impression.text),
                 event_log.SHOWN_FIELD, event_log.event_field(item.event.movie_id, item.event.type),
                 item.ts, item.event.movie_id, max(1, (expires - now) // 1000))
            )  # fmt: skip
        try:
            return await self._redis.run(commands)
        except FAILURES as exc:
            raise EventLogUnavailable(
                f"Redis unavailable: {first_line(exc)}; nothing of this "
                "batch may be recorded: send it again",
                retry_after=self._retry_after,
            ) from exc

    async def _follow_up(self, accepted: list[_Checked]) -> None:
        """Round trip 2: each accepted event to its user's events stream, each click's movie
        first in its user's watched movies. Failures are counted and logged, not raised:
        the events are recorded already."""
        commands: list[Command] = []
        for item in accepted:
            user = item.impression.user_id
            commands.append(
                (b"XADD", event_log.events_key(self._prefix, event_log.shard(user)),
                 b"MAXLEN", b"~", self._max_length, b"*",
                 b"impression", item.impression.text, b"movie_id", item.event.movie_id,
                 b"type", item.event.type, b"ts", item.ts)
            )  # fmt: skip
        clicks = [item for item in accepted if item.event.type == "click"]
        namespace = await self._namespace() if clicks else None
        if namespace is not None:
            for item in clicks:
                commands.append(
                    (b"EVAL", WATCHED_SCRIPT, 1,
                     feature_layout.user_key(namespace, item.impression.user_id),
                     feature_layout.WATCHED, item.event.movie_id, export_format.HISTORY_LENGTH,
                     feature_layout.WATCHED_AT, f"{item.ts / 1000:.3f}")
                )  # fmt: skip
        try:
            replies = await self._redis.run(commands)
        except FAILURES as exc:
            replies = [exc] * len(commands)
        failed = [reply for reply in replies if isinstance(reply, Exception)]
        if failed:
            self.write_errors_total += len(failed)
            log.warning(
                "%d of %d event stream entries and watched-movie updates failed: %s",
                len(failed),
                len(commands),
                first_line(failed[0]),
            )

    async def _namespace(self) -> str | None:
        try:
            return await self._store.namespace()
        except FeatureStoreUnavailable as exc:
            self.write_errors_total += 1
            log.warning("clicks not added to watched movies: %s", exc.detail)
            return None

    def _count_click(self, impression: ImpressionId, position: int | None) -> None:
        self.clicks[(impression.version, impression.arm, position)] += 1

    def _outcome(self, event_type: str, outcome: str) -> dict[str, Any]:
        self.counts[(event_type, outcome)] += 1
        return {"outcome": outcome}

    def _refused(self, entry: Event | NotAnEvent, exc: ServiceError) -> dict[str, Any]:
        """The result of a refused event; counted by its reason (``unavailable`` for a
        Redis error on this event alone)."""
        event_type = entry.type if isinstance(entry, Event) else "unknown"
        self.counts[(event_type, getattr(exc, "reason", "unavailable"))] += 1
        return {"outcome": "refused", "problem": problem_of(exc, INSTANCE)}


def _invalid(index: int, entry: NotAnEvent) -> InvalidEvent:
    errors = [
        {"field": field_path(("body", "events", index, *error["loc"])), "message": error["msg"]}
        for error in entry.errors
    ]
    shown = "; ".join(f"{e['field']}: {e['message']}" for e in errors[:3])
    return InvalidEvent(shown, errors)
