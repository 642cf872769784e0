"""The export contract between the trainer (``model/``) and the scoring service (``service/``).

A model directory follows the TF Serving layout::

    <model-dir>/<version>/            integer version, one above the highest present
        saved_model.pb, variables/    a TensorFlow SavedModel
        metadata.json                 ModelMetadata, below
        vocabularies.json             {field: [training values]}; value i has model id i + 1

Rules both halves rely on:

* Inputs are the six FIELDS by name, each a 1-D ``tf.string`` tensor of raw values exactly as
  they appear in the data (gender ``"F"``, zip ``"48067"``, movie_id ``"1193"``). Batch size is
  unknown: any batch works without retracing. The vocabularies live inside the SavedModel;
  a value never seen in training maps to an out-of-vocabulary bucket, never to an error.
* ``SIGNATURE_SCORE`` returns ``OUTPUT_PROBABILITY`` of shape [batch].
  ``SIGNATURE_EXPLAIN`` returns ``OUTPUT_PROBABILITY`` [batch], ``OUTPUT_ATTENTION``
  [batch, len(PAIRS)] whose rows sum to 1, and ``OUTPUT_CONTRIBUTION`` [batch, len(PAIRS)],
  each pair's term in the logit. Columns follow PAIRS order.
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

FIELDS: tuple[str, ...] = ("user_id", "gender", "age", "occupation", "zip", "movie_id")
"""Model input fields, in embedding order."""

PAIRS: tuple[tuple[str, str], ...] = tuple(itertools.combinations(FIELDS, 2))
"""Field pairs in attention-column order (15 for six fields)."""

SIGNATURE_SCORE = "serving_default"
SIGNATURE_EXPLAIN = "explain"
OUTPUT_PROBABILITY = "probability"
OUTPUT_ATTENTION = "attention"
OUTPUT_CONTRIBUTION = "contribution"
METADATA_FILE = "metadata.json"
VOCABULARIES_FILE = "vocabularies.json"
FORMAT_VERSION = 1


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
    return ModelMetadata.model_validate_json((version_dir / METADATA_FILE).read_text())


def read_vocabularies(version_dir: Path) -> dict[str, list[str]]:
    """The training vocabulary of each field, as the SavedModel's lookup layers hold it."""
    vocabularies = json.loads((version_dir / VOCABULARIES_FILE).read_text())
    missing = set(FIELDS) - set(vocabularies)
    if missing:
        raise ValueError(f"{VOCABULARIES_FILE} lacks field(s) {sorted(missing)}")
    return {field: [str(v) for v in vocabularies[field]] for field in FIELDS}
