"""A real ``LoadedModel`` without TensorFlow: the NumPy scorer on random weights laid out as
the ``weights`` signature exports them (``model.contracts.export_format``), so service tests
score, explain and check rows as a loaded version does, in milliseconds."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from model.contracts import export_format as ef
from model.contracts.numpy_scorer import NumpyScorer
from service.loaded_model import LoadedModel


def random_weights(
    fields: Sequence[str], vocabularies: Mapping[str, Sequence[str]], k: int = 4, seed: int = 0
) -> dict[str, np.ndarray]:
    """Every output of ``ef.weights_outputs(fields)``, drawn at random (attention factor 3)."""
    rng = np.random.default_rng(seed)

    def normal(*shape: int) -> np.ndarray:
        return rng.normal(scale=1.0, size=shape).astype(np.float32)

    single = [f for f in fields if f not in ef.MULTI_VALUED]
    sizes = [len(vocabularies[f]) + 1 for f in single]
    weights = {
        ef.OUTPUT_FIELD_TABLE: normal(sum(sizes), k + 1),
        ef.OUTPUT_FIELD_OFFSETS: np.cumsum([0, *sizes[:-1]]).astype(np.int32),
        **{
            ef.OUTPUT_BAG_TABLES[f]: normal(len(vocabularies[f]) + 1, k + 1)
            for f in fields
            if f in ef.MULTI_VALUED
        },
        ef.OUTPUT_ATTENTION_KERNEL: normal(k, 3),
        ef.OUTPUT_ATTENTION_BIAS: normal(3),
        ef.OUTPUT_ATTENTION_PROJECTION: normal(3),
        ef.OUTPUT_PROJECTION: normal(k),
        ef.OUTPUT_PAIR_BIAS: normal(len(ef.pairs(fields))),
        ef.OUTPUT_PAIR_SCALE: np.float32(1.0),
        ef.OUTPUT_BIAS: np.float32(-1.0),
        ef.OUTPUT_USES_ATTENTION: np.bool_(True),
    }
    if ef.HISTORY_FIELD in fields:
        weights[ef.OUTPUT_HISTORY_QUERY] = normal(k) * 3  # attention far from uniform
        weights[ef.OUTPUT_HISTORY_RECENCY] = normal(ef.HISTORY_LENGTH)
    assert list(weights) == ef.weights_outputs(fields)
    return weights


def numpy_model(
    fields: Sequence[str], vocabularies: Mapping[str, Sequence[str]], version: int = 7
) -> LoadedModel:
    """A loaded version of ``fields`` scoring with random weights."""
    fields = tuple(fields)
    metadata = ef.ModelMetadata(
        version=version,
        fields=list(fields),
        pairs=[list(p) for p in ef.pairs(fields)],
        hyperparameters={},
        protocol="next-item",
        data={},
        metrics={},
        tensorflow_version="none",
        created_at="2026-01-01T00:00:00+00:00",
    )
    return LoadedModel(
        version=version,
        path=Path(f"/models/{version}"),
        metadata=metadata,
        fields=fields,
        pairs=ef.pairs(fields),
        vocabularies={f: frozenset(values) for f, values in vocabularies.items()},
        scorer=NumpyScorer(fields, random_weights(fields, vocabularies), vocabularies),
    )
