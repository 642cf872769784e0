"""The HTTP API against a real Redis and the real exported model: every answer is checked
against the SavedModel's own signatures on the same raw features."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path

import httpx
import numpy as np
import pytest
import tensorflow as tf
from fastapi import Depends, Request, Response
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient

from model.contracts import export_format
from service import auth, deps
from service.app import create_app
from service.routes import scoring
from service.schemas import ScoreRequest
from service.settings import Settings
from tests.integration.serving.helpers import ServerThread, wait_ready, wait_until

pytestmark = pytest.mark.integration

PAIRS = export_format.pairs(export_format.ALL_FIELDS)  # the session model's field set
UNKNOWN_MOVIE = 987_654
UNKNOWN_USER = 876_543


@pytest.fixture(scope="module")
def signatures(trained_model_dir: Path):  # noqa: ANN201
    loaded = tf.saved_model.load(str(trained_model_dir / "1"))
    return loaded, loaded.signatures


def _user_row(users: dict, user_id: int) -> dict[str, str]:
    index = list(users["user_id"]).index(str(user_id))
    return {name: str(users[name][index]) for name in ("gender", "age", "occupation", "zip")}


@pytest.fixture(scope="module")
def reference(signatures, synthetic_movies: dict):  # noqa: ANN001, ANN201
    """The signature's outputs for raw features built by hand (unknown: empty strings)."""
    table = {
        movie_id: {"year": year, "genres": genres}
        for movie_id, year, genres in zip(
            synthetic_movies["movie_id"].tolist(),
            synthetic_movies["year"].tolist(),
            synthetic_movies["genres"].tolist(),
            strict=True,
        )
    }

    def run(name: str, user: dict[str, str] | None, user_id: int, movies: list[int]) -> dict:
        n = len(movies)
        inputs = {"user_id": [str(user_id)] * n, "movie_id": [str(m) for m in movies]}
        for field in ("gender", "age", "occupation", "zip"):
            inputs[field] = [user[field] if user else ""] * n
        for field in ("year", "genres"):
            inputs[field] = [table.get(str(m), {}).get(field, "") for m in movies]
        outputs = signatures[1][name](**{f: tf.constant(v, tf.string) for f, v in inputs.items()})
        return {k: v.numpy() for k, v in outputs.items()}

    return run


def test_ready_and_serving_version_one(api: TestClient, trained_model_dir: Path) -> None:
    ready = api.get("/readyz").json()
    assert ready == {
        "ready": True,
        "model_version": 1,
        "redis": True,
        "features_loaded": True,
        "coverage_ok": True,
        "coverage_reason": None,
    }
    info = api.get("/model").json()
    on_disk = json.loads((trained_model_dir / "1" / export_format.METADATA_FILE).read_text())
    assert info["version"] == 1 and info["metadata"] == on_disk


def test_score_equals_saved_model(api: TestClient, reference, synthetic_users: dict) -> None:  # noqa: ANN001
    movies = [1, 17, 200, 5, UNKNOWN_MOVIE, 42]
    request = {"user_id": 3, "movie_ids": movies, "unknown_movies": "score"}  # request order
    body = api.post("/score", json=request).json()
    expected = reference(export_format.SIGNATURE_SCORE, _user_row(synthetic_users, 3), 3, movies)
    assert body["user_known"] is True and body["model_version"] == 1
    assert [s["movie_id"] for s in body["scores"]] == movies
    got = np.array([s["probability"] for s in body["scores"]])
    np.testing.assert_allclose(
        got, expected[export_format.OUTPUT_PROBABILITY], rtol=1e-6, atol=1e-7
    )
    assert len(set(got.round(6))) > 1  # the model discriminates: not a constant


def test_score_answers_as_through_fastapis_own_handler(api: TestClient) -> None:
    """/score's ``DirectRoute`` validates the body and resolves ``get_scoring`` itself; the
    same endpoint on a plain route (FastAPI's handler and solver) answers alike."""
    bodies = [
        {"user_id": 3, "movie_ids": [1, 17, UNKNOWN_MOVIE], "explain": True},
        {"user_id": 5, "movie_ids": [9, 2], "top_k": 1},
        {"user_id": 5, "movie_ids": []},  # an error answers alike too
        {"user_id": "5", "movie_ids": [1], "extra": 1},
    ]
    api.app.router.add_api_route("/score-plain", scoring.score, methods=["POST"])
    try:
        direct = [api.post("/score", json=body) for body in bodies]
        plain = [api.post("/score-plain", json=body) for body in bodies]
    finally:
        api.app.router.routes.pop()
    assert [r.status_code for r in direct] == [200, 200, 422, 422]
    assert [_answer(r) for r in direct] == [
        {**_answer(r), "instance": "/score"} if "instance" in r.json() else _answer(r)
        for r in plain
    ]


def test_a_key_check_answers_as_through_fastapis_own_handler(api: TestClient) -> None:
    """The API key dependency, with its security schemes as sub-dependencies, on /score's
    ``DirectRoute`` and on a plain route: the same answers, keyed or not."""
    api.app.state.api_keys = auth.ApiKeys(("key-1",))
    router = api.app.router
    for path, route_class in (("/score-direct", deps.DirectRoute), ("/score-plain", APIRoute)):
        router.add_api_route(
            path,
            scoring.score,
            methods=["POST"],
            dependencies=[auth.ApiKeyDep],
            route_class_override=route_class,
        )
    body, bad_body = {"user_id": 3, "movie_ids": [1, 17]}, {"user_id": -1, "movie_ids": []}
    cases = [
        (body, {}),
        (body, {"X-API-Key": "key-2"}),
        (body, {"Authorization": "Basic key-1"}),
        (bad_body, {}),  # the key is checked before the body, by FastAPI too
        (body, {"X-API-Key": "key-1"}),
        (body, {"Authorization": "Bearer key-1"}),
        (bad_body, {"Authorization": "Bearer key-1"}),
    ]
    try:
        direct = [api.post("/score-direct", json=b, headers=h) for b, h in cases]
        plain = [api.post("/score-plain", json=b, headers=h) for b, h in cases]
    finally:
        del router.routes[-2:], api.app.state.api_keys
    assert [r.status_code for r in direct] == [401, 401, 401, 401, 200, 200, 422]
    assert [r.status_code for r in plain] == [r.status_code for r in direct]
    assert [r.headers.get("www-authenticate") for r in plain] == [
        r.headers.get("www-authenticate") for r in direct
    ]
    instance = {"instance": "/score-direct"}
    assert [_answer(r) for r in direct] == [
        {**_answer(r), **instance} if "instance" in r.json() else _answer(r) for r in plain
    ]


def _answer(response: httpx.Response) -> dict:
    """A reply without its impression_id (new in every reply; a 200 has one)."""
    body = response.json()
    if response.status_code == 200:
        assert body.pop("impression_id").startswith("i1.")
    return body


def test_the_direct_route_refuses_an_endpoint_it_could_not_call() -> None:
    async def paged(request: ScoreRequest, scoring: deps.ScoringDep, page: int = 0) -> Response:
        return Response()

    async def raw(http: Request, scoring: deps.ScoringDep) -> Response:
        return Response()

    for endpoint in (paged, raw):
        with pytest.raises(TypeError, match="must take one body model"):
            deps.DirectRoute("/x", endpoint, methods=["POST"])

    def blocking(request: Request) -> None:  # a plain def would need a thread
        return None

    async def paging(request: Request, page: int = 0) -> None:
        return None

    for dependency in (blocking, paging):
        with pytest.raises(TypeError, match="must be an async function of the request"):
            deps.DirectRoute(
                "/x", scoring.score, methods=["POST"], dependencies=[Depends(dependency)]
            )


def test_unknown_user_and_movie_are_flagged_and_scored(api: TestClient, reference) -> None:  # noqa: ANN001
    movies = [UNKNOWN_MOVIE, 7]
    request = {"user_id": UNKNOWN_USER, "movie_ids": movies, "unknown_movies": "score"}
    body = api.post("/score", json=request).json()
    assert body["user_known"] is False
    assert body["unknown_movies"] == [UNKNOWN_MOVIE]  # no model id, no features in Redis
    assert [s["movie_known"] for s in body["scores"]] == [False, True]
    expected = reference(export_format.SIGNATURE_SCORE, None, UNKNOWN_USER, movies)
    got = [s["probability"] for s in body["scores"]]
    np.testing.assert_allclose(
        got, expected[export_format.OUTPUT_PROBABILITY], rtol=1e-6, atol=1e-7
    )


def test_every_synthetic_movie_is_known(api: TestClient, trained_model_dir: Path) -> None:
    sizes = json.loads((trained_model_dir / "1" / export_format.METADATA_FILE).read_text())["data"][
        "vocabulary_sizes"
    ]
    movies = list(range(1, sizes["movie_id"] + 1))  # the synthetic ids 1..n all appear in training
    body = api.post("/score", json={"user_id": 1, "movie_ids": movies}).json()
    assert all(s["movie_known"] for s in body["scores"])


def test_top_k_is_the_best_of_the_full_list(api: TestClient) -> None:
    movies = list(range(1, 101))
    full = api.post("/score", json={"user_id": 9, "movie_ids": movies}).json()["scores"]
    top = api.post("/score", json={"user_id": 9, "movie_ids": movies, "top_k": 5}).json()["scores"]
    best = sorted(full, key=lambda s: -s["probability"])[:5]
    assert [s["movie_id"] for s in top] == [s["movie_id"] for s in best]


def test_concurrent_requests_each_get_their_own_answer(
    trained_model_dir: Path, redis_url: str, loaded_prefix: str, reference, synthetic_users: dict
) -> None:  # noqa: ANN001
    """Requests that resume in the same loop iteration are scored in merged calls; every
    reply must still be exactly its own request's."""
    rng = np.random.default_rng(7)
    bodies = [
        {
            "user_id": int(user),
            "movie_ids": rng.integers(1, 400, size=int(rng.integers(1, 60))).tolist(),
            "explain": bool(i % 3 == 0),
            "unknown_movies": "score",  # request order: ids above the synthetic 200 are unknown
        }
        for i, user in enumerate(rng.integers(1, 300, size=48))
    ]
    settings = Settings(
        model_dir=trained_model_dir,
        redis_url=redis_url,
        redis_prefix=loaded_prefix,
        reload_interval=0,
    )

    async def fire(url: str) -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=url, timeout=60) as client:
            return await asyncio.gather(*(client.post("/score", json=b) for b in bodies))

    with ServerThread(settings) as server, httpx.Client(base_url=server.url) as probe:
        wait_until(lambda: probe.get("/readyz").status_code == 200, what="the model")
        responses = asyncio.run(fire(server.url))
        metrics = probe.get("/metrics").text

    for body, response in zip(bodies, responses, strict=True):
        assert response.status_code == 200, response.text
        user = body["user_id"]
        name = export_format.SIGNATURE_EXPLAIN if body["explain"] else export_format.SIGNATURE_SCORE
        expected = reference(name, _user_row(synthetic_users, user), user, body["movie_ids"])
        scores = response.json()["scores"]
        assert [s["movie_id"] for s in scores] == body["movie_ids"]
        np.testing.assert_allclose(
            [s["probability"] for s in scores],
            expected[export_format.OUTPUT_PROBABILITY],
            rtol=1e-5,
            atol=1e-7,
        )
        if body["explain"]:
            weights = {tuple(p["fields"]): p["weight"] for p in scores[-1]["pairs"]}
            np.testing.assert_allclose(
                [weights[pair] for pair in PAIRS],
                expected[export_format.OUTPUT_ATTENTION][-1],
                rtol=1e-5,
                atol=1e-7,
            )
    served = float(re.search(r"^afm_scoring_requests_total (\S+)$", metrics, re.M).group(1))
    calls = float(re.search(r"^afm_scoring_calls_total (\S+)$", metrics, re.M).group(1))
    assert served == len(bodies) and 1 <= calls <= served


def test_explain_matches_the_explain_signature(
    api: TestClient, reference, synthetic_users: dict
) -> None:  # noqa: ANN001
    body = api.get("/explain", params={"user_id": 3, "movie_id": 17}).json()
    expected = reference(export_format.SIGNATURE_EXPLAIN, _user_row(synthetic_users, 3), 3, [17])
    weights = [p["weight"] for p in body["pairs"]]
    assert sum(weights) == pytest.approx(1.0, abs=1e-5)
    assert weights == sorted(weights, reverse=True)
    assert body["probability"] == pytest.approx(
        float(expected[export_format.OUTPUT_PROBABILITY][0]), rel=1e-6
    )
    by_pair = {tuple(p["fields"]): p for p in body["pairs"]}
    assert set(by_pair) == set(PAIRS)
    for column, pair in enumerate(PAIRS):
        assert by_pair[pair]["weight"] == pytest.approx(
            float(expected[export_format.OUTPUT_ATTENTION][0, column]), rel=1e-5, abs=1e-7
        )
        assert by_pair[pair]["contribution"] == pytest.approx(
            float(expected[export_format.OUTPUT_CONTRIBUTION][0, column]), rel=1e-5, abs=1e-7
        )


def test_score_with_explain_matches_explain(api: TestClient) -> None:
    scored = api.post("/score", json={"user_id": 3, "movie_ids": [17, 5], "explain": True}).json()
    single = api.get("/explain", params={"user_id": 3, "movie_id": 17}).json()
    first = scored["scores"][0]
    assert first["probability"] == pytest.approx(single["probability"], rel=1e-6)
    assert [p["fields"] for p in first["pairs"]] == [p["fields"] for p in single["pairs"]]


@pytest.mark.parametrize(
    ("body", "status", "detail"),
    [
        ({"user_id": 1, "movie_ids": []}, 422, "body.movie_ids"),
        (
            {"user_id": 1, "movie_ids": ["abc"]},
            422,
            "body.movie_ids[0]: Input should be a valid integer",
        ),
        ({"user_id": 1, "movie_ids": list(range(1001))}, 422, "at most 1000"),
        ({"user_id": 1, "movie_ids": list(range(20_000))}, 413, "exceeds the limit"),
    ],
)
def test_bad_requests_are_problems(api: TestClient, body: dict, status: int, detail: str) -> None:
    response = api.post("/score", json=body)
    assert response.status_code == status
    assert response.headers["content-type"] == "application/problem+json"
    assert detail in response.json()["detail"]


def test_metrics_report_version_and_latency(api: TestClient) -> None:
    api.post("/score", json={"user_id": 1, "movie_ids": [1]})
    text = api.get("/metrics").text
    assert "afm_model_version 1.0" in text
    assert (
        'afm_request_duration_seconds_bucket{le="0.5",method="POST",route="/score",status="200"}'
        in text
    )


def test_missing_feature_set_is_503_until_loaded(
    trained_model_dir: Path,
    redis_url: str,
    feature_prefix: str,
    synthetic_users: dict,
    synthetic_movies: dict,
) -> None:
    from model.data.load_features import load_features

    settings = Settings(
        model_dir=trained_model_dir, redis_url=redis_url, redis_prefix=feature_prefix
    )
    with TestClient(create_app(settings)) as client:
        wait_until(lambda: client.get("/readyz").json()["model_version"] == 1, what="model")
        response = client.post("/score", json={"user_id": 1, "movie_ids": [1]})
        assert response.status_code == 503 and "load-features" in response.json()["detail"]
        assert response.headers["retry-after"] == "1"
        assert client.get("/readyz").json()["features_loaded"] is False
        load_features(synthetic_users, synthetic_movies, redis_url, feature_prefix)
        assert client.post("/score", json={"user_id": 1, "movie_ids": [1]}).status_code == 200


def test_starts_without_a_model_and_loads_one_when_it_appears(
    copy_model,
    redis_url: str,
    loaded_prefix: str,  # noqa: ANN001
) -> None:
    model_dir = copy_model()  # empty
    settings = Settings(
        model_dir=model_dir, redis_url=redis_url, redis_prefix=loaded_prefix, reload_interval=0.1
    )
    with TestClient(create_app(settings)) as client:
        assert client.get("/healthz").status_code == 200
        assert client.get("/readyz").status_code == 503
        response = client.post("/score", json={"user_id": 1, "movie_ids": [1]})
        assert response.status_code == 503 and response.headers["retry-after"] == "1"
        copy_model(4)
        wait_ready(client)
        assert (
            client.post("/score", json={"user_id": 1, "movie_ids": [1]}).json()["model_version"]
            == 4
        )
