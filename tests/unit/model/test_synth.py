"""Synthetic data: ML-1M format and domains, determinism, planted learnable structure."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from model.config import DataConfig
from model.data.movielens import load_ratings
from model.data.protocols import prepare
from model.data.synth import (
    AGES,
    CLUSTER_GENRES,
    ERA_STARTS,
    GENERATOR_VERSION,
    PLANTED_FILE,
    YEAR_SCALE,
    PlantedTaste,
    write_synthetic,
)
from model.errors import AfmError

FILES = ("users.dat", "movies.dat", "ratings.dat", PLANTED_FILE)
ML_1M_GENRES = {g for cluster in CLUSTER_GENRES for g in cluster}


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "data"
    write_synthetic(out, users=300, movies=200, ratings=20_000, seed=7)
    return out


def test_files_are_ml1m_format_with_ml1m_value_domains(small: Path):
    users = [line.split("::") for line in (small / "users.dat").read_text("latin-1").splitlines()]
    assert len(users) == 300 and all(len(u) == 5 for u in users)
    assert {u[1] for u in users} == {"F", "M"}
    assert {int(u[2]) for u in users} <= set(AGES.tolist())
    assert {int(u[3]) for u in users} <= set(range(21))
    assert all(len(u[4]) == 5 and u[4].isdigit() for u in users)

    movies = (small / "movies.dat").read_text("latin-1").splitlines()
    assert len(movies) == 200
    for line in movies:
        movie_id, title, genres = line.split("::")
        assert title.endswith(")") and set(genres.split("|")) <= ML_1M_GENRES
    assert sorted(p.name for p in small.iterdir()) == sorted(FILES)

    ratings = load_ratings(DataConfig(dataset="synthetic", data_dir=small))
    assert len(ratings.rating) == 20_000
    assert set(np.unique(ratings.rating).tolist()) == {1, 2, 3, 4, 5}
    pairs = ratings.user_idx.astype(np.int64) * 1000 + ratings.movie_idx
    assert len(np.unique(pairs)) == len(pairs)  # a user rates a movie once


def test_timestamps_are_distinct_per_user(small: Path):
    ratings = load_ratings(DataConfig(dataset="synthetic", data_dir=small))
    frame = pd.DataFrame({"user": ratings.user_idx, "ts": ratings.timestamp})
    assert not frame.duplicated().any()
    assert frame.groupby("user").size().min() >= 20  # ML-1M's minimum, when the total allows


def test_same_seed_same_bytes_other_seed_other_data(tmp_path: Path):
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        write_synthetic(tmp_path / name, users=50, movies=40, ratings=1000, seed=seed)
    for file in FILES:
        assert (tmp_path / "a" / file).read_bytes() == (tmp_path / "b" / file).read_bytes()
    assert (tmp_path / "a" / "ratings.dat").read_bytes() != (
        tmp_path / "c" / "ratings.dat"
    ).read_bytes()


def test_titles_are_latin1(tmp_path: Path):
    write_synthetic(tmp_path / "d", users=20, movies=400, ratings=500, seed=1)
    raw = (tmp_path / "d" / "movies.dat").read_bytes()
    assert "Café".encode("latin-1") in raw or "Señor".encode("latin-1") in raw
    raw.decode("latin-1")


@pytest.mark.parametrize(
    ("users", "movies", "ratings", "message"),
    [
        (10, 10, 101, "more than users x movies"),
        (100, 10, 50, "at least one rating per user"),
        (0, 10, 50, "at least one user"),
    ],
)
def test_impossible_arguments_are_refused(tmp_path: Path, users, movies, ratings, message):
    with pytest.raises(AfmError, match=message):
        write_synthetic(tmp_path / "x", users=users, movies=movies, ratings=ratings, seed=0)
    assert not (tmp_path / "x").exists()


def test_every_user_rating_every_movie_is_possible(tmp_path: Path):
    write_synthetic(tmp_path / "full", users=10, movies=10, ratings=100, seed=0)
    ratings = load_ratings(DataConfig(dataset="synthetic", data_dir=tmp_path / "full"))
    assert len(ratings.rating) == 100


def test_rewrites_its_own_folder_but_not_a_foreign_one(tmp_path: Path):
    write_synthetic(tmp_path / "d", users=20, movies=20, ratings=100, seed=0)
    write_synthetic(tmp_path / "d", users=20, movies=20, ratings=200, seed=0)
    assert len((tmp_path / "d" / "ratings.dat").read_text().splitlines()) == 200
    (tmp_path / "d" / "notes.txt").write_text("mine")
    with pytest.raises(AfmError, match="holds other files"):
        write_synthetic(tmp_path / "d", users=20, movies=20, ratings=100, seed=0)
    assert (tmp_path / "d" / "notes.txt").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["d"]  # no temporary folder left


def auc(score: np.ndarray, label: np.ndarray) -> float:
    rank = pd.Series(score).rank().to_numpy()
    pos = label == 1
    n_pos, n_neg = pos.sum(), (~pos).sum()
    return float((rank[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def pair_rate_auc(data, column: str | None) -> float:
    """Test AUC of the training positive rate per (user column value, movie): a count model.

    It can only beat the movie-only rate if that user column interacts with the movie.
    """
    n_movies = len(data.movie_ids)

    def keys(part):
        if column is None:
            return part.movie_idx.astype(np.int64)
        _, code = np.unique(data.users[column], return_inverse=True)
        return code[part.user_idx].astype(np.int64) * n_movies + part.movie_idx

    train_keys, test_keys = keys(data.train), keys(data.test)
    size = int(max(train_keys.max(), test_keys.max())) + 1
    hits = np.bincount(train_keys, weights=data.train.label, minlength=size)
    seen = np.bincount(train_keys, minlength=size)
    return auc((hits[test_keys] + 1) / (seen[test_keys] + 2), data.test.label)


@pytest.mark.parametrize("protocol", ["next-item", "rating"])
def test_planted_pairs_carry_signal_and_zip_does_not(small: Path, protocol: str):
    data = prepare(DataConfig(dataset="synthetic", data_dir=small, protocol=protocol))
    movie_only = pair_rate_auc(data, None)
    assert movie_only > 0.6  # learnable at all
    assert pair_rate_auc(data, "age") > movie_only + 0.01  # age x movie cluster is planted
    if protocol == "rating":  # zip x movie is noise; (under next-item, zip ~ user id, whose
        # count model learns "never drawn as this user's negative", a sampling artefact)
        assert pair_rate_auc(data, "zip") < movie_only


def test_planted_json_lists_the_planted_pairs_with_contract_field_names(small: Path):
    from model.contracts.export_format import ALL_FIELDS, pairs

    planted = json.loads((small / PLANTED_FILE).read_text())
    assert planted["generator_version"] == GENERATOR_VERSION
    assert planted["arguments"] == {"users": 300, "movies": 200, "ratings": 20_000, "seed": 7}
    assert planted["pairs"] == [
        ["gender", "genres"],
        ["age", "genres"],
        ["occupation", "genres"],
        ["age", "year"],
        ["user_id", "movie_id"],
    ]
    assert {tuple(p) for p in planted["pairs"]} <= set(pairs(ALL_FIELDS))  # attention order
    assert len(planted["scales"]) == len(planted["pairs"]) and min(planted["scales"]) > 0
    table = np.array(planted["year_effect"]["table"])
    assert table.shape == (len(AGES), len(ERA_STARTS))
    assert table.std() == pytest.approx(YEAR_SCALE, abs=1e-5)
    assert table[0, -1] == table.max() and table[-1, 0] == table.max()  # young-new, old-old


def test_young_users_pick_and_rate_newer_movies_than_old_users(small: Path):
    ratings = load_ratings(DataConfig(dataset="synthetic", data_dir=small))
    age = ratings.users["age"][ratings.user_idx].astype(int)
    year = ratings.movies["year"][ratings.movie_idx].astype(int)
    young, old = age <= 18, age >= 50
    assert young.sum() > 1000 and old.sum() > 1000
    # The catalogue's years are independent of everything else (mean ~1960): only the
    # age x era table can move the picks' years apart (seed 7: 1969 vs 1953).
    assert year[young].mean() - year[old].mean() > 8
    # Stars: newest era minus oldest era, young users vs old users (seed 7: +1.1 vs -1.0).
    stars = ratings.rating.astype(float)
    new, early = year >= ERA_STARTS[-1], year < ERA_STARTS[1]

    def newer_minus_older(who: np.ndarray) -> float:
        return stars[who & new].mean() - stars[who & early].mean()

    assert newer_minus_older(young) - newer_minus_older(old) > 1.0


def test_year_effect_is_measurable_under_the_rating_protocol(small: Path):
    """A count model on (age, era) beats one on era alone: the pair carries signal."""
    data = prepare(DataConfig(dataset="synthetic", data_dir=small, protocol="rating"))
    era = np.searchsorted(ERA_STARTS, data.movies["year"].astype(int), side="right") - 1
    _, age = np.unique(data.users["age"], return_inverse=True)

    def rate_auc(with_age: bool) -> float:
        def keys(part):
            k = era[part.movie_idx].astype(np.int64)
            return k + len(ERA_STARTS) * age[part.user_idx] if with_age else k

        train_keys, test_keys = keys(data.train), keys(data.test)
        hits = np.bincount(train_keys, weights=data.train.label, minlength=64)
        seen = np.bincount(train_keys, minlength=64)
        return auc((hits[test_keys] + 1) / (seen[test_keys] + 2), data.test.label)

    assert rate_auc(with_age=True) > rate_auc(with_age=False) + 0.05


def test_the_planted_taste_rebuilt_from_the_seed_is_what_picked_the_rated_movies(small: Path):
    taste = PlantedTaste(small)
    assert (taste.users, taste.movies) == (300, 200)
    lines = (small / "ratings.dat").read_text(encoding="latin-1").split()
    ratings = np.array([line.split("::")[:2] for line in lines], dtype=np.int64)
    users, rated = ratings[:, 0], ratings[:, 1]
    random = np.random.default_rng(0).integers(1, taste.movies + 1, len(users))
    # picks follow exp(affinity): rated movies score far above random ones (a replay out of
    # order would rebuild unrelated numbers, and the two means would be about equal)
    gap = taste.affinity(users, rated).mean() - taste.affinity(users, random).mean()
    assert gap > 1.0


def test_the_planted_taste_refuses_another_generator(small: Path, tmp_path: Path):
    other = tmp_path / "other"
    shutil.copytree(small, other)
    planted = json.loads((other / "planted.json").read_text())
    (other / "planted.json").write_text(json.dumps({**planted, "generator_version": 0}))
    with pytest.raises(AfmError, match="another synthetic generator"):
        PlantedTaste(other)
