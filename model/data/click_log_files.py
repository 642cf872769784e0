"""The files ``afm-ctr logs export`` writes: hourly Parquet files of logged impressions, one
row per shown movie, each file named by the stream entries it holds.

Layout under the export directory ``DIR``::

    DIR/hour=2026-12-01T13/s3_1796616305123-0_1796616309999-2.parquet

``hour=`` is the UTC hour of the impressions' ``ts``; ``s3`` the impression stream's shard;
then the first and last stream entry id in the file (the file holds those two and possibly
some between them; the ``stream_id`` column says exactly which). A file appears only by an
atomic rename of a complete, fsynced temporary file (``.tmp-*``, removed by the next run), so
any ``*.parquet`` a reader sees is whole.

Columns (ROW_SCHEMA): the impression (``impression_id``, ``stream_id``, ``shard``, ``ts``,
``user_id``, ``model_version``, ``arm``), the shown movie (``movie_id``, ``position``,
``score``), what was done with it (``label``: 1 for a click, and one 0/1 column per other
event type, ``view`` and ``skip``), and the raw features as served (LOGGED_FEATURES; null when
the impression did not log that feature). ``user_id`` and ``movie_id`` are the raw strings the
model reads.
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from model.contracts.event_log import EVENT_TYPES, MOVIE_LOG_FIELDS, USER_LOG_FIELDS

USER_FEATURES: tuple[str, ...] = USER_LOG_FIELDS
"""What an impression logs of its user: gender, age, occupation, zip, watched."""
MOVIE_FEATURES: tuple[str, ...] = MOVIE_LOG_FIELDS
"""What it logs of each shown movie: year, genres."""
LOGGED_FEATURES: tuple[str, ...] = (*USER_FEATURES, *MOVIE_FEATURES)
OTHER_EVENTS: tuple[str, ...] = tuple(t for t in EVENT_TYPES if t != "click")
"""Event types with a 0/1 column of their own; a click is the ``label``."""

ROW_SCHEMA = pa.schema(
    [
        ("impression_id", pa.string()),
        ("movie_id", pa.string()),
        ("label", pa.int8()),
        ("position", pa.int32()),
        ("score", pa.float64()),
        ("model_version", pa.int32()),
        ("arm", pa.string()),
        ("user_id", pa.string()),
        ("ts", pa.timestamp("ms", tz="UTC")),
        *((name, pa.string()) for name in LOGGED_FEATURES),
        *((name, pa.int8()) for name in OTHER_EVENTS),
        ("shard", pa.int16()),
        ("stream_id", pa.string()),
    ]
)

TMP_PREFIX = ".tmp-"
_NAME = re.compile(r"^s(?P<shard>\d+)_(?P<first>\d+-\d+)_(?P<last>\d+-\d+)\.parquet$")


def entry_order(stream_id: str) -> tuple[int, int]:
    """A stream entry id as a sortable pair: "1796616305123-2" -> (1796616305123, 2)."""
    ms, _, seq = stream_id.partition("-")
    return int(ms), int(seq or 0)


def hour_of(ts_ms: int) -> str:
    """The partition directory of an impression issued at ``ts_ms``: its UTC hour."""
    return datetime.fromtimestamp(ts_ms / 1000, UTC).strftime("hour=%Y-%m-%dT%H")


def file_name(shard: int, stream_ids: Sequence[str]) -> str:
    """The name of a file holding ``stream_ids`` (in stream order) of shard ``shard``."""
    return f"s{shard}_{stream_ids[0]}_{stream_ids[-1]}.parquet"


@dataclass(frozen=True)
class LogFile:
    """A complete exported file and the range of stream entries its name gives."""

    path: Path
    shard: int
    first: tuple[int, int]
    last: tuple[int, int]

    def may_hold(self, stream_id: str) -> bool:
        return self.first <= entry_order(stream_id) <= self.last

    def stream_ids(self) -> set[str]:
        """The stream entries the file holds (read from its ``stream_id`` column)."""
        column = pq.read_table(self.path, columns=["stream_id"]).column("stream_id")
        return set(column.to_pylist())


def parse_name(path: Path) -> LogFile | None:
    """The file ``path`` as named by ``file_name``, or None for any other name."""
    match = _NAME.match(path.name)
    if match is None:
        return None
    first, last = entry_order(match["first"]), entry_order(match["last"])
    return LogFile(path, int(match["shard"]), first, last)


def log_files(directory: Path) -> list[LogFile]:
    """Every complete exported file under ``directory``, by hour, shard and first entry."""
    found = (parse_name(p) for p in directory.glob("hour=*/*.parquet"))
    return sorted(
        (f for f in found if f is not None), key=lambda f: (f.path.parent, f.shard, f.first)
    )


def remove_partial_files(directory: Path) -> int:
    """Delete the temporary files an interrupted export left; returns how many."""
    partial = list(directory.glob(f"hour=*/{TMP_PREFIX}*"))
    for path in partial:
        path.unlink(missing_ok=True)
    return len(partial)


def write_rows(directory: Path, hour: str, name: str, rows: Mapping[str, list]) -> Path:
    """Write ``rows`` (ROW_SCHEMA's columns as lists) as ``directory/hour/name``, durably:
    a temporary file, fsynced, renamed into place, then the directory fsynced."""
    folder = directory / hour
    if not folder.is_dir():
        folder.mkdir(parents=True, exist_ok=True)
        _fsync_directory(directory)  # the new hour directory's entry
    table = pa.Table.from_pydict(dict(rows), schema=ROW_SCHEMA)
    tmp = folder / f"{TMP_PREFIX}{uuid.uuid4().hex}.parquet"
    with open(tmp, "wb") as out:
        pq.write_table(table, out, compression="zstd")
        out.flush()
        os.fsync(out.fileno())
    crash_point("before-rename")
    final = folder / name
    os.replace(tmp, final)
    _fsync_directory(folder)
    return final


def read_rows(paths: Iterable[Path]) -> pa.Table:
    """The rows of exported files, in ROW_SCHEMA (a file missing a column reads it as null)."""
    tables = [pq.read_table(path) for path in paths]
    if not tables:
        return ROW_SCHEMA.empty_table()
    return pa.concat_tables([_conform(table) for table in tables])


def _conform(table: pa.Table) -> pa.Table:
    columns = {
        name: table.column(name).cast(field.type)
        if name in table.column_names
        else pa.nulls(len(table), field.type)
        for name, field in zip(ROW_SCHEMA.names, ROW_SCHEMA, strict=True)
    }
    return pa.table(columns, schema=ROW_SCHEMA)


def _fsync_directory(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


CRASH_ENV = "AFM_EXPORT_CRASH_AT"
"""Test hook: ``before-rename:N`` or ``before-ack:N`` kills the exporter (SIGKILL) the Nth
time it reaches that point (N defaults to 1), to prove a restart neither loses nor duplicates."""
_reached: dict[str, int] = {}


def crash_point(point: str) -> None:
    """Die here, as a SIGKILL would, if CRASH_ENV names ``point`` for this time."""
    spec = os.environ.get(CRASH_ENV)
    if not spec:
        return
    name, _, nth = spec.partition(":")
    if name != point:
        return
    _reached[point] = _reached.get(point, 0) + 1
    if _reached[point] == int(nth or 1):
        import signal

        os.kill(os.getpid(), signal.SIGKILL)
