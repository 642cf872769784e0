"""Pure helpers: a request's candidates, the reply's order and numbers; settings from the
environment."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import orjson
import pytest
from pydantic import ValidationError

from model.contracts import export_format
from service.candidates import UNKNOWN_VALUE, Candidates, Scores
from service.routes.scoring import ranked_indices, reply_order, scores_json, unknown_rows
from service.settings import Settings

candidates = Candidates.of_request


def columns(rows: Candidates, fields: list[str] | tuple[str, ...]) -> dict[str, list[str]]:
    return {f: [rows.value(f, row) for row in range(len(rows))] for f in fields}


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
    values = columns(rows, export_format.ALL_FIELDS)
    assert values["zip"] == ["02139"] * 3
    assert values["genres"] == ["Comedy|Romance", "Animation|Children's|Comedy", "Comedy|Romance"]
    assert values["year"] == ["1995"] * 3


def test_candidates_hold_exactly_the_model_fields() -> None:
    rows = candidates(export_format.SEED_FIELDS, 12, None, [3], MOVIES)
    assert list(rows.users) == list(export_format.USER_FIELDS)
    assert list(columns(rows, export_format.SEED_FIELDS)) == list(export_format.SEED_FIELDS)


def test_unknown_user_and_movie_get_values_outside_every_vocabulary() -> None:
    rows = candidates(export_format.ALL_FIELDS, 12, None, [3, 99], MOVIES)
    assert rows.users["user_id"] == ["12"]
    assert all(rows.users[f] == [UNKNOWN_VALUE] for f in ("gender", "age", "occupation", "zip"))
    assert columns(rows, ["genres"])["genres"] == ["Comedy|Romance", UNKNOWN_VALUE]
    assert columns(rows, ["movie_id"])["movie_id"] == ["3", "99"]  # the raw value: its decimal


def test_merged_candidates_renumber_their_users() -> None:
    first = candidates(export_format.SEED_FIELDS, 1, {"zip": "1"}, [3, 1], MOVIES)
    second = candidates(export_format.SEED_FIELDS, 2, {"zip": "2"}, [1], MOVIES)
    merged = Candidates.concat([first, second])
    assert merged.users["zip"] == ["1", "2"] and merged.user_index.tolist() == [0, 0, 1]
    assert columns(merged, ["user_id", "movie_id"]) == {
        "user_id": ["1", "1", "2"],
        "movie_id": ["3", "1", "1"],
    }
    assert first.mergeable(second)
    assert not first.mergeable(candidates(export_format.SEED_FIELDS, 1, None, [3], dict(MOVIES)))


def test_ranked_indices_keep_request_order_without_top_k() -> None:
    assert list(ranked_indices(np.array([0.1, 0.9, 0.5]), None)) == [0, 1, 2]


def test_ranked_indices_take_the_top_k_with_stable_ties() -> None:
    assert ranked_indices(np.array([0.5, 0.9, 0.5, 0.1]), 3) == [1, 0, 2]


@pytest.mark.parametrize("seed", range(20))
def test_ranked_indices_equal_a_full_stable_sort(seed: int) -> None:
    rng = np.random.default_rng(seed)
    probability = rng.integers(0, 12, size=300).astype(np.float32) / 12  # many ties
    full = np.argsort(-probability, kind="stable").tolist()
    for top_k in (1, 5, 37, 299, 300, 1000):
        assert ranked_indices(probability, top_k) == full[:top_k]


@pytest.mark.parametrize("top_k", [None, 1, 3, 50])
def test_scores_json_is_the_list_of_entries(top_k: int | None) -> None:
    rng = np.random.default_rng(3)
    movie_ids = rng.integers(1, 2**40, size=40).tolist()
    probability = rng.random(40, dtype=np.float32)
    probability[[5, 9]] = [0.0, 1.0]
    known = rng.random(40) < 0.7
    order = ranked_indices(probability, top_k)
    reply = orjson.loads(
        orjson.dumps({"scores": scores_json(movie_ids, Scores(probability, known), order)})
    )
    assert reply["scores"] == [
        {"movie_id": movie_ids[i], "probability": reply["scores"][n]["probability"],
         "movie_known": bool(known[i])}
        for n, i in enumerate(order)
    ]  # fmt: skip
    got = np.array([entry["probability"] for entry in reply["scores"]], dtype=np.float32)
    np.testing.assert_array_equal(got, probability[list(order)])  # float32, exactly
    assert max(len(orjson.dumps(entry["probability"])) for entry in reply["scores"]) <= 14


def test_scores_json_of_no_candidates_is_an_empty_list() -> None:
    empty = Scores(np.zeros(0, np.float32), np.zeros(0, bool))
    assert orjson.dumps({"scores": scores_json([], empty, [])}) == b'{"scores":[]}'


def test_settings_read_afm_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("AFM_MODEL_DIR", str(tmp_path))
    monkeypatch.setenv("AFM_MAX_CANDIDATES", "50")
    monkeypatch.setenv("AFM_REDIS_TIMEOUT", "0.1")
    monkeypatch.setenv("AFM_REDIS_CLUSTER", "true")
    monkeypatch.delenv("AFM_REDIS_PREFIX")  # conftest.py's, so the default shows
    settings = Settings()
    assert settings.model_dir == tmp_path
    assert settings.max_candidates == 50 and settings.redis_timeout == 0.1
    assert settings.redis_prefix == "afm:"
    assert settings.redis_cluster is True


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("max_candidates", 0),
        ("redis_timeout", 0),
        ("max_body_bytes", 10),
        ("redis_max_connections", 0),
    ],
)
def test_settings_refuse_unsafe_values(tmp_path: Path, name: str, value: float) -> None:
    with pytest.raises(ValidationError, match=name):
        Settings(model_dir=tmp_path, **{name: value})


def test_settings_need_a_model_dir(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AFM_MODEL_DIR", raising=False)
    with pytest.raises(ValidationError, match="model_dir"):
        Settings()


def test_unknown_rows_are_those_neither_the_model_nor_the_feature_set_knows() -> None:
    known = np.array([True, False, False, True])
    rows = unknown_rows([7, 8, 9, 10], known, {"8": {"year": "1995"}})
    assert rows.tolist() == [2]  # 8 has features; 7 and 10 are known to the model


@pytest.mark.parametrize(
    ("policy", "top_k", "expected"),
    [
        ("last", None, [0, 2, 4, 1, 3]),  # the others in request order, then the unknown
        ("last", 3, [4, 2, 0]),  # the others ranked; the unknown only after them
        ("last", 4, [4, 2, 0, 1]),  # the unknown ranked among themselves
        ("drop", None, [0, 2, 4]),
        ("drop", 10, [4, 2, 0]),
        ("score", 2, [1, 3]),  # ranked like the others
        ("score", None, [0, 1, 2, 3, 4]),
    ],
)
def test_reply_order_puts_unknown_movies_last_drops_or_scores_them(
    policy: str, top_k: int | None, expected: list[int]
) -> None:
    probability = np.array([0.1, 0.9, 0.2, 0.8, 0.3], dtype=np.float32)
    unknown = np.array([1, 3], dtype=np.intp)
    assert list(reply_order(probability, unknown, top_k, policy)) == expected


def test_reply_order_without_unknown_movies_is_the_ranking() -> None:
    probability = np.array([0.1, 0.9, 0.2], dtype=np.float32)
    none = np.array([], dtype=np.intp)
    for policy in ("last", "drop", "score"):
        assert list(reply_order(probability, none, 2, policy)) == [1, 2]
