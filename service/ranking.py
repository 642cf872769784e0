"""Pure helpers between the routes and the model: batch columns, ranking, readable pairs."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from model import contract
from model.feature_layout import USER_FIELDS

UNKNOWN_VALUE = ""
"""Sent for every user feature of a user without a Redis hash: in no vocabulary, so OOV."""

USER_ID, MOVIE_ID = contract.FIELDS[0], contract.FIELDS[-1]


def batch_columns(
    user_id: int, user_features: Mapping[str, str] | None, movie_ids: Sequence[int]
) -> dict[str, list[str]]:
    """One row per candidate: the user's raw features repeated, the movie id varying."""
    n = len(movie_ids)
    columns = {USER_ID: [str(user_id)] * n, MOVIE_ID: [str(m) for m in movie_ids]}
    for name in USER_FIELDS:
        value = user_features[name] if user_features is not None else UNKNOWN_VALUE
        columns[name] = [value] * n
    return columns


def ranked_indices(probability: np.ndarray, top_k: int | None) -> list[int]:
    """Row order to return: request order, or the top_k rows by probability (stable ties)."""
    if top_k is None:
        return list(range(len(probability)))
    order = np.argsort(-probability, kind="stable")
    return order[:top_k].tolist()


def readable_pairs(attention: np.ndarray, contribution: np.ndarray) -> list[dict[str, Any]]:
    """One prediction's pairs as ``{"fields", "weight", "contribution"}``, heaviest first."""
    weights, terms = attention.tolist(), contribution.tolist()
    order = sorted(range(len(weights)), key=lambda i: -weights[i])
    return [
        {"fields": list(contract.PAIRS[i]), "weight": weights[i], "contribution": terms[i]}
        for i in order
    ]


def score_entries(
    movie_ids: Sequence[int],
    probability: np.ndarray,
    known: Sequence[bool | None],
    top_k: int | None,
    attention: np.ndarray | None = None,
    contribution: np.ndarray | None = None,
) -> list[dict[str, Any]]:
    """The ``scores`` list of a /score reply; with attention, each entry carries its pairs."""
    values = probability.tolist()
    order = range(len(values)) if top_k is None else ranked_indices(probability, top_k)
    if attention is None or contribution is None:
        return [
            {"movie_id": movie_ids[i], "probability": values[i], "movie_known": known[i]}
            for i in order
        ]
    return [
        {
            "movie_id": movie_ids[i],
            "probability": values[i],
            "movie_known": known[i],
            "pairs": readable_pairs(attention[i], contribution[i]),
        }
        for i in order
    ]
