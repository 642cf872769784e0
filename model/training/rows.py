"""Where ``fit`` gets its rows: in memory (``InMemoryRows``) or from shards (``ShardedRows``).

A row source gives the training loop (``model.training.train.fit``) all that differs between
the two: the fields and vocabularies, the rows and positives per split, each epoch's training
batches (one process, or each worker's own part under ``MultiWorker``), the labels and
probabilities of a split, and what metadata.json records about the data. Both hand the model
integer ids (``PreparedData.encode``, or the same ids read back from the shards).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Mapping
from functools import cached_property
from typing import Any, NamedTuple, Protocol

import keras
import numpy as np
import tensorflow as tf

from model.config import DataConfig, as_record
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
from model.training.distributed import MultiWorker, in_memory_refusal

PREDICT_BATCH = 65536

Epochs = Iterator[tuple[Any, int]]
"""Batches of one epoch after another, with the rows (one process) or the steps (workers)."""


class Scored(NamedTuple):
    """A split's labels and predicted probabilities in row order, and for the test split of
    a set with held-out movies, which rows are theirs (else None)."""

    labels: np.ndarray
    probabilities: np.ndarray
    held_out: np.ndarray | None


class RowSource(Protocol):
    """What ``fit`` asks of its rows; ``InMemoryRows`` and ``ShardedRows`` are the two."""

    field_set: str  # a key of contract.FIELD_SETS
    where: str  # for the log: "in memory", "streamed from DIR"
    protocol: str
    data_config: dict[str, Any]  # the DataConfig the rows came from, as metadata.json records it
    held_out_movies: int | None  # movies kept out of training, if any

    @property
    def fields(self) -> tuple[str, ...]: ...

    @property
    def vocabularies(self) -> dict[str, np.ndarray]: ...

    def summary(self) -> dict[str, dict[str, int]]:
        """Rows and positives per split (train, valid, test)."""
        ...

    def epochs(self, batch_size: int, seed: int) -> Epochs:
        """Each epoch's training batches for one process, and its rows."""
        ...

    def worker_epochs(self, workers: MultiWorker, batch_size: int, seed: int) -> Epochs:
        """Each epoch's distributed batches for ``workers``, and its steps."""
        ...

    def predict(self, model: keras.Model, split: str) -> Scored: ...

    def data_record(self) -> dict[str, Any]:
        """metadata.json's ``data``: protocol details, summary, source, vocabulary sizes."""
        ...


class InMemoryRows:
    """The rows of a ``PreparedData``, encoded for ``field_set``; each epoch a NumPy
    permutation of the training rows from ``np.random.default_rng(seed)``."""

    where = "in memory"

    def __init__(
        self, data: PreparedData, field_set: str, data_config: DataConfig | None = None
    ) -> None:
        self.data, self.field_set = data, field_set
        self.protocol = data.protocol
        self.data_config = as_record(data_config) if data_config is not None else {}
        held = data.held_out_movies
        self.held_out_movies = None if held is None else len(held)
        self._encoded: dict[str, dict[str, np.ndarray]] = {}

    @property
    def fields(self) -> tuple[str, ...]:
        return FIELD_SETS[self.field_set]

    @cached_property
    def vocabularies(self) -> dict[str, np.ndarray]:
        return self.data.vocabularies(self.fields)

    def summary(self) -> dict[str, dict[str, int]]:
        return self.data.summary()

    def epochs(self, batch_size: int, seed: int) -> Epochs:
        inputs = self.data.encode(self.data.train, self.vocabularies, self.fields)
        labels = self.data.train.label.astype(np.float32)
        rows, rng = epoch_rows(len(labels), batch_size), np.random.default_rng(seed)
        while True:
            yield epoch_dataset(inputs, labels, batch_size, rng), rows

    def worker_epochs(self, workers: MultiWorker, batch_size: int, seed: int) -> Epochs:
        raise in_memory_refusal(workers.cluster)

    def predict(self, model: keras.Model, split: str) -> Scored:
        rows = getattr(self.data, split)
        if split not in self._encoded:  # validation rows are scored after every epoch
            self._encoded[split] = self.data.encode(rows, self.vocabularies, self.fields)
        held = None
        if split == "test" and self.data.held_out_movies is not None:
            held = np.isin(rows.movie_idx, self.data.held_out_movies)
        return Scored(rows.label, predict(model, self._encoded[split]), held)

    def data_record(self) -> dict[str, Any]:
        return _data_record(self.data.extra, self.summary(), self.data.source, self.vocabularies)


class ShardedRows:
    """The rows of a prepared directory (``model/data/shards.py``), streamed: memory holds a
    shuffle buffer, not the data."""

    def __init__(self, manifest: Manifest) -> None:
        self.manifest = manifest
        self.field_set = manifest.field_set
        self.where = f"streamed from {manifest.directory}"
        self.protocol = manifest.protocol
        self.data_config = manifest.data_config
        self.held_out_movies = manifest.held_out_movies

    @property
    def fields(self) -> tuple[str, ...]:
        return self.manifest.fields

    @property
    def vocabularies(self) -> dict[str, np.ndarray]:
        return self.manifest.vocabularies

    def summary(self) -> dict[str, dict[str, int]]:
        return self.manifest.summary()

    def epochs(self, batch_size: int, seed: int) -> Epochs:
        files, rows = self.manifest.files("train"), self.manifest.rows("train")
        for epoch in itertools.count(1):
            yield training_batches(self.manifest, files, batch_size, seed=seed, epoch=epoch), rows

    def worker_epochs(self, workers: MultiWorker, batch_size: int, seed: int) -> Epochs:
        """Epochs of equal length on every worker: as many full steps as the worker with the
        fewest rows can feed (the rest of each worker's rows, less than a step, sits out)."""
        count = workers.cluster.workers
        if batch_size % count:
            raise AfmError(f"--batch-size {batch_size} must be a multiple of the {count} workers")
        per_worker = batch_size // count
        steps = min(worker_rows(self.manifest, w, count) for w in range(count)) // per_worker
        if steps == 0:
            raise AfmError(f"each of the {count} workers needs at least {per_worker} training rows")
        return self._worker_epochs(workers, batch_size, seed, steps)

    def _worker_epochs(
        self, workers: MultiWorker, batch_size: int, seed: int, steps: int
    ) -> Epochs:
        for epoch in itertools.count(1):

            def dataset_fn(context: Any, epoch: int = epoch) -> tf.data.Dataset:
                pipeline, pipelines = context.input_pipeline_id, context.num_input_pipelines
                files = worker_files(self.manifest, pipeline, pipelines)
                batch = context.get_per_replica_batch_size(batch_size)
                return training_batches(
                    self.manifest, files, batch, seed=seed, epoch=epoch, steps=steps
                )

            yield workers.strategy.distribute_datasets_from_function(dataset_fn), steps

    def predict(self, model: keras.Model, split: str) -> Scored:
        labels, probabilities, held = [], [], []
        for batch in evaluation_batches(self.manifest, split, PREDICT_BATCH):
            probabilities.append(np.asarray(model.predict_on_batch(batch[0])).reshape(-1))
            labels.append(batch[1].numpy())
            if len(batch) == 3:
                held.append(batch[2].numpy().astype(bool))
        return Scored(
            np.concatenate(labels),
            np.concatenate(probabilities),
            np.concatenate(held) if held else None,
        )

    def data_record(self) -> dict[str, Any]:
        manifest = self.manifest
        record = _data_record(manifest.extra, self.summary(), manifest.source, self.vocabularies)
        return {**record, "prepared": str(manifest.directory)}


def _data_record(
    extra: Mapping[str, Any],
    summary: Mapping[str, Any],
    source: str,
    vocabularies: Mapping[str, np.ndarray],
) -> dict[str, Any]:
    vocabulary_sizes = {f: len(v) for f, v in vocabularies.items()}
    return {**extra, **summary, "source": source, "vocabulary_sizes": vocabulary_sizes}


def epoch_dataset(
    inputs: Mapping[str, np.ndarray],
    labels: np.ndarray,
    batch_size: int,
    rng: np.random.Generator,
) -> tf.data.Dataset:
    """One shuffled epoch as a dataset of ready-made batches, ``epoch_rows`` rows in all.

    The permutation comes from ``rng`` (reproducible), and rows are cut into batches in NumPy,
    so tf.data only hands out whole tensors: no per-row work in the input pipeline, and so
    nothing to prefetch or autotune. Autotuning is off because with it about one epoch in
    three stalled ~0.6 s after its last batch, as ``fit`` released the epoch's iterator.
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
    wait for a later epoch: a partial last batch has a shape of its own, for which the
    training step would be traced and XLA-compiled again.
    """
    return rows if rows < batch_size else rows // batch_size * batch_size


def predict(model: keras.Model, inputs: Mapping[str, np.ndarray]) -> np.ndarray:
    """Probabilities of every row, ``PREDICT_BATCH`` rows per ``predict_on_batch`` call.

    Not ``model.predict``, which builds a tf.data pipeline and callbacks on every call (the
    work between two ML-100K epochs: 0.15 s with it, 0.09 s without).
    """
    rows, step = len(next(iter(inputs.values()))), PREDICT_BATCH
    chunks = (
        model.predict_on_batch({name: values[i : i + step] for name, values in inputs.items()})
        for i in range(0, rows, step)
    )
    return np.concatenate([np.asarray(chunk).reshape(-1) for chunk in chunks])
