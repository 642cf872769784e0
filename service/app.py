"""The FastAPI application: ``create_app(settings)`` wires settings, lifespan, errors, routes.

uvicorn builds it with ``service.app:create_app`` and ``factory=True``; tests pass their own
Settings. Startup never waits for Redis or a model: the service comes up alive but not ready,
loads the newest version in the background and keeps polling for newer ones.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress

from fastapi import FastAPI
from prometheus_client import disable_created_metrics
from starlette.middleware.cors import CORSMiddleware
from threadpoolctl import threadpool_limits

from model.contracts import event_log
from service import log_redis, openapi
from service.access_log import lean_records
from service.auth import API_KEY_HEADER, ApiKeyDep, ApiKeys
from service.batching import Batcher
from service.body_limit import BodySizeLimitMiddleware
from service.coverage import CoverageMonitor
from service.errors import install_error_handlers
from service.events import EventRecorder
from service.feature_store import FeatureStore
from service.impressions import ImpressionLog, signing_keys
from service.loaded_model import load_model
from service.metrics import Metrics, ObservedRequestsMiddleware
from service.model_registry import ModelRegistry
from service.routes import events, ops, scoring, ui
from service.schemas import UNAUTHORIZED
from service.settings import Settings, get_settings

log = logging.getLogger(__name__)

DRAIN_SECONDS = 5.0
"""At shutdown, the impressions still buffered get this long to be written."""

DESCRIPTION = """Click probabilities and per-pair attention from an Attentional Factorization
Machine. User features come from Redis (`afm-ctr load-features`); the model is the newest
version under the model directory, hot-reloaded. Errors are RFC 9457 problem details."""


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    _set_up_process()
    metrics = Metrics()
    app = FastAPI(
        title="AFM click-through-rate scoring",
        version="1",
        description=DESCRIPTION,
        lifespan=_lifespan,
        docs_url=None,  # /docs comes from service.routes.ui, with local assets
        redoc_url=None,
        # Prometheus covers metrics; FastAPI's OpenTelemetry hook would cost a check per request.
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    app.state.settings = settings
    app.state.metrics = metrics
    install_error_handlers(app)
    openapi.document(app)
    # The API behind the key when keys are configured; without keys, nothing on its path.
    protected: dict = {}
    if settings.accepted_api_keys:
        app.state.api_keys = ApiKeys(settings.accepted_api_keys)
        protected = {"dependencies": [ApiKeyDep], "responses": {401: UNAUTHORIZED}}
    app.include_router(scoring.router, **protected)
    app.include_router(events.router, **protected)
    app.include_router(ops.router, **protected)
    app.include_router(ops.probes)
    app.include_router(ui.router)
    metrics.expect(
        api_routes=[
            (method, route.path)
            for router in (scoring.router, events.router, ops.router)
            for route in router.routes
            for method in getattr(route, "methods", ())
        ],
        probe_routes=[getattr(route, "path", "") for route in ops.probes.routes],
    )
    ui.mount_static(app)
    # Outermost last: CORS answers preflights before routing, the size limit runs before
    # routing, the observer times (and logs) all.
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", API_KEY_HEADER, "Content-Type"],
            expose_headers=["Retry-After", "WWW-Authenticate"],
        )
    app.add_middleware(BodySizeLimitMiddleware, max_bytes=settings.max_body_bytes)
    app.add_middleware(ObservedRequestsMiddleware, metrics=metrics, access_log=settings.access_log)
    return app


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: Settings = app.state.settings
    registry = ModelRegistry(settings.model_dir, load_model)
    metrics: Metrics = app.state.metrics
    store = FeatureStore.connect(
        settings.redis_url,
        settings.redis_prefix,
        settings.redis_timeout,
        cluster=settings.redis_cluster,
        max_connections=settings.redis_max_connections,
        retry_after=settings.retry_after,
    )
    batcher = Batcher()
    app.state.registry, app.state.feature_store, app.state.batcher = registry, store, batcher
    app.state.coverage = CoverageMonitor(settings.min_feature_coverage)
    impressions, recorder = _event_log(settings, store)
    app.state.impressions, app.state.events = impressions, recorder
    metrics.watch(registry, store, batcher, app.state.coverage, impressions, recorder)
    reload_task = asyncio.create_task(_keep_loading(registry, settings.reload_interval))
    log.info(
        "serving from %s, features from %s%s (prefix %r)",
        settings.model_dir,
        _redacted(settings.redis_url),
        " (Redis Cluster)" if settings.redis_cluster else "",
        settings.redis_prefix,
    )
    try:
        yield
    finally:
        reload_task.cancel()
        with suppress(asyncio.CancelledError):
            await reload_task
        if impressions is not None:
            await impressions.close(DRAIN_SECONDS)
        metrics.unwatch()
        await recorder.close()
        await store.aclose()
        batcher.shutdown()
        registry.close()


def _event_log(
    settings: Settings, store: FeatureStore
) -> tuple[ImpressionLog | None, EventRecorder]:
    """The impression log (None when AFM_LOG_IMPRESSIONS is off; started) and the event
    recorder, sharing a connection of their own to the feature store's Redis (the recorder
    closes it)."""
    keys = signing_keys(settings.impression_signing_keys)
    connection = log_redis.connect(
        settings.redis_url,
        settings.redis_timeout,
        cluster=settings.redis_cluster,
        max_connections=settings.redis_max_connections,
    )
    impressions = None
    if settings.log_impressions:
        impressions = ImpressionLog(
            keys,
            connection,
            prefix=settings.redis_prefix,
            max_length=settings.log_stream_max_length,
            ttl_s=settings.attribution_window_s + event_log.ATTRIBUTION_TTL_GRACE_S,
            capacity=settings.impression_buffer,
        )
        impressions.start()
    recorder = EventRecorder(
        keys,
        connection,
        store,
        settings.redis_prefix,
        window_s=settings.attribution_window_s,
        max_length=settings.log_stream_max_length,
        retry_after=settings.retry_after,
    )
    return impressions, recorder


async def _keep_loading(registry: ModelRegistry, interval: float) -> None:
    if await registry.refresh() is None:
        log.warning("no loadable model version under %s yet; not ready", registry.model_dir)
    if interval > 0:
        await registry.poll(interval)


def _set_up_process() -> None:
    """What the service's process needs before it serves: lean log records (an access line
    per request), no ``*_created`` series in /metrics (prometheus_client's process-wide
    switch: a timestamp per series that dashboards do not query), TensorFlow's C++ info
    lines off (it is imported when a version loads, if the user has not chosen), and NumPy's
    BLAS on the calling thread: the scorer's products are small, and a second BLAS thread
    would compete with the event loop."""
    lean_records()
    disable_created_metrics()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    threadpool_limits(limits=1, user_api="blas")


def _redacted(url: str) -> str:
    """The URL without a password, for logs."""
    if "@" not in url:
        return url
    scheme, _, rest = url.partition("://")
    return f"{scheme}://***@{rest.rpartition('@')[2]}"
