"""`docker compose up` for real: build the image, run Redis + trainer + API offline, score.

One compose project for the module (tests/integration/compose_helpers.py: a unique name, a
free port, torn down with its volumes whatever happens); the synthetic dataset and one epoch
keep the trainer short. It is a fresh stack of the `scale` profile (`api` on its own port, as
without the profile, plus replicas behind a load balancer), which test_compose_scale.py, run
next, takes over rather than starting its own.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from model.contracts import export_format
from tests.integration.compose_helpers import (
    AUTH,
    READY_TIMEOUT,
    UP_TIMEOUT,
    Stack,
    shared_scale_stack,
)

pytestmark = [pytest.mark.integration, pytest.mark.containers, pytest.mark.slow]


@pytest.fixture(scope="module")
def stack(request: pytest.FixtureRequest) -> Iterator[Stack]:
    with shared_scale_stack(request, fresh=True) as (stack, _lb_url):
        yield stack


def test_trainer_exits_zero_and_api_is_healthy(stack: Stack) -> None:
    trainer = stack.service_state("trainer")
    assert trainer["State"] == "exited" and trainer["ExitCode"] == 0, trainer
    assert stack.service_state("api")["Health"] == "healthy"
    assert stack.compose("exec", "-T", "api", "id", "-u").strip() != "0", "API runs as root"


def test_score_through_published_port(stack: Stack) -> None:
    keyless = httpx.post(f"{stack.base_url}/score", json={"user_id": 1, "movie_ids": [1]})
    assert keyless.status_code == 401, keyless.text  # compose turns API keys on by default
    response = httpx.post(
        f"{stack.base_url}/score",
        json={"user_id": 1, "movie_ids": [1, 2, 3]},
        headers=AUTH,
        timeout=10,
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model_version"] == 1
    assert body["user_known"] is True  # the trainer loaded the user features into Redis
    assert [score["movie_id"] for score in body["scores"]] == [1, 2, 3]
    assert all(0.0 < score["probability"] < 1.0 for score in body["scores"])


def test_explain_through_published_port(stack: Stack) -> None:
    response = httpx.get(f"{stack.base_url}/explain?user_id=1&movie_id=2", headers=AUTH, timeout=10)
    assert response.status_code == 200, response.text
    pairs = response.json()["pairs"]
    assert sorted(tuple(pair["fields"]) for pair in pairs) == sorted(
        export_format.pairs(export_format.ALL_FIELDS)
    )
    assert sum(pair["weight"] for pair in pairs) == pytest.approx(1.0, abs=1e-4)
    assert 0.0 < response.json()["probability"] < 1.0


def test_second_trainer_run_keeps_the_model(stack: Stack) -> None:
    """A model exists: the trainer skips training, reloads features and exits 0."""
    trainer = stack.run_trainer()
    assert trainer.returncode == 0, trainer.stdout
    assert "not training" in trainer.stdout
    assert "loading user features" in trainer.stdout
    model = httpx.get(f"{stack.base_url}/model", headers=AUTH, timeout=10).json()
    assert model["version"] == 1


def test_retrain_rolls_out_a_new_version_without_downtime(stack: Stack) -> None:
    """RETRAIN=1 exports version 2 into the shared volume; the API swaps it in while serving."""
    request = {"user_id": 1, "movie_ids": [1, 2, 3]}
    versions_seen: set[int] = set()
    failures: list[str] = []
    with (
        ThreadPoolExecutor(max_workers=1) as pool,
        httpx.Client(base_url=stack.base_url, headers=AUTH) as client,
    ):
        retrain = pool.submit(stack.run_trainer, "AFM_RETRAIN=1")
        deadline = time.monotonic() + UP_TIMEOUT + READY_TIMEOUT
        while time.monotonic() < deadline and 2 not in versions_seen:
            response = client.post("/score", json=request, timeout=10)
            if response.status_code == 200:
                versions_seen.add(response.json()["model_version"])
            else:
                failures.append(f"{response.status_code} {response.text}")
            if retrain.done() and retrain.result().returncode != 0:
                break
            time.sleep(0.2)
        output = retrain.result()
    assert output.returncode == 0, output.stdout
    assert failures == [], f"requests failed during the rollout: {failures}"
    assert versions_seen == {1, 2}, f"versions served: {versions_seen}\n{output.stdout}"
