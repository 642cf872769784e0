"""Coverage against a real Redis and the real session model: the model served against a
feature set it was never trained on says so on /model, /readyz, /metrics and in the log;
against its own feature set it reports high coverage."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from model.data.load_features import load_features
from service.app import create_app
from service.settings import Settings
from tests.integration.serving.helpers import schema_checked, wait_ready

pytestmark = pytest.mark.integration

USER_FIELDS = ("gender", "age", "occupation", "zip")


def _foreign_tables(n: int = 40) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Users and movies whose zips, occupations and movie ids the session model never saw;
    genders and ages it did (the synthetic data's own codes)."""
    ids = np.array([str(i) for i in range(1, n + 1)])
    users = {
        "user_id": ids,
        "gender": np.array(["F", "M"] * (n // 2)),
        "age": np.full(n, "25"),
        "occupation": np.full(n, "astronaut"),
        "zip": np.array([f"Z{i:05d}" for i in range(n)]),
    }
    movies = {
        "movie_id": np.array([str(900_000 + i) for i in range(n)]),
        "title": np.array([f"Foreign {i} (2031)" for i in range(n)]),
        "year": np.full(n, "2031"),
        "genres": np.full(n, "Drama"),
    }
    return users, movies


def _client(model_dir: Path, redis_url: str, prefix: str) -> TestClient:
    settings = Settings(model_dir=model_dir, redis_url=redis_url, redis_prefix=prefix)
    return schema_checked(TestClient(create_app(settings)))


def _gauges(metrics: str) -> dict[str, float]:
    return {
        name: float(value)
        for name, value in re.findall(
            r'^afm_feature_coverage\{field="(\w+)"\} (\S+)$', metrics, re.M
        )
    }


@pytest.fixture
def foreign_prefix(redis_url: str, feature_prefix: str) -> Iterator[str]:
    users, movies = _foreign_tables()
    load_features(users, movies, redis_url, feature_prefix, source="foreign")
    yield feature_prefix


def test_foreign_feature_set_reports_low_coverage_but_stays_ready(
    trained_model_dir: Path,
    redis_url: str,
    foreign_prefix: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    with (
        caplog.at_level(logging.WARNING, logger="service.coverage"),
        _client(trained_model_dir, redis_url, foreign_prefix) as client,
    ):
        wait_ready(client)  # low coverage does not block readiness
        ready = client.get("/readyz").json()
        coverage = client.get("/model").json()["coverage"]
        metrics = client.get("/metrics").text

    assert ready["ready"] is True and ready["coverage_ok"] is False
    assert "zip 0%" in ready["coverage_reason"] and "occupation 0%" in ready["coverage_reason"]
    assert "movie_id 0%" in ready["coverage_reason"]
    assert coverage["ok"] is False and coverage["threshold"] == 0.5
    shares = coverage["fields"]
    assert shares.keys() == {*USER_FIELDS, "movie_id"}
    assert (shares["zip"], shares["occupation"], shares["movie_id"]) == (0.0, 0.0, 0.0)
    assert shares["gender"] == 1.0  # values the model did see count as known
    assert _gauges(metrics) == shares
    warnings = [r for r in caplog.records if r.name == "service.coverage"]
    assert len(warnings) == 1  # once per (version, namespace), however often it is asked
    assert "model version 1 against feature set" in warnings[0].getMessage()


def test_own_feature_set_reports_high_coverage(
    trained_model_dir: Path, redis_url: str, loaded_prefix: str
) -> None:
    with _client(trained_model_dir, redis_url, loaded_prefix) as client:
        wait_ready(client)
        ready = client.get("/readyz").json()
        coverage = client.get("/model").json()["coverage"]
        metrics = client.get("/metrics").text

    assert ready["coverage_ok"] is True and ready["coverage_reason"] is None
    assert coverage["ok"] is True and coverage["fields"].keys() == {*USER_FIELDS, "movie_id"}
    assert min(coverage["fields"].values()) >= 0.9, coverage
    assert _gauges(metrics) == coverage["fields"]
