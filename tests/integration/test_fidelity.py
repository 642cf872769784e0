"""Explanation fidelity: on synthetic data with planted pair effects, the explanation names them.

``afm-ctr synth`` records the pairs it plants in planted.json. A model trained with the
defaults on the default synthetic data must rank exactly planted pairs first by mean
|contribution| over the test rows (precision@3 = 1). Attention weights are reported beside
(docs/training.md#explanation-fidelity): they say where the model looks, contributions what
each pair adds, and only the latter is held to the planted truth here.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from model.config import DataConfig
from model.contracts.export_format import (
    OUTPUT_ATTENTION,
    OUTPUT_CONTRIBUTION,
    SIGNATURE_EXPLAIN,
    read_metadata,
)
from tests.conftest import run_cli

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def explained(tmp_path_factory: pytest.TempPathFactory) -> tuple[list, dict, set]:
    """Mean |contribution| and mean attention per pair over the test rows, and the planted pairs."""
    import tensorflow as tf

    from model.data.protocols import prepare

    root = tmp_path_factory.mktemp("fidelity")
    run_cli("synth", "--out", str(root / "data"))  # the defaults
    run_cli("train", "--dataset", "synthetic", "--data-dir", str(root / "data"),
            "--model-dir", str(root / "models"))  # fmt: skip
    version = root / "models" / "1"
    meta = read_metadata(version)
    data = prepare(DataConfig(dataset="synthetic", data_dir=root / "data"))
    raw = data.raw(data.test, meta.fields)
    explain = tf.saved_model.load(str(version)).signatures[SIGNATURE_EXPLAIN]
    out = explain(**{f: tf.constant(v.astype(str)) for f, v in raw.items()})
    pairs = [tuple(p) for p in meta.pairs]
    means = {
        "contribution": dict(
            zip(pairs, np.abs(out[OUTPUT_CONTRIBUTION].numpy()).mean(0), strict=True)
        ),
        "attention": dict(zip(pairs, out[OUTPUT_ATTENTION].numpy().mean(0), strict=True)),
    }
    planted = {tuple(p) for p in json.loads((root / "data" / "planted.json").read_text())["pairs"]}
    return pairs, means, planted


def _top(means: dict, k: int = 3) -> list[tuple[str, str]]:
    return sorted(means, key=lambda pair: -means[pair])[:k]


def test_the_largest_contributions_are_the_planted_pairs(explained) -> None:
    pairs, means, planted = explained
    top = _top(means["contribution"])
    attention_top = _top(means["attention"])
    print(f"top 3 by mean |contribution|: {top}; by mean attention: {attention_top}")
    print(f"precision@3: contribution {sum(p in planted for p in top) / 3:.2f}, "
          f"attention {sum(p in planted for p in attention_top) / 3:.2f}")  # fmt: skip
    assert len(planted) >= 3 and planted <= set(pairs)
    assert set(top) <= planted, top
