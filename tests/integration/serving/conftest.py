"""Fixtures for the service against a real Redis and the real exported model.

One feature set and one app per module keep these tests to seconds; tests that mutate the
model directory or Redis (hot reload, outage) build their own.
"""

from __future__ import annotations

import os
import shutil
import signal
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from model.config import DataConfig
from model.data.load_features import load_features
from model.data.movielens import FeatureSet, load_feature_set
from service.settings import Settings
from tests.conftest import remove_prefix, run_cli
from tests.integration.serving.helpers import (
    RedisProcess,
    service_client,
)


@pytest.fixture
def private_redis() -> Iterator[RedisProcess]:
    """A redis-server of the test's own, to stop, freeze (SIGSTOP) and restart."""
    server = RedisProcess().start()
    yield server
    if server.process is not None:
        os.kill(server.process.pid, signal.SIGCONT)  # in case a test left it frozen
    server.stop()


@pytest.fixture(scope="session")
def synthetic_feature_set(synthetic_dir: Path) -> FeatureSet:
    return load_feature_set(DataConfig(dataset="synthetic", data_dir=synthetic_dir))


@pytest.fixture(scope="session")
def synthetic_users(synthetic_feature_set: FeatureSet) -> dict:
    return synthetic_feature_set.users


@pytest.fixture(scope="session")
def synthetic_movies(synthetic_feature_set: FeatureSet) -> dict:
    return synthetic_feature_set.movies


@pytest.fixture(scope="module")
def loaded_prefix(redis_url: str, synthetic_feature_set: FeatureSet) -> Iterator[str]:
    """A unique prefix holding the synthetic feature set (as `load-features` writes it);
    removed afterwards."""
    prefix = f"test:{uuid.uuid4().hex}:"
    fs = synthetic_feature_set
    load_features(
        fs.users,
        fs.movies,
        redis_url,
        prefix,
        source=fs.source,
        labels=fs.labels,
        popular=fs.popular,
        sample_users=fs.sample_users,
    )
    yield prefix
    remove_prefix(redis_url, prefix)


@pytest.fixture(scope="module")
def history_prefix(redis_url: str, synthetic_dir: Path) -> Iterator[str]:
    """The synthetic feature set, users' watched movies included, as the CLI loads it."""
    prefix = f"test:{uuid.uuid4().hex}:"
    run_cli(
        "load-features", "--dataset", "synthetic", "--data-dir", str(synthetic_dir),
        "--redis-url", redis_url, "--prefix", prefix,
    )  # fmt: skip
    yield prefix
    remove_prefix(redis_url, prefix)


@pytest.fixture
def copy_model(tmp_path: Path, trained_model_dir: Path) -> Callable[..., Path]:
    """Copy the session's version 1 into a private model dir under new version numbers
    (``source`` picks another model root, e.g. the six-field one)."""
    root = tmp_path / "models"
    root.mkdir()

    def copy(*versions: int, source: Path = trained_model_dir) -> Path:
        for version in versions:
            staging = root / f".tmp-{version}"
            shutil.copytree(source / "1", staging)
            staging.rename(root / str(version))  # the export contract: appear by rename
        return root

    return copy


@pytest.fixture(scope="module")
def api(trained_model_dir: Path, redis_url: str, loaded_prefix: str) -> Iterator[TestClient]:
    settings = Settings(
        model_dir=trained_model_dir, redis_url=redis_url, redis_prefix=loaded_prefix
    )
    with service_client(settings) as client:
        yield client
