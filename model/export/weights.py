"""Every weight of a trained AFM, as the ``weights`` signature returns them.

``model/contracts/export_format.py`` says what each output is;
``model/contracts/numpy_scorer.py`` computes the ``explain`` outputs from them.
"""

from __future__ import annotations

from collections.abc import Sequence

import keras
import tensorflow as tf

from model.contracts.export_format import (
    HISTORY_FIELD,
    OUTPUT_ATTENTION_BIAS,
    OUTPUT_ATTENTION_KERNEL,
    OUTPUT_ATTENTION_PROJECTION,
    OUTPUT_BAG_TABLES,
    OUTPUT_BIAS,
    OUTPUT_FIELD_OFFSETS,
    OUTPUT_FIELD_TABLE,
    OUTPUT_HISTORY_QUERY,
    OUTPUT_HISTORY_RECENCY,
    OUTPUT_PAIR_BIAS,
    OUTPUT_PAIR_SCALE,
    OUTPUT_PROJECTION,
    OUTPUT_USES_ATTENTION,
    pairs,
)
from model.network.afm import split_fields


def afm_weights(model: keras.Model, fields: Sequence[str]) -> dict[str, tf.Tensor]:
    """The ``weights`` signature's outputs, read off ``model``, the dict-output AFM of
    ``model.network.afm.build_afm`` for ``fields``. Eager, they hold the current values
    (``np.asarray`` each for the NumPy scorer); traced, the signature reads the variables."""
    _, multi = split_fields(fields)
    embedding, attention = model.get_layer("embedding"), model.get_layer("attention")
    num_pairs, k = len(pairs(tuple(fields))), embedding.output_dim

    def table(suffix: str = "") -> tf.Tensor:
        """(ids, k + 1): layers ``embedding<suffix>``'s vectors and ``linear<suffix>``'s
        weights side by side."""
        names = (f"embedding{suffix}", f"linear{suffix}")
        return tf.concat([model.get_layer(name).embeddings for name in names], axis=1)

    if attention.use_attention:
        kernel = tf.convert_to_tensor(attention.attention_kernel)  # W^T (k, t)
        hidden_bias = tf.convert_to_tensor(attention.attention_bias)
        hidden_projection = tf.convert_to_tensor(attention.attention_projection)[:, 0]
    else:  # t = 0
        kernel, hidden_bias, hidden_projection = tf.zeros([k, 0]), tf.zeros([0]), tf.zeros([0])
    if attention.use_attention and attention.pair_bias:
        pair_bias = tf.convert_to_tensor(attention.attention_pair_bias)
    else:
        pair_bias = tf.zeros([num_pairs])
    history = {}
    if HISTORY_FIELD in fields:
        layer = model.get_layer("history")
        history = {
            OUTPUT_BAG_TABLES[HISTORY_FIELD]: tf.concat([layer.embeddings, layer.linear], axis=1),
            OUTPUT_HISTORY_QUERY: tf.convert_to_tensor(layer.query),
            OUTPUT_HISTORY_RECENCY: tf.convert_to_tensor(layer.recency),
        }
    return {
        OUTPUT_FIELD_TABLE: table(),
        OUTPUT_FIELD_OFFSETS: tf.constant(embedding.offsets, tf.int32),
        **{OUTPUT_BAG_TABLES[f]: table(f"_{f}") for f in multi if f != HISTORY_FIELD},
        **history,
        OUTPUT_ATTENTION_KERNEL: kernel,
        OUTPUT_ATTENTION_BIAS: hidden_bias,
        OUTPUT_ATTENTION_PROJECTION: hidden_projection,
        OUTPUT_PROJECTION: tf.convert_to_tensor(model.get_layer("projection").kernel)[:, 0],
        OUTPUT_PAIR_BIAS: pair_bias,
        OUTPUT_PAIR_SCALE: tf.constant(attention.pair_scale(num_pairs), tf.float32),
        OUTPUT_BIAS: tf.convert_to_tensor(model.get_layer("logit").bias)[0],
        OUTPUT_USES_ATTENTION: tf.constant(attention.use_attention),
    }
