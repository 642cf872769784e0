"""The SavedModel's signatures (``model/contracts/export_format.py``) around a trained AFM.

The score and explain signatures take the raw string values of the version's fields by name;
one StringLookup per field, built from the training vocabulary, turns them into the ids the
model was trained on (vocabulary[i] -> i + 1, anything else -> 0, as ``PreparedData.encode``);
a multi-valued field is split on its separator first and looked up value by value. The
weights signature returns the model's weights for the NumPy scorer
(``model/contracts/numpy_scorer.py``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import keras
import numpy as np
import tensorflow as tf

from model.contracts.export_format import (
    HISTORY_FIELD,
    HISTORY_LENGTH,
    MULTI_VALUED,
    OUTPUT_PROBABILITY,
    SIGNATURE_EXPLAIN,
    SIGNATURE_SCORE,
    SIGNATURE_WEIGHTS,
)
from model.data.dataset import PAD, SINGLE_INPUT
from model.export.weights import afm_weights
from model.network.afm import split_fields


def build_lookups(
    fields: Sequence[str], vocabularies: Mapping[str, np.ndarray]
) -> dict[str, keras.layers.StringLookup]:
    """One StringLookup per field: vocabulary[i] -> i + 1, unknown values -> 0 (int32)."""
    lookups = {}
    for field in fields:
        lookup = keras.layers.StringLookup(
            vocabulary=[str(v) for v in vocabularies[field]],
            num_oov_indices=1,
            output_mode="int",
            name=f"lookup_{field}",
        )
        lookup.build((None,))  # ExportArchive tracks only built layers
        lookups[field] = lookup
    return lookups


def bag_ids(lookup: keras.layers.StringLookup, joined: tf.Tensor, separator: str) -> tf.Tensor:
    """(batch, L) int32 ids of each row's values, PAD where a row has no value.

    ``"Comedy|Drama"`` -> the two values' ids; a row without values (``""``) gets the
    out-of-vocabulary id 0 in its first column. Empty values (``"A||B"``) become PAD in
    place rather than being moved left: BagEmbedding masks PAD, so the mean is the same as
    in training. L is the batch's longest row plus one padding column. Dense throughout
    (split, to_tensor, one lookup of the (batch, L) matrix): ~50 µs less per call than
    boolean-masking and mapping the ragged values (benchmarks/serve_latency.py).
    """
    values = tf.strings.split(joined, sep=separator).to_tensor(default_value="")  # (batch, L)
    values = tf.pad(values, [[0, 0], [0, 1]])  # (batch, L + 1): "" pads
    present = tf.strings.length(values) > 0
    ids = tf.where(present, tf.cast(lookup(values), tf.int32), PAD)
    empty = tf.logical_not(tf.reduce_any(present, axis=1, keepdims=True))  # (batch, 1)
    first = tf.range(tf.shape(ids)[1]) == 0  # (L + 1,)
    return tf.where(tf.logical_and(empty, first), 0, ids)


def history_ids(lookup: keras.layers.StringLookup, joined: tf.Tensor) -> tf.Tensor:
    """(batch, HISTORY_LENGTH) int32 ids of the first HISTORY_LENGTH watched movies, as
    ``bag_ids`` (PAD past the last, the single id 0 for no history): the width the model was
    built with, so position j is always the j-th most recent."""
    ids = bag_ids(lookup, joined, MULTI_VALUED[HISTORY_FIELD])[:, :HISTORY_LENGTH]
    ids = tf.pad(ids, [[0, 0], [0, HISTORY_LENGTH - tf.shape(ids)[1]]], constant_values=PAD)
    # a row whose parts all lie past HISTORY_LENGTH counts as no history, as an empty one
    empty = tf.reduce_all(ids == PAD, axis=1, keepdims=True)
    return tf.where(tf.logical_and(empty, tf.range(HISTORY_LENGTH) == 0), 0, ids)


def model_inputs(
    lookups: Mapping[str, keras.layers.StringLookup], raw: Mapping[str, tf.Tensor]
) -> dict[str, tf.Tensor]:
    """``build_afm``'s inputs from each field's (batch,) raw strings (field -> lookup, in
    field order): the single-valued fields' ids stacked, each multi-valued field's bag."""
    single, multi = split_fields(list(lookups))
    return {
        # (batch, S) int32 ids in field order
        SINGLE_INPUT: tf.stack([tf.cast(lookups[f](raw[f]), tf.int32) for f in single], axis=1),
        **{
            f: history_ids(lookups[f], raw[f])
            if f == HISTORY_FIELD
            else bag_ids(lookups[f], raw[f], MULTI_VALUED[f])
            for f in multi
        },
    }


def _raw_signature(fields: Sequence[str]) -> list[tf.TensorSpec]:
    return [tf.TensorSpec(shape=[None], dtype=tf.string, name=field) for field in fields]


def build_archive(
    model: keras.Model, fields: Sequence[str], vocabularies: Mapping[str, np.ndarray]
) -> keras.export.ExportArchive:
    """An ExportArchive with the contract's endpoints over raw string inputs.

    ``model`` is the dict-output model of ``model.network.afm.build_afm`` for ``fields``. The
    score and explain endpoints take the fields as separate 1-D string tensors (batch size
    unknown), in field order and by name; the weights endpoint takes nothing
    (``model/export/weights.py``).
    """
    fields = list(fields)
    lookups = build_lookups(fields, vocabularies)

    def explain(*raw: tf.Tensor) -> dict[str, tf.Tensor]:
        inputs = model_inputs(lookups, dict(zip(fields, raw, strict=True)))
        return dict(model(inputs, training=False))  # every output: probability to logit

    def score(*raw: tf.Tensor) -> dict[str, tf.Tensor]:
        return {OUTPUT_PROBABILITY: explain(*raw)[OUTPUT_PROBABILITY]}

    archive = keras.export.ExportArchive()
    archive.track(model)
    for lookup in lookups.values():
        archive.track(lookup)
    archive.add_endpoint(SIGNATURE_SCORE, score, input_signature=_raw_signature(fields))
    archive.add_endpoint(SIGNATURE_EXPLAIN, explain, input_signature=_raw_signature(fields))
    archive.add_endpoint(SIGNATURE_WEIGHTS, lambda: afm_weights(model, fields), input_signature=[])
    return archive
