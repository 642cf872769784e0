"""Pure helpers between the routes and the model: batch columns, ranking, readable pairs."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from model.contract import MOVIE_ID, USER_FIELDS, USER_ID

UNKNOWN_VALUE = ""
"""Sent for every feature Redis does not know (a user or movie without features): in no
vocabulary, so the model's out-of-vocabulary value."""

_NONE: Mapping[str, str] = {}


def batch_columns(
    fields: Sequence[str],
    user_id: int,
    user_features: Mapping[str, str] | None,
    movie_ids: Sequence[int],
    movie_features: Mapping[str, Mapping[str, str]],
) -> dict[str, list[str]]:
    """One row per candidate for the model's ``fields``: the user's raw features repeated,
    the movie's id and features (``movie_features``, keyed by id string) varying."""
    n = len(movie_ids)
    ids = [str(m) for m in movie_ids]
    user = user_features or _NONE
    columns = {}
    for name in fields:
        if name == USER_ID:
            columns[name] = [str(user_id)] * n
        elif name == MOVIE_ID:
            columns[name] = ids
        elif name in USER_FIELDS:
            columns[name] = [user.get(name, UNKNOWN_VALUE)] * n
        else:
            columns[name] = [movie_features.get(m, _NONE).get(name, UNKNOWN_VALUE) for m in ids]
    return columns


def ranked_indices(probability: np.ndarray, top_k: int | None) -> list[int]:
    """Row order to return: request order, or the top_k rows by probability (stable ties)."""
    if top_k is None:
        return list(range(len(probability)))
    order = np.argsort(-probability, kind="stable")
    return order[:top_k].tolist()


def readable_pairs(
    pairs: Sequence[tuple[str, str]], attention: np.ndarray, contribution: np.ndarray
) -> list[dict[str, Any]]:
    """One prediction's pairs as ``{"fields", "weight", "contribution"}``, heaviest first."""
    weights, terms = attention.tolist(), contribution.tolist()
    order = sorted(range(len(weights)), key=lambda i: -weights[i])
    return [
        {"fields": list(pairs[i]), "weight": weights[i], "contribution": terms[i]} for i in order
    ]


def score_entries(
    movie_ids: Sequence[int],
    probability: np.ndarray,
    known: Sequence[bool | None],
    top_k: int | None,
    pairs: Sequence[tuple[str, str]] = (),
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
            "pairs": readable_pairs(pairs, attention[i], contribution[i]),
        }
        for i in order
    ]
