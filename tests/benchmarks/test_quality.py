"""benchmarks/quality.py: its plan, resume and tables, and a --quick run against DeepCTR.

The --quick run needs DeepCTR's venv (benchmarks/deepctr_baseline.py says how to create it,
outside the repository; AFM_DEEPCTR_PYTHON points elsewhere) and the shared ML-100K; it is
skipped, saying which is missing, without them.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DEEPCTR_PYTHON = Path(os.environ.get("AFM_DEEPCTR_PYTHON", "/work/deepctr-venv/bin/python"))
ML_100K = REPO.parent / "shared" / "data" / "ml-100k"


def _load_quality():
    spec = importlib.util.spec_from_file_location("quality", REPO / "benchmarks" / "quality.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["quality"] = module
    spec.loader.exec_module(module)
    return module


quality = _load_quality()


def _history(aucs: list[float], seconds: float = 2.0) -> list[dict]:
    return [
        {"epoch": i + 1, "valid_auc": auc, "seconds": seconds, "train_loss": 0.3}
        for i, auc in enumerate(aucs)
    ]


def _run(model: str, phase: str, seed: int, point: int, valid: float, test: float) -> dict:
    history = _history([valid - 0.02, valid, valid - 0.001])
    return {
        **quality.run_key("ml-100k", "all", model, phase, seed, point),
        "valid_auc": valid,
        "test_auc": test,
        "best_epoch": 2,
        "epochs_run": 3,
        "stopped": "patience",
        "history": history,
    }


def _results(tmp_path: Path, quick: bool = True) -> quality.Results:
    return quality.Results(tmp_path / "results.json", quality.settings(quick))


def _args(results: quality.Results, models=quality.MODELS) -> argparse.Namespace:
    return argparse.Namespace(
        datasets=["ml-100k"], field_sets=["all"], models=list(models), results=results
    )


def test_plan_alternates_the_two_sides_and_tests_only_after_tuning(tmp_path: Path) -> None:
    results = _results(tmp_path, quick=False)
    jobs = list(quality.plan(results, _args(results)))
    grid = quality.GRID
    assert len(jobs) == len(grid) * len(quality.MODELS)  # no tests before any tuning
    assert [j.model for j in jobs[:4]] == ["afm", "deepctr-afm", "fm", "deepctr-fm"]
    assert {(j.phase, j.seed) for j in jobs} == {("tune", quality.TUNING_SEED)}

    for point in range(len(grid)):  # afm tuned: its tests appear, at its best point
        results.add_run(_run("afm", "tune", 42, point, 0.80 + 0.01 * (point == 2), 0.5))
    tests = [j for j in quality.plan(results, _args(results)) if j.phase == "test"]
    assert [(j.model, j.seed, j.point) for j in tests] == [("afm", s, 2) for s in quality.SEEDS]


def test_results_resume_and_refuse_other_settings(tmp_path: Path) -> None:
    results = _results(tmp_path)
    results.add_run(_run("afm", "tune", 42, 0, 0.8, 0.7))
    again = _results(tmp_path)
    assert again.run(quality.run_key("ml-100k", "all", "afm", "tune", 42, 0))["valid_auc"] == 0.8
    assert again.run(quality.run_key("ml-100k", "all", "afm", "tune", 42, 1)) is None
    with pytest.raises(quality.BenchmarkError, match="other settings"):
        _results(tmp_path, quick=False)


def test_stopped_says_whether_patience_or_the_cap_ended_a_run() -> None:
    settings = {"patience": 2, "max_epochs": 5}
    assert quality._stopped(_history([0.7, 0.8, 0.79, 0.78]), 2, settings) == "patience"
    assert quality._stopped(_history([0.7, 0.8, 0.81, 0.82, 0.83]), 5, settings) == "max-epochs"
    assert quality._stopped(_history([0.7, 0.8, 0.81, 0.82, 0.8]), 4, settings) == "max-epochs"
    # a run that recovered after two epochs without a new best
    assert quality._longest_wait(_history([0.7, 0.69, 0.68, 0.75, 0.74]), 4) == 2


def test_tables_report_means_seeds_chosen_points_and_times(tmp_path: Path) -> None:
    results = _results(tmp_path, quick=False)
    for model in ("afm", "deepctr-afm"):
        for point in range(len(quality.GRID)):
            results.add_run(_run(model, "tune", 42, point, 0.80 + 0.01 * (point == 1), 0.5))
        for i, seed in enumerate(quality.SEEDS):
            results.add_run(_run(model, "test", seed, 1, 0.88, 0.870 + 0.002 * i))
    text = quality.tables(results.data)
    assert (
        "| AFM (this project) | 0.8720 ± 0.0020 | 0.8700 / 0.8720 / 0.8740 | 0.005, 0, 4096" in text
    )
    assert "| DeepCTR AFM | 0.8720" in text
    assert "**0.8100 (2/3, 4 s)**" in text  # the chosen point, bold in the grid table
    target = quality.TARGET_VALID_AUC["ml-100k"]
    assert f"time to valid AUC {target}" in text
    assert "| 4 s |" in text  # two epochs of 2 s to the best epoch

    results.data["runs"][-1]["paused"] = True  # stopped and continued: its times are off
    assert "| 4 s (1 paused run(s) left out) |" in quality.tables(results.data)


@pytest.mark.slow
def test_quick_run_against_deepctr(tmp_path: Path) -> None:
    if not DEEPCTR_PYTHON.is_file():
        pytest.skip(
            f"no DeepCTR venv at {DEEPCTR_PYTHON} (benchmarks/deepctr_baseline.py says how to "
            "create it; AFM_DEEPCTR_PYTHON points elsewhere)"
        )
    if not ML_100K.is_dir():
        pytest.skip(f"no ML-100K at {ML_100K}")
    command = [
        sys.executable,
        str(REPO / "benchmarks" / "quality.py"),
        "--quick",
        f"--work-dir={tmp_path}",
        f"--deepctr-python={DEEPCTR_PYTHON}",
        "--code-ref=worktree",
    ]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    data = json.loads((tmp_path / "quick_results.json").read_text())
    tuned = sorted((r["model"], r["point"]) for r in data["runs"] if r["phase"] == "tune")
    tested = sorted(r["model"] for r in data["runs"] if r["phase"] == "test")
    assert tuned == [("afm", 0), ("afm", 1), ("deepctr-afm", 0), ("deepctr-afm", 1)]
    assert tested == ["afm", "deepctr-afm"]
    for run in data["runs"]:
        assert 0.5 < run["test_auc"] < 1 and len(run["history"]) == 1
        assert run["history"][0]["seconds"] > 0
    [check] = data["checks"].values()
    assert check["identical"], check
    assert "| AFM (this project) |" in done.stdout and "| DeepCTR AFM |" in done.stdout
