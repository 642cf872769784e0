"""`docker compose up` for real: build the image, run Redis + trainer + API offline, score.

Needs a docker CLI with compose that reaches an engine. On machines without Docker,
``../shared/containers/setup.sh`` provides one backed by podman (see its README); this module
runs it when ``docker`` does not answer by itself, and skips when neither exists.

One compose project per test session, with a unique name and a free port, torn down with its
volumes whatever happens. The synthetic dataset and one epoch keep the trainer short.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import httpx
import pytest

from model import contract
from tests.conftest import REPO_ROOT

pytestmark = [pytest.mark.integration, pytest.mark.containers, pytest.mark.slow]

SETUP_SCRIPT = REPO_ROOT.parent / "shared" / "containers" / "setup.sh"
BUILD_TIMEOUT = 900  # a cold build downloads TensorFlow; a cached one takes seconds
UP_TIMEOUT = 300  # Redis healthy, trainer done, API container started
READY_TIMEOUT = 120  # API container started -> /readyz 200 and healthcheck "healthy"
SMALL_RUN = {
    "DATASET": "synthetic",
    "EPOCHS": "1",
    "SYNTH_USERS": "200",
    "SYNTH_MOVIES": "150",
    "SYNTH_RATINGS": "8000",
}


def _docker_answers(env: dict[str, str]) -> bool:
    if shutil.which("docker", path=env.get("PATH")) is None:
        return False
    probe = subprocess.run(["docker", "info"], env=env, capture_output=True, timeout=60)
    return probe.returncode == 0


def _container_env() -> dict[str, str]:
    """Environment in which `docker compose` works, or skip with the reason."""
    env = dict(os.environ)
    if env.get("DOCKER_HOST") and _docker_answers(env):
        return env
    if not SETUP_SCRIPT.is_file():
        if _docker_answers(env):
            return env
        pytest.skip(f"no working `docker` and no {SETUP_SCRIPT} to provide one")
    setup = subprocess.run(
        ["bash", str(SETUP_SCRIPT)], capture_output=True, text=True, timeout=600, cwd=REPO_ROOT
    )
    if setup.returncode != 0:
        pytest.fail(f"{SETUP_SCRIPT} failed:\n{setup.stderr[-3000:]}")
    for line in setup.stdout.splitlines():  # lines of the form `export NAME=value`
        name, _, value = line.removeprefix("export ").partition("=")
        if line.startswith("export ") and name:
            env[name] = value
    return env


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass(frozen=True)
class Stack:
    project: str
    env: dict[str, str]
    base_url: str

    def compose(self, *args: str, timeout: float = 120, check: bool = True) -> str:
        """Run `docker compose -p <project> ARGS` in the repo root; its stdout."""
        result = subprocess.run(
            ["docker", "compose", "-p", self.project, *args],
            cwd=REPO_ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"docker compose {' '.join(args)} exited {result.returncode}:\n"
                f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}\n{self.logs()}"
            )
        return result.stdout

    def run_trainer(self, *env: str) -> subprocess.CompletedProcess:
        """`docker compose run --rm --no-deps trainer` with extra NAME=value variables.

        ``--no-deps``: Redis already runs; without it Compose may recreate it (always so on
        podman 4.3, whose network IDs Compose misreads), which is downtime, not a rollout.
        """
        flags = [arg for pair in env for arg in ("-e", pair)]
        return subprocess.run(
            ["docker", "compose", "-p", self.project, "run", "--rm", "--no-deps", "-T", *flags,
             "trainer"],
            cwd=REPO_ROOT, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True, timeout=UP_TIMEOUT,
        )  # fmt: skip

    def logs(self) -> str:
        result = subprocess.run(
            ["docker", "compose", "-p", self.project, "logs", "--no-color", "--tail", "60"],
            cwd=REPO_ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        return f"--- compose logs ---\n{result.stdout[-6000:]}"

    def service_state(self, service: str) -> dict:
        """`docker compose ps` entry of a service (running or exited)."""
        out = self.compose("ps", "--all", "--format", "json", service)
        # Compose prints one JSON object per line (older versions: one JSON list).
        rows = [json.loads(line) for line in out.splitlines() if line.strip()]
        rows = rows[0] if rows and isinstance(rows[0], list) else rows
        assert rows, f"no container for service {service}\n{self.logs()}"
        return rows[0]

    def wait_until_ready(self) -> None:
        """Poll /readyz and the API container's health until both say so, or fail."""
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            health = self.service_state("api").get("Health", "")
            try:
                ready = httpx.get(f"{self.base_url}/readyz", timeout=2).status_code == 200
            except httpx.TransportError:
                ready = False
            if ready and health == "healthy":
                return
            time.sleep(1)
        pytest.fail(f"API not ready/healthy within {READY_TIMEOUT}s\n{self.logs()}")


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    env = {**_container_env(), **SMALL_RUN}
    port = _free_port()
    env["API_PORT"] = str(port)
    stack = Stack(f"afm-test-{uuid.uuid4().hex[:8]}", env, f"http://127.0.0.1:{port}")
    try:
        stack.compose("build", timeout=BUILD_TIMEOUT)
        stack.compose("up", "-d", timeout=UP_TIMEOUT)
        stack.wait_until_ready()
        yield stack
    finally:
        stack.compose("down", "-v", "--remove-orphans", "--timeout", "5", timeout=180, check=False)


def test_trainer_exits_zero_and_api_is_healthy(stack: Stack) -> None:
    trainer = stack.service_state("trainer")
    assert trainer["State"] == "exited" and trainer["ExitCode"] == 0, trainer
    assert stack.service_state("api")["Health"] == "healthy"
    assert stack.compose("exec", "-T", "api", "id", "-u").strip() != "0", "API runs as root"


def test_score_through_published_port(stack: Stack) -> None:
    response = httpx.post(
        f"{stack.base_url}/score", json={"user_id": 1, "movie_ids": [1, 2, 3]}, timeout=10
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model_version"] == 1
    assert body["user_known"] is True  # the trainer loaded the user features into Redis
    assert [score["movie_id"] for score in body["scores"]] == [1, 2, 3]
    assert all(0.0 < score["probability"] < 1.0 for score in body["scores"])


def test_explain_through_published_port(stack: Stack) -> None:
    response = httpx.get(f"{stack.base_url}/explain?user_id=1&movie_id=2", timeout=10)
    assert response.status_code == 200, response.text
    pairs = response.json()["pairs"]
    assert sorted(tuple(pair["fields"]) for pair in pairs) == sorted(
        contract.pairs(contract.ALL_FIELDS)
    )
    assert sum(pair["weight"] for pair in pairs) == pytest.approx(1.0, abs=1e-4)
    assert 0.0 < response.json()["probability"] < 1.0


def test_second_trainer_run_keeps_the_model(stack: Stack) -> None:
    """A model exists: the trainer skips training, reloads features and exits 0."""
    trainer = stack.run_trainer()
    assert trainer.returncode == 0, trainer.stdout
    assert "not training" in trainer.stdout
    assert "loading user features" in trainer.stdout
    model = httpx.get(f"{stack.base_url}/model", timeout=10).json()
    assert model["version"] == 1


def test_retrain_rolls_out_a_new_version_without_downtime(stack: Stack) -> None:
    """RETRAIN=1 exports version 2 into the shared volume; the API swaps it in while serving."""
    request = {"user_id": 1, "movie_ids": [1, 2, 3]}
    versions_seen: set[int] = set()
    failures: list[str] = []
    with ThreadPoolExecutor(max_workers=1) as pool, httpx.Client(base_url=stack.base_url) as client:
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
