"""``afm-ctr prepare`` then ``afm-ctr train --prepared``: rows streamed from TFRecord shards."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from model.contracts.export_format import read_metadata
from tests.conftest import run_cli

pytestmark = pytest.mark.integration

# The in-memory run of tests/conftest.py's trained_model_dir, on the same rows.
SMALL_MODEL = (
    "--epochs", "3", "--embedding-dim", "8", "--attention-factor", "4",
    "--batch-size", "1024", "--seed", "7",
)  # fmt: skip


@pytest.fixture(scope="module")
def prepared_dir(synthetic_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("prepared") / "rows"
    result = run_cli(
        "prepare", "--dataset", "synthetic", "--data-dir", str(synthetic_dir), "--seed", "7",
        "--shards", "4", "--out", str(out),
    )  # fmt: skip
    assert f"to {out}" in result.stdout
    return out


@pytest.fixture(scope="module")
def streamed_model_dir(prepared_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    model_dir = tmp_path_factory.mktemp("streamed")
    run_cli("train", "--prepared", str(prepared_dir), *SMALL_MODEL, "--model-dir", str(model_dir))
    return model_dir / "1"


def test_streamed_training_matches_the_in_memory_run(
    streamed_model_dir: Path, trained_model_dir: Path
) -> None:
    streamed, in_memory = read_metadata(streamed_model_dir), read_metadata(trained_model_dir / "1")
    # Same rows, same vocabularies: the exported lookups are identical.
    vocabularies = "vocabularies.json"
    assert json.loads((streamed_model_dir / vocabularies).read_text()) == json.loads(
        (trained_model_dir / "1" / vocabularies).read_text()
    )
    for split in ("train", "valid", "test"):
        assert streamed.data[split] == in_memory.data[split]
    assert streamed.protocol == in_memory.protocol == "next-item"
    # Another row order (shards, buffer), the same model: test AUC within 0.01.
    auc, reference = streamed.metrics["test"]["auc"], in_memory.metrics["test"]["auc"]
    print(f"test AUC streamed {auc:.4f}, in memory {reference:.4f}")
    assert abs(auc - reference) < 0.01
    assert streamed.data["workers"] == 1
    assert streamed.hyperparameters["data"]["seed"] == 7  # the prepare run's DataConfig


def test_prepared_rows_refuse_data_flags_and_other_fields(prepared_dir: Path, tmp_path) -> None:
    for flags, message in (
        (("--dataset", "synthetic"), "drop --dataset"),
        (("--fields", "seed"), "rows are for --fields all"),
    ):
        result = run_cli(
            "train", "--prepared", str(prepared_dir), *flags, "--model-dir", str(tmp_path),
            check=False,
        )  # fmt: skip
        assert result.returncode == 2, result.stderr
        assert message in " ".join(re.sub("[│╭╮╰╯─]", " ", result.stderr).split())
    assert list(tmp_path.iterdir()) == []


def test_a_directory_that_is_not_prepared_is_a_one_line_error(tmp_path: Path) -> None:
    result = run_cli(
        "train", "--prepared", str(tmp_path), "--model-dir", str(tmp_path / "m"), check=False
    )
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "not a prepared directory" in errors[0], result.stderr
    assert "Traceback" not in result.stderr


def test_prepare_refuses_an_existing_directory(prepared_dir: Path, synthetic_dir: Path) -> None:
    result = run_cli(
        "prepare", "--dataset", "synthetic", "--data-dir", str(synthetic_dir),
        "--out", str(prepared_dir), check=False,
    )  # fmt: skip
    assert result.returncode == 1
    assert "already exists and is not empty" in result.stderr
