"""DeepCTR 0.9.4 AFM (or its FM ablation) on seed-row files: baseline of quality_vs_deepctr.py.

Runs in the separate DeepCTR venv, never in the project's (DeepCTR is not a dependency):

    TF_USE_LEGACY_KERAS=1 /work/deepctr-venv/bin/python benchmarks/deepctr_baseline.py \
        --split-dir DIR --model afm [--max-epochs 100]

DIR holds train.tsv, valid.tsv, test.tsv (tab-separated ``user_id gender age occupation zip
movie_id label``, no header). Prints one JSON line on stdout: test_auc, test_logloss,
valid_auc, epochs_run, best_epoch, seconds. Standalone: imports deepctr, tensorflow, numpy
and pandas only.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")  # DeepCTR needs tf-keras on TF >= 2.16
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import tensorflow as tf  # noqa: E402
from deepctr.feature_column import SparseFeat, get_feature_names  # noqa: E402
from deepctr.models import AFM  # noqa: E402

FIELDS = ["user_id", "gender", "age", "occupation", "zip", "movie_id"]
COLUMNS = [*FIELDS, "label"]


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Exact ROC AUC (Mann-Whitney U, ties as half): the same figure the project reports."""
    labels = np.asarray(labels) > 0.5
    pos = int(labels.sum())
    neg = len(labels) - pos
    order = np.argsort(scores, kind="mergesort")
    sorted_scores = np.asarray(scores)[order]
    _, first, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
    ranks = np.empty(len(scores), dtype=np.float64)
    ranks[order] = np.repeat(first + (counts + 1) / 2.0, counts)
    return float((ranks[labels].sum() - pos * (pos + 1) / 2.0) / (pos * neg))


def log_loss(labels: np.ndarray, probabilities: np.ndarray, eps: float = 1e-7) -> float:
    p = np.clip(np.asarray(probabilities, dtype=np.float64), eps, 1 - eps)
    y = np.asarray(labels, dtype=np.float64)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def read_split(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, sep="\t", header=None, names=COLUMNS, dtype=str, keep_default_na=False)


def encode(
    frames: dict[str, pd.DataFrame],
) -> tuple[dict[str, dict[str, np.ndarray]], dict[str, np.ndarray], dict[str, int]]:
    """Ids 1..n from the training split's sorted values, 0 for unseen: the project's encoding."""
    inputs: dict[str, dict[str, np.ndarray]] = {name: {} for name in frames}
    sizes: dict[str, int] = {}
    for field in FIELDS:
        vocab = np.unique(frames["train"][field].to_numpy())
        sizes[field] = len(vocab) + 1
        for name, frame in frames.items():
            values = frame[field].to_numpy()
            pos = np.searchsorted(vocab, values).clip(0, len(vocab) - 1)
            inputs[name][field] = np.where(vocab[pos] == values, pos + 1, 0).astype(np.int32)
    labels = {name: frame["label"].astype(np.float32).to_numpy() for name, frame in frames.items()}
    return inputs, labels, sizes


class ExactAucEarlyStopping(tf.keras.callbacks.Callback):
    """Early stopping on the exact validation AUC (Keras' AUC metric bins scores), best restored."""

    def __init__(self, x: dict[str, np.ndarray], y: np.ndarray, patience: int) -> None:
        super().__init__()
        self.x, self.y, self.patience = x, y, patience
        self.best_auc, self.best_epoch, self.best_weights, self.waited = -np.inf, 0, None, 0
        self.epochs_run = 0

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        self.epochs_run = epoch + 1
        auc = roc_auc(self.y, self.model.predict(self.x, batch_size=65536, verbose=0).ravel())
        sys.stderr.write(
            f"epoch {epoch + 1}: loss {(logs or {}).get('loss', 0):.4f} val_auc {auc:.4f}\n"
        )
        if auc > self.best_auc:
            self.best_auc, self.best_epoch, self.waited = auc, epoch + 1, 0
            self.best_weights = self.model.get_weights()
        else:
            self.waited += 1
            if self.waited >= self.patience:
                self.model.stop_training = True

    def on_train_end(self, logs: dict | None = None) -> None:
        if self.best_weights is not None:
            self.model.set_weights(self.best_weights)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--split-dir", type=Path, required=True)
    parser.add_argument("--model", choices=["afm", "fm"], default="afm")
    parser.add_argument("--max-epochs", type=int, default=100)
    parser.add_argument("--patience", type=int, default=2)
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args()

    start = time.perf_counter()
    tf.keras.utils.set_random_seed(args.seed)
    frames = {
        name: read_split(args.split_dir / f"{name}.tsv") for name in ("train", "valid", "test")
    }
    inputs, labels, sizes = encode(frames)
    columns = [SparseFeat(f, vocabulary_size=sizes[f], embedding_dim=16) for f in FIELDS]
    assert get_feature_names(columns) == FIELDS
    # DeepCTR defaults otherwise (l2 1e-5 on linear, embeddings and attention; no dropout);
    # use_attention=False is DeepCTR's own FM ablation of the same network.
    model = AFM(
        columns,
        columns,
        use_attention=args.model == "afm",
        attention_factor=8,
        l2_reg_att=1e-5,
        seed=args.seed,
        task="binary",
    )
    model.compile(tf.keras.optimizers.Adam(1e-3), "binary_crossentropy")
    stopper = ExactAucEarlyStopping(inputs["valid"], labels["valid"], args.patience)
    model.fit(
        inputs["train"],
        labels["train"],
        batch_size=4096,
        epochs=args.max_epochs,
        shuffle=True,
        verbose=0,
        callbacks=[stopper],
    )
    test_p = model.predict(inputs["test"], batch_size=65536, verbose=0).ravel()
    print(
        json.dumps(
            {
                "test_auc": roc_auc(labels["test"], test_p),
                "test_logloss": log_loss(labels["test"], test_p),
                "valid_auc": stopper.best_auc,
                "best_epoch": stopper.best_epoch,
                "epochs_run": stopper.epochs_run,
                "seconds": time.perf_counter() - start,
            }
        )
    )


if __name__ == "__main__":
    main()
