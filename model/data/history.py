"""What a user watched before a row: the HISTORY_FIELD values of the protocols' rows and of
the feature store.

A history is movie ids joined by "|", most recent first, at most HISTORY_LENGTH of them
("50|1|181"; "" for none). Rows share histories, so each builder returns the distinct
history strings (an object array of str) and, per row, an int32 index into them: ML-1M's
~11M next-item rows then cost one int32 each, not a string.

Point in time: a row sees only what its user rated strictly before it, ties in time broken
by movie id (the higher id counts as the more recent, as the next-item protocol orders a
user's ratings), and how long before it the latest of those was (LAST_WATCHED; each history
comes with its value). Data without timestamps has no "before": there a row sees a seeded
random sample of its user's movies, its own movie left out, and LAST_WATCHED is "".
"""

from __future__ import annotations

import numpy as np

from model.contracts.export_format import HISTORY_FIELD, HISTORY_LENGTH, MULTI_VALUED
from model.data.dataset import PAD

SEPARATOR = MULTI_VALUED[HISTORY_FIELD]


def movie_rank(movie_ids: np.ndarray) -> np.ndarray:
    """Sort rank of each movie id: numeric when every id is an integer, else as text."""
    ids = np.asarray(movie_ids, dtype=str)
    keys = ids.astype(np.int64) if np.char.isdigit(ids).all() else ids
    rank = np.empty(len(ids), dtype=np.int64)
    rank[np.argsort(keys, kind="stable")] = np.arange(len(ids))
    return rank


def all_equal(timestamp: np.ndarray) -> bool:
    """True when the timestamps cannot order anything (ml-1m-notime's are all 0)."""
    return len(timestamp) == 0 or bool((timestamp == timestamp[0]).all())


def histories_before(
    user: np.ndarray,
    movie: np.ndarray,
    timestamp: np.ndarray,
    movie_ids: np.ndarray,
    *,
    pool: np.ndarray,
    rows: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """For each rating in ``rows``, the movies of its user's ratings in ``pool`` with a
    timestamp strictly earlier, most recent first, at most HISTORY_LENGTH.

    ``user``, ``movie``, ``timestamp`` are the columns of all ratings; ``pool`` and ``rows``
    index them. Returns (distinct histories, their LAST_WATCHED values: the time from the
    most recent of those movies to the row, int32 index per row).
    """
    tie = movie_rank(movie_ids)[movie[pool]]
    order = pool[np.lexsort((tie, timestamp[pool], user[pool]))]
    _, time = np.unique(timestamp, return_inverse=True)  # ranks: a key that cannot overflow
    key = user.astype(np.int64) * (int(time.max(initial=0)) + 1) + time
    cut = np.searchsorted(key[order], key[rows], side="left")  # first pool rating not earlier
    first = np.searchsorted(user[order], user[rows], side="left")
    latest = timestamp[order][np.maximum(cut - 1, 0)]  # read only where cut > first
    ago = _power_of_two(timestamp[rows] - latest)
    return _most_recent(movie[order], first, cut, movie_ids, ago)


def sampled_histories(
    user: np.ndarray,
    movie: np.ndarray,
    movie_ids: np.ndarray,
    *,
    pool: np.ndarray,
    rows: np.ndarray,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """For data without time: per row, a random order of its user's movies in ``pool``
    (one order per user, from ``rng``) without the row's own movie, the first
    HISTORY_LENGTH kept.

    Each user keeps HISTORY_LENGTH + 1 sampled movies; a row drops its own movie if it is
    among them, else the last: at most HISTORY_LENGTH + 1 distinct histories per user.
    Returns (distinct histories, their LAST_WATCHED values, all "": no time, int32 index per
    row).
    """
    width = HISTORY_LENGTH + 1
    sample = _user_sample(user, movie, pool, rng, width)
    row_user = user[rows]
    own = sample[row_user] == movie[rows][:, None]  # (rows, width)
    dropped = np.where(own.any(axis=1), own.argmax(axis=1), HISTORY_LENGTH)
    keys, at = np.unique(row_user.astype(np.int64) * width + dropped, return_inverse=True)
    key_user, key_dropped = np.divmod(keys, width)
    columns = np.arange(HISTORY_LENGTH)[None, :]
    columns = columns + (columns >= key_dropped[:, None])  # skip the dropped column
    histories = _joined(sample[key_user[:, None], columns], movie_ids)
    return histories, np.full(len(histories), "", dtype=object), at.astype(np.int32)


def latest_watched(
    user: np.ndarray,
    movie: np.ndarray,
    timestamp: np.ndarray,
    movie_ids: np.ndarray,
    *,
    users: int,
    seed: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Per user row 0..users-1, the history a request made after all these ratings sees:
    the user's HISTORY_LENGTH most recent movies, most recent first ("" for none), and the
    time of the latest, Unix seconds as a decimal string (feature_layout.WATCHED_AT; "" for
    none, and for all when the data has no time).

    Ties in time go to the higher movie id, as in training. When every timestamp is equal
    the order is a seeded random one (``seed``), so the movies kept are a random sample of
    the user's ratings, as the rating protocol's histories are.
    """
    timeless = all_equal(timestamp)
    if timeless:
        tie = np.random.default_rng(seed).permutation(len(user))
    else:
        tie = movie_rank(movie_ids)[movie]
    order = np.lexsort((tie, timestamp, user))
    user_row = np.arange(users)
    first = np.searchsorted(user[order], user_row, side="left")
    end = np.searchsorted(user[order], user_row, side="right")
    histories, _, at = _most_recent(movie[order], first, end, movie_ids)
    latest = timestamp[order][np.maximum(end - 1, 0)].astype(str).astype(object)
    watched_at = np.where((end > first) & (not timeless), latest, "").astype(object)
    return histories[at], watched_at


def _user_sample(
    user: np.ndarray, movie: np.ndarray, pool: np.ndarray, rng: np.random.Generator, width: int
) -> np.ndarray:
    """int32 (users, width): each user's first ``width`` pool movies in a random order, PAD
    after."""
    shuffled = pool[rng.permutation(len(pool))]
    shuffled = shuffled[np.argsort(user[shuffled], kind="stable")]
    owner = user[shuffled]
    counts = np.bincount(owner, minlength=int(user.max(initial=-1)) + 1)
    position = np.arange(len(shuffled)) - (np.cumsum(counts) - counts)[owner]
    sample = np.full((len(counts), width), PAD, dtype=np.int32)
    kept = position < width
    sample[owner[kept], position[kept]] = movie[shuffled[kept]]
    return sample


def _power_of_two(seconds: np.ndarray) -> np.ndarray:
    """export_format.last_watched_value's k for each gap, as int64 (exact up to 2**53 s)."""
    return np.frexp(np.maximum(seconds, 1).astype(np.float64))[1].astype(np.int64) - 1


NO_LAST_WATCHED = -1
"""_power_of_two's place holder for LAST_WATCHED's "": no movie watched before the row."""


def _most_recent(
    sorted_movie: np.ndarray,
    first: np.ndarray,
    cut: np.ndarray,
    movie_ids: np.ndarray,
    ago: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per row, ``sorted_movie[first:cut]`` (its user's ratings before it, oldest first) read
    backwards, at most HISTORY_LENGTH, with its ``ago`` (``_power_of_two``, ignored for an
    empty history; None: all unknown): (distinct history strings, their LAST_WATCHED values,
    int32 index per row).

    Rows with the same ``cut`` and ``ago`` share one history (``cut`` is inside one user's
    ratings); every empty history is the one "".
    """
    count = np.minimum(cut - first, HISTORY_LENGTH)
    if ago is None:
        ago = np.full(len(cut), NO_LAST_WATCHED, dtype=np.int64)
    ago = np.where(count > 0, ago, NO_LAST_WATCHED)
    ago_values = 64  # power-of-two buckets of int64 seconds, and "" (NO_LAST_WATCHED)
    row_key = np.where(count > 0, cut, -1).astype(np.int64) * ago_values + ago + 1
    _, one_row, at = np.unique(row_key, return_index=True, return_inverse=True)
    histories = _reversed_slices(sorted_movie, cut[one_row], count[one_row], movie_ids)
    values = ago[one_row]
    last_watched = np.where(values == NO_LAST_WATCHED, "", values.astype(str)).astype(object)
    return histories, last_watched, at.astype(np.int32)


def _reversed_slices(
    sorted_movie: np.ndarray, cut: np.ndarray, count: np.ndarray, movie_ids: np.ndarray
) -> np.ndarray:
    """The ``count`` movies before position ``cut`` of ``sorted_movie``, last first, joined.

    Read backwards, they are ``count`` neighbours: all ids are joined backwards once, and
    each history is one slice of that text (no Python work per movie).
    """
    ids = np.asarray(movie_ids, dtype=str)
    backwards = sorted_movie[::-1]
    text = SEPARATOR.join(ids[backwards].tolist())
    offset = np.concatenate(([0], np.cumsum(np.char.str_len(ids)[backwards] + 1)))
    start = len(sorted_movie) - np.maximum(cut, 0)
    lo, hi = offset[start], offset[start + count] - 1  # count 0: an empty slice
    return np.array([text[a:b] for a, b in zip(lo.tolist(), hi.tolist(), strict=True)], object)


def _joined(movies: np.ndarray, movie_ids: np.ndarray) -> np.ndarray:
    """Each row of a movie-index matrix (PAD at the end) as its ids joined by SEPARATOR."""
    ids = np.append(np.asarray(movie_ids, dtype=object), "")  # PAD (-1) reads as ""
    rows = ids[movies].tolist()
    return np.array([SEPARATOR.join(filter(None, row)) for row in rows], dtype=object)
