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
