"""Domain errors and the handlers that turn every failure into RFC 9457 problem details.

Routes raise ``ServiceError`` subclasses; ``install_error_handlers`` maps them, request
validation errors, Starlette's HTTP errors and anything unexpected to
``application/problem+json``. Tracebacks are logged, never returned.
"""

from __future__ import annotations

import logging
from typing import Any, ClassVar

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

log = logging.getLogger(__name__)

PROBLEM_MEDIA_TYPE = "application/problem+json"
PROBLEM_TYPE_BASE = "urn:afm-ctr:problem:"


class ServiceError(Exception):
    """A failure with an HTTP status; ``detail`` is the one-line message the client sees."""

    status: ClassVar[int] = 500
    title: ClassVar[str] = "Internal error"
    slug: ClassVar[str] = "internal"
    headers: ClassVar[dict[str, str]] = {}
    retry_after: int | None = None

    def __init__(self, detail: str, *, retry_after: int | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        if retry_after is not None:
            self.retry_after = retry_after


class ModelNotReady(ServiceError):
    status = 503
    title = "No model loaded"
    slug = "model-not-ready"


class VersionNotLoaded(ServiceError):
    """A request pinned a model version this replica does not have loaded."""

    status = 404
    title = "Model version not loaded"
    slug = "version-not-loaded"


class FeatureStoreUnavailable(ServiceError):
    """Redis refused, failed or answered too slowly."""

    status = 503
    title = "Feature store unavailable"
    slug = "feature-store-unavailable"


class FeatureNodeUnavailable(FeatureStoreUnavailable):
    """A Redis Cluster node holding the request's keys is down, failing over, or its slots
    are moving; requests whose keys live on other nodes are still served."""

    title = "Feature store node unavailable"
    slug = "feature-node-unavailable"


class FeaturesNotLoaded(ServiceError):
    """Redis answers but no feature set was loaded under the configured prefix."""

    status = 503
    title = "No feature set loaded"
    slug = "features-not-loaded"


class ScoringFailed(ServiceError):
    """TensorFlow raised while scoring; the request was valid."""

    status = 500
    title = "Scoring failed"
    slug = "scoring-failed"


class InvalidRequest(ServiceError):
    """A request that passed schema validation but breaks a configured bound."""

    status = 422
    title = "Invalid request"
    slug = "invalid-request"


class Unauthorized(ServiceError):
    """No API key, or one the service was not given (``AFM_API_KEYS``, ``AFM_API_KEYS_FILE``).
    The detail never repeats the key sent."""

    status = 401
    title = "API key required"
    slug = "unauthorized"
    headers = {"WWW-Authenticate": 'Bearer realm="afm-ctr"'}


class PayloadTooLarge(ServiceError):
    status = 413
    title = "Request body too large"
    slug = "payload-too-large"


class EventLogUnavailable(ServiceError):
    """Redis failed or was late while ``POST /events`` recorded a batch; resending the whole
    batch is safe (what was recorded answers "duplicate")."""

    status = 503
    title = "Event log unavailable"
    slug = "event-log-unavailable"


class EventRefused(ServiceError):
    """One event of a ``POST /events`` batch that is not recorded; the batch still answers
    202 and the event's result carries this problem. ``reason`` labels it in /metrics."""

    status = 422
    title = "Event refused"
    slug = "event-refused"
    reason: ClassVar[str] = "refused"


class InvalidEvent(EventRefused):
    """An event that is not an event object (a field missing, of the wrong type, unknown);
    ``errors`` names each field as a 422's ``errors`` do."""

    title = "Invalid event"
    slug = "invalid-event"
    reason = "invalid"

    def __init__(self, detail: str, errors: list[dict[str, Any]]) -> None:
        super().__init__(detail)
        self.errors = errors


class MalformedImpression(EventRefused):
    title = "Malformed impression id"
    slug = "impression-malformed"
    reason = "malformed"


class ForgedImpression(EventRefused):
    """The impression id's signature verifies with none of the service's keys."""

    title = "Impression id not signed by this service"
    slug = "impression-forged"
    reason = "forged"


class ExpiredImpression(EventRefused):
    title = "Impression outside the attribution window"
    slug = "impression-expired"
    reason = "expired"


class MovieNotShown(EventRefused):
    title = "Movie not shown by the impression"
    slug = "movie-not-shown"
    reason = "not_shown"


class EventOutsideWindow(EventRefused):
    """The event's ``ts`` is before its impression or after its attribution window."""

    title = "Event time outside the attribution window"
    slug = "event-outside-window"
    reason = "outside_window"


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message, or its type's name without one: details stay
    one line."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def problem(
    status: int,
    title: str,
    detail: str,
    instance: str,
    *,
    slug: str | None = None,
    errors: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """An RFC 9457 problem details object."""
    body: dict[str, Any] = {
        "type": PROBLEM_TYPE_BASE + slug if slug else "about:blank",
        "title": title,
        "status": status,
        "detail": detail,
        "instance": instance,
    }
    if errors is not None:
        body["errors"] = errors
    return body


def problem_of(exc: ServiceError, instance: str) -> dict[str, Any]:
    """``exc`` as a problem details object, for a reply that carries problems inside it (the
    per-event results of ``POST /events``)."""
    errors = getattr(exc, "errors", None)
    return problem(exc.status, exc.title, exc.detail, instance, slug=exc.slug, errors=errors)


def problem_response(
    status: int,
    title: str,
    detail: str,
    instance: str,
    *,
    slug: str | None = None,
    retry_after: int | None = None,
    errors: list[dict[str, Any]] | None = None,
    headers: dict[str, str] | None = None,
) -> Response:
    body = problem(status, title, detail, instance, slug=slug, errors=errors)
    if retry_after is not None:
        headers = {**(headers or {}), "Retry-After": str(retry_after)}
    return Response(orjson.dumps(body), status, headers=headers, media_type=PROBLEM_MEDIA_TYPE)


def validation_errors(exc: RequestValidationError) -> list[dict[str, Any]]:
    """Pydantic's errors as ``{"field": "body.movie_ids[3]", "message": ...}``."""
    found = []
    for error in exc.errors():
        if error.get("type") == "json_invalid":  # loc holds a character offset, not a field
            reason = (error.get("ctx") or {}).get("error", "malformed")
            found.append({"field": "body", "message": f"invalid JSON: {reason}"})
        else:
            found.append(
                {"field": field_path(error.get("loc", ())), "message": error.get("msg", "")}
            )
    return found


def field_path(loc: tuple | list) -> str:
    """Where a pydantic error is: ``("body", "movie_ids", 3)`` -> ``body.movie_ids[3]``."""
    path = ""
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path or "request"


async def _service_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ServiceError)  # registered for ServiceError only
    if exc.status >= 500:
        log.warning("%s %s -> %d: %s", request.method, request.url.path, exc.status, exc.detail)
    return problem_response(
        exc.status,
        exc.title,
        exc.detail,
        request.url.path,
        slug=exc.slug,
        retry_after=exc.retry_after,
        headers=exc.headers,
    )


async def _validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    errors = validation_errors(exc)
    shown = "; ".join(f"{e['field']}: {e['message']}" for e in errors[:3])
    more = f" (and {len(errors) - 3} more)" if len(errors) > 3 else ""
    return problem_response(
        422,
        "Invalid request",
        shown + more,
        request.url.path,
        slug="invalid-request",
        errors=errors,
    )


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    response = problem_response(
        exc.status_code, _reason(exc.status_code), str(exc.detail), request.url.path
    )
    for name, value in (exc.headers or {}).items():
        response.headers[name] = value
    return response


async def _unexpected_error(request: Request, exc: Exception) -> Response:
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return problem_response(
        500,
        "Internal error",
        "an unexpected error occurred; it has been logged",
        request.url.path,
        slug="internal",
    )


def _reason(status: int) -> str:
    from http import HTTPStatus

    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ServiceError, _service_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected_error)
