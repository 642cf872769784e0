"""``afm-ctr train`` end to end, as a user runs it."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from model.config import DataConfig
from model.contracts.export_format import (
    ALL_FIELDS,
    OUTPUT_ATTENTION,
    SIGNATURE_EXPLAIN,
    read_metadata,
)
from tests.conftest import run_cli, shared_data

pytestmark = pytest.mark.integration


def test_training_learns_the_planted_structure(trained_model_dir: Path) -> None:
    meta = read_metadata(trained_model_dir / "1")
    assert tuple(meta.fields) == ALL_FIELDS  # a dataset trains all eight fields by default
    assert meta.metrics["test"]["auc"] > 0.65, meta.metrics
    assert meta.metrics["valid"]["auc"] > 0.65, meta.metrics
    metrics = json.loads((trained_model_dir / "1" / "metrics.json").read_text())
    assert metrics["test"] == meta.metrics["test"]
    assert (trained_model_dir / "1" / "training_curve.png").stat().st_size > 0


def test_attention_is_not_uniform(trained_model_dir: Path, synthetic_dir: Path) -> None:
    import tensorflow as tf

    from model.data.protocols import prepare

    data = prepare(DataConfig(dataset="synthetic", data_dir=synthetic_dir, seed=7))
    raw = data.raw(data.test, ALL_FIELDS)
    explain = tf.saved_model.load(str(trained_model_dir / "1")).signatures[SIGNATURE_EXPLAIN]
    attention = explain(**{f: tf.constant(raw[f][:500].astype(str)) for f in ALL_FIELDS})[
        OUTPUT_ATTENTION
    ].numpy()
    uniform = 1.0 / attention.shape[1]
    np.testing.assert_allclose(attention.sum(axis=1), 1.0, rtol=1e-5)
    # Some pair clearly above or below 1/28 on average, and weights differ between examples.
    assert np.abs(attention.mean(axis=0) - uniform).max() > 0.2 * uniform
    assert attention.std(axis=0).max() > 1e-3


TENSORFLOW_NOTICES = ("I0000", "oneDNN", "cpu_feature_guard", "absl::InitializeLog")


def _train_tiny(synthetic_dir: Path, model_dir: Path, *global_flags: str) -> str:
    result = run_cli(
        *global_flags, "train", "--dataset", "synthetic", "--data-dir", str(synthetic_dir),
        "--epochs", "1", "--embedding-dim", "4", "--attention-factor", "2",
        "--batch-size", "2048", "--model-dir", str(model_dir),
    )  # fmt: skip
    return result.stderr


def test_train_prints_its_progress_lines_and_no_tensorflow_notices(
    synthetic_dir: Path, tmp_path: Path
) -> None:
    stderr = _train_tiny(synthetic_dir, tmp_path)
    for notice in TENSORFLOW_NOTICES:
        assert notice not in stderr, stderr
    assert re.search(r"^\[data\] next-item protocol: ", stderr, re.MULTILINE), stderr
    assert re.search(r"^epoch 1/1  loss \d\.\d{4}  val_auc 0\.\d{4}", stderr, re.MULTILINE)
    assert re.search(r"test AUC 0\.\d{4}", stderr)
    assert "\x1b[" not in stderr  # not a terminal: no progress bar, no colour


def test_json_log_format_writes_one_object_per_line(synthetic_dir: Path, tmp_path: Path) -> None:
    lines = _train_tiny(synthetic_dir, tmp_path, "--log-format", "json").splitlines()
    entries = [json.loads(line) for line in lines]
    assert all({"time", "level", "logger", "message"} <= entry.keys() for entry in entries)
    assert any(
        e["logger"] == "model.training.train" and e["message"].startswith("epoch 1/1")
        for e in entries
    )


def test_verbose_shows_debug_lines_and_tensorflow_notices(
    synthetic_dir: Path, tmp_path: Path
) -> None:
    stderr = _train_tiny(synthetic_dir, tmp_path, "-v")
    assert re.search(r" model\.training\.train: debug: model AFMConfig\(", stderr), stderr
    assert any(notice in stderr for notice in TENSORFLOW_NOTICES), stderr


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--embedding-dim", "0", "--embedding-dim"),
        ("--batch-size", "-5", "--batch-size"),
        ("--learning-rate", "fast", "--learning-rate"),
        ("--negatives", "0", "--negatives"),
    ],
)
def test_bad_model_flags_fail_in_one_line(flag: str, value: str, message: str, tmp_path) -> None:
    result = run_cli(
        "train", "--dataset", "synthetic", flag, value, "--model-dir", str(tmp_path), check=False
    )
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert list(tmp_path.iterdir()) == []


def test_missing_data_is_a_one_line_error(tmp_path: Path) -> None:
    result = run_cli(
        "train", "--dataset", "ml-100k", "--data-dir", str(tmp_path / "nowhere"),
        "--model-dir", str(tmp_path / "models"), check=False,
    )  # fmt: skip
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "models").exists() or not any((tmp_path / "models").iterdir())


@pytest.mark.slow
def test_real_movielens_100k_next_item(tmp_path: Path) -> None:
    """The real ML-100K, next-item protocol, default model settings; two epochs reach ~0.87."""
    data_dir = shared_data("ml-100k")
    result = run_cli(
        "train", "--dataset", "ml-100k", "--data-dir", str(data_dir), "--protocol", "next-item",
        "--epochs", "2", "--model-dir", str(tmp_path),
    )  # fmt: skip
    meta = read_metadata(tmp_path / "1")
    auc = meta.metrics["test"]["auc"]
    print(f"ML-100K next-item test AUC {auc:.4f}, logloss {meta.metrics['test']['logloss']:.4f}")
    assert re.search(r"test AUC 0\.\d{4}", result.stderr)
    assert meta.data["train"]["rows"] > 1_000_000
    assert auc > 0.8


def _held_out_auc(synthetic_dir: Path, fields: str, model_dir: Path) -> float:
    run_cli(
        "train", "--dataset", "synthetic", "--data-dir", str(synthetic_dir), "--fields", fields,
        "--holdout-movies", "0.1", "--epochs", "3", "--embedding-dim", "8",
        "--attention-factor", "4", "--batch-size", "1024", "--seed", "7",
        "--model-dir", str(model_dir),
    )  # fmt: skip
    meta = read_metadata(model_dir / "1")
    held = meta.metrics["test_held_out_movies"]
    assert held["rows"] > 100 and 0 < held["positives"] < held["rows"]
    assert meta.data["held_out_movies"] == 20  # 10% of the 200 synthetic movies
    return held["auc"]


def test_unseen_movies_are_ranked_by_their_genres_and_year(
    synthetic_dir: Path, tmp_path: Path
) -> None:
    """Movies kept out of training: the eight-field model ranks them from genres and year,
    the six-field model knows nothing about them but their (out-of-vocabulary) id."""
    with_items = _held_out_auc(synthetic_dir, "all", tmp_path / "all")
    without = _held_out_auc(synthetic_dir, "seed", tmp_path / "seed")
    print(f"held-out movies: AUC {with_items:.4f} with year and genres, {without:.4f} without")
    assert with_items > 0.7
    assert with_items > without + 0.1


def test_seed_rows_cannot_ask_for_item_fields(tmp_path: Path) -> None:
    rows = tmp_path / "rows.txt"
    rows.write_text("1\tF\t1\t10\t48067\t1193\t1\n2\tM\t25\t4\t02139\t661\t0\n")
    result = run_cli(
        "train", "--train-file", str(rows), "--valid-file", str(rows), "--test-file", str(rows),
        "--fields", "all", "--model-dir", str(tmp_path / "models"), check=False,
    )  # fmt: skip
    assert result.returncode == 2
    assert "carry no year or genres" in result.stderr
