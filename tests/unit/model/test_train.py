"""The trainer's parts: metrics, epoch batching, the epoch loop's early stopping, refusal of
unusable splits."""

from __future__ import annotations

from collections.abc import Iterator

import keras
import numpy as np
import pytest

from model.config import AFMConfig, TrainConfig
from model.data.dataset import LabeledRows, PreparedData
from model.errors import AfmError
from model.training.metrics import log_loss, roc_auc
from model.training.rows import InMemoryRows, epoch_dataset, epoch_rows
from model.training.train import fit, run_epochs


def brute_force_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """P(score of a positive > score of a negative), ties counted half."""
    pos, neg = scores[labels == 1], scores[labels == 0]
    diff = pos[:, None] - neg[None, :]
    return float(((diff > 0) + 0.5 * (diff == 0)).mean())


@pytest.mark.parametrize("seed", range(5))
def test_auc_equals_the_pairwise_definition_with_ties(seed: int) -> None:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, 300)
    scores = rng.integers(0, 20, 300) / 20.0  # many ties
    assert roc_auc(labels, scores) == pytest.approx(brute_force_auc(labels, scores), abs=1e-12)


def test_auc_extremes_and_single_class() -> None:
    labels = np.array([0, 0, 1, 1])
    assert roc_auc(labels, np.array([0.1, 0.2, 0.8, 0.9])) == 1.0
    assert roc_auc(labels, np.array([0.9, 0.8, 0.2, 0.1])) == 0.0
    assert roc_auc(labels, np.full(4, 0.5)) == 0.5
    assert np.isnan(roc_auc(np.ones(4), np.arange(4.0)))


def test_log_loss_is_mean_binary_cross_entropy_with_clipping() -> None:
    labels = np.array([1.0, 0.0, 1.0])
    probs = np.array([0.9, 0.2, 0.0])
    expected = -np.mean([np.log(0.9), np.log(0.8), np.log(1e-7)])
    assert log_loss(labels, probs) == pytest.approx(expected)


@pytest.mark.parametrize(("rows", "batch"), [(10, 4), (8, 4), (3, 4)])
def test_epoch_dataset_yields_whole_batches_of_distinct_rows(rows: int, batch: int) -> None:
    inputs = {
        "ids": np.arange(rows * 2, dtype=np.int32).reshape(rows, 2),
        "genres": np.arange(rows * 3, dtype=np.int32).reshape(rows, 3),
    }
    labels = np.arange(rows, dtype=np.float32)
    batches = list(epoch_dataset(inputs, labels, batch, np.random.default_rng(0)))
    sizes = [len(y) for _, y in batches]
    # whole batches only, the rest left for a later epoch; fewer rows than a batch: all of them
    assert sizes == ([batch] * (rows // batch) if rows >= batch else [rows])
    assert sum(sizes) == epoch_rows(rows, batch)
    seen = {k: np.concatenate([x[k].numpy() for x, _ in batches]) for k in inputs}
    seen_labels = np.concatenate([y.numpy() for _, y in batches])
    assert len(set(seen_labels.tolist())) == len(seen_labels)
    assert set(seen_labels.tolist()) <= set(labels.tolist())
    # rows stay whole: every input and the label of a row travel together
    np.testing.assert_array_equal(seen["ids"][:, 0], seen_labels.astype(np.int32) * 2)
    np.testing.assert_array_equal(seen["genres"][:, 2], seen_labels.astype(np.int32) * 3 + 2)


@pytest.mark.parametrize("rows", [10, 3])
def test_epoch_dataset_runs_without_autotuning(rows: int) -> None:
    # autotuning made about one epoch in three stall ~0.6 s at its end
    # (model.training.rows.epoch_dataset)
    inputs = {"ids": np.arange(rows, dtype=np.int32)[:, None]}
    batches = epoch_dataset(inputs, np.zeros(rows, np.float32), 4, np.random.default_rng(0))
    assert batches.options().autotune.enabled is False


def test_every_row_is_trained_on_across_epochs() -> None:
    inputs = {"ids": np.arange(10, dtype=np.int32)[:, None]}
    labels = np.arange(10, dtype=np.float32)
    rng = np.random.default_rng(0)
    seen = {int(y) for _ in range(8) for _, ys in epoch_dataset(inputs, labels, 4, rng) for y in ys}
    assert seen == set(range(10))


def test_epoch_order_follows_the_seed() -> None:
    inputs = {"ids": np.arange(100, dtype=np.int32).reshape(50, 2)}
    labels = np.arange(50, dtype=np.float32)

    def order(seed: int) -> list[float]:
        batches = epoch_dataset(inputs, labels, 16, np.random.default_rng(seed))
        return np.concatenate([y.numpy() for _, y in batches]).tolist()

    assert order(1) == order(1)
    assert order(1) != order(2)


def tiny_data(valid_labels: list[float]) -> PreparedData:
    users = {c: np.array(["a", "b"]) for c in ("user_id", "gender", "age", "occupation", "zip")}

    def rows(labels: list[float]) -> LabeledRows:
        n = len(labels)
        return LabeledRows(
            np.zeros(n, np.int32), np.zeros(n, np.int32), np.array(labels, np.float32)
        )

    movies = {c: np.array(["1", "2"]) for c in ("movie_id", "title", "year", "genres")}
    return PreparedData(
        users,
        movies,
        rows([0, 1]),
        rows(valid_labels),
        rows([0, 1]),
        "rating",
        "test",
    )


def test_a_split_with_one_label_is_refused_before_training() -> None:
    with pytest.raises(
        AfmError, match=r"validation split \(3 rows\) needs both positive and negative"
    ):
        fit(InMemoryRows(tiny_data([1, 1, 1]), "all"), AFMConfig(), TrainConfig())


def scripted_run(valid_aucs: list[float], epochs: int, patience: int):
    """``run_epochs`` over a one-weight model whose weight is the epoch number after each
    epoch, validated with ``valid_aucs`` in turn: (history, best epoch, final weight, epochs
    trained)."""
    model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1, use_bias=False)])
    trained = []

    def runs() -> Iterator[dict[str, float]]:
        for epoch in range(1, len(valid_aucs) + 1):
            model.set_weights([np.full((1, 1), epoch, np.float32)])
            trained.append(epoch)
            yield {"loss": 0.5, "auc": 0.5, "examples_per_second": 1.0, "seconds": 1.0}

    validations = iter(valid_aucs)

    def validate() -> dict[str, float]:
        return {"auc": next(validations), "logloss": 0.5}

    train = TrainConfig(epochs=epochs, patience=patience)
    history, best = run_epochs(model, runs(), validate, train)
    return history, best, float(model.get_weights()[0][0, 0]), trained


def test_training_stops_after_patience_epochs_without_a_better_auc() -> None:
    history, best, weight, trained = scripted_run([0.8, 0.9, 0.85, 0.88, 0.95], 10, 2)
    assert trained == [1, 2, 3, 4]  # epoch 5 never runs
    assert [r.valid_auc for r in history] == [0.8, 0.9, 0.85, 0.88]
    assert best == 2 and weight == 2.0  # the best epoch's weights are restored


def test_an_equal_auc_is_not_better() -> None:
    history, best, weight, _ = scripted_run([0.9, 0.9, 0.9, 0.9], 10, 2)
    assert len(history) == 3 and best == 1 and weight == 1.0


def test_aucs_closer_than_float32_resolves_still_count_as_better() -> None:
    # Keras's EarlyStopping compares with ops.greater, in float32, where these are all 0.9
    history, best, weight, _ = scripted_run([0.9, 0.9 + 1e-9, 0.9 + 2e-9], 3, 1)
    assert len(history) == 3 and best == 3 and weight == 3.0


def test_without_early_stop_every_epoch_runs_once_and_the_best_is_kept() -> None:
    history, best, weight, trained = scripted_run([0.7, 0.9, 0.8, 0.85], 3, 5)
    assert trained == [1, 2, 3]
    assert [r.epoch for r in history] == [1, 2, 3]
    assert best == 2 and weight == 2.0
