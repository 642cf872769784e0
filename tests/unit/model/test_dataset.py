"""PreparedData: vocabularies from training rows only, encoding with an OOV bucket, raw values."""

from __future__ import annotations

import numpy as np

from model.contracts.export_format import ALL_FIELDS, SEED_FIELDS
from model.data.dataset import PAD, LabeledRows, PreparedData, add_training_rows


def rows(user: list[int], movie: list[int], label: list[float]) -> LabeledRows:
    return LabeledRows(
        user_idx=np.array(user, dtype=np.int32),
        movie_idx=np.array(movie, dtype=np.int32),
        label=np.array(label, dtype=np.float32),
    )


def make_data(train: LabeledRows | None = None) -> PreparedData:
    users = {
        "user_id": np.array(["10", "2", "7"]),
        "gender": np.array(["M", "F", "M"]),
        "age": np.array(["25", "1", "56"]),
        "occupation": np.array(["4", "10", "20"]),
        "zip": np.array(["48067", "02139", "99999"]),
    }
    movies = {
        "movie_id": np.array(["1193", "661", "914", "3408"]),
        "title": np.array(["A (1975)", "B (1996)", "C (1964)", "D (2000)"]),
        "year": np.array(["1975", "1996", "", "2000"]),
        "genres": np.array(["Drama", "Animation|Children's|Musical", "Musical|Romance", ""]),
    }
    return PreparedData(
        users=users,
        movies=movies,
        train=train if train is not None else rows([0, 1, 0], [0, 1, 1], [1, 0, 1]),
        valid=rows([1], [2], [1]),
        test=rows([2, 0], [3, 0], [1, 0]),
        protocol="test",
        source="test",
    )


def test_vocabularies_come_from_training_rows_only_and_are_sorted():
    vocab = make_data().vocabularies(ALL_FIELDS)
    assert list(vocab) == list(ALL_FIELDS)
    assert vocab["user_id"].tolist() == ["10", "2"]  # user "7" appears only in test
    assert vocab["age"].tolist() == ["1", "25"]
    assert vocab["zip"].tolist() == ["02139", "48067"]
    assert vocab["movie_id"].tolist() == ["1193", "661"]  # "914" valid only, "3408" test only
    assert vocab["year"].tolist() == ["1975", "1996"]
    # multi-valued: single values, from the training movies only ("Romance" is valid-only)
    assert vocab["genres"].tolist() == ["Animation", "Children's", "Drama", "Musical"]


def test_encode_gives_position_plus_one_and_zero_for_unseen_values():
    data = make_data()
    vocab = data.vocabularies(ALL_FIELDS)
    test = data.encode(data.test, vocab, ALL_FIELDS)
    assert test["ids"].dtype == np.int32 and test["ids"].shape == (2, len(ALL_FIELDS) - 1)
    # row 0: user "7" (unseen), M (2), age 56 (unseen), occupation 20 (unseen),
    # zip 99999 (unseen), movie 3408 (unseen), year 2000 (unseen)
    assert test["ids"][0].tolist() == [0, 2, 0, 0, 0, 0, 0]
    # row 1: user "10" (1), M (2), age 25 (2), occupation 4 (2), zip 48067 (2), movie 1193 (1),
    # year 1975 (1)
    assert test["ids"][1].tolist() == [1, 2, 2, 2, 2, 1, 1]
    assert data.encode(data.valid, vocab, ALL_FIELDS)["ids"][0, 5] == 0  # movie 914: valid-only


def test_multi_valued_fields_become_padded_value_ids_with_oov_for_empty_sets():
    data = make_data()
    vocab = data.vocabularies(ALL_FIELDS)
    genres = data.encode(data.valid, vocab, ALL_FIELDS)["genres"]
    # "Musical|Romance": Musical is id 4, Romance unseen -> 0; padded to the longest (3)
    assert genres.tolist() == [[4, 0, PAD]]
    test = data.encode(data.test, vocab, ALL_FIELDS)["genres"]
    assert test.tolist() == [[0, PAD, PAD], [3, PAD, PAD]]  # "" -> the OOV id alone; Drama


def test_seed_fields_encode_six_columns_and_no_genres():
    data = make_data()
    encoded = data.encode(data.test, data.vocabularies(SEED_FIELDS), SEED_FIELDS)
    assert list(encoded) == ["ids"] and encoded["ids"].shape == (2, 6)


def test_raw_returns_the_strings_the_signatures_take():
    data = make_data()
    raw = data.raw(data.test, ALL_FIELDS)
    assert list(raw) == list(ALL_FIELDS)
    assert raw["user_id"].tolist() == ["7", "10"]
    assert raw["zip"].tolist() == ["99999", "48067"]
    assert raw["movie_id"].tolist() == ["3408", "1193"]
    assert raw["genres"].tolist() == ["", "Drama"]


def test_summary_counts_rows_and_positives():
    assert make_data().summary() == {
        "train": {"rows": 3, "positives": 2},
        "valid": {"rows": 1, "positives": 1},
        "test": {"rows": 2, "positives": 1},
    }


def test_empty_training_rows_give_empty_vocabularies_and_all_oov():
    empty = make_data(train=rows([], [], []))
    vocab = empty.vocabularies(ALL_FIELDS)
    assert all(len(v) == 0 for v in vocab.values())
    encoded = empty.encode(empty.test, vocab, ALL_FIELDS)
    assert (encoded["ids"] == 0).all()
    assert (encoded["genres"][:, 0] == 0).all()


def test_added_training_rows_keep_their_values_and_the_evaluation_rows_stay() -> None:
    data, extra = make_data(), make_data(rows([2, 1], [3, 0], [1, 0]))
    combined = add_training_rows(data, extra)
    assert len(combined.train) == len(data.train) + len(extra.train)
    assert combined.valid is data.valid and combined.test is data.test
    fields = list(ALL_FIELDS)
    want = {f: np.concatenate([data.raw(data.train, fields)[f], extra.raw(extra.train, fields)[f]])
            for f in fields}  # fmt: skip
    got = combined.raw(combined.train, fields)
    for name in fields:
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)
    assert combined.extra["added_training_rows"] == {"source": "test", "rows": 2}
