"""Request dependencies, named like the types they give (FastAPI's ``Annotated`` pattern), and
``DirectRoute``, the one route class that resolves them without FastAPI's request handler.

All dependencies are ``async def`` taking the request alone: a plain ``def`` would cost a
thread-pool hop per request. Tests replace them through ``app.dependency_overrides``.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from pydantic import BaseModel, ValidationError

from service.batching import Batcher
from service.coverage import CoverageMonitor
from service.errors import ModelNotReady
from service.feature_store import FeatureStore
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

    def pick(self, user_id: int, pinned: int | None = None) -> tuple[LoadedModel, Arm]:
        """The version scoring ``user_id`` (``pinned``: that one, or VersionNotLoaded) and
        how it was chosen."""
        return self.serving.pick(user_id, pinned)


async def get_scoring(request: Request) -> Scoring:
    state = request.app.state
    serving: Serving = state.registry.serving
    if serving.stable is None:
        raise _not_ready(state.settings)
    return Scoring(serving, state.feature_store, state.batcher, state.metrics, state.settings)


SettingsDep = Annotated[Settings, Depends(get_settings)]
RegistryDep = Annotated[ModelRegistry, Depends(get_registry)]
ModelDep = Annotated[LoadedModel, Depends(get_model)]
FeatureStoreDep = Annotated[FeatureStore, Depends(get_feature_store)]
CoverageDep = Annotated[CoverageMonitor, Depends(get_coverage)]
ScoringDep = Annotated[Scoring, Depends(get_scoring)]


class DirectRoute(APIRoute):
    """A route for an endpoint that takes one JSON body model and dependencies of the request
    alone, called without FastAPI's request handler: the body is validated from its bytes in
    one pydantic pass (errors located under ``body``, as FastAPI locates them), each
    dependency (or its override in ``app.dependency_overrides``) is awaited with the request.
    FastAPI documents the route from the endpoint like any other.

    The one seam of the service, for POST /score: FastAPI's handler (content-type check,
    stdlib JSON, the dependency solver) cost 7-9 % of its requests/s with one client
    (benchmarks/results.md).
    """

    def get_route_handler(self) -> Callable[[Request], Awaitable[Response]]:
        takes, endpoint = self.dependant, self.endpoint
        other = [*takes.path_params, *takes.query_params, *takes.header_params]
        bodies, providers = takes.body_params, [(d.name, d.call) for d in takes.dependencies]
        model = bodies[0].field_info.annotation if len(bodies) == 1 else None
        by_request = all(
            list(inspect.signature(call).parameters) == ["request"] for _, call in providers
        )
        one_model = isinstance(model, type) and issubclass(model, BaseModel)
        if other or takes.cookie_params or not one_model or not by_request:
            raise TypeError(
                f"{endpoint.__name__} must take one body model and dependencies of the request"
            )
        body_name = bodies[0].name

        async def handle(request: Request) -> Response:
            try:
                body = model.model_validate_json(await request.body())
            except ValidationError as exc:
                errors = [{**error, "loc": ("body", *error["loc"])} for error in exc.errors()]
                raise RequestValidationError(errors) from None
            overrides = request.app.dependency_overrides
            values = {name: await overrides.get(call, call)(request) for name, call in providers}
            return await endpoint(**{body_name: body}, **values)

        return handle
