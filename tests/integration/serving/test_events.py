"""POST /events against a real Redis and the real exported model: impression ids checked
(malformed, forged, expired, a rotated key still accepted), each event of a batch answered on
its own, repeats idempotent, accepted events in their user's events stream, and a click put
first in the user's watched movies, where the next /score reads them."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
import redis
from fastapi.testclient import TestClient

from model.contracts import event_log, feature_layout
from model.contracts.export_format import HISTORY_LENGTH, LAST_WATCHED
from service.app import create_app
from service.settings import Settings
from tests.integration.serving.helpers import RedisProcess, service_client

pytestmark = pytest.mark.integration

KEYS = "k2:new-secret,k1:old-secret"
PROBLEM = "urn:afm-ctr:problem:"
UNKNOWN_USER = 876_543


@pytest.fixture(scope="module")
def client(trained_model_dir: Path, redis_url: str, loaded_prefix: str) -> Iterator[TestClient]:
    settings = Settings(
        model_dir=trained_model_dir,
        redis_url=redis_url,
        redis_prefix=loaded_prefix,
        impression_keys=KEYS,
        max_events=20,
        reload_interval=0,
    )
    with service_client(settings) as served:
        yield served


@pytest.fixture
def admin(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    yield client
    client.close()


def shown(client: TestClient, user_id: int, movie_ids: list[int], **body: object) -> dict:
    """A logged /score reply, written to Redis before this returns."""
    reply = client.post("/score", json={"user_id": user_id, "movie_ids": movie_ids, **body})
    assert reply.status_code == 200, reply.text
    client.portal.call(client.app.state.impressions.flush)  # type: ignore[attr-defined]
    return reply.json()


def post(client: TestClient, *events: dict) -> dict:
    response = client.post("/events", json={"events": list(events)})
    assert response.status_code == 202, response.text
    body = response.json()
    assert len(body["results"]) == len(events)
    outcomes = [r["outcome"] for r in body["results"]]
    assert [body[o] for o in ("accepted", "duplicate", "refused")] == [
        outcomes.count(o) for o in ("accepted", "duplicate", "refused")
    ]
    return body


def outcomes(body: dict) -> list[str]:
    """Each result's outcome, or the problem type's slug when refused."""
    return [
        r["outcome"] if r["outcome"] != "refused" else r["problem"]["type"].removeprefix(PROBLEM)
        for r in body["results"]
    ]


def signed(key: str, user_id: int, issued_ms: int, version: int = 1) -> str:
    """An impression id as /score would issue it with ``key`` ("k1:old-secret")."""
    return event_log.issue_impression_id(
        event_log.parse_keys(key), version, "stable", user_id, issued_ms
    )


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def events_of(admin: redis.Redis, prefix: str, user_id: int, impression_id: str) -> list[dict]:
    key = event_log.events_key(prefix, event_log.shard(user_id))
    return [f for _, f in admin.xrange(key) if f["impression"] == impression_id]


def test_an_event_is_recorded_once_and_a_repeat_is_a_duplicate(
    client: TestClient, admin: redis.Redis, loaded_prefix: str
) -> None:
    reply = shown(client, 5, [1, 2, 3], top_k=2)
    impression, movie = reply["impression_id"], reply["scores"][1]["movie_id"]
    view = {"impression_id": impression, "movie_id": movie, "type": "view", "ts": now_ms()}
    assert outcomes(post(client, view)) == ["accepted"]
    hash_key = event_log.impression_key(loaded_prefix, impression)
    recorded = admin.hgetall(hash_key)
    assert recorded[event_log.event_field(movie, "view")] == str(view["ts"])
    # Again, alone and within a batch, later and with another ts: nothing else is written.
    again = {**view, "ts": view["ts"] + 5}
    assert outcomes(post(client, view, again)) == ["duplicate", "duplicate"]
    assert admin.hgetall(hash_key) == recorded
    entries = events_of(admin, loaded_prefix, 5, impression)
    assert entries == [
        {"impression": impression, "movie_id": str(movie), "type": "view", "ts": str(view["ts"])}
    ]


def test_each_event_of_a_batch_is_answered_on_its_own(
    client: TestClient, admin: redis.Redis, loaded_prefix: str
) -> None:
    reply = shown(client, 6, [10, 11, 12])
    impression = reply["impression_id"]
    issued = int(impression.split(".")[5])
    text = list(impression)
    text[-1] = "A" if text[-1] != "A" else "B"
    tampered = "".join(text)
    other_user = impression.replace(".6.", ".7.", 1)  # the signature covers the user
    expired = signed("k1:old-secret", 6, now_ms() - 3_601_000)
    unknown_key = signed("k9:who-knows", 6, now_ms())
    batch = [
        {"impression_id": impression, "movie_id": 10, "type": "view"},
        {"impression_id": "not-an-id", "movie_id": 10, "type": "click"},
        {"impression_id": tampered, "movie_id": 10, "type": "click"},
        {"impression_id": other_user, "movie_id": 10, "type": "click"},
        {"impression_id": unknown_key, "movie_id": 10, "type": "click"},
        {"impression_id": expired, "movie_id": 10, "type": "click"},
        {"impression_id": impression, "movie_id": 99, "type": "click"},
        {"impression_id": impression, "movie_id": 11, "type": "skip", "ts": issued - 3_600_000},
        {"impression_id": impression, "movie_id": 11, "type": "skip", "ts": now_ms() + 600_000},
        {"impression_id": impression, "movie_id": "11", "type": "hover"},
        7,
        {"impression_id": impression, "movie_id": 10, "type": "view"},
        {"impression_id": impression, "movie_id": 12, "type": "skip", "ts": issued + 1},
    ]
    body = post(client, *batch)
    assert outcomes(body) == [
        "accepted",
        "impression-malformed",
        "impression-forged",
        "impression-forged",
        "impression-forged",
        "impression-expired",
        "movie-not-shown",
        "event-outside-window",
        "event-outside-window",
        "invalid-event",
        "invalid-event",
        "duplicate",
        "accepted",
    ]
    problems = [r.get("problem") for r in body["results"]]
    assert all(p["status"] == 422 and p["instance"] == "/events" for p in problems if p)
    assert "attribution window (3600 s)" in problems[5]["detail"]
    assert [e["field"] for e in problems[9]["errors"]] == [
        "body.events[9].movie_id",
        "body.events[9].type",
    ]
    assert problems[10]["errors"][0]["field"] == "body.events[10]"
    # Only the accepted ones were written.
    assert set(admin.hgetall(event_log.impression_key(loaded_prefix, impression))) == {
        "shown",
        event_log.event_field(10, "view"),
        event_log.event_field(12, "skip"),
    }
    assert [e["type"] for e in events_of(admin, loaded_prefix, 6, impression)] == ["view", "skip"]


def test_a_rotated_key_still_verifies(
    client: TestClient, admin: redis.Redis, loaded_prefix: str
) -> None:
    """Ids signed with the old key (listed second) stay good; new ones use the first."""
    assert shown(client, 8, [1])["impression_id"].split(".")[1] == "k2"
    old = signed("k1:old-secret", 8, now_ms() - 60_000)
    body = post(client, {"impression_id": old, "movie_id": 1, "type": "view"})
    assert outcomes(body) == ["accepted"]


def test_an_event_may_come_before_its_impression_is_written(
    client: TestClient, admin: redis.Redis, loaded_prefix: str
) -> None:
    """No hash yet: accepted (nothing to check the movie against), and the hash it creates
    expires like an impression's."""
    issued = now_ms() - 1000
    early = signed("k2:new-secret", 9, issued)
    body = post(client, {"impression_id": early, "movie_id": 4, "type": "view"})
    assert outcomes(body) == ["accepted"]
    key = event_log.impression_key(loaded_prefix, early)
    ttl = event_log.ATTRIBUTION_WINDOW_S + event_log.ATTRIBUTION_TTL_GRACE_S
    assert ttl - 60 < admin.ttl(key) <= ttl


def test_a_late_event_within_the_window_is_accepted(client: TestClient) -> None:
    late = signed("k2:new-secret", 10, now_ms() - 3_500_000)
    assert outcomes(post(client, {"impression_id": late, "movie_id": 1, "type": "skip"})) == [
        "accepted"
    ]


def test_a_click_puts_the_movie_first_in_the_users_watched_movies(
    client: TestClient, admin: redis.Redis, loaded_prefix: str
) -> None:
    user = 12
    namespace = admin.get(feature_layout.pointer_key(loaded_prefix))
    user_key = feature_layout.user_key(namespace, user)
    admin.hset(user_key, mapping={feature_layout.WATCHED: "5|7|9", feature_layout.WATCHED_AT: "0"})
    first = shown(client, user, [7, 20, 21])
    clicked_from = time.time()
    post(
        client,
        {"impression_id": first["impression_id"], "movie_id": 20, "type": "click"},
        {"impression_id": first["impression_id"], "movie_id": 21, "type": "view"},  # not a click
        {"impression_id": first["impression_id"], "movie_id": 7, "type": "click"},
        {"impression_id": first["impression_id"], "movie_id": 7, "type": "click"},  # duplicate
    )
    assert admin.hget(user_key, feature_layout.WATCHED) == "7|20|5|9"  # 7 moved up, not twice
    watched_at = float(admin.hget(user_key, feature_layout.WATCHED_AT))
    assert clicked_from - 1 <= watched_at <= time.time()  # the clicks' time, not 1970's
    # The next /score reads it: its impression logs the features it was scored with.
    second = shown(client, user, [1, 2])
    stream = event_log.impressions_key(loaded_prefix, event_log.shard(user))
    logged = {f["impression"]: orjson.loads(f["data"]) for _, f in admin.xrange(stream)}
    features = logged[second["impression_id"]]["features"]
    assert features["watched"] == "7|20|5|9"
    assert int(features[LAST_WATCHED]) <= 4  # under 32 seconds before the request


def test_watched_movies_keep_the_history_length(
    client: TestClient, admin: redis.Redis, loaded_prefix: str
) -> None:
    user = 13
    namespace = admin.get(feature_layout.pointer_key(loaded_prefix))
    user_key = feature_layout.user_key(namespace, user)
    watched = "|".join(str(100 + i) for i in range(25))
    later = "9999999999"  # a watched_at after the click's time stays: it only moves forward
    admin.hset(
        user_key, mapping={feature_layout.WATCHED: watched, feature_layout.WATCHED_AT: later}
    )
    impression = shown(client, user, [42])["impression_id"]
    post(client, {"impression_id": impression, "movie_id": 42, "type": "click"})
    watched = admin.hget(user_key, feature_layout.WATCHED).split("|")
    assert watched == ["42", *(str(100 + i) for i in range(HISTORY_LENGTH - 1))]
    assert admin.hget(user_key, feature_layout.WATCHED_AT) == later


def test_a_click_of_a_user_without_features_creates_no_user(
    client: TestClient, admin: redis.Redis, loaded_prefix: str
) -> None:
    impression = shown(client, UNKNOWN_USER, [1])["impression_id"]
    body = post(client, {"impression_id": impression, "movie_id": 1, "type": "click"})
    assert outcomes(body) == ["accepted"]
    namespace = admin.get(feature_layout.pointer_key(loaded_prefix))
    assert not admin.exists(feature_layout.user_key(namespace, UNKNOWN_USER))


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "body.events"),
        ({"events": []}, "body.events"),
        ({"events": "click"}, "body.events"),
        ({"events": [], "more": 1}, "body.more"),
    ],
)
def test_a_body_that_is_no_batch_is_422(client: TestClient, body: dict, field: str) -> None:
    response = client.post("/events", json=body)
    assert response.status_code == 422
    assert response.headers["content-type"] == "application/problem+json"
    assert field in [e["field"] for e in response.json()["errors"]]


def test_a_batch_over_the_limit_is_422(client: TestClient) -> None:
    event = {"impression_id": "x", "movie_id": 1, "type": "view"}
    response = client.post("/events", json={"events": [event] * 21})
    assert response.status_code == 422 and "at most 20" in response.json()["detail"]


def test_events_are_counted_by_type_and_outcome(client: TestClient) -> None:
    def count(labels: str) -> float:
        for line in client.get("/metrics").text.splitlines():
            if line.startswith(f"afm_events_total{{{labels}}} "):
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    accepted, forged = 'outcome="accepted",type="view"', 'outcome="forged",type="click"'
    before = count(accepted), count(forged)
    impression = shown(client, 14, [3])["impression_id"]
    post(
        client,
        {"impression_id": impression, "movie_id": 3, "type": "view"},
        {"impression_id": signed("k2:wrong", 14, now_ms()), "movie_id": 3, "type": "click"},
    )
    assert (count(accepted), count(forged)) == (before[0] + 1, before[1] + 1)
    lengths = [
        line
        for line in client.get("/metrics").text.splitlines()
        if line.startswith("afm_log_stream_length{") and 'stream="events"' in line
    ]
    assert len(lengths) == event_log.LOG_SHARDS and sum(float(x.split()[-1]) for x in lengths)


def test_api_keys_protect_events(
    trained_model_dir: Path, redis_url: str, loaded_prefix: str
) -> None:
    settings = Settings(
        model_dir=trained_model_dir,
        redis_url=redis_url,
        redis_prefix=loaded_prefix,
        api_keys="key-1",
        impression_keys=KEYS,
    )
    event = {"impression_id": signed("k2:new-secret", 15, now_ms()), "movie_id": 1, "type": "view"}
    with TestClient(create_app(settings)) as served:
        refused = served.post("/events", json={"events": [event]})
        assert refused.status_code == 401
        assert refused.headers["content-type"] == "application/problem+json"
        accepted = served.post("/events", json={"events": [event]}, headers={"X-API-Key": "key-1"})
        assert accepted.status_code == 202 and accepted.json()["accepted"] == 1


def test_redis_down_is_503_with_retry_after(tmp_path: Path, private_redis: RedisProcess) -> None:
    private_redis.stop()
    settings = Settings(
        model_dir=tmp_path, redis_url=private_redis.url, impression_keys=KEYS, retry_after=3
    )
    event = {"impression_id": signed("k2:new-secret", 1, now_ms()), "movie_id": 1, "type": "view"}
    with TestClient(create_app(settings)) as served:
        response = served.post("/events", json={"events": [event]})
    assert response.status_code == 503 and response.headers["retry-after"] == "3"
    assert response.json()["type"] == PROBLEM + "event-log-unavailable"
