"""Rollout in the service: the registry following the policy, pinned and sticky requests,
/model roles and the per-version metrics. Fake models and Redis; the real ones are in
tests/integration/serving/test_rollout.py."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from model.contracts import rollout
from model.contracts.rollout import RolloutPolicy
from service.app import create_app
from service.errors import VersionNotLoaded
from service.metrics import PROBABILITY_BUCKETS, _ProbabilityHistogram
from service.model_registry import ModelRegistry, Serving
from service.settings import Settings
from tests.integration.serving.helpers import schema_checked
from tests.unit.service.test_service_routes import FakeModel, FakeStore


def _fake(version_dir: Path) -> FakeModel:
    model = FakeModel()
    model.version, model.path = int(version_dir.name), version_dir
    return model


class Loader:
    """Loads any version not listed as broken; counts attempts per version."""

    def __init__(self, broken: set[int] | None = None) -> None:
        self.broken = broken or set()
        self.attempts: dict[int, int] = {}

    def __call__(self, version_dir: Path) -> FakeModel:
        version = int(version_dir.name)
        self.attempts[version] = self.attempts.get(version, 0) + 1
        if version in self.broken:
            raise OSError(f"SavedModel file does not exist at: {version_dir}")
        return _fake(version_dir)


def _versions(root: Path, *versions: int) -> Path:
    for version in versions:
        (root / str(version)).mkdir()
    return root


def _policy(root: Path, **fields: object) -> None:
    rollout.write_policy(root, RolloutPolicy.model_validate(fields))


def _roles(registry: ModelRegistry) -> dict[str, int]:
    return {role: model.version for role, model in registry.serving.roles()}


def _refresh(registry: ModelRegistry) -> None:
    asyncio.run(registry.refresh())


# The registry.


def test_without_a_policy_the_newest_serves_and_the_one_it_replaced_stays(tmp_path: Path) -> None:
    _versions(tmp_path, 1)
    registry = ModelRegistry(tmp_path, Loader())
    _refresh(registry)
    _versions(tmp_path, 2)
    _refresh(registry)
    assert _roles(registry) == {"stable": 2, "previous": 1}
    assert registry.current.version == 2 and registry.policy is None


def test_policy_names_who_serves_and_new_versions_wait(tmp_path: Path) -> None:
    _versions(tmp_path, 1, 2, 3)
    _policy(tmp_path, stable=1, canary=2, percent=30)
    loader = Loader()
    registry = ModelRegistry(tmp_path, loader)
    _refresh(registry)
    assert _roles(registry) == {"stable": 1, "canary": 2}
    assert registry.serving.percent == 30
    assert 3 not in loader.attempts  # newer, but not named by the policy


def test_promote_and_rollback_reuse_loaded_versions(tmp_path: Path) -> None:
    _versions(tmp_path, 1, 2)
    _policy(tmp_path, stable=1, canary=2, percent=10)
    loader = Loader()
    registry = ModelRegistry(tmp_path, loader)
    _refresh(registry)
    canary = registry.serving.canary
    _policy(tmp_path, stable=2, previous=1)  # promote
    _refresh(registry)
    assert _roles(registry) == {"stable": 2, "previous": 1}
    assert registry.current is canary  # the very object that served the canary
    _policy(tmp_path, stable=1)  # roll back
    _refresh(registry)
    assert _roles(registry) == {"stable": 1}
    assert loader.attempts == {1: 1, 2: 1}  # nothing loaded twice


def test_broken_canary_gets_no_traffic_and_is_never_promoted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _versions(tmp_path, 1, 2)
    _policy(tmp_path, stable=1)
    loader = Loader(broken={2})
    registry = ModelRegistry(tmp_path, loader)
    _refresh(registry)
    _policy(tmp_path, stable=1, canary=2, percent=50)
    with caplog.at_level(logging.ERROR, logger="service.model_registry"):
        _refresh(registry)
        assert _roles(registry) == {"stable": 1} and registry.serving.percent == 0
        _policy(tmp_path, stable=2, previous=1)  # promoted anyway
        _refresh(registry)
        _refresh(registry)
    assert _roles(registry) == {"stable": 1}
    assert registry.refused_versions == [2] and loader.attempts[2] == 1
    assert [r.message for r in caplog.records] == [
        f"refusing model version 2: OSError: SavedModel file does not exist at: {tmp_path / '2'}"
        " (keeping version 1)"
    ]


def test_broken_policy_file_is_counted_logged_once_and_the_last_good_one_kept(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _versions(tmp_path, 1, 2, 3)
    _policy(tmp_path, stable=1, canary=2, percent=10)
    registry = ModelRegistry(tmp_path, Loader())
    _refresh(registry)
    rollout.policy_path(tmp_path).write_text('{"stable": 3, "percent": 10}')
    with caplog.at_level(logging.ERROR, logger="service.model_registry"):
        _refresh(registry)
        _refresh(registry)  # the same broken file: no second line
    assert registry.policy_errors == 1
    assert "percent is 10.0 but no canary is set" in registry.policy_error
    assert [r.message for r in caplog.records] == [
        f"ignoring rollout policy: {registry.policy_error} "
        "(keeping: stable 1, canary 2 for 10% of users)"
    ]
    assert _roles(registry) == {"stable": 1, "canary": 2}
    _policy(tmp_path, stable=3)
    _refresh(registry)
    assert _roles(registry) == {"stable": 3} and registry.policy_error is None


def test_removing_the_policy_returns_to_the_newest_version(tmp_path: Path) -> None:
    _versions(tmp_path, 1, 2, 3)
    _policy(tmp_path, stable=1, canary=2, percent=10)
    registry = ModelRegistry(tmp_path, Loader())
    _refresh(registry)
    rollout.policy_path(tmp_path).unlink()
    _refresh(registry)
    assert _roles(registry) == {"stable": 3, "previous": 1}


def test_at_most_three_versions_stay_loaded(tmp_path: Path) -> None:
    """Canary, promote, canary, ...: each step drops what no role names."""
    _versions(tmp_path, 1)
    registry = ModelRegistry(tmp_path, Loader())
    _refresh(registry)
    for version in range(2, 8):
        _versions(tmp_path, version)
        _policy(tmp_path, stable=version - 1, canary=version, percent=5, previous=version - 2)
        _refresh(registry)
        assert _roles(registry) == {
            "stable": version - 1,
            "canary": version,
            "previous": version - 2,
        }
        _policy(tmp_path, stable=version, previous=version - 1)
        _refresh(registry)
        assert _roles(registry) == {"stable": version, "previous": version - 1}


# Serving.pick: pins and the sticky canary.


def _serving(percent: float = 25) -> Serving:
    return Serving(_fake(Path("3")), _fake(Path("4")), percent, _fake(Path("2")))


def test_pinned_version_is_used_whatever_its_role() -> None:
    serving = _serving()
    assert [serving.pick(1, v)[0].version for v in (2, 3, 4)] == [2, 3, 4]
    assert {serving.pick(1, v)[1] for v in (2, 3, 4)} == {"pinned"}


def test_unloaded_pin_names_the_loaded_versions() -> None:
    with pytest.raises(VersionNotLoaded) as raised:
        _serving().pick(1, 9)
    assert raised.value.detail == (
        "model version 9 is not loaded; loaded: 3 (stable), 4 (canary), 2 (previous)"
    )
    assert raised.value.status == 404


def test_policy_arm_follows_the_user_hash() -> None:
    serving = _serving(25)
    for user_id in range(2000):
        model, arm = serving.pick(user_id)
        expected = rollout.in_canary(user_id, 4, 25)
        assert (model.version, arm) == ((4, "canary") if expected else (3, "stable"))


# Routes and metrics on a real app, with fake models and Redis.


@pytest.fixture
def app_with(tmp_path: Path) -> Iterator:
    """(client, registry): the app serving a registry over ``tmp_path / "models"``."""
    root = tmp_path / "models"
    root.mkdir()
    registry = ModelRegistry(root, Loader())
    app = create_app(Settings(model_dir=tmp_path / "none", reload_interval=0))
    with schema_checked(TestClient(app, raise_server_exceptions=False)) as client:
        state = app.state
        state.metrics.watch(registry, state.feature_store, state.batcher, state.coverage)
        state.registry, state.feature_store = registry, FakeStore()
        yield client, registry


def _metrics(client: TestClient) -> dict[tuple[str, frozenset], float]:
    """(sample name, labels) -> value, parsed by prometheus_client's own parser."""
    found = {}
    for family in text_string_to_metric_families(client.get("/metrics").text):
        for sample in family.samples:
            found[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return found


def test_pinned_score_and_explain(app_with) -> None:  # noqa: ANN001
    client, registry = app_with
    _versions(registry.model_dir, 1, 2)
    _policy(registry.model_dir, stable=2, previous=1)
    _refresh(registry)
    body = {"user_id": 1, "movie_ids": [1193]}
    assert client.post("/score", json=body).json()["model_version"] == 2
    assert client.post("/score", json={**body, "model_version": 1}).json()["model_version"] == 1
    explained = client.get("/explain", params={"user_id": 1, "movie_id": 1193, "model_version": 1})
    assert explained.status_code == 200 and explained.json()["model_version"] == 1
    for response in (
        client.post("/score", json={**body, "model_version": 5}),
        client.get("/explain", params={"user_id": 1, "movie_id": 1193, "model_version": 5}),
    ):
        assert response.status_code == 404
        assert response.headers["content-type"] == "application/problem+json"
        problem = response.json()
        assert problem["type"] == "urn:afm-ctr:problem:version-not-loaded"
        assert (
            problem["detail"] == "model version 5 is not loaded; loaded: 2 (stable), 1 (previous)"
        )
    assert client.post("/score", json={**body, "model_version": "1"}).status_code == 422


def test_users_keep_their_version_and_metrics_compare_the_arms(app_with) -> None:  # noqa: ANN001
    client, registry = app_with
    _versions(registry.model_dir, 1, 2)
    _policy(registry.model_dir, stable=1, canary=2, percent=30)
    _refresh(registry)
    seen: dict[int, set[int]] = {}
    for request in range(1000):
        user_id = request % 100
        body = {"user_id": user_id, "movie_ids": [1193, 661, 42]}
        seen.setdefault(user_id, set()).add(
            client.post("/score", json=body).json()["model_version"]
        )
    assert all(len(versions) == 1 for versions in seen.values())
    on_canary = {u for u, versions in seen.items() if versions == {2}}
    assert on_canary == {u for u in range(100) if rollout.in_canary(u, 2, 30)}
    client.post("/score", json={"user_id": 1, "movie_ids": [5], "model_version": 1})

    metrics = _metrics(client)

    def requests(version: str, arm: str) -> float:
        labels = {"route": "/score", "version": version, "arm": arm, "status": "200"}
        return metrics[("afm_scored_request_duration_seconds_count", frozenset(labels.items()))]

    def probabilities(version: str, arm: str, le: str = "+Inf") -> float:
        labels = {"version": version, "arm": arm, "le": le}
        return metrics[("afm_scored_probability_bucket", frozenset(labels.items()))]

    assert requests("2", "canary") == 10 * len(on_canary)
    assert requests("1", "stable") == 10 * (100 - len(on_canary))
    assert requests("1", "pinned") == 1
    assert probabilities("2", "canary") == 30 * len(on_canary)  # three candidates each
    # FakeModel: probability = movie_id / 10_000 -> 0.0042 and 0.0661 at most 0.1; 0.1193 above
    assert probabilities("2", "canary", "0.1") == 20 * len(on_canary)
    assert probabilities("1", "pinned", "0.01") == 1  # movie 5: 0.0005
    total = metrics[
        ("afm_scored_probability_sum", frozenset({("version", "2"), ("arm", "canary")}))
    ]
    assert total == pytest.approx(10 * len(on_canary) * (0.1193 + 0.0661 + 0.0042), rel=1e-4)
    assert metrics[("afm_rollout_canary_percent", frozenset())] == 30
    loaded = {k for k, v in metrics.items() if k[0] == "afm_model_loaded" and v == 1}
    assert loaded == {
        ("afm_model_loaded", frozenset({("version", "1"), ("role", "stable")})),
        ("afm_model_loaded", frozenset({("version", "2"), ("role", "canary")})),
    }


def test_model_lists_loaded_versions_and_the_policy(app_with) -> None:  # noqa: ANN001
    client, registry = app_with
    _versions(registry.model_dir, 1, 2, 3)
    _policy(registry.model_dir, stable=2, canary=3, percent=12.5, previous=1)
    _refresh(registry)
    rollout.policy_path(registry.model_dir).write_text("not json")
    _refresh(registry)
    body = client.get("/model").json()
    assert body["version"] == 2
    assert [(v["version"], v["role"], v["percent"]) for v in body["loaded"]] == [
        (2, "stable", 87.5),
        (3, "canary", 12.5),
        (1, "previous", 0.0),
    ]
    assert body["rollout"]["policy"]["canary"] == 3
    assert body["rollout"]["error"].endswith(
        "rollout.json: Invalid JSON: expected ident at line 1 column 2"
    )
    assert _metrics(client)[("afm_rollout_policy_errors_total", frozenset())] == 1


def test_the_probability_histogram_counts_every_array_kept_or_folded() -> None:
    """Arrays are kept and counted in folds of FOLD_EVERY, and the rest before a scrape:
    150 requests cross two folds and leave 22 arrays for the scrape."""
    histogram = _ProbabilityHistogram()
    rng = np.random.default_rng(0)
    arrays = [rng.random(int(rng.integers(1, 50))).astype(np.float32) for _ in range(150)]
    for probability in arrays:
        histogram.observe(("2", "canary"), probability)
    family = next(iter(histogram.collect()))
    every = np.concatenate(arrays)
    buckets = {s.labels["le"]: s.value for s in family.samples if s.name.endswith("_bucket")}
    for edge in PROBABILITY_BUCKETS:
        assert buckets[str(edge)] == np.count_nonzero(every <= edge)
    assert buckets["+Inf"] == len(every)
    total = next(s.value for s in family.samples if s.name.endswith("_sum"))
    assert total == pytest.approx(float(every.sum(dtype=np.float64)))
