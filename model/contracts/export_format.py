"""The export contract between the trainer (``model/``) and the scoring service (``service/``).

A model directory follows the TF Serving layout::

    <model-dir>/<version>/            integer version, one above the highest present
        saved_model.pb, variables/    a TensorFlow SavedModel
        metadata.json                 ModelMetadata, below
        vocabularies.json             {field: [training values]}; value i has model id i + 1

Rules both halves rely on:

* The field set belongs to the version: ``metadata.json``'s ``fields`` (one of FIELD_SETS)
  and ``pairs`` (``pairs(fields)``) say which fields it uses; readers take them from there,
  never from a constant. Six SEED_FIELDS, or all eight with the movie's ITEM_FIELDS.
* Inputs are exactly the version's fields by name, each a 1-D ``tf.string`` tensor of raw
  values exactly as they appear in the data (gender ``"F"``, zip ``"48067"``, movie_id
  ``"1193"``, year ``"1995"``, genres ``"Comedy|Drama"``). A MULTI_VALUED field holds its
  values joined by the separator; its embedding is the mean of its values' embeddings. Batch
  size is unknown: any batch works without retracing. The vocabularies live inside the
  SavedModel; a value never seen in training (or ``""``) maps to a trained
  out-of-vocabulary bucket, never to an error.
* ``SIGNATURE_SCORE`` returns ``OUTPUT_PROBABILITY`` of shape [batch].
  ``SIGNATURE_EXPLAIN`` returns ``OUTPUT_PROBABILITY`` [batch], ``OUTPUT_ATTENTION``
  [batch, len(pairs)] whose rows sum to 1, ``OUTPUT_CONTRIBUTION`` [batch, len(pairs)],
  each pair's term in the logit (columns follow ``pairs`` order), and the rest of the
  logit: ``OUTPUT_BIAS`` [batch] (w0), ``OUTPUT_LINEAR`` [batch, len(fields)] (each field's
  linear term, in field order) and ``OUTPUT_LOGIT`` [batch], with
  logit = bias + sum(linear) + sum(contribution) and probability = sigmoid(logit).
* The ranking signatures (optional: exports before they existed lack them) compute the
  same outputs from each side once. ``SIGNATURE_ITEMS`` takes the movie fields of
  ``rank_sides`` as ``[movies]`` raw strings and returns ``OUTPUT_ITEMS`` [movies, width]
  float32, an opaque table to keep while the movies' features and the version stay the
  same. ``SIGNATURE_RANK`` and ``SIGNATURE_RANK_EXPLAIN`` take each user field ``[users]``,
  ``INPUT_USER_INDEX`` int32 ``[batch]`` (each candidate's user row), ``INPUT_ITEMS``
  (that table) and ``INPUT_ITEM_INDEX`` int32 ``[batch]`` (each candidate's movie row), and
  return what ``SIGNATURE_SCORE`` and ``SIGNATURE_EXPLAIN`` return for the same rows (to
  float32 rounding). The table's row for a movie with I movie fields (embedding size k) is
  its fields' vectors (I * k, field-major), their linear terms (I), and, for the pairs of
  two movie fields in ``pairs`` order, each one's attention score before the pair offset
  and its projection p^T (v_i ⊙ v_j) (I(I-1)/2 each).
* ``SIGNATURE_RANK_WEIGHTS`` (optional, like the ranking signatures) takes nothing and
  returns the weights that, with that table, compute the rank signatures' outputs outside
  TensorFlow (the service's ranker does: ``service/ranker.py``): ``OUTPUT_FIELD_TABLE``
  [rows, k + 1], each id's vector and linear weight of the single-valued fields, field f's id
  i at row ``OUTPUT_USER_OFFSETS``[f] + i for the user fields (ids as in vocabularies.json,
  0: out of vocabulary); ``OUTPUT_PAIR_KERNEL`` [k, t + 1], the attention network's W and the
  projection p side by side; ``OUTPUT_ATTENTION_BIAS`` [t] (b), ``OUTPUT_ATTENTION_PROJECTION``
  [t] (h), ``OUTPUT_PAIR_BIAS`` [len(pairs)] (c, in ``pairs`` order), and the scalars
  ``OUTPUT_PAIR_SCALE`` (s), ``OUTPUT_BIAS`` (w0) and ``OUTPUT_USES_ATTENTION``. Then
  a_ij = softmax over a row's pairs of (h^T ReLU(W^T x_ij + b) + c_ij), or 1 without
  attention (t = 0), with x_ij = v_i ⊙ v_j; contribution_ij = s * a_ij * p^T x_ij; and
  logit = w0 + sum of the linear terms + sum of the contributions.
* ``format_version`` says which of these rules a version follows; a reader refuses a
  version newer than the FORMAT_VERSION it knows.
* A version directory appears only by an atomic rename of a complete directory: a reader
  that sees ``<model-dir>/<n>/`` may load it.

Importing this module never imports TensorFlow.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

USER_FIELDS: tuple[str, ...] = ("user_id", "gender", "age", "occupation", "zip")
"""Fields describing the user: the same for every candidate of one request."""

SEED_FIELDS: tuple[str, ...] = (*USER_FIELDS, "movie_id")
"""The six fields of the seed-row format (15 pairs)."""

ITEM_FIELDS: tuple[str, ...] = ("year", "genres")
"""What is known of a movie on day one besides its id (release year, genres)."""

ALL_FIELDS: tuple[str, ...] = (*SEED_FIELDS, *ITEM_FIELDS)
"""Eight fields (28 pairs). Multi-valued fields come last (the model embeds them apart)."""

FIELD_SETS: dict[str, tuple[str, ...]] = {"seed": SEED_FIELDS, "all": ALL_FIELDS}

MULTI_VALUED: dict[str, str] = {"genres": "|"}
"""Field -> separator of its values, as in ML-1M's movies.dat ("Animation|Comedy")."""

USER_ID, MOVIE_ID = "user_id", "movie_id"


def split_values(field: str, joined: str) -> list[str]:
    """The values of a MULTI_VALUED field's raw string, empty parts dropped
    ("Comedy|Drama" -> ["Comedy", "Drama"]; "" -> [])."""
    return [value for value in joined.split(MULTI_VALUED[field]) if value]


def pairs(fields: tuple[str, ...] | list[str]) -> tuple[tuple[str, str], ...]:
    """Field pairs in attention-column order: ``itertools.combinations`` of ``fields``."""
    return tuple(itertools.combinations(fields, 2))


def rank_sides(fields: tuple[str, ...] | list[str]) -> tuple[list[str], list[str]]:
    """(user fields, movie fields) of a field set, each in field order; a field set lists its
    user fields first."""
    users = [f for f in fields if f in USER_FIELDS]
    if list(fields[: len(users)]) != users:
        raise ValueError(f"user fields must come first. Received: {list(fields)}")
    return users, list(fields[len(users) :])


SIGNATURE_SCORE = "serving_default"
SIGNATURE_EXPLAIN = "explain"
SIGNATURE_ITEMS = "items"
SIGNATURE_RANK = "rank"
SIGNATURE_RANK_EXPLAIN = "rank_explain"
SIGNATURE_RANK_WEIGHTS = "rank_weights"
OUTPUT_ITEMS = INPUT_ITEMS = "items"
INPUT_USER_INDEX = "user_index"
INPUT_ITEM_INDEX = "item_index"
OUTPUT_PROBABILITY = "probability"
OUTPUT_ATTENTION = "attention"
OUTPUT_CONTRIBUTION = "contribution"
OUTPUT_BIAS = "bias"
OUTPUT_LINEAR = "linear"
OUTPUT_LOGIT = "logit"
OUTPUT_FIELD_TABLE = "field_table"
OUTPUT_USER_OFFSETS = "user_offsets"
OUTPUT_PAIR_KERNEL = "pair_kernel"
OUTPUT_ATTENTION_BIAS = "attention_bias"
OUTPUT_ATTENTION_PROJECTION = "attention_projection"
OUTPUT_PAIR_BIAS = "pair_bias"
OUTPUT_PAIR_SCALE = "pair_scale"
OUTPUT_USES_ATTENTION = "uses_attention"
METADATA_FILE = "metadata.json"
VOCABULARIES_FILE = "vocabularies.json"
FORMAT_VERSION = 2
"""1: six fixed fields. 2: the field set is the version's own (``fields``)."""


class ModelMetadata(BaseModel):
    """Content of ``metadata.json``. Extra keys are kept: an older service reads a newer export."""

    model_config = ConfigDict(extra="allow", frozen=True)

    format_version: int = FORMAT_VERSION
    version: int
    fields: list[str]
    pairs: list[list[str]]
    hyperparameters: dict[str, Any]
    protocol: str
    data: dict[str, Any]
    metrics: dict[str, Any]
    tensorflow_version: str
    created_at: str


def list_versions(model_dir: Path) -> list[int]:
    """Complete versions under ``model_dir``, ascending; temporary (dot-named) dirs are ignored."""
    if not model_dir.is_dir():
        return []
    return sorted(int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit())


def latest_version(model_dir: Path) -> int | None:
    versions = list_versions(model_dir)
    return versions[-1] if versions else None


def next_version(model_dir: Path) -> int:
    return (latest_version(model_dir) or 0) + 1


def read_metadata(version_dir: Path) -> ModelMetadata:
    """The version's metadata; ValueError for a format this reader does not know."""
    metadata = ModelMetadata.model_validate_json((version_dir / METADATA_FILE).read_text())
    if metadata.format_version > FORMAT_VERSION:
        raise ValueError(
            f"format_version {metadata.format_version} is newer than this reader's "
            f"{FORMAT_VERSION}; upgrade afm-ctr to serve it"
        )
    if tuple(metadata.fields) not in FIELD_SETS.values():
        raise ValueError(f"unknown field set {metadata.fields}; expected one of {FIELD_SETS}")
    if [tuple(p) for p in metadata.pairs] != list(pairs(metadata.fields)):
        raise ValueError("metadata pairs are not the combinations of its fields in order")
    return metadata


def read_vocabularies(version_dir: Path, fields: tuple[str, ...]) -> dict[str, list[str]]:
    """The training vocabulary of each field (single values for MULTI_VALUED fields)."""
    vocabularies = json.loads((version_dir / VOCABULARIES_FILE).read_text())
    missing = set(fields) - set(vocabularies)
    if missing:
        raise ValueError(f"{VOCABULARIES_FILE} lacks field(s) {sorted(missing)}")
    return {field: [str(v) for v in vocabularies[field]] for field in fields}
