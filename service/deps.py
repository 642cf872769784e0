"""Request dependencies, named like the types they give (FastAPI's ``Annotated`` pattern).

All are ``async def``: a plain ``def`` dependency would cost a thread-pool hop per request.
The scoring routes take one ``ScoringDep`` (model, store, scorer, settings together): each
dependency costs a pass of FastAPI's solver per request. Tests replace ``get_scoring`` or the
single-object dependencies via ``app.dependency_overrides``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from starlette.datastructures import State

from service.coverage import CoverageMonitor
from service.errors import ModelNotReady
from service.feature_store import FeatureStore
from service.model_registry import ModelRegistry
from service.scorer import LoadedModel, Scorer
from service.settings import Settings


async def get_settings(request: Request) -> Settings:
    return request.app.state.settings


async def get_registry(request: Request) -> ModelRegistry:
    return request.app.state.registry


async def get_model(request: Request) -> LoadedModel:
    """The version serving now, read once: a swap mid-request does not change it."""
    return _current_model(request.app.state)


def _current_model(state: State) -> LoadedModel:
    model = state.registry.current
    if model is None:
        settings: Settings = state.settings
        raise ModelNotReady(
            f"no model version loaded yet from {settings.model_dir}",
            retry_after=settings.retry_after,
        )
    return model


async def get_feature_store(request: Request) -> FeatureStore:
    return request.app.state.feature_store


async def get_coverage(request: Request) -> CoverageMonitor:
    return request.app.state.coverage


async def get_scorer(request: Request) -> Scorer:
    return request.app.state.scorer


@dataclass(frozen=True)
class Scoring:
    """What a scoring request needs, resolved as one dependency (each costs a solver pass)."""

    model: LoadedModel
    store: FeatureStore
    scorer: Scorer
    settings: Settings


async def get_scoring(request: Request) -> Scoring:
    state = request.app.state
    return Scoring(_current_model(state), state.feature_store, state.scorer, state.settings)


SettingsDep = Annotated[Settings, Depends(get_settings)]
RegistryDep = Annotated[ModelRegistry, Depends(get_registry)]
ModelDep = Annotated[LoadedModel, Depends(get_model)]
FeatureStoreDep = Annotated[FeatureStore, Depends(get_feature_store)]
ScorerDep = Annotated[Scorer, Depends(get_scorer)]
CoverageDep = Annotated[CoverageMonitor, Depends(get_coverage)]
ScoringDep = Annotated[Scoring, Depends(get_scoring)]
