"""Pure helpers between the routes and the model: a request's candidates and ranking."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from model.contract import USER_ID, rank_sides
from service.scorer import UNKNOWN_VALUE, Candidates


def candidates(
    fields: Sequence[str],
    user_id: int,
    user_features: Mapping[str, str] | None,
    movie_ids: Sequence[int],
    movie_features: Mapping[str, Mapping[str, str]],
) -> Candidates:
    """The rows of one request for the model's ``fields``: the user's raw features once,
    each candidate's movie id, and the movie table (``movie_features``, keyed by id string)
    that holds their other movie fields."""
    user_fields, _ = rank_sides(fields)
    user = user_features or {}
    users = {
        name: [str(user_id) if name == USER_ID else user.get(name, UNKNOWN_VALUE)]
        for name in user_fields
    }
    ids = [str(m) for m in movie_ids]
    return Candidates(users, np.zeros(len(ids), dtype=np.int32), ids, movie_features)


def ranked_indices(probability: np.ndarray, top_k: int | None) -> list[int]:
    """Row order to return: request order, or the top_k rows by probability, ties in request
    order. Only the top_k are sorted: a partition finds them first (O(n))."""
    n = len(probability)
    if top_k is None:
        return list(range(n))
    if top_k >= n:
        return np.argsort(-probability, kind="stable").tolist()
    kth = np.partition(probability, n - top_k)[n - top_k]  # the top_k-th largest value
    above = np.flatnonzero(probability > kth)
    ties = np.flatnonzero(probability == kth)[: top_k - len(above)]  # the first ones
    chosen = np.concatenate([above, ties])
    return chosen[np.argsort(-probability[chosen], kind="stable")].tolist()


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
    if top_k is None:  # zip, not indexing: half the time at 1,000 candidates (~170 µs less)
        order: Sequence[int] = range(len(values))
        rows = zip(movie_ids, values, known, strict=True)
    else:
        order = ranked_indices(probability, top_k)
        rows = ((movie_ids[i], values[i], known[i]) for i in order)
    entries = [{"movie_id": m, "probability": v, "movie_known": k} for m, v, k in rows]
    if explain is not None:
        for entry, i in zip(entries, order, strict=True):
            entry.update(explain(i))
    return entries
