"""Request dependencies, named like the types they give (FastAPI's ``Annotated`` pattern), and
``DirectRoute``, the one route class that resolves them without FastAPI's request handler.

All dependencies are ``async def`` taking the request: a plain ``def`` would cost a
thread-pool hop per request. Tests replace them through ``app.dependency_overrides``.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, Request, Response
from fastapi.dependencies.models import Dependant
from fastapi.dependencies.utils import get_dependant
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute, _effective_route_context_var
from pydantic import BaseModel, ValidationError

from service.batching import Batcher
from service.coverage import CoverageMonitor
from service.errors import ModelNotReady
from service.events import EventRecorder
from service.feature_store import FeatureStore
from service.impressions import ImpressionLog
from service.loaded_model import LoadedModel
from service.metrics import Metrics
from service.model_registry import Arm, ModelRegistry, Serving
from service.settings import Settings


async def get_settings(request: Request) -> Settings:
    return request.app.state.settings


async def get_registry(request: Request) -> ModelRegistry:
    return request.app.state.registry


async def get_model(request: Request) -> LoadedModel:
    """The stable version, read once: a swap mid-request does not change it."""
    model = request.app.state.registry.current
    if model is None:
        raise _not_ready(request.app.state.settings)
    return model


def _not_ready(settings: Settings) -> ModelNotReady:
    return ModelNotReady(
        f"no model version loaded yet from {settings.model_dir}", retry_after=settings.retry_after
    )


async def get_feature_store(request: Request) -> FeatureStore:
    return request.app.state.feature_store


async def get_coverage(request: Request) -> CoverageMonitor:
    return request.app.state.coverage


@dataclass(frozen=True)
class Scoring:
    """What a scoring request needs, as one dependency. ``serving`` is read once: a swap
    mid-request changes nothing. Which version scores a request depends on its body
    (``user_id``, ``model_version``), hence ``pick``."""

    serving: Serving
    store: FeatureStore
    batcher: Batcher
    metrics: Metrics
    settings: Settings
    impressions: ImpressionLog | None = None
    """None: replies are not logged (AFM_LOG_IMPRESSIONS=false)."""

    def pick(self, user_id: int, pinned: int | None = None) -> tuple[LoadedModel, Arm]:
        """The version scoring ``user_id`` (``pinned``: that one, or VersionNotLoaded) and
        how it was chosen."""
        return self.serving.pick(user_id, pinned)


async def get_scoring(request: Request) -> Scoring:
    state = request.app.state
    serving: Serving = state.registry.serving
    if serving.stable is None:
        raise _not_ready(state.settings)
    return Scoring(
        serving,
        state.feature_store,
        state.batcher,
        state.metrics,
        state.settings,
        state.impressions,
    )


async def get_event_recorder(request: Request) -> EventRecorder:
    return request.app.state.events


SettingsDep = Annotated[Settings, Depends(get_settings)]
RegistryDep = Annotated[ModelRegistry, Depends(get_registry)]
ModelDep = Annotated[LoadedModel, Depends(get_model)]
FeatureStoreDep = Annotated[FeatureStore, Depends(get_feature_store)]
CoverageDep = Annotated[CoverageMonitor, Depends(get_coverage)]
ScoringDep = Annotated[Scoring, Depends(get_scoring)]
EventRecorderDep = Annotated[EventRecorder, Depends(get_event_recorder)]


class DirectRoute(APIRoute):
    """A route for an endpoint that takes one JSON body model and dependencies, called
    without FastAPI's request handler: each dependency (or its override in
    ``app.dependency_overrides``) is awaited with the request and the values of its own
    dependencies (FastAPI's security schemes among them), each resolved once per request as
    FastAPI caches them; the route's, its router's and its inclusion's dependencies
    (``dependencies=[...]``) run first, as in FastAPI. Then the body is validated from its
    bytes in one pydantic pass (errors located under ``body``, as FastAPI locates them).
    FastAPI documents the route from the endpoint like any other.

    The one seam of the service, for POST /score: FastAPI's handler (content-type check,
    stdlib JSON, the dependency solver) cost 7-9 % of its requests/s with one client
    (benchmarks/results.md). A dependency must be an ``async def`` whose parameters are the
    request and other such dependencies; anything else is refused when the route is built.
    """

    def get_route_handler(self) -> Callable[[Request], Awaitable[Response]]:
        takes, endpoint = _served_dependant(self), self.endpoint
        other = [*takes.path_params, *takes.query_params, *takes.header_params]
        bodies = takes.body_params
        model = bodies[0].field_info.annotation if len(bodies) == 1 else None
        one_model = isinstance(model, type) and issubclass(model, BaseModel)
        if other or takes.cookie_params or not one_model or _special_params(takes):
            raise TypeError(
                f"{endpoint.__name__} must take one body model and dependencies of the request"
            )
        providers = tuple(_provider(dependency) for dependency in takes.dependencies)
        body_name = bodies[0].name

        async def handle(request: Request) -> Response:
            values = await _resolve(providers, request, {})
            try:
                body = model.model_validate_json(await request.body())
            except ValidationError as exc:
                errors = [{**error, "loc": ("body", *error["loc"])} for error in exc.errors()]
                raise RequestValidationError(errors) from None
            return await endpoint(**{body_name: body}, **values)

        return handle


@dataclass(frozen=True, slots=True)
class _Provider:
    """One dependency as ``DirectRoute`` calls it: the request goes to the parameters named
    in ``request_names``, and each of ``needs`` (resolved first) to its own parameter."""

    name: str | None  # None: a route or router dependency, run for its effect only
    call: Callable[..., Awaitable[Any]]
    request_names: tuple[str, ...]
    needs: tuple[_Provider, ...]
    use_cache: bool


def _provider(dependant: Dependant) -> _Provider:
    call = dependant.call
    takes_more = [
        *dependant.path_params,
        *dependant.query_params,
        *dependant.header_params,
        *dependant.cookie_params,
        *dependant.body_params,
    ]
    is_async = inspect.iscoroutinefunction(call) or inspect.iscoroutinefunction(
        getattr(call, "__call__", None)  # noqa: B004  # a security scheme: an object
    )
    if takes_more or _special_params(dependant) or not is_async:
        name = getattr(call, "__name__", type(call).__name__)
        raise TypeError(
            f"{name} must be an async function of the request and of dependencies like it"
        )
    request_names = (dependant.request_param_name, dependant.http_connection_param_name)
    return _Provider(
        dependant.name,
        call,  # type: ignore[arg-type]  # checked above
        tuple(name for name in request_names if name),
        tuple(_provider(need) for need in dependant.dependencies),
        dependant.use_cache,
    )


def _special_params(dependant: Dependant) -> bool:
    """Whether it takes what DirectRoute does not give: a response, background tasks, a
    websocket, security scopes."""
    return any(
        (
            dependant.response_param_name,
            dependant.background_tasks_param_name,
            dependant.websocket_param_name,
            dependant.security_scopes_param_name,
        )
    )


async def _resolve(
    providers: tuple[_Provider, ...], request: Request, cache: dict[Callable, Any]
) -> dict[str, Any]:
    """The named values of ``providers`` for this request (``cache``: values already
    resolved in it, by the dependency's function, as FastAPI's cache keys them)."""
    values: dict[str, Any] = {}
    overrides = request.app.dependency_overrides
    for provider in providers:
        key = provider.call
        if provider.use_cache and key in cache:
            value = cache[key]
        else:
            used = provider
            if key in overrides:  # built per request, as FastAPI does: overrides are for tests
                override = get_dependant(path="", call=overrides[key], name=provider.name)
                used = _provider(override)
            kwargs = await _resolve(used.needs, request, cache) if used.needs else {}
            for name in used.request_names:
                kwargs[name] = request
            value = cache[key] = await used.call(**kwargs)
        if provider.name is not None:
            values[provider.name] = value
    return values


def _served_dependant(route: APIRoute) -> Dependant:
    """The route's dependant as served: FastAPI builds an included route's handler with the
    inclusion's dependencies (``include_router(..., dependencies=...)``) in a context it
    hands to ``get_route_handler`` through a context variable, which its own ``APIRoute``
    reads the same way (fastapi.routing, pinned in pyproject.toml)."""
    context = _effective_route_context_var.get()
    if context is not None and context.original_route is route:
        return context.dependant
    return route.dependant
