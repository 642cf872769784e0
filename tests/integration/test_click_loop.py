"""The click loop end to end, on small synthetic data, through the real service and Redis:
serve a model trained on little data, play traffic that clicks by the planted truth, export
the log, train on it, roll the new version out as a canary, play more traffic, judge."""

from __future__ import annotations

import json
import re
from pathlib import Path

import httpx
import pytest

from model.contracts import rollout
from model.online.traffic import simulate
from service.settings import Settings
from tests.conftest import run_cli
from tests.integration.serving.helpers import ServerThread, wait_until

pytestmark = pytest.mark.integration


def test_serve_log_retrain_canary_and_judge(
    tmp_path: Path, redis_url: str, feature_prefix: str
) -> None:
    data, models, logs = tmp_path / "data", tmp_path / "models", tmp_path / "logs"
    run_cli("synth", "--out", str(data), "--users", "300", "--movies", "120",
            "--ratings", "3000", "--seed", "3")  # fmt: skip
    run_cli("train", "--dataset", "synthetic", "--data-dir", str(data), "--model-dir",
            str(models), "--epochs", "1")  # fmt: skip
    run_cli("load-features", "--dataset", "synthetic", "--data-dir", str(data),
            "--redis-url", redis_url, "--prefix", feature_prefix)  # fmt: skip
    settings = Settings(
        model_dir=models,
        redis_url=redis_url,
        redis_prefix=feature_prefix,
        impression_keys="k1:loop-test",
        reload_interval=0.2,
    )
    with ServerThread(settings) as server, httpx.Client(base_url=server.url) as probe:
        wait_until(lambda: probe.get("/readyz").status_code == 200, what="version 1")
        before = simulate(server.url, data, requests=150, seed=1, candidates=30, top_k=5)
        assert list(before.arms) == ["1/stable"] and not before.failed
        shown = before.arms["1/stable"]
        assert shown.requests == 150 and shown.shown == 750 and shown.clicks > 0

        exported = run_cli("logs", "export", "--out", str(logs), "--redis-url", redis_url,
                           "--prefix", feature_prefix, "--flush").stdout  # fmt: skip
        assert f"exported 150 impressions (750 rows, {shown.clicks} clicks)" in exported

        run_cli("train", "--from-logs", str(logs), "--dataset", "synthetic", "--data-dir",
                str(data), "--model-dir", str(models), "--epochs", "2")  # fmt: skip
        metadata = json.loads((models / "2" / "metadata.json").read_text())
        assert metadata["data"]["log"]["impressions"] == 150
        assert metadata["data"]["log"]["clicks"] == shown.clicks

        run_cli("rollout", "--model-dir", str(models), "--canary", "2", "--percent", "50")
        wait_until(
            lambda: {v["role"] for v in probe.get("/model").json()["loaded"]} >= {"canary"},
            what="the canary to load",
        )
        after = simulate(server.url, data, requests=300, seed=2, candidates=30, top_k=5)
        assert set(after.arms) == {"1/stable", "2/canary"} and not after.failed

        judged = run_cli("rollout", "--model-dir", str(models), "--judge", "--auto",
                         "--redis-url", redis_url, "--prefix", feature_prefix).stdout  # fmt: skip
    decision = re.match(r"(promote|roll back|keep collecting): ", judged)
    assert decision, judged
    # the judge read the same impressions and clicks the simulated frontend counted
    for arm, name in ((after.arms["2/canary"], "canary 2"), (after.arms["1/stable"], "stable 1")):
        assert f"{name}: " in judged
        counted = re.search(rf"{name}: [\d,]+ users, ([\d,]+) impressions, ([\d,]+) clicks", judged)
        assert counted, judged
        assert [int(n.replace(",", "")) for n in counted.groups()] == [arm.requests, arm.clicks]
    policy = rollout.read_policy(models)
    assert policy is not None
    expected = {"promote": (2, None), "roll back": (1, None), "keep collecting": (1, 2)}
    assert (policy.stable, policy.canary) == expected[decision.group(1)]
