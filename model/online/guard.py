"""The guards' input: scoring requests, 5xx answers and latency per model version, read from
a service's ``/metrics``, so a canary that fails more or answers slower is rolled back before
clicks are asked.

The service counts every scoring request in ``afm_scored_request_duration_seconds`` by
``route``, ``version``, ``arm`` and ``status`` (``service/metrics.py``); the ``_count``
series of that histogram, summed over routes and arms, are a version's requests, those with
a 5xx status its errors. Latency is read from the same histogram for ``/score`` requests
answered 200 of one version and arm (``_sum``, ``_count`` and the ``_bucket`` series): other
routes and failed requests take times of their own. All count since the replica started,
on the replica that answered the scrape.
"""

from __future__ import annotations

import math
import re
import urllib.error
import urllib.request
from collections.abc import Iterator

from model.errors import AfmError
from model.online.judge import ErrorCounts, Latency

SCORED = "afm_scored_request_duration_seconds"
SCORED_COUNT = f"{SCORED}_count"
LATENCY_ROUTE = "/score"
_SAMPLE = re.compile(r"^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(?P<labels>.*)\})?\s+(?P<value>\S+)")
_LABEL = re.compile(r'(?P<key>[a-zA-Z_][a-zA-Z0-9_]*)="(?P<value>(?:[^"\\]|\\.)*)"')


def _samples(text: str, prefix: str) -> Iterator[tuple[str, dict[str, str], float]]:
    """(name, labels, value) of each sample whose name starts with ``prefix``."""
    for line in text.splitlines():
        if not line.startswith(prefix):
            continue
        match = _SAMPLE.match(line)
        if match is None:
            continue
        labels = {m["key"]: m["value"] for m in _LABEL.finditer(match["labels"] or "")}
        try:
            value = float(match["value"])
        except ValueError:
            continue
        yield match["name"], labels, value


def errors_by_version(text: str) -> dict[int, ErrorCounts]:
    """Version -> its scoring requests and 5xx answers, from Prometheus text."""
    requests: dict[int, float] = {}
    errors: dict[int, float] = {}
    for name, labels, value in _samples(text, SCORED_COUNT):
        if name != SCORED_COUNT:
            continue
        try:
            version = int(labels["version"])
        except (KeyError, ValueError):
            continue
        requests[version] = requests.get(version, 0.0) + value
        if labels.get("status", "").startswith("5"):
            errors[version] = errors.get(version, 0.0) + value
    return {
        version: ErrorCounts(int(total), int(errors.get(version, 0.0)))
        for version, total in requests.items()
    }


def latency_by_arm(text: str) -> dict[tuple[int, str], Latency]:
    """(version, arm) -> its ``/score`` requests answered 200 and their latency, from
    Prometheus text."""
    buckets: dict[tuple[int, str], dict[float, float]] = {}
    totals: dict[tuple[int, str], dict[str, float]] = {}
    for name, labels, value in _samples(text, SCORED):
        if labels.get("route") != LATENCY_ROUTE or labels.get("status") != "200":
            continue
        try:
            key = (int(labels["version"]), labels["arm"])
        except (KeyError, ValueError):
            continue
        if name == f"{SCORED}_bucket" and "le" in labels:
            buckets.setdefault(key, {})[float(labels["le"])] = value
        elif name in (f"{SCORED}_sum", SCORED_COUNT):
            totals.setdefault(key, {})[name.rpartition("_")[2]] = value
    latency = {}
    for key, total in totals.items():
        count = total.get("count", 0.0)
        if count > 0 and "sum" in total:
            cumulative = sorted(buckets.get(key, {}).items())
            latency[key] = Latency(int(count), total["sum"] / count, quantile(0.99, cumulative))
    return latency


def quantile(q: float, cumulative: list[tuple[float, float]]) -> float:
    """The ``q`` quantile of a histogram's cumulative buckets ((upper bound, count) sorted,
    +Inf last) as Prometheus' histogram_quantile estimates it: linear within the bucket that
    holds it, from 0 for the first; the highest finite bound when it falls in +Inf; NaN
    without buckets."""
    if not cumulative or cumulative[-1][1] <= 0:
        return math.nan
    rank = q * cumulative[-1][1]
    lower, below = 0.0, 0.0
    for upper, count in cumulative:
        if count >= rank:
            if math.isinf(upper):
                return lower
            if count == below:
                return upper
            return lower + (upper - lower) * (rank - below) / (count - below)
        lower, below = upper, count
    return lower


def fetch_metrics(url: str, timeout: float = 5.0) -> str:
    """The Prometheus text at ``url``; AfmError in one line when it cannot be had."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as reply:  # noqa: S310 (a URL the user gave)
            return reply.read().decode("utf-8", errors="replace")
    except urllib.error.HTTPError as exc:
        raise AfmError(f"{url} answered {exc.code}: cannot read the error rates") from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise AfmError(f"cannot read {url} for the error rates: {reason}") from None
