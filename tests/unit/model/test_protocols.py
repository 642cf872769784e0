"""Protocol rules: leave-last-out, negatives never rated, counts, seeds, thresholds, seed rows."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from model.config import DataConfig
from model.contracts.export_format import SEED_FIELDS
from model.data.dataset import Ratings
from model.data.protocols import next_item, prepare, rating_threshold
from model.data.synth import write_synthetic
from model.errors import AfmError, MalformedInput


def make_ratings(
    rows: list[tuple[str, str, int, int]], movie_ids: list[str] | None = None
) -> Ratings:
    """Ratings from (user_id, movie_id, rating, timestamp) tuples; users get dummy features."""
    user_ids = sorted({r[0] for r in rows}, key=int)
    movies = movie_ids or sorted({r[1] for r in rows}, key=int)
    n = len(user_ids)
    return Ratings(
        users={
            "user_id": np.array(user_ids),
            "gender": np.array(["F", "M"] * n)[:n],
            "age": np.array(["25"] * n),
            "occupation": np.array(["1"] * n),
            "zip": np.array([f"{10000 + i}" for i in range(n)]),
        },
        movies={
            "movie_id": np.array(movies),
            "title": np.array([f"Movie {m} (1995)" for m in movies]),
            "year": np.array(["1995"] * len(movies)),
            "genres": np.array(["Drama"] * len(movies)),
        },
        user_idx=np.array([user_ids.index(r[0]) for r in rows], dtype=np.int32),
        movie_idx=np.array([movies.index(r[1]) for r in rows], dtype=np.int32),
        rating=np.array([r[2] for r in rows], dtype=np.int8),
        timestamp=np.array([r[3] for r in rows], dtype=np.int64),
        source="test",
    )


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("protocols") / "synthetic"
    write_synthetic(out, users=200, movies=150, ratings=12_000, seed=3)
    return out


def prepared(folder: Path, **overrides) -> object:
    return prepare(DataConfig(dataset="synthetic", data_dir=folder, **overrides))


def positives(part) -> set[tuple[int, int]]:
    pos = part.label == 1
    return set(zip(part.user_idx[pos].tolist(), part.movie_idx[pos].tolist(), strict=True))


# ---------------------------------------------------------------- next-item


def test_leave_last_out_orders_by_time_then_movie_id():
    # User 1 watched 9 and 10 at the same second: numeric id order puts "10" last, not "9".
    ratings = make_ratings(
        [
            ("1", "10", 5, 300),
            ("1", "9", 4, 300),
            ("1", "7", 3, 100),
            ("1", "8", 2, 200),
            ("1", "3", 1, 50),
            ("2", "3", 5, 20),
            ("2", "7", 5, 10),
            ("2", "8", 5, 30),
            ("3", "11", 5, 1),  # widens the negative pool beyond what user 1 rated
            ("3", "12", 5, 2),
        ],
        movie_ids=["3", "7", "8", "9", "10", "11", "12", "13", "14", "15", "16"],
    )
    data = next_item(ratings, negatives=2, seed=0)
    movie = ratings.movie_ids
    got = {
        name: sorted((int(u), str(movie[m])) for u, m in positives(part))
        for name, part in (("train", data.train), ("valid", data.valid), ("test", data.test))
    }
    # user index 0 = "1": order 3, 7, 8, 9, 10 -> first (3) is no positive
    # user index 1 = "2": order 7, 3, 8 -> first (7) is no positive
    assert got["test"] == [(0, "10"), (1, "8")]
    assert got["valid"] == [(0, "9"), (1, "3")]
    assert got["train"] == [(0, "7"), (0, "8"), (2, "12")]  # user "3" has 2 ratings: train


def test_users_with_fewer_than_three_ratings_keep_their_positive_in_train():
    ratings = make_ratings(
        [("1", "1", 5, 1), ("1", "2", 5, 2), ("2", "1", 5, 1), ("2", "2", 5, 2), ("2", "3", 5, 3)]
        + [("3", "4", 5, 9)],
        movie_ids=[str(i) for i in range(1, 12)],
    )
    data = next_item(ratings, negatives=1, seed=0)
    assert positives(data.train) == {(0, 1)}
    assert positives(data.valid) == {(1, 1)}
    assert positives(data.test) == {(1, 2)}
    assert data.extra["users_without_held_out"] == 2


def test_no_negative_was_rated_by_its_user(synthetic: Path):
    data = prepared(synthetic, negatives=10)
    from model.data.movielens import load_ratings

    ratings = load_ratings(DataConfig(dataset="synthetic", data_dir=synthetic))
    n_movies = len(ratings.movie_ids)
    rated = set((ratings.user_idx.astype(np.int64) * n_movies + ratings.movie_idx).tolist())
    for part in (data.train, data.valid, data.test):
        neg = part.label == 0
        keys = part.user_idx[neg].astype(np.int64) * n_movies + part.movie_idx[neg]
        assert len(keys) > 0
        assert not rated.intersection(keys.tolist())


def test_counts_and_group_layout(synthetic: Path):
    negatives = 4
    data = prepared(synthetic, negatives=negatives)
    total_positives = 0
    for part in (data.train, data.valid, data.test):
        groups = part.label.reshape(-1, 1 + negatives)
        assert (groups[:, 0] == 1).all() and (groups[:, 1:] == 0).all()
        users = part.user_idx.reshape(-1, 1 + negatives)
        assert (users == users[:, :1]).all()  # a group belongs to one user
        assert len(part) == groups.shape[0] * (1 + negatives)
        total_positives += groups.shape[0]
    # every rating except each user's first is a positive (all synthetic users have >= 3)
    assert total_positives == 12_000 - 200
    assert len(data.test) == len(data.valid) == 200 * (1 + negatives)


def test_test_item_is_each_users_last_by_time(synthetic: Path):
    from model.data.movielens import load_ratings

    ratings = load_ratings(DataConfig(dataset="synthetic", data_dir=synthetic))
    data = prepared(synthetic, negatives=1)
    last_time = np.full(len(ratings.users["user_id"]), -1)
    np.maximum.at(last_time, ratings.user_idx, ratings.timestamp)
    is_last = ratings.timestamp == last_time[ratings.user_idx]
    expected = set(
        zip(ratings.user_idx[is_last].tolist(), ratings.movie_idx[is_last].tolist(), strict=True)
    )
    assert positives(data.test) == expected


def test_same_seed_same_rows_other_seed_other_negatives(synthetic: Path):
    a, b = prepared(synthetic, seed=5), prepared(synthetic, seed=5)
    c = prepared(synthetic, seed=6)
    for part in ("train", "valid", "test"):
        assert np.array_equal(getattr(a, part).movie_idx, getattr(b, part).movie_idx)
        assert np.array_equal(getattr(a, part).user_idx, getattr(b, part).user_idx)
    assert not np.array_equal(a.train.movie_idx, c.train.movie_idx)
    assert positives(a.train) == positives(c.train)  # only the negatives depend on the seed


def test_equal_timestamps_are_refused_with_a_hint():
    ratings = make_ratings([("1", "1", 5, 0), ("1", "2", 4, 0), ("2", "1", 3, 0)])
    with pytest.raises(AfmError, match="--protocol rating"):
        next_item(ratings, negatives=1, seed=0)


def test_user_who_rated_every_movie_is_refused():
    ratings = make_ratings([("1", m, 5, int(m)) for m in ("1", "2", "3")] + [("2", "1", 5, 1)])
    with pytest.raises(AfmError, match="rated every movie"):
        next_item(ratings, negatives=1, seed=0)


def test_negatives_come_from_rated_movies_only():
    rows = [(str(u), str(m), 5, m) for u in range(1, 6) for m in range(1, 4)]
    ratings = make_ratings(rows + [("6", "4", 5, 1)], movie_ids=[str(i) for i in range(1, 9)])
    data = next_item(ratings, negatives=3, seed=1)
    negative_movies = set(ratings.movie_ids[data.test.movie_idx[data.test.label == 0]])
    assert negative_movies == {"4"}  # movies 5..8 nobody rated are not in the pool


# ---------------------------------------------------------------- rating


def test_rating_thresholds_and_split_shares():
    rng = np.random.default_rng(0)
    stars = rng.integers(1, 6, size=2000)
    rows = [(str(i % 50 + 1), str(i % 97 + 1), int(s), i) for i, s in enumerate(stars)]
    ratings = make_ratings(rows)
    data = rating_threshold(ratings, seed=0)
    kept = int(((stars >= 4) | (stars <= 2)).sum())
    sizes = [len(data.train), len(data.valid), len(data.test)]
    assert sum(sizes) == kept
    assert sizes[0] == round(0.8 * kept) and sizes[1] == round(0.1 * kept)
    assert data.extra["dropped"] == int((stars == 3).sum())
    # every kept row's label follows its star rating, and 3s are gone
    key = {(u, m): s for (u, m, s) in zip(ratings.user_idx, ratings.movie_idx, stars, strict=True)}
    for part in (data.train, data.valid, data.test):
        for u, m, label in zip(part.user_idx, part.movie_idx, part.label, strict=True):
            s = key[(u, m)]
            assert s != 3 and label == (1.0 if s >= 4 else 0.0)


def test_rating_split_is_seeded(synthetic: Path):
    a = prepared(synthetic, protocol="rating", seed=1)
    b = prepared(synthetic, protocol="rating", seed=1)
    c = prepared(synthetic, protocol="rating", seed=2)
    assert np.array_equal(a.test.user_idx, b.test.user_idx)
    assert np.array_equal(a.test.movie_idx, b.test.movie_idx)
    assert not np.array_equal(a.test.movie_idx, c.test.movie_idx)


# ---------------------------------------------------------------- seed rows


def write_rows(path: Path, rows: list[str]) -> Path:
    path.write_text("".join(row + "\n" for row in rows), encoding="utf-8")
    return path


def seed_files(tmp_path: Path, train: list[str], valid: list[str], test: list[str]) -> DataConfig:
    return DataConfig(
        train_file=write_rows(tmp_path / "train.txt", train),
        valid_file=write_rows(tmp_path / "valid.txt", valid),
        test_file=write_rows(tmp_path / "test.txt", test),
    )


TRAIN_ROWS = [
    "1\tF\t1\t10\t48067\t1193\t1",
    "1\tF\t1\t10\t48067\t661\t0",
    "2\tM\t56\t16\t70072\t1193\t0",
    "2\tM\t56\t16\t70072\t3408\t1",
]


def test_seed_rows_build_tables_from_all_three_files(tmp_path: Path):
    config = seed_files(
        tmp_path,
        TRAIN_ROWS,
        ["1\tF\t1\t10\t48067\t3408\t1"],
        ["3\tM\t25\t15\tSW1A-1AA\tmovie-x\t1", "2\tM\t56\t16\t70072\t661\t0"],
    )
    data = prepare(config)
    assert data.protocol == "seed-rows"
    assert sorted(data.users["user_id"].tolist()) == ["1", "2", "3"]
    assert sorted(data.movie_ids.tolist()) == ["1193", "3408", "661", "movie-x"]
    raw = data.raw(data.test, SEED_FIELDS)
    assert raw["zip"].tolist() == ["SW1A-1AA", "70072"]
    assert raw["movie_id"].tolist() == ["movie-x", "661"]
    assert data.train.label.tolist() == [1.0, 0.0, 0.0, 1.0]


def test_value_seen_only_in_test_encodes_to_the_oov_bucket(tmp_path: Path):
    config = seed_files(
        tmp_path,
        TRAIN_ROWS,
        ["2\tM\t56\t16\t70072\t661\t1"],
        ["3\tM\t25\t15\t99999\tnew-movie\t1"],
    )
    data = prepare(config)
    vocab = data.vocabularies(SEED_FIELDS)
    test_ids = data.encode(data.test, vocab, SEED_FIELDS)["ids"][0]
    # user 3, age 25, occupation 15, zip 99999 and the movie are unseen; gender M is known
    assert test_ids.tolist() == [0, 2, 0, 0, 0, 0]
    valid_ids = data.encode(data.valid, vocab, SEED_FIELDS)["ids"][0]
    assert (valid_ids > 0).all()


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ("1\tF\t1\t10\t48067\t1193\t2", r"train.txt, line 3: label '2' is not 0 or 1"),
        ("1\tF\t1\t10\t48067\t1193", r"train.txt, line 3: expected 7 fields"),
        ("1\tF\t1\t10\t48067\t1193\tyes", r"train.txt, line 3: label 'yes'"),
    ],
)
def test_malformed_seed_rows_name_file_and_line(tmp_path: Path, row: str, message: str):
    config = seed_files(tmp_path, [*TRAIN_ROWS[:2], row], TRAIN_ROWS[:1], TRAIN_ROWS[:1])
    with pytest.raises(MalformedInput, match=message):
        prepare(config)


def test_seed_rows_that_are_not_utf8_are_refused(tmp_path: Path):
    config = seed_files(tmp_path, TRAIN_ROWS, TRAIN_ROWS[:1], TRAIN_ROWS[:1])
    config.valid_file.write_bytes(b"1\tF\t1\t10\t48067\t1193\t1\n1\tF\t1\t10\t\xff\xfe\t1\t1\n")
    with pytest.raises(MalformedInput, match=r"valid.txt, line 2: not valid utf-8"):
        prepare(config)


def test_empty_seed_file_is_refused(tmp_path: Path):
    config = seed_files(tmp_path, TRAIN_ROWS, TRAIN_ROWS[:1], [])
    with pytest.raises(MalformedInput, match=r"test.txt: empty file"):
        prepare(config)


def test_seed_row_values_stay_exact_strings(tmp_path: Path):
    # "01" and "1" are different raw values, as are "02139" and "2139": nothing is parsed
    rows = ["01\tF\t1\t10\t02139\t007\t1", "1\tF\t1\t10\t2139\t7\t0", "1\tF\t1\t10\t2139\t7\t1"]
    data = prepare(seed_files(tmp_path, rows, rows[:1], rows[1:2]))
    assert sorted(data.users["user_id"].tolist()) == ["01", "1"]
    assert sorted(data.users["zip"].tolist()) == ["02139", "2139"]
    assert sorted(data.movie_ids.tolist()) == ["007", "7"]
    assert data.raw(data.train, SEED_FIELDS)["zip"].tolist() == ["02139", "2139", "2139"]
    assert data.train.user_idx[1] == data.train.user_idx[2] != data.train.user_idx[0]


@pytest.mark.slow
def test_real_ml100k_next_item_counts_and_exclusion():
    from tests.conftest import shared_data

    config = DataConfig(dataset="ml-100k", data_dir=shared_data("ml-100k"), negatives=10)
    data = prepare(config)
    users = 943
    assert len(data.test) == len(data.valid) == users * 11
    assert sum(len(p) for p in (data.train, data.valid, data.test)) == (100_000 - users) * 11
    from model.data.movielens import load_ratings

    ratings = load_ratings(config)
    n_movies = len(ratings.movie_ids)
    rated = np.unique(ratings.user_idx.astype(np.int64) * n_movies + ratings.movie_idx)
    for part in (data.train, data.valid, data.test):
        neg = part.label == 0
        keys = part.user_idx[neg].astype(np.int64) * n_movies + part.movie_idx[neg]
        assert not np.isin(keys, rated).any()


@pytest.mark.slow
def test_real_ml1m_without_timestamps_is_refused_for_next_item_only():
    from tests.conftest import shared_data

    folder = shared_data("ml-1m-notime")
    with pytest.raises(AfmError, match="use --protocol rating"):
        prepare(DataConfig(dataset="ml-1m", data_dir=folder))
    data = prepare(DataConfig(dataset="ml-1m", data_dir=folder, protocol="rating"))
    kept = sum(len(p) for p in (data.train, data.valid, data.test))
    assert kept + data.extra["dropped"] == 999_414


def test_held_out_movies_leave_train_and_validation_but_stay_in_test(synthetic: Path):
    config = DataConfig(dataset="synthetic", data_dir=synthetic, holdout_movies=0.1, seed=3)
    full = prepare(replace(config, holdout_movies=0.0))
    data = prepare(config)
    held = data.held_out_movies
    assert len(held) == round(0.1 * len(np.unique(full.train.movie_idx)))
    assert not np.isin(data.train.movie_idx, held).any()
    assert not np.isin(data.valid.movie_idx, held).any()
    np.testing.assert_array_equal(data.test.movie_idx, full.test.movie_idx)
    assert data.extra["held_out_test_rows"] == int(np.isin(data.test.movie_idx, held).sum()) > 0
    assert data.held_out_movies.tolist() == prepare(config).held_out_movies.tolist()  # seeded
