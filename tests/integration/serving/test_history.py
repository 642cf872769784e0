"""A version trained on what users watched, served end to end: a tiny synthetic history model,
features written by `afm-ctr load-features` to the real Redis, the real app. Scores and the
history attention are compared with the SavedModel's own signatures on the raw features as
Redis holds them."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import redis
import tensorflow as tf
from fastapi.testclient import TestClient

from model.contracts import export_format, feature_layout
from model.contracts.export_format import (
    HISTORY_FIELD,
    HISTORY_FIELDS,
    HISTORY_LENGTH,
    LAST_WATCHED,
)
from service.feature_store import last_watched
from service.settings import Settings
from tests.integration.serving.helpers import (
    commands_of,
    redis_commands,
    service_client,
    wait_until,
)

pytestmark = pytest.mark.integration

UNKNOWN_USER = 876_543
UNKNOWN_MOVIE = 987_654


@pytest.fixture(scope="module")
def stored(redis_url: str, history_prefix: str) -> dict[str, dict]:
    """The loaded users and movies, read straight from Redis: {"users": {id: features},
    "movies": {id: features}}."""
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    namespace = client.get(feature_layout.pointer_key(history_prefix))
    users = {}
    for key in client.scan_iter(match=f"{namespace}user:*", count=1000):
        users[key.rsplit(":", 1)[1]] = feature_layout.decode_user(client.hgetall(key))
    movies = client.hgetall(feature_layout.movies_key(namespace))
    client.close()
    return {
        "users": users,
        "movies": {m: feature_layout.decode_movie(v) for m, v in movies.items()},
    }


@pytest.fixture(scope="module")
def client(history_model_dir: Path, redis_url: str, history_prefix: str) -> Iterator[TestClient]:
    settings = Settings(
        model_dir=history_model_dir, redis_url=redis_url, redis_prefix=history_prefix
    )
    with service_client(settings) as c:
        yield c


@pytest.fixture(scope="module")
def reference(history_model_dir: Path, stored: dict) -> Callable[..., dict]:
    """The explain signature's outputs for a user and movies, raw features from Redis
    (``watched`` overrides the user's history)."""
    signature = tf.saved_model.load(str(history_model_dir / "1")).signatures[
        export_format.SIGNATURE_EXPLAIN
    ]

    def run(user_id: int, movie_ids: list[int], watched: str | None = None) -> dict:
        user = stored["users"].get(str(user_id)) or {}
        movies = [stored["movies"].get(str(m), {}) for m in movie_ids]
        n = len(movie_ids)
        raw = {
            "user_id": [str(user_id)] * n,
            **{f: [user.get(f, "")] * n for f in feature_layout.USER_FIELDS},
            LAST_WATCHED: [last_watched(user.get(feature_layout.WATCHED_AT, ""))] * n,
            HISTORY_FIELD: [user.get(HISTORY_FIELD, "") if watched is None else watched] * n,
            "movie_id": [str(m) for m in movie_ids],
            **{f: [m.get(f, "") for m in movies] for f in export_format.ITEM_FIELDS},
        }
        outputs = signature(**{f: tf.constant(raw[f], tf.string) for f in HISTORY_FIELDS})
        return {name: value.numpy() for name, value in outputs.items()}

    return run


@pytest.fixture(scope="module")
def user(stored: dict) -> int:
    """A loaded user who watched more than three movies."""
    separator = export_format.MULTI_VALUED[HISTORY_FIELD]
    return min(
        int(u)
        for u, features in stored["users"].items()
        if len(features[HISTORY_FIELD].split(separator)) > 3
    )


def movie_ids(stored: dict, count: int = 20) -> list[int]:
    return sorted(int(m) for m in stored["movies"])[:count]


def test_the_loaded_users_have_watched_movies(stored: dict) -> None:
    histories = [u[HISTORY_FIELD] for u in stored["users"].values()]
    assert sum(bool(h) for h in histories) > len(histories) / 2
    assert all(len(h.split("|")) <= HISTORY_LENGTH for h in histories)


def test_score_reads_the_watched_movies(
    client: TestClient, reference: Callable[..., dict], stored: dict, user: int
) -> None:
    movies = [*movie_ids(stored), UNKNOWN_MOVIE]
    reply = client.post("/score", json={"user_id": user, "movie_ids": movies}).json()
    assert reply["model_version"] == 1 and reply["user_known"] is True
    got = np.array([s["probability"] for s in reply["scores"]], np.float32)
    expected = reference(user, movies)["probability"]
    np.testing.assert_allclose(got, expected, atol=1e-5)
    # the history matters: without it the same user scores otherwise
    assert np.abs(reference(user, movies, watched="")["probability"] - expected).max() > 1e-4


def test_explain_names_the_watched_movies_by_the_candidates_attention(
    client: TestClient, reference: Callable[..., dict], stored: dict, user: int
) -> None:
    watched = stored["users"][str(user)][HISTORY_FIELD].split("|")
    by_position = {}
    for movie in movie_ids(stored, 3):
        body = client.get("/explain", params={"user_id": user, "movie_id": movie}).json()
        seen = body["watched"]
        assert [m["movie_id"] for m in sorted(seen, key=lambda m: m["position"])] == [
            int(w) for w in watched
        ]
        weights = [m["weight"] for m in seen]
        assert weights == sorted(weights, reverse=True)
        expected = reference(user, [movie])[export_format.OUTPUT_HISTORY_ATTENTION][0]
        np.testing.assert_allclose(weights, [expected[m["position"]] for m in seen], atol=1e-5)
        by_position[movie] = {m["position"]: m["weight"] for m in seen}
        assert all(m["title"] == stored["movies"][str(m["movie_id"])]["title"] for m in seen)
        label = ", ".join([*(m["title"] for m in seen[:3]), "…"])
        feature = next(f for f in body["features"] if f["field"] == HISTORY_FIELD)
        assert feature["label"] == label and feature["value"] == "|".join(watched)
        pairs = [p for p in body["pairs"] if HISTORY_FIELD in p["fields"]]
        assert len(pairs) == len(HISTORY_FIELDS) - 1 and all(p["labels"][1] == label for p in pairs)
    first, *others = (np.array([w[p] for p in sorted(w)]) for w in by_position.values())
    spread = max(np.abs(first - other).max() for other in others)
    assert spread > 1e-4, "the history attention should change with the candidate"


def test_a_user_without_features_watched_nothing_yet(client: TestClient, stored: dict) -> None:
    movie = movie_ids(stored, 1)[0]
    body = client.get("/explain", params={"user_id": UNKNOWN_USER, "movie_id": movie}).json()
    assert body["user_known"] is False and body["watched"] == []
    feature = next(f for f in body["features"] if f["field"] == HISTORY_FIELD)
    assert feature == {"field": HISTORY_FIELD, "value": "", "label": "nothing yet", "known": False}


@pytest.mark.parametrize("app", ["client", "api"], ids=["history", "all"])
def test_a_score_reads_redis_once(
    app: str, request: pytest.FixtureRequest, redis_url: str, stored: dict, user: int
) -> None:
    """One command per request for the user and the history together (the movie table is
    the service's own copy, fetched once per load): MONITOR on the real Redis."""
    served: TestClient = request.getfixturevalue(app)
    body = {"user_id": user, "movie_ids": movie_ids(stored), "top_k": 5}
    assert served.post("/score", json=body).status_code == 200  # the movie table is cached
    prefix = served.app.state.settings.redis_prefix  # type: ignore[attr-defined]
    with redis_commands(redis_url) as seen:
        assert served.post("/score", json=body).status_code == 200
        assert served.post("/score", json={**body, "explain": True}).status_code == 200
    log = f"{prefix}log:"  # the impression writer's connection of its own
    sent = [c for c in commands_of(seen, prefix) if log not in c]
    assert len(sent) == 2 and all(c.startswith("EVALSHA ") for c in sent), sent
    assert all(c.endswith(f" {user}") for c in sent)  # the user's read: pointer and hash


def test_the_service_follows_versions_to_and_from_the_history_field_set(
    copy_model: Callable[..., Path],
    history_model_dir: Path,
    redis_url: str,
    history_prefix: str,
    stored: dict,
    user: int,
) -> None:
    model_dir = copy_model(1)  # eight fields
    settings = Settings(
        model_dir=model_dir, redis_url=redis_url, redis_prefix=history_prefix, reload_interval=0.1
    )
    params = {"user_id": user, "movie_id": movie_ids(stored, 1)[0]}
    with service_client(settings) as c:

        def explained(version: int) -> dict:
            wait_until(lambda: c.get("/model").json()["version"] == version, what=f"v{version}")
            body = c.get("/explain", params=params).json()
            assert body["model_version"] == version
            return body

        assert "watched" not in explained(1)
        copy_model(2, source=history_model_dir)
        body = explained(2)
        assert len(body["watched"]) > 3 and len(body["pairs"]) == len(
            export_format.pairs(HISTORY_FIELDS)
        )
        copy_model(3)
        assert "watched" not in explained(3)
