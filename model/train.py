"""Fit an AFM with early stopping on validation AUC, then export it with its metrics and curve.

Training runs on integer ids (``PreparedData.encode``) from in-memory int32 arrays; the export
wraps the same vocabularies as lookup layers, so serving takes raw strings.

Reproducibility: ``keras.utils.set_random_seed`` seeds Python, NumPy and TensorFlow, every
initializer and the dropout layer carry explicit seeds, and each epoch's shuffle is a
permutation from ``np.random.default_rng(seed)``. On CPU this makes two runs with the same
seed and data produce the same weights (checked in tests/integration/test_train_cli.py).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from model.afm import build_afm, probability_model
from model.config import AFMConfig, DataConfig, TrainConfig
from model.contract import FIELD_SETS
from model.dataset import PreparedData
from model.errors import AfmError
from model.export import export_version
from model.logs import json_output, stderr_is_terminal

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.json"
CURVE_FILE = "training_curve.png"
PREDICT_BATCH = 65536
STEPS_PER_EXECUTION = 16  # fewer Python round trips per epoch; see docs/training.md


@dataclass
class EpochRecord:
    epoch: int
    train_loss: float
    train_auc: float
    valid_auc: float
    valid_logloss: float
    examples_per_second: float
    seconds: float


@dataclass
class FitResult:
    """A trained model (best weights restored) and how it got there."""

    model: keras.Model  # dict outputs, see model.afm.build_afm
    fields: tuple[str, ...]
    vocabularies: dict[str, np.ndarray]
    history: list[EpochRecord] = field(default_factory=list)
    best_epoch: int = 0
    metrics: dict[str, Any] = field(default_factory=dict)


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


def _check_splits(data: PreparedData) -> None:
    if len(data.train) == 0:
        raise AfmError("no training rows: the data or the protocol left the training split empty")
    for name, rows in (("train", data.train), ("validation", data.valid), ("test", data.test)):
        positives = int(rows.label.sum())
        if positives == 0 or positives == len(rows):
            raise AfmError(
                f"the {name} split ({len(rows)} rows) needs both positive and negative labels "
                "to compute AUC"
            )


def epoch_dataset(
    inputs: Mapping[str, np.ndarray],
    labels: np.ndarray,
    batch_size: int,
    rng: np.random.Generator,
) -> tf.data.Dataset:
    """One shuffled epoch as a dataset of ready-made batches.

    The permutation comes from ``rng`` (reproducible), and rows are cut into batches in NumPy,
    so tf.data only hands out whole tensors: no per-row work in the input pipeline.
    ``inputs`` are the model inputs by name, each with one row per label.
    """
    order = rng.permutation(len(labels))
    inputs = {name: values[order] for name, values in inputs.items()}
    labels = labels[order]
    full = len(labels) // batch_size * batch_size

    def batched(values: np.ndarray) -> np.ndarray:
        return values[:full].reshape(-1, batch_size, *values.shape[1:])

    batches = tf.data.Dataset.from_tensor_slices(
        ({name: batched(values) for name, values in inputs.items()}, batched(labels))
    )
    if full < len(labels):
        tail = ({name: values[full:] for name, values in inputs.items()}, labels[full:])
        batches = batches.concatenate(tf.data.Dataset.from_tensors(tail))
    return batches.prefetch(tf.data.AUTOTUNE)


class EpochProgress(keras.callbacks.Callback):
    """A rich progress bar over one epoch: rows done, rows/s, running loss, ETA.

    Keras calls ``on_train_batch_end`` once per ``steps_per_execution`` batches, with the
    last batch's index, so the bar moves in steps of 16 batches; that costs one read of the
    running loss per step and nothing else. The bar is transient: the epoch line replaces it.
    """

    def __init__(self, rows: int, batch_size: int, description: str) -> None:
        super().__init__()
        self.rows, self.batch_size, self.description = rows, batch_size, description
        self._progress: Any = None

    def on_train_begin(self, logs: dict | None = None) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
        )

        self._progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("rows  {task.fields[speed]}  loss {task.fields[loss]}"),
            TimeRemainingColumn(),
            console=Console(stderr=True),
            transient=True,
        )
        self._progress.start()
        self._task = self._progress.add_task(self.description, total=self.rows, speed="", loss="-")
        self._start = time.perf_counter()

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        done = min((batch + 1) * self.batch_size, self.rows)
        rate = done / max(time.perf_counter() - self._start, 1e-9)
        loss = f"{float(logs['loss']):.4f}" if logs and "loss" in logs else "-"
        self._progress.update(self._task, completed=done, speed=f"{rate:,.0f}/s", loss=loss)

    def on_train_end(self, logs: dict | None = None) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None


def _show_progress_bar() -> bool:
    """A bar only for a person watching: stderr is a terminal and the log is not JSON."""
    return stderr_is_terminal() and not json_output()


def _evaluate(
    model: keras.Model, inputs: Mapping[str, np.ndarray], labels: np.ndarray
) -> dict[str, float]:
    return _metrics(labels, _predict(model, inputs))


def _predict(model: keras.Model, inputs: Mapping[str, np.ndarray]) -> np.ndarray:
    return model.predict(dict(inputs), batch_size=PREDICT_BATCH, verbose=0)


def _metrics(labels: np.ndarray, probabilities: np.ndarray) -> dict[str, float]:
    return {"auc": roc_auc(labels, probabilities), "logloss": log_loss(labels, probabilities)}


def compiled_trainer(model: keras.Model, train: TrainConfig) -> keras.Model:
    """The probability-only view of ``model``, compiled: BCE, Adam, AUC."""
    trainer = probability_model(model)
    trainer.compile(
        optimizer=keras.optimizers.Adam(learning_rate=train.learning_rate),
        loss=keras.losses.BinaryCrossentropy(),
        metrics=[keras.metrics.AUC(name="auc")],
        steps_per_execution=STEPS_PER_EXECUTION,
    )
    return trainer


def fit(data: PreparedData, afm: AFMConfig, train: TrainConfig) -> FitResult:
    """Train with early stopping on validation AUC; the best epoch's weights are restored."""
    _check_splits(data)
    keras.utils.set_random_seed(train.seed)
    rng = np.random.default_rng(train.seed)
    fields = FIELD_SETS[afm.fields]
    vocabularies = data.vocabularies(fields)
    x_train = data.encode(data.train, vocabularies, fields)
    y_train = data.train.label.astype(np.float32)
    x_valid = data.encode(data.valid, vocabularies, fields)

    model = build_afm(fields, {f: len(vocabularies[f]) + 1 for f in fields}, afm, seed=train.seed)
    trainer = compiled_trainer(model, train)
    result = FitResult(model=model, fields=fields, vocabularies=vocabularies)
    best_auc, best_weights, waited = -np.inf, trainer.get_weights(), 0
    bar = _show_progress_bar()
    log.debug("model %s; training %s", afm, train)
    log.info(
        f"training on {len(y_train):,} rows ({int(y_train.sum()):,} positive), "
        f"validating on {len(data.valid):,}; up to {train.epochs} epochs"
    )
    for epoch in range(1, train.epochs + 1):
        batches = epoch_dataset(x_train, y_train, train.batch_size, rng)
        start = time.perf_counter()
        progress = [EpochProgress(len(y_train), train.batch_size, f"epoch {epoch}/{train.epochs}")]
        history = trainer.fit(
            batches, epochs=1, shuffle=False, verbose=0, callbacks=progress if bar else None
        )
        seconds = time.perf_counter() - start
        valid = _evaluate(trainer, x_valid, data.valid.label)
        record = EpochRecord(
            epoch=epoch,
            train_loss=float(history.history["loss"][-1]),
            train_auc=float(history.history["auc"][-1]),
            valid_auc=valid["auc"],
            valid_logloss=valid["logloss"],
            examples_per_second=len(y_train) / seconds,
            seconds=seconds,
        )
        result.history.append(record)
        log.info(
            f"epoch {epoch}/{train.epochs}  loss {record.train_loss:.4f}  "
            f"val_auc {record.valid_auc:.4f}  val_logloss {record.valid_logloss:.4f}  "
            f"{record.examples_per_second:,.0f} examples/s  ({seconds:.1f}s)"
        )
        if record.valid_auc > best_auc:
            best_auc, best_weights, waited = record.valid_auc, trainer.get_weights(), 0
            result.best_epoch = epoch
        else:
            waited += 1
            if waited >= train.patience:
                log.info(f"early stop: no better val_auc for {waited} epochs")
                break
    trainer.set_weights(best_weights)

    valid = _evaluate(trainer, x_valid, data.valid.label)
    test_probabilities = _predict(trainer, data.encode(data.test, vocabularies, fields))
    test = _metrics(data.test.label, test_probabilities)
    result.metrics = {
        "valid": valid,
        "test": test,
        "epochs_run": len(result.history),
        "best_epoch": result.best_epoch,
    }
    if data.held_out_movies is not None:
        held = np.isin(data.test.movie_idx, data.held_out_movies)
        result.metrics["test_held_out_movies"] = {
            "rows": int(held.sum()),
            "positives": int(data.test.label[held].sum()),
            **_metrics(data.test.label[held], test_probabilities[held]),
        }
        log.info(
            f"test rows of the {len(data.held_out_movies):,} held-out movies: "
            f"AUC {result.metrics['test_held_out_movies']['auc']:.4f}"
        )
    log.info(
        f"best epoch {result.best_epoch}: test AUC {test['auc']:.4f}  test logloss "
        f"{test['logloss']:.4f}  (valid AUC {valid['auc']:.4f})"
    )
    return result


def write_curve(history: list[EpochRecord], best_epoch: int, path: Path) -> None:
    """The training curve: AUC (train, valid) and loss (train, valid logloss) per epoch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [r.epoch for r in history]
    fig, (ax_auc, ax_loss) = plt.subplots(1, 2, figsize=(10, 4))
    ax_auc.plot(epochs, [r.train_auc for r in history], "o-", label="train AUC")
    ax_auc.plot(epochs, [r.valid_auc for r in history], "o-", label="validation AUC")
    ax_loss.plot(epochs, [r.train_loss for r in history], "o-", label="train loss")
    ax_loss.plot(epochs, [r.valid_logloss for r in history], "o-", label="validation logloss")
    for ax, title in ((ax_auc, "AUC"), (ax_loss, "binary cross-entropy")):
        ax.axvline(best_epoch, color="grey", linestyle=":", label=f"best epoch {best_epoch}")
        ax.set_xlabel("epoch")
        ax.set_title(title)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _jsonable(config: Any) -> dict[str, Any]:
    return {k: str(v) if isinstance(v, Path) else v for k, v in asdict(config).items()}


def _data_record(data: PreparedData, vocabularies: Mapping[str, np.ndarray]) -> dict[str, Any]:
    return {
        **data.extra,
        **data.summary(),
        "source": data.source,
        "vocabulary_sizes": {f: len(v) for f, v in vocabularies.items()},
    }


def train_and_export(
    data: PreparedData,
    afm: AFMConfig,
    train: TrainConfig,
    model_dir: Path,
    data_config: DataConfig,
) -> Path:
    """Train on ``data`` and export a new version under ``model_dir``; return its directory.

    The version directory holds the SavedModel, ``metadata.json`` (contract.ModelMetadata),
    ``metrics.json`` (valid/test AUC and logloss, per-epoch history) and the curve PNG.
    """
    return export_trained(fit(data, afm, train), data, afm, train, model_dir, data_config)


def export_trained(
    result: FitResult,
    data: PreparedData,
    afm: AFMConfig,
    train: TrainConfig,
    model_dir: Path,
    data_config: DataConfig,
) -> Path:
    """Export a ``fit`` result with its metadata, metrics file and curve as one new version."""
    metrics_report = {**result.metrics, "history": [asdict(r) for r in result.history]}

    def write_extras(directory: Path) -> None:
        (directory / METRICS_FILE).write_text(json.dumps(metrics_report, indent=2) + "\n")
        write_curve(result.history, result.best_epoch, directory / CURVE_FILE)

    metadata = {
        "hyperparameters": {
            "model": asdict(afm),
            "training": asdict(train),
            "data": _jsonable(data_config),
        },
        "protocol": data.protocol,
        "data": _data_record(data, result.vocabularies),
        "metrics": result.metrics,
    }
    return export_version(
        result.model,
        result.fields,
        result.vocabularies,
        model_dir,
        metadata,
        write_extras=write_extras,
    )
