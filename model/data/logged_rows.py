"""Training rows from the exported impression log (``afm-ctr train --from-logs DIR``): what
the service showed, labelled by what was clicked, with the features exactly as served.

Nothing is re-joined against the feature store: a row's user fields, watched movies, year
and genres are the ones its impression logged, so a model learns from what the model of the
time saw. The user table holds the distinct logged (user_id, gender, age, occupation, zip)
tuples, so a user whose features changed between impressions has one row per version of
them; the movie table likewise holds the distinct (movie_id, year, genres), and the histories
the distinct watched strings. Vocabularies and encoding then work as for a dataset.

Split by time, an impression's rows never parted: impressions ordered by ``ts`` (then id),
the first 80% train, the next 10% validate, the latest 10% test (SPLIT_SHARES). Rows whose
impression did not log a field the field set needs (``watched`` for history) are left out.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from model.contracts.export_format import (
    FIELD_SETS,
    HISTORY_FIELD,
    LAST_WATCHED,
    MOVIE_ID,
    USER_ID,
)
from model.data.click_log_files import log_files, read_rows
from model.data.dataset import MOVIE_COLUMNS, USER_COLUMNS, LabeledRows, PreparedData
from model.errors import AfmError

log = logging.getLogger(__name__)

SPLIT_SHARES = (0.8, 0.1, 0.1)
"""Of the impressions in time order: train, then validation, then the latest for the test."""
PROTOCOL = "logs"


def read_logged_rows(directory: Path, field_set: str) -> PreparedData:
    """The rows of every file ``afm-ctr logs export`` wrote under ``directory``, split by
    time, for ``field_set``; AfmError for a missing or empty log, or one without clicks."""
    if not directory.is_dir():
        raise AfmError(f"{directory} is not a directory; export the log with `afm-ctr logs export`")
    paths = [f.path for f in log_files(directory)]
    if not paths:
        raise AfmError(
            f"no exported impressions under {directory}; run `afm-ctr logs export --out "
            f"{directory}` first"
        )
    frame = _frame(read_rows(paths))
    frame = _usable(frame, field_set, directory)
    clicks = int(frame["label"].sum())
    if clicks == 0:
        raise AfmError(
            f"the {len(frame):,} logged rows under {directory} hold no click: nothing to learn "
            "from yet (export again once people have clicked)"
        )
    frame, bounds = _time_order(frame)
    users, user_idx = _table(frame, USER_COLUMNS)
    movies, movie_idx = _table(frame, (MOVIE_ID, "year", "genres"))
    movies = {"title": np.full(len(movies[MOVIE_ID]), "", dtype=str), **movies}
    pairs = pd.MultiIndex.from_frame(frame[[HISTORY_FIELD, LAST_WATCHED]])
    history_idx, histories = pairs.factorize()
    rows = LabeledRows(
        user_idx=user_idx,
        movie_idx=movie_idx,
        label=frame["label"].to_numpy(dtype=np.float32),
        history_idx=history_idx.astype(np.int32),
    )
    splits = {
        name: rows.take(np.arange(lo, hi))
        for name, lo, hi in zip(("train", "valid", "test"), bounds[:-1], bounds[1:], strict=True)
    }
    window = _window(frame, bounds, directory, len(paths), clicks)
    log.info(
        f"[data] {window['rows']:,} logged rows of {window['impressions']:,} impressions "
        f"({clicks:,} clicks) from {window['first_impression']} to "
        f"{window['last_impression']} in {len(paths):,} files"
    )
    return PreparedData(
        users={name: users[name] for name in USER_COLUMNS},
        movies={name: movies[name] for name in MOVIE_COLUMNS},
        **splits,
        protocol=PROTOCOL,
        source=f"impression log at {directory}",
        histories=histories.get_level_values(0).to_numpy(dtype=object),
        last_watched=histories.get_level_values(1).to_numpy(dtype=object),
        extra={
            "log": window,
            "split": "by impression time: the first 80% of impressions train, the next 10% "
            "validate, the latest 10% test",
            "features": "as logged when served",
        },
    )


def _frame(table: pa.Table) -> pd.DataFrame:
    """The columns training needs, ``ts`` as ms since the epoch, each (impression, movie)
    once (a file written twice by hand would repeat them)."""
    table = table.set_column(
        table.schema.get_field_index("ts"), "ts", table.column("ts").cast(pa.int64())
    )
    names = ["impression_id", "ts", "label", "position", *USER_COLUMNS, MOVIE_ID]
    names += ["year", "genres", LAST_WATCHED, HISTORY_FIELD]
    frame = table.select(names).to_pandas()
    repeated = frame.duplicated(["impression_id", MOVIE_ID])
    if repeated.any():
        log.warning(f"[data] {int(repeated.sum()):,} logged rows repeat another: left out")
        frame = frame[~repeated]
    return frame


def _usable(frame: pd.DataFrame, field_set: str, directory: Path) -> pd.DataFrame:
    """The rows that logged every field of ``field_set``; the other fields' missing values
    read as "" (the value for unknown)."""
    needed = [f for f in FIELD_SETS[field_set] if f not in (USER_ID, MOVIE_ID)]
    missing = frame[needed].isna().any(axis=1).to_numpy()
    if missing.all():
        absent = [f for f in needed if frame[f].isna().all()] or needed
        raise AfmError(
            f"none of the {len(frame):,} logged rows under {directory} carries "
            f"{', '.join(absent)}: the versions served did not log it; train with another "
            "--fields"
        )
    if missing.any():
        log.info(
            f"[data] {int(missing.sum()):,} logged rows lack a field of --fields {field_set}: "
            "left out"
        )
        frame = frame[~missing]
    columns = [*USER_COLUMNS, MOVIE_ID, "year", "genres", LAST_WATCHED, HISTORY_FIELD]
    return frame.assign(**{c: frame[c].fillna("").astype(str) for c in columns})


def _time_order(frame: pd.DataFrame) -> tuple[pd.DataFrame, np.ndarray]:
    """``frame`` ordered by impression time (then impression id, then position), and the row
    bounds of train, validation and test."""
    frame = frame.sort_values(["ts", "impression_id", "position"], kind="stable")
    frame = frame.reset_index(drop=True)
    starts = np.flatnonzero(frame["impression_id"].ne(frame["impression_id"].shift()).to_numpy())
    impressions = len(starts)
    cut = np.round(np.cumsum(SPLIT_SHARES[:2]) * impressions).astype(int)
    row_cuts = [int(starts[c]) if c < impressions else len(frame) for c in cut]
    return frame, np.array([0, *row_cuts, len(frame)])


def _table(
    frame: pd.DataFrame, columns: tuple[str, ...]
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """The distinct tuples of ``columns`` as a table of raw strings, and each row's index."""
    codes, distinct = pd.MultiIndex.from_frame(frame[list(columns)]).factorize()
    table = {
        name: np.asarray(distinct.get_level_values(i), dtype=str) for i, name in enumerate(columns)
    }
    return table, codes.astype(np.int32)


def _window(
    frame: pd.DataFrame, bounds: np.ndarray, directory: Path, files: int, clicks: int
) -> dict[str, object]:
    """What metadata.json records of the log a version learnt from."""
    ts = frame["ts"].to_numpy()

    def when(ms: int) -> str:
        return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds")

    return {
        "directory": str(directory),
        "files": files,
        "impressions": int(frame["impression_id"].nunique()),
        "rows": len(frame),
        "clicks": clicks,
        "first_impression": when(int(ts[0])),
        "last_impression": when(int(ts[-1])),
        "valid_from": when(int(ts[bounds[1]])) if bounds[1] < len(ts) else None,
        "test_from": when(int(ts[bounds[2]])) if bounds[2] < len(ts) else None,
    }
