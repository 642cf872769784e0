"""Explanations a person can read: each field's value and label, and the logit's parts.

Pure functions over one request's columns and the explain signature's outputs. Labels come
from the loaded feature set (documented codes such as ML-1M's age groups, movie titles);
a value without a label is shown as it is, a missing one as UNKNOWN_LABEL.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import numpy as np

from model.contracts.export_format import MOVIE_ID, MULTI_VALUED, split_values

UNKNOWN_LABEL = "unknown"

Labels = Mapping[str, Mapping[str, str]]
"""field -> raw value -> readable label."""


class Vocabulary(Protocol):
    def known(self, field_name: str, values: Sequence[str]) -> list[bool]: ...


class Outputs(Protocol):
    """One row's explain outputs (``service.candidates.Explanation`` of one row)."""

    attention: np.ndarray
    contribution: np.ndarray
    bias: np.ndarray
    linear: np.ndarray
    logit: np.ndarray
    probability: np.ndarray


def label(field: str, value: str, labels: Labels, movies: Mapping[str, Mapping[str, str]]) -> str:
    """A readable name for ``value`` of ``field``: a code's meaning, a movie's title, genres
    as a list; the raw value when there is none; UNKNOWN_LABEL for no value."""
    if value == "":
        return UNKNOWN_LABEL
    if field == MOVIE_ID:
        return movies.get(value, {}).get("title") or value
    if field in MULTI_VALUED:
        return ", ".join(split_values(field, value))
    return labels.get(field, {}).get(value, value)


def features(
    fields: Sequence[str],
    values: Sequence[str],
    model: Vocabulary,
    labels: Labels,
    movies: Mapping[str, Mapping[str, str]],
) -> list[dict[str, Any]]:
    """``{"field", "value", "label", "known"}`` for each field, in field order."""
    return [
        {
            "field": field,
            "value": value,
            "label": label(field, value, labels, movies),
            "known": model.known(field, [value])[0],
        }
        for field, value in zip(fields, values, strict=True)
    ]


def breakdown(
    fields: Sequence[str],
    pairs: Sequence[tuple[str, str]],
    row: Outputs,
    described: list[dict[str, Any]],
) -> dict[str, Any]:
    """The logit's parts for one prediction: bias + sum(linear) + sum(contribution) = logit.

    ``row`` holds one prediction's outputs (scalars and 1-D arrays), ``described`` the
    ``features`` of the same row; pairs come heaviest attention first.
    """
    by_field = {entry["field"]: entry for entry in described}
    weights, terms = row.attention.tolist(), row.contribution.tolist()
    order = sorted(range(len(weights)), key=lambda i: -weights[i])
    return {
        "probability": float(row.probability),
        "logit": float(row.logit),
        "bias": float(row.bias),
        "linear": dict(zip(fields, row.linear.tolist(), strict=True)),
        "features": described,
        "pairs": [
            {
                "fields": list(pairs[i]),
                "values": [by_field[f]["value"] for f in pairs[i]],
                "labels": [by_field[f]["label"] for f in pairs[i]],
                "weight": weights[i],
                "contribution": terms[i],
            }
            for i in order
        ],
    }
