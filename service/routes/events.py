"""POST /events: the clicks, views and skips of what ``/score`` showed, answered per event."""

from __future__ import annotations

import orjson
from fastapi import APIRouter
from fastapi.responses import Response

from service.deps import EventRecorderDep, SettingsDep
from service.errors import InvalidRequest
from service.schemas import RETRY_AFTER, EventsRequest, EventsResponse, Problem

router = APIRouter(tags=["events"])


@router.post(
    "/events",
    status_code=202,
    response_model=EventsResponse,
    responses={
        413: {"model": Problem, "description": "Body larger than AFM_MAX_BODY_BYTES."},
        422: {
            "model": Problem,
            "description": "Not an events batch (no `events` list, an empty one, or more than "
            "AFM_MAX_EVENTS); an invalid event alone is refused in the 202's results.",
        },
        503: {
            "model": Problem,
            "description": "Redis failed before the batch was recorded; send it again after "
            "`Retry-After` seconds (what was recorded answers `duplicate`).",
            "headers": RETRY_AFTER,
        },
    },
)
async def events(
    batch: EventsRequest, recorder: EventRecorderDep, settings: SettingsDep
) -> Response:
    """Record what people did with the movies a `/score` reply showed them: each event names
    the reply's `impression_id`, the movie and `click`, `view` or `skip`.

    Answered 202 with a result per event, in order: `accepted`, `duplicate` (recorded
    before: sending a batch again is safe) or `refused` with a problem: an invalid event, an
    impression id that is malformed, not signed by this service or older than the
    attribution window (AFM_ATTRIBUTION_WINDOW_S), a movie the impression did not show, or a
    `ts` outside the window. A late event within the window is accepted. A click also puts
    the movie first in the user's watched movies, which the next `/score` reads.
    """
    count, limit = len(batch.events), settings.max_events
    if count > limit:
        raise InvalidRequest(f"events has {count} entries; at most {limit} are allowed")
    results = await recorder.record(batch.events)
    totals = dict.fromkeys(("accepted", "duplicate", "refused"), 0)
    for result in results:
        totals[result["outcome"]] += 1
    return Response(
        orjson.dumps({**totals, "results": results}), 202, media_type="application/json"
    )
