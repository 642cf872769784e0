"""Fit an AFM with early stopping on validation AUC, then export it with its metrics and curve.

``fit`` is the one training loop. Its rows come from a row source (``model/training/rows.py``):
in memory (``InMemoryRows``) or streamed from a prepared directory's shards (``ShardedRows``),
the latter optionally on every worker of a cluster (``MultiWorker``,
``model/training/distributed.py``). An epoch is one ``Model.fit(epochs=1)`` call, or on a
cluster one ``StepRunner.epoch`` (Keras 3's ``fit`` does not run under
MultiWorkerMirroredStrategy); the loop draws each epoch's shuffle itself and then hands the
epoch's logs to one ``keras.callbacks.CallbackList``: ``ValidationScore`` adds the exact
validation AUC (``metrics.roc_auc``) as ``val_auc``, Keras's ``EarlyStopping`` stops after
``patience`` epochs without a strictly better one and restores the best weights when training
ends, and ``EpochLog`` keeps and logs the history. The export wraps the vocabularies as
lookup layers, so serving takes raw strings.

Reproducibility: ``keras.utils.set_random_seed`` seeds Python, NumPy and TensorFlow, every
initializer and the dropout layer carry explicit seeds, and each epoch's shuffle is seeded
(a permutation from ``np.random.default_rng(seed)`` in memory, a per-epoch seed for the
shards). On CPU two runs with the same seed and data produce the same weights (checked in
tests/integration/test_export.py).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import keras
import numpy as np

from model.config import AFMConfig, TrainConfig
from model.errors import AfmError
from model.export.savedmodel import export_version
from model.network.afm import build_afm, probability_model
from model.training.curve import write_curve
from model.training.distributed import Cluster, MultiWorker, StepRunner
from model.training.metrics import EpochRecord, scores
from model.training.optimizer import Adam
from model.training.progress import EpochProgress, show_progress_bar
from model.training.rows import Epochs, RowSource, Scored

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.json"
CURVE_FILE = "training_curve.png"
STEPS_PER_EXECUTION = 16  # fewer Python round trips per epoch; see docs/training.md

EpochLogs = dict[str, float]  # loss, auc (Keras's running values), examples_per_second, seconds


@dataclass
class FitResult:
    """A trained model (best weights restored), how it got there, and what its export records."""

    model: keras.Model  # dict outputs, see model.network.afm.build_afm
    fields: tuple[str, ...]
    vocabularies: dict[str, np.ndarray]
    history: list[EpochRecord] = field(default_factory=list)
    best_epoch: int = 0
    metrics: dict[str, Any] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)  # hyperparameters, protocol, data


def compiled_trainer(model: keras.Model, train: TrainConfig) -> keras.Model:
    """The probability-only view of ``model``, compiled: BCE, Adam, AUC."""
    trainer = probability_model(model)
    trainer.compile(
        optimizer=Adam(learning_rate=train.learning_rate),
        loss=keras.losses.BinaryCrossentropy(),
        metrics=[keras.metrics.AUC(name="auc")],
        steps_per_execution=STEPS_PER_EXECUTION,
    )
    # Adam's moments exist before the first step is traced: a tf.function whose first trace
    # creates variables is traced a second time.
    trainer.optimizer.build(trainer.trainable_variables)
    return trainer


def fit(
    rows: RowSource, afm: AFMConfig, train: TrainConfig, workers: MultiWorker | None = None
) -> FitResult | None:
    """Train on ``rows`` with early stopping on validation AUC; the best epoch's weights end
    in the result's model.

    With ``workers`` every worker of the cluster runs this at once: each trains on its own
    part of the rows (``rows.worker_epochs``), all run the same number of full steps of
    ``train.batch_size`` rows in all, and each scores the validation rows with a plain copy
    of the weights; the validation metrics are averaged over the workers (equal copies give
    equal values), so all stop at the same epoch. Only the chief scores the test rows and
    gets a result; the others get None.
    """
    _check_splits(rows.summary())
    if afm.fields != rows.field_set:
        raise AfmError(f"the rows are for --fields {rows.field_set}, not {afm.fields}")
    keras.utils.set_random_seed(train.seed)
    sizes = {f: len(rows.vocabularies[f]) + 1 for f in rows.fields}
    model = build_afm(rows.fields, sizes, afm, seed=train.seed)  # the one exported
    log.debug("model %s; training %s", afm, train)
    if workers is None:
        trainer = evaluator = compiled_trainer(model, train)
        runs = _fit_epochs(trainer, rows.epochs(train.batch_size, train.seed), train)
    else:
        with workers.strategy.scope():
            trainer = compiled_trainer(build_afm(rows.fields, sizes, afm, seed=train.seed), train)
        evaluator = probability_model(model)  # plain variables: predicts with no collective
        epochs = rows.worker_epochs(workers, train.batch_size, train.seed)
        runs = _step_epochs(StepRunner(workers.strategy, trainer, train.batch_size), epochs)

    def validate() -> dict[str, float]:
        _copy_weights(trainer, evaluator)
        valid = scores(*rows.predict(evaluator, "valid")[:2])
        if workers is not None:
            valid = dict(zip(valid, workers.mean(list(valid.values())), strict=True))
        return valid

    summary, cluster = rows.summary(), workers.cluster if workers is not None else None
    on_workers = f" on {cluster.workers} workers" if cluster is not None else ""
    log.info(
        f"training on {summary['train']['rows']:,} rows ({summary['train']['positives']:,} "
        f"positive) {rows.where}{on_workers}, validating on {summary['valid']['rows']:,}; "
        f"up to {train.epochs} epochs"
    )
    history, best_epoch = run_epochs(trainer, runs, validate, train)
    if cluster is not None and not cluster.chief:
        return None
    _copy_weights(trainer, evaluator)
    valid = scores(*rows.predict(evaluator, "valid")[:2])
    test = rows.predict(evaluator, "test")
    return FitResult(
        model=model,
        fields=rows.fields,
        vocabularies=rows.vocabularies,
        history=history,
        best_epoch=best_epoch,
        metrics=_final_metrics(history, best_epoch, valid, test, rows.held_out_movies),
        metadata=_metadata(rows, afm, train, cluster.workers if cluster else 1),
    )


def _metadata(rows: RowSource, afm: AFMConfig, train: TrainConfig, workers: int) -> dict:
    """metadata.json's record of the run: the configs used, the protocol, the data."""
    return {
        "hyperparameters": {
            "model": asdict(afm),
            "training": asdict(train),
            "data": rows.data_config,
        },
        "protocol": rows.protocol,
        "data": {**rows.data_record(), "workers": workers},
    }


def _check_splits(summary: Mapping[str, Mapping[str, int]]) -> None:
    """Refuse splits training cannot use: no training rows, or one label in a split."""
    if summary["train"]["rows"] == 0:
        raise AfmError("no training rows: the data or the protocol left the training split empty")
    for name, part in (("train", "train"), ("validation", "valid"), ("test", "test")):
        rows, positives = summary[part]["rows"], summary[part]["positives"]
        if positives == 0 or positives == rows:
            raise AfmError(
                f"the {name} split ({rows} rows) needs both positive and negative labels "
                "to compute AUC"
            )


def _copy_weights(trainer: keras.Model, evaluator: keras.Model) -> None:
    """The trainer's weights into the evaluator, when they are two models (on a cluster)."""
    if evaluator is not trainer:
        evaluator.set_weights(trainer.get_weights())


def _fit_epochs(trainer: keras.Model, epochs: Epochs, train: TrainConfig) -> Iterator[EpochLogs]:
    """One ``trainer.fit(epochs=1)`` per epoch of ``epochs``, timed, with a progress bar for
    a person watching."""
    bar = show_progress_bar()
    for epoch, (batches, rows) in enumerate(epochs, start=1):
        start = time.perf_counter()
        progress = [EpochProgress(rows, train.batch_size, f"epoch {epoch}/{train.epochs}")]
        history = trainer.fit(
            batches, epochs=1, shuffle=False, verbose=0, callbacks=progress if bar else None
        )
        seconds = time.perf_counter() - start
        yield _epoch_logs(history.history["loss"][-1], history.history["auc"][-1], rows, seconds)


def _step_epochs(runner: StepRunner, epochs: Epochs) -> Iterator[EpochLogs]:
    """One ``runner.epoch`` per epoch of ``epochs`` (distributed batches and steps), timed."""
    for dataset, steps in epochs:
        start = time.perf_counter()
        loss, auc = runner.epoch(dataset, steps)
        seconds = time.perf_counter() - start
        yield _epoch_logs(loss, auc, steps * runner.global_batch, seconds)


def _epoch_logs(loss: float, auc: float, rows: int, seconds: float) -> EpochLogs:
    return {
        "loss": float(loss),
        "auc": float(auc),
        "examples_per_second": rows / seconds,
        "seconds": seconds,
    }


class ValidationScore(keras.callbacks.Callback):
    """Puts the exact validation AUC and logloss of the weights after each epoch into the
    epoch's logs, as ``val_auc`` and ``val_logloss``, for the callbacks after it.

    ``validate()`` returns ``{"auc": ..., "logloss": ...}`` (``metrics.scores``): the
    Mann-Whitney AUC over every validation row, not Keras's bucketed ``AUC`` metric.
    """

    def __init__(self, validate: Callable[[], dict[str, float]]) -> None:
        super().__init__()
        self.validate = validate

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        valid = self.validate()
        if logs is not None:
            logs.update(val_auc=valid["auc"], val_logloss=valid["logloss"])


class EpochLog(keras.callbacks.Callback):
    """Keeps each epoch's ``EpochRecord`` (metrics.json's history) and logs its line."""

    def __init__(self, epochs: int) -> None:
        super().__init__()
        self.epochs = epochs
        self.records: list[EpochRecord] = []

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        record = EpochRecord.from_logs(epoch, logs or {})
        self.records.append(record)
        log.info(
            f"epoch {record.epoch}/{self.epochs}  loss {record.train_loss:.4f}  "
            f"val_auc {record.valid_auc:.4f}  val_logloss {record.valid_logloss:.4f}  "
            f"{record.examples_per_second:,.0f} examples/s  ({record.seconds:.1f}s)"
        )


def run_epochs(
    trainer: keras.Model,
    runs: Iterator[EpochLogs],
    validate: Callable[[], dict[str, float]],
    train: TrainConfig,
) -> tuple[list[EpochRecord], int]:
    """Up to ``train.epochs`` epochs, each one ``next(runs)`` (which trains it) followed by
    the callbacks; the best epoch's weights end in ``trainer``. Returns the history and the
    best epoch (1-based).

    Early stopping is Keras's, on ``val_auc``: after ``train.patience`` epochs without a
    strictly better one, training stops, and when it ends the best weights are restored.
    """
    stopping = keras.callbacks.EarlyStopping(
        monitor="val_auc", mode="max", patience=train.patience, restore_best_weights=True
    )
    stopping.monitor_op = np.greater  # in float64: Keras's own op compares float32 values
    history = EpochLog(train.epochs)
    callbacks = keras.callbacks.CallbackList(
        [ValidationScore(validate), stopping, history], model=trainer
    )
    trainer.stop_training = False
    callbacks.on_train_begin()
    for epoch in range(train.epochs):
        callbacks.on_epoch_end(epoch, next(runs))
        if trainer.stop_training:
            log.info(f"early stop: no better val_auc for {stopping.wait} epochs")
            break
    callbacks.on_train_end()
    return history.records, stopping.best_epoch + 1


def _final_metrics(
    history: list[EpochRecord],
    best_epoch: int,
    valid: dict[str, float],
    test: Scored,
    held_out_movies: int | None,
) -> dict[str, Any]:
    """metrics.json's summary: valid and test metrics, epochs, and the held-out movies' slice
    of the test rows when movies were kept out of training."""
    labels, probabilities, held = test
    metrics: dict[str, Any] = {
        "valid": valid,
        "test": scores(labels, probabilities),
        "epochs_run": len(history),
        "best_epoch": best_epoch,
    }
    if held is not None:
        metrics["test_held_out_movies"] = {
            "rows": int(held.sum()),
            "positives": int(labels[held].sum()),
            **scores(labels[held], probabilities[held]),
        }
        log.info(
            f"test rows of the {held_out_movies or 0:,} held-out movies: "
            f"AUC {metrics['test_held_out_movies']['auc']:.4f}"
        )
    log.info(
        f"best epoch {best_epoch}: test AUC {metrics['test']['auc']:.4f}  test logloss "
        f"{metrics['test']['logloss']:.4f}  (valid AUC {valid['auc']:.4f})"
    )
    return metrics


def export_trained(result: FitResult, model_dir: Path) -> Path:
    """Export a ``fit`` result as one new version under ``model_dir``; return its directory.

    The version directory holds the SavedModel, ``metadata.json`` (contract.ModelMetadata),
    ``metrics.json`` (valid/test AUC and logloss, per-epoch history) and the curve PNG.
    """
    report = {**result.metrics, "history": [asdict(r) for r in result.history]}

    def write_extras(directory: Path) -> None:
        (directory / METRICS_FILE).write_text(json.dumps(report, indent=2) + "\n")
        write_curve(result.history, result.best_epoch, directory / CURVE_FILE)

    return export_version(
        result.model,
        result.fields,
        result.vocabularies,
        model_dir,
        {**result.metadata, "metrics": result.metrics},
        write_extras=write_extras,
    )


def train_and_export(
    rows: RowSource,
    afm: AFMConfig,
    train: TrainConfig,
    model_dir: Path,
    cluster: Cluster | None = None,
) -> Path | None:
    """``fit``, then export a new version (single process, or the chief of ``cluster``);
    None on the cluster's other workers."""
    workers = MultiWorker.join(cluster) if cluster is not None else None  # before any other op
    result = fit(rows, afm, train, workers)
    version = export_trained(result, model_dir) if result is not None else None
    if workers is not None:
        workers.mean([0.0])  # leave together: a worker gone early looks crashed to the rest
    return version
