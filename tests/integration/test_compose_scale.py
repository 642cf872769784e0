"""The `scale` compose profile for real: three API replicas behind HAProxy.

One project for the module (compose_helpers.shared_scale_stack, ``COMPOSE_PROFILES=scale``):
the `api` service on its own port plus two `api-replica` containers, and the `lb` service on
a free port; the one test_compose.py leaves when it runs just before (then the replicas serve
the version its retraining exported, not version 1), else a stack of its own. Load comes
from a bounded client (a few threads, each one request at a time) through the load balancer,
while replicas are stopped, started and handed a new model.
"""

from __future__ import annotations

import http.client
import json
import re
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field

import httpx
import pytest

from tests.integration.compose_helpers import (
    API_KEY,
    AUTH,
    READY_TIMEOUT,
    UP_TIMEOUT,
    Stack,
    shared_scale_stack,
)

pytestmark = [pytest.mark.integration, pytest.mark.containers, pytest.mark.slow]

REPLICA_SERVICES = ("api", "api-replica")
SCORE = {"user_id": 1, "movie_ids": [1, 2, 3]}


@dataclass(frozen=True)
class Scaled:
    stack: Stack
    lb_url: str

    def version(self) -> int:
        """The model version `api` serves (all replicas serve it between tests)."""
        response = httpx.get(f"{self.stack.base_url}/model", headers=AUTH, timeout=10)
        assert response.status_code == 200, response.text
        return response.json()["version"]

    def hostnames(self) -> dict[str, str]:
        """Container name -> hostname (what /model calls `replica`) of every replica."""
        names = [row["Name"] for s in REPLICA_SERVICES for row in self.stack.containers(s)]
        return {
            name: self.stack.docker("inspect", "--format", "{{.Config.Hostname}}", name).strip()
            for name in names
        }

    def versions_seen(self, until: set[tuple[str, int]]) -> set[tuple[str, int]]:
        """(replica, model version) pairs /model reports through the load balancer, polled
        until every pair of ``until`` was seen or READY_TIMEOUT passed."""
        seen: set[tuple[str, int]] = set()
        deadline = time.monotonic() + READY_TIMEOUT
        with httpx.Client(base_url=self.lb_url, headers=AUTH, timeout=10) as client:
            while not until <= seen and time.monotonic() < deadline:
                response = client.get("/model")
                if response.status_code == 200:
                    seen.add((response.json()["replica"], response.json()["version"]))
                time.sleep(0.1)
        return seen


@dataclass
class Load:
    """Results of the bounded client: answers other than 200 and transport errors."""

    ok: int = 0
    failures: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, failure: str | None) -> None:
        with self.lock:
            if failure is None:
                self.ok += 1
            else:
                self.failures.append(failure)


@contextmanager
def scoring_load(url: str, clients: int, pause: float) -> Iterator[Load]:
    """``clients`` threads POSTing /score through ``url``, each waiting ``pause`` seconds
    between requests (the replicas and the trainer share the cores), until the block ends."""
    load, stop = Load(), threading.Event()

    def client() -> None:
        with httpx.Client(base_url=url, headers=AUTH, timeout=30) as http:
            while not stop.is_set():
                try:
                    response = http.post("/score", json=SCORE)
                except httpx.TransportError as exc:
                    load.record(f"{type(exc).__name__}: {exc}")
                    continue
                ok = response.status_code == 200
                load.record(None if ok else f"{response.status_code} {response.text[:200]}")
                time.sleep(pause)

    with ThreadPoolExecutor(max_workers=clients) as pool:
        futures = [pool.submit(client) for _ in range(clients)]
        try:
            yield load
        finally:
            stop.set()
            for future in futures:
                future.result()


@pytest.fixture(scope="module")
def scaled(request: pytest.FixtureRequest) -> Iterator[Scaled]:
    with shared_scale_stack(request, fresh=False) as (stack, lb_url):
        scaled = Scaled(stack, lb_url)
        every = {(host, scaled.version()) for host in scaled.hostnames().values()}
        assert every <= scaled.versions_seen(until=every), stack.logs("lb")
        yield scaled


def test_three_replicas_answer_through_the_load_balancer(scaled: Scaled) -> None:
    hosts = scaled.hostnames()
    assert len(hosts) == 3 and len(set(hosts.values())) == 3, hosts
    response = httpx.post(f"{scaled.lb_url}/score", json=SCORE, headers=AUTH, timeout=10)
    assert response.status_code == 200 and response.json()["model_version"] == scaled.version()
    # /metrics names its replica too (the fixture already saw each one's /model).
    metrics = httpx.get(f"{scaled.lb_url}/metrics", timeout=10).text
    named = re.search(r'^afm_replica_info\{hostname="([^"]+)"\} 1\.0$', metrics, re.MULTILINE)
    assert named and named.group(1) in hosts.values(), metrics[:500]


def test_sigterm_finishes_the_request_in_flight(scaled: Scaled) -> None:
    """`docker compose stop api` while a request's body is still arriving: the replica stops
    accepting connections but answers that request, then exits by itself."""
    stack = scaled.stack
    body = json.dumps(SCORE).encode()
    host, port = stack.base_url.removeprefix("http://").split(":")
    in_flight = http.client.HTTPConnection(host, int(port), timeout=60)
    in_flight.putrequest("POST", "/score")
    in_flight.putheader("content-type", "application/json")
    in_flight.putheader("x-api-key", API_KEY)
    in_flight.putheader("content-length", str(len(body)))
    in_flight.endheaders(body[:10])  # headers and the start of the body: the request has begun
    time.sleep(1)  # let uvicorn read them before the signal (an ordering aid, not a timing check)
    with ThreadPoolExecutor(max_workers=1) as pool:
        stopping = pool.submit(stack.compose, "stop", "api", timeout=90)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and _accepts(stack.base_url):
            time.sleep(0.2)
        assert not _accepts(stack.base_url), "the replica still accepts connections"
        assert not stopping.done(), "the replica exited with a request in flight"
        in_flight.send(body[10:])
        response = in_flight.getresponse()
        answer = response.read()
        stopping.result()
    assert response.status == 200, answer
    assert [s["movie_id"] for s in json.loads(answer)["scores"]] == SCORE["movie_ids"]
    state = stack.service_state("api")
    assert state["State"] == "exited" and state["ExitCode"] != 137, state  # 137: SIGKILLed
    stack.compose("start", "api", timeout=UP_TIMEOUT)
    stack.wait_until_ready()


def test_stopping_and_starting_replicas_fails_no_request(scaled: Scaled) -> None:
    """Both `api-replica` containers stopped and started again at once, `api` alone serving
    meanwhile: each restarted replica gets a new address and counts as up before it listens,
    so without `observe layer4` in haproxy.cfg a request's retries can all land on the two
    (benchmarks/results.md: "replicas restarting behind HAProxy")."""
    hosts, version = scaled.hostnames(), scaled.version()
    every = {(host, version) for host in hosts.values()}
    assert every <= scaled.versions_seen(until=every), scaled.stack.logs("lb")
    names = [row["Name"] for row in scaled.stack.containers("api-replica")]
    with scoring_load(scaled.lb_url, clients=3, pause=0.05) as load:
        _wait_for(lambda: load.ok > 0, "no request succeeded before the stop")
        scaled.stack.docker("stop", *names, timeout=90)
        ok_before = load.ok
        _wait_for(lambda: load.ok > ok_before + 30, "requests stopped succeeding")
        scaled.stack.docker("start", *names, timeout=90)
        back = {(hosts[name], version) for name in names}
        assert back <= scaled.versions_seen(until=back), scaled.stack.logs("lb", "api-replica")
    failed = f"{len(load.failures)} of {load.ok} failed: {load.failures[:2]}"
    assert load.failures == [], f"{failed}\n{scaled.stack.logs('lb')}"
    assert load.ok > ok_before + 30


def test_rollout_reaches_every_replica_under_load(scaled: Scaled) -> None:
    """RETRAIN=1 writes the next version into the shared models volume; each replica swaps
    it in."""
    every = {(host, scaled.version() + 1) for host in scaled.hostnames().values()}
    with scoring_load(scaled.lb_url, clients=1, pause=0.2) as load:  # light: training needs cores
        trainer = scaled.stack.run_trainer("AFM_RETRAIN=1")
        assert trainer.returncode == 0, trainer.stdout
        seen = scaled.versions_seen(until=every)
    assert every <= seen, f"seen: {sorted(seen)}"
    assert load.failures == [], f"{len(load.failures)} of {load.ok} failed: {load.failures[:5]}"
    assert load.ok > 0


def _accepts(base_url: str) -> bool:
    try:
        httpx.get(f"{base_url}/healthz", timeout=2)
    except httpx.TransportError:
        return False
    return True


def _wait_for(condition: Callable[[], bool], message: str) -> None:
    deadline = time.monotonic() + READY_TIMEOUT
    while not condition():
        assert time.monotonic() < deadline, message
        time.sleep(0.1)
