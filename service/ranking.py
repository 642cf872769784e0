"""Pure helpers between the routes and the model: batch columns and ranking."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
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
    rows = None  # each candidate's movie features, looked up once for all item fields
    for name in fields:
        if name == USER_ID:
            columns[name] = [str(user_id)] * n
        elif name == MOVIE_ID:
            columns[name] = ids
        elif name in USER_FIELDS:
            columns[name] = [user.get(name, UNKNOWN_VALUE)] * n
        else:
            if rows is None:
                get = movie_features.get
                rows = [get(m, _NONE) for m in ids]
            columns[name] = [row.get(name, UNKNOWN_VALUE) for row in rows]
    return columns


def ranked_indices(probability: np.ndarray, top_k: int | None) -> list[int]:
    """Row order to return: request order, or the top_k rows by probability (stable ties)."""
    if top_k is None:
        return list(range(len(probability)))
    order = np.argsort(-probability, kind="stable")
    return order[:top_k].tolist()


def score_entries(
    movie_ids: Sequence[int],
    probability: np.ndarray,
    known: Sequence[bool],
    top_k: int | None,
    explain: Callable[[int], dict[str, Any]] | None = None,
) -> list[dict[str, Any]]:
    """The ``scores`` list of a /score reply; with ``explain`` (row -> its explanation), each
    entry also carries its explanation."""
    values = probability.tolist()
    order = range(len(values)) if top_k is None else ranked_indices(probability, top_k)
    entries = [
        {"movie_id": movie_ids[i], "probability": values[i], "movie_known": known[i]} for i in order
    ]
    if explain is not None:
        for entry, i in zip(entries, order, strict=True):
            entry.update(explain(i))
    return entries
