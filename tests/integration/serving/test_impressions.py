"""Impressions against a real Redis and the real exported model: every /score reply's
impression lands in its user's stream with the features as served, ``log: false`` and
AFM_LOG_IMPRESSIONS=false write nothing, and neither a full buffer nor a failing Redis ever
fails a /score (they drop the impression and count it). The log is waited for with
``ImpressionLog.flush`` on the app's own loop, never with a sleep."""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import orjson
import pytest
import redis
from fastapi import Request
from fastapi.testclient import TestClient

from model.contracts import event_log
from service import deps, impressions
from service.app import create_app
from service.batching import Batcher
from service.model_registry import Serving
from service.settings import Settings
from tests.integration.serving.helpers import (
    RedisProcess,
    service_client,
    wait_ready,
)
from tests.unit.service.test_service_routes import FakeModel, FakeStore

pytestmark = pytest.mark.integration

KEYS = "k2:new-secret,k1:old-secret"
UNKNOWN_MOVIE = 987_654
UNKNOWN_USER = 876_543


@pytest.fixture(scope="module")
def client(trained_model_dir: Path, redis_url: str, loaded_prefix: str) -> Iterator[TestClient]:
    settings = Settings(
        model_dir=trained_model_dir,
        redis_url=redis_url,
        redis_prefix=loaded_prefix,
        impression_keys=KEYS,
        reload_interval=0,
    )
    with service_client(settings) as served:
        yield served


@pytest.fixture
def admin(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


def flush(client: TestClient) -> None:
    """Wait, on the app's loop, until every impression buffered so far is written."""
    client.portal.call(client.app.state.impressions.flush)  # type: ignore[attr-defined]


def stream_entries(admin: redis.Redis, prefix: str, user_id: int) -> dict[str, dict]:
    """impression id -> its decoded data, in the user's impressions stream."""
    key = event_log.impressions_key(prefix, event_log.shard(user_id))
    return {
        fields[b"impression"].decode(): orjson.loads(fields[b"data"])
        for _, fields in admin.xrange(key)
    }


def total_length(admin: redis.Redis, prefix: str) -> int:
    shards = range(event_log.LOG_SHARDS)
    return sum(admin.xlen(event_log.impressions_key(prefix, s)) for s in shards)


def metric(client: TestClient, line_start: str) -> float:
    for line in client.get("/metrics").text.splitlines():
        if line.startswith(line_start + " "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no {line_start} in /metrics")


def _user(users: dict, user_id: int) -> dict[str, str]:
    index = list(users["user_id"]).index(str(user_id))
    return {name: str(users[name][index]) for name in ("gender", "age", "occupation", "zip")}


def _movie(movies: dict, movie_id: int) -> dict[str, str]:
    index = list(movies["movie_id"]).index(str(movie_id))
    return {"year": str(movies["year"][index]), "genres": str(movies["genres"][index])}


def test_a_reply_is_logged_with_the_features_as_served(
    client: TestClient,
    admin: redis.Redis,
    loaded_prefix: str,
    synthetic_users: dict,
    synthetic_movies: dict,
) -> None:
    candidates = [*range(1, 11), UNKNOWN_MOVIE]
    body = {"user_id": 7, "movie_ids": candidates, "top_k": 4, "unknown_movies": "score"}
    reply = client.post("/score", json=body).json()
    flush(client)
    impression_id = reply["impression_id"]
    parsed = event_log.parse_impression_id(
        impression_id, event_log.parse_keys(KEYS), parsed_now(impression_id), 3600
    )
    assert (parsed.key_id, parsed.version, parsed.arm, parsed.user_id) == ("k2", 1, "stable", 7)
    data = stream_entries(admin, loaded_prefix, 7)[impression_id]
    assert list(data) == list(event_log.IMPRESSION_FIELDS)
    assert data["user_id"] == 7 and data["version"] == 1 and data["arm"] == "stable"
    assert data["ts"] == parsed.issued_ms
    assert data["features"] == {**_user(synthetic_users, 7), "last_watched": "", "watched": ""}
    shown = [score["movie_id"] for score in reply["scores"]]
    assert len(shown) == 4  # top_k respected: what the reply returned, in its order
    movies = data["movies"]
    assert list(movies) == ["movie_id", "score", *event_log.MOVIE_LOG_FIELDS]
    assert movies["movie_id"] == shown
    assert movies["score"] == [s["probability"] for s in reply["scores"]]
    for position, movie_id in enumerate(shown):
        expected = (
            {"year": "", "genres": ""}
            if movie_id == UNKNOWN_MOVIE
            else _movie(synthetic_movies, movie_id)
        )
        assert {name: movies[name][position] for name in expected} == expected
    read = event_log.read_impression_data(orjson.dumps(data))
    assert read.movie_ids == shown and read.scores == movies["score"]
    key = event_log.impression_key(loaded_prefix, impression_id)
    assert admin.hgetall(key) == {b"shown": ",".join(map(str, shown)).encode()}
    ttl = event_log.ATTRIBUTION_WINDOW_S + event_log.ATTRIBUTION_TTL_GRACE_S
    assert ttl - 60 < admin.ttl(key) <= ttl


def parsed_now(impression_id: str) -> int:
    """A ``now`` at which the id is fresh: its own issue time."""
    return int(impression_id.split(".")[5])


def test_an_unknown_user_and_an_explained_reply_are_logged_too(
    client: TestClient, admin: redis.Redis, loaded_prefix: str
) -> None:
    body = {"user_id": UNKNOWN_USER, "movie_ids": [3, 1, 2], "explain": True}
    reply = client.post("/score", json=body).json()
    flush(client)
    data = stream_entries(admin, loaded_prefix, UNKNOWN_USER)[reply["impression_id"]]
    logged = ("gender", "age", "occupation", "zip", "last_watched", "watched")
    assert data["features"] == dict.fromkeys(logged, "")
    assert data["movies"]["movie_id"] == [3, 1, 2]  # request order without top_k


def test_log_false_writes_nothing_and_returns_no_id(
    client: TestClient, admin: redis.Redis, loaded_prefix: str
) -> None:
    flush(client)
    before = total_length(admin, loaded_prefix), metric(client, "afm_impressions_logged_total")
    reply = client.post("/score", json={"user_id": 3, "movie_ids": [1, 2], "log": False}).json()
    flush(client)
    assert reply["impression_id"] is None and len(reply["scores"]) == 2
    after = total_length(admin, loaded_prefix), metric(client, "afm_impressions_logged_total")
    assert after == before


def test_logged_impressions_and_stream_lengths_are_in_metrics(
    client: TestClient, admin: redis.Redis, loaded_prefix: str
) -> None:
    logged = metric(client, "afm_impressions_logged_total")
    for user in (11, 12, 13):
        assert client.post("/score", json={"user_id": user, "movie_ids": [5]}).status_code == 200
    flush(client)
    assert metric(client, "afm_impressions_logged_total") == logged + 3
    lengths = sum(
        metric(client, f'afm_log_stream_length{{shard="{shard}",stream="impressions"}}')
        for shard in range(event_log.LOG_SHARDS)
    )
    assert lengths == total_length(admin, loaded_prefix)
    assert metric(client, 'afm_impressions_dropped_total{reason="buffer_full"}') == 0
    assert metric(client, "afm_impressions_buffered") == 0


def test_a_redis_error_drops_the_batch_and_never_fails_a_score(
    client: TestClient, admin: redis.Redis, loaded_prefix: str
) -> None:
    """The user's stream key holds a string: XADD fails with WRONGTYPE."""
    user = 21
    stream = event_log.impressions_key(loaded_prefix, event_log.shard(user))
    admin.set(stream, "not a stream")
    dropped = 'afm_impressions_dropped_total{reason="redis_error"}'
    before = metric(client, dropped)
    try:
        reply = client.post("/score", json={"user_id": user, "movie_ids": [1, 2, 3]})
        flush(client)
        assert reply.status_code == 200 and reply.json()["impression_id"]
        assert metric(client, dropped) == before + 1
    finally:
        admin.delete(stream)
    reply = client.post("/score", json={"user_id": user, "movie_ids": [1, 2, 3]}).json()
    flush(client)
    assert reply["impression_id"] in stream_entries(admin, loaded_prefix, user)


def test_shutdown_writes_what_is_buffered(
    trained_model_dir: Path, redis_url: str, loaded_prefix: str, admin: redis.Redis
) -> None:
    settings = Settings(
        model_dir=trained_model_dir, redis_url=redis_url, redis_prefix=loaded_prefix
    )
    with TestClient(create_app(settings)) as served:
        wait_ready(served)
        ids = [
            served.post("/score", json={"user_id": 30, "movie_ids": [m]}).json()["impression_id"]
            for m in (1, 2, 3)
        ]
    assert set(ids) <= stream_entries(admin, loaded_prefix, 30).keys()


def test_without_configured_keys_a_random_key_is_logged_once(
    trained_model_dir: Path,
    redis_url: str,
    loaded_prefix: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings = Settings(
        model_dir=trained_model_dir, redis_url=redis_url, redis_prefix=loaded_prefix
    )
    with caplog.at_level(logging.WARNING), TestClient(create_app(settings)) as served:
        wait_ready(served)
        impression_id = served.post("/score", json={"user_id": 1, "movie_ids": [1]}).json()[
            "impression_id"
        ]
    lines = [r.getMessage() for r in caplog.records if "random key" in r.getMessage()]
    assert len(lines) == 1 and "will not verify" in lines[0]
    assert impression_id.split(".")[1] in lines[0]  # the key id, never the secret


def test_logging_off_writes_nothing(
    trained_model_dir: Path, redis_url: str, loaded_prefix: str, admin: redis.Redis
) -> None:
    settings = Settings(
        model_dir=trained_model_dir,
        redis_url=redis_url,
        redis_prefix=loaded_prefix,
        log_impressions=False,
    )
    before = total_length(admin, loaded_prefix)
    with TestClient(create_app(settings)) as served:
        wait_ready(served)
        reply = served.post("/score", json={"user_id": 4, "movie_ids": [1, 2]}).json()
        scrape = served.get("/metrics").text
    assert reply["impression_id"] is None and len(reply["scores"]) == 2
    assert total_length(admin, loaded_prefix) == before
    assert "afm_impressions_logged" not in scrape and "afm_events_total" in scrape


# --- the logger's Redis failing or stalled, with the scoring path faked (no Redis for it) ---


def _faked_scoring(tmp_path: Path, redis_url: str, **settings: object) -> TestClient:
    """The real app and its real impression log on ``redis_url``; features and scores from
    the unit tests' fakes, so only the logger talks to that Redis."""
    app = create_app(
        Settings(model_dir=tmp_path, redis_url=redis_url, reload_interval=0, **settings)
    )
    model, store = FakeModel(), FakeStore()

    async def scoring_dep(request: Request) -> deps.Scoring:
        state = request.app.state
        serving = Serving(model)  # type: ignore[arg-type]
        return deps.Scoring(
            serving, store, Batcher(), state.metrics, state.settings, state.impressions
        )  # type: ignore[arg-type]

    app.dependency_overrides[deps.get_scoring] = scoring_dep
    return TestClient(app)


def test_a_full_buffer_drops_and_counts_without_failing_a_score(
    tmp_path: Path, private_redis: RedisProcess
) -> None:
    """The logger's Redis frozen: one batch of at most the buffer's two records is being
    written, two more wait in the buffer, the rest of ten are dropped; every /score answers,
    and once Redis thaws every impression is written or counted dropped."""
    process = private_redis.process
    assert process is not None
    sent = 10
    with _faked_scoring(
        tmp_path, private_redis.url, impression_buffer=2, redis_timeout=10
    ) as served:
        os.kill(process.pid, signal.SIGSTOP)
        try:
            replies = [
                served.post("/score", json={"user_id": 1, "movie_ids": [1193, 661]})
                for _ in range(sent)
            ]
            assert [r.status_code for r in replies] == [200] * sent
            assert all(r.json()["impression_id"] for r in replies)
            impressions = served.app.state.impressions  # type: ignore[attr-defined]
            held = 2 + 2  # the buffer, and the batch being written
            assert impressions.dropped["buffer_full"] >= sent - held
        finally:
            os.kill(process.pid, signal.SIGCONT)
        flush(served)
        logged = metric(served, "afm_impressions_logged_total")
        dropped = metric(served, 'afm_impressions_dropped_total{reason="buffer_full"}')
        assert logged + dropped == sent and dropped == impressions.dropped["buffer_full"]
    entries = redis.Redis(port=private_redis.port).xlen(
        event_log.impressions_key("afm:", event_log.shard(1))
    )
    assert entries == logged


def test_redis_down_for_the_logger_never_fails_a_score(
    tmp_path: Path,
    private_redis: RedisProcess,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each batch is tried again for RETRY_S (shortened here), then dropped and counted."""
    monkeypatch.setattr(impressions, "RETRY_S", 0.3)
    private_redis.stop()
    with caplog.at_level(logging.WARNING, logger="service.impressions"):
        with _faked_scoring(tmp_path, private_redis.url) as served:
            for _ in range(3):
                reply = served.post("/score", json={"user_id": 1, "movie_ids": [1193]})
                assert reply.status_code == 200 and reply.json()["impression_id"]
                flush(served)
            assert metric(served, 'afm_impressions_dropped_total{reason="redis_error"}') == 3
            assert metric(served, "afm_impressions_logged_total") == 0
    drops = [r.getMessage() for r in caplog.records if "dropped" in r.getMessage()]
    # At most one line per interval while it runs, and the rest when it stops.
    assert 1 <= len(drops) <= 2 and "redis_error" in drops[0], drops
    assert sum(int(line.split()[1]) for line in drops) == 3


def test_impression_scores_are_float32_shortest_decimals() -> None:
    """The logged score is the reply's probability, to the digit."""
    value = np.float32(0.43209999799728394)
    assert orjson.dumps(np.array([value]), option=orjson.OPT_SERIALIZE_NUMPY) == b"[0.4321]"


def test_the_write_script_stores_each_impression_of_a_call_once(admin: redis.Redis) -> None:
    """A call sent again (its reply lost) writes nothing twice; a call mixing stored and new
    impressions writes the new ones only. On the real Redis, as the service sends it."""
    prefix = f"script-{os.getpid()}:"
    users = [u for u in range(100) if event_log.shard(u) == 3][:4]  # one shard, one slot
    stream = event_log.impressions_key(prefix, 3)
    ids = [f"i1.k1.1.stable.{u}.1796616305123.00000000000{n}.sig" for n, u in enumerate(users)]

    def call(*numbers: int) -> int:
        keys = [event_log.impression_key(prefix, ids[n]) for n in numbers]
        arguments = [a for n in numbers for a in (ids[n], f'{{"n":{n}}}', f"{n},7")]
        script = admin.register_script(impressions.WRITE_SCRIPT)
        return script(keys=[stream, *keys], args=[1000, 60, event_log.SHOWN_FIELD, *arguments])

    try:
        assert call(0, 1, 2) == 3
        assert call(0, 1, 2) == 0
        assert call(2, 3) == 1
        entries = [(f[b"impression"].decode(), f[b"data"]) for _, f in admin.xrange(stream)]
        assert entries == [(ids[n], b'{"n":%d}' % n) for n in range(4)]
        hashed = event_log.impression_key(prefix, ids[3])
        assert admin.hgetall(hashed) == {event_log.SHOWN_FIELD.encode(): b"3,7"}
        assert 0 < admin.ttl(hashed) <= 60
    finally:
        admin.delete(stream, *(event_log.impression_key(prefix, i) for i in ids))
