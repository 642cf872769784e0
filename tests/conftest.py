"""Shared fixtures: a real Redis, a real model trained and exported once per session."""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


@pytest.hookimpl(optionalhook=True)  # a pytest-xdist hook: unknown without it
def pytest_xdist_make_scheduler(config: pytest.Config, log: object) -> object | None:
    """pytest-xdist's ``--dist loadfile`` (pyproject.toml's addopts: ``-n 2``), with the
    compose modules (tests/integration/test_compose*.py) in one unit: one worker, in order,
    as they share one container engine and one stack (compose_helpers.shared_scale_stack).
    Each other module runs whole on one worker, so what it builds once (a fitted model, a
    started server, a loaded prefix) is still built once."""
    if config.getvalue("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling

    class ComposeTogether(LoadFileScheduling):
        def _split_scope(self, nodeid: str) -> str:
            module = super()._split_scope(nodeid)
            return "compose" if Path(module).name.startswith("test_compose") else module

    return ComposeTogether(config, log)


def run_cli(
    *args: str, env: dict[str, str] | None = None, check: bool = True
) -> subprocess.CompletedProcess:
    """Run ``afm-ctr`` in a subprocess, as a user would."""
    result = subprocess.run(
        [sys.executable, "-m", "model.cli", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        cwd=REPO_ROOT,
    )
    if check and result.returncode != 0:
        raise AssertionError(f"afm-ctr {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
    return result


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """The CLI callback configures the root logger (onto CliRunner's stream) when a test runs
    a command in-process: undo it, so later tests capture only what they ask for."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    logging.captureWarnings(False)


@pytest.fixture(scope="session")
def redis_url() -> str:
    url = os.environ.get("AFM_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
    try:
        redis.Redis.from_url(url, socket_connect_timeout=1).ping()
    except redis.RedisError as exc:
        pytest.fail(
            f"no Redis answers at {url} ({exc}); start one with "
            "`redis-server --daemonize yes --port 6379 --save ''` or set AFM_TEST_REDIS_URL"
        )
    return url


def remove_prefix(redis_url: str, prefix: str) -> None:
    """Delete every key under ``prefix`` (never FLUSHDB: the Redis may be shared)."""
    client = redis.Redis.from_url(redis_url, socket_connect_timeout=1)
    try:
        keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
        if keys:
            client.unlink(*keys)
    finally:
        client.close()


@pytest.fixture
def feature_prefix(redis_url: str) -> Iterator[str]:
    """A unique key prefix, removed afterwards."""
    prefix = f"test:{uuid.uuid4().hex}:"
    yield prefix
    remove_prefix(redis_url, prefix)


def _once_per_run(
    tmp_path_factory: pytest.TempPathFactory, name: str, build: Callable[[Path], object]
) -> Path:
    """A new directory ``name`` filled by ``build``, for a session fixture. Under pytest-xdist
    the workers share it as one process shares a session fixture: the first worker to ask
    builds it in the run's directory above theirs, the others wait for it (a file lock)."""
    if "PYTEST_XDIST_WORKER" not in os.environ:
        out = tmp_path_factory.mktemp(name)
        build(out)
        return out
    run_dir = tmp_path_factory.getbasetemp().parent  # .../pytest-N, above .../pytest-N/popen-gwI
    out, done = run_dir / name, run_dir / f"{name}.done"
    with open(run_dir / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if not done.exists():
            shutil.rmtree(out, ignore_errors=True)  # a worker that failed half-way
            out.mkdir()
            build(out)
            done.touch()
    return out


@pytest.fixture(scope="session")
def synthetic_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small seeded synthetic dataset in ML-1M format."""
    return _once_per_run(
        tmp_path_factory,
        "synthetic",
        lambda out: run_cli(
            "synth", "--out", str(out), "--users", "300", "--movies", "200",
            "--ratings", "20000", "--seed", "7",
        ),
    )  # fmt: skip


def _train_small(synthetic_dir: Path, model_dir: Path, fields: str) -> Path:
    # Small and short on purpose; at the default learning rate (5e-3) three epochs leave the
    # per-example attention barely formed, so this model trains at 1e-2 like it always has.
    run_cli(
        "train", "--dataset", "synthetic", "--data-dir", str(synthetic_dir), "--fields", fields,
        "--epochs", "3", "--embedding-dim", "8", "--attention-factor", "4",
        "--batch-size", "1024", "--learning-rate", "0.01", "--seed", "7",
        "--model-dir", str(model_dir),
    )  # fmt: skip
    return model_dir


@pytest.fixture(scope="session")
def trained_model_dir(synthetic_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Model root holding version 1 (all eight fields), trained for a few epochs on
    `synthetic_dir`."""
    return _once_per_run(
        tmp_path_factory, "models", lambda out: _train_small(synthetic_dir, out, "all")
    )


@pytest.fixture(scope="session")
def seed_fields_model_dir(synthetic_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Like `trained_model_dir`, with the six seed fields only."""
    return _once_per_run(
        tmp_path_factory, "seed-models", lambda out: _train_small(synthetic_dir, out, "seed")
    )


@pytest.fixture(scope="session")
def history_model_dir(synthetic_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Like `trained_model_dir`, with the eight fields and what each user watched."""
    return _once_per_run(
        tmp_path_factory, "history-models", lambda out: _train_small(synthetic_dir, out, "history")
    )


def shared_data(name: str) -> Path:
    """A real MovieLens folder from ../shared/data, or skip with the reason."""
    path = SHARED_DATA / name
    if not path.is_dir():
        pytest.skip(
            f"real MovieLens data not found at {path} (the tests on real data read it "
            "beside the repository, in ../shared/data)"
        )
    return path
