"""Seeded synthetic MovieLens data in ML-1M format, with structure an AFM can learn.

The files match ML-1M's layout, encoding (latin-1) and value domains, so every reader and
protocol runs on them unchanged::

    users.dat    UserID::Gender::Age::Occupation::Zip-code
    movies.dat   MovieID::Title::Genres        (the title ends with the year: "... (1994)")
    ratings.dat  UserID::MovieID::Rating::Timestamp
    planted.json the planted field pairs and their scales (PLANTED_FILE, below)

Planted structure. Each movie belongs to one of ``CLUSTERS`` genre clusters and takes its
genres from that cluster, so its genres determine the cluster c_m exactly. Its year, drawn
independently of the cluster, falls into one of four release eras e_m (``ERA_STARTS``).
A user's affinity for a movie is

    affinity(u, m) = G[gender_u, c_m] + A[age_u, c_m] + O[occupation_u, c_m]
                     + Y[age_u, e_m] + z_u . y_m

(G strongest, then A, Y, O; z, y are small rank-4 user/movie tastes; zip carries
nothing). Y is fixed, not drawn: younger users prefer newer movies, older users older ones.
*Which* movies a user rates follows ``popularity_m + affinity`` (weighted sampling without
replacement, Gumbel top-k), so the next-item protocol can tell picks from random movies
through the (gender, genres), (age, genres), (occupation, genres), (age, year) and
(user_id, movie_id) pairs; movie_id alone can stand in for genres and year, but only on
movies seen in training. *How* a user rates follows ``quality_m + bias_u + affinity +
noise``, cut at quantiles that give ML-1M's rating histogram, so the rating protocol
(>= 4 vs <= 2) learns the same pairs. Pairs of two user fields, and every pair with zip,
carry no signal.

Timestamps are distinct and increasing per user; the order of a user's history is random, so
the last item (the next-item test example) is a typical pick, not the strongest one.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from model.errors import AfmError

AGES = np.array([1, 18, 25, 35, 45, 50, 56])
AGE_SHARES = np.array([0.037, 0.183, 0.347, 0.197, 0.091, 0.082, 0.063])  # ML-1M's users
OCCUPATIONS = 21  # ML-1M codes 0..20
FEMALE_SHARE = 0.28  # ML-1M: 1709 of 6040 users

# Genre clusters over ML-1M's 18 genres; each movie draws its genres from one cluster.
CLUSTER_GENRES: tuple[tuple[str, ...], ...] = (
    ("Action", "Adventure", "Sci-Fi", "Thriller"),
    ("Comedy", "Romance"),
    ("Drama", "War"),
    ("Animation", "Children's", "Musical", "Fantasy"),
    ("Horror", "Crime", "Film-Noir", "Mystery"),
    ("Documentary", "Western"),
)
CLUSTERS = len(CLUSTER_GENRES)
RATING_SHARES = np.array([0.056, 0.108, 0.261, 0.349, 0.226])  # ML-1M's ratings 1..5

FIRST_YEAR, LAST_YEAR = 1919, 2000  # ML-1M's range; years are uniform over it
ERA_STARTS = np.array([1919, 1940, 1960, 1980])  # four release eras of about 20 years

# Scales of the planted effects (standard deviations, in logit units of the pick model).
GENDER_SCALE, AGE_SCALE, OCCUPATION_SCALE, TASTE_SCALE = 1.5, 1.0, 0.6, 0.5
YEAR_SCALE = 0.8  # of the fixed age x era table Y (its 7 x 4 cells)
POPULARITY_SCALE, QUALITY_SCALE, USER_BIAS_SCALE, RATING_NOISE = 1.0, 0.6, 0.4, 0.7
TASTE_RANK = 4
MIN_RATINGS_PER_USER = 20  # as in ML-1M, when the requested total allows it
MAX_SHARE_PER_USER = 0.6  # of all movies, when the requested total allows it

_TITLE_WORDS = (
    "Silent River Last Summer Night Dark City Lost Garden Iron Kingdom Broken Star Little "
    "Secret Wild Heart Golden Road Cold Fire Blue Moon Long Goodbye Strange Island Crimson "
    "Sky Hidden Valley Café Señor Ghost Train Paper Moon Velvet Storm Distant Shore"
).split()

_CHUNK_CELLS = 1 << 22  # user x movie cells scored at a time (16 MB of float32)

GENERATOR_VERSION = 2
"""Bumped whenever equal arguments would give other files. 2: the age x era effect."""
PLANTED_FILE = "planted.json"
DATA_FILES = ("users.dat", "movies.dat", "ratings.dat")


def write_synthetic(out: Path, *, users: int, movies: int, ratings: int, seed: int) -> None:
    """Write users.dat, movies.dat, ratings.dat and planted.json for a seeded population.

    Equal arguments give byte-identical files. The folder appears by one rename of a complete
    temporary folder; an existing ``out`` is replaced only if it holds nothing but these files.

    Raises AfmError for impossible arguments (e.g. more ratings than users x movies).
    """
    _check_arguments(users, movies, ratings)
    rng = np.random.default_rng(seed)
    user_table = _users(rng, users)
    cluster, genres = _movie_clusters(rng, movies)
    year = rng.integers(FIRST_YEAR, LAST_YEAR + 1, size=movies)
    group = _movie_group(cluster, year)
    effects = _Effects.draw(rng, users, movies)
    counts = _ratings_per_user(rng, users, movies, ratings)
    user_idx, movie_idx = _pick_movies(rng, user_table, group, effects, counts)
    stars = _stars(rng, user_table, group, effects, user_idx, movie_idx)
    timestamps = _timestamps(rng, counts)

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    tmp.chmod(0o755)  # mkdtemp's 0700 would hide the data from other users (e.g. a container's)
    try:
        _write(tmp / "users.dat", user_table)
        _write(tmp / "movies.dat", _movie_table(rng, genres, year))
        _write(
            tmp / "ratings.dat",
            {"user": user_idx + 1, "movie": movie_idx + 1, "rating": stars, "ts": timestamps},
        )
        planted = _planted(users=users, movies=movies, ratings=ratings, seed=seed)
        (tmp / PLANTED_FILE).write_text(json.dumps(planted, indent=2) + "\n", encoding="utf-8")
        _replace_dir(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


class PlantedTaste:
    """The planted affinity of a synthetic population, rebuilt from its seed: the ground
    truth a traffic simulator clicks by (``model/online/traffic.py``).

        affinity(u, m) = popularity_m + G + A + O + Y (u's cell of m's group) + z_u . y_m

    the score that decided which movies each user rated (``_pick_movies``).
    """

    def __init__(self, data_dir: Path) -> None:
        planted = json.loads((Path(data_dir) / PLANTED_FILE).read_text(encoding="utf-8"))
        if planted.get("generator_version") != GENERATOR_VERSION:
            raise AfmError(
                f"{data_dir} was written by another synthetic generator "
                f"(version {planted.get('generator_version')}, this one {GENERATOR_VERSION})"
            )
        arguments = planted["arguments"]
        users, movies = arguments["users"], arguments["movies"]
        rng = np.random.default_rng(arguments["seed"])  # the draws of write_synthetic, in order
        user_table = _users(rng, users)
        cluster, _ = _movie_clusters(rng, movies)
        year = rng.integers(FIRST_YEAR, LAST_YEAR + 1, size=movies)
        self._group = _movie_group(cluster, year)
        effects = _Effects.draw(rng, users, movies)
        self._by_group = effects.group_affinity(user_table)  # (users, groups)
        self._popularity = effects.popularity
        self._user_taste, self._movie_taste = effects.user_taste, effects.movie_taste
        self.users, self.movies = users, movies

    def affinity(self, user_ids: np.ndarray, movie_ids: np.ndarray) -> np.ndarray:
        """affinity(u, m) of each pair of (1-based) ids, element-wise."""
        u, m = np.asarray(user_ids) - 1, np.asarray(movie_ids) - 1
        taste = np.einsum("ij,ij->i", self._user_taste[u], self._movie_taste[m])
        return self._popularity[m] + self._by_group[u, self._group[m]] + taste


def _check_arguments(users: int, movies: int, ratings: int) -> None:
    if users < 1 or movies < 1:
        raise AfmError(f"need at least one user and one movie, got users={users} movies={movies}")
    if ratings < users:
        raise AfmError(f"need at least one rating per user: ratings={ratings} < users={users}")
    if ratings > users * movies:
        raise AfmError(
            f"ratings={ratings} is more than users x movies = {users * movies}: "
            "a user rates each movie at most once"
        )


def _users(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    gender = np.where(rng.random(n) < FEMALE_SHARE, "F", "M")
    age = AGES[rng.choice(len(AGES), size=n, p=AGE_SHARES)]
    occupation = rng.integers(0, OCCUPATIONS, size=n)
    # Zips repeat a little, as in ML-1M (3439 zips for 6040 users).
    pool = rng.choice(100_000, size=max(1, (n * 4) // 7), replace=False)
    zips = np.char.zfill(pool[rng.integers(0, len(pool), size=n)].astype(str), 5)
    return {
        "user_id": np.arange(1, n + 1),
        "gender": gender,
        "age": age,
        "occupation": occupation,
        "zip": zips,
    }


def _movie_clusters(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Cluster of each movie and its genre string, e.g. 'Action|Sci-Fi'."""
    cluster = rng.integers(0, CLUSTERS, size=n)
    genres = np.empty(n, dtype=object)
    how_many = rng.integers(1, 4, size=n)
    for c, names in enumerate(CLUSTER_GENRES):  # loop over 6 clusters, not over movies
        rows = np.flatnonzero(cluster == c)
        keys = rng.random((len(rows), len(names))).argsort(axis=1)
        for i, row in enumerate(rows):
            picked = sorted(keys[i, : min(how_many[row], len(names))])
            genres[row] = "|".join(names[j] for j in picked)
    return cluster, genres


def _movie_group(cluster: np.ndarray, year: np.ndarray) -> np.ndarray:
    """Each movie's (cluster, era) cell as one index: cluster * eras + era."""
    era = np.searchsorted(ERA_STARTS, year, side="right") - 1
    return cluster * len(ERA_STARTS) + era


def _movie_table(
    rng: np.random.Generator, genres: np.ndarray, year: np.ndarray
) -> dict[str, np.ndarray]:
    n = len(genres)
    words = np.array(_TITLE_WORDS, dtype=object)
    first = words[rng.integers(0, len(words), size=n)]
    second = words[rng.integers(0, len(words), size=n)]
    titles = "The " + first + " " + second + " (" + year.astype(str) + ")"
    return {"movie": np.arange(1, n + 1), "title": titles, "genres": genres}


def _age_era_table() -> np.ndarray:
    """Y: (ages, eras), YEAR_SCALE times the outer product of standardised youth and recency.

    The youngest age group likes the newest era most and the oldest era least; the oldest
    age group the reverse. Cells have mean 0 and standard deviation YEAR_SCALE.
    """
    youth = -np.arange(len(AGES), dtype=float)
    recency = np.arange(len(ERA_STARTS), dtype=float)
    standard = [(v - v.mean()) / v.std() for v in (youth, recency)]
    return YEAR_SCALE * np.outer(*standard)


def _planted(*, users: int, movies: int, ratings: int, seed: int) -> dict:
    """Content of planted.json: which field pairs carry signal, and how strongly.

    Field names are the contract's. A scale is the standard deviation of the pair's term in
    the affinity (for user_id x movie_id, of z_u . y_m). Every other pair carries none.
    """
    pairs = [
        (("gender", "genres"), GENDER_SCALE),
        (("age", "genres"), AGE_SCALE),
        (("occupation", "genres"), OCCUPATION_SCALE),
        (("age", "year"), YEAR_SCALE),
        (("user_id", "movie_id"), TASTE_SCALE / np.sqrt(TASTE_RANK)),
    ]
    return {
        "generator_version": GENERATOR_VERSION,
        "arguments": {"users": users, "movies": movies, "ratings": ratings, "seed": seed},
        "pairs": [list(fields) for fields, _ in pairs],
        "scales": [float(scale) for _, scale in pairs],
        "year_effect": {  # Y: rows AGES, columns the eras starting at era_starts
            "ages": AGES.tolist(),
            "era_starts": ERA_STARTS.tolist(),
            "table": (np.round(_age_era_table(), 6) + 0.0).tolist(),  # + 0.0: no "-0.0"
        },
    }


class _Effects:
    """The planted parameters; see the module docstring for how they combine."""

    def __init__(self, **arrays: np.ndarray) -> None:
        self.__dict__.update(arrays)

    @classmethod
    def draw(cls, rng: np.random.Generator, users: int, movies: int) -> _Effects:
        return cls(
            gender=rng.normal(0, GENDER_SCALE, (2, CLUSTERS)),
            age=rng.normal(0, AGE_SCALE, (len(AGES), CLUSTERS)),
            age_era=_age_era_table(),
            occupation=rng.normal(0, OCCUPATION_SCALE, (OCCUPATIONS, CLUSTERS)),
            user_taste=rng.normal(0, np.sqrt(TASTE_SCALE / TASTE_RANK), (users, TASTE_RANK)),
            movie_taste=rng.normal(0, np.sqrt(TASTE_SCALE / TASTE_RANK), (movies, TASTE_RANK)),
            popularity=rng.normal(0, POPULARITY_SCALE, movies),
            quality=rng.normal(0, QUALITY_SCALE, movies),
            user_bias=rng.normal(0, USER_BIAS_SCALE, users),
        )

    def group_affinity(self, user_table: dict[str, np.ndarray]) -> np.ndarray:
        """(users, CLUSTERS * eras): each user's G + A + O + Y per movie group (_movie_group)."""
        gender = (user_table["gender"] == "M").astype(int)
        age = np.searchsorted(AGES, user_table["age"])
        by_cluster = self.gender[gender] + self.age[age] + self.occupation[user_table["occupation"]]
        # (users, CLUSTERS, 1) + (users, 1, eras) -> (users, CLUSTERS * eras)
        return (by_cluster[:, :, None] + self.age_era[age][:, None, :]).reshape(len(age), -1)


def _ratings_per_user(
    rng: np.random.Generator, users: int, movies: int, ratings: int
) -> np.ndarray:
    """Heavy-tailed counts per user, each in [1, movies], summing exactly to ``ratings``."""
    floor = min(MIN_RATINGS_PER_USER, ratings // users, movies)
    # ML-1M's heaviest user rated 2314 of 3706 movies; cap at 60% unless the total needs more.
    cap = max(-(-ratings // users), int(MAX_SHARE_PER_USER * movies))
    counts = np.full(users, floor, dtype=np.int64)
    weight = rng.lognormal(0.0, 1.0, users)
    remaining = ratings - counts.sum()
    while remaining > 0:  # a few rounds at most: only capped users push mass elsewhere
        room = cap - counts
        share = np.where(room > 0, weight, 0.0)
        extra = np.floor(remaining * share / share.sum()).astype(np.int64)
        leftover = remaining - extra.sum()
        if leftover:  # hand out the rounding remainder, one each, to the heaviest open users
            order = np.argsort(-share, kind="stable")[:leftover]
            extra[order] += 1
        counts += np.minimum(extra, room)
        remaining = ratings - counts.sum()
    return counts


def _pick_movies(
    rng: np.random.Generator,
    user_table: dict[str, np.ndarray],
    movie_group: np.ndarray,
    effects: _Effects,
    counts: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Each user's distinct movies, drawn without replacement with weight exp(score).

    Gumbel top-k: the k largest of score + Gumbel noise are a weighted sample without
    replacement. Users are scored in chunks so memory stays at a few tens of MB.
    """
    users, movies = len(counts), len(movie_group)
    group = effects.group_affinity(user_table)
    step = max(1, _CHUNK_CELLS // movies)
    by_count = np.argsort(counts, kind="stable")  # chunks of similar counts partition well
    user_parts, movie_parts = [], []
    for start in range(0, users, step):
        rows = by_count[start : start + step]
        score = (
            effects.popularity[None, :]
            + group[rows][:, movie_group]
            + effects.user_taste[rows] @ effects.movie_taste.T
        ).astype(np.float32)
        score -= np.log(-np.log(rng.random(score.shape, dtype=np.float32) + 1e-12) + 1e-12)
        # Only each row's top counts[u] matter: partition off the top k_max, sort just those.
        k_max = int(counts[rows].max())
        top = np.argpartition(-score, k_max - 1, axis=1)[:, :k_max] if k_max < movies else None
        if top is not None:
            score = np.take_along_axis(score, top, axis=1)
        order = np.argsort(-score, axis=1)
        if top is not None:
            order = np.take_along_axis(top, order, axis=1)
        keep = np.arange(order.shape[1])[None, :] < counts[rows, None]
        movie_parts.append(order[keep])
        user_parts.append(np.repeat(rows, counts[rows]))
    user, movie = np.concatenate(user_parts), np.concatenate(movie_parts)
    grouped = np.argsort(user, kind="stable")
    return user[grouped], movie[grouped]


def _stars(
    rng: np.random.Generator,
    user_table: dict[str, np.ndarray],
    movie_group: np.ndarray,
    effects: _Effects,
    user_idx: np.ndarray,
    movie_idx: np.ndarray,
) -> np.ndarray:
    """Ratings 1..5: the latent opinion cut at the quantiles of ML-1M's rating histogram."""
    group = effects.group_affinity(user_table)
    taste = np.einsum("ij,ij->i", effects.user_taste[user_idx], effects.movie_taste[movie_idx])
    opinion = (
        effects.quality[movie_idx]
        + effects.user_bias[user_idx]
        + group[user_idx, movie_group[movie_idx]]
        + taste
        + rng.normal(0, RATING_NOISE, len(user_idx))
    )
    cuts = np.quantile(opinion, np.cumsum(RATING_SHARES)[:-1])
    return (np.searchsorted(cuts, opinion) + 1).astype(np.int8)


def _timestamps(rng: np.random.Generator, counts: np.ndarray) -> np.ndarray:
    """Distinct, increasing seconds per user, in the order the rows are returned in.

    Rows arrive grouped by user in score order; a random permutation within each user decides
    the viewing order, so a user's last item is a typical pick.
    """
    n = int(counts.sum())
    user = np.repeat(np.arange(len(counts)), counts)
    start = 956_703_932 + rng.integers(0, 2 * 365 * 86_400, size=len(counts))  # ML-1M era
    gaps = rng.integers(1, 3_600, size=n)
    rank = np.lexsort((rng.random(n), user))  # rows in viewing order, grouped by user
    offsets = np.zeros(n, dtype=np.int64)
    cum = np.cumsum(gaps)
    first = np.concatenate(([0], np.cumsum(counts)[:-1]))
    offsets[rank] = cum - (cum[first] - gaps[first])[user]
    return start[user] + offsets


def _write(path: Path, columns: dict[str, np.ndarray]) -> None:
    """Write columns joined by '::' in latin-1, one row per line (pandas' C writer)."""
    text = pd.DataFrame(columns).to_csv(
        sep="\t", header=False, index=False, quoting=csv.QUOTE_NONE, lineterminator="\n"
    )
    path.write_bytes(text.replace("\t", "::").encode("latin-1"))


def _replace_dir(tmp: Path, out: Path) -> None:
    """Move the finished folder into place; an old synthetic folder is swapped out first."""
    if out.exists():
        known = {*DATA_FILES, PLANTED_FILE}
        if not out.is_dir() or any(p.name not in known for p in out.iterdir()):
            raise AfmError(f"{out} exists and holds other files; choose an empty or new --out")
        old = out.with_name(f".{out.name}.old.{os.getpid()}")
        out.rename(old)
        tmp.rename(out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(out)
