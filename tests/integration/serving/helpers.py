"""Helpers for the service integration tests: waiting, a uvicorn thread, a private Redis."""

from __future__ import annotations

import shutil
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import httpx
import pytest
import redis
import uvicorn
from fastapi.testclient import TestClient

from service.app import create_app
from service.schemas import ExplainResponse, FeatureSet, ScoreResponse
from service.settings import Settings


def wait_until(condition: Callable[[], bool], timeout: float = 60, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


def wait_ready(client: TestClient) -> None:
    wait_until(lambda: client.get("/readyz").status_code == 200, what="/readyz to turn 200")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ServerThread:
    """A real uvicorn server on a free port, in a thread of this process."""

    def __init__(self, settings: Settings) -> None:
        self.port = free_port()
        config = uvicorn.Config(
            create_app(settings), host="127.0.0.1", port=self.port, log_level="warning"
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> ServerThread:
        self.thread.start()
        wait_until(lambda: self.server.started, what="uvicorn to start")
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


class Hammer:
    """``clients`` threads posting /score back to back, client ``i`` cycling through
    ``users[i]`` (default: user ``1 + i`` only); records (status, model_version, user_id)."""

    def __init__(
        self, url: str, clients: int = 4, users: Sequence[Sequence[int]] | None = None
    ) -> None:
        self.url = url
        self.users = users or [[1 + i] for i in range(clients)]
        self.stop = threading.Event()
        self.results: list[list[tuple[int, int | None, int]]] = [[] for _ in self.users]
        self.impression_ids: list[str] = []  # of the 200 replies
        self.threads = [
            threading.Thread(target=self._run, args=(i,)) for i in range(len(self.users))
        ]

    def _run(self, index: int) -> None:
        users = self.users[index]
        with httpx.Client(base_url=self.url, timeout=30) as client:
            while not self.stop.is_set():
                user_id = users[len(self.results[index]) % len(users)]
                body = {"user_id": user_id, "movie_ids": list(range(1, 101)), "top_k": 10}
                try:
                    response = client.post("/score", json=body)
                    version = response.json().get("model_version")
                    if response.status_code == 200 and response.json()["impression_id"]:
                        self.impression_ids.append(response.json()["impression_id"])
                    self.results[index].append((response.status_code, version, user_id))
                except httpx.HTTPError as exc:  # a dropped connection is a failure too
                    self.results[index].append((-1, repr(exc), user_id))  # type: ignore[arg-type]

    def count(self) -> int:
        return sum(len(r) for r in self.results)

    def statuses(self) -> list[int]:
        return [status for results in self.results for status, _, _ in results]

    def versions_seen(self) -> set:
        return {v for results in self.results for _, v, _ in results}

    def __enter__(self) -> Hammer:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=30)


@contextmanager
def redis_commands(redis_url: str) -> Iterator[list[dict]]:
    """Every command the Redis at ``redis_url`` runs while the block runs, as MONITOR reports
    them (redis-py's parsed entries: ``client_type`` "tcp" or "lua", ``client_address``,
    ``client_port``, ``command``), from any client: tell them apart by connection."""
    seen: list[dict] = []
    end = f"end-of-block-{uuid.uuid4().hex}"
    client = redis.Redis.from_url(redis_url)
    started = threading.Event()

    def watch() -> None:
        with client.monitor() as monitor:  # MONITOR is on once this returns
            started.set()
            while end not in (command := monitor.next_command())["command"]:
                seen.append(command)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    if not started.wait(10):
        raise AssertionError("MONITOR did not start")
    try:
        yield seen
    finally:
        client.echo(end)  # the last command the watcher sees
        thread.join(timeout=10)
        client.close()


def commands_of(seen: list[dict], marker: str) -> list[str]:
    """The commands sent on the connections that sent one mentioning ``marker`` (a key
    prefix): one client's commands, whatever they name; Lua's own calls left out."""
    clients = {
        (c["client_address"], c["client_port"])
        for c in seen
        if c["client_type"] == "tcp" and marker in c["command"]
    }
    return [c["command"] for c in seen if (c["client_address"], c["client_port"]) in clients]


class RedisProcess:
    """A private redis-server on a free port that a test may stop, freeze and restart."""

    def __init__(
        self, port: int | None = None, password: str | None = None, options: Sequence[str] = ()
    ) -> None:
        """``options``: more redis-server options, after (so overriding) the defaults."""
        if shutil.which("redis-server") is None:
            pytest.fail("redis-server is not installed (apt-get install redis-server)")
        self.port = port or free_port()
        self.password = password
        self.options = list(options)
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisProcess:
        self.process = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                *(["--requirepass", self.password] if self.password else []),
                *self.options,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = redis.Redis(port=self.port, password=self.password, socket_connect_timeout=0.2)
        wait_until(lambda: _pings(client), timeout=10, what=f"redis-server on {self.port}")
        client.close()
        return self

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=10)
            self.process = None


def _pings(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False


RESPONSE_MODELS = {"/score": ScoreResponse, "/explain": ExplainResponse, "/feature-set": FeatureSet}


def validate_against_schema(response: httpx.Response) -> None:
    """An httpx response hook: every 200 body of a documented route must parse as its
    response model, so the published schemas cannot drift from what is sent (a CORS
    preflight's 200 is not the route's)."""
    model = RESPONSE_MODELS.get(response.request.url.path)
    if model is not None and response.status_code == 200 and response.request.method != "OPTIONS":
        response.read()
        model.model_validate_json(response.content)


def schema_checked(client: TestClient) -> TestClient:
    client.event_hooks["response"].append(validate_against_schema)
    return client


@contextmanager
def service_client(settings: Settings) -> Iterator[TestClient]:
    """The service with ``settings`` in a TestClient (its lifespan running), every reply
    checked against the OpenAPI schema, once /readyz answers 200."""
    with schema_checked(TestClient(create_app(settings))) as client:
        wait_ready(client)
        yield client
