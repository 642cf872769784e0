"""README.md's local quickstart, run as written: its commands, in a fresh folder.

Two changes, both stated here: the environment lines (venv, pip) are skipped because the
test runs inside the environment they create, and the service gets a free port and a
private Redis prefix instead of 8000 and the default one. A wait for /readyz follows the
backgrounded `serve`, where a person would wait a few seconds before the first curl.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT, remove_prefix
from tests.integration.serving.helpers import free_port

pytestmark = pytest.mark.integration

ENVIRONMENT_LINES = (
    "python3.11 -m venv .venv && . .venv/bin/activate",
    'pip install -e ".[dev]"',
)


def quickstart_commands() -> list[str]:
    """The bash block under "Quickstart (local, no containers)", one command per entry."""
    readme = (REPO_ROOT / "README.md").read_text()
    section = readme.split("## Quickstart (local, no containers)", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    commands, pending = [], ""
    for line in block.splitlines():
        line = re.sub(r"\s+#.*$", "", line).rstrip()  # comments after a command
        if not line.strip():
            continue
        pending += line
        if pending.endswith("\\"):
            pending = pending[:-1] + " "
            continue
        commands.append(pending.strip())
        pending = ""
    return commands


def test_the_quickstart_runs_as_written(redis_url: str, tmp_path: Path) -> None:
    commands = quickstart_commands()
    assert commands[: len(ENVIRONMENT_LINES)] == list(ENVIRONMENT_LINES)
    port, prefix = free_port(), f"test:{uuid.uuid4().hex}:"
    script = ["set -euo pipefail", "trap 'kill $(jobs -p) 2>/dev/null || true' EXIT"]
    for command in commands[len(ENVIRONMENT_LINES) :]:
        script.append(command.replace("localhost:8000", f"localhost:{port}"))
        if command.startswith("afm-ctr serve") and command.endswith("&"):
            script.append(
                f"for _ in $(seq 600); do curl -sf localhost:{port}/readyz >/dev/null && break;"
                " sleep 0.5; done"
            )
    assert any(c.startswith("kill %1") for c in commands), "the quickstart stops its service"
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "AFM_PORT": str(port),
        "AFM_REDIS_PREFIX": prefix,
    }
    env.pop("AFM_REDIS_URL", None)
    try:
        result = subprocess.run(
            ["bash", "-c", "\n".join(script)],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900,
        )  # fmt: skip
    finally:
        remove_prefix(redis_url, prefix)
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}"
    # The three curls answered: ready, scores for the top 2, an explanation.
    assert '"ready":true' in result.stdout.replace(" ", "")
    assert result.stdout.count('"movie_id"') >= 3 and '"pairs"' in result.stdout
    assert (tmp_path / "models" / "1" / "metadata.json").is_file()
