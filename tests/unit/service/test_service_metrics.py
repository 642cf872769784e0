"""/metrics as monitoring queries it: the API's series exist before the first error, no
``*_created`` series, and probes kept out of the API's request series."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from service.metrics import POSITION_BUCKETS, Metrics, position_bucket
from tests.unit.service.test_service_routes import FakeModel, FakeStore, _client

API = [("POST", "/score"), ("GET", "/explain"), ("GET", "/feature-set"), ("GET", "/model")]


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    with _client(tmp_path, FakeModel(), FakeStore()) as c:
        yield c


def _samples(text: str) -> dict[tuple[str, frozenset], float]:
    """Every sample, parsed by prometheus_client: (name, labels) -> value."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def _count(method: str, route: str, status: str) -> tuple[str, frozenset]:
    labels = {"method": method, "route": route, "status": status}
    return "afm_request_duration_seconds_count", frozenset(labels.items())


def test_api_series_exist_at_zero_before_any_request(client: TestClient) -> None:
    samples = _samples(client.get("/metrics").text)
    for method, route in API:
        for status in ("200", "500", "503"):
            assert samples[_count(method, route, status)] == 0.0, (method, route, status)
    errors = sum(v for (name, labels), v in samples.items() if ("status", "503") in labels)
    assert errors == 0.0  # an error-ratio query has its 5xx series: it reads 0, not no data


def test_no_created_series(client: TestClient) -> None:
    client.post("/score", json={"user_id": 1, "movie_ids": [1193]})
    names = {name for name, _ in _samples(client.get("/metrics").text)}
    assert "afm_request_duration_seconds_count" in names
    assert not [name for name in names if name.endswith("_created")]


def test_probes_are_timed_apart_from_the_api(client: TestClient) -> None:
    for path in ("/healthz", "/readyz", "/healthz"):
        client.get(path)
    client.post("/score", json={"user_id": 1, "movie_ids": [1193]})
    samples = _samples(client.get("/metrics").text)
    routes = {
        dict(labels)["route"]
        for name, labels in samples
        if name.startswith("afm_request_duration_seconds")
    }
    assert not routes & {"/healthz", "/readyz", "/metrics"}
    assert samples[_count("POST", "/score", "200")] == 1.0
    probe = "afm_probe_request_duration_seconds_count"
    assert samples[(probe, frozenset({"route": "/healthz", "status": "200"}.items()))] == 2.0
    assert samples[(probe, frozenset({"route": "/readyz", "status": "200"}.items()))] == 1.0


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool: apt-get install prometheus")
def test_promtool_finds_nothing_to_fix(client: TestClient) -> None:
    client.post("/score", json={"user_id": 1, "movie_ids": [1193, 5], "explain": True})
    client.get("/healthz")
    text = client.get("/metrics").text
    checked = subprocess.run(
        ["promtool", "check", "metrics"], input=text, capture_output=True, text=True, check=False
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_positions_fall_in_five_buckets_whatever_top_k() -> None:
    assert [position_bucket(p) for p in (0, 1, 2, 3, 9, 10, 500, None)] == [
        "0", "1", "2", "3-9", "3-9", "10+", "10+", "unknown"
    ]  # fmt: skip
    metrics = Metrics()
    metrics.impression_issued(3, "canary", 2)  # top 2: positions 0 and 1
    metrics.impression_issued(3, "canary", 15)  # 0, 1, 2, seven in 3-9, five in 10+
    metrics.impression_issued(2, "stable", 0)  # nothing shown: an impression all the same
    shown = metrics.impressions.shown_by_position()
    assert {b: shown[(3, "canary", b)] for b in POSITION_BUCKETS} == {
        "0": 2, "1": 2, "2": 1, "3-9": 7, "10+": 5
    }  # fmt: skip
    assert metrics.impressions.issued == {(3, "canary"): 2, (2, "stable"): 1}
    assert sum(shown[(2, "stable", b)] for b in POSITION_BUCKETS) == 0
