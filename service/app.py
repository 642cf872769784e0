"""The FastAPI application: ``create_app(settings)`` wires settings, lifespan, errors, routes.

uvicorn builds it with ``service.app:create_app`` and ``factory=True``; tests pass their own
Settings. Startup never waits for Redis or a model: the service comes up alive but not ready,
loads the newest version in the background and keeps polling for newer ones.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from pathlib import Path

from fastapi import FastAPI

from model.cli.logs import lean_records
from service.body_limit import BodySizeLimitMiddleware
from service.coverage import CoverageMonitor
from service.errors import install_error_handlers
from service.feature_store import FeatureStore
from service.metrics import Metrics, ObservedRequestsMiddleware
from service.model_registry import ModelRegistry
from service.routes import ops, scoring, ui
from service.scorer import LoadedModel, Scorer, configure_threads, load_model
from service.settings import Settings, available_cpus, get_settings

log = logging.getLogger(__name__)

DESCRIPTION = """Click probabilities and per-pair attention from an Attentional Factorization
Machine. User features come from Redis (`afm-ctr load-features`); the model is the newest
version under the model directory, hot-reloaded. Errors are RFC 9457 problem details."""


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    lean_records()  # in each worker process: an access line per request
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
    app.include_router(scoring.router)
    app.include_router(ops.router)
    app.include_router(ui.router)
    ui.mount_static(app)
    # Outermost last: the size limit runs before routing; the observer times (and logs) all.
    app.add_middleware(BodySizeLimitMiddleware, max_bytes=settings.max_body_bytes)
    app.add_middleware(ObservedRequestsMiddleware, metrics=metrics, access_log=settings.access_log)
    return app


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: Settings = app.state.settings
    registry = ModelRegistry(settings.model_dir, _thread_configuring_loader(settings))
    metrics: Metrics = app.state.metrics

    def alone() -> bool:  # the request asking is the only one in the server
        return metrics.in_flight <= 1

    store = FeatureStore.connect(
        settings.redis_url,
        settings.redis_prefix,
        settings.redis_timeout,
        max_connections=settings.redis_max_connections,
        retry_after=settings.retry_after,
        cluster=settings.redis_cluster,
        alone=alone,
    )
    scorer = Scorer(
        settings.scoring_threads,
        inline_rows=settings.inline_scoring_rows,
        alone=alone,
        inline_numpy=settings.inline_numpy,
    )
    app.state.registry, app.state.feature_store, app.state.scorer = registry, store, scorer
    app.state.coverage = CoverageMonitor(settings.min_feature_coverage)
    metrics.watch(registry, store, scorer, app.state.coverage)
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
        metrics.unwatch()
        await store.aclose()
        scorer.shutdown()
        registry.close()


async def _keep_loading(registry: ModelRegistry, interval: float) -> None:
    if await registry.refresh() is None:
        log.warning("no loadable model version under %s yet; not ready", registry.model_dir)
    if interval > 0:
        await registry.poll(interval)


def _thread_configuring_loader(settings: Settings):  # noqa: ANN202 - returns a model_registry.Loader
    """``load_model`` that first sets TensorFlow's thread pools (TF is imported only here)."""
    configured = threading.Event()

    def load(version_dir: Path) -> LoadedModel:
        if not configured.is_set():
            intra = settings.tf_intra_op_threads or available_cpus()
            configure_threads(intra, settings.tf_inter_op_threads)
            configured.set()
        return load_model(version_dir, numpy_rows=settings.numpy_ranker_rows)

    return load


def _redacted(url: str) -> str:
    """The URL without a password, for logs."""
    if "@" not in url:
        return url
    scheme, _, rest = url.partition("://")
    return f"{scheme}://***@{rest.rpartition('@')[2]}"
