"""Atomic, versioned SavedModel export following ``model/contracts/export_format.py``.

A version is written completely into ``<model-dir>/.tmp-<uuid>/`` (ignored by
``contract.list_versions``) and then renamed to ``<model-dir>/<n>/``, so a reader never sees
a half-written version. If another export takes ``n`` first, the rename fails and this
export takes the next free number.

The SavedModel's signatures take the raw string values of the version's fields by name; one
StringLookup per field, built from the training vocabulary, turns them into the ids the
model was trained on (vocabulary[i] -> i + 1, anything else -> 0, as ``PreparedData.encode``);
a multi-valued field is split on its separator first and looked up value by value.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import uuid
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from model.contracts.export_format import (
    INPUT_ITEM_INDEX,
    INPUT_ITEMS,
    INPUT_USER_INDEX,
    METADATA_FILE,
    MULTI_VALUED,
    OUTPUT_ITEMS,
    OUTPUT_PROBABILITY,
    SIGNATURE_EXPLAIN,
    SIGNATURE_ITEMS,
    SIGNATURE_RANK,
    SIGNATURE_RANK_EXPLAIN,
    SIGNATURE_RANK_WEIGHTS,
    SIGNATURE_SCORE,
    VOCABULARIES_FILE,
    ModelMetadata,
    next_version,
    pairs,
    rank_sides,
)
from model.data.dataset import PAD, SINGLE_INPUT
from model.errors import AfmError
from model.export.rank import item_table, rank_outputs, rank_weights
from model.network.afm import split_fields

TMP_PREFIX = ".tmp-"
_RENAME_CONFLICTS = (errno.EEXIST, errno.ENOTEMPTY)


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


def _raw_signature(fields: Sequence[str]) -> list[tf.TensorSpec]:
    return [tf.TensorSpec(shape=[None], dtype=tf.string, name=field) for field in fields]


def _rank_signature(fields: Sequence[str]) -> list[tf.TensorSpec]:
    """The user fields [users], the user index [batch], the item table, the item index."""
    user_fields, _ = rank_sides(fields)
    return [
        *_raw_signature(user_fields),
        tf.TensorSpec([None], tf.int32, name=INPUT_USER_INDEX),
        tf.TensorSpec([None, None], tf.float32, name=INPUT_ITEMS),
        tf.TensorSpec([None], tf.int32, name=INPUT_ITEM_INDEX),
    ]


def build_archive(
    model: keras.Model, fields: Sequence[str], vocabularies: Mapping[str, np.ndarray]
) -> keras.export.ExportArchive:
    """An ExportArchive with the contract's endpoints over raw string inputs.

    ``model`` is the dict-output model of ``model.network.afm.build_afm`` for ``fields``. Each
    endpoint takes the fields as separate 1-D string tensors (batch size unknown), in field
    order and by name; the rank endpoints also take the user index (``model/export/rank.py``).
    """
    fields = list(fields)
    lookups = build_lookups(fields, vocabularies)
    single, multi = split_fields(fields)

    def explain(*raw: tf.Tensor) -> dict[str, tf.Tensor]:
        by_name = dict(zip(fields, raw, strict=True))
        inputs = {
            # (batch, S) int32 ids in field order
            SINGLE_INPUT: tf.stack(
                [tf.cast(lookups[f](by_name[f]), tf.int32) for f in single], axis=1
            ),
            **{f: bag_ids(lookups[f], by_name[f], MULTI_VALUED[f]) for f in multi},
        }
        return dict(model(inputs, training=False))  # every output: probability to logit

    def score(*raw: tf.Tensor) -> dict[str, tf.Tensor]:
        return {OUTPUT_PROBABILITY: explain(*raw)[OUTPUT_PROBABILITY]}

    def encode(field: str, raw: tf.Tensor) -> tf.Tensor:
        if field in MULTI_VALUED:
            return bag_ids(lookups[field], raw, MULTI_VALUED[field])
        return tf.cast(lookups[field](raw), tf.int32)

    user_fields, item_fields = rank_sides(fields)

    def items(*raw: tf.Tensor) -> dict[str, tf.Tensor]:
        by_name = dict(zip(item_fields, raw, strict=True))
        return {OUTPUT_ITEMS: item_table(model, fields, encode, by_name)}

    def rank_explain(*inputs: tf.Tensor) -> dict[str, tf.Tensor]:
        *raw, user_index, table, item_index = inputs
        users = dict(zip(user_fields, raw, strict=True))
        return rank_outputs(model, fields, encode, users, user_index, table, item_index)

    def rank(*inputs: tf.Tensor) -> dict[str, tf.Tensor]:
        return {OUTPUT_PROBABILITY: rank_explain(*inputs)[OUTPUT_PROBABILITY]}

    archive = keras.export.ExportArchive()
    archive.track(model)
    for lookup in lookups.values():
        archive.track(lookup)
    archive.add_endpoint(SIGNATURE_SCORE, score, input_signature=_raw_signature(fields))
    archive.add_endpoint(SIGNATURE_EXPLAIN, explain, input_signature=_raw_signature(fields))
    archive.add_endpoint(SIGNATURE_ITEMS, items, input_signature=_raw_signature(item_fields))
    archive.add_endpoint(SIGNATURE_RANK, rank, input_signature=_rank_signature(fields))
    archive.add_endpoint(
        SIGNATURE_RANK_EXPLAIN, rank_explain, input_signature=_rank_signature(fields)
    )
    archive.add_endpoint(
        SIGNATURE_RANK_WEIGHTS, lambda: rank_weights(model, fields), input_signature=[]
    )
    return archive


def export_version(
    model: keras.Model,
    fields: Sequence[str],
    vocabularies: Mapping[str, np.ndarray],
    model_dir: Path,
    metadata: Mapping[str, Any],
    write_extras: Callable[[Path], None] | None = None,
) -> Path:
    """Write a new version of ``model`` under ``model_dir`` and return its directory.

    Args:
        model: the dict-output AFM of ``build_afm``, trained.
        fields: the model's field set, in input order.
        vocabularies: sorted training vocabulary per field (``PreparedData.vocabularies``).
        model_dir: the export root; created if missing.
        metadata: every ``ModelMetadata`` field except ``version``, ``fields``, ``pairs``,
            ``tensorflow_version`` and ``created_at``, which are filled in here. Extra keys
            are kept.
        write_extras: called with the temporary directory to add files (metrics, plots)
            that must appear atomically with the model.
    """
    try:
        model_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise AfmError(f"cannot create model directory {model_dir}: {exc.strerror}") from None
    tmp = model_dir / f"{TMP_PREFIX}{uuid.uuid4().hex}"
    try:
        build_archive(model, fields, vocabularies).write_out(str(tmp), verbose=False)
        # The same vocabularies in plain JSON, for readers that should not dig into the graph.
        vocab_json = {field: [str(v) for v in vocabularies[field]] for field in fields}
        (tmp / VOCABULARIES_FILE).write_text(json.dumps(vocab_json))
        if write_extras is not None:
            write_extras(tmp)
        return publish_version(tmp, model_dir, fields, metadata)
    except OSError as exc:
        raise AfmError(f"cannot write the model to {model_dir}: {exc}") from None
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def publish_version(
    tmp: Path, model_dir: Path, fields: Sequence[str], metadata: Mapping[str, Any]
) -> Path:
    """Rename the complete directory ``tmp`` to ``model_dir/<next free version>``.

    ``metadata.json`` (with the version filled in) is rewritten before each attempt; if
    another export publishes the chosen number first, the rename fails and the next number
    is tried. ``tmp`` must be on the same filesystem as ``model_dir`` (rename is atomic).
    """
    while True:
        version = next_version(model_dir)
        record = ModelMetadata(
            version=version,
            fields=list(fields),
            pairs=[list(pair) for pair in pairs(fields)],
            tensorflow_version=tf.__version__,
            keras_version=keras.__version__,
            created_at=datetime.now(UTC).isoformat(timespec="seconds"),
            **metadata,
        )
        (tmp / METADATA_FILE).write_text(json.dumps(record.model_dump(), indent=2) + "\n")
        target = model_dir / str(version)
        try:
            # Fails if another export already published this number (non-empty target).
            os.rename(tmp, target)
        except OSError as exc:
            if exc.errno in _RENAME_CONFLICTS:
                continue
            raise
        return target
