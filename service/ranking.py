"""Pure helpers between the routes and the model: a request's candidates and ranking."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import orjson

from model.contracts.export_format import USER_ID, rank_sides
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
    return Candidates(users, np.zeros(len(movie_ids), dtype=np.int32), movie_ids, movie_features)


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
    explain: Callable[[int], dict[str, Any]],
) -> list[dict[str, Any]]:
    """The ``scores`` list of a /score reply with explanations: each entry also carries
    ``explain(row)``."""
    order = range(len(probability)) if top_k is None else ranked_indices(probability, top_k)
    values = probability.tolist()
    return [
        {"movie_id": movie_ids[i], "probability": values[i], "movie_known": known[i], **explain(i)}
        for i in order
    ]


_ENTRY = b'{"movie_id":'
_PROBABILITY = b',"probability":'
_KNOWN = (b',"movie_known":false},', b',"movie_known":true},')


def scores_json(
    movie_ids: Sequence[int], probability: np.ndarray, known: np.ndarray, top_k: int | None
) -> orjson.Fragment:
    """The ``scores`` list of a /score reply without explanations, serialised:
    ``[{"movie_id": ..., "probability": ..., "movie_known": ...}, ...]``, each probability in
    float32's shortest form (the precision it was computed in).

    orjson writes the ids and the probabilities as two arrays, and the entries are spliced
    from their pieces by slice assignment: no dict per entry. At 1,000 candidates: 0.18 ms
    against 0.23 ms for dicts through ``orjson.dumps``, and 61 kB instead of 70 kB (timeit).
    """
    if top_k is not None:
        order = ranked_indices(probability, top_k)
        movie_ids, probability, known = (
            [movie_ids[i] for i in order],
            probability[order],
            known[order],
        )
    n = len(movie_ids)
    if n == 0:
        return orjson.Fragment(b"[]")
    pieces = [_ENTRY] * (5 * n)
    pieces[1::5] = orjson.dumps(list(movie_ids))[1:-1].split(b",")
    pieces[2::5] = [_PROBABILITY] * n
    values = np.ascontiguousarray(probability, np.float32)  # what orjson writes natively
    pieces[3::5] = orjson.dumps(values, option=orjson.OPT_SERIALIZE_NUMPY)[1:-1].split(b",")
    pieces[4::5] = [_KNOWN[k] for k in known.tolist()]
    pieces[0], pieces[-1] = b"[" + _ENTRY, pieces[-1][:-1] + b"]"  # no comma after the last
    return orjson.Fragment(b"".join(pieces))
