"""Keras's Adam, with the embedding tables' sparse gradients summed by XLA.

An embedding lookup's gradient is a ``tf.IndexedSlices``: one row per id looked up (ML-100K,
batch 4,096, six fields: 24,576 rows of 16 for a 3,450-row table). Keras's ``Adam.update_step``
makes two dense tensors of it per step, each through TensorFlow's UnsortedSegmentSum: the rows
summed per id for the first moment, and their squares summed per id for the second (Keras
squares the slices before they are summed). ``Adam`` computes both sums in one XLA-compiled
call, then applies Keras's update to them: the same arithmetic up to the order of float
additions, and ML-100K epochs ~20 % shorter (docs/training.md).
tests/unit/model/test_optimizer.py pins it to ``keras.optimizers.Adam``.
"""

from __future__ import annotations

from typing import Any

import keras
import tensorflow as tf
from keras import ops


@tf.function(jit_compile=True, autograph=False)
def _sums_per_row(values: tf.Tensor, rows: tf.Tensor, num_rows: int) -> tuple[tf.Tensor, tf.Tensor]:
    """(num_rows, ...) sums of ``values`` and of their squares per row id in ``rows``."""
    summed = tf.math.unsorted_segment_sum(values, rows, num_rows)
    return summed, tf.math.unsorted_segment_sum(tf.square(values), rows, num_rows)


class Adam(keras.optimizers.Adam):
    """``keras.optimizers.Adam``; a ``tf.IndexedSlices`` gradient goes through
    ``_sums_per_row`` instead of two UnsortedSegmentSum kernels. Dense gradients, and AMSGrad,
    take Keras's own step."""

    def update_step(self, gradient: Any, variable: Any, learning_rate: Any) -> None:
        if not isinstance(gradient, tf.IndexedSlices) or self.amsgrad:
            super().update_step(gradient, variable, learning_rate)
            return
        dtype = variable.dtype
        summed, squares = _sums_per_row(
            ops.cast(gradient.values, dtype), gradient.indices, int(variable.shape[0])
        )
        # From here on, keras.optimizers.Adam.update_step with (summed, squares) in place of
        # (gradient, square(gradient)).
        lr = ops.cast(learning_rate, dtype)
        local_step = ops.cast(self.iterations + 1, dtype)
        beta_1_power = ops.power(ops.cast(self.beta_1, dtype), local_step)
        beta_2_power = ops.power(ops.cast(self.beta_2, dtype), local_step)
        m = self._momentums[self._get_variable_index(variable)]
        v = self._velocities[self._get_variable_index(variable)]
        alpha = lr * ops.sqrt(1 - beta_2_power) / (1 - beta_1_power)
        self.assign_add(m, ops.multiply(ops.subtract(summed, m), 1 - self.beta_1))
        self.assign_add(v, ops.multiply(ops.subtract(squares, v), 1 - self.beta_2))
        self.assign_sub(
            variable, ops.divide(ops.multiply(m, alpha), ops.add(ops.sqrt(v), self.epsilon))
        )
