"""benchmarks/from_logs_auc.py on a tiny configuration: one seed, 250 requests, through the
real CLI, service and Redis. Its results file has every figure, the AUCs are proper, and
version 2, trained from the log, learnt from window A alone.

About 50 s on the 2-core build machine at load average 4 (three commands import TensorFlow:
two `train` runs and `serve`), more when other jobs load it: marked slow."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from datetime import datetime
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _load_benchmark():
    path = REPO / "benchmarks" / "from_logs_auc.py"
    spec = importlib.util.spec_from_file_location("from_logs_auc", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["from_logs_auc"] = module
    spec.loader.exec_module(module)
    return module


bench = _load_benchmark()


def test_tiny_run_writes_every_figure_and_trains_on_window_a_only(
    tmp_path: Path, redis_url: str, feature_prefix: str
) -> None:
    config = bench.Config(
        seeds=[7],
        users=300,
        movies=120,
        ratings=3000,
        requests_a=150,
        requests_b=100,
        candidates=30,
        top_k=5,
        epochs=1,
        work_dir=tmp_path / "work",
        redis_url=redis_url,
        prefix=feature_prefix,
        dataset_variant=False,  # a third `train` run: 15-20 s more on a busy machine
        expected_clicks_requests=0,
    )
    out = tmp_path / "from_logs_auc.json"
    bench.run(config, out, command="test")
    results = json.loads(out.read_text())

    assert {"command", "started_at", "machine", "commit", "config", "seeds", "summary"} <= set(
        results
    )
    (seed,) = results["seeds"]
    a, b = seed["window_a"], seed["window_b"]
    assert (a["impressions"], a["rows"]) == (150, 750)
    assert (b["impressions"], b["rows"]) == (100, 500)
    assert a["clicks"] > 0 and b["clicks"] > 0
    assert b["served_by"] == [1]
    assert a["last_ts_ms"] < b["first_ts_ms"]

    assert "v2_log_dataset" not in seed
    aucs = [seed[name]["auc"] for name in ("v1", "v2_log")]
    aucs += [seed["position_auc"], seed["truth_auc"], seed["truth_without_position_auc"]]
    assert all(0.0 < auc < 1.0 for auc in aucs), aucs
    # the features as logged give back the scores version 1 served
    assert seed["v1"]["rescored_max_abs_diff"] < 1e-4
    assert math.isclose(seed["v1"]["rescored_auc"], seed["v1"]["auc"], abs_tol=1e-3)

    trained = seed["v2_log"]
    assert trained["version"] == 2 and trained["trained_before_b"]
    log = trained["log_window"]
    assert log["impressions"] == 150 and log["rows"] == 750  # window A's, none of B's
    assert datetime.fromisoformat(log["last_impression"]) < datetime.fromisoformat(
        b["first_impression"]
    )
    assert trained["fields"] == seed["v1"]["fields"]

    assert set(results["summary"]["mean_auc"]) == {"v1", "v2_log", "position"}
    assert "| 7 |" in bench.table(results)
