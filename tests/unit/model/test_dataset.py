"""PreparedData: vocabularies from training rows only, encoding with an OOV bucket, raw values."""

from __future__ import annotations

import numpy as np

from model.contract import FIELDS
from model.dataset import LabeledRows, PreparedData


def rows(user: list[int], movie: list[int], label: list[float]) -> LabeledRows:
    return LabeledRows(
        user_idx=np.array(user, dtype=np.int32),
        movie_idx=np.array(movie, dtype=np.int32),
        label=np.array(label, dtype=np.float32),
    )


def make_data() -> PreparedData:
    users = {
        "user_id": np.array(["10", "2", "7"]),
        "gender": np.array(["M", "F", "M"]),
        "age": np.array(["25", "1", "56"]),
        "occupation": np.array(["4", "10", "20"]),
        "zip": np.array(["48067", "02139", "99999"]),
    }
    return PreparedData(
        users=users,
        movie_ids=np.array(["1193", "661", "914", "3408"]),
        train=rows([0, 1, 0], [0, 1, 1], [1, 0, 1]),
        valid=rows([1], [2], [1]),
        test=rows([2, 0], [3, 0], [1, 0]),
        protocol="test",
        source="test",
    )


def test_vocabularies_come_from_training_rows_only_and_are_sorted():
    vocab = make_data().vocabularies()
    assert list(vocab) == list(FIELDS)
    assert vocab["user_id"].tolist() == ["10", "2"]  # user "7" appears only in test
    assert vocab["age"].tolist() == ["1", "25"]
    assert vocab["zip"].tolist() == ["02139", "48067"]
    assert vocab["movie_id"].tolist() == ["1193", "661"]  # "914" valid only, "3408" test only


def test_encode_gives_position_plus_one_and_zero_for_unseen_values():
    data = make_data()
    vocab = data.vocabularies()
    test_ids = data.encode(data.test, vocab)
    assert test_ids.dtype == np.int32 and test_ids.shape == (2, len(FIELDS))
    # row 0: user "7" (unseen), M (2), age 56 (unseen), occupation 20 (unseen),
    # zip 99999 (unseen), movie 3408 (unseen)
    assert test_ids[0].tolist() == [0, 2, 0, 0, 0, 0]
    # row 1: user "10" (1), M (2), age 25 (2), occupation 4 (2), zip 48067 (2), movie 1193 (1)
    assert test_ids[1].tolist() == [1, 2, 2, 2, 2, 1]
    assert data.encode(data.valid, vocab)[0, -1] == 0  # movie 914 is valid-only


def test_raw_returns_the_strings_the_signatures_take():
    data = make_data()
    raw = data.raw(data.test)
    assert list(raw) == list(FIELDS)
    assert raw["user_id"].tolist() == ["7", "10"]
    assert raw["zip"].tolist() == ["99999", "48067"]
    assert raw["movie_id"].tolist() == ["3408", "1193"]


def test_summary_counts_rows_and_positives():
    assert make_data().summary() == {
        "train": {"rows": 3, "positives": 2},
        "valid": {"rows": 1, "positives": 1},
        "test": {"rows": 2, "positives": 1},
    }


def test_empty_training_rows_give_empty_vocabularies_and_all_oov():
    data = make_data()
    empty = PreparedData(
        users=data.users,
        movie_ids=data.movie_ids,
        train=rows([], [], []),
        valid=data.valid,
        test=data.test,
        protocol="test",
        source="test",
    )
    vocab = empty.vocabularies()
    assert all(len(v) == 0 for v in vocab.values())
    assert (empty.encode(empty.test, vocab) == 0).all()
