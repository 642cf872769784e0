"""Pure helpers: a request's candidates, ranking, readable pairs; settings from the environment."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import orjson
import pytest
from pydantic import ValidationError

from model.contracts import export_format
from service.ranking import (
    UNKNOWN_VALUE,
    candidates,
    ranked_indices,
    score_entries,
    scores_json,
)
from service.scorer import Candidates
from service.settings import Settings

PAIRS = export_format.pairs(export_format.SEED_FIELDS)
MOVIES = {
    "3": {"title": "Grumpier Old Men (1995)", "year": "1995", "genres": "Comedy|Romance"},
    "1": {"title": "Toy Story (1995)", "year": "1995", "genres": "Animation|Children's|Comedy"},
}


def test_candidates_hold_the_user_once_and_each_movie() -> None:
    features = {"gender": "M", "age": "35", "occupation": "7", "zip": "02139"}
    rows = candidates(export_format.ALL_FIELDS, 12, features, [3, 1, 3], MOVIES)
    assert rows.users == {"user_id": ["12"], **{f: [v] for f, v in features.items()}}
    assert rows.movie_ids == [3, 1, 3] and rows.movies is MOVIES
    assert rows.user_index.tolist() == [0, 0, 0]
    columns = rows.columns(export_format.ALL_FIELDS)
    assert columns["zip"] == ["02139"] * 3
    assert columns["genres"] == ["Comedy|Romance", "Animation|Children's|Comedy", "Comedy|Romance"]
    assert columns["year"] == ["1995"] * 3


def test_candidates_hold_exactly_the_model_fields() -> None:
    rows = candidates(export_format.SEED_FIELDS, 12, None, [3], MOVIES)
    assert list(rows.users) == list(export_format.USER_FIELDS)
    assert list(rows.columns(export_format.SEED_FIELDS)) == list(export_format.SEED_FIELDS)


def test_unknown_user_and_movie_get_values_outside_every_vocabulary() -> None:
    rows = candidates(export_format.ALL_FIELDS, 12, None, [3, 99], MOVIES)
    assert rows.users["user_id"] == ["12"]
    assert all(rows.users[f] == [UNKNOWN_VALUE] for f in ("gender", "age", "occupation", "zip"))
    assert rows.columns(["genres"])["genres"] == ["Comedy|Romance", UNKNOWN_VALUE]
    assert rows.columns(["movie_id"])["movie_id"] == ["3", "99"]  # the raw value: its decimal


def test_merged_candidates_renumber_their_users() -> None:
    first = candidates(export_format.SEED_FIELDS, 1, {"zip": "1"}, [3, 1], MOVIES)
    second = candidates(export_format.SEED_FIELDS, 2, {"zip": "2"}, [1], MOVIES)
    merged = Candidates.concat([first, second])
    assert merged.users["zip"] == ["1", "2"] and merged.user_index.tolist() == [0, 0, 1]
    assert merged.columns(["user_id", "movie_id"]) == {
        "user_id": ["1", "1", "2"],
        "movie_id": ["3", "1", "1"],
    }
    assert first.mergeable(second)
    assert not first.mergeable(candidates(export_format.SEED_FIELDS, 1, None, [3], dict(MOVIES)))


def test_ranked_indices_keep_request_order_without_top_k() -> None:
    assert ranked_indices(np.array([0.1, 0.9, 0.5]), None) == [0, 1, 2]


def test_ranked_indices_take_the_top_k_with_stable_ties() -> None:
    assert ranked_indices(np.array([0.5, 0.9, 0.5, 0.1]), 3) == [1, 0, 2]


@pytest.mark.parametrize("seed", range(20))
def test_ranked_indices_equal_a_full_stable_sort(seed: int) -> None:
    rng = np.random.default_rng(seed)
    probability = rng.integers(0, 12, size=300).astype(np.float32) / 12  # many ties
    full = np.argsort(-probability, kind="stable").tolist()
    for top_k in (1, 5, 37, 299, 300, 1000):
        assert ranked_indices(probability, top_k) == full[:top_k]


def test_score_entries_follow_top_k_and_carry_explanations() -> None:
    probability = np.array([0.2, 0.9, 0.5], dtype=np.float32)
    entries = score_entries([7, 8, 9], probability, [True, False, True], 2, lambda i: {"row": i})
    assert [(e["movie_id"], e["movie_known"], e["row"]) for e in entries] == [
        (8, False, 1),
        (9, True, 2),
    ]
    assert entries[0]["probability"] == pytest.approx(0.9)


@pytest.mark.parametrize("top_k", [None, 1, 3, 50])
def test_scores_json_is_the_list_of_entries(top_k: int | None) -> None:
    rng = np.random.default_rng(3)
    movie_ids = rng.integers(1, 2**40, size=40).tolist()
    probability = rng.random(40, dtype=np.float32)
    probability[[5, 9]] = [0.0, 1.0]
    known = rng.random(40) < 0.7
    fragment = scores_json(movie_ids, probability, known, top_k)
    reply = orjson.loads(orjson.dumps({"scores": fragment}))
    order = range(40) if top_k is None else ranked_indices(probability, top_k)
    assert reply["scores"] == [
        {"movie_id": movie_ids[i], "probability": reply["scores"][n]["probability"],
         "movie_known": bool(known[i])}
        for n, i in enumerate(order)
    ]  # fmt: skip
    got = np.array([entry["probability"] for entry in reply["scores"]], dtype=np.float32)
    np.testing.assert_array_equal(got, probability[list(order)])  # float32, exactly


def test_scores_json_of_no_candidates_is_an_empty_list() -> None:
    fragment = scores_json([], np.zeros(0, np.float32), np.zeros(0, bool), None)
    assert orjson.dumps({"scores": fragment}) == b'{"scores":[]}'


def test_settings_read_afm_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("AFM_MODEL_DIR", str(tmp_path))
    monkeypatch.setenv("AFM_MAX_CANDIDATES", "50")
    monkeypatch.setenv("AFM_REDIS_TIMEOUT", "0.1")
    monkeypatch.setenv("AFM_NUMPY_RANKER_ROWS", "0")
    settings = Settings()
    assert settings.model_dir == tmp_path
    assert settings.max_candidates == 50 and settings.redis_timeout == 0.1
    assert settings.redis_prefix == "afm:"
    assert settings.numpy_ranker_rows == 0


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("max_candidates", 0),
        ("redis_timeout", 0),
        ("scoring_threads", 0),
        ("max_body_bytes", 10),
        ("numpy_ranker_rows", -1),
    ],
)
def test_settings_refuse_unsafe_values(tmp_path: Path, name: str, value: float) -> None:
    with pytest.raises(ValidationError, match=name):
        Settings(model_dir=tmp_path, **{name: value})


def test_settings_need_a_model_dir(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AFM_MODEL_DIR", raising=False)
    with pytest.raises(ValidationError, match="model_dir"):
        Settings()
