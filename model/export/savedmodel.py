"""Atomic, versioned SavedModel export following ``model/contracts/export_format.py``.

A version is written completely into ``<model-dir>/.tmp-<uuid>/`` (ignored by
``contract.list_versions``) and then renamed to ``<model-dir>/<n>/``, so a reader never sees
a half-written version. If another export takes ``n`` first, the rename fails and this
export takes the next free number.

The SavedModel and its signatures come from ``model/export/signatures.py``.
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
    METADATA_FILE,
    VOCABULARIES_FILE,
    ModelMetadata,
    next_version,
    pairs,
)
from model.errors import AfmError
from model.export.signatures import build_archive

TMP_PREFIX = ".tmp-"
_RENAME_CONFLICTS = (errno.EEXIST, errno.ENOTEMPTY)


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
