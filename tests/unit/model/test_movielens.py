"""Readers for the ML-1M, ML-100K and synthetic layouts: raw values, ids, malformed input."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pytest

from model import movielens
from model.config import DataConfig
from model.errors import AfmError, MalformedInput
from model.movielens import load_ratings, load_users
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
    assert [p.name for p in folders] == ["synthetic-30u-40m-600r-seed1"]
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
    monkeypatch.setattr(movielens, "_BLOCK_LINES", 3)  # 10 lines -> 4 blocks
    lines = [f"{i % 4:02d}\t{'x' * (i % 11)}\t{i}" for i in range(10)]
    data = "\n".join(lines).encode() + b"\n"
    columns = movielens.parse_categorical(data, "f", sep=b"\t", fields=3)
    plain = movielens.parse_columns(data, "f", sep=b"\t", fields=3, keep=(0, 1, 2))
    for i, (codes, values) in enumerate(columns):
        assert values[codes].tolist() == plain[i].tolist()
    assert sorted(columns[0][1].tolist()) == ["00", "01", "02", "03"]
    bad = data.replace(b"\t7\n", b"\t7\t\n")  # line 8, in the third block
    with pytest.raises(MalformedInput, match=r"f, line 8: expected 3 fields"):
        movielens.parse_categorical(bad, "f", sep=b"\t", fields=3)
