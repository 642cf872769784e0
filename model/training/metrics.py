"""Training metrics: exact AUC and logloss in NumPy, and the per-epoch record metrics.json keeps."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class EpochRecord:
    """One epoch of metrics.json's ``history``: Keras's running training loss and AUC, the
    exact validation AUC and logloss after the epoch, and the epoch's speed and duration."""

    epoch: int  # 1-based
    train_loss: float
    train_auc: float
    valid_auc: float
    valid_logloss: float
    examples_per_second: float
    seconds: float

    @classmethod
    def from_logs(cls, epoch: int, logs: Mapping[str, float]) -> EpochRecord:
        """The record of Keras's epoch ``logs`` (0-based ``epoch``, as callbacks get it)."""
        return cls(epoch + 1, **{name: float(logs[key]) for name, key in LOG_KEYS.items()})


LOG_KEYS = {
    "train_loss": "loss",
    "train_auc": "auc",
    "valid_auc": "val_auc",
    "valid_logloss": "val_logloss",
    "examples_per_second": "examples_per_second",
    "seconds": "seconds",
}
"""EpochRecord's fields after ``epoch``, and the keys of the epoch logs that fill them."""


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Exact ROC AUC (Mann-Whitney U), ties in ``scores`` counted as half."""
    labels = np.asarray(labels) > 0.5
    positives = int(labels.sum())
    negatives = len(labels) - positives
    if positives == 0 or negatives == 0:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    sorted_scores = np.asarray(scores)[order]
    # average 1-based rank of each run of equal scores
    _, first, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
    run_ranks = first + (counts + 1) / 2.0
    ranks = np.empty(len(scores), dtype=np.float64)
    ranks[order] = np.repeat(run_ranks, counts)
    rank_sum = ranks[labels].sum()
    return float((rank_sum - positives * (positives + 1) / 2.0) / (positives * negatives))


def log_loss(labels: np.ndarray, probabilities: np.ndarray, eps: float = 1e-7) -> float:
    """Mean binary cross-entropy, probabilities clipped to [eps, 1 - eps] as Keras does."""
    p = np.clip(np.asarray(probabilities, dtype=np.float64), eps, 1 - eps)
    y = np.asarray(labels, dtype=np.float64)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def scores(labels: np.ndarray, probabilities: np.ndarray) -> dict[str, float]:
    """``{"auc": ..., "logloss": ...}``: the pair metrics.json reports for every split."""
    return {"auc": roc_auc(labels, probabilities), "logloss": log_loss(labels, probabilities)}
