"""Prometheus metrics, in a registry per app (tests build many apps in one process).

Request latency is observed by a pure ASGI middleware, labelled by the matched route
template (``/score``, not ``/score?x``; a mount's path, ``/static/ui``, for every file
under it), so label cardinality stays fixed. Gauges and counters owned by other objects
(model version, Redis errors, reloads) are read at scrape time.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.coverage import CoverageMonitor
from service.feature_store import FeatureStore
from service.model_registry import ModelRegistry
from service.scorer import Scorer

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.request_seconds = Histogram(
            "afm_request_duration_seconds",
            "Time from request received to response sent, by route.",
            ["method", "route", "status"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self._state: _StateCollector | None = None

    def watch(
        self,
        models: ModelRegistry,
        store: FeatureStore,
        scorer: Scorer,
        coverage: CoverageMonitor,
    ) -> None:
        """Report the state of the objects a lifespan opened (replacing any earlier ones)."""
        self.unwatch()
        self._state = _StateCollector(models, store, scorer, coverage)
        self.registry.register(self._state)

    def unwatch(self) -> None:
        if self._state is not None:
            self.registry.unregister(self._state)
            self._state = None

    async def refresh(self) -> None:
        """Bring values computed on demand (feature coverage) up to date before a scrape;
        nothing to do before a lifespan started watching."""
        if self._state is not None:
            await self._state.refresh()

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class _StateCollector(Collector):
    def __init__(
        self,
        models: ModelRegistry,
        store: FeatureStore,
        scorer: Scorer,
        coverage: CoverageMonitor,
    ) -> None:
        self._models = models
        self._store = store
        self._scorer = scorer
        self._coverage = coverage

    async def refresh(self) -> None:
        await self._coverage.check(self._models.current, self._store)

    def collect(self) -> Iterator:
        current = self._models.current
        version = GaugeMetricFamily(
            "afm_model_version", "Model version being served (0: none loaded)."
        )
        version.add_metric([], current.version if current else 0)
        yield version
        yield CounterMetricFamily(
            "afm_redis_errors",
            "Feature reads that failed or timed out.",
            value=self._store.errors_total,
        )
        reloads = CounterMetricFamily(
            "afm_model_loads", "Model versions loaded or refused.", labels=["outcome"]
        )
        for outcome, count in self._models.reloads.items():
            reloads.add_metric([outcome], count)
        yield reloads
        yield CounterMetricFamily(
            "afm_tensorflow_calls",
            "TensorFlow calls made; requests queued meanwhile are merged into one call.",
            value=self._scorer.calls_total,
        )
        yield CounterMetricFamily(
            "afm_tensorflow_requests",
            "Scoring requests those calls served (divided by the calls: mean batch).",
            value=self._scorer.requests_total,
        )
        coverage = GaugeMetricFamily(
            "afm_feature_coverage",
            "Share of loaded users (movie_id: movies) whose value of the field the served "
            "model was trained on (refreshed before each scrape).",
            labels=["field"],
        )
        latest = self._coverage.latest
        for name, share in latest.shares.items() if latest is not None else ():
            coverage.add_metric([name], share)
        yield coverage


class RequestMetricsMiddleware:
    """Observe each HTTP request's duration under its route template and status."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.histogram = metrics.request_seconds
        self._children: dict[tuple[str, str, str], Histogram] = {}  # labels() is not free

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path, root_path = scope["path"], scope.get("root_path", "")  # routing rewrites them

        def observe(status: int, seconds: float) -> None:
            route = scope.get("route")
            template = route.path if route is not None else _template(scope, path, root_path)
            key = (scope["method"], template, str(status))
            child = self._children.get(key)
            if child is None:
                child = self._children[key] = self.histogram.labels(*key)
            child.observe(seconds)

        await call_observed(self.app, scope, receive, send, observe)


async def call_observed(
    app: ASGIApp,
    scope: Scope,
    receive: Receive,
    send: Send,
    observe: Callable[[int, float], None],
) -> None:
    """``app`` on one HTTP request, then ``observe(status, seconds)``, also when ``app``
    raised (status 500 if no response had started). Shared by the metrics and access-log
    middlewares."""
    start = time.perf_counter()
    status = 500

    async def send_with_status(message: Message) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]
        await send(message)

    try:
        await app(scope, receive, send_with_status)
    finally:
        observe(status, time.perf_counter() - start)


def _template(scope: Scope, path: str, root_path: str) -> str:
    """The path of the app's route matching the request, for the requests FastAPI does not
    record in ``scope["route"]`` (it does for its API routes): its own /openapi.json and the
    static mounts. "unmatched" for a 404."""
    original = {**scope, "path": path, "root_path": root_path}
    for route in getattr(scope.get("app"), "routes", ()):
        if route.matches(original)[0] is Match.FULL:
            return getattr(route, "path", "unmatched")
    return "unmatched"
