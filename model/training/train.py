"""Fit an AFM with early stopping on validation AUC, then export it with its metrics and curve.

Training runs on integer ids (``PreparedData.encode``) from in-memory int32 arrays (``fit``),
or streamed from a prepared directory's shards (``fit_prepared``, ``model/data/shards.py``),
there optionally on several workers (``model/training/distributed.py``); both share the model,
compilation, epoch loop, metrics and export. The export wraps the same vocabularies as lookup
layers, so serving takes raw strings.

Reproducibility: ``keras.utils.set_random_seed`` seeds Python, NumPy and TensorFlow, every
initializer and the dropout layer carry explicit seeds, and each epoch's shuffle is a
permutation from ``np.random.default_rng(seed)``. On CPU this makes two runs with the same
seed and data produce the same weights (checked in tests/integration/test_train_cli.py).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from model.cli.logs import json_output, stderr_is_terminal
from model.config import AFMConfig, DataConfig, TrainConfig
from model.contracts.export_format import FIELD_SETS
from model.data.dataset import PreparedData
from model.data.shards import (
    Manifest,
    evaluation_batches,
    training_batches,
    worker_files,
    worker_rows,
)
from model.errors import AfmError
from model.export.savedmodel import export_version
from model.network.afm import build_afm, probability_model
from model.training.distributed import Cluster, StepRunner, all_mean, make_strategy
from model.training.optimizer import Adam

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

    model: keras.Model  # dict outputs, see model.network.afm.build_afm
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
    _check_summary(data.summary())


def _check_summary(summary: Mapping[str, Mapping[str, int]]) -> None:
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


def epoch_dataset(
    inputs: Mapping[str, np.ndarray],
    labels: np.ndarray,
    batch_size: int,
    rng: np.random.Generator,
) -> tf.data.Dataset:
    """One shuffled epoch as a dataset of ready-made batches, ``epoch_rows`` rows in all.

    The permutation comes from ``rng`` (reproducible), and rows are cut into batches in NumPy,
    so tf.data only hands out whole tensors: no per-row work in the input pipeline, and so
    nothing to prefetch or autotune. Autotuning is switched off because it cost time: with it,
    about one epoch in three ended with a ~0.6 s stall after the last batch, as ``fit``
    returned and released the epoch's iterator (ML-1M: 0.6-0.7 s epochs took 1.3 s; a default
    run on the quality benchmark's split took 11.9 s with it and 10.6 s without, means of
    three alternating runs).
    ``inputs`` are the model inputs by name, each with one row per label.
    """
    order = rng.permutation(len(labels))[: epoch_rows(len(labels), batch_size)]
    inputs = {name: values[order] for name, values in inputs.items()}
    labels = labels[order]
    if len(labels) < batch_size:
        batches = tf.data.Dataset.from_tensors((inputs, labels))
    else:

        def batched(values: np.ndarray) -> np.ndarray:
            return values.reshape(-1, batch_size, *values.shape[1:])

        batches = tf.data.Dataset.from_tensor_slices(
            ({name: batched(values) for name, values in inputs.items()}, batched(labels))
        )
    options = tf.data.Options()
    options.autotune.enabled = False
    return batches.with_options(options)


def epoch_rows(rows: int, batch_size: int) -> int:
    """Rows an epoch trains on: whole batches only, unless there are fewer rows than one.

    The rest (fewer than ``batch_size``, other rows each epoch since the order is shuffled)
    wait for a later epoch. A partial last batch has a shape of its own, and the training
    step with it was slower to trace and compile: ML-100K, 3 epochs, 17.2 s against 15.2 s
    for the whole run (``afm-ctr train --epochs 3`` on the quality benchmark's split).
    """
    return rows if rows < batch_size else rows // batch_size * batch_size


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
    """Probabilities of every row, ``PREDICT_BATCH`` rows per ``predict_on_batch`` call.

    Not ``model.predict``, which builds a tf.data pipeline and callbacks on every call: the
    work between two epochs (validating, cutting the next epoch's batches) took 0.15 s with
    it and 0.09 s this way on ML-100K (the quality benchmark's split, 10,373 validation
    rows; same AUC).
    """
    rows, step = len(next(iter(inputs.values()))), PREDICT_BATCH
    chunks = (
        model.predict_on_batch({name: values[i : i + step] for name, values in inputs.items()})
        for i in range(0, rows, step)
    )
    return np.concatenate([np.asarray(chunk).reshape(-1) for chunk in chunks])


def _metrics(labels: np.ndarray, probabilities: np.ndarray) -> dict[str, float]:
    return {"auc": roc_auc(labels, probabilities), "logloss": log_loss(labels, probabilities)}


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
    # creates variables is traced a second time. The first fit: 2.9-3.2 s against 3.2-3.8 s
    # (16 ML-100K batches, two alternating runs).
    trainer.optimizer.build(trainer.trainable_variables)
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
    bar = _show_progress_bar()
    log.debug("model %s; training %s", afm, train)
    log.info(
        f"training on {len(y_train):,} rows ({int(y_train.sum()):,} positive), "
        f"validating on {len(data.valid):,}; up to {train.epochs} epochs"
    )

    def run_epoch(epoch: int) -> EpochRun:
        batches = epoch_dataset(x_train, y_train, train.batch_size, rng)
        rows = epoch_rows(len(y_train), train.batch_size)
        return _fit_epoch(trainer, batches, rows, train, epoch, bar)

    _train_epochs(
        trainer, train, run_epoch, lambda: _evaluate(trainer, x_valid, data.valid.label), result
    )
    valid = _evaluate(trainer, x_valid, data.valid.label)
    test_probabilities = _predict(trainer, data.encode(data.test, vocabularies, fields))
    held, held_movies = None, 0
    if data.held_out_movies is not None:
        held = np.isin(data.test.movie_idx, data.held_out_movies)
        held_movies = len(data.held_out_movies)
    result.metrics = _final_metrics(
        result, valid, data.test.label, test_probabilities, held, held_movies
    )
    return result


@dataclass(frozen=True)
class EpochRun:
    """What one epoch of training reports: Keras's running loss and AUC, rows, seconds."""

    loss: float
    auc: float
    rows: int
    seconds: float


def _fit_epoch(
    trainer: keras.Model,
    batches: tf.data.Dataset,
    rows: int,
    train: TrainConfig,
    epoch: int,
    bar: bool,
) -> EpochRun:
    """One epoch of ``trainer.fit`` over ``batches`` (``rows`` rows), timed."""
    start = time.perf_counter()
    progress = [EpochProgress(rows, train.batch_size, f"epoch {epoch}/{train.epochs}")]
    history = trainer.fit(
        batches, epochs=1, shuffle=False, verbose=0, callbacks=progress if bar else None
    )
    return EpochRun(
        loss=float(history.history["loss"][-1]),
        auc=float(history.history["auc"][-1]),
        rows=rows,
        seconds=time.perf_counter() - start,
    )


def _train_epochs(
    trainer: keras.Model,
    train: TrainConfig,
    run_epoch: Callable[[int], EpochRun],
    validate: Callable[[], dict[str, float]],
    result: FitResult,
) -> None:
    """The epoch loop: train, validate, log, stop early; the best weights end in ``trainer``.

    ``run_epoch(epoch)`` trains one epoch; ``validate()`` returns the validation AUC and
    logloss of the current weights. Fills ``result.history`` and ``result.best_epoch``.
    """
    best_auc, best_weights, waited = -np.inf, trainer.get_weights(), 0
    for epoch in range(1, train.epochs + 1):
        run = run_epoch(epoch)
        valid = validate()
        record = EpochRecord(
            epoch=epoch,
            train_loss=run.loss,
            train_auc=run.auc,
            valid_auc=valid["auc"],
            valid_logloss=valid["logloss"],
            examples_per_second=run.rows / run.seconds,
            seconds=run.seconds,
        )
        result.history.append(record)
        log.info(
            f"epoch {epoch}/{train.epochs}  loss {record.train_loss:.4f}  "
            f"val_auc {record.valid_auc:.4f}  val_logloss {record.valid_logloss:.4f}  "
            f"{record.examples_per_second:,.0f} examples/s  ({run.seconds:.1f}s)"
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


def _final_metrics(
    result: FitResult,
    valid: dict[str, float],
    test_labels: np.ndarray,
    test_probabilities: np.ndarray,
    held: np.ndarray | None,
    held_movies: int,
) -> dict[str, Any]:
    """metrics.json's summary: valid and test metrics, epochs, and the held-out movies' slice
    (``held``: which test rows are theirs) when movies were kept out of training."""
    test = _metrics(test_labels, test_probabilities)
    metrics: dict[str, Any] = {
        "valid": valid,
        "test": test,
        "epochs_run": len(result.history),
        "best_epoch": result.best_epoch,
    }
    if held is not None:
        metrics["test_held_out_movies"] = {
            "rows": int(held.sum()),
            "positives": int(test_labels[held].sum()),
            **_metrics(test_labels[held], test_probabilities[held]),
        }
        log.info(
            f"test rows of the {held_movies:,} held-out movies: "
            f"AUC {metrics['test_held_out_movies']['auc']:.4f}"
        )
    log.info(
        f"best epoch {result.best_epoch}: test AUC {test['auc']:.4f}  test logloss "
        f"{test['logloss']:.4f}  (valid AUC {valid['auc']:.4f})"
    )
    return metrics


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
    return _export(
        result,
        afm,
        train,
        model_dir,
        data_hyperparameters=_jsonable(data_config),
        protocol=data.protocol,
        data_record=_data_record(data, result.vocabularies),
    )


def _export(
    result: FitResult,
    afm: AFMConfig,
    train: TrainConfig,
    model_dir: Path,
    *,
    data_hyperparameters: dict[str, Any],
    protocol: str,
    data_record: dict[str, Any],
) -> Path:
    metrics_report = {**result.metrics, "history": [asdict(r) for r in result.history]}

    def write_extras(directory: Path) -> None:
        (directory / METRICS_FILE).write_text(json.dumps(metrics_report, indent=2) + "\n")
        write_curve(result.history, result.best_epoch, directory / CURVE_FILE)

    metadata = {
        "hyperparameters": {
            "model": asdict(afm),
            "training": asdict(train),
            "data": data_hyperparameters,
        },
        "protocol": protocol,
        "data": data_record,
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


# -------------------------------------------------------- prepared rows (model/data/shards.py)


def fit_prepared(
    manifest: Manifest,
    afm: AFMConfig,
    train: TrainConfig,
    cluster: Cluster | None = None,
    strategy: Any = None,
) -> FitResult | None:
    """``fit`` over a prepared directory, its training rows streamed from the shards.

    The model, its compilation, the epoch loop, early stopping and the metrics are
    ``fit``'s. With ``cluster`` (from TF_CONFIG) training runs on every worker under
    MultiWorkerMirroredStrategy: each worker streams its own shards, all run the same
    number of full steps of ``train.batch_size`` rows in all, and each scores the
    validation rows with a plain copy of the weights; the validation metrics are averaged
    over the workers (equal copies give equal values), so all stop at the same epoch. Only
    the chief scores the test rows and gets a result; the others get None. ``strategy``
    (``distributed.make_strategy()``) goes with ``cluster``.
    """
    if (cluster is None) != (strategy is None):
        raise ValueError("a cluster needs its strategy, and a strategy its cluster")
    if afm.fields != manifest.field_set:
        raise AfmError(
            f"{manifest.directory} holds rows for --fields {manifest.field_set}, "
            f"not {afm.fields}; prepare it again with --fields {afm.fields}"
        )
    _check_summary(manifest.summary())
    keras.utils.set_random_seed(train.seed)
    fields, vocabularies = manifest.fields, manifest.vocabularies
    sizes = {f: len(vocabularies[f]) + 1 for f in fields}
    model = build_afm(fields, sizes, afm, seed=train.seed)  # the one exported
    log.debug("model %s; training %s", afm, train)
    if cluster is None:
        trainer = evaluator = compiled_trainer(model, train)
        run_epoch = _streamed_epochs(trainer, manifest, train, _show_progress_bar())

        def validate() -> dict[str, float]:
            return _metrics(*_predict_prepared(evaluator, manifest, "valid")[:2])

    else:
        with strategy.scope():
            trainer = compiled_trainer(build_afm(fields, sizes, afm, seed=train.seed), train)
        evaluator = probability_model(model)  # plain variables: predicts with no collective
        run_epoch = _multi_worker_epochs(strategy, trainer, manifest, train, cluster)

        def validate() -> dict[str, float]:
            evaluator.set_weights(trainer.get_weights())
            valid = _metrics(*_predict_prepared(evaluator, manifest, "valid")[:2])
            auc, logloss = all_mean(strategy, [valid["auc"], valid["logloss"]])
            return {"auc": auc, "logloss": logloss}

    summary = manifest.summary()
    log.info(
        f"streaming {summary['train']['rows']:,} training rows "
        f"({summary['train']['positives']:,} positive) from {manifest.directory}"
        + (f" on {cluster.workers} workers" if cluster else "")
        + f", validating on {summary['valid']['rows']:,}; up to {train.epochs} epochs"
    )
    result = FitResult(model=model, fields=fields, vocabularies=vocabularies)
    _train_epochs(trainer, train, run_epoch, validate, result)
    if cluster is not None and not cluster.chief:
        return None
    evaluator.set_weights(trainer.get_weights())
    valid = _metrics(*_predict_prepared(evaluator, manifest, "valid")[:2])
    labels, probabilities, held = _predict_prepared(evaluator, manifest, "test")
    result.metrics = _final_metrics(
        result, valid, labels, probabilities, held, manifest.held_out_movies or 0
    )
    return result


def _streamed_epochs(
    trainer: keras.Model, manifest: Manifest, train: TrainConfig, bar: bool
) -> Callable[[int], EpochRun]:
    rows, files = manifest.rows("train"), manifest.files("train")

    def run_epoch(epoch: int) -> EpochRun:
        batches = training_batches(manifest, files, train.batch_size, seed=train.seed, epoch=epoch)
        return _fit_epoch(trainer, batches, rows, train, epoch, bar)

    return run_epoch


def _multi_worker_epochs(
    strategy: Any, trainer: keras.Model, manifest: Manifest, train: TrainConfig, cluster: Cluster
) -> Callable[[int], EpochRun]:
    """Epochs of equal length on every worker: as many full steps as the worker with the
    fewest rows can feed (the rest of each worker's rows, less than a step, sits out)."""
    workers = cluster.workers
    if train.batch_size % workers:
        raise AfmError(
            f"--batch-size {train.batch_size} must be a multiple of the {workers} workers"
        )
    per_worker = train.batch_size // workers
    steps = min(worker_rows(manifest, w, workers) for w in range(workers)) // per_worker
    if steps == 0:
        raise AfmError(f"each of the {workers} workers needs at least {per_worker} training rows")
    runner = StepRunner(strategy, trainer, train.batch_size)

    def run_epoch(epoch: int) -> EpochRun:
        def dataset_fn(context: Any) -> tf.data.Dataset:
            files = worker_files(manifest, context.input_pipeline_id, context.num_input_pipelines)
            batch = context.get_per_replica_batch_size(train.batch_size)
            return training_batches(
                manifest, files, batch, seed=train.seed, epoch=epoch, steps=steps
            )

        dataset = strategy.distribute_datasets_from_function(dataset_fn)
        start = time.perf_counter()
        loss, auc = runner.epoch(dataset, steps)
        seconds = time.perf_counter() - start
        return EpochRun(loss=loss, auc=auc, rows=steps * train.batch_size, seconds=seconds)

    return run_epoch


def _predict_prepared(
    model: keras.Model, manifest: Manifest, split: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Labels and probabilities of ``split``'s rows in file order, and for the test split of a
    set with held-out movies, which rows are theirs (else None)."""
    labels, probabilities, held = [], [], []
    for batch in evaluation_batches(manifest, split, PREDICT_BATCH):
        probabilities.append(np.asarray(model.predict_on_batch(batch[0])).reshape(-1))
        labels.append(batch[1].numpy())
        if len(batch) == 3:
            held.append(batch[2].numpy().astype(bool))
    return (
        np.concatenate(labels),
        np.concatenate(probabilities),
        np.concatenate(held) if held else None,
    )


def train_prepared_and_export(
    manifest: Manifest,
    afm: AFMConfig,
    train: TrainConfig,
    model_dir: Path,
    cluster: Cluster | None = None,
) -> Path | None:
    """``fit_prepared``, then (single process, or the chief) export a new version as
    ``train_and_export`` does; None on the other workers of a cluster."""
    strategy = make_strategy() if cluster is not None else None  # before any other op
    result = fit_prepared(manifest, afm, train, cluster, strategy)
    workers = cluster.workers if cluster is not None else 1
    version = None
    if result is not None:
        version = _export_prepared(result, manifest, afm, train, model_dir, workers)
    if strategy is not None:
        all_mean(strategy, [0.0])  # leave together: a worker gone early looks crashed to the rest
    return version


def _export_prepared(
    result: FitResult,
    manifest: Manifest,
    afm: AFMConfig,
    train: TrainConfig,
    model_dir: Path,
    workers: int,
) -> Path:
    record = {
        **manifest.extra,
        **manifest.summary(),
        "source": manifest.source,
        "vocabulary_sizes": {f: len(v) for f, v in result.vocabularies.items()},
        "prepared": str(manifest.directory),
        "workers": workers,
    }
    return _export(
        result,
        afm,
        train,
        model_dir,
        data_hyperparameters=manifest.data_config,
        protocol=manifest.protocol,
        data_record=record,
    )
