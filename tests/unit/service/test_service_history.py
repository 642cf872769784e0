"""What a user watched, in the service: the raw string reaches the scorer with the user, the
load check covers every kind of history, and explanations name the watched movies by the
candidate's attention. A real NumPy scorer on random weights; Redis is faked here (the real
one: tests/integration/serving/test_history.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from model.contracts import export_format as ef
from model.contracts.export_format import (
    HISTORY_FIELD,
    HISTORY_FIELDS,
    HISTORY_LENGTH,
    LAST_WATCHED,
)
from model.contracts.feature_layout import FeatureSetMeta
from service import explanation
from service.candidates import UNKNOWN_VALUE, Candidates, Explanation, explain_outputs
from service.feature_store import FeatureRead, last_watched
from service.loaded_model import CHECK_TOLERANCE, LoadedModel, check_rows, largest_difference
from service.schemas import ExplainResponse, ScoreResponse, WatchedMovie
from tests.unit.service.numpy_model import numpy_model
from tests.unit.service.test_service_routes import FakeStore, _client

VOCABULARIES = {
    "user_id": ["1", "2", "3"],
    "gender": ["F", "M"],
    "age": ["1", "25"],
    "occupation": ["0", "4"],
    "zip": ["48067", "10001"],
    "movie_id": ["1", "2", "3", "5", "8", "13"],
    "year": ["1995", "1996", "1977"],
    "genres": ["Comedy", "Crime", "Drama", "Sci-Fi"],
    LAST_WATCHED: ["10", "12", "20"],
    HISTORY_FIELD: ["1", "2", "3", "5", "8"],
}
MOVIES = {
    "1": {"title": "Toy Story (1995)", "year": "1995", "genres": "Comedy"},
    "2": {"title": "Fargo (1996)", "year": "1996", "genres": "Crime|Drama"},
    "3": {"title": "Star Wars (1977)", "year": "1977", "genres": "Sci-Fi"},
    "5": {"title": "Heat (1995)", "year": "1995", "genres": "Crime"},
    "13": {"title": "Balto (1995)", "year": "1995", "genres": "Comedy"},
}
USER = {
    "gender": "F", "age": "25", "occupation": "4", "zip": "48067",
    LAST_WATCHED: "12", HISTORY_FIELD: "2|3|1|5|77",
}  # fmt: skip


@pytest.fixture(scope="module")
def model() -> LoadedModel:
    return numpy_model(HISTORY_FIELDS, VOCABULARIES)


class Vocabulary:
    def known(self, field_name: str, values: list[str]) -> list[bool]:
        return [value in VOCABULARIES[field_name] for value in values]


# --- the request's rows ---------------------------------------------------------------------


def test_a_history_version_gets_the_watched_movies_with_the_user() -> None:
    rows = Candidates.of_request(HISTORY_FIELDS, 12, USER, [3, 1], MOVIES)
    assert list(rows.users) == ef.user_inputs(HISTORY_FIELDS)
    assert rows.users[HISTORY_FIELD] == ["2|3|1|5|77"]  # once, raw, as Redis holds it
    assert [rows.value(HISTORY_FIELD, r) for r in range(2)] == ["2|3|1|5|77"] * 2


@pytest.mark.parametrize("user", [None, {"gender": "F"}], ids=["unknown user", "no watched"])
def test_no_watched_value_is_the_unknown_value(user: dict | None) -> None:
    rows = Candidates.of_request(HISTORY_FIELDS, 12, user, [3], MOVIES)
    assert rows.users[HISTORY_FIELD] == [UNKNOWN_VALUE]


@pytest.mark.parametrize("fields", [ef.SEED_FIELDS, ef.ALL_FIELDS], ids=["seed", "all"])
def test_other_versions_ignore_the_watched_movies(fields: tuple[str, ...]) -> None:
    rows = Candidates.of_request(fields, 12, USER, [3], MOVIES)
    assert list(rows.users) == list(ef.USER_FIELDS)


def test_merged_requests_keep_each_users_history() -> None:
    first = Candidates.of_request(HISTORY_FIELDS, 1, USER, [3, 1], MOVIES)
    second = Candidates.of_request(HISTORY_FIELDS, 2, None, [1], MOVIES)
    merged = Candidates.concat([first, second])
    assert [merged.value(HISTORY_FIELD, r) for r in range(3)] == ["2|3|1|5|77"] * 2 + [""]


# --- the scorer's outputs ---------------------------------------------------------------------


def test_explain_gives_the_history_attention_of_each_candidate(model: LoadedModel) -> None:
    rows = Candidates.of_request(HISTORY_FIELDS, 1, USER, [1, 2, 3, 13, 999], MOVIES)
    explained = model.explain(rows)
    beta = explained.history_attention
    assert beta is not None and beta.shape == (5, HISTORY_LENGTH)
    np.testing.assert_allclose(beta.sum(axis=1), 1, atol=1e-5)
    assert (beta[:, 5:] == 0).all()  # five parts: no weight beyond
    assert np.abs(beta[0] - beta[2]).max() > 0.01  # keyed by the candidate
    one = explained[2]
    assert one.history_attention is not None and one.history_attention.shape == (HISTORY_LENGTH,)
    np.testing.assert_array_equal(explained[1:3].history_attention, beta[1:3])


def test_score_and_explain_agree_on_a_history_version(model: LoadedModel) -> None:
    rows = Candidates.of_request(HISTORY_FIELDS, 1, USER, [1, 2, 3, 13, 999], MOVIES)
    np.testing.assert_allclose(
        model.score(rows).probability, model.explain(rows).probability, atol=1e-6
    )


def test_only_a_history_version_reads_the_history_output() -> None:
    assert "history_attention" in explain_outputs(HISTORY_FIELDS)
    assert "history_attention" not in explain_outputs(ef.ALL_FIELDS)
    outputs = {name: np.zeros((1, 1)) for name in explain_outputs(ef.ALL_FIELDS).values()}
    explained = Explanation.of_outputs(ef.ALL_FIELDS, outputs, np.ones(1, bool))
    assert explained.history_attention is None and explained[0].history_attention is None
    with pytest.raises(KeyError, match=ef.OUTPUT_HISTORY_ATTENTION):
        Explanation.of_outputs(HISTORY_FIELDS, outputs, np.ones(1, bool))


# --- the load check ---------------------------------------------------------------------------


def test_the_load_check_covers_every_kind_of_history(model: LoadedModel) -> None:
    rows = check_rows(HISTORY_FIELDS, VOCABULARIES)
    histories = rows.users[HISTORY_FIELD]
    separator = ef.MULTI_VALUED[HISTORY_FIELD]
    parts = [h.split(separator) for h in histories]
    assert "" in histories  # no history
    assert any("" in p and len(p) > 1 for p in parts)  # an empty part among others
    assert any(all(x and x not in VOCABULARIES[HISTORY_FIELD] for x in p) for p in parts)
    assert any(len(p) > HISTORY_LENGTH for p in parts)  # the rest must not count
    assert any(all(x in VOCABULARIES[HISTORY_FIELD] for x in p) for p in parts)
    # every history meets a candidate, known users and unknown ones both
    assert set(rows.user_index.tolist()) == set(range(len(histories)))
    assert {rows.users["gender"][u] for u in range(len(histories))} == {"", "F"}
    assert all(HISTORY_FIELD not in movie for movie in rows.movies.values())
    explained = model.explain(rows)
    assert explained.history_attention is not None
    np.testing.assert_allclose(explained.history_attention.sum(axis=1), 1, atol=1e-5)


def test_the_load_check_compares_the_history_attention_too(model: LoadedModel) -> None:
    explained = model.explain(check_rows(HISTORY_FIELDS, VOCABULARIES))
    outputs = {
        key: getattr(explained, name) for name, key in explain_outputs(HISTORY_FIELDS).items()
    }
    assert largest_difference(HISTORY_FIELDS, explained, outputs) == 0
    shuffled = outputs[ef.OUTPUT_HISTORY_ATTENTION][:, ::-1]  # the positions reversed
    differing = {**outputs, ef.OUTPUT_HISTORY_ATTENTION: shuffled}
    assert largest_difference(HISTORY_FIELDS, explained, differing) > CHECK_TOLERANCE


@pytest.mark.parametrize("fields", [ef.SEED_FIELDS, ef.ALL_FIELDS], ids=["seed", "all"])
def test_the_load_check_of_other_versions_is_as_before(fields: tuple[str, ...]) -> None:
    rows = check_rows(fields, VOCABULARIES)
    assert rows.users == {f: ["", VOCABULARIES[f][0]] for f in ef.USER_FIELDS}
    assert rows.user_index.tolist() == [n % 2 for n in range(7)]
    assert rows.movie_ids == [1, 2, 3, 5, 8, 13, -1]


# --- explanations ---------------------------------------------------------------------------


def attention(*weights: float) -> np.ndarray:
    row = np.zeros(HISTORY_LENGTH, np.float32)
    row[: len(weights)] = weights
    return row


def test_watched_movies_come_most_attended_first() -> None:
    seen = explanation.watched(
        "2|3|1|5|77", attention(0.1, 0.4, 0.1, 0.3, 0.1), Vocabulary(), MOVIES
    )
    assert [(m["movie_id"], m["position"]) for m in seen] == [
        (3, 1),
        (5, 3),
        (2, 0),
        (1, 2),
        (77, 4),
    ]
    assert seen[0] == {
        "movie_id": 3, "title": "Star Wars (1977)", "position": 1,
        "weight": pytest.approx(0.4), "known": True,
    }  # fmt: skip
    assert seen[-1]["title"] == "77" and seen[-1]["known"] is False  # neither knows it
    WatchedMovie.model_validate(seen[0])


def test_watched_positions_are_those_of_the_raw_string() -> None:
    """An empty part keeps its place (as the model reads it); only the first HISTORY_LENGTH
    parts count; a part no request could name is left out."""
    value = "|".join(["2", "", "x", "3", *["1"] * HISTORY_LENGTH])
    weights = np.linspace(0.01, 0.1, HISTORY_LENGTH).astype(np.float32)
    weights[[1, 2]] = 0
    seen = explanation.watched(value, weights, Vocabulary(), MOVIES)
    assert {m["position"] for m in seen} == {0, *range(3, HISTORY_LENGTH)}
    assert len(seen) == HISTORY_LENGTH - 2


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("", "nothing yet"),
        ("|", "nothing yet"),
        ("3", "Star Wars (1977)"),
        ("3|2|1", "Star Wars (1977), Fargo (1996), Toy Story (1995)"),
        ("1|3|2|5", "Star Wars (1977), Fargo (1996), Toy Story (1995), …"),
    ],
)
def test_the_watched_label_names_the_first_three(value: str, expected: str) -> None:
    weights = {"3": 0.4, "2": 0.3, "1": 0.2, "5": 0.1}
    row = attention(*(weights.get(part, 0) for part in value.split("|")))
    seen = explanation.watched(value, row, Vocabulary(), MOVIES)
    assert explanation.watched_label(seen) == expected


def test_a_history_explanation_labels_its_pairs_and_lists_the_watched(model: LoadedModel) -> None:
    rows = Candidates.of_request(HISTORY_FIELDS, 1, USER, [13], MOVIES)
    values = [rows.value(f, 0) for f in HISTORY_FIELDS]
    body = explanation.explain(
        HISTORY_FIELDS, model.pairs, values, model.explain(rows)[0], model, {}, MOVIES
    )
    seen = body["watched"]
    weights = [m["weight"] for m in seen]
    assert weights == sorted(weights, reverse=True) and len(seen) == 5
    label = explanation.watched_label(seen)
    assert label.endswith(", …") and label.startswith(seen[0]["title"])
    watched_feature = next(f for f in body["features"] if f["field"] == HISTORY_FIELD)
    assert watched_feature == {
        "field": HISTORY_FIELD,
        "value": "2|3|1|5|77",
        "label": label,
        "known": False,
    }  # known: False, 77 is no training movie
    history_pairs = [p for p in body["pairs"] if HISTORY_FIELD in p["fields"]]
    assert len(history_pairs) == len(HISTORY_FIELDS) - 1
    assert all(p["labels"][1] == label for p in history_pairs)
    assert sum(m["weight"] for m in seen) == pytest.approx(1, abs=1e-5)


# --- the routes, with the NumPy scorer ---------------------------------------------------------


class HistoryStore(FakeStore):
    """User 1 watched five movies, user 2 nothing yet; the movie table above."""

    def __init__(self) -> None:
        super().__init__()
        self.users = {"1": USER, "2": {**USER, HISTORY_FIELD: ""}}

    async def read(self, user_id: int) -> FeatureRead:
        self.calls += 1
        return FeatureRead(self.users.get(str(user_id)), MOVIES, FeatureSetMeta())


@pytest.fixture
def client(tmp_path: Path, model: LoadedModel) -> Iterator[TestClient]:
    with _client(tmp_path, model, HistoryStore()) as c:  # type: ignore[arg-type]
        yield c


def test_explain_names_the_watched_movies_by_the_candidates_attention(client: TestClient) -> None:
    bodies = [
        client.get("/explain", params={"user_id": 1, "movie_id": movie}).json()
        for movie in (1, 3, 13)
    ]
    for body in bodies:
        ExplainResponse.model_validate(body)
        label = next(f["label"] for f in body["features"] if f["field"] == HISTORY_FIELD)
        titles = [m["title"] for m in body["watched"][:3]]
        assert label == ", ".join([*titles, "…"])
        assert [m["movie_id"] for m in sorted(body["watched"], key=lambda m: m["position"])] == [
            2, 3, 1, 5, 77,
        ]  # fmt: skip
    weights = [
        [m["weight"] for m in sorted(b["watched"], key=lambda m: m["position"])] for b in bodies
    ]
    assert max(abs(a - b) for a, b in zip(weights[0], weights[1], strict=True)) > 0.01


@pytest.mark.parametrize(
    ("watched_at", "now", "expected"),
    [
        ("874965758", 874965758 + 4_096, "12"),  # 2**12 to 2**13 seconds later
        ("874965758", 874965758 + 30 * 86_400, "21"),  # a month later
        ("1000.25", 1001.0, "0"),  # under two seconds
        ("2000", 1000.0, "0"),  # a clock behind the click's: the shortest gap
        ("", 1000.0, ""),  # never watched (or a loader without times)
        ("soon", 1000.0, ""),
        ("nan", 1000.0, ""),
        ("inf", 1000.0, ""),
    ],
)
def test_last_watched_is_the_power_of_two_of_the_seconds_since(
    watched_at: str, now: float, expected: str
) -> None:
    assert last_watched(watched_at, now) == expected


def test_explain_labels_when_the_user_last_watched(client: TestClient) -> None:
    body = client.get("/explain", params={"user_id": 1, "movie_id": 3}).json()
    feature = next(f for f in body["features"] if f["field"] == LAST_WATCHED)
    assert feature == {
        "field": LAST_WATCHED,
        "value": "12",
        "label": "1-2 hours ago",
        "known": True,
    }
    assert any(LAST_WATCHED in pair["fields"] for pair in body["pairs"])
    unknown = client.get("/explain", params={"user_id": 404, "movie_id": 3}).json()
    feature = next(f for f in unknown["features"] if f["field"] == LAST_WATCHED)
    assert (feature["value"], feature["known"]) == ("", False)


def test_explain_of_a_user_without_history_says_nothing_yet(client: TestClient) -> None:
    for user in (2, 404):  # an empty history; a user Redis does not know
        body = client.get("/explain", params={"user_id": user, "movie_id": 3}).json()
        assert body["watched"] == []
        label = next(f["label"] for f in body["features"] if f["field"] == HISTORY_FIELD)
        assert label == "nothing yet"


def test_score_with_explain_lists_the_watched_of_every_candidate(client: TestClient) -> None:
    body = client.post("/score", json={"user_id": 1, "movie_ids": [1, 3, 13], "explain": True})
    scores = ScoreResponse.model_validate(body.json()).scores
    assert all(s.watched is not None and len(s.watched) == 5 for s in scores)
    plain = client.post("/score", json={"user_id": 1, "movie_ids": [1, 3, 13]}).json()
    assert all(set(s) == {"movie_id", "probability", "movie_known"} for s in plain["scores"])
    for with_explain, without in zip(scores, plain["scores"], strict=True):
        assert with_explain.probability == pytest.approx(without["probability"], abs=1e-6)


def test_the_schema_documents_the_watched_list(client: TestClient) -> None:
    schemas = client.get("/openapi.json").json()["components"]["schemas"]
    assert set(schemas["WatchedMovie"]["required"]) == {
        "movie_id", "title", "position", "weight", "known",
    }  # fmt: skip
    examples = schemas["ExplainResponse"]["examples"]
    with_history = [e for e in examples if "watched" in e]
    assert with_history and all(ExplainResponse.model_validate(e) for e in with_history)
    assert schemas["WatchedMovie"]["examples"]
