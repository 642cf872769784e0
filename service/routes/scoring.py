"""POST /score and GET /explain: one Redis round trip, one scoring call, orjson out.

Handlers return pre-serialised bytes: the response schemas document the shape in /docs, but
re-validating thousands of scores per request would cost more than scoring them. /score
parses its body itself, in one pydantic-core pass from bytes: FastAPI's body handling (a
content-type parse, stdlib JSON, then validation) measured ~3 % of its requests/s.
"""

from __future__ import annotations

from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from pydantic import ValidationError

from service import explanation
from service.deps import ScoringDep, ScoringRoute
from service.errors import InvalidRequest
from service.feature_store import FeatureRead
from service.ranking import candidates, score_entries, scores_json
from service.schemas import ExplainResponse, Problem, ScoreRequest, ScoreResponse
from service.scorer import Candidates, Explanation, LoadedModel

router = APIRouter(tags=["scoring"])

ERRORS = {
    404: {
        "model": Problem,
        "description": "`model_version` is not loaded; `detail` lists the loaded versions.",
    },
    413: {"model": Problem, "description": "Body larger than max_body_bytes."},
    422: {"model": Problem, "description": "Invalid request; `errors` names each field."},
    500: {"model": Problem, "description": "The model failed; the request was valid."},
    503: {
        "model": Problem,
        "description": "No model, or Redis down, slow or empty; retry after `Retry-After` s.",
    },
}


def _json(body: dict) -> Response:
    return Response(orjson.dumps(body), media_type="application/json")


async def _score_request(http: Request) -> ScoreRequest:
    """The validated body; errors located under ``body`` as FastAPI's own would be."""
    try:
        return ScoreRequest.model_validate_json(await http.body())
    except ValidationError as exc:
        errors = [{**error, "loc": ("body", *error["loc"])} for error in exc.errors()]
        raise RequestValidationError(errors) from None


async def score(http: Request, scoring: ScoringDep) -> Response:
    """Click probabilities of `movie_ids` for `user_id`, in request order or the `top_k` best.

    An unknown user or movie is scored with out-of-vocabulary features and flagged
    `user_known` / `movie_known: false`; a movie only Redis knows is scored from its genres
    and year. With `explain: true` every score also carries its explanation, as `/explain`.
    """
    request = await _score_request(http)
    model = scoring.pick(request.user_id, request.model_version)
    store, scorer = scoring.store, scoring.scorer
    count, limit = len(request.movie_ids), scoring.settings.max_candidates
    if count > limit:
        raise InvalidRequest(f"movie_ids has {count} entries; at most {limit} are allowed")
    features = await store.read(request.user_id)
    rows = candidates(
        model.fields, request.user_id, features.user, request.movie_ids, features.movies
    )
    if request.explain:
        explained = await scorer.run(model.explain, rows, model.in_numpy(count))
        scoring.scored(explained.probability)
        scores = score_entries(
            request.movie_ids,
            explained.probability,
            explained.movie_known.tolist(),
            request.top_k,
            lambda row: _explanation(model, rows, row, explained, features),
        )
    else:
        scored = await scorer.run(model.score, rows, model.in_numpy(count))
        scoring.scored(scored.probability)
        scores = scores_json(
            request.movie_ids, scored.probability, scored.movie_known, request.top_k
        )
    return _json(
        {
            "user_id": request.user_id,
            "model_version": model.version,
            "user_known": features.user is not None,
            "scores": scores,
        }
    )


router.add_api_route(
    "/score",
    score,
    methods=["POST"],
    route_class_override=ScoringRoute,  # no dependency solver on the hot path
    response_model=ScoreResponse,
    responses=ERRORS,
    openapi_extra={  # the body FastAPI no longer sees, for /docs
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": ScoreRequest.model_json_schema()}},
        }
    },
)


def _explanation(
    model: LoadedModel, rows: Candidates, row: int, explained: Explanation, read: FeatureRead
) -> dict[str, Any]:
    """Row ``row``'s features with labels and its logit's parts."""
    values = [rows.value(field, row) for field in model.fields]
    described = explanation.features(model.fields, values, model, read.meta.labels, read.movies)
    return explanation.breakdown(model.fields, model.pairs, explained[row], described)


@router.get("/explain", response_model=ExplainResponse, responses=ERRORS)
async def explain(
    user_id: Annotated[int, Query(ge=0, le=2**63 - 1, examples=[1])],
    movie_id: Annotated[int, Query(ge=0, le=2**63 - 1, examples=[1193])],
    scoring: ScoringDep,
    model_version: Annotated[
        int | None,
        Query(ge=0, le=2**63 - 1, description="Explain with this loaded version (pinned)."),
    ] = None,
) -> Response:
    """Why the model scores `movie_id` for `user_id` as it does: each field's value with a
    readable label, and the logit taken apart: `bias` + each field's `linear` term + each
    pair's `contribution` = `logit`, pairs by attention weight (they sum to 1), heaviest first.
    The version is the one that scores this user in `/score`, or `model_version` if given."""
    model = scoring.pick(user_id, model_version)
    store, scorer = scoring.store, scoring.scorer
    features = await store.read(user_id)
    rows = candidates(model.fields, user_id, features.user, [movie_id], features.movies)
    explained = await scorer.run(model.explain, rows, model.in_numpy(1))
    scoring.scored(explained.probability)
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
