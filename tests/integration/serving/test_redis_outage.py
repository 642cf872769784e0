"""Redis frozen, stopped and restarted under a running service: bounded 503s with
Retry-After, then recovery without a restart of the service."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from model.data.load_features import load_features
from service.app import create_app
from service.settings import Settings
from tests.integration.serving.helpers import RedisProcess, wait_ready

pytestmark = pytest.mark.integration

BODY = {"user_id": 1, "movie_ids": [1, 2, 3]}
PREFIX = "outage:"


def _problem_503(client: TestClient, detail: str) -> None:
    response = client.post("/score", json=BODY)
    assert response.status_code == 503, response.text
    assert response.headers["retry-after"] == "1"
    assert response.headers["content-type"] == "application/problem+json"
    assert detail in response.json()["detail"]


def test_redis_outage_gives_503_and_recovers(
    private_redis: RedisProcess,
    trained_model_dir: Path,
    synthetic_users: dict,
    synthetic_movies: dict,
) -> None:
    load_features(synthetic_users, synthetic_movies, private_redis.url, PREFIX)
    settings = Settings(
        model_dir=trained_model_dir,
        redis_url=private_redis.url,
        redis_prefix=PREFIX,
        redis_timeout=0.2,
        reload_interval=0,
    )
    with TestClient(create_app(settings)) as client:
        wait_ready(client)
        assert client.post("/score", json=BODY).status_code == 200

        # Frozen (slow) Redis: the read times out instead of hanging the request.
        os.kill(private_redis.process.pid, signal.SIGSTOP)
        _problem_503(client, "did not answer within 0.2s")
        assert client.get("/readyz").json()["redis"] is False
        assert client.get("/healthz").status_code == 200
        os.kill(private_redis.process.pid, signal.SIGCONT)
        wait_ready(client)
        assert client.post("/score", json=BODY).status_code == 200

        # Stopped Redis: connection refused.
        private_redis.stop()
        _problem_503(client, "Redis unavailable")
        _problem_503(client, "Redis unavailable")
        metrics = client.get("/metrics").text
        assert "afm_redis_errors_total 0.0" not in metrics

        # Restarted, empty Redis: 503 "no feature set" until features are loaded again.
        private_redis.start()
        _problem_503(client, "no feature set")
        load_features(synthetic_users, synthetic_movies, private_redis.url, PREFIX)
        wait_ready(client)
        response = client.post("/score", json=BODY)
        assert response.status_code == 200 and response.json()["user_known"] is True
