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
* ``SIGNATURE_WEIGHTS`` takes nothing and returns every weight of the model, so that a
  reader can compute the ``SIGNATURE_EXPLAIN`` outputs outside TensorFlow from raw strings
  and ``vocabularies.json`` (``model/contracts/numpy_scorer.py`` does, tested to 1e-5). With
  embedding size k, attention factor t and P = len(pairs) (``weights_outputs`` lists them):

  - ``OUTPUT_FIELD_TABLE`` [rows, k + 1] float32: the single-valued fields' table, each id's
    vector v (k) and linear weight w (1) side by side; field f's id i is row
    ``OUTPUT_FIELD_OFFSETS``[f] + i, with ``OUTPUT_FIELD_OFFSETS`` [S] int32 one offset per
    single-valued field, in field order.
  - ``OUTPUT_BAG_TABLES``[f] [ids, k + 1] float32, for each MULTI_VALUED field f of the
    version: its values' vectors and linear weights, id i at row i. The field's v and w are
    the mean of its values' rows over the non-empty parts of the raw string, an unknown part
    counting as id 0; a raw string with no parts at all is the single id 0.
  - ``OUTPUT_ATTENTION_KERNEL`` [k, t] (K = W^T, the paper's t x k W transposed),
    ``OUTPUT_ATTENTION_BIAS`` [t] (b), ``OUTPUT_ATTENTION_PROJECTION`` [t] (h),
    ``OUTPUT_PROJECTION`` [k] (p), ``OUTPUT_PAIR_BIAS`` [P] float32 (c, in ``pairs``
    order; zeros for a model without pair offsets), and the scalars ``OUTPUT_PAIR_SCALE``
    float32 (s), ``OUTPUT_BIAS`` float32 (w0) and ``OUTPUT_USES_ATTENTION`` bool. Without
    attention t = 0.

  - With HISTORY_FIELD: ``OUTPUT_HISTORY_QUERY`` [k] float32 (q) and
    ``OUTPUT_HISTORY_RECENCY`` [HISTORY_LENGTH] float32 (r); the field's bag table holds the
    watched movies' vectors u and linear weights w.

  Ids are as in vocabularies.json (value i -> id i + 1; anything else, and ``""`` -> 0).
  HISTORY_FIELD's [v | w] is not a mean but attention over the watched movies, keyed by the
  candidate: with the raw string split on its separator, part j (j < HISTORY_LENGTH; empty
  parts skipped, an unknown one id 0, no part at all the single id 0 at position 0) having
  the row [u_j | w_j], and m the candidate's movie_id vector v,
  beta_j = softmax over the row's parts of (q^T (m ⊙ u_j) + r_j), v = sum_j beta_j u_j and
  w = sum_j beta_j w_j. The explain signature then also returns
  ``OUTPUT_HISTORY_ATTENTION`` [batch, HISTORY_LENGTH], beta by position (0 where no part).
  With x_ij = v_i ⊙ v_j for each pair of fields (i, j) in ``pairs`` order:
  a_ij = softmax over a row's pairs of (h^T ReLU(K^T x_ij + b) + c_ij), or 1 without
  attention; contribution_ij = s * a_ij * p^T x_ij; linear_f = w_f; bias = w0;
  logit = w0 + sum of the linear terms + sum of the contributions.
* ``format_version`` says which of these rules a version follows; a reader refuses any
  version of another FORMAT_VERSION than its own (older ones lack ``SIGNATURE_WEIGHTS``).
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

HISTORY_FIELD = "watched"
"""What the user watched, most recent first: movie ids joined by "|" ("50|1|181"); "" for a
user with no history. Only the first HISTORY_LENGTH parts count. It is a user's feature, but
its vector depends on the candidate: attention over the watched movies keyed by the
candidate's movie vector (the equation is under ``SIGNATURE_WEIGHTS`` below)."""

HISTORY_LENGTH = 20
"""How many of the most recent watched movies a version reads (and the feature store keeps)."""

LAST_WATCHED = "last_watched"
"""How long before a row (when serving, before the request) the user watched their most
recent movie, as ``last_watched_value`` spells it: "12" for 4,096 to 8,191 seconds; "" for a
user who watched nothing, or data without times. Like HISTORY_FIELD it comes with the user;
it is single-valued and counts as a user field (``rank_sides``)."""

HISTORY_FIELDS: tuple[str, ...] = (
    *USER_FIELDS, LAST_WATCHED, *ALL_FIELDS[len(USER_FIELDS) :], HISTORY_FIELD
)  # fmt: skip
"""All eight fields, when the user last watched, and the watched movies (ten fields, 45
pairs)."""

FIELD_SETS: dict[str, tuple[str, ...]] = {
    "seed": SEED_FIELDS,
    "all": ALL_FIELDS,
    "history": HISTORY_FIELDS,
}

MULTI_VALUED: dict[str, str] = {"genres": "|", HISTORY_FIELD: "|"}
"""Field -> separator of its values, as in ML-1M's movies.dat ("Animation|Comedy")."""

USER_ID, MOVIE_ID = "user_id", "movie_id"


def last_watched_value(seconds: float | None) -> str:
    """LAST_WATCHED's raw value for a gap of ``seconds``: "k" when 2**k <= seconds < 2**(k+1)
    (under 2 seconds, a negative gap from a skewed clock included, is "0"); "" for None.
    Powers of two keep a session's seconds apart and a return after weeks in few values."""
    if seconds is None:
        return ""
    return str(max(int(seconds), 1).bit_length() - 1)


def split_values(field: str, joined: str) -> list[str]:
    """The values of a MULTI_VALUED field's raw string, empty parts dropped
    ("Comedy|Drama" -> ["Comedy", "Drama"]; "" -> [])."""
    return [value for value in joined.split(MULTI_VALUED[field]) if value]


def pairs(fields: tuple[str, ...] | list[str]) -> tuple[tuple[str, str], ...]:
    """Field pairs in attention-column order: ``itertools.combinations`` of ``fields``."""
    return tuple(itertools.combinations(fields, 2))


def rank_sides(fields: tuple[str, ...] | list[str]) -> tuple[list[str], list[str]]:
    """(user fields, movie fields) of a field set, each in field order; a field set lists its
    user fields (USER_FIELDS and LAST_WATCHED) first."""
    users = [f for f in fields if f in USER_FIELDS or f == LAST_WATCHED]
    if list(fields[: len(users)]) != users:
        raise ValueError(f"user fields must come first. Received: {list(fields)}")
    return users, list(fields[len(users) :])


def user_inputs(fields: tuple[str, ...] | list[str]) -> list[str]:
    """The fields whose raw values come with the user, not the movie: the user fields, then
    HISTORY_FIELD if the version has it (a user's feature, though its vector depends on the
    candidate, so ``rank_sides`` counts it on the movie side)."""
    users, _ = rank_sides(fields)
    return [*users, *(f for f in fields if f == HISTORY_FIELD)]


SIGNATURE_SCORE = "serving_default"
SIGNATURE_EXPLAIN = "explain"
SIGNATURE_WEIGHTS = "weights"
OUTPUT_PROBABILITY = "probability"
OUTPUT_ATTENTION = "attention"
OUTPUT_CONTRIBUTION = "contribution"
OUTPUT_BIAS = "bias"
OUTPUT_LINEAR = "linear"
OUTPUT_LOGIT = "logit"
OUTPUT_FIELD_TABLE = "field_table"
OUTPUT_FIELD_OFFSETS = "field_offsets"
OUTPUT_BAG_TABLES: dict[str, str] = {field: f"bag_table_{field}" for field in MULTI_VALUED}
OUTPUT_ATTENTION_KERNEL = "attention_kernel"
OUTPUT_ATTENTION_BIAS = "attention_bias"
OUTPUT_ATTENTION_PROJECTION = "attention_projection"
OUTPUT_PROJECTION = "projection"
OUTPUT_PAIR_BIAS = "pair_bias"
OUTPUT_PAIR_SCALE = "pair_scale"
OUTPUT_USES_ATTENTION = "uses_attention"
OUTPUT_HISTORY_QUERY = "history_query"
OUTPUT_HISTORY_RECENCY = "history_recency"
OUTPUT_HISTORY_ATTENTION = "history_attention"
METADATA_FILE = "metadata.json"
VOCABULARIES_FILE = "vocabularies.json"
FORMAT_VERSION = 3
"""1: six fixed fields. 2: the field set is the version's own (``fields``). 3: one
``weights`` signature instead of the ``items`` and ``rank*`` signatures."""


def weights_outputs(fields: tuple[str, ...] | list[str]) -> list[str]:
    """The names of the ``SIGNATURE_WEIGHTS`` outputs of a version with ``fields``."""
    return [
        OUTPUT_FIELD_TABLE,
        OUTPUT_FIELD_OFFSETS,
        *(OUTPUT_BAG_TABLES[f] for f in fields if f in MULTI_VALUED),
        OUTPUT_ATTENTION_KERNEL,
        OUTPUT_ATTENTION_BIAS,
        OUTPUT_ATTENTION_PROJECTION,
        OUTPUT_PROJECTION,
        OUTPUT_PAIR_BIAS,
        OUTPUT_PAIR_SCALE,
        OUTPUT_BIAS,
        OUTPUT_USES_ATTENTION,
        *((OUTPUT_HISTORY_QUERY, OUTPUT_HISTORY_RECENCY) if HISTORY_FIELD in fields else ()),
    ]


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
    """The version's metadata; ValueError, in one line, for a format other than
    FORMAT_VERSION or a field set this reader does not know."""
    metadata = ModelMetadata.model_validate_json((version_dir / METADATA_FILE).read_text())
    if metadata.format_version < FORMAT_VERSION:
        raise ValueError(
            f"format_version {metadata.format_version} was exported by an older afm-ctr "
            f"(this reader needs {FORMAT_VERSION}); train a new version to serve it"
        )
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
