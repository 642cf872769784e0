"""Routes, problem shapes and status codes, with fakes for the model, Redis and the scorer.

Real Redis and a real SavedModel are exercised in tests/integration/serving/.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi import Request
from fastapi.testclient import TestClient

from model.contracts import export_format
from model.contracts.feature_layout import FeatureSetMeta
from service import deps
from service.app import create_app
from service.batching import Batcher
from service.candidates import Candidates, Explanation, Scores
from service.errors import FeaturesNotLoaded, FeatureStoreUnavailable
from service.feature_store import FeatureRead, FeatureSetInfo
from service.model_registry import Serving
from service.schemas import ExplainResponse, FeatureSet, ScoreResponse
from service.settings import Settings
from tests.integration.serving.helpers import schema_checked

USER = {"gender": "F", "age": "25", "occupation": "4", "zip": "48067"}
MOVIES = {
    "1193": {"title": "One Flew Over the Cuckoo's Nest (1975)", "year": "1975", "genres": "Drama"}
}
META = FeatureSetMeta(
    source="ml-1m at /data",
    users=1,
    movies=1,
    loaded_at="2026-01-02T03:04:05Z",
    labels={"age": {"25": "25-34"}, "gender": {"F": "Female"}},
    popular=("1193",),
    sample_users=("1",),
)
FIELDS = export_format.ALL_FIELDS
PAIRS = export_format.pairs(FIELDS)
N_PAIRS = len(PAIRS)


class FakeModel:
    """Probability = movie_id / 10_000; attention = a fixed ramp over the pairs."""

    version = 7
    path = Path("/models/7")
    loaded_at = "2026-01-01T00:00:00+00:00"
    metadata = export_format.ModelMetadata(
        version=7,
        fields=list(FIELDS),
        pairs=[list(p) for p in PAIRS],
        hyperparameters={"model": {"embedding_dim": 8}},
        protocol="next-item",
        data={},
        metrics={"test_auc": 0.8},
        tensorflow_version="2.21.0",
        created_at="2026-01-01T00:00:00+00:00",
    )
    fields = FIELDS
    pairs = PAIRS
    known_movies = frozenset({"1193", "661"})
    vocabularies = {"movie_id": known_movies, "gender": frozenset({"F"})}
    fail = False

    def __init__(self) -> None:
        self.seen: list[dict[str, list[str]]] = []
        self.sent: list[Candidates] = []

    def known(self, field: str, values: list[str]) -> list[bool]:
        """Movies: known_movies; any other field: every non-empty value."""
        if field == "movie_id":
            return [v in self.known_movies for v in values]
        return [v != "" for v in values]

    def score(self, candidates: Candidates) -> Scores:
        """Records each row's value of every field (``seen``) and the candidates as sent."""
        if self.fail:
            raise RuntimeError("tensor exploded")
        self.sent.append(candidates)
        rows = range(len(candidates))
        self.seen.append({f: [candidates.value(f, row) for row in rows] for f in FIELDS})
        probability = [int(m) / 10_000 for m in candidates.movie_ids]
        known = self.known("movie_id", [str(m) for m in candidates.movie_ids])
        return Scores(np.array(probability, dtype=np.float32), np.array(known, dtype=bool))

    def explain(self, candidates: Candidates) -> Explanation:
        """Pair weights a fixed ramp, contributions twice the weights, linear terms 0.1 each;
        the bias makes bias + linear + contributions the logit of the probability."""
        scored = self.score(candidates)
        probability, n = scored.probability, len(candidates)
        ramp = np.arange(1, N_PAIRS + 1, dtype=np.float32)
        attention = np.tile(ramp / ramp.sum(), (n, 1))
        linear = np.full((n, len(FIELDS)), 0.1, dtype=np.float32)
        logit = np.log(probability / (1 - probability)).astype(np.float32)
        bias = logit - linear.sum(1) - (attention * 2).sum(1)
        return Explanation(
            probability, attention, attention * 2, bias, linear, logit, scored.movie_known
        )


class FakeStore:
    def __init__(self) -> None:
        self.users = {"1": USER}
        self.error: Exception | None = None
        self.calls = 0

    async def read(self, user_id: int) -> FeatureRead:
        self.calls += 1
        if self.error is not None:
            raise self.error
        return FeatureRead(user=self.users.get(str(user_id)), movies=MOVIES, meta=META)

    async def feature_set(self) -> FeatureSetInfo:
        if self.error is not None:
            raise self.error
        return FeatureSetInfo(META, tuple((m, MOVIES[m]) for m in META.popular))

    async def check(self) -> tuple[bool, bool]:
        return (self.error is None, self.error is None)


class FakeRegistry:
    def __init__(self, model: FakeModel | None) -> None:
        self.current = model
        self.serving = Serving(model)  # type: ignore[arg-type]
        self.policy, self.policy_error = None, None
        self.refused_versions = [8]


@pytest.fixture
def model() -> FakeModel:
    return FakeModel()


@pytest.fixture
def store() -> FakeStore:
    return FakeStore()


def scoring_dep_model(model: FakeModel):  # noqa: ANN201
    async def model_dep(request: Request) -> FakeModel:
        return model

    return model_dep


def _client(tmp_path: Path, model: FakeModel | None, store: FakeStore, **settings):  # noqa: ANN003, ANN202
    """The real app (its /score through ``DirectRoute``, as in production), with the model,
    registry and store replaced through ``dependency_overrides``."""
    app = create_app(Settings(model_dir=tmp_path, reload_interval=0, **settings))
    registry = FakeRegistry(model)
    state = app.state

    async def registry_dep(request: Request) -> FakeRegistry:
        return registry

    async def scoring_dep(request: Request) -> deps.Scoring:
        serving = Serving(model)  # type: ignore[arg-type]
        return deps.Scoring(serving, store, Batcher(), state.metrics, state.settings)  # type: ignore[arg-type]

    async def store_dep(request: Request) -> FakeStore:
        return store

    if model is not None:  # else the real dependency sees the lifespan's empty registry
        app.dependency_overrides[deps.get_scoring] = scoring_dep
        app.dependency_overrides[deps.get_model] = scoring_dep_model(model)
    app.dependency_overrides[deps.get_registry] = registry_dep
    app.dependency_overrides[deps.get_feature_store] = store_dep
    return schema_checked(TestClient(app, raise_server_exceptions=False))


@pytest.fixture
def client(tmp_path: Path, model: FakeModel, store: FakeStore) -> Iterator[TestClient]:
    with _client(tmp_path, model, store) as c:
        yield c


def _assert_problem(response, status: int, detail_part: str) -> dict:  # noqa: ANN001
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert body["status"] == status
    assert {"type", "title", "detail", "instance"} <= body.keys()
    assert detail_part in body["detail"], body["detail"]
    assert "Traceback" not in response.text
    return body


def test_scores_come_back_in_request_order(client: TestClient, model: FakeModel) -> None:
    response = client.post("/score", json={"user_id": 1, "movie_ids": [661, 1193, 42]})
    assert response.status_code == 200
    body = response.json()
    assert body["user_id"] == 1 and body["model_version"] == 7 and body["user_known"] is True
    assert [s["movie_id"] for s in body["scores"]] == [661, 1193, 42]
    assert [s["probability"] for s in body["scores"]] == pytest.approx([0.0661, 0.1193, 0.0042])
    assert [s["movie_known"] for s in body["scores"]] == [True, True, False]
    assert "pairs" not in body["scores"][0]
    # The model got raw strings: the user's Redis features once, one row per movie.
    assert model.seen[0]["zip"] == ["48067"] * 3
    assert model.seen[0]["movie_id"] == ["661", "1193", "42"]
    assert model.sent[0].users["zip"] == ["48067"]


def test_candidates_carry_their_item_features_from_the_store(
    client: TestClient, model: FakeModel
) -> None:
    body = {"user_id": 1, "movie_ids": [5, 1193], "unknown_movies": "score"}
    body = client.post("/score", json=body).json()
    assert [s["movie_known"] for s in body["scores"]] == [False, True]
    columns = model.seen[-1]
    assert list(columns) == list(FIELDS)  # exactly the version's fields
    assert columns["genres"] == ["", "Drama"] and columns["year"] == ["", "1975"]
    assert columns["gender"] == ["F", "F"]


def test_top_k_returns_the_best_sorted(client: TestClient) -> None:
    body = client.post(
        "/score", json={"user_id": 1, "movie_ids": [5, 900, 30, 700], "top_k": 2}
    ).json()
    assert [s["movie_id"] for s in body["scores"]] == [900, 700]


def test_top_k_larger_than_candidates_returns_all_sorted(client: TestClient) -> None:
    body = client.post("/score", json={"user_id": 1, "movie_ids": [5, 900], "top_k": 10}).json()
    assert [s["movie_id"] for s in body["scores"]] == [900, 5]


@pytest.mark.parametrize(
    ("policy", "top_k", "expected"),
    [
        (None, None, [661, 1193, 42, 7]),  # the default: unknown movies last, request order
        ("drop", None, [661, 1193]),
        ("score", None, [42, 661, 7, 1193]),
        (None, 3, [1193, 661, 42]),  # 42 and 7 only after the known, best first
    ],
)
def test_movies_nothing_is_known_about_follow_the_requested_policy(
    client: TestClient, policy: str | None, top_k: int | None, expected: list[int]
) -> None:
    """42 and 7: neither the model (known 1193, 661) nor the feature set (1193) knows them."""
    body = {"user_id": 1, "movie_ids": [42, 661, 7, 1193], "top_k": top_k}
    if policy is not None:
        body["unknown_movies"] = policy
    reply = client.post("/score", json=body).json()
    assert [s["movie_id"] for s in reply["scores"]] == expected
    assert reply["unknown_movies"] == [42, 7]


def test_an_unknown_policy_name_is_422(client: TestClient) -> None:
    body = {"user_id": 1, "movie_ids": [1], "unknown_movies": "first"}
    _assert_problem(client.post("/score", json=body), 422, "last")


def test_unknown_user_scored_with_oov_values(client: TestClient, model: FakeModel) -> None:
    body = client.post("/score", json={"user_id": 999, "movie_ids": [1193]}).json()
    assert body["user_known"] is False
    assert model.seen[0]["user_id"] == ["999"]
    assert model.seen[0]["gender"] == [""] and model.seen[0]["zip"] == [""]


def test_score_with_explain_carries_the_labelled_breakdown(client: TestClient) -> None:
    response = client.post("/score", json={"user_id": 1, "movie_ids": [1193], "explain": True})
    entry = ScoreResponse.model_validate(response.json()).scores[0]
    assert len(entry.pairs) == N_PAIRS
    weights = [p.weight for p in entry.pairs]
    assert weights == sorted(weights, reverse=True)
    assert sum(weights) == pytest.approx(1.0)
    assert entry.pairs[0].fields == PAIRS[-1]  # the ramp's heaviest column: (year, genres)
    assert entry.pairs[0].values == ("1975", "Drama")
    assert entry.pairs[0].contribution == pytest.approx(2 * weights[0])
    total = entry.bias + sum(entry.linear.values()) + sum(p.contribution for p in entry.pairs)
    assert total == pytest.approx(entry.logit, abs=1e-4)
    assert 1 / (1 + np.exp(-entry.logit)) == pytest.approx(entry.probability, rel=1e-5)


def test_explain_names_each_value_with_its_label(client: TestClient) -> None:
    response = client.get("/explain", params={"user_id": 1, "movie_id": 1193})
    assert response.status_code == 200
    body = ExplainResponse.model_validate(response.json())
    assert body.probability == pytest.approx(0.1193)
    assert body.user_known is True and body.movie_known is True
    assert [tuple(p.fields) for p in body.pairs] == list(reversed(PAIRS))
    labels = {f.field: (f.value, f.label, f.known) for f in body.features}
    assert list(labels) == list(FIELDS)
    assert labels["age"] == ("25", "25-34", True)
    assert labels["gender"] == ("F", "Female", True)
    assert labels["occupation"] == ("4", "4", True)  # no label: the raw value
    assert labels["movie_id"] == ("1193", MOVIES["1193"]["title"], True)
    age_genres = next(p for p in body.pairs if p.fields == ("age", "genres"))
    assert age_genres.labels == ("25-34", "Drama")
    total = body.bias + sum(body.linear.values()) + sum(p.contribution for p in body.pairs)
    assert total == pytest.approx(body.logit, abs=1e-4)


def test_explain_of_an_unknown_user_and_movie_says_so(client: TestClient) -> None:
    body = ExplainResponse.model_validate(
        client.get("/explain", params={"user_id": 5, "movie_id": 661}).json()
    )
    assert body.user_known is False and body.movie_known is True
    labels = {f.field: (f.value, f.label) for f in body.features}
    assert labels["gender"] == ("", "unknown") and labels["genres"] == ("", "unknown")
    assert labels["movie_id"] == ("661", "661")  # known to the model, not to Redis


def test_feature_set_lists_samples_and_popular_movies(client: TestClient) -> None:
    body = FeatureSet.model_validate(client.get("/feature-set").json())
    assert body.source == "ml-1m at /data" and body.sample_users == [1]
    assert [(m.movie_id, m.title) for m in body.popular_movies] == [(1193, MOVIES["1193"]["title"])]


@pytest.mark.parametrize(
    ("body", "field", "message"),
    [
        ({"movie_ids": [1]}, "body.user_id", "Field required"),
        ({"user_id": 1}, "body.movie_ids", "Field required"),
        ({"user_id": 1, "movie_ids": []}, "body.movie_ids", "at least 1 item"),
        ({"user_id": "1", "movie_ids": [1]}, "body.user_id", "valid integer"),
        ({"user_id": 1, "movie_ids": [1, 2.5]}, "body.movie_ids[1]", "valid integer"),
        ({"user_id": 1, "movie_ids": [1, "x"]}, "body.movie_ids[1]", "valid integer"),
        ({"user_id": 1, "movie_ids": [True]}, "body.movie_ids[0]", "valid integer"),
        ({"user_id": -1, "movie_ids": [1]}, "body.user_id", "greater than or equal to 0"),
        ({"user_id": 1, "movie_ids": [1], "top_k": 0}, "body.top_k", "greater than or equal to 1"),
        ({"user_id": 1, "movie_ids": [1], "explain": "yes"}, "body.explain", "valid boolean"),
        ({"user_id": 1, "movie_ids": [1], "topk": 3}, "body.topk", "Extra inputs"),
        ({"user_id": 1, "movie_ids": 1193}, "body.movie_ids", "valid array"),
    ],
)
def test_bad_score_body_is_422_naming_the_field(
    client: TestClient, body: dict, field: str, message: str
) -> None:
    problem = _assert_problem(client.post("/score", json=body), 422, message)
    assert field in [e["field"] for e in problem["errors"]]


@pytest.mark.parametrize("content", [b'{"user_id": 1,', b"", b"user_id=1"])
def test_malformed_or_missing_json_is_422(client: TestClient, content: bytes) -> None:
    response = client.post("/score", content=content, headers={"content-type": "application/json"})
    problem = _assert_problem(response, 422, "invalid JSON")
    assert problem["errors"][0]["field"] == "body"


def test_too_many_candidates_is_422(tmp_path: Path, model: FakeModel, store: FakeStore) -> None:
    with _client(tmp_path, model, store, max_candidates=3) as c:
        _assert_problem(
            c.post("/score", json={"user_id": 1, "movie_ids": [1, 2, 3, 4]}), 422, "at most 3"
        )
        assert c.post("/score", json={"user_id": 1, "movie_ids": [1, 2, 3]}).status_code == 200


def test_oversized_body_is_413(tmp_path: Path, model: FakeModel, store: FakeStore) -> None:
    with _client(tmp_path, model, store, max_body_bytes=2048) as c:
        body = {"user_id": 1, "movie_ids": list(range(1000))}
        _assert_problem(c.post("/score", json=body), 413, "exceeds the limit of 2048")
        assert store.calls == 0


def test_oversized_chunked_body_is_413(tmp_path: Path, model: FakeModel, store: FakeStore) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"user_id": 1, "movie_ids": ['
        for _ in range(300):
            yield b"1193, 661, 914, "
        yield b"1]}"

    with _client(tmp_path, model, store, max_body_bytes=2048) as c:
        response = c.post("/score", content=chunks(), headers={"content-type": "application/json"})
        _assert_problem(response, 413, "exceeds the limit")


def test_small_chunked_body_is_scored(tmp_path: Path, model: FakeModel, store: FakeStore) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"user_id": 1, '
        yield b'"movie_ids": [661]}'

    with _client(tmp_path, model, store) as c:
        response = c.post("/score", content=chunks(), headers={"content-type": "application/json"})
        assert response.status_code == 200
        assert response.json()["scores"][0]["movie_id"] == 661


@pytest.mark.parametrize(
    "params",
    [{"user_id": 1}, {"user_id": "x", "movie_id": 1}, {"user_id": 1, "movie_id": 1.5}],
)
def test_bad_explain_query_is_422(client: TestClient, params: dict) -> None:
    _assert_problem(client.get("/explain", params=params), 422, "query.")


def test_redis_unavailable_is_503_with_retry_after(client: TestClient, store: FakeStore) -> None:
    store.error = FeatureStoreUnavailable("Redis did not answer within 0.25s", retry_after=2)
    response = client.post("/score", json={"user_id": 1, "movie_ids": [1]})
    problem = _assert_problem(response, 503, "did not answer")
    assert response.headers["retry-after"] == "2"
    assert problem["type"].endswith("feature-store-unavailable")


def test_no_feature_set_is_503(client: TestClient, store: FakeStore) -> None:
    store.error = FeaturesNotLoaded("no feature set under prefix 'afm:'", retry_after=1)
    response = client.get("/explain", params={"user_id": 1, "movie_id": 1})
    _assert_problem(response, 503, "no feature set")
    assert response.headers["retry-after"] == "1"


def test_no_model_is_503_and_not_ready(tmp_path: Path, store: FakeStore) -> None:
    with _client(tmp_path, None, store) as c:
        response = c.post("/score", json={"user_id": 1, "movie_ids": [1]})
        _assert_problem(response, 503, "no model version loaded")
        assert response.headers["retry-after"] == "1"
        _assert_problem(c.get("/model"), 503, "no model")
        ready = c.get("/readyz")
        assert ready.status_code == 503 and ready.json()["ready"] is False
        assert ready.json()["model_version"] is None
        assert c.get("/healthz").json() == {"status": "alive"}


def test_ready_when_model_and_redis_are(client: TestClient, store: FakeStore) -> None:
    assert client.get("/readyz").json() == {
        "ready": True,
        "model_version": 7,
        "redis": True,
        "features_loaded": True,
        "coverage_ok": True,
        "coverage_reason": None,
    }
    store.error = FeatureStoreUnavailable("down")
    assert client.get("/readyz").status_code == 503


def test_model_info_reports_metadata(client: TestClient) -> None:
    body = client.get("/model").json()
    assert body["version"] == 7 and body["refused_versions"] == [8]
    assert body["replica"] == socket.gethostname()  # which replica behind a load balancer
    assert body["metadata"]["metrics"] == {"test_auc": 0.8}
    assert body["metadata"]["pairs"][0] == list(PAIRS[0])


def test_a_failing_scoring_call_is_500_without_traceback(
    client: TestClient, model: FakeModel
) -> None:
    model.fail = True
    response = client.post("/score", json={"user_id": 1, "movie_ids": [1]})
    problem = _assert_problem(response, 500, "failed to score")
    assert "tensor exploded" not in response.text
    assert problem["type"].endswith("scoring-failed")


def test_unexpected_error_is_500_without_traceback(client: TestClient, store: FakeStore) -> None:
    store.error = RuntimeError("socket exploded")  # reaches the last-resort handler
    response = client.post("/score", json={"user_id": 1, "movie_ids": [1]})
    _assert_problem(response, 500, "unexpected error")
    assert "socket exploded" not in response.text


def test_unknown_route_and_method_are_problems(client: TestClient) -> None:
    _assert_problem(client.get("/nope"), 404, "Not Found")
    _assert_problem(client.get("/score"), 405, "Method Not Allowed")


def test_metrics_count_requests_per_route(client: TestClient) -> None:
    client.post("/score", json={"user_id": 1, "movie_ids": [1]})
    client.post("/score", json={"user_id": 1, "movie_ids": []})
    text = client.get("/metrics").text
    assert (
        'afm_request_duration_seconds_count{method="POST",route="/score",status="200"} 1.0' in text
    )
    assert (
        'afm_request_duration_seconds_count{method="POST",route="/score",status="422"} 1.0' in text
    )
    assert "afm_redis_errors_total 0.0" in text
    assert "afm_model_version 0.0" in text  # the lifespan's real registry: empty model dir
    assert f'afm_replica_info{{hostname="{socket.gethostname()}"}} 1.0' in text
    assert "afm_http_requests_in_flight 1.0" in text  # the scrape itself; the posts are done


def test_openapi_documents_examples_and_errors(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    score = spec["paths"]["/score"]["post"]
    assert {"413", "422", "503"} <= score["responses"].keys()
    ref = score["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    assert ref == "#/components/schemas/ScoreRequest"  # a named schema, for client generators
    body_schema = spec["components"]["schemas"]["ScoreRequest"]
    assert body_schema["examples"] and body_schema["required"] == ["user_id", "movie_ids"]
    assert client.get("/docs").status_code == 200


def test_openapi_documents_errors_as_problem_json(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    documented = 0
    for path in ("/score", "/explain", "/feature-set", "/model"):
        for operation in schema["paths"][path].values():
            for code, response in operation["responses"].items():
                if int(code) >= 400:
                    assert list(response["content"]) == ["application/problem+json"], (path, code)
                    ref = response["content"]["application/problem+json"]["schema"]["$ref"]
                    assert ref.endswith("/Problem")
                    documented += 1
    assert documented >= 9  # 413, 422, 500, 503 twice, and the 503s of /feature-set and /model
