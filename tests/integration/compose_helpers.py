"""A real compose project for the compose tests: find a docker CLI, run one stack, tear it down.

Needs a docker CLI with compose that reaches an engine. On machines without Docker,
``../shared/containers/setup.sh`` provides one backed by podman (see its README); it is run
when ``docker`` does not answer by itself, its ``teardown.sh`` stops again what it started,
and the tests skip when neither exists.

Every stack has a unique project name and free host ports and is removed with its volumes
whatever happens. The synthetic dataset and one epoch keep the trainer short. All stacks use
the default image tag, so a second compose test module reuses the first one's build.
``shared_scale_stack`` goes further: the compose modules that run back to back share one
stack of the `scale` profile (one build, one trainer run, one set of replicas to start),
instead of a stack each.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.conftest import REPO_ROOT

SETUP_SCRIPT = REPO_ROOT.parent / "shared" / "containers" / "setup.sh"
TEARDOWN_SCRIPT = SETUP_SCRIPT.with_name("teardown.sh")
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


API_KEY = "afm-example-key-change-me"
"""compose.yaml's default API key; the stack's API routes need it."""
AUTH = {"X-API-Key": API_KEY}


def _docker_answers(env: dict[str, str]) -> bool:
    if shutil.which("docker", path=env.get("PATH")) is None:
        return False
    probe = subprocess.run(["docker", "info"], env=env, capture_output=True, timeout=60)
    return probe.returncode == 0


def container_env() -> tuple[dict[str, str], bool]:
    """Environment in which `docker compose` works, and whether SETUP_SCRIPT had to start
    the engine for it (then TEARDOWN_SCRIPT stops it); or skip with the reason."""
    env = dict(os.environ)
    if env.get("DOCKER_HOST") and _docker_answers(env):
        return env, False
    if not SETUP_SCRIPT.is_file():
        if _docker_answers(env):
            return env, False
        pytest.skip(f"no working `docker` and no {SETUP_SCRIPT} to provide one")
    # setup.sh's engine may run already (started by hand): then it is not ours to stop.
    ctr_home = env.get("CTR_HOME", "/tmp/ctr-home")
    running = {**env, "DOCKER_HOST": f"unix://{ctr_home}/podman.sock"}
    started = not (Path(ctr_home, "podman.sock").exists() and _docker_answers(running))
    setup = subprocess.run(
        ["bash", str(SETUP_SCRIPT)], capture_output=True, text=True, timeout=600, cwd=REPO_ROOT
    )
    if setup.returncode != 0:
        pytest.fail(f"{SETUP_SCRIPT} failed:\n{setup.stderr[-3000:]}")
    for line in setup.stdout.splitlines():  # lines of the form `export NAME=value`
        name, _, value = line.removeprefix("export ").partition("=")
        if line.startswith("export ") and name:
            env[name] = value
    return env, started


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass(frozen=True)
class Stack:
    project: str
    env: dict[str, str]
    base_url: str  # the `api` service's published port

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

    def docker(self, *args: str, timeout: float = 120) -> str:
        """Run `docker ARGS` (a single container, by name); its stdout."""
        result = subprocess.run(
            ["docker", *args], env=self.env, capture_output=True, text=True, timeout=timeout
        )
        if result.returncode != 0:
            raise AssertionError(
                f"docker {' '.join(args)} exited {result.returncode}:\n{result.stderr[-3000:]}"
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

    def logs(self, *services: str) -> str:
        result = subprocess.run(
            ["docker", "compose", "-p", self.project, "logs", "--no-color", "--tail", "60",
             *services],
            cwd=REPO_ROOT, env=self.env, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        return f"--- compose logs ---\n{result.stdout[-6000:]}"

    def containers(self, service: str) -> list[dict]:
        """`docker compose ps` entries of a service's containers (running or exited)."""
        out = self.compose("ps", "--all", "--format", "json", service)
        # Compose prints one JSON object per line (older versions: one JSON list).
        rows = [json.loads(line) for line in out.splitlines() if line.strip()]
        return rows[0] if rows and isinstance(rows[0], list) else rows

    def service_state(self, service: str) -> dict:
        """`docker compose ps` entry of a one-container service."""
        rows = self.containers(service)
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


@contextmanager
def running_stack(**env: str) -> Iterator[Stack]:
    """Build the image and `up -d` a fresh project with the small synthetic run and ``env``
    (e.g. ``COMPOSE_PROFILES="scale"``); yields once the API is ready; `down -v` at the end."""
    engine_env, started = container_env()
    env = {**engine_env, **SMALL_RUN, **env}
    port = free_port()
    env["API_PORT"] = str(port)
    stack = Stack(f"afm-test-{uuid.uuid4().hex[:8]}", env, f"http://127.0.0.1:{port}")
    try:
        stack.compose("build", timeout=BUILD_TIMEOUT)
        stack.compose("up", "-d", timeout=UP_TIMEOUT)
        stack.wait_until_ready()
        yield stack
    finally:
        stack.compose("down", "-v", "--remove-orphans", "--timeout", "5", timeout=180, check=False)
        if started:
            subprocess.run(["bash", str(TEARDOWN_SCRIPT)], env=env, timeout=60, check=False)


_shared: dict = {}  # "exit": the ExitStack holding the running stack, "stack", "lb_url"


def _close_shared() -> None:
    exit_stack = _shared.pop("exit", None)
    _shared.clear()
    if exit_stack is not None:
        exit_stack.close()


atexit.register(_close_shared)  # a run stopped between two modules (-x, Ctrl-C) still downs it


def _next_module_takes_it(request: pytest.FixtureRequest) -> bool:
    """Whether the test right after this module's last one is a compose test of another
    module (marker ``containers``), which then takes the running stack over."""
    items = request.session.items
    last = max((i for i, item in enumerate(items) if item.module is request.module), default=-1)
    if last < 0 or last + 1 >= len(items):
        return False
    following = items[last + 1]
    return following.module is not request.module and (
        following.get_closest_marker("containers") is not None
    )


@contextmanager
def shared_scale_stack(request: pytest.FixtureRequest, fresh: bool) -> Iterator[tuple[Stack, str]]:
    """For a module-scoped fixture: the `scale` profile's stack (`api` on its port, two
    `api-replica`, `lb` on a free port), as ``(stack, load balancer URL)``.

    ``fresh``: a stack no test used before (the module checks what `up` alone leaves: version
    1, the first trainer run); otherwise the stack the previous compose module leaves, if it
    left one. At the end of the module it is taken down (`down -v`, as `running_stack` does)
    unless the next test is a compose test of another module, which takes it over.
    """
    if fresh:
        _close_shared()
    if not _shared:
        lb_port = free_port()
        exit_stack = ExitStack()
        stack = exit_stack.enter_context(
            running_stack(COMPOSE_PROFILES="scale", LB_PORT=str(lb_port))
        )
        _shared.update(exit=exit_stack, stack=stack, lb_url=f"http://127.0.0.1:{lb_port}")
    try:
        yield _shared["stack"], _shared["lb_url"]
    finally:
        if not _next_module_takes_it(request):
            _close_shared()
