"""model.training.optimizer.Adam against Keras's own Adam, step by step."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from model.training.optimizer import Adam


def _run(optimizer: keras.optimizers.Optimizer, gradients: list) -> np.ndarray:
    """The variable after applying ``gradients`` one step each, from the same start."""
    variable = keras.Variable(np.linspace(-1, 1, 24, dtype="float32").reshape(6, 4))
    for gradient in gradients:
        optimizer.apply([gradient], [variable])
    return variable.numpy()


def _sparse(rng: np.random.Generator) -> tf.IndexedSlices:
    """A gather's gradient: ids repeat (rows 0 and 3 twice), and some rows are never hit."""
    ids = tf.constant([0, 3, 0, 2, 3], tf.int32)
    values = tf.constant(rng.normal(size=(5, 4)).astype("float32"))
    return tf.IndexedSlices(values, ids, dense_shape=tf.constant([6, 4]))


def test_sparse_gradients_update_as_keras_adam_does() -> None:
    rng = np.random.default_rng(0)
    gradients = [_sparse(rng) for _ in range(4)]
    ours = _run(Adam(learning_rate=0.01), gradients)
    keras_own = _run(keras.optimizers.Adam(learning_rate=0.01), gradients)
    np.testing.assert_allclose(ours, keras_own, rtol=0, atol=1e-6)
    assert not np.allclose(ours, _run(Adam(learning_rate=0.01), []))  # it did move


def test_the_second_moment_sums_the_squares_of_repeated_ids() -> None:
    """Keras squares each slice before summing them per id; so must the replacement."""
    gradient = tf.IndexedSlices(
        tf.constant([[1.0], [2.0]]), tf.constant([0, 0]), dense_shape=tf.constant([2, 1])
    )
    optimizer = Adam(learning_rate=0.1)
    variable = keras.Variable(np.zeros((2, 1), "float32"))
    optimizer.apply([gradient], [variable])
    velocity = optimizer._velocities[0].numpy()
    assert velocity[0, 0] == pytest.approx((1.0 + 4.0) * (1 - optimizer.beta_2))  # not 3²
    assert velocity[1, 0] == 0.0


def test_dense_gradients_take_keras_adam_step() -> None:
    rng = np.random.default_rng(1)
    gradients = [tf.constant(rng.normal(size=(6, 4)).astype("float32")) for _ in range(3)]
    np.testing.assert_array_equal(
        _run(Adam(learning_rate=0.01), gradients),
        _run(keras.optimizers.Adam(learning_rate=0.01), gradients),
    )


def _train_lookup(optimizer: keras.optimizers.Optimizer, steps: int) -> list[np.ndarray]:
    """``steps`` steps of a lookup table (its gradient a tf.IndexedSlices, ids repeating) and a
    dense kernel through one optimizer, as in training; then every variable and every
    optimizer variable (step count, both moments of both)."""
    rng = np.random.default_rng(3)
    table = keras.Variable(rng.normal(size=(8, 4)).astype("float32"))
    kernel = keras.Variable(rng.normal(size=(4, 1)).astype("float32"))
    for _ in range(steps):
        ids = tf.constant(rng.integers(0, 6, size=10), tf.int32)  # rows 6 and 7 never hit
        target = tf.constant(rng.normal(size=(10, 1)).astype("float32"))
        with tf.GradientTape() as tape:
            predicted = tf.matmul(tf.gather(table.value, ids), kernel.value)  # (10, 1)
            loss = tf.reduce_mean(tf.square(predicted - target))
        gradients = tape.gradient(loss, [table.value, kernel.value])
        assert isinstance(gradients[0], tf.IndexedSlices)
        optimizer.apply(gradients, [table, kernel])
    return [table.numpy(), kernel.numpy(), *(v.numpy() for v in optimizer.variables)]


def test_sparse_and_dense_steps_keep_every_parameter_and_moment_equal_to_keras_adam() -> None:
    ours = _train_lookup(Adam(learning_rate=0.05), steps=6)
    keras_own = _train_lookup(keras.optimizers.Adam(learning_rate=0.05), steps=6)
    assert len(ours) == len(keras_own) == 2 + 6  # iterations, learning rate, m and v of both
    for mine, reference in zip(ours, keras_own, strict=True):
        np.testing.assert_allclose(mine, reference, rtol=0, atol=1e-6)
    assert not np.allclose(ours[0][:6], _train_lookup(Adam(learning_rate=0.05), steps=0)[0][:6])
    np.testing.assert_array_equal(ours[0][6:], _train_lookup(Adam(learning_rate=0.05), 0)[0][6:])
