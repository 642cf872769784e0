"""POST /score and GET /explain: one Redis round trip, one scoring call, the reply in orjson.

Handlers return the reply as a ``Response`` (FastAPI's documented way to skip its response
validation): the response models document the shape in /docs, but validating thousands of
scores per request would cost more than scoring them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Annotated, Any

import numpy as np
import orjson
from fastapi import APIRouter, Query
from fastapi.responses import Response

from service import explanation
from service.candidates import Candidates, Explanation, Scores
from service.deps import DirectRoute, ScoringDep
from service.errors import InvalidRequest
from service.feature_store import FeatureRead
from service.loaded_model import LoadedModel
from service.schemas import (
    ID_MAX,
    UNAVAILABLE,
    ExplainResponse,
    Problem,
    ScoreRequest,
    ScoreResponse,
)

router = APIRouter(tags=["scoring"])

ERRORS = {
    404: {
        "model": Problem,
        "description": "`model_version` is not loaded; `detail` lists the loaded versions.",
    },
    422: {"model": Problem, "description": "Invalid request; `errors` names each field."},
    500: {"model": Problem, "description": "The model failed; the request was valid."},
    503: UNAVAILABLE,
}
"""The errors of both routes; /score, which takes a body, adds 413."""


async def score(request: ScoreRequest, scoring: ScoringDep) -> Response:
    """Click probabilities of `movie_ids` for `user_id`, in request order or the `top_k` best.

    An unknown user or movie is scored with out-of-vocabulary features and flagged
    `user_known` / `movie_known: false`; a movie only Redis knows is scored from its genres
    and year; a movie neither knows is listed in `unknown_movies` and placed as
    `unknown_movies` in the request says (after the others by default). With `explain: true`
    every score also carries its explanation, as `/explain`.

    The reply is logged as an impression (what was shown to whom, for training from logs)
    and carries its `impression_id`, to send back with the events of what it showed
    (`POST /events`); with `log: false`, or when the service does not log, nothing is
    logged and `impression_id` is null.
    """
    count, limit = len(request.movie_ids), scoring.settings.max_candidates
    if count > limit:
        raise InvalidRequest(f"movie_ids has {count} entries; at most {limit} are allowed")
    model, arm = scoring.pick(request.user_id, request.model_version)
    with scoring.metrics.scoring("/score", model.version, arm) as scored:
        features = await scoring.store.read(request.user_id)
        rows = Candidates.of_request(
            model.fields, request.user_id, features.user, request.movie_ids, features.movies
        )
        if request.explain:
            result = await scoring.batcher.run(model.explain, rows)
        else:
            result = await scoring.batcher.run(model.score, rows)
        scored.probability = result.probability
        unknown = unknown_rows(request.movie_ids, result.movie_known, features.movies)
        order = reply_order(result.probability, unknown, request.top_k, request.unknown_movies)
        if request.explain:
            known = result.movie_known.tolist()
            scores: Any = [
                {
                    "movie_id": request.movie_ids[i],
                    "movie_known": known[i],
                    **_explanation(model, rows, i, result, features),
                }
                for i in order
            ]
            shown = written = None
        else:
            scores, shown, written = reply_scores(request.movie_ids, result, order)
        impression_id = None
        if request.log and scoring.impressions is not None:
            impression_id = scoring.impressions.log(
                model.version, arm, request.user_id, features, request.movie_ids, order,
                result.probability, shown, written,
            )  # fmt: skip
            scoring.metrics.impression_issued(model.version, arm, len(order))
        return _json(
            {
                "user_id": request.user_id,
                "model_version": model.version,
                "impression_id": impression_id,
                "user_known": features.user is not None,
                "scores": scores,
                "unknown_movies": [request.movie_ids[i] for i in unknown.tolist()],
            }
        )


router.add_api_route(
    "/score",
    score,
    methods=["POST"],
    route_class_override=DirectRoute,
    response_model=ScoreResponse,
    responses={
        **ERRORS,
        413: {"model": Problem, "description": "Body larger than AFM_MAX_BODY_BYTES."},
    },
)


@router.get("/explain", response_model=ExplainResponse, responses=ERRORS)
async def explain(
    user_id: Annotated[int, Query(ge=0, le=ID_MAX, examples=[1])],
    movie_id: Annotated[int, Query(ge=0, le=ID_MAX, examples=[1193])],
    scoring: ScoringDep,
    model_version: Annotated[
        int | None,
        Query(ge=0, le=ID_MAX, description="Explain with this loaded version (pinned)."),
    ] = None,
) -> Response:
    """Why the model scores `movie_id` for `user_id` as it does: each field's value with a
    readable label, and the logit taken apart: `bias` + each field's `linear` term + each
    pair's `contribution` = `logit`, pairs by attention weight (they sum to 1), heaviest first.
    The version is the one that scores this user in `/score`, or `model_version` if given."""
    model, arm = scoring.pick(user_id, model_version)
    with scoring.metrics.scoring("/explain", model.version, arm) as scored:
        features = await scoring.store.read(user_id)
        rows = Candidates.of_request(
            model.fields, user_id, features.user, [movie_id], features.movies
        )
        explained = await scoring.batcher.run(model.explain, rows)
        scored.probability = explained.probability
        return _json(
            {
                "user_id": user_id,
                "movie_id": movie_id,
                "model_version": model.version,
                "user_known": features.user is not None,
                "movie_known": bool(explained.movie_known[0]),
                **_explanation(model, rows, 0, explained, features),
            }
        )


def unknown_rows(
    movie_ids: Sequence[int], movie_known: np.ndarray, movies: Mapping[str, object]
) -> np.ndarray:
    """The rows of the candidates the service knows nothing about: the model was not trained
    on the movie's id and the feature set has no features for it. Ascending."""
    unknown = [i for i in np.flatnonzero(~movie_known).tolist() if str(movie_ids[i]) not in movies]
    return np.array(unknown, dtype=np.intp)


def reply_order(
    probability: np.ndarray, unknown: np.ndarray, top_k: int | None, policy: str
) -> Sequence[int]:
    """Row order of the reply: request order, or the ``top_k`` best (``ranked_indices``),
    with the ``unknown`` rows after all others (``last``), left out (``drop``), or ranked
    like the others (``score``)."""
    if policy == "score" or not len(unknown):
        return ranked_indices(probability, top_k)
    others = np.ones(len(probability), dtype=bool)
    others[unknown] = False
    groups = [np.flatnonzero(others), *([unknown] if policy == "last" else [])]
    order = [
        row
        for rows in groups
        for row in rows[np.asarray(ranked_indices(probability[rows], top_k), np.intp)].tolist()
    ]
    return order if top_k is None else order[:top_k]


def ranked_indices(probability: np.ndarray, top_k: int | None) -> Sequence[int]:
    """Row order to return: request order, or the top_k rows by probability, ties in request
    order. Only the top_k are sorted: a partition finds them first (O(n))."""
    n = len(probability)
    if top_k is None:
        return range(n)
    if top_k >= n:
        return np.argsort(-probability, kind="stable").tolist()
    kth = np.partition(probability, n - top_k)[n - top_k]  # the top_k-th largest value
    above = np.flatnonzero(probability > kth)
    ties = np.flatnonzero(probability == kth)[: top_k - len(above)]  # the first ones
    chosen = np.concatenate([above, ties])
    return chosen[np.argsort(-probability[chosen], kind="stable")].tolist()


_ENTRY = b'{"movie_id":'
_PROBABILITY = b',"probability":'
_KNOWN = (b',"movie_known":false},', b',"movie_known":true},')


def scores_json(movie_ids: Sequence[int], scores: Scores, order: Sequence[int]) -> orjson.Fragment:
    """``reply_scores``' serialised list."""
    return reply_scores(movie_ids, scores, order)[0]


def reply_scores(
    movie_ids: Sequence[int], scores: Scores, order: Sequence[int]
) -> tuple[orjson.Fragment, bytes, bytes]:
    """The reply's ``scores`` list without explanations, rows in ``order``, serialised:
    ``[{"movie_id": ..., "probability": ..., "movie_known": ...}, ...]``, each probability the
    shortest decimal of its float32 value (the precision it was computed in); and, as the
    impression log takes them, the ids and those decimals in reply order ("50,181,1").

    orjson writes the ids and the probabilities as two arrays, and the entries are spliced
    from their pieces: no dict per entry. A dict per entry through ``orjson.dumps`` cost an
    eighth of the requests/s at 1,000 candidates with one client (benchmarks/results.md).
    """
    n = len(order)
    if n == 0:
        return orjson.Fragment(b"[]"), b"", b""
    index = np.asarray(order, dtype=np.intp)
    pieces = [_ENTRY] * (5 * n)
    ids = orjson.dumps([movie_ids[i] for i in order])[1:-1]
    pieces[1::5] = ids.split(b",")
    pieces[2::5] = [_PROBABILITY] * n
    values = np.ascontiguousarray(scores.probability[index], np.float32)  # orjson's native type
    probabilities = orjson.dumps(values, option=orjson.OPT_SERIALIZE_NUMPY)[1:-1]
    pieces[3::5] = probabilities.split(b",")
    pieces[4::5] = [_KNOWN[known] for known in scores.movie_known[index].tolist()]
    pieces[0], pieces[-1] = b"[" + _ENTRY, pieces[-1][:-1] + b"]"  # no comma after the last
    return orjson.Fragment(b"".join(pieces)), ids, probabilities


def _explanation(
    model: LoadedModel, rows: Candidates, row: int, explained: Explanation, read: FeatureRead
) -> dict[str, Any]:
    """Row ``row`` explained for people (``explanation.explain``)."""
    values = [rows.value(field, row) for field in model.fields]
    return explanation.explain(
        model.fields, model.pairs, values, explained[row], model, read.meta.labels, read.movies
    )


def _json(body: dict) -> Response:
    return Response(orjson.dumps(body), media_type="application/json")
