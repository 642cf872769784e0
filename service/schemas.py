"""Request and response bodies. Field names here are the public API; see docs/api.md.

Ids are strict integers: ``"12"``, ``1.5`` and ``true`` are refused with 422 rather than
guessed at. The candidate-count bound comes from Settings, so it is checked in the route.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    ValidationError,
    ValidatorFunctionWrapHandler,
    WrapValidator,
)

from model.contracts.export_format import HISTORY_LENGTH

ID_MAX = 2**63 - 1
"""The largest id: a signed 64-bit integer."""

Id = Annotated[StrictInt, Field(ge=0, le=ID_MAX)]


class ScoreRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"user_id": 1, "movie_ids": [1193, 661, 914]},
                {"user_id": 1, "movie_ids": [1193, 661, 914, 3408], "top_k": 2, "explain": True},
            ]
        },
    )

    user_id: Id
    movie_ids: list[Id] = Field(min_length=1, description="Candidates, scored in this order.")
    top_k: Annotated[StrictInt, Field(ge=1)] | None = Field(
        None, description="Return only the k most probable, best first."
    )
    explain: StrictBool = Field(False, description="Add each score's per-pair attention.")
    model_version: Id | None = Field(
        None,
        description="Score with this loaded version (see /model); 404 if it is not loaded. "
        "Default: the rollout policy's choice for this user.",
    )
    log: StrictBool = Field(
        True,
        description="Log this reply as an impression (what was shown, for training from "
        "logs) and return its `impression_id`. `false` for a request whose reply no one is "
        "shown (a prefetch, a test, the explanation page): nothing is logged and "
        "`impression_id` is null.",
    )
    unknown_movies: Literal["last", "drop", "score"] = Field(
        "last",
        description="What to do with a candidate the service knows nothing about (the model "
        "was not trained on its id and the feature set has no features for it, so its score "
        "says nothing about the movie): `last` lists it after every other candidate, in "
        "request order; `drop` leaves it out; `score` ranks it by its score like the others.",
    )


class FeatureValue(BaseModel):
    field: str
    value: str = Field(description='The raw value the model was given; "" when unknown.')
    label: str = Field(
        description="A readable name: a code's meaning, the movie title, genres as a list; "
        'the raw value where no label exists; "unknown" for no value.'
    )
    known: bool = Field(description="False: not in the training data (out of vocabulary).")


class PairWeight(BaseModel):
    fields: tuple[str, str] = Field(description="The two interacting fields.")
    values: tuple[str, str] = Field(description="Their raw values.")
    labels: tuple[str, str] = Field(description="Their readable labels.")
    weight: float = Field(description="Attention a_ij; the weights of one prediction sum to 1.")
    contribution: float = Field(description="The pair's term in the logit.")


class WatchedMovie(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "movie_id": 608,
                    "title": "Fargo (1996)",
                    "position": 2,
                    "weight": 0.41,
                    "known": True,
                }
            ]
        }
    )

    movie_id: int
    title: str = Field(description="The feature set's title; the movie id where it has none.")
    position: int = Field(
        description="Where the user's history has it: 0 is the most recent. Only the "
        f"{HISTORY_LENGTH} most recent count."
    )
    weight: float = Field(
        description="How much this candidate attends to it (beta); a prediction's weights sum to 1."
    )
    known: bool = Field(
        description="False: not in the training data (the model reads an unknown movie)."
    )


WATCHED = (
    "With a version trained on what users watched (field set `history`): the user's most "
    "recent watched movies, the one this candidate attends to most first; the `watched` "
    "field's label names the first three. Absent for other versions."
)


class Breakdown(BaseModel):
    """One prediction taken apart: bias + sum(linear) + sum(pair contributions) = logit."""

    logit: float = Field(description="log(p / (1 - p)) of the probability.")
    bias: float = Field(description="w0, the same for every prediction.")
    linear: dict[str, float] = Field(description="Each field's own term w_f in the logit.")
    features: list[FeatureValue] = Field(description="The model's fields, in field order.")
    pairs: list[PairWeight] = Field(description="Every field pair, heaviest weight first.")
    watched: list[WatchedMovie] | None = Field(None, description=WATCHED)


class MovieScore(BaseModel):
    movie_id: int
    probability: float
    movie_known: bool = Field(
        description="False: movie_id was not in the training data (scored from its genres "
        "and year where known, else as out-of-vocabulary)."
    )
    logit: float | None = Field(None, description="With explain, as in /explain.")
    bias: float | None = Field(None, description="With explain, as in /explain.")
    linear: dict[str, float] | None = Field(None, description="With explain, as in /explain.")
    features: list[FeatureValue] | None = Field(None, description="With explain.")
    pairs: list[PairWeight] | None = Field(None, description="With explain: by weight, descending.")
    watched: list[WatchedMovie] | None = Field(None, description=f"With explain. {WATCHED}")


class ScoreResponse(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "user_id": 1,
                    "model_version": 3,
                    "impression_id": "i1.k1.3.stable.1.1796616305123.9f1c2a7be04d."
                    "Yf3kQ2V0aXyUq1v8cFqL0w",
                    "user_known": True,
                    "scores": [
                        {"movie_id": 1193, "probability": 0.81, "movie_known": True},
                        {"movie_id": 661, "probability": 0.34, "movie_known": True},
                    ],
                }
            ]
        }
    )

    user_id: int
    model_version: int
    impression_id: str | None = Field(
        None,
        description="This reply's impression: send it back with each event of what it showed "
        "(`POST /events`). Signed by the service and accepted for the attribution window "
        "(AFM_ATTRIBUTION_WINDOW_S). Null when the reply was not logged (`log: false`, or "
        "AFM_LOG_IMPRESSIONS=false).",
        examples=["i1.k1.3.stable.1.1796616305123.9f1c2a7be04d.Yf3kQ2V0aXyUq1v8cFqL0w"],
    )
    user_known: bool = Field(description="False: no features in Redis; scored with OOV values.")
    scores: list[MovieScore]
    unknown_movies: list[int] = Field(
        default_factory=list,
        description="The candidates the service knows nothing about (see the request's "
        "`unknown_movies`), in request order.",
    )


class ExplainResponse(Breakdown):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "user_id": 1,
                    "movie_id": 1193,
                    "model_version": 3,
                    "probability": 0.62,
                    "logit": 0.5,
                    "bias": -1.2,
                    "linear": {
                        "user_id": 0.1,
                        "gender": -0.1,
                        "age": 0.2,
                        "occupation": 0.0,
                        "zip": 0.0,
                        "movie_id": 0.9,
                    },
                    "user_known": True,
                    "movie_known": True,
                    "features": [
                        {"field": "age", "value": "1", "label": "Under 18", "known": True},
                    ],
                    "pairs": [
                        {
                            "fields": ["age", "movie_id"],
                            "values": ["1", "1193"],
                            "labels": ["Under 18", "One Flew Over the Cuckoo's Nest (1975)"],
                            "weight": 0.31,
                            "contribution": 0.6,
                        },
                    ],
                },
                {
                    "user_id": 1,
                    "movie_id": 1196,
                    "model_version": 4,
                    "probability": 0.71,
                    "logit": 0.9,
                    "bias": -1.2,
                    "linear": {"movie_id": 0.9, "watched": 0.4},
                    "user_known": True,
                    "movie_known": True,
                    "features": [
                        {
                            "field": "movie_id",
                            "value": "1196",
                            "label": "Star Wars: Episode V - The Empire Strikes Back (1980)",
                            "known": True,
                        },
                        {
                            "field": "watched",
                            "value": "1210|2762|608|260",
                            "label": "Star Wars: Episode VI - Return of the Jedi (1983), "
                            "Star Wars: Episode IV - A New Hope (1977), Fargo (1996), …",
                            "known": True,
                        },
                    ],
                    "pairs": [
                        {
                            "fields": ["movie_id", "watched"],
                            "values": ["1196", "1210|2762|608|260"],
                            "labels": [
                                "Star Wars: Episode V - The Empire Strikes Back (1980)",
                                "Star Wars: Episode VI - Return of the Jedi (1983), "
                                "Star Wars: Episode IV - A New Hope (1977), Fargo (1996), …",
                            ],
                            "weight": 0.22,
                            "contribution": 0.7,
                        },
                    ],
                    "watched": [
                        {
                            "movie_id": 1210,
                            "title": "Star Wars: Episode VI - Return of the Jedi (1983)",
                            "position": 0,
                            "weight": 0.46,
                            "known": True,
                        },
                        {
                            "movie_id": 260,
                            "title": "Star Wars: Episode IV - A New Hope (1977)",
                            "position": 3,
                            "weight": 0.38,
                            "known": True,
                        },
                        {
                            "movie_id": 608,
                            "title": "Fargo (1996)",
                            "position": 2,
                            "weight": 0.1,
                            "known": True,
                        },
                        {
                            "movie_id": 2762,
                            "title": "Sixth Sense, The (1999)",
                            "position": 1,
                            "weight": 0.06,
                            "known": True,
                        },
                    ],
                },
            ]
        }
    )

    user_id: int
    movie_id: int
    model_version: int
    probability: float
    user_known: bool
    movie_known: bool


class Movie(BaseModel):
    movie_id: int
    title: str
    year: str
    genres: str


class FeatureSet(BaseModel):
    """What `afm-ctr load-features` loaded (the feature set the service reads now)."""

    source: str = Field(description='The dataset it came from; "" if not recorded.')
    users: int | None
    movies: int | None
    loaded_at: str = Field(description='UTC, ISO 8601; "" if not recorded.')
    sample_users: list[int] = Field(description="Some user ids to try.")
    popular_movies: list[Movie] = Field(description="The most rated movies, most first.")


class CoverageReport(BaseModel):
    fields: dict[str, float] = Field(
        description="Share of the loaded users (movie_id: movies) whose value of the field "
        "is in the model's training vocabulary; fields the load did not count are absent."
    )
    threshold: float = Field(description="AFM_MIN_FEATURE_COVERAGE.")
    ok: bool = Field(description="Every share is at least the threshold.")


class LoadedVersion(BaseModel):
    version: int
    role: str = Field(
        description="stable: scores everyone not on the canary; canary: scores `percent` of "
        "users; previous: the stable before, kept for an instant rollback."
    )
    percent: float = Field(description="Share of users (percent) this version scores.")
    loaded_at: str


class Rollout(BaseModel):
    policy: dict[str, Any] | None = Field(
        description="The rollout policy in force (rollout.json); null: none, the newest "
        "loadable version serves everyone."
    )
    error: str | None = Field(
        None, description="Why the policy file on disk is ignored (the last good one is kept)."
    )


class ModelInfo(BaseModel):
    version: int = Field(description="The stable version.")
    replica: str = Field(
        description="Hostname of the replica that answered (the container or pod name), "
        "to tell replicas behind a load balancer apart."
    )
    path: str
    loaded_at: str
    loaded: list[LoadedVersion] = Field(
        default_factory=list, description="Every loaded version and its role, stable first."
    )
    rollout: Rollout | None = None
    refused_versions: list[int] = Field(description="Versions that failed to load.")
    metadata: dict[str, Any] = Field(description="The version's metadata.json.")
    coverage: CoverageReport | None = Field(
        None,
        description="How much of the loaded feature set the model knows; null when "
        "no feature set can be read.",
    )


class Health(BaseModel):
    status: str = "alive"


class Readiness(BaseModel):
    ready: bool
    model_version: int | None
    redis: bool = Field(description="Redis answered a command within the timeout.")
    features_loaded: bool = Field(description="A feature set is loaded under the prefix.")
    coverage_ok: bool | None = Field(
        None,
        description="The model knows enough of the loaded values (see /model); does not "
        "affect ready. null without a model or a feature set.",
    )
    coverage_reason: str | None = Field(None, description="Why coverage is low, when it is.")


class Event(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "impression_id": "i1.k1.3.stable.1.1796616305123.9f1c2a7be04d."
                    "Yf3kQ2V0aXyUq1v8cFqL0w",
                    "movie_id": 1193,
                    "type": "click",
                    "ts": 1796616312000,
                }
            ]
        },
    )

    impression_id: str = Field(
        max_length=256, description="The `impression_id` of the `/score` reply that showed it."
    )
    movie_id: Id = Field(description="The movie, one the impression showed.")
    type: Literal["click", "view", "skip"] = Field(
        description="`click`: chosen (and put first in the user's watched movies); `view`: "
        "seen; `skip`: passed over."
    )
    ts: Annotated[StrictInt, Field(ge=0, le=ID_MAX)] | None = Field(
        None,
        description="When it happened, milliseconds since the epoch; default: when received. "
        "Between the impression and the end of its attribution window.",
    )


@dataclass(frozen=True)
class NotAnEvent:
    """An entry of ``events`` that failed validation as an Event: refused on its own, with
    pydantic's ``errors`` (locations inside the entry), while the batch's others go on."""

    errors: list[dict[str, Any]]


def _refused_alone(value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
    try:
        return handler(value)
    except ValidationError as exc:
        return NotAnEvent(exc.errors(include_url=False, include_input=False))


EventEntry = Annotated[Event, WrapValidator(_refused_alone)]
"""An Event, documented as one; an invalid entry validates as a NotAnEvent instead."""


class EventsRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "events": [
                        {
                            "impression_id": "i1.k1.3.stable.1.1796616305123.9f1c2a7be04d."
                            "Yf3kQ2V0aXyUq1v8cFqL0w",
                            "movie_id": 1193,
                            "type": "view",
                        },
                        {
                            "impression_id": "i1.k1.3.stable.1.1796616305123.9f1c2a7be04d."
                            "Yf3kQ2V0aXyUq1v8cFqL0w",
                            "movie_id": 1193,
                            "type": "click",
                            "ts": 1796616312000,
                        },
                    ]
                }
            ]
        },
    )

    events: list[EventEntry] = Field(
        min_length=1,
        description="At most AFM_MAX_EVENTS. Each is answered on its own: an invalid one "
        "is refused, the others recorded.",
    )


class EventProblem(BaseModel):
    """Why one event was refused: RFC 9457 problem details, as an error response's body."""

    type: str = Field(
        description="`urn:afm-ctr:problem:` and one of `invalid-event`, `impression-malformed`, "
        "`impression-forged`, `impression-expired`, `movie-not-shown`, "
        "`event-outside-window`, `event-log-unavailable` (503: send it again)."
    )
    title: str
    status: int
    detail: str
    instance: str
    errors: list[FieldError] | None = Field(
        None, description="With `invalid-event`: every invalid field of the event."
    )


class EventResult(BaseModel):
    outcome: Literal["accepted", "duplicate", "refused"] = Field(
        description="`accepted`: recorded; `duplicate`: this impression's event of this type "
        "on this movie was recorded before, nothing written; `refused`: not recorded, "
        "`problem` says why."
    )
    problem: EventProblem | None = None


class EventsResponse(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "accepted": 1,
                    "duplicate": 1,
                    "refused": 1,
                    "results": [
                        {"outcome": "accepted"},
                        {"outcome": "duplicate"},
                        {
                            "outcome": "refused",
                            "problem": {
                                "type": "urn:afm-ctr:problem:impression-expired",
                                "title": "Impression outside the attribution window",
                                "status": 422,
                                "detail": "the impression is older than the attribution "
                                "window (3600 s)",
                                "instance": "/events",
                            },
                        },
                    ],
                }
            ]
        }
    )

    accepted: int
    duplicate: int
    refused: int
    results: list[EventResult] = Field(description="One per event, in request order.")


class FieldError(BaseModel):
    field: str = Field(description="Where: `body.movie_ids[1]`, `query.user_id`, `body`.")
    message: str


class Problem(BaseModel):
    """RFC 9457 problem details, the body of every error response."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "type": "urn:afm-ctr:problem:invalid-request",
                    "title": "Invalid request",
                    "status": 422,
                    "detail": "body.movie_ids[1]: Input should be a valid integer",
                    "instance": "/score",
                    "errors": [
                        {"field": "body.movie_ids[1]", "message": "Input should be a valid integer"}
                    ],
                }
            ]
        }
    )

    type: str
    title: str
    status: int
    detail: str
    instance: str
    errors: list[FieldError] | None = Field(
        None, description="With 422: every invalid field and what is wrong with it."
    )


RETRY_AFTER = {
    "Retry-After": {
        "description": "Seconds to wait before trying again.",
        "schema": {"type": "integer", "minimum": 1},
    }
}
"""The header of every 503, as OpenAPI declares a response header."""

UNAVAILABLE = {
    "model": Problem,
    "description": "No model loaded yet, or Redis down, slow or empty; retry after "
    "`Retry-After` seconds.",
    "headers": RETRY_AFTER,
}
UNAUTHORIZED = {
    "model": Problem,
    "description": "No API key, or not one of this service's (see the security schemes).",
    "headers": {
        "WWW-Authenticate": {"description": "The scheme to use.", "schema": {"type": "string"}}
    },
}
