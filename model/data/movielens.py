"""Read MovieLens-1M, MovieLens-100K and synthetic data into users, movies and ratings.

Where the files come from (``DataConfig``):

* ``data_dir`` set: an extracted folder (or a folder holding one, e.g. the zip's ``ml-1m/``)
  or the zip itself. Nothing is downloaded.
* ``ml-1m`` / ``ml-100k`` without ``data_dir``: ``<cache_dir>/<name>/``, fetched once from
  GroupLens by ``model.data.download`` (checksum verified, extracted atomically).
* ``synthetic`` without ``data_dir``: ``<cache_dir>/synthetic-v<generator>-.../``, written
  once by ``model.data.synth`` with the ``afm-ctr synth`` defaults.

Every raw value the model sees is kept as the string in the file (zip "48067", ML-1M age
"1", ML-100K occupation "writer"); byte-level parsing is ``model.data.parsing``'s. The movie
table (``MOVIE_COLUMNS``) is the same for both layouts, a missing value being "":

* ML-1M ``movies.dat`` (``MovieID::Title::Genres``): the title as written, the year from
  the "(1995)" that ends it, the genres as written ("Animation|Children's|Comedy").
* ML-100K ``u.item`` (id | title | release date | video release date | URL | 19 genre
  flags): the title as written (it carries a year too), the year of the release date
  ("01-Jan-1995"), the genres of the set flags joined by "|" in u.genre order with ML-1M's
  spelling; the ``unknown`` flag names no genre.

Each layout also carries the labels its README documents for coded user values
(``Layout.labels``): ML-1M's (and so the synthetic data's) gender, age and occupation
codes; ML-100K's gender only, its ages being years and its occupations names already.
``load_feature_set`` bundles users, movies and those labels with what a person trying the
service needs, the most rated movies and a few user ids, and each user's latest watched
movies (the history field's value at serving time).

Malformed input raises MalformedInput naming the file and the first bad line.
"""

from __future__ import annotations

import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from model.config import SYNTHETIC_DEFAULTS, DataConfig
from model.contracts.export_format import MOVIE_ID
from model.data.dataset import MOVIE_COLUMNS, USER_COLUMNS, Ratings
from model.data.download import fetch, folder_with
from model.data.history import latest_watched
from model.data.parsing import parse_columns
from model.errors import AfmError, MalformedInput

ML_100K_GENRES: tuple[str, ...] = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
    "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance",
    "Sci-Fi", "Thriller", "War", "Western",
)  # fmt: skip
"""u.item's genre flag columns in u.genre order, spelled as in ML-1M's movies.dat."""
GENDER_LABELS = {"F": "Female", "M": "Male"}
"""Both layouts' gender codes (ML-1M README: "M" for male and "F" for female)."""
ML_1M_LABELS: Mapping[str, Mapping[str, str]] = {
    "gender": GENDER_LABELS,
    "age": {
        "1": "Under 18", "18": "18-24", "25": "25-34", "35": "35-44", "45": "45-49",
        "50": "50-55", "56": "56+",
    },
    "occupation": {
        "0": "other or not specified", "1": "academic/educator", "2": "artist",
        "3": "clerical/admin", "4": "college/grad student", "5": "customer service",
        "6": "doctor/health care", "7": "executive/managerial", "8": "farmer",
        "9": "homemaker", "10": "K-12 student", "11": "lawyer", "12": "programmer",
        "13": "retired", "14": "sales/marketing", "15": "scientist", "16": "self-employed",
        "17": "technician/engineer", "18": "tradesman/craftsman", "19": "unemployed",
        "20": "writer",
    },
}  # fmt: skip
"""ML-1M README's user codes, field -> raw value -> label, spelled as there."""
POPULAR_MOVIES = 100  # FeatureSet.popular: the most rated movies kept
SAMPLE_USERS = 20  # FeatureSet.sample_users: the first user ids kept
_NO_GENRE = "unknown"  # u.item's "genre not known" flag: contributes no name
_TITLE_YEAR = r"\((\d{4})\)\s*$"  # "Toy Story (1995)", trailing spaces tolerated
_DATE_YEAR = r"-(\d{4})\s*$"  # "01-Jan-1995" (and u.item's one "4-Feb-1971")


@dataclass(frozen=True)
class Layout:
    """File names and column positions of one MovieLens layout."""

    archive: str  # official zip name
    md5: str  # GroupLens' published <archive>.md5
    users: str
    movies: str
    ratings: str
    user_sep: bytes
    user_fields: int
    user_order: tuple[int, ...]  # file column of each USER_COLUMNS entry
    movie_sep: bytes
    movie_fields: int
    rating_sep: bytes
    genre_flags: tuple[str, ...] = ()
    """Names of the 0/1 genre columns ending each movie line (ML-100K); empty when column 2
    holds the genres as text and the title ends with the year (ML-1M)."""
    labels: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    """User field -> raw value -> readable label, for the fields the README gives codes for."""

    @property
    def files(self) -> tuple[str, str, str]:
        return (self.users, self.movies, self.ratings)


ML_1M = Layout(
    archive="ml-1m.zip",
    md5="c4d9eecfca2ab87c1945afe126590906",
    users="users.dat",  # UserID::Gender::Age::Occupation::Zip-code
    movies="movies.dat",  # MovieID::Title::Genres
    ratings="ratings.dat",  # UserID::MovieID::Rating::Timestamp
    user_sep=b"::",
    user_fields=5,
    user_order=(0, 1, 2, 3, 4),
    movie_sep=b"::",
    movie_fields=3,
    rating_sep=b"::",
    labels=ML_1M_LABELS,
)
ML_100K = Layout(
    archive="ml-100k.zip",
    md5="0e33842e24a9c977be4e0107933c0723",
    users="u.user",  # user id | age | gender | occupation | zip code
    movies="u.item",  # movie id | title | release date | video date | URL | 19 genre flags
    ratings="u.data",  # user id \t item id \t rating \t timestamp
    user_sep=b"|",
    user_fields=5,
    user_order=(0, 2, 1, 3, 4),
    movie_sep=b"|",
    movie_fields=5 + len(ML_100K_GENRES),
    rating_sep=b"\t",
    genre_flags=ML_100K_GENRES,
    labels={"gender": GENDER_LABELS},
)
LAYOUTS = {"ml-1m": ML_1M, "ml-100k": ML_100K, "synthetic": ML_1M}


@dataclass(frozen=True)
class FeatureSet:
    """What ``afm-ctr load-features`` writes: the user and movie tables and their meta."""

    users: dict[str, np.ndarray]  # USER_COLUMNS -> raw string array, sorted by numeric id
    movies: dict[str, np.ndarray]  # MOVIE_COLUMNS -> string array, sorted by numeric id
    source: str  # e.g. "ml-1m at /path"
    labels: Mapping[str, Mapping[str, str]]  # the layout's Layout.labels
    popular: tuple[str, ...]  # up to POPULAR_MOVIES rated movie ids, most rated first
    sample_users: tuple[str, ...]  # the first SAMPLE_USERS user ids by numeric id
    watched: np.ndarray | None = None  # per user row: history.latest_watched's raw string
    watched_at: np.ndarray | None = None  # per user row: its latest movie's time, or ""


# ---------------------------------------------------------------- public API


def load_ratings(config: DataConfig) -> Ratings:
    """Users, movies and ratings of ``config.dataset``; ids are checked against the tables.

    ``Ratings.users`` and ``Ratings.movies`` are sorted by numeric id, so a movie index
    orders like its id (the next-item protocol breaks time ties by it).
    """
    layout, files = _open(config)
    users = _read_users(files, layout)
    movies = _read_movies(files, layout)
    data, origin = files.read(layout.ratings)
    columns = parse_columns(
        data, origin, sep=layout.rating_sep, fields=4, integer=(0, 1, 2, 3), keep=(0, 1, 2, 3)
    )
    user_col, movie_col, rating, timestamp = (columns[i] for i in range(4))
    bad = np.flatnonzero((rating < 1) | (rating > 5))
    if len(bad):
        raise MalformedInput(f"{origin}, line {bad[0] + 1}: rating {rating[bad[0]]} is not in 1..5")
    user_idx = _index_of(users["user_id"], user_col, origin, layout.users, "user")
    movie_idx = _index_of(movies[MOVIE_ID], movie_col, origin, layout.movies, "movie")
    return Ratings(
        users=users,
        movies=movies,
        user_idx=user_idx,
        movie_idx=movie_idx,
        rating=rating.astype(np.int8),
        timestamp=timestamp.astype(np.int64),
        source=files.describe(config.dataset),
    )


def load_users(config: DataConfig) -> dict[str, np.ndarray]:
    """USER_COLUMNS -> raw string arrays, one entry per user, without reading the ratings."""
    layout, files = _open(config)
    return _read_users(files, layout)


def load_movies(config: DataConfig) -> dict[str, np.ndarray]:
    """MOVIE_COLUMNS -> string arrays, one entry per movie by numeric id, without the ratings."""
    layout, files = _open(config)
    return _read_movies(files, layout)


def load_feature_set(config: DataConfig) -> FeatureSet:
    """Users, movies, labels, most rated movies, sample users and each user's latest watched
    movies of ``config.dataset``.

    Ratings count per movie (ties in count go to the lower id) and give each user's history
    after all of them (``history.latest_watched``, seeded by ``config.seed`` when the data
    has no timestamps); a rated user or movie missing from its table is malformed input.
    """
    layout, files = _open(config)
    users = _read_users(files, layout)
    movies = _read_movies(files, layout)
    data, origin = files.read(layout.ratings)
    rated = parse_columns(
        data, origin, sep=layout.rating_sep, fields=4, integer=(0, 1, 3), keep=(0, 1, 3)
    )
    user_idx = _index_of(users["user_id"], rated[0], origin, layout.users, "user")
    movie_idx = _index_of(movies[MOVIE_ID], rated[1], origin, layout.movies, "movie")
    watched, watched_at = latest_watched(
        user_idx,
        movie_idx,
        rated[3].astype(np.int64),
        movies[MOVIE_ID],
        users=len(users["user_id"]),
        seed=config.seed,
    )
    counts = np.bincount(movie_idx, minlength=len(movies[MOVIE_ID]))  # (n_movies,)
    # Rows are in id order, so a stable sort on the count breaks ties by id.
    ranked = np.argsort(-counts, kind="stable")[:POPULAR_MOVIES]
    ranked = ranked[counts[ranked] > 0]
    return FeatureSet(
        users=users,
        movies=movies,
        source=files.describe(config.dataset),
        labels=layout.labels,
        popular=tuple(movies[MOVIE_ID][ranked].tolist()),
        sample_users=tuple(users["user_id"][:SAMPLE_USERS].tolist()),
        watched=watched,
        watched_at=watched_at,
    )


# ---------------------------------------------------------------- readers


def _read_users(files: _Files, layout: Layout) -> dict[str, np.ndarray]:
    data, origin = files.read(layout.users)
    columns = parse_columns(
        data, origin, sep=layout.user_sep, fields=layout.user_fields, keep=layout.user_order
    )
    users = {name: columns[i] for name, i in zip(USER_COLUMNS, layout.user_order, strict=True)}
    numeric = _numeric_ids(users["user_id"], origin, "user id")
    order = np.argsort(numeric, kind="stable")
    return {name: values[order] for name, values in users.items()}


def _read_movies(files: _Files, layout: Layout) -> dict[str, np.ndarray]:
    data, origin = files.read(layout.movies)
    flags = tuple(range(layout.movie_fields - len(layout.genre_flags), layout.movie_fields))
    columns = parse_columns(
        data,
        origin,
        sep=layout.movie_sep,
        fields=layout.movie_fields,
        keep=(0, 1, 2, *flags),
        integer=flags,
    )
    ids, titles = columns[0], columns[1]
    if layout.genre_flags:  # ML-100K: column 2 is the release date, genres are flags
        year = _year(columns[2], _DATE_YEAR)
        genres = _flag_names(np.stack([columns[i] for i in flags], axis=1), layout, origin)
    else:  # ML-1M: the title ends with the year, column 2 holds the genres
        year = _year(titles, _TITLE_YEAR)
        genres = columns[2]
    order = np.argsort(_numeric_ids(ids, origin, "movie id"), kind="stable")
    return {
        name: values[order]
        for name, values in zip(MOVIE_COLUMNS, (ids, titles, year, genres), strict=True)
    }


def _year(text: np.ndarray, pattern: str) -> np.ndarray:
    """The four digits ``pattern`` captures in each value, or "" where it does not match."""
    found = pd.Series(text, dtype=object).str.extract(pattern, expand=False)
    return found.fillna("").to_numpy(dtype=str)


def _flag_names(flags: np.ndarray, layout: Layout, origin: str) -> np.ndarray:
    """Per movie, the names of its set genre flags joined by "|" (u.genre order); "" if none."""
    bad = np.argwhere((flags != 0) & (flags != 1))
    if len(bad):
        line, j = (int(x) for x in bad[0])
        raise MalformedInput(
            f"{origin}, line {line + 1}, field {layout.movie_fields - flags.shape[1] + j + 1}: "
            f"genre flag {flags[line, j]} is not 0 or 1"
        )
    names = np.asarray(layout.genre_flags, dtype=object)
    named = flags.astype(bool) & (names != _NO_GENRE)
    return np.asarray(["|".join(names[row]) for row in named], dtype=str)  # 1,682 movies


def _numeric_ids(ids: np.ndarray, origin: str, what: str) -> np.ndarray:
    """Integer values of an id column; ids must be distinct integers."""
    is_int = np.char.isdigit(np.char.strip(ids))
    if not is_int.all():
        line = int(np.flatnonzero(~is_int)[0])
        raise MalformedInput(
            f"{origin}, line {line + 1}: {what} {str(ids[line])!r} is not an integer"
        )
    numeric = ids.astype(np.int64)
    order = np.argsort(numeric, kind="stable")
    dup = np.flatnonzero(numeric[order][1:] == numeric[order][:-1])
    if len(dup):
        line = int(order[dup[0] + 1])
        raise MalformedInput(f"{origin}, line {line + 1}: duplicate {what} {str(ids[line])!r}")
    return numeric


def _index_of(
    table_ids: np.ndarray, values: np.ndarray, origin: str, table: str, what: str
) -> np.ndarray:
    """Row in a sorted-by-number id table of each integer id; unknown ids are malformed."""
    numeric = table_ids.astype(np.int64)
    pos = np.searchsorted(numeric, values)
    found = pos < len(numeric)
    found[found] = numeric[pos[found]] == values[found]
    if not found.all():
        line = int(np.flatnonzero(~found)[0])
        raise MalformedInput(f"{origin}, line {line + 1}: {what} {values[line]} is not in {table}")
    return pos.astype(np.int32)


# ---------------------------------------------------------------- locating files


class _Files:
    """Reads the files of one dataset from a folder or a zip archive."""

    def __init__(self, location: Path, layout: Layout) -> None:
        self.location = location
        self.layout = layout
        if location.is_file():
            if not zipfile.is_zipfile(location):
                raise AfmError(f"{location} is neither a folder nor a zip archive")
            with zipfile.ZipFile(location) as archive:
                names = {Path(n).name: n for n in archive.namelist() if not n.endswith("/")}
            missing = [f for f in layout.files if f not in names]
            self.members = names
        else:
            self.location = folder_with(location, layout.files)
            missing = [f for f in layout.files if not (self.location / f).is_file()]
        if missing:
            raise AfmError(
                f"{location} lacks {', '.join(missing)} "
                f"(expected the files of {layout.archive}: {', '.join(layout.files)})"
            )

    def read(self, name: str) -> tuple[bytes, str]:
        """Bytes of one file and the name to use in error messages."""
        if self.location.is_file():
            member = self.members[name]
            try:
                with zipfile.ZipFile(self.location) as archive:
                    return archive.read(member), f"{self.location}:{member}"
            except (zipfile.BadZipFile, OSError) as exc:
                raise MalformedInput(f"{self.location}:{member}: unreadable ({exc})") from None
        path = self.location / name
        return path.read_bytes(), str(path)

    def describe(self, dataset: str | None) -> str:
        return f"{dataset} at {self.location}"


def _open(config: DataConfig) -> tuple[Layout, _Files]:
    if config.dataset not in LAYOUTS:
        raise AfmError(f"unknown dataset {config.dataset!r}; expected one of {', '.join(LAYOUTS)}")
    layout = LAYOUTS[config.dataset]
    if config.data_dir is not None:
        if not Path(config.data_dir).exists():
            raise AfmError(f"--data-dir {config.data_dir} does not exist")
        return layout, _Files(Path(config.data_dir), layout)
    if config.dataset == "synthetic":
        return layout, _Files(_cached_synthetic(Path(config.cache_dir)), layout)
    folder = fetch(
        config.dataset,
        Path(config.cache_dir),
        archive=layout.archive,
        md5=layout.md5,
        files=layout.files,
    )
    return layout, _Files(folder, layout)


def _cached_synthetic(cache_dir: Path) -> Path:
    """The synthetic defaults' folder, written on first use; its name carries the generator
    version, so data written by an older generator is never reused."""
    from model.data.synth import GENERATOR_VERSION, PLANTED_FILE, write_synthetic

    d = SYNTHETIC_DEFAULTS
    folder = cache_dir / (
        f"synthetic-v{GENERATOR_VERSION}-"
        f"{d['users']}u-{d['movies']}m-{d['ratings']}r-seed{d['seed']}"
    )
    if not all((folder / n).is_file() for n in (*ML_1M.files, PLANTED_FILE)):
        write_synthetic(folder, **d)  # atomic: a temporary folder renamed into place
    return folder
