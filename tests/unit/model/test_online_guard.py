"""The latency guard: /score latency per version and arm read from Prometheus text as the
service writes it, the p99 estimated as histogram_quantile does, and a canary clearly slower
than stable rolled back whatever its clicks."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest

from model.online import guard
from model.online.judge import JudgeSettings, Latency, judge, latency_guard

H = "afm_scored_request_duration_seconds"


def histogram(version: int, arm: str, buckets: dict[str, int], total_s: float,
              route: str = "/score", status: str = "200") -> str:  # fmt: skip
    """One series of the scoring histogram as /metrics writes it (cumulative buckets)."""
    labels = f'arm="{arm}",route="{route}",status="{status}",version="{version}"'
    lines = [f'{H}_bucket{{{labels},le="{le}"}} {count}.0' for le, count in buckets.items()]
    count = list(buckets.values())[-1]
    lines += [f"{H}_count{{{labels}}} {count}.0", f"{H}_sum{{{labels}}} {total_s}"]
    return "\n".join(lines)


TEXT = "\n".join(
    [
        f"# HELP {H} Scoring requests.",
        f"# TYPE {H} histogram",
        # stable 2: 1,000 requests, 990 within 10 ms: p99 at the 10 ms bound
        histogram(2, "stable", {"0.005": 600, "0.01": 990, "0.025": 1000, "+Inf": 1000}, 6.0),
        # canary 3: 1,000 requests, the 990th halfway into (25 ms, 50 ms]
        histogram(
            3, "canary", {"0.005": 100, "0.01": 500, "0.025": 980, "0.05": 1000, "+Inf": 1000}, 15.0
        ),  # fmt: skip
        # left out: another route, a failed status, a pinned request of version 3
        histogram(3, "canary", {"0.1": 50, "+Inf": 50}, 5.0, route="/explain"),
        histogram(3, "canary", {"2.5": 7, "+Inf": 7}, 14.0, status="503"),
        histogram(3, "pinned", {"1.0": 3, "+Inf": 3}, 3.0),
    ]
)


def test_latency_is_read_per_version_and_arm_from_score_requests_answered_200() -> None:
    latency = guard.latency_by_arm(TEXT)
    assert set(latency) == {(2, "stable"), (3, "canary"), (3, "pinned")}
    stable, canary = latency[(2, "stable")], latency[(3, "canary")]
    assert (stable.requests, stable.mean_s) == (1000, pytest.approx(0.006))
    assert stable.p99_s == pytest.approx(0.01)
    assert (canary.requests, canary.mean_s) == (1000, pytest.approx(0.015))
    assert canary.p99_s == pytest.approx(0.025 + 0.025 * (990 - 980) / 20)


@pytest.mark.parametrize(
    ("q", "expected"),
    [(0.5, 0.0025 * 500 / 600 * 2), (0.99, 0.01), (1.0, 0.025), (0.999, 0.0235)],
)
def test_quantiles_follow_histogram_quantile(q: float, expected: float) -> None:
    cumulative = [(0.005, 600.0), (0.01, 990.0), (0.025, 1000.0), (math.inf, 1000.0)]
    assert guard.quantile(q, cumulative) == pytest.approx(expected)


def test_a_quantile_in_the_infinite_bucket_is_the_highest_finite_bound() -> None:
    assert guard.quantile(0.99, [(0.1, 50.0), (math.inf, 100.0)]) == 0.1
    assert math.isnan(guard.quantile(0.99, []))


def test_the_service_histogram_is_read_as_written(monkeypatch: pytest.MonkeyPatch) -> None:
    from service.metrics import Metrics

    metrics = Metrics()
    durations = [0.0002] * 4 + [0.004]  # four canary requests, then one stable
    clock = iter([t for d in durations for t in (1.0, 1.0 + d)])  # each request's start, end
    with monkeypatch.context() as patched:
        patched.setattr(time, "perf_counter", lambda: next(clock))
        for _ in range(4):
            with metrics.scoring("/score", 3, "canary"):
                pass
        with metrics.scoring("/score", 2, "stable"):
            pass
    latency = guard.latency_by_arm(metrics.render()[0].decode())
    assert latency[(3, "canary")].requests == 4 and latency[(2, "stable")].requests == 1
    assert latency[(3, "canary")].mean_s == pytest.approx(0.0002)
    assert latency[(2, "stable")].mean_s == pytest.approx(0.004)
    assert 0 < latency[(3, "canary")].p99_s <= 0.0005  # within the first bucket


SETTINGS = JudgeSettings(max_latency_ratio=1.5, min_latency_requests=500)
STABLE = Latency(requests=1000, mean_s=0.006, p99_s=0.010)


@pytest.mark.parametrize(
    ("canary", "worse", "words"),
    [
        (Latency(1000, 0.0085, 0.014), False, "limit 1.5x stable"),
        (Latency(1000, 0.0100, 0.012), True, "mean 1.67x"),
        (Latency(1000, 0.0070, 0.020), True, "p99 2.00x"),
        (Latency(499, 0.0600, 0.100), False, "not compared below 500 requests an arm"),
    ],
)
def test_a_clearly_slower_canary_is_worse(canary: Latency, worse: bool, words: str) -> None:
    result = latency_guard(canary, STABLE, SETTINGS)
    assert result.worse is worse
    assert words in (result.reason if worse else result.line)


def test_a_slower_canary_is_rolled_back_whatever_its_clicks() -> None:
    users = np.full(2000, 5)
    slower = latency_guard(Latency(1000, 0.015, 0.0375), STABLE, SETTINGS)
    verdict = judge(users * 2, users, users, users, SETTINGS, None, slower)  # twice the clicks
    assert verdict.decision == "roll back"
    assert verdict.reason.startswith("the canary is slower (mean 2.50x, p99 3.75x stable's: ")
    assert "stable mean 6 ms, p99 10 ms (1,000)" in verdict.reason
    assert verdict.numbers["canary_p99_s"] == 0.0375


def test_the_latency_settings_refuse_nonsense() -> None:
    with pytest.raises(ValueError, match="latency ratio must be above 1"):
        JudgeSettings(max_latency_ratio=1.0)
