"""One loaded model version, and the thread pool that runs TensorFlow off the event loop.

``LoadedModel`` wraps the two contract signatures of ``<model-dir>/<version>/``; its methods
are synchronous, take the six FIELDS as equal-length lists of raw strings, and return NumPy.
``Scorer`` runs them on a small dedicated pool, so at most ``threads`` TensorFlow calls run at
once and the event loop keeps serving health checks and Redis reads meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from model import contract
from service.errors import ScoringFailed

log = logging.getLogger(__name__)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's C++ info lines, before import

T = TypeVar("T")
Columns = Mapping[str, Sequence[str]]
"""contract.FIELDS -> raw string values, one per row."""


@dataclass(frozen=True)
class Explanation:
    probability: np.ndarray  # float32 [batch]
    attention: np.ndarray  # float32 [batch, len(PAIRS)], rows sum to 1
    contribution: np.ndarray  # float32 [batch, len(PAIRS)], each pair's term in the logit


@dataclass(frozen=True)
class LoadedModel:
    """A version's signatures, metadata and training vocabularies (for the *_known flags)."""

    version: int
    path: Path
    metadata: contract.ModelMetadata
    score_fn: Callable[..., Mapping[str, Any]] = field(repr=False)
    explain_fn: Callable[..., Mapping[str, Any]] = field(repr=False)
    vocabularies: Mapping[str, frozenset[str]] = field(repr=False)
    loaded_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))
    # The restored object: signatures hold only weak references to its variables.
    saved_model: Any = field(repr=False, default=None)

    def known(self, field_name: str, values: Sequence[str]) -> list[bool]:
        """Whether each value is in the training vocabulary of ``field_name``."""
        vocabulary = self.vocabularies[field_name]
        return [value in vocabulary for value in values]

    def score(self, columns: Columns) -> np.ndarray:
        """Click probabilities, float32 [batch]."""
        outputs = self.score_fn(**_tensors(columns))
        return outputs[contract.OUTPUT_PROBABILITY].numpy()

    def explain(self, columns: Columns) -> Explanation:
        outputs = self.explain_fn(**_tensors(columns))
        return Explanation(
            probability=outputs[contract.OUTPUT_PROBABILITY].numpy(),
            attention=outputs[contract.OUTPUT_ATTENTION].numpy(),
            contribution=outputs[contract.OUTPUT_CONTRIBUTION].numpy(),
        )


def _tensors(columns: Columns) -> dict[str, Any]:
    import tensorflow as tf

    return {name: tf.constant(columns[name], tf.string) for name in contract.FIELDS}


def load_model(version_dir: Path) -> LoadedModel:
    """Load, check and warm one version. Raises on anything that would fail a request later."""
    import tensorflow as tf

    metadata = contract.read_metadata(version_dir)
    if tuple(metadata.fields) != contract.FIELDS:
        raise ValueError(f"metadata fields {metadata.fields} differ from {list(contract.FIELDS)}")
    if [tuple(p) for p in metadata.pairs] != list(contract.PAIRS):
        raise ValueError("metadata pairs differ from the contract's pair order")
    loaded = tf.saved_model.load(str(version_dir))
    missing = {contract.SIGNATURE_SCORE, contract.SIGNATURE_EXPLAIN} - set(loaded.signatures)
    if missing:
        raise ValueError(f"SavedModel lacks signature(s) {sorted(missing)}")
    model = LoadedModel(
        version=int(version_dir.name),
        path=version_dir,
        metadata=metadata,
        score_fn=loaded.signatures[contract.SIGNATURE_SCORE],
        explain_fn=loaded.signatures[contract.SIGNATURE_EXPLAIN],
        vocabularies={
            name: frozenset(values)
            for name, values in contract.read_vocabularies(version_dir).items()
        },
        saved_model=loaded,
    )
    _warm(model)
    return model


def _warm(model: LoadedModel) -> None:
    """Run both signatures once (first calls build kernels) and check the outputs' invariants."""
    for batch in (1, 64):
        columns = {name: [""] * batch for name in contract.FIELDS}
        probability = model.score(columns)
        explained = model.explain(columns)
        if probability.shape != (batch,) or not np.all((probability >= 0) & (probability <= 1)):
            raise ValueError(
                f"{contract.SIGNATURE_SCORE} returned bad probabilities {probability[:3]}"
            )
        if explained.attention.shape != (batch, len(contract.PAIRS)):
            raise ValueError(f"attention has shape {explained.attention.shape}")
        row_sums = explained.attention.sum(axis=1)
        if not all(math.isclose(s, 1.0, abs_tol=1e-3) for s in row_sums.tolist()):
            raise ValueError(f"attention rows sum to {row_sums[:3]}, not 1")


class Scorer:
    """Runs synchronous TensorFlow calls on a bounded pool of ``threads`` threads."""

    def __init__(self, threads: int) -> None:
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="tf-score")

    async def run(self, fn: Callable[[Columns], T], columns: Columns) -> T:
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._pool, fn, columns)
        except Exception as exc:
            log.exception("TensorFlow call failed")
            raise ScoringFailed(
                f"the model failed to score this request: {type(exc).__name__}"
            ) from exc

    def shutdown(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


def configure_tensorflow_threads(intra_op: int, inter_op: int) -> None:
    """Set TF's thread pools; only possible before TF's runtime starts (else logged, kept)."""
    import tensorflow as tf

    try:
        tf.config.threading.set_intra_op_parallelism_threads(intra_op)
        tf.config.threading.set_inter_op_parallelism_threads(inter_op)
    except RuntimeError:
        log.info("TensorFlow already initialised in this process; thread settings left as they are")
