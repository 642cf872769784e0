"""Turn ratings (or the article's seed row files) into labelled train/valid/test rows.

``next-item`` (the article's task). Per user, ratings sorted by (timestamp, movie id), a
stable order. Every item after the first is a positive. The last item of each user is the
test positive, the second-to-last the validation positive, the rest train. A user with fewer
than three ratings has no held-out items: their one positive (if any) goes to train. Each
positive gets ``negatives`` movies drawn uniformly from the movies that user never rated
(from the catalogue of movies rated by anyone), in the same split. Rows of a split are laid
out in groups of ``1 + negatives``: the positive, then its negatives.

``rating``. rating >= 4 -> 1, rating <= 2 -> 0, rating 3 dropped; a seeded random 80/10/10
split of the remaining rows.

With ``history`` (``--fields history``) every row also gets what its user watched before it
(``model.data.history``), at most HISTORY_LENGTH movies, most recent first, and how long
before the row the latest of them was (LAST_WATCHED):

* next-item: the user's ratings strictly earlier than the row's positive (its negatives share
  it), whatever the split: a test row may see the validation movie, never its own.
* rating, timestamped data: the user's *training* rows strictly earlier than the row, so no
  row sees its own movie, a validation or a test rating.
* rating, all timestamps equal (ml-1m-notime): a seeded random order of the user's training
  movies, the row's own left out; LAST_WATCHED is "" (no time).

All randomness comes from ``np.random.default_rng(config.seed)`` (history samples from their
own stream, so the rows are the same with or without them); no per-row Python loops.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd

from model.config import DataConfig
from model.contracts.export_format import HISTORY_LENGTH
from model.data.dataset import MOVIE_COLUMNS, USER_COLUMNS, LabeledRows, PreparedData, Ratings
from model.data.history import all_equal, histories_before, movie_rank, sampled_histories
from model.data.movielens import load_ratings
from model.data.parsing import parse_categorical
from model.errors import AfmError, MalformedInput

log = logging.getLogger(__name__)

HELD_OUT_MIN_RATINGS = 3  # first item (never a positive) + valid + test
RATING_POSITIVE, RATING_NEGATIVE = 4, 2  # >= 4 positive, <= 2 negative, 3 dropped
SPLIT_SHARES = (0.8, 0.1, 0.1)
SEED_ROW_FIELDS = 7  # user_id gender age occupation zip movie_id label
SEED_ROWS_WITHOUT_HISTORY = (
    "seed row files carry no history (what each user watched before a row); "
    "use --fields seed (the default for them)"
)
HISTORY_SEED_STREAM = 3  # np.random.default_rng([seed, 3]): the rating protocol's samples
_MAX_REJECTION_ROUNDS = 64
_DENSE_CELLS = 1 << 28  # users x movies up to which 'rated' is a bitmap (256 MB)


def prepare(config: DataConfig, *, history: bool = False) -> PreparedData:
    """Rows for training, validation and test, as ``config`` asks (seed files or a protocol);
    with ``history``, each row's watched movies too (``--fields history`` needs them)."""
    if config.train_file or config.valid_file or config.test_file:
        if history:
            raise AfmError(SEED_ROWS_WITHOUT_HISTORY)
        return read_seed_rows(config)
    clock = _Stage()
    ratings = load_ratings(config)
    clock.done(f"read {len(ratings.rating):,} ratings ({ratings.source})")
    if config.protocol == "next-item":
        data = next_item(ratings, negatives=config.negatives, seed=config.seed, history=history)
    elif config.protocol == "rating":
        data = rating_threshold(ratings, seed=config.seed, history=history)
    else:
        raise AfmError(f"unknown protocol {config.protocol!r}; expected next-item or rating")
    parts = ", ".join(f"{k} {v['rows']:,} rows" for k, v in data.summary().items())
    clock.done(f"{config.protocol} protocol: {parts}")
    if config.holdout_movies:
        data = hold_out_movies(data, share=config.holdout_movies, seed=config.seed)
        clock.done(
            f"held out {len(data.held_out_movies):,} movies: their rows left train and "
            f"validation, {data.extra['held_out_test_rows']:,} test rows remain"
        )
    return data


def hold_out_movies(data: PreparedData, *, share: float, seed: int) -> PreparedData:
    """``data`` without a seeded random ``share`` of its movies in train and validation.

    Test rows keep them, so the trainer can report how well movies the model has never
    seen are scored (from their genres and year, and the trained out-of-vocabulary row).
    """
    if not 0 < share < 1:
        raise AfmError(f"the share of held-out movies must be in (0, 1), got {share}")
    rng = np.random.default_rng([seed, 1])  # its own stream: the protocol's draws are unchanged
    rated = np.unique(data.train.movie_idx)
    held = np.sort(rng.choice(rated, size=max(1, round(share * len(rated))), replace=False))

    def without(rows: LabeledRows) -> LabeledRows:
        return rows.take(~np.isin(rows.movie_idx, held))

    return dataclasses.replace(
        data,
        train=without(data.train),
        valid=without(data.valid),
        held_out_movies=held,
        extra={
            **data.extra,
            "held_out_movies": len(held),
            "held_out_test_rows": int(np.isin(data.test.movie_idx, held).sum()),
        },
    )


# ---------------------------------------------------------------- next-item


def next_item(
    ratings: Ratings, *, negatives: int, seed: int, history: bool = False
) -> PreparedData:
    """Leave-last-out positives with ``negatives`` unrated movies each; see the module doc."""
    if negatives < 1:
        raise AfmError(f"negatives must be at least 1, got {negatives}")
    ts = ratings.timestamp
    if len(ts) == 0 or (ts == ts[0]).all():
        raise AfmError(
            f"every timestamp in {ratings.source} is equal, so histories cannot be ordered "
            "by time for --protocol next-item; use --protocol rating for this data"
        )
    rng = np.random.default_rng(seed)
    user, movie = ratings.user_idx, ratings.movie_idx
    order = np.lexsort((movie_rank(ratings.movie_ids)[movie], ts, user))
    user, movie = user[order], movie[order]

    counts = np.bincount(user, minlength=len(ratings.users["user_id"]))
    first = np.concatenate(([0], np.cumsum(counts)[:-1]))
    position = np.arange(len(user)) - first[user]  # 0 = first item of the user's history
    remaining = counts[user] - position  # 1 = last item
    held_out = counts[user] >= HELD_OUT_MIN_RATINGS
    test = held_out & (remaining == 1)
    valid = held_out & (remaining == 2)
    train = (position >= 1) & ~test & ~valid

    clock = _Stage()
    sampler = _NegativeSampler(
        user, movie, n_users=len(ratings.users["user_id"]), n_movies=len(ratings.movie_ids)
    )
    blocked = np.intersect1d(sampler.users_without_negatives, user[position >= 1])
    if len(blocked):
        raise AfmError(
            f"user {ratings.users['user_id'][blocked[0]]} rated every movie in {ratings.source}, "
            "so no negative exists for next-item; remove that user or use --protocol rating"
        )
    splits = {}
    masks = {"train": train, "valid": valid, "test": test}
    for name, mask in masks.items():
        splits[name] = sampler.rows(user[mask], movie[mask], negatives, rng)
    clock.done(
        f"sampled {negatives} negatives for each of {int(position.astype(bool).sum()):,} positives"
    )
    histories, last_watched, history_extra = None, None, {}
    if history:
        histories, last_watched, splits = _next_item_histories(
            ratings, order, masks, splits, 1 + negatives
        )
        history_extra = {
            "history": f"the user's ratings strictly before the positive, most recent first "
            f"(ties: the higher movie id first), at most {HISTORY_LENGTH}; last_watched: the "
            "time from the latest of them to the positive",
            "histories": len(histories),
        }
        clock.done(f"{len(histories):,} distinct histories")
    return PreparedData(
        users=ratings.users,
        movies=ratings.movies,
        **splits,
        protocol="next-item",
        source=ratings.source,
        histories=histories,
        last_watched=last_watched,
        extra={
            **history_extra,
            "negatives": negatives,
            "seed": seed,
            "group_size": 1 + negatives,
            "negative_pool": "movies rated by anyone, minus the user's own ratings",
            "negative_pool_size": len(sampler.pool),
            "ratings": len(user),
            "users_without_held_out": int((counts[counts > 0] < HELD_OUT_MIN_RATINGS).sum()),
            "rejection_rounds": sampler.rounds,
        },
    )


def _next_item_histories(
    ratings: Ratings,
    order: np.ndarray,
    masks: dict[str, np.ndarray],
    splits: dict[str, LabeledRows],
    group_size: int,
) -> tuple[np.ndarray, np.ndarray, dict[str, LabeledRows]]:
    """Each positive's history and LAST_WATCHED (its ratings in ``order``, by split
    ``masks``) on its whole group of rows: the negatives of a positive share them."""
    positive = np.flatnonzero(masks["train"] | masks["valid"] | masks["test"])
    histories, last_watched, at = histories_before(
        ratings.user_idx,
        ratings.movie_idx,
        ratings.timestamp,
        ratings.movie_ids,
        pool=np.arange(len(order)),
        rows=order[positive],
    )
    by_position = np.zeros(len(order), dtype=np.int32)
    by_position[positive] = at
    with_history = {
        name: dataclasses.replace(
            splits[name], history_idx=np.repeat(by_position[mask], group_size)
        )
        for name, mask in masks.items()
    }
    return histories, last_watched, with_history


class _NegativeSampler:
    """Uniform draws from the pool of rated movies, excluding each user's own ratings.

    Rejection resampling: each round redraws only the rejected cells, so it costs a few
    vectorised passes when users rate a small share of the pool. "Rated" is a dense
    user x movie bitmap (22 MB for ML-1M), or a sorted key array when that would be too big.
    Cells still rejected after many rounds (users who rated nearly everything) are drawn
    exactly from their complement.
    """

    def __init__(self, user: np.ndarray, movie: np.ndarray, n_users: int, n_movies: int) -> None:
        self.n_movies = n_movies
        seen = np.zeros(n_movies, dtype=bool)
        seen[movie] = True
        self.pool = np.flatnonzero(seen).astype(np.int32)
        key = user.astype(np.int64) * n_movies + movie
        if n_users * n_movies <= _DENSE_CELLS:
            self.rated_cells = np.zeros(n_users * n_movies, dtype=bool)
            self.rated_cells[key] = True
            self.rated_keys = None
            per_user = self.rated_cells.reshape(n_users, n_movies).sum(axis=1)
        else:
            self.rated_cells = None
            self.rated_keys = _sorted_unique(key)
            per_user = np.bincount(self.rated_keys // n_movies, minlength=n_users)
        self.users_without_negatives = np.flatnonzero(per_user >= len(self.pool))
        self.rounds = 0

    def rows(
        self, user: np.ndarray, positive: np.ndarray, negatives: int, rng: np.random.Generator
    ) -> LabeledRows:
        """Groups of (positive, its negatives), flattened: shape (len(user) * (1 + negatives),)."""
        drawn = self._draw(np.repeat(user, negatives), rng).reshape(len(user), negatives)
        movie = np.concatenate([positive[:, None].astype(np.int32), drawn], axis=1).ravel()
        label = np.zeros((len(user), 1 + negatives), dtype=np.float32)
        label[:, 0] = 1.0
        return LabeledRows(
            user_idx=np.repeat(user, 1 + negatives).astype(np.int32, copy=False),
            movie_idx=movie.astype(np.int32, copy=False),
            label=label.ravel(),
        )

    def _draw(self, user: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        movie = self.pool[rng.integers(0, len(self.pool), size=len(user), dtype=np.int32)]
        todo = np.flatnonzero(self._is_rated(user, movie))
        rounds = 0
        while len(todo) and rounds < _MAX_REJECTION_ROUNDS:
            movie[todo] = self.pool[rng.integers(0, len(self.pool), size=len(todo), dtype=np.int32)]
            todo = todo[self._is_rated(user[todo], movie[todo])]
            rounds += 1
        for u in np.unique(user[todo]):  # rare: users who rated nearly the whole pool
            cells = todo[user[todo] == u]
            unrated = self.pool[~self._is_rated(np.full(len(self.pool), u), self.pool)]
            movie[cells] = unrated[rng.integers(0, len(unrated), size=len(cells))]
        self.rounds = max(self.rounds, rounds)
        return movie

    def _is_rated(self, user: np.ndarray, movie: np.ndarray) -> np.ndarray:
        key = user.astype(np.int64) * self.n_movies + movie
        if self.rated_cells is not None:
            return self.rated_cells[key]
        pos = np.minimum(np.searchsorted(self.rated_keys, key), len(self.rated_keys) - 1)
        return self.rated_keys[pos] == key


def _sorted_unique(values: np.ndarray) -> np.ndarray:
    """np.unique for a large integer array, via one sort (faster than hashing here)."""
    values = np.sort(values)
    return values[np.concatenate(([True], values[1:] != values[:-1]))]


# ---------------------------------------------------------------- rating


def rating_threshold(ratings: Ratings, *, seed: int, history: bool = False) -> PreparedData:
    """Binary labels from star ratings with a seeded random 80/10/10 split."""
    keep = (ratings.rating >= RATING_POSITIVE) | (ratings.rating <= RATING_NEGATIVE)
    rows = np.flatnonzero(keep)
    if len(rows) < 3:
        raise AfmError(f"{ratings.source} has {len(rows)} ratings outside 3 stars; too few")
    rng = np.random.default_rng(seed)
    rows = rows[rng.permutation(len(rows))]
    n_train = round(SPLIT_SHARES[0] * len(rows))
    n_valid = round(SPLIT_SHARES[1] * len(rows))
    bounds = {"train": (0, n_train), "valid": (n_train, n_train + n_valid)}
    bounds["test"] = (n_train + n_valid, len(rows))
    splits, parts = {}, {}
    for name, (lo, hi) in bounds.items():
        parts[name] = part = rows[lo:hi]
        splits[name] = LabeledRows(
            user_idx=ratings.user_idx[part].astype(np.int32),
            movie_idx=ratings.movie_idx[part].astype(np.int32),
            label=(ratings.rating[part] >= RATING_POSITIVE).astype(np.float32),
        )
    histories, last_watched, history_extra = None, None, {}
    if history:
        histories, last_watched, splits, history_extra = _rating_histories(
            ratings, parts, splits, seed
        )
    return PreparedData(
        users=ratings.users,
        movies=ratings.movies,
        **splits,
        protocol="rating",
        source=ratings.source,
        histories=histories,
        last_watched=last_watched,
        extra={
            **history_extra,
            "seed": seed,
            "positive": f"rating >= {RATING_POSITIVE}",
            "negative": f"rating <= {RATING_NEGATIVE}",
            "dropped": int((~keep).sum()),
            "split": list(SPLIT_SHARES),
            "ratings": len(ratings.rating),
        },
    )


def _rating_histories(
    ratings: Ratings, parts: dict[str, np.ndarray], splits: dict[str, LabeledRows], seed: int
) -> tuple[np.ndarray, np.ndarray, dict[str, LabeledRows], dict[str, object]]:
    """Histories and LAST_WATCHED from each user's training rows only (ratings
    ``parts["train"]``): those strictly earlier when the data has time, else a seeded sample
    without the row's own (LAST_WATCHED "")."""
    rows = np.concatenate(list(parts.values()))
    columns = (ratings.user_idx, ratings.movie_idx)
    if all_equal(ratings.timestamp):
        rng = np.random.default_rng([seed, HISTORY_SEED_STREAM])
        histories, last_watched, at = sampled_histories(
            *columns, ratings.movie_ids, pool=parts["train"], rows=rows, rng=rng
        )
        rule = (
            f"timestamps all equal: a seeded random order of the user's training movies "
            f"without the row's own, at most {HISTORY_LENGTH}"
        )
    else:
        histories, last_watched, at = histories_before(
            *columns, ratings.timestamp, ratings.movie_ids, pool=parts["train"], rows=rows
        )
        rule = (
            f"the user's training rows strictly before the row, most recent first "
            f"(ties: the higher movie id first), at most {HISTORY_LENGTH}"
        )
    bounds = np.cumsum([0, *(len(part) for part in parts.values())])
    with_history = {
        name: dataclasses.replace(splits[name], history_idx=at[lo:hi])
        for name, lo, hi in zip(parts, bounds[:-1], bounds[1:], strict=True)
    }
    extra = {"history": rule, "histories": len(histories)}
    return histories, last_watched, with_history, extra


# ---------------------------------------------------------------- seed rows


def read_seed_rows(config: DataConfig) -> PreparedData:
    """The article's tab-separated rows ``user_id gender age occupation zip movie_id label``.

    Users are the distinct 5-tuples of user columns and movies the distinct movie ids over
    all three files, so identical raw values share one table row. Labels must be 0 or 1.
    Text must be UTF-8 (ASCII is a subset); any other value is kept as its string. Columns
    are factorised without a Python string per cell, so ~11M rows take seconds.
    """
    files = {"train": config.train_file, "valid": config.valid_file, "test": config.test_file}
    if not all(files.values()):
        raise AfmError("seed rows need all three of --train-file, --valid-file, --test-file")
    clock = _Stage()
    vocabulary: list[dict[str, int]] = [{} for _ in range(SEED_ROW_FIELDS)]  # shared by files
    parsed = {name: _read_seed_file(Path(path), vocabulary) for name, path in files.items()}
    labels = {name: _seed_labels(columns[-1], files[name]) for name, columns in parsed.items()}
    user_idx, users = _distinct_users(
        [columns[:5] for columns in parsed.values()],
        [np.asarray(list(known), dtype=str) for known in vocabulary[:5]],
    )
    splits = {
        name: LabeledRows(user_idx=rows, movie_idx=columns[5][0], label=labels[name])
        for (name, columns), rows in zip(parsed.items(), user_idx, strict=True)
    }
    clock.done(f"read seed rows: {', '.join(f'{k} {len(v):,}' for k, v in labels.items())}")
    return PreparedData(
        users=users,
        movies=_movie_table(np.asarray(list(vocabulary[5]), dtype=str)),
        **splits,
        protocol="seed-rows",
        source=", ".join(str(p) for p in files.values()),
        extra={"files": {k: str(v) for k, v in files.items()}},
    )


def _movie_table(movie_ids: np.ndarray) -> dict[str, np.ndarray]:
    """Seed rows know movies by id only: title, year and genres are missing ("")."""
    missing = np.full(len(movie_ids), "", dtype=str)
    return {name: movie_ids if i == 0 else missing for i, name in enumerate(MOVIE_COLUMNS)}


def _read_seed_file(
    path: Path, vocabulary: list[dict[str, int]]
) -> list[tuple[np.ndarray, np.ndarray]]:
    if not path.is_file():
        raise AfmError(f"seed row file {path} does not exist")
    return parse_categorical(
        path.read_bytes(),
        str(path),
        sep=b"\t",
        fields=SEED_ROW_FIELDS,
        encoding="utf-8",
        vocabulary=vocabulary,
    )


def _seed_labels(column: tuple[np.ndarray, np.ndarray], path: Path) -> np.ndarray:
    codes, values = column
    bad_values = np.flatnonzero((values != "0") & (values != "1"))
    bad_rows = np.flatnonzero(np.isin(codes, bad_values)) if len(bad_values) else []
    if len(bad_rows):  # (a bad value may come from another file of the shared vocabulary)
        line = int(bad_rows[0])
        raise MalformedInput(
            f"{path}, line {line + 1}: label {str(values[codes[line]])!r} is not 0 or 1"
        )
    return (values == "1")[codes].astype(np.float32)


def _distinct_users(
    files: list[list[tuple[np.ndarray, np.ndarray]]], values: list[np.ndarray]
) -> tuple[list[np.ndarray], dict[str, np.ndarray]]:
    """Per file, each row's index into a table of the distinct 5-tuples of user columns.

    The 5-tuple becomes one integer by factorising column after column (each step stays far
    below 2^63), over all files at once so the table is shared.
    """
    sizes = [len(columns[0][0]) for columns in files]
    key = np.zeros(sum(sizes), dtype=np.int64)
    for i, column_values in enumerate(values):
        codes = np.concatenate([columns[i][0] for columns in files])
        key = pd.factorize(key * max(len(column_values), 1) + codes)[0]
    any_row = np.empty(int(key.max()) + 1 if len(key) else 0, dtype=np.int64)
    any_row[key] = np.arange(len(key))  # rows with one key share their 5-tuple
    users = {}
    for col, column_values, i in zip(USER_COLUMNS, values, range(5), strict=True):
        codes = np.concatenate([columns[i][0] for columns in files])
        users[col] = column_values[codes[any_row]]
    bounds = np.cumsum([0, *sizes])
    per_file = [key[a:b].astype(np.int32) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
    return per_file, users


class _Stage:
    """One log line per finished stage, with its duration."""

    def __init__(self) -> None:
        self.start = time.perf_counter()

    def done(self, message: str) -> None:
        now = time.perf_counter()
        log.info("[data] %s (%.1fs)", message, now - self.start)
        self.start = now
