"""Multi-worker training on ``tf.distribute.MultiWorkerMirroredStrategy``, driven by TF_CONFIG.

Every worker holds a full copy of the model; each step, each worker computes gradients on
its own part of the global batch (read from its own training shards,
``shards.worker_files``) and an all-reduce sums them, so all copies take the same step.
TF_CONFIG (set by a Kubernetes TFJob, Ray Train's TensorflowTrainer, or by hand) names the
cluster and this process's task::

    {"cluster": {"worker": ["host0:port", "host1:port"]}, "task": {"type": "worker", "index": 0}}

The chief (task type ``chief``, or worker 0 when the cluster has none) exports the version;
the other workers finish with the chief's last collective step and exit 0. Only prepared rows
train on a cluster (``afm-ctr train --prepared``): each worker reads its own shards, where
rows read in memory would have every worker train alone and export a version of its own.

Keras 3's ``Model.fit`` does not run under this strategy (it all-reduces the first batch to
build the model and reduces scalar logs along axis 0: keras-team/keras#20329,
tensorflow/tensorflow#72388), so ``StepRunner`` is the training step written out: the same
model, optimizer and loss as ``model.training.train.compiled_trainer``, under ``strategy.run``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from model.errors import AfmError

TF_CONFIG = "TF_CONFIG"
STEPS_PER_CALL = 16  # steps per tf.function call: fewer Python round trips, as fit's 16


@dataclass(frozen=True)
class Cluster:
    """This process's place in the TF_CONFIG cluster."""

    workers: int  # training tasks: chief (if any) + workers
    index: int  # this task's input pipeline: 0 for the chief, its worker index otherwise
    chief: bool


def cluster_from_env(environ: dict[str, str] | None = None) -> Cluster | None:
    """The cluster TF_CONFIG names, or None when it is unset (single-process training)."""
    raw = (os.environ if environ is None else environ).get(TF_CONFIG, "").strip()
    if not raw:
        return None
    try:
        config = json.loads(raw)
        cluster, task = config["cluster"], config["task"]
        kind, index = task["type"], int(task["index"])
    except (ValueError, KeyError, TypeError) as exc:
        raise AfmError(f"{TF_CONFIG} is not a cluster spec with a task ({exc!r})") from None
    unknown = set(cluster) - {"chief", "worker"}
    if unknown:
        raise AfmError(
            f"{TF_CONFIG} names {sorted(unknown)} tasks; afm-ctr trains with chief and worker "
            "tasks only (MultiWorkerMirroredStrategy; see docs/training-at-scale.md for "
            "ParameterServer)"
        )
    chiefs, workers = len(cluster.get("chief", [])), len(cluster.get("worker", []))
    if kind not in ("chief", "worker") or not 0 <= index < len(cluster.get(kind, [])):
        raise AfmError(f"{TF_CONFIG} task {kind} {index} is not in its cluster")
    return Cluster(
        workers=chiefs + workers,
        index=index if kind == "chief" else chiefs + index,
        chief=kind == "chief" or (chiefs == 0 and index == 0),
    )


def in_memory_refusal(cluster: Cluster) -> AfmError:
    """The error for rows read in memory on a cluster: what happens, and what to run instead."""
    return AfmError(
        f"{TF_CONFIG} names a cluster of {cluster.workers} training tasks, and without "
        "--prepared each would train alone and export its own version; write the rows once "
        "with `afm-ctr prepare --out DIR`, then run `afm-ctr train --prepared DIR` on every worker"
    )


def make_strategy() -> Any:
    """MultiWorkerMirroredStrategy over TF_CONFIG, ring all-reduce (CPU: no NCCL).

    Must run before any other TensorFlow op in the process: it starts the collective
    runtime, and blocks until every worker of the cluster has started.
    """
    import tensorflow as tf

    options = tf.distribute.experimental.CommunicationOptions(
        implementation=tf.distribute.experimental.CommunicationImplementation.RING
    )
    return tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)


@dataclass(frozen=True)
class MultiWorker:
    """This process's task in a TF_CONFIG cluster, and the strategy spanning the cluster."""

    cluster: Cluster
    strategy: Any

    @classmethod
    def join(cls, cluster: Cluster) -> MultiWorker:
        """Start the collective runtime (``make_strategy``): before any other TensorFlow op."""
        return cls(cluster, make_strategy())

    def mean(self, values: list[float]) -> list[float]:
        """The mean of ``values`` over all workers (a collective: every worker must call it,
        with as many values)."""
        import tensorflow as tf

        return [float(v) for v in self._mean(tf.constant(values, dtype=tf.float64)).numpy()]

    @cached_property
    def _mean(self) -> Any:
        """One tf.function for every ``mean``: traced once per length of ``values``."""
        import tensorflow as tf

        @tf.function
        def reduce(local: tf.Tensor) -> tf.Tensor:
            per_replica = self.strategy.run(tf.identity, args=(local,))
            return self.strategy.reduce(tf.distribute.ReduceOp.MEAN, per_replica, axis=None)

        return reduce


class StepRunner:
    """Training steps of ``trainer`` (compiled: optimizer and loss) under ``strategy``.

    ``trainer`` and its optimizer must have been made inside ``strategy.scope()``. The loss
    is the compiled loss per example, averaged over the global batch, plus the model's
    regularization losses divided by the replica count: summed over replicas, the gradient
    is the single-process gradient of the same global batch.
    """

    def __init__(self, strategy: Any, trainer: Any, global_batch: int) -> None:
        import keras
        import tensorflow as tf

        self.strategy, self.trainer, self.global_batch = strategy, trainer, global_batch
        self.loss_fn = keras.losses.BinaryCrossentropy(reduction=None)
        with strategy.scope():
            self.loss = keras.metrics.Mean(name="loss")
            self.auc = keras.metrics.AUC(name="auc")
        self._steps = tf.function(self._steps_fn)

    def _step(self, inputs: Any, labels: Any) -> None:
        import tensorflow as tf

        with tf.GradientTape() as tape:
            probabilities = self.trainer(inputs, training=True)  # (batch,)
            per_example = self.loss_fn(labels[:, None], probabilities[:, None])  # (batch,)
            loss = tf.nn.compute_average_loss(per_example, global_batch_size=self.global_batch)
            if self.trainer.losses:
                loss += tf.nn.scale_regularization_loss(tf.add_n(self.trainer.losses))
        variables = self.trainer.trainable_variables
        self.trainer.optimizer.apply(tape.gradient(loss, variables), variables)
        self.loss.update_state(per_example)
        self.auc.update_state(labels, probabilities)

    def _steps_fn(self, iterator: Any, steps: Any) -> None:
        import tensorflow as tf

        for _ in tf.range(steps):
            inputs, labels = next(iterator)
            self.strategy.run(self._step, args=(inputs, labels))

    def epoch(self, dataset: Any, steps: int) -> tuple[float, float]:
        """Run ``steps`` steps over the distributed ``dataset``; the epoch's mean loss and
        AUC (Keras metrics: summed over workers when read), as ``fit``'s logs report them."""
        import tensorflow as tf

        self.loss.reset_state()
        self.auc.reset_state()
        iterator = iter(dataset)
        for done in range(0, steps, STEPS_PER_CALL):
            self._steps(iterator, tf.constant(min(STEPS_PER_CALL, steps - done)))
        return float(self.loss.result()), float(self.auc.result())
