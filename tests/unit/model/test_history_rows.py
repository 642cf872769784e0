"""What a user watched before each row (--fields history): point in time on real MovieLens,
shared by reference, encoded 20 wide, refused for seed rows, loaded into Redis."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import redis
from typer.testing import CliRunner

from model.cli.main import app
from model.config import DataConfig
from model.contracts import feature_layout
from model.contracts.export_format import (
    HISTORY_FIELD,
    HISTORY_FIELDS,
    HISTORY_LENGTH,
    last_watched_value,
)
from model.data.dataset import PAD, LabeledRows, PreparedData, Ratings, history_codes
from model.data.history import latest_watched
from model.data.load_features import load_features
from model.data.movielens import load_feature_set, load_ratings
from model.data.protocols import hold_out_movies, next_item, prepare, rating_threshold
from model.data.synth import write_synthetic
from model.errors import AfmError
from tests.conftest import shared_data

NEGATIVES = 3


@pytest.fixture(scope="module")
def ml100k() -> Ratings:
    return load_ratings(DataConfig(dataset="ml-100k", data_dir=shared_data("ml-100k")))


@pytest.fixture(scope="module")
def next_item_rows(ml100k: Ratings) -> PreparedData:
    return next_item(ml100k, negatives=NEGATIVES, seed=5, history=True)


@pytest.fixture(scope="module")
def rating_rows(ml100k: Ratings) -> PreparedData:
    return rating_threshold(ml100k, seed=5, history=True)


@pytest.fixture(scope="module")
def untimed(ml100k: Ratings) -> Ratings:
    """ML-100K as ml-1m-notime is: every timestamp 0."""
    return replace(ml100k, timestamp=np.zeros_like(ml100k.timestamp))


# ---------------------------------------------------------------- checks on raw ratings


class Watched:
    """Each row's history as (row, position, movie row), checked against the raw ratings."""

    def __init__(self, data: PreparedData, rows: LabeledRows) -> None:
        index = {movie_id: i for i, movie_id in enumerate(data.movie_ids.tolist())}
        split = [text.split("|") if text else [] for text in data.histories.tolist()]
        lengths = np.array([len(parts) for parts in split])
        movies = np.array([index[m] for parts in split for m in parts], dtype=np.int64)
        starts = np.cumsum(lengths) - lengths
        per_row = lengths[rows.history_idx]
        self.row = np.repeat(np.arange(len(rows)), per_row)
        self.position = np.arange(per_row.sum()) - np.repeat(np.cumsum(per_row) - per_row, per_row)
        self.movie = movies[starts[rows.history_idx][self.row] + self.position]
        self.user = rows.user_idx[self.row]
        self.lengths = per_row
        self.last_watched = data.last_watched[rows.history_idx]  # LAST_WATCHED per row


def pair_keys(ratings: Ratings, user: np.ndarray, movie: np.ndarray) -> np.ndarray:
    """One integer per (user, movie) pair."""
    return user.astype(np.int64) * len(ratings.movie_ids) + movie


def rating_time(ratings: Ratings, user: np.ndarray, movie: np.ndarray) -> np.ndarray:
    """Timestamp of each (user, movie) rating; -1 where the user never rated the movie."""
    n_movies = len(ratings.movie_ids)
    times = np.full(len(ratings.users["user_id"]) * n_movies, -1, dtype=np.int64)
    times[pair_keys(ratings, ratings.user_idx, ratings.movie_idx)] = ratings.timestamp
    return times[pair_keys(ratings, user, movie)]


def earlier(ratings: Ratings, pool: np.ndarray, user: np.ndarray, time: np.ndarray) -> tuple:
    """Per (user, time): how many pool ratings of the user are strictly earlier, the time
    of the HISTORY_LENGTH-th most recent of them (or of the oldest, when fewer) and the time
    of the most recent (-1 for none)."""
    key = ratings.user_idx[pool].astype(np.int64) << 32 | ratings.timestamp[pool]
    key = np.sort(key)
    cut = np.searchsorted(key, user.astype(np.int64) << 32 | time)
    first = np.searchsorted(key, user.astype(np.int64) << 32)
    count = np.minimum(cut - first, HISTORY_LENGTH)
    oldest = np.where(count > 0, key[np.maximum(cut - count, 0)] & 0xFFFFFFFF, -1)
    latest = np.where(count > 0, key[np.maximum(cut - 1, 0)] & 0xFFFFFFFF, -1)
    return cut - first, oldest, latest


def assert_point_in_time(ratings: Ratings, rows: LabeledRows, watched: Watched, pool) -> None:
    """Every watched movie was rated (in ``pool``) by the row's user strictly before the
    row's own rating, most recent first, and the history is the most recent HISTORY_LENGTH;
    LAST_WATCHED is the time from the most recent pool rating before the row to the row."""
    own_time = rating_time(ratings, rows.user_idx, rows.movie_idx)
    assert (own_time >= 0).all()
    seen_time = rating_time(ratings, watched.user, watched.movie)
    allowed = pair_keys(ratings, ratings.user_idx[pool], ratings.movie_idx[pool])
    pooled = np.isin(pair_keys(ratings, watched.user, watched.movie), allowed)
    assert pooled.all(), "a history holds a movie outside the user's allowed ratings"
    assert (seen_time < own_time[watched.row]).all(), "a history holds an event at/after its row"
    later = watched.position[1:] > 0
    assert (np.diff(seen_time)[later] <= 0).all(), "a history is not most recent first"
    count, oldest, latest = earlier(ratings, pool, rows.user_idx, own_time)
    gaps = (own_time - latest).tolist()
    expected = [last_watched_value(g) if n else "" for g, n in zip(gaps, count, strict=True)]
    assert watched.last_watched.tolist() == expected
    np.testing.assert_array_equal(watched.lengths, np.minimum(count, HISTORY_LENGTH))
    last = np.zeros(len(rows), dtype=np.int64) - 1
    ends = watched.lengths > 0
    last[ends] = seen_time[(np.cumsum(watched.lengths) - 1)[ends]]
    np.testing.assert_array_equal(last, oldest)  # nothing more recent was left out


def positives(rows: LabeledRows) -> LabeledRows:
    return rows.take(rows.label == 1)


# ---------------------------------------------------------------- next-item


def test_next_item_histories_hold_only_what_the_user_rated_before(
    ml100k: Ratings, next_item_rows: PreparedData
) -> None:
    everything = np.arange(len(ml100k.rating))
    for split in ("train", "valid", "test"):
        rows = positives(getattr(next_item_rows, split))
        assert_point_in_time(ml100k, rows, Watched(next_item_rows, rows), everything)


def test_next_item_negatives_share_their_positive_history(next_item_rows: PreparedData) -> None:
    for split in ("train", "valid", "test"):
        groups = getattr(next_item_rows, split).history_idx.reshape(-1, 1 + NEGATIVES)
        assert (groups == groups[:, :1]).all()
    assert next_item_rows.histories.dtype == object
    assert len(next_item_rows.histories) < len(next_item_rows.train) // (1 + NEGATIVES)


def test_test_rows_see_nothing_of_the_test_rows(next_item_rows: PreparedData) -> None:
    data = next_item_rows
    test = positives(data.test)
    held = set(zip(test.user_idx.tolist(), test.movie_idx.tolist(), strict=True))
    for split in ("valid", "test"):
        rows = positives(getattr(data, split))
        watched = Watched(data, rows)
        pairs = zip(watched.user.tolist(), watched.movie.tolist(), strict=True)
        assert not held & set(pairs), f"a {split} row's history holds a test movie"
    valid = positives(data.valid)
    seen_valid = Watched(data, test)
    valid_of = dict(zip(valid.user_idx.tolist(), valid.movie_idx.tolist(), strict=True))
    hits = [valid_of.get(u) == m for u, m in zip(seen_valid.user, seen_valid.movie, strict=True)]
    assert any(hits)  # a test row may see the validation movie, which came earlier


def test_synthetic_data_follows_the_same_rule(tmp_path: Path) -> None:
    write_synthetic(tmp_path, users=60, movies=50, ratings=2000, seed=4)
    ratings = load_ratings(DataConfig(dataset="synthetic", data_dir=tmp_path))
    data = next_item(ratings, negatives=2, seed=1, history=True)
    rows = positives(data.train)
    assert_point_in_time(ratings, rows, Watched(data, rows), np.arange(len(ratings.rating)))


def test_histories_leave_the_rows_themselves_unchanged(ml100k: Ratings, next_item_rows) -> None:
    plain = next_item(ml100k, negatives=NEGATIVES, seed=5)
    assert plain.histories is None and plain.train.history_idx is None
    for split in ("train", "valid", "test"):
        a, b = getattr(plain, split), getattr(next_item_rows, split)
        np.testing.assert_array_equal(a.movie_idx, b.movie_idx)
        np.testing.assert_array_equal(a.user_idx, b.user_idx)


# ---------------------------------------------------------------- rating protocol


def training_ratings(ratings: Ratings, data: PreparedData) -> np.ndarray:
    """Indices of the ratings behind ``data.train``'s rows."""
    every = pair_keys(ratings, ratings.user_idx, ratings.movie_idx)
    return np.flatnonzero(
        np.isin(every, pair_keys(ratings, data.train.user_idx, data.train.movie_idx))
    )


def test_rating_histories_come_from_earlier_training_rows_only(
    ml100k: Ratings, rating_rows: PreparedData
) -> None:
    pool = training_ratings(ml100k, rating_rows)
    for split in ("train", "valid", "test"):
        rows = getattr(rating_rows, split)
        watched = Watched(rating_rows, rows)
        assert (watched.movie != rows.movie_idx[watched.row]).all()
        assert_point_in_time(ml100k, rows, watched, pool)


def test_rating_histories_without_time_sample_the_users_training_movies(
    untimed: Ratings,
) -> None:
    data = rating_threshold(untimed, seed=5, history=True)
    assert "seeded random" in data.extra["history"]
    pool = training_ratings(untimed, data)
    trained = np.bincount(untimed.user_idx[pool], minlength=len(untimed.users["user_id"]))
    pool_keys = pair_keys(untimed, untimed.user_idx[pool], untimed.movie_idx[pool])
    for split in ("train", "valid", "test"):
        rows = getattr(data, split)
        watched = Watched(data, rows)
        assert (watched.movie != rows.movie_idx[watched.row]).all(), "own movie in history"
        keys = pair_keys(untimed, watched.user, watched.movie)
        assert np.isin(keys, pool_keys).all(), "a history holds a non-training movie"
        own_trained = int(split == "train")
        expected = np.minimum(trained[rows.user_idx] - own_trained, HISTORY_LENGTH)
        np.testing.assert_array_equal(watched.lengths, expected)
    every = [getattr(data, split) for split in ("train", "valid", "test")]
    user = np.concatenate([rows.user_idx for rows in every]).astype(np.int64)
    key = user * len(data.histories) + np.concatenate([rows.history_idx for rows in every])
    per_user = np.bincount(np.unique(key) // len(data.histories))
    assert per_user.max() <= HISTORY_LENGTH + 1
    assert set(data.last_watched.tolist()) == {""}  # no time, no LAST_WATCHED
    again = rating_threshold(untimed, seed=5, history=True)
    np.testing.assert_array_equal(again.histories, data.histories)
    other = rating_threshold(untimed, seed=6, history=True)
    assert set(other.histories.tolist()) != set(data.histories.tolist())


def test_real_ml1m_without_timestamps_keeps_few_histories_per_user() -> None:
    ratings = load_ratings(DataConfig(dataset="ml-1m", data_dir=shared_data("ml-1m-notime")))
    data = rating_threshold(ratings, seed=1, history=True)
    users = len(ratings.users["user_id"])
    assert len(data.histories) <= users * (HISTORY_LENGTH + 1)
    rows = data.test.take(np.arange(5000))
    watched = Watched(data, rows)
    assert (watched.movie != rows.movie_idx[watched.row]).all()


# ---------------------------------------------------------------- filtering, encoding


def test_held_out_movies_keep_each_row_with_its_history(next_item_rows: PreparedData) -> None:
    held = hold_out_movies(next_item_rows, share=0.2, seed=3)
    keep = ~np.isin(next_item_rows.train.movie_idx, held.held_out_movies)
    before = next_item_rows.raw(next_item_rows.train.take(keep), HISTORY_FIELDS)
    after = held.raw(held.train, HISTORY_FIELDS)
    for field in HISTORY_FIELDS:
        np.testing.assert_array_equal(after[field], before[field])


def small_data(histories: list[str], history_idx: list[int]) -> PreparedData:
    users = {f: np.array(["u0", "u1"]) for f in ("user_id", "gender", "age", "occupation", "zip")}
    movies = {
        "movie_id": np.array(["1", "2"]),
        "title": np.array(["a", "b"]),
        "year": np.array(["1995", "1996"]),
        "genres": np.array(["Drama", "Comedy"]),
    }
    n = len(history_idx)
    rows = LabeledRows(
        np.zeros(n, np.int32), np.zeros(n, np.int32), np.ones(n, np.float32), np.array(history_idx)
    )
    last_watched = np.array(["7" if history else "" for history in histories], dtype=object)
    return PreparedData(
        users, movies, rows, rows, rows, "test", "test", histories=histories,
        last_watched=last_watched,
    )  # fmt: skip


def test_encode_is_twenty_wide_with_pad_and_the_empty_history_as_id_zero() -> None:
    long = "|".join(str(i) for i in range(100, 130))  # 30 parts: only the first 20 count
    histories = np.array(["50|1|181", "", long, "1||7|"], dtype=object)
    data = small_data(histories, [0, 1, 2, 3, 1, 0])
    vocab = data.vocabularies(HISTORY_FIELDS)[HISTORY_FIELD]
    assert vocab.tolist() == sorted(["1", "181", "50", "7", *(str(i) for i in range(100, 120))])
    test = replace(data.train.take(np.arange(4)), history_idx=np.array([0, 1, 2, 3]))
    vocab = np.array(["1", "100", "119", "181", "50"])  # sorted as text: ids 1 .. 5
    vocabularies = {**data.vocabularies(HISTORY_FIELDS), HISTORY_FIELD: vocab}
    watched = data.encode(test, vocabularies, HISTORY_FIELDS)[HISTORY_FIELD]
    assert watched.dtype == np.int32 and watched.shape == (4, HISTORY_LENGTH)
    pad = [PAD] * HISTORY_LENGTH
    assert watched[0].tolist() == [5, 1, 4, *pad[3:]]
    assert watched[1].tolist() == [0, *pad[1:]]
    assert watched[2].tolist() == [2, *[0] * 18, 3]  # of 100 .. 119 only the ends are known
    assert watched[3].tolist() == [1, PAD, 0, *pad[3:]]  # an empty part is PAD in place


def test_encode_on_real_rows_matches_the_raw_strings(next_item_rows: PreparedData) -> None:
    data = next_item_rows
    vocab = data.vocabularies(HISTORY_FIELDS)
    assert set(vocab[HISTORY_FIELD]) <= set(data.movie_ids.tolist())
    rows = data.test.take(np.arange(0, len(data.test), 97))
    watched = data.encode(rows, vocab, HISTORY_FIELDS)[HISTORY_FIELD]
    assert watched.shape == (len(rows), HISTORY_LENGTH)
    ids = {v: i + 1 for i, v in enumerate(vocab[HISTORY_FIELD].tolist())}
    for codes, text in zip(watched, data.raw(rows, [HISTORY_FIELD])[HISTORY_FIELD], strict=True):
        expected = [ids.get(m, 0) for m in text.split("|")] if text else [0]
        assert codes.tolist() == expected + [PAD] * (HISTORY_LENGTH - len(expected))


def test_rows_without_history_say_so_in_one_line(ml100k: Ratings) -> None:
    data = next_item(ml100k, negatives=1, seed=5)
    with pytest.raises(AfmError, match="carry no history"):
        data.vocabularies(HISTORY_FIELDS)
    with pytest.raises(AfmError, match="carry no history"):
        data.raw(data.test, [HISTORY_FIELD])


# ---------------------------------------------------------------- seed rows


def test_seed_rows_refuse_the_history_field_set(tmp_path: Path) -> None:
    files = {}
    for name in ("train", "valid", "test"):
        files[name] = tmp_path / f"{name}.txt"
        files[name].write_text("1\tF\t1\t10\t48067\t1193\t1\n")
    config = DataConfig(
        train_file=files["train"], valid_file=files["valid"], test_file=files["test"]
    )
    with pytest.raises(AfmError, match="seed row files carry no history"):
        prepare(config, history=True)
    args = ["train", "--model-dir", str(tmp_path / "m"), "--fields", "history"]
    args += [f"--{name}-file={path}" for name, path in files.items()]
    result = CliRunner(env={"COLUMNS": "300"}).invoke(app, args)
    assert result.exit_code == 2
    assert "seed row files carry no history" in " ".join(result.output.split())
    assert "Traceback" not in result.output


def test_train_help_lists_history_after_all() -> None:
    result = CliRunner(env={"COLUMNS": "300"}).invoke(app, ["train", "--help"])
    text = " ".join(result.output.split())
    assert "--fields <seed|all|history>" in text
    assert "history: all, and the user's last 20 watched movies and how long" in text


# ---------------------------------------------------------------- feature store


def test_latest_watched_is_the_users_last_twenty_over_all_ratings(ml100k: Ratings) -> None:
    watched, watched_at = latest_watched(
        ml100k.user_idx,
        ml100k.movie_idx,
        ml100k.timestamp,
        ml100k.movie_ids,
        users=len(ml100k.users["user_id"]),
        seed=0,
    )
    for user in (0, 1, 500, 942):
        mine = np.flatnonzero(ml100k.user_idx == user)
        times = ml100k.timestamp[mine]
        parts = watched[user].split("|")
        assert len(parts) == min(HISTORY_LENGTH, len(mine))
        index = {m: i for i, m in enumerate(ml100k.movie_ids[ml100k.movie_idx[mine]].tolist())}
        seen = times[[index[m] for m in parts]]
        assert (np.diff(seen) <= 0).all()
        assert seen[-1] == np.sort(times)[-len(parts)]  # nothing more recent left out
        assert watched_at[user] == str(times.max())


def test_load_features_writes_watched_and_decode_user_reads_it(
    redis_url: str, feature_prefix: str, ml100k: Ratings
) -> None:
    folder = shared_data("ml-100k")
    result = CliRunner(env={"COLUMNS": "300"}).invoke(
        app,
        ["load-features", "--dataset", "ml-100k", "--data-dir", str(folder)]
        + ["--redis-url", redis_url, "--prefix", feature_prefix],
    )
    assert result.exit_code == 0, result.output
    loaded = load_feature_set(DataConfig(dataset="ml-100k", data_dir=folder))
    client = redis.Redis.from_url(redis_url)
    try:
        namespace = client.get(feature_layout.pointer_key(feature_prefix)).decode()
        for row in (0, 941):
            user_id = loaded.users["user_id"][row]
            features = feature_layout.decode_user(
                client.hgetall(feature_layout.user_key(namespace, user_id))
            )
            assert features[HISTORY_FIELD] == loaded.watched[row]
            latest = ml100k.timestamp[ml100k.user_idx == row].max()
            assert features[feature_layout.WATCHED_AT] == loaded.watched_at[row] == str(latest)
            assert len(features[HISTORY_FIELD].split("|")) == HISTORY_LENGTH
            assert features["zip"] == loaded.users["zip"][row]
        # A load without histories (an older loader) reads back as no history.
        load_features(loaded.users, loaded.movies, redis_url, feature_prefix)
        namespace = client.get(feature_layout.pointer_key(feature_prefix)).decode()
        raw = client.hgetall(feature_layout.user_key(namespace, "1"))
        assert b"watched" not in raw
        assert feature_layout.decode_user(raw)[HISTORY_FIELD] == ""
        assert feature_layout.decode_user(raw)[feature_layout.WATCHED_AT] == ""
    finally:
        client.close()


def test_latest_watched_without_time_is_a_seeded_sample(untimed: Ratings) -> None:
    def watched(seed: int) -> np.ndarray:
        columns = (untimed.user_idx, untimed.movie_idx, untimed.timestamp, untimed.movie_ids)
        sample, watched_at = latest_watched(
            *columns, users=len(untimed.users["user_id"]), seed=seed
        )
        assert set(watched_at.tolist()) == {""}  # no time, no WATCHED_AT
        return sample

    first = watched(0)
    for user in (0, 942):
        mine = set(untimed.movie_ids[untimed.movie_idx[untimed.user_idx == user]].tolist())
        parts = first[user].split("|")
        assert len(set(parts)) == len(parts) == min(HISTORY_LENGTH, len(mine))
        assert set(parts) <= mine
    np.testing.assert_array_equal(watched(0), first)
    assert (watched(1) != first).any()


def test_encode_reads_a_raw_history_as_the_numpy_scorer_does() -> None:
    from model.contracts.numpy_scorer import _history_ids

    long = "|".join(str(i) for i in range(100, 130))
    odd = ["50|1|181", "", "|", "1||7|", "||50", long, f"|{long}", "x|50|x"]
    vocab = np.array(["1", "100", "119", "181", "50"])
    ids = {v: i + 1 for i, v in enumerate(vocab.tolist())}
    expected = _history_ids(odd, ids)
    np.testing.assert_array_equal(history_codes(np.array(odd, dtype=object), vocab), expected)
