"""Rollout on real models and a real Redis: pinned requests, a sticky canary across requests
and across two service processes, a broken policy file, and canary -> promote -> rollback ->
broken version under load with zero failed requests."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from model.contracts import export_format, rollout
from model.contracts.rollout import RolloutPolicy
from service.settings import Settings
from tests.conftest import REPO_ROOT, run_cli
from tests.integration.serving.helpers import (
    Hammer,
    ServerThread,
    free_port,
    service_client,
    wait_until,
)

pytestmark = pytest.mark.integration

BODY = {"movie_ids": [1, 2, 3, 4, 5]}


def _policy(model_dir: Path, **fields: object) -> None:
    rollout.write_policy(model_dir, RolloutPolicy.model_validate(fields))


@pytest.fixture
def canary_dir(copy_model: Callable[..., Path]) -> Path:
    """Versions 1 and 2 (copies of one export), stable 1 with 2 as a 40 % canary."""
    model_dir = copy_model(1, 2)
    _policy(model_dir, stable=1, canary=2, percent=40)
    return model_dir


@pytest.fixture
def client(canary_dir: Path, redis_url: str, loaded_prefix: str) -> Iterator[TestClient]:
    settings = Settings(
        model_dir=canary_dir,
        redis_url=redis_url,
        redis_prefix=loaded_prefix,
        reload_interval=0.1,
        redis_timeout=5.0,  # 1,000 requests in a row: a busy CI machine stalls one past 0.5 s
    )
    with service_client(settings) as client:
        wait_until(lambda: len(client.get("/model").json()["loaded"]) == 2, what="the canary")
        yield client


def test_pinned_versions_score_and_an_unloaded_one_is_404(client: TestClient) -> None:
    for version in (1, 2):
        body = {"user_id": 1, **BODY, "model_version": version}
        assert client.post("/score", json=body).json()["model_version"] == version
        params = {"user_id": 1, "movie_id": 2, "model_version": version}
        assert client.get("/explain", params=params).json()["model_version"] == version
    response = client.post("/score", json={"user_id": 1, **BODY, "model_version": 3})
    assert response.status_code == 404
    assert (
        response.json()["detail"] == "model version 3 is not loaded; loaded: 1 (stable), 2 (canary)"
    )


def test_a_user_sees_one_version_across_1000_requests(client: TestClient) -> None:
    seen: dict[int, set[int]] = {}
    for request in range(1000):
        user_id = 1 + request % 50
        response = client.post("/score", json={"user_id": user_id, **BODY})
        seen.setdefault(user_id, set()).add(response.json()["model_version"])
    expected = {u: {2 if rollout.in_canary(u, 2, 40) else 1} for u in seen}
    assert seen == expected
    assert {1, 2} == set().union(*seen.values())  # both arms really served
    explained = client.get("/explain", params={"user_id": 1, "movie_id": 2}).json()
    assert explained["model_version"] == next(iter(seen[1]))


def test_model_lists_roles_and_a_broken_policy_keeps_the_last_good_one(
    client: TestClient, canary_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    loaded = client.get("/model").json()["loaded"]
    assert [(v["version"], v["role"], v["percent"]) for v in loaded] == [
        (1, "stable", 60.0),
        (2, "canary", 40.0),
    ]
    with caplog.at_level(logging.ERROR, logger="service.model_registry"):
        rollout.policy_path(canary_dir).write_text('{"stable": 2, "canary": 2, "percent": 40}')
        wait_until(lambda: "afm_rollout_policy_errors_total 1.0" in client.get("/metrics").text)
    info = client.get("/model").json()
    assert "canary and stable are both version 2" in info["rollout"]["error"]
    assert info["rollout"]["policy"]["stable"] == 1 and info["version"] == 1
    assert [r.getMessage() for r in caplog.records if "ignoring" in r.getMessage()] == [
        f"ignoring rollout policy: {info['rollout']['error']} "
        "(keeping: stable 1, canary 2 for 40% of users)"
    ]
    _policy(canary_dir, stable=2, previous=1)  # fixed: followed again
    wait_until(lambda: client.get("/model").json()["version"] == 2, what="the fixed policy")
    assert client.get("/model").json()["rollout"]["error"] is None


@pytest.fixture
def two_services(
    canary_dir: Path, redis_url: str, loaded_prefix: str, tmp_path: Path
) -> Iterator[list[str]]:
    """Two `afm-ctr serve` processes on the same model directory (logs in ``tmp_path``)."""
    env = {**os.environ, "AFM_REDIS_PREFIX": loaded_prefix, "AFM_ACCESS_LOG": "false"}
    ports = [free_port(), free_port()]
    logs = [tmp_path / f"serve-{port}.log" for port in ports]
    outputs = [log.open("w") for log in logs]
    serve = [sys.executable, "-m", "model.cli", "serve", "--model-dir", str(canary_dir)]
    processes = [
        subprocess.Popen(
            [*serve, "--redis-url", redis_url, "--port", str(port)],
            cwd=REPO_ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=output,
        )
        for port, output in zip(ports, outputs, strict=True)
    ]
    urls = [f"http://127.0.0.1:{port}" for port in ports]
    try:
        for url, process, log in zip(urls, processes, logs, strict=True):
            wait_until(lambda u=url, p=process, f=log: _loaded(u, p, f) == 2, timeout=180, what=url)
        yield urls
    finally:
        for process in processes:
            process.terminate()
            process.wait(timeout=30)
        for output in outputs:
            output.close()


def _loaded(url: str, process: subprocess.Popen, log: Path) -> int:
    if process.poll() is not None:
        raise AssertionError(f"service exited:\n{log.read_text()}")
    try:
        return len(httpx.get(f"{url}/model", timeout=5).json().get("loaded", []))
    except (httpx.HTTPError, ValueError):
        return 0


def test_two_service_processes_put_each_user_on_the_same_version(two_services: list[str]) -> None:
    answers: list[dict[int, set[int]]] = [{}, {}]
    for url, seen in zip(two_services, answers, strict=True):
        with httpx.Client(base_url=url, timeout=30) as http:
            for request in range(300):
                user_id = 1 + request % 100
                version = http.post("/score", json={"user_id": user_id, **BODY}).json()
                seen.setdefault(user_id, set()).add(version["model_version"])
    assert answers[0] == answers[1]
    assert all(len(versions) == 1 for versions in answers[0].values())
    assert {1, 2} == set().union(*answers[0].values())


def test_canary_promote_rollback_and_a_broken_version_under_load(
    copy_model: Callable[..., Path], redis_url: str, loaded_prefix: str
) -> None:
    """Every step through `afm-ctr rollout`, as an operator would, while 4 clients score."""
    model_dir = copy_model(1)
    _policy(model_dir, stable=1)
    settings = Settings(
        model_dir=model_dir, redis_url=redis_url, redis_prefix=loaded_prefix, reload_interval=0.1
    )
    users = [list(range(1 + 10 * i, 11 + 10 * i)) for i in range(4)]  # 40 users

    def step(*args: str) -> None:
        run_cli("rollout", "--model-dir", str(model_dir), *args)

    with ServerThread(settings) as server, httpx.Client(base_url=server.url) as probe:
        wait_until(lambda: probe.get("/readyz").status_code == 200, what="version 1")

        def roles() -> dict[str, int]:
            return {v["role"]: v["version"] for v in probe.get("/model").json()["loaded"]}

        def traffic(hammer: Hammer, what: str) -> None:
            start = hammer.count()
            wait_until(lambda: hammer.count() >= start + 40, what=f"traffic {what}")

        with Hammer(server.url, users=users) as hammer:
            traffic(hammer, "on version 1")
            copy_model(2)  # held back by the policy until named
            step("--canary", "2", "--percent", "50")
            wait_until(lambda: 2 in hammer.versions_seen(), what="canary 2 in responses")
            traffic(hammer, "with the canary")
            step("--promote")
            wait_until(lambda: roles() == {"stable": 2, "previous": 1}, what="promotion")
            traffic(hammer, "after promotion")
            step("--rollback")
            wait_until(lambda: roles() == {"stable": 1}, what="rollback")
            traffic(hammer, "after rollback")

            broken = model_dir / ".tmp-3"  # metadata present, SavedModel missing
            broken.mkdir()
            (broken / export_format.METADATA_FILE).write_text(
                (model_dir / "2" / export_format.METADATA_FILE).read_text()
            )
            broken.rename(model_dir / "3")
            step("--canary", "3", "--percent", "50")
            wait_until(
                lambda: probe.get("/model").json()["refused_versions"] == [3], what="refusal"
            )
            step("--promote")  # the policy now says stable 3
            wait_until(
                lambda: probe.get("/model").json()["rollout"]["policy"]["stable"] == 3,
                what="the policy naming 3",
            )
            traffic(hammer, "with version 3 refused")
            assert roles() == {"stable": 1}

    statuses = hammer.statuses()
    assert statuses and set(statuses) == {200}, [s for s in statuses if s != 200][:5]
    assert hammer.versions_seen() == {1, 2}  # never the broken 3
    assert all(results[-1][1] == 1 for results in hammer.results)
