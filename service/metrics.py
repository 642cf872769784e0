"""Prometheus metrics, in a registry per app (tests build many apps in one process).

Request latency is observed by a pure ASGI middleware, labelled by the matched route
template (``/score``, not ``/score?x``; a mount's path, ``/static/ui``, for every file
under it), so label cardinality stays fixed. Health checks and scrapes have their own
histogram, so they do not dilute the request rate and latency of the API; the API routes'
series for 200, 500 and 503 exist from the start, so an error ratio reads 0, not "no data".
Gauges and counters owned by other objects (model version, Redis errors, reloads) are read
at scrape time.

Scoring routes time their work per model version and arm (``Metrics.scoring``) and report
the probabilities they returned, so a dashboard can compare a canary with stable.
Probabilities are counted into buckets with NumPy, many requests at a time. Impressions
issued and clicks accepted are counted per version, arm and position bucket
(``POSITION_BUCKETS``), so Prometheus gives the canary judge's clicks per impression.
"""

from __future__ import annotations

import socket
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Gauge,
    Histogram,
    Info,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from model.contracts import event_log
from service import access_log
from service.batching import Batcher
from service.coverage import CoverageMonitor
from service.errors import ServiceError
from service.events import EventRecorder
from service.feature_store import FeatureStore
from service.impressions import ImpressionLog
from service.model_registry import ModelRegistry

EXPECTED_STATUSES = ("200", "500", "503")
"""The statuses whose series each API route has from the start: an error-ratio query
finds its 5xx series at 0 instead of no data."""
LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
PROBABILITY_BUCKETS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.98)
POSITION_BUCKETS = ("0", "1", "2", "3-9", "10+")
"""The ``position`` label of shown movies and clicks (0 = top, as ``rollout --status``): one
series for each of the top three slots, where most clicks are, then two ranges, so a
version and arm have five series whatever ``top_k`` is (clicks have a sixth, ``unknown``)."""
UNKNOWN_POSITION = "unknown"
JUDGED_ARMS = ("stable", "canary")
"""Arms whose per-arm series exist at 0 for every loaded version in that role."""


def position_bucket(position: int | None) -> str:
    """The ``position`` label of a 0-based position (None: not known)."""
    if position is None:
        return UNKNOWN_POSITION
    if position < 3:
        return POSITION_BUCKETS[position]
    return "3-9" if position < 10 else "10+"


def _shown_per_bucket(shown: int) -> dict[str, int]:
    """How many of the positions 0 .. shown - 1 fall in each of POSITION_BUCKETS."""
    return {
        "0": min(shown, 1),
        "1": min(max(shown - 1, 0), 1),
        "2": min(max(shown - 2, 0), 1),
        "3-9": min(max(shown - 3, 0), 7),
        "10+": max(shown - 10, 0),
    }


@dataclass
class ImpressionCounts:
    """Replies given an impression id, per (version, arm), and how many movies each showed:
    one dict increment per reply on the event loop; bucketed only when scraped."""

    issued: Counter[tuple[int, str]] = field(default_factory=Counter)
    by_length: Counter[tuple[int, str, int]] = field(default_factory=Counter)
    """(version, arm, movies shown) -> replies."""

    def count(self, version: int, arm: str, shown: int) -> None:
        self.issued[(version, arm)] += 1
        self.by_length[(version, arm, shown)] += 1

    def shown_by_position(self) -> Counter[tuple[int, str, str]]:
        """(version, arm, position bucket) -> movies shown there."""
        shown: Counter[tuple[int, str, str]] = Counter()
        for (version, arm, length), replies in self.by_length.items():
            for bucket, count in _shown_per_bucket(length).items():
                shown[(version, arm, bucket)] += count * replies
        return shown


@dataclass(slots=True)
class ScoredRequest:
    """What a scoring route reports of its request: the probabilities it returned."""

    probability: np.ndarray | None = None


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
        self.scored_seconds = Histogram(
            "afm_scored_request_duration_seconds",
            "Scoring requests by the model version that scored them and how it was chosen "
            "(arm: stable, canary or pinned), from that choice to the reply built.",
            ["route", "version", "arm", "status"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.probe_seconds = Histogram(
            "afm_probe_request_duration_seconds",
            "Health checks and scrapes (/healthz, /readyz, /metrics), kept out of "
            "afm_request_duration_seconds.",
            ["route", "status"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self._probe_routes: frozenset[str] = frozenset()
        self._scored_children: dict[tuple[str, str, str, str], Histogram] = {}
        self.impressions = ImpressionCounts()
        self.probabilities = _ProbabilityHistogram()
        self.registry.register(self.probabilities)
        # Which replica this is, so scrapes behind a load balancer can be told apart.
        Info("afm_replica", "The replica answering: its hostname.", registry=self.registry).info(
            {"hostname": socket.gethostname()}
        )
        self._state: _StateCollector | None = None
        self.in_flight = 0  # HTTP requests being handled; kept by ObservedRequestsMiddleware
        Gauge(
            "afm_http_requests_in_flight",
            "HTTP requests being handled now (this scrape included).",
            registry=self.registry,
        ).set_function(lambda: self.in_flight)

    def expect(self, api_routes: Iterable[tuple[str, str]], probe_routes: Iterable[str]) -> None:
        """Create the series of each API route (method, path) for ``EXPECTED_STATUSES``, and
        time ``probe_routes`` apart."""
        for method, route in api_routes:
            for status in EXPECTED_STATUSES:
                self.request_seconds.labels(method, route, status)
        self._probe_routes = frozenset(probe_routes)

    def request_series(self, method: str, route: str, status: str) -> Histogram:
        """The histogram child a request is observed in: its route's, or a probe's."""
        if route in self._probe_routes:
            return self.probe_seconds.labels(route, status)
        return self.request_seconds.labels(method, route, status)

    def watch(
        self,
        models: ModelRegistry,
        store: FeatureStore,
        batcher: Batcher,
        coverage: CoverageMonitor,
        impressions: ImpressionLog | None = None,
        events: EventRecorder | None = None,
    ) -> None:
        """Report the state of the objects a lifespan opened (replacing any earlier ones);
        ``impressions`` None: replies are not logged."""
        self.unwatch()
        state = _StateCollector(
            models, store, batcher, coverage, impressions, events, self.impressions
        )
        self.registry.register(state)  # collects once: raises before ``_state`` is set
        self._state = state

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

    def impression_issued(self, version: int, arm: str, shown: int) -> None:
        """Count a reply given an impression id, with ``shown`` movies, under its version and
        arm (issued: whether or not the log write succeeds later)."""
        self.impressions.count(version, arm, shown)

    @contextmanager
    def scoring(self, route: str, version: int, arm: str) -> Iterator[ScoredRequest]:
        """Time the block as one scoring request of ``version`` chosen by ``arm``; its status is
        200, or the status of the ``ServiceError`` (else 500) it raises. The probabilities
        the block reports on the ``ScoredRequest`` count when it succeeds."""
        start, scored, status = time.perf_counter(), ScoredRequest(), 500
        try:
            yield scored
            status = 200
        except ServiceError as exc:
            status = exc.status
            raise
        finally:
            key = (route, str(version), arm, str(status))
            child = self._scored_children.get(key)
            if child is None:  # labels() takes a lock and builds a key: once per label set
                child = self._scored_children[key] = self.scored_seconds.labels(*key)
            child.observe(time.perf_counter() - start)
            if scored.probability is not None and status == 200:
                self.probabilities.observe(key[1:3], scored.probability)


class _ProbabilityHistogram(Collector):
    """``afm_scored_probability``: every probability a version computed, by version and arm.

    A Prometheus histogram fed whole arrays (``prometheus_client.Histogram`` takes one value
    per call: ~1 µs each, a millisecond for a 1,000-candidate request). A request's array is
    only kept; every ``FOLD_EVERY`` requests, and before a scrape, the kept arrays are counted
    into the buckets together, so a request costs an append instead of five NumPy calls.
    Observed and collected on the event loop only, so it needs no lock.
    """

    FOLD_EVERY = 64

    def __init__(self) -> None:
        self._edges = np.array(PROBABILITY_BUCKETS)
        self._series: dict[tuple[str, str], tuple[np.ndarray, list[float]]] = {}
        self._kept: dict[tuple[str, str], list[np.ndarray]] = {}

    def observe(self, labels: tuple[str, str], probability: np.ndarray) -> None:
        kept = self._kept.setdefault(labels, [])
        kept.append(probability)
        if len(kept) >= self.FOLD_EVERY:
            self._fold(labels)

    def _fold(self, labels: tuple[str, str]) -> None:
        probability = np.concatenate(self._kept.pop(labels))
        counts, total = self._series.setdefault(
            labels, (np.zeros(len(self._edges) + 1, np.int64), [0.0])
        )
        # Bucket i holds edges[i-1] < p <= edges[i] (Prometheus' "le"); the last one +Inf.
        index = np.searchsorted(self._edges, probability, side="left")
        counts += np.bincount(index, minlength=len(counts))
        total[0] += float(np.sum(probability, dtype=np.float64))

    def collect(self) -> Iterator:
        for labels in list(self._kept):
            self._fold(labels)
        family = HistogramMetricFamily(
            "afm_scored_probability",
            "Click probabilities computed by scoring requests (every candidate), by model "
            "version and arm (stable, canary, pinned).",
            labels=["version", "arm"],
        )
        bounds = [str(edge) for edge in PROBABILITY_BUCKETS] + ["+Inf"]
        for labels, (counts, total) in sorted(self._series.items()):
            cumulative = np.cumsum(counts).tolist()
            family.add_metric(list(labels), list(zip(bounds, cumulative, strict=True)), total[0])
        yield family


class _StateCollector(Collector):
    def __init__(
        self,
        models: ModelRegistry,
        store: FeatureStore,
        batcher: Batcher,
        coverage: CoverageMonitor,
        impressions: ImpressionLog | None,
        events: EventRecorder | None,
        issued: ImpressionCounts,
    ) -> None:
        self._models = models
        self._store = store
        self._batcher = batcher
        self._coverage = coverage
        self._impressions = impressions
        self._events = events
        self._issued = issued
        self._stream_lengths: dict[tuple[str, int], int] = {}

    async def refresh(self) -> None:
        await self._coverage.check(self._models.current, self._store)
        if self._events is not None:
            self._stream_lengths = await self._events.stream_lengths()

    def _log_metrics(self) -> Iterator:
        """The impression and event log: what was logged, dropped and recorded, and the
        streams' lengths (read before each scrape; absent when Redis did not answer)."""
        impressions = self._impressions
        if impressions is not None:
            yield CounterMetricFamily(
                "afm_impressions_logged",
                "Scoring replies logged as impressions (stream entry and hash written).",
                value=impressions.logged_total,
            )
            dropped = CounterMetricFamily(
                "afm_impressions_dropped",
                "Impressions not logged, by reason: buffer_full (AFM_IMPRESSION_BUFFER "
                "reached), redis_error (the write failed), shutdown (still buffered at exit).",
                labels=["reason"],
            )
            for reason, count in impressions.dropped.items():
                dropped.add_metric([reason], count)
            yield dropped
            yield GaugeMetricFamily(
                "afm_impressions_buffered",
                "Impressions waiting in memory to be written to Redis.",
                value=impressions.buffered,
            )
            yield from self._issued_metrics()
        if self._events is None:
            return
        yield self._click_metric(self._events)
        events = CounterMetricFamily(
            "afm_events",
            "Events of POST /events by type and outcome: accepted, duplicate, or the reason "
            "it was refused (invalid, malformed, forged, expired, not_shown, outside_window, "
            "unavailable); type unknown for an invalid event.",
            labels=["type", "outcome"],
        )
        counts = {(t, o): 0 for t in event_log.EVENT_TYPES for o in ("accepted", "duplicate")}
        for labels, count in sorted({**counts, **self._events.counts}.items()):
            events.add_metric(list(labels), count)
        yield events
        yield CounterMetricFamily(
            "afm_event_write_errors",
            "Accepted events whose events-stream entry or watched-movies update failed (the "
            "event stays recorded in its impression's hash).",
            value=self._events.write_errors_total,
        )
        lengths = GaugeMetricFamily(
            "afm_log_stream_length",
            "Entries in each log stream (impressions, events) by shard (read before the scrape).",
            labels=["stream", "shard"],
        )
        for (stream, shard), length in sorted(self._stream_lengths.items()):
            lengths.add_metric([stream, str(shard)], length)
        yield lengths

    def _judged_arms(self) -> list[tuple[int, str]]:
        """(version, arm) of each loaded version in a role the judge compares: their
        per-arm series read 0 rather than no data before the first impression."""
        return [
            (model.version, role)
            for role, model in self._models.serving.roles()
            if role in JUDGED_ARMS
        ]

    def _issued_metrics(self) -> Iterator:
        issued = CounterMetricFamily(
            "afm_impressions_issued",
            "Scoring replies given an impression_id, by the model version that scored them "
            "and its arm (counted when issued, logged or not: see afm_impressions_dropped).",
            labels=["version", "arm"],
        )
        counts = {**dict.fromkeys(self._judged_arms(), 0), **self._issued.issued}
        for (version, arm), count in sorted(counts.items()):
            issued.add_metric([str(version), arm], count)
        yield issued
        movies = CounterMetricFamily(
            "afm_impression_movies",
            "Movies shown by replies given an impression_id, by version, arm and position "
            "(0 is the top; 0, 1, 2, 3-9, 10+).",
            labels=["version", "arm", "position"],
        )
        yield self._by_position(movies, self._issued.shown_by_position(), POSITION_BUCKETS)

    def _click_metric(self, events: EventRecorder) -> CounterMetricFamily:
        clicks = CounterMetricFamily(
            "afm_clicks",
            "Clicks accepted by POST /events, by the version and arm of their impression and "
            "the movie's position in its reply (0 is the top; 0, 1, 2, 3-9, 10+; unknown: the "
            "click came before its impression was stored).",
            labels=["version", "arm", "position"],
        )
        counts: Counter[tuple[int, str, str]] = Counter()
        for (version, arm, position), count in events.clicks.items():
            counts[(version, arm, position_bucket(position))] += count
        return self._by_position(clicks, counts, (*POSITION_BUCKETS, UNKNOWN_POSITION))

    def _by_position(
        self,
        family: CounterMetricFamily,
        counts: Counter[tuple[int, str, str]],
        buckets: tuple[str, ...],
    ) -> CounterMetricFamily:
        """``family`` with a sample per (version, arm, bucket) counted, and 0 for every
        bucket of a loaded stable or canary version."""
        every = {(v, a, b): 0 for v, a in self._judged_arms() for b in buckets}
        for (version, arm, bucket), count in sorted({**every, **counts}.items()):
            family.add_metric([str(version), arm, bucket], count)
        return family

    def collect(self) -> Iterator:
        current = self._models.current
        version = GaugeMetricFamily(
            "afm_model_version", "Model version being served (0: none loaded)."
        )
        version.add_metric([], current.version if current else 0)
        yield version
        serving = self._models.serving
        roles = GaugeMetricFamily(
            "afm_model_loaded",
            "Model versions loaded, by role (stable, canary, previous); 1 for each.",
            labels=["version", "role"],
        )
        for role, model in serving.roles():
            roles.add_metric([str(model.version), role], 1)
        yield roles
        yield GaugeMetricFamily(
            "afm_rollout_canary_percent",
            "Share of users (percent) the loaded canary scores; 0 without one.",
            value=serving.percent,
        )
        counters = [
            (
                "afm_rollout_policy_errors",
                "Times the rollout policy file was found broken and ignored (last good one kept).",
                self._models.policy_errors,
            ),
            (
                "afm_redis_errors",
                "Feature reads that failed or timed out.",
                self._store.errors_total,
            ),
            (
                "afm_scoring_calls",
                "Scoring calls made; the requests of one event-loop iteration merge into one call.",
                self._batcher.calls_total,
            ),
            (
                "afm_scoring_requests",
                "Scoring requests those calls served (divided by the calls: mean batch).",
                self._batcher.requests_total,
            ),
        ]
        for name, documentation, value in counters:
            yield CounterMetricFamily(name, documentation, value=value)
        reloads = CounterMetricFamily(
            "afm_model_loads", "Model versions loaded or refused.", labels=["outcome"]
        )
        for outcome, count in self._models.reloads.items():
            reloads.add_metric([outcome], count)
        yield reloads
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
        yield from self._log_metrics()


class ObservedRequestsMiddleware:
    """Time each HTTP request once, from receipt to its response sent (or its failure: 500 if
    no response had started): the duration goes into ``afm_request_duration_seconds`` (a
    probe's into ``afm_probe_request_duration_seconds``) under the route template and status
    and, with ``access_log``, into the request's line
    (``service.access_log``). One layer for both, outermost, so a 413 from the size limit is
    counted and logged too. Keeps ``Metrics.in_flight``."""

    def __init__(self, app: ASGIApp, metrics: Metrics, access_log: bool) -> None:
        self.app = app
        self.metrics = metrics
        self.access_log = access_log
        self._children: dict[tuple[str, str, str], Histogram] = {}  # labels() is not free

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path, root_path = scope["path"], scope.get("root_path", "")  # routing rewrites them
        start = time.perf_counter()
        status = 500

        async def send_with_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        self.metrics.in_flight += 1
        try:
            await self.app(scope, receive, send_with_status)
        finally:
            self.metrics.in_flight -= 1
            self._observe(scope, path, root_path, status, time.perf_counter() - start)

    def _observe(
        self, scope: Scope, path: str, root_path: str, status: int, seconds: float
    ) -> None:
        route = scope.get("route")
        template = route.path if route is not None else _template(scope, path, root_path)
        key = (scope["method"], template, str(status))
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = self.metrics.request_series(*key)
        child.observe(seconds)
        if self.access_log and access_log.enabled():
            route_path = getattr(route, "path", None) or path  # a static file's, not its mount's
            access_log.log_request(scope["method"], route_path, status, seconds)


def _template(scope: Scope, path: str, root_path: str) -> str:
    """The path of the app's route matching the request, for the requests FastAPI does not
    record in ``scope["route"]`` (it does for the API routes it runs): its own /openapi.json,
    the static mounts, and a body refused before routing. "unmatched" for a 404."""
    original = {**scope, "path": path, "root_path": root_path}
    return _matching(getattr(scope.get("app"), "routes", ()), original) or "unmatched"


def _matching(routes: Iterable, scope: Scope) -> str | None:
    for route in routes:
        if route.matches(scope)[0] is Match.FULL:
            included = getattr(route, "original_router", None)  # FastAPI's include_router
            if included is not None:
                return _matching(included.routes, scope)
            return getattr(route, "path", None)
    return None
