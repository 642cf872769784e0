"""Operations: the model in use and the feature set (``router``, behind the API key when
keys are configured); liveness, readiness and Prometheus metrics (``probes``, always open:
orchestrators and scrapers send no key)."""

from __future__ import annotations

import socket

from fastapi import APIRouter, Request
from fastapi.responses import Response

from service.deps import CoverageDep, FeatureStoreDep, ModelDep, RegistryDep, SettingsDep
from service.schemas import (
    RETRY_AFTER,
    UNAVAILABLE,
    CoverageReport,
    FeatureSet,
    Health,
    LoadedVersion,
    ModelInfo,
    Movie,
    Readiness,
    Rollout,
)

router = APIRouter(tags=["operations"])
probes = APIRouter(tags=["operations"])


@router.get("/model", responses={503: UNAVAILABLE})
async def model_info(
    model: ModelDep, registry: RegistryDep, store: FeatureStoreDep, coverage: CoverageDep
) -> ModelInfo:
    """The stable version, its metadata.json and its coverage of the loaded features; every
    loaded version with its role, and the rollout policy in force."""
    covered = await coverage.check(model, store)
    serving = registry.serving
    shares = {"stable": 100 - serving.percent, "canary": serving.percent, "previous": 0.0}
    return ModelInfo(
        version=model.version,
        replica=socket.gethostname(),
        path=str(model.path),
        loaded_at=model.loaded_at,
        loaded=[
            LoadedVersion(version=m.version, role=role, percent=shares[role], loaded_at=m.loaded_at)
            for role, m in serving.roles()
        ],
        rollout=Rollout(
            policy=registry.policy.model_dump(mode="json") if registry.policy else None,
            error=registry.policy_error,
        ),
        refused_versions=registry.refused_versions,
        metadata=model.metadata.model_dump(mode="json"),
        coverage=None
        if covered is None
        else CoverageReport(
            fields=dict(covered.shares), threshold=covered.threshold, ok=covered.ok
        ),
    )


@router.get("/feature-set", responses={503: UNAVAILABLE})
async def feature_set(store: FeatureStoreDep) -> FeatureSet:
    """What `afm-ctr load-features` loaded: its source, counts, sample users and the most
    rated movies (a recommender's cold-start candidates, and the explanation page's)."""
    info = await store.feature_set()
    meta = info.meta
    return FeatureSet(
        source=meta.source,
        users=meta.users,
        movies=meta.movies,
        loaded_at=meta.loaded_at,
        sample_users=[int(u) for u in meta.sample_users if u.isdigit()],
        popular_movies=[
            Movie(movie_id=int(movie_id), **features)
            for movie_id, features in info.popular_movies
            if movie_id.isdigit()
        ],
    )


@probes.get("/healthz")
async def healthz() -> Health:
    """Alive: the process answers. Says nothing about the model or Redis (see /readyz)."""
    return Health()


@probes.get(
    "/readyz",
    responses={503: {"model": Readiness, "description": "Not ready.", "headers": RETRY_AFTER}},
)
async def readyz(
    registry: RegistryDep,
    store: FeatureStoreDep,
    coverage: CoverageDep,
    settings: SettingsDep,
    response: Response,
) -> Readiness:
    """Ready to score: a model is loaded, Redis answers and a feature set is loaded. Low
    coverage of the features by the model is reported, not refused: scoring with
    out-of-vocabulary values beats not scoring."""
    redis_ok, features_loaded = await store.check()
    model = registry.current
    ready = model is not None and redis_ok and features_loaded
    covered = await coverage.check(model, store) if ready else None
    if not ready:
        response.status_code = 503
        response.headers["Retry-After"] = str(settings.retry_after)
    return Readiness(
        ready=ready,
        model_version=model.version if model else None,
        redis=redis_ok,
        features_loaded=features_loaded,
        coverage_ok=covered.ok if covered else None,
        coverage_reason=covered.reason if covered else None,
    )


@probes.get("/metrics", include_in_schema=False)
async def metrics(request: Request) -> Response:
    """Prometheus text format: request latency per route, Redis errors, model version,
    feature coverage."""
    await request.app.state.metrics.refresh()
    body, content_type = request.app.state.metrics.render()
    return Response(body, media_type=content_type)
