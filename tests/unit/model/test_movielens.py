"""Readers for the ML-1M, ML-100K and synthetic layouts: raw values, ids, movie tables,
malformed input; and the byte-level parsers they share."""

from __future__ import annotations

import re
import zipfile
from pathlib import Path

import numpy as np
import pytest

from model.config import DataConfig
from model.data import movielens, parsing
from model.data.dataset import MOVIE_COLUMNS
from model.data.movielens import load_feature_set, load_movies, load_ratings, load_users
from model.data.synth import GENERATOR_VERSION, PLANTED_FILE
from model.errors import AfmError, MalformedInput
from tests.conftest import shared_data

ML_1M_FILES = {
    "users.dat": "1::F::1::10::48067\n2::M::56::16::70072\n10::F::35::1::95370-1234\n",
    "movies.dat": (
        "1::Toy Story (1995)::Animation|Children's|Comedy\n"
        "10::GoldenEye (1995)::Action|Adventure|Thriller\n"
        "2::Jumanji (1995)::Adventure|Children's|Fantasy\n"
        "3::Señor Ratón (1999)::Comedy\n"
    ),
    "ratings.dat": (
        "1::1::5::978300760\n1::10::3::978302109\n2::2::4::978300275\n10::1::1::978824291\n"
    ),
}
ML_100K_FILES = {
    "u.user": "1|24|M|technician|85711\n2|53|F|other|94043\n",
    "u.item": (
        "1|Toy Story (1995)|01-Jan-1995||http://x|0|0|0|1|1|1|0|0|0|0|0|0|0|0|0|0|0|0|0\n"
        "2|GoldenEye (1995)|01-Jan-1995||http://y|0|1|1|0|0|0|0|0|0|0|0|0|0|0|0|0|1|0|0\n"
    ),
    "u.data": "1\t2\t3\t881250949\n2\t1\t5\t891717742\n1\t1\t4\t878887116\n",
}


def write_files(folder: Path, files: dict[str, str | bytes]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        data = text if isinstance(text, bytes) else text.encode("latin-1")
        (folder / name).write_bytes(data)
    return folder


def ml1m(tmp_path: Path, **changes: str | bytes) -> DataConfig:
    folder = write_files(tmp_path / "ml-1m", {**ML_1M_FILES, **changes})
    return DataConfig(dataset="ml-1m", data_dir=folder)


def test_ml1m_keeps_raw_strings_and_sorts_tables_by_id(tmp_path: Path):
    ratings = load_ratings(ml1m(tmp_path))
    assert ratings.users["user_id"].tolist() == ["1", "2", "10"]
    assert ratings.users["gender"].tolist() == ["F", "M", "F"]
    assert ratings.users["age"].tolist() == ["1", "56", "35"]
    assert ratings.users["occupation"].tolist() == ["10", "16", "1"]
    assert ratings.users["zip"].tolist() == ["48067", "70072", "95370-1234"]
    assert ratings.movie_ids.tolist() == ["1", "2", "3", "10"]  # numeric, not text, order
    users = ratings.users["user_id"][ratings.user_idx].tolist()
    movies = ratings.movie_ids[ratings.movie_idx].tolist()
    assert list(zip(users, movies, strict=True)) == [
        ("1", "1"),
        ("1", "10"),
        ("2", "2"),
        ("10", "1"),
    ]
    assert ratings.rating.tolist() == [5, 3, 4, 1]
    assert ratings.timestamp.tolist() == [978300760, 978302109, 978300275, 978824291]


def test_zip_archive_and_its_extracted_folder_read_the_same(tmp_path: Path):
    archive = tmp_path / "ml-1m.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for name, text in ML_1M_FILES.items():
            z.writestr(f"ml-1m/{name}", text.encode("latin-1"))
    from_zip = load_ratings(DataConfig(dataset="ml-1m", data_dir=archive))
    write_files(tmp_path / "extracted" / "ml-1m", ML_1M_FILES)
    from_parent = load_ratings(DataConfig(dataset="ml-1m", data_dir=tmp_path / "extracted"))
    for a, b in ((from_zip, from_parent),):
        assert np.array_equal(a.user_idx, b.user_idx) and np.array_equal(a.movie_idx, b.movie_idx)
        assert a.users["zip"].tolist() == b.users["zip"].tolist()
    assert "ml-1m.zip" in from_zip.source


def test_ml100k_reorders_user_fields_and_keeps_occupation_names(tmp_path: Path):
    folder = write_files(tmp_path / "ml-100k", ML_100K_FILES)
    ratings = load_ratings(DataConfig(dataset="ml-100k", data_dir=folder))
    assert ratings.users["gender"].tolist() == ["M", "F"]
    assert ratings.users["age"].tolist() == ["24", "53"]
    assert ratings.users["occupation"].tolist() == ["technician", "other"]
    assert ratings.user_idx.tolist() == [0, 1, 0]
    assert ratings.movie_idx.tolist() == [1, 0, 0]
    assert ratings.rating.tolist() == [3, 5, 4]


def test_load_users_does_not_read_ratings(tmp_path: Path):
    users = load_users(ml1m(tmp_path, **{"ratings.dat": "not::a::ratings::file::at all\n"}))
    assert users["user_id"].tolist() == ["1", "2", "10"]
    assert list(users) == ["user_id", "gender", "age", "occupation", "zip"]


def movie_rows(movies: dict[str, np.ndarray]) -> list[tuple[str, ...]]:
    return list(zip(*(movies[c].tolist() for c in MOVIE_COLUMNS), strict=True))


def test_ml1m_movie_table_takes_the_year_from_the_end_of_the_title(tmp_path: Path):
    movies_dat = (
        "10::GoldenEye (1995)::Action|Adventure|Thriller\n"
        "1::Toy Story (1995)::Animation|Children's|Comedy\n"
        "2::Jumanji (1995)  ::Adventure|Children's|Fantasy\n"  # trailing spaces
        "3::1984 (Nineteen Eighty-Four) (1984)::Drama\n"  # a year inside the title too
        "4::Untitled::Comedy\n"  # no year
        "5::Señor Ratón (1999) (V)::Comedy\n"  # the year is not at the end
    )
    ratings = load_ratings(ml1m(tmp_path, **{"movies.dat": movies_dat}))
    assert list(ratings.movies) == list(MOVIE_COLUMNS)
    assert movie_rows(ratings.movies) == [
        ("1", "Toy Story (1995)", "1995", "Animation|Children's|Comedy"),
        ("2", "Jumanji (1995)  ", "1995", "Adventure|Children's|Fantasy"),
        ("3", "1984 (Nineteen Eighty-Four) (1984)", "1984", "Drama"),
        ("4", "Untitled", "", "Comedy"),
        ("5", "Señor Ratón (1999) (V)", "", "Comedy"),
        ("10", "GoldenEye (1995)", "1995", "Action|Adventure|Thriller"),
    ]
    assert ratings.movie_ids.tolist() == ["1", "2", "3", "4", "5", "10"]
    assert ratings.movies["title"][ratings.movie_idx].tolist()[:2] == [
        "Toy Story (1995)",
        "GoldenEye (1995)",
    ]


def test_ml100k_movie_table_names_the_set_genre_flags_and_reads_the_release_year(
    tmp_path: Path,
):
    def item(movie_id: int, title: str, date: str, *genres: int) -> str:
        flags = ["1" if i in genres else "0" for i in range(19)]
        return "|".join([str(movie_id), title, date, "", "http://x", *flags]) + "\n"

    u_item = (
        item(2, "GoldenEye (1995)", "01-Jan-1995", 1, 2, 16)
        + item(1, "Toy Story (1995)", "01-Jan-1995", 3, 4, 5)
        + item(267, "unknown", "", 0)  # ML-100K's movie without a date, flagged unknown
        + item(1373, "Good Morning (1971)", "4-Feb-1971", 0)  # one-digit day
        + item(23, "Taxi Driver (1976)", "16-Feb-1996", 6, 8, 16)  # a re-release date
        + item(7, "Café (1990) ", "01-Jan-1990", 0, 18)  # unknown beside a named genre
    )
    folder = write_files(tmp_path / "ml-100k", {**ML_100K_FILES, "u.item": u_item})
    movies = load_movies(DataConfig(dataset="ml-100k", data_dir=folder))
    assert movie_rows(movies) == [
        ("1", "Toy Story (1995)", "1995", "Animation|Children's|Comedy"),
        ("2", "GoldenEye (1995)", "1995", "Action|Adventure|Thriller"),
        ("7", "Café (1990) ", "1990", "Western"),
        ("23", "Taxi Driver (1976)", "1996", "Crime|Drama|Thriller"),
        ("267", "unknown", "", ""),
        ("1373", "Good Morning (1971)", "1971", ""),
    ]


def test_ml100k_genre_names_are_ml1m_spelling_in_u_genre_order():
    assert movielens.ML_100K_GENRES[0] == "unknown"
    assert set(movielens.ML_100K_GENRES[1:]) == {
        "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary",
        "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi",
        "Thriller", "War", "Western",
    }  # fmt: skip


def test_ml100k_genre_flag_other_than_0_or_1_is_malformed(tmp_path: Path):
    bad = ML_100K_FILES["u.item"].replace("|0|0|0|1|1|1|", "|0|0|0|2|1|1|", 1)
    folder = write_files(tmp_path / "ml-100k", {**ML_100K_FILES, "u.item": bad})
    with pytest.raises(MalformedInput, match=r"u.item, line 1, field 9: genre flag 2 is not 0"):
        load_movies(DataConfig(dataset="ml-100k", data_dir=folder))
    bad = ML_100K_FILES["u.item"].replace("|0|0|0|1|1|1|", "|0|0|0|x|1|1|", 1)
    write_files(folder, {"u.item": bad})
    with pytest.raises(MalformedInput, match=r"u.item, line 1, field 9: 'x' is not an integer"):
        load_movies(DataConfig(dataset="ml-100k", data_dir=folder))


def test_load_movies_does_not_read_ratings(tmp_path: Path):
    movies = load_movies(ml1m(tmp_path, **{"ratings.dat": "not::a::ratings::file::at all\n"}))
    assert movies["movie_id"].tolist() == ["1", "2", "3", "10"]
    assert movies["title"][2] == "Señor Ratón (1999)"  # latin-1
    assert movies["year"].tolist() == ["1995", "1995", "1999", "1995"]


@pytest.mark.parametrize(
    ("file", "content", "message"),
    [
        (
            "ratings.dat",
            "1::1::5::1\n1::2::5\n",
            r"ratings.dat, line 2: expected 4 fields .* found 3",
        ),
        ("ratings.dat", "1::1::5::1\n1::2::5::1::9\n", r"ratings.dat, line 2: expected 4 fields"),
        ("ratings.dat", "1::1::5::1\n\n1::2::5::1\n", r"ratings.dat, line 2: expected 4 fields"),
        ("ratings.dat", "1::1::5::1\n1::2::five::1\n", r"ratings.dat, line 2, field 3: 'five'"),
        (
            "ratings.dat",
            "1::1::5::1\n1::2::6::1\n",
            r"ratings.dat, line 2: rating 6 is not in 1..5",
        ),
        ("ratings.dat", "1::1::5::1\n7::2::5::1\n", r"ratings.dat, line 2: user 7 is not in users"),
        ("ratings.dat", "1::99::5::1\n", r"ratings.dat, line 1: movie 99 is not in movies"),
        ("ratings.dat", "", r"ratings.dat: empty file"),
        ("ratings.dat", "\n\n", r"ratings.dat: empty file"),
        ("users.dat", "1::F::1::10::48067\n1::M::1::10::48067\n", r"users.dat, line 2: duplicate"),
        ("users.dat", "x::F::1::10::48067\n", r"users.dat, line 1: user id 'x' is not an integer"),
        ("users.dat", "1::F::1::10\n", r"users.dat, line 1: expected 5 fields"),
        ("users.dat", "1::F::1::10::4\t8067\n", r"users.dat, line 1: unexpected tab"),
        ("movies.dat", "1::A::B::C\n", r"movies.dat, line 1: expected 3 fields"),
    ],
)
def test_malformed_ml1m_names_file_and_line(tmp_path: Path, file: str, content: str, message: str):
    with pytest.raises(MalformedInput, match=message):
        load_ratings(ml1m(tmp_path, **{file: content}))


def test_utf16_text_is_refused(tmp_path: Path):
    config = ml1m(tmp_path, **{"users.dat": ML_1M_FILES["users.dat"].encode("utf-16")})
    with pytest.raises(MalformedInput, match=r"users.dat, line 1: .*byte-order mark"):
        load_users(config)
    (tmp_path / "ml-1m" / "users.dat").write_bytes(ML_1M_FILES["users.dat"].encode("utf-16-le"))
    with pytest.raises(MalformedInput, match=r"users.dat, line 1: NUL byte"):
        load_users(config)


def test_windows_line_endings_are_accepted(tmp_path: Path):
    crlf = {name: text.replace("\n", "\r\n") for name, text in ML_1M_FILES.items()}
    ratings = load_ratings(ml1m(tmp_path, **crlf))
    assert ratings.users["zip"].tolist() == ["48067", "70072", "95370-1234"]


def test_missing_files_and_folders_are_clear_errors(tmp_path: Path):
    with pytest.raises(AfmError, match="does not exist"):
        load_users(DataConfig(dataset="ml-1m", data_dir=tmp_path / "nowhere"))
    write_files(tmp_path / "partial", {"users.dat": ML_1M_FILES["users.dat"]})
    with pytest.raises(AfmError, match="lacks movies.dat, ratings.dat"):
        load_ratings(DataConfig(dataset="ml-1m", data_dir=tmp_path / "partial"))
    (tmp_path / "junk.zip").write_bytes(b"not a zip")
    with pytest.raises(AfmError, match="neither a folder nor a zip"):
        load_ratings(DataConfig(dataset="ml-1m", data_dir=tmp_path / "junk.zip"))


def test_synthetic_without_data_dir_is_generated_once_in_the_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setattr(
        movielens, "SYNTHETIC_DEFAULTS", {"users": 30, "movies": 40, "ratings": 600, "seed": 1}
    )
    config = DataConfig(dataset="synthetic", cache_dir=tmp_path / "cache")
    first = load_ratings(config)
    folders = list((tmp_path / "cache").iterdir())
    assert [p.name for p in folders] == [f"synthetic-v{GENERATOR_VERSION}-30u-40m-600r-seed1"]
    assert (folders[0] / PLANTED_FILE).is_file()
    stamp = (folders[0] / "ratings.dat").stat().st_mtime_ns
    second = load_ratings(config)
    assert (folders[0] / "ratings.dat").stat().st_mtime_ns == stamp
    assert np.array_equal(first.movie_idx, second.movie_idx)
    assert len(first.rating) == 600


@pytest.mark.slow
def test_real_ml100k():
    folder = shared_data("ml-100k")
    ratings = load_ratings(DataConfig(dataset="ml-100k", data_dir=folder))
    assert len(ratings.users["user_id"]) == 943
    assert len(ratings.movie_ids) == 1682
    assert len(ratings.rating) == 100_000
    assert ratings.users["occupation"][0] == "technician"
    assert set(np.unique(ratings.rating)) == {1, 2, 3, 4, 5}


@pytest.mark.slow
def test_real_ml1m_without_timestamps():
    folder = shared_data("ml-1m-notime")
    ratings = load_ratings(DataConfig(dataset="ml-1m", data_dir=folder))
    assert len(ratings.users["user_id"]) == 6040
    assert len(ratings.movie_ids) == 3883
    assert len(ratings.rating) == 999_414
    first = {col: values[0] for col, values in ratings.users.items()}
    assert first == {"user_id": "1", "gender": "F", "age": "1", "occupation": "10", "zip": "48067"}
    assert (ratings.timestamp == 0).all()
    assert len(np.unique(ratings.movie_idx)) == 3610


def test_categorical_parse_across_blocks_matches_plain_parse(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(parsing, "_BLOCK_LINES", 3)  # 10 lines -> 4 blocks
    lines = [f"{i % 4:02d}\t{'x' * (i % 11)}\t{i}" for i in range(10)]
    data = "\n".join(lines).encode() + b"\n"
    columns = parsing.parse_categorical(data, "f", sep=b"\t", fields=3)
    plain = parsing.parse_columns(data, "f", sep=b"\t", fields=3, keep=(0, 1, 2))
    for i, (codes, values) in enumerate(columns):
        assert values[codes].tolist() == plain[i].tolist()
    assert sorted(columns[0][1].tolist()) == ["00", "01", "02", "03"]
    bad = data.replace(b"\t7\n", b"\t7\t\n")  # line 8, in the third block
    with pytest.raises(MalformedInput, match=r"f, line 8: expected 3 fields"):
        parsing.parse_categorical(bad, "f", sep=b"\t", fields=3)


def test_real_ml1m_movie_table():
    movies = load_movies(DataConfig(dataset="ml-1m", data_dir=shared_data("ml-1m-notime")))
    assert len(movies["movie_id"]) == 3883
    first = {col: values[0] for col, values in movies.items()}
    assert first == {
        "movie_id": "1",
        "title": "Toy Story (1995)",
        "year": "1995",
        "genres": "Animation|Children's|Comedy",
    }
    years = movies["year"].astype(int)  # every ML-1M title ends with its year
    assert years.min() == 1919 and years.max() == 2000
    genres = {g for joined in movies["genres"].tolist() for g in joined.split("|")}
    assert genres == set(movielens.ML_100K_GENRES[1:])  # the same 18 names in both datasets


def test_real_ml100k_movie_table():
    movies = load_movies(DataConfig(dataset="ml-100k", data_dir=shared_data("ml-100k")))
    assert len(movies["movie_id"]) == 1682
    row = {int(m): i for i, m in enumerate(movies["movie_id"].tolist())}
    assert [movies[c][row[1]] for c in MOVIE_COLUMNS] == [
        "1",
        "Toy Story (1995)",
        "1995",
        "Animation|Children's|Comedy",
    ]
    assert [movies[c][row[267]] for c in MOVIE_COLUMNS] == ["267", "unknown", "", ""]
    assert [movies[c][row[1373]] for c in MOVIE_COLUMNS[2:]] == ["1971", ""]  # 'unknown' only
    assert (movies["year"] == "").sum() == 1 and (movies["genres"] == "").sum() == 2
    assert movies["title"][row[1128]] == "Heidi Fleiss: Hollywood Madam (1995) "  # as written
    genres = {g for joined in movies["genres"].tolist() for g in joined.split("|") if g}
    assert genres == set(movielens.ML_100K_GENRES[1:])


def test_feature_set_ranks_movies_by_ratings_and_breaks_ties_by_id(tmp_path: Path):
    # Movie 1 is rated twice; 2 and 10 once each (2 first: ties go to the lower id, not the
    # lower text); 3 never, so it is not popular.
    loaded = load_feature_set(ml1m(tmp_path))
    assert loaded.popular == ("1", "2", "10")
    assert loaded.sample_users == ("1", "2", "10")
    assert loaded.users["zip"].tolist() == ["48067", "70072", "95370-1234"]
    assert loaded.movies["movie_id"].tolist() == ["1", "2", "3", "10"]
    assert loaded.source == f"ml-1m at {tmp_path / 'ml-1m'}"
    assert loaded.labels is movielens.ML_1M_LABELS


def test_feature_set_keeps_the_most_rated_movies_and_the_first_users(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setattr(movielens, "POPULAR_MOVIES", 2)
    monkeypatch.setattr(movielens, "SAMPLE_USERS", 2)
    loaded = load_feature_set(ml1m(tmp_path))
    assert loaded.popular == ("1", "2")
    assert loaded.sample_users == ("1", "2")


def test_feature_set_of_ml100k_labels_gender_only(tmp_path: Path):
    folder = write_files(tmp_path / "ml-100k", ML_100K_FILES)
    loaded = load_feature_set(DataConfig(dataset="ml-100k", data_dir=folder))
    assert loaded.labels == {"gender": {"F": "Female", "M": "Male"}}
    assert loaded.popular == ("1", "2")
    assert loaded.sample_users == ("1", "2")


def test_synthetic_data_uses_ml1m_codes_and_labels():
    assert movielens.LAYOUTS["synthetic"].labels is movielens.ML_1M_LABELS
    assert set(movielens.ML_1M_LABELS) == {"gender", "age", "occupation"}  # user fields


@pytest.mark.parametrize(
    ("ratings", "message"),
    [
        ("1::1::5::1\n1::99::5::1\n", r"ratings.dat, line 2: movie 99 is not in movies"),
        ("1::1::5::1\n1::2::5\n", r"ratings.dat, line 2: expected 4 fields"),
        ("1::x::5::1\n", r"ratings.dat, line 1, field 2: 'x' is not an integer"),
    ],
)
def test_feature_set_refuses_malformed_ratings(tmp_path: Path, ratings: str, message: str):
    with pytest.raises(MalformedInput, match=message):
        load_feature_set(ml1m(tmp_path, **{"ratings.dat": ratings}))


def test_ml1m_labels_are_the_readme_codes():
    """Every code and label of ML-1M's README, spelled as there ("other" or not specified
    loses its quotes)."""
    readme = (shared_data("ml-1m-notime") / "README").read_text(encoding="latin-1")
    ages, occupations = readme.split("Age is chosen")[1].split("Occupation is chosen")
    occupations = occupations.split("\n\n- ")[0]

    def codes(section: str) -> dict[str, str]:
        rows = re.findall(r"^\s*\*\s*(\d+):\s*(.+?)\s*$", section, flags=re.MULTILINE)
        return {code: label.replace('"', "") for code, label in rows}

    assert movielens.ML_1M_LABELS["age"] == codes(ages)
    assert movielens.ML_1M_LABELS["occupation"] == codes(occupations)
    assert len(codes(ages)) == 7 and len(codes(occupations)) == 21
    assert '"M" for male and "F" for female' in readme
    assert movielens.ML_1M_LABELS["gender"] == {"F": "Female", "M": "Male"}


@pytest.mark.slow
def test_real_ml1m_feature_set():
    loaded = load_feature_set(DataConfig(dataset="ml-1m", data_dir=shared_data("ml-1m-notime")))
    assert len(loaded.users["user_id"]) == 6040 and len(loaded.movies["movie_id"]) == 3883
    assert len(loaded.popular) == 100 and len(set(loaded.popular)) == 100
    assert loaded.popular[:3] == ("2858", "260", "1196")  # American Beauty, Star Wars IV, V
    assert loaded.sample_users == tuple(str(i) for i in range(1, 21))
    ratings = load_ratings(DataConfig(dataset="ml-1m", data_dir=shared_data("ml-1m-notime")))
    counts = np.bincount(ratings.movie_idx, minlength=len(ratings.movie_ids))
    rows = {m: i for i, m in enumerate(ratings.movie_ids.tolist())}
    ranked = [int(counts[rows[m]]) for m in loaded.popular]
    assert ranked == sorted(ranked, reverse=True) and ranked[0] == counts.max() == 3428
