"""The canary judge: promote, roll back or keep collecting, from per-user clicks and
impressions of both arms, so a rollout can be decided by clicks, safely asked at any time.

Pure NumPy. The guards decide first: a canary whose 5xx rate is higher than stable's (an
exact conditional binomial test), or whose mean or p99 latency is more than a set factor
above stable's, is rolled back whatever its clicks. Then the clicks: Δ̂ = log(canary's
clicks per impression) − log(stable's), its variance by the per-user delta method, and
the mixture SPRT of ``stats`` with τ = the minimum effect: Λ ≥ 1/α promotes (Δ̂ > 0) or
rolls back (Δ̂ < 0). Below the threshold it keeps collecting until the canary has shown
``max_impressions`` impressions, then rolls back: the canary has not shown itself better by
then, so stable stays.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from model.online import stats
from model.online.settings import JudgeSettings

Decision = Literal["promote", "roll back", "keep collecting"]
__all__ = ["Decision", "ErrorCounts", "GuardResult", "JudgeSettings", "Latency", "Verdict",
           "error_guard", "judge", "latency_guard"]  # fmt: skip


@dataclass(frozen=True)
class ErrorCounts:
    """A version's scoring requests and how many answered 5xx."""

    requests: int
    errors: int

    @property
    def rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0


@dataclass(frozen=True)
class Latency:
    """An arm's successful scoring requests and their latency, as a histogram gives it."""

    requests: int
    mean_s: float
    p99_s: float
    """Estimated from the buckets as Prometheus' histogram_quantile does (linear within a
    bucket)."""


@dataclass(frozen=True)
class GuardResult:
    """A guard's finding: ``line`` for the output, ``reason`` for a roll back it causes."""

    worse: bool
    line: str
    p_value: float = 1.0
    reason: str = ""
    numbers: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Verdict:
    """The judge's decision, its one-line reason, and the numbers behind it."""

    decision: Decision
    reason: str
    numbers: dict[str, float] = field(default_factory=dict)


def error_guard(canary: ErrorCounts, stable: ErrorCounts, alpha: float = 0.01) -> GuardResult:
    """Whether the canary's 5xx rate is worse than stable's: given the errors of both, are
    the canary's more than its share of requests explains (exact one-sided binomial test
    at ``alpha``)? The canary's rate must also be above stable's."""
    line = (
        f"5xx rate canary {canary.rate:.2%} ({canary.errors:,}/{canary.requests:,}), "
        f"stable {stable.rate:.2%} ({stable.errors:,}/{stable.requests:,})"
    )
    total_errors = canary.errors + stable.errors
    if not canary.requests or not stable.requests or not total_errors:
        return GuardResult(False, line)
    share = canary.requests / (canary.requests + stable.requests)
    p_value = stats.binomial_upper_tail(canary.errors, total_errors, share)
    worse = canary.rate > stable.rate and p_value < alpha
    reason = f"the canary's error rate is worse ({line}; p = {p_value:.2g}), whatever its clicks"
    return GuardResult(worse, line, p_value, reason, {"guard_p_value": p_value})


def latency_guard(canary: Latency, stable: Latency, settings: JudgeSettings) -> GuardResult:
    """Whether the canary is clearly slower: its mean or p99 above ``max_latency_ratio``
    times stable's, once both arms have ``min_latency_requests``. A ratio, not a test: latency
    samples are not independent (load moves both arms together), and a fixed factor says
    what "clearly" means in the words an operator sets it in."""
    line = (
        f"/score latency canary mean {_ms(canary.mean_s)}, p99 {_ms(canary.p99_s)} "
        f"({canary.requests:,} requests); stable mean {_ms(stable.mean_s)}, p99 "
        f"{_ms(stable.p99_s)} ({stable.requests:,}); limit {settings.max_latency_ratio:g}x stable"
    )
    fewest = settings.min_latency_requests
    if min(canary.requests, stable.requests) < fewest:
        return GuardResult(False, f"{line}; not compared below {fewest:,} requests an arm")
    ratios = {
        "mean": _ratio(canary.mean_s, stable.mean_s),
        "p99": _ratio(canary.p99_s, stable.p99_s),
    }
    over = [f"{name} {ratio:.2f}x" for name, ratio in ratios.items()
            if ratio > settings.max_latency_ratio]  # fmt: skip
    numbers = {
        "canary_mean_s": canary.mean_s,
        "stable_mean_s": stable.mean_s,
        "canary_p99_s": canary.p99_s,
        "stable_p99_s": stable.p99_s,
    }
    reason = f"the canary is slower ({', '.join(over)} stable's: {line}), whatever its clicks"
    return GuardResult(bool(over), line, reason=reason, numbers=numbers)


def _ratio(canary: float, stable: float) -> float:
    if stable > 0:
        return canary / stable
    return math.inf if canary > 0 else 1.0


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.3g} ms"


def judge(
    canary_clicks: np.ndarray,
    canary_impressions: np.ndarray,
    stable_clicks: np.ndarray,
    stable_impressions: np.ndarray,
    settings: JudgeSettings,
    *guards: GuardResult | None,
) -> Verdict:
    """The decision for a canary, from each arm's per-user clicks and impressions over the
    same window (one entry per user), and the guards' findings (None: a guard skipped); the
    first guard that finds the canary worse rolls it back."""
    for guard in guards:
        if guard is not None and guard.worse:
            return Verdict("roll back", guard.reason, dict(guard.numbers))
    canary = stats.ratio_estimate(canary_clicks, canary_impressions)
    stable = stats.ratio_estimate(stable_clicks, stable_impressions)
    shown = int(np.sum(canary_impressions))
    numbers = {
        "canary_ctr": canary.value,
        "stable_ctr": stable.value,
        "canary_users": float(canary.users),
        "stable_users": float(stable.users),
        "canary_impressions": float(shown),
        "stable_impressions": float(np.sum(stable_impressions)),
    }
    fewest = min(canary.users, stable.users)
    if fewest < settings.min_users:
        return Verdict(
            "keep collecting",
            f"{canary.users:,} canary and {stable.users:,} stable users so far; each arm needs "
            f"{settings.min_users:,} before clicks decide",
            numbers,
        )
    if not (canary.numerator > 0 and stable.numerator > 0):
        return Verdict("keep collecting", "no clicks yet in one of the arms", numbers)
    difference, variance = stats.log_ratio_difference(canary, stable)
    log_lambda = stats.msprt_log_lambda(difference, variance, settings.min_effect)
    half = stats.confidence_sequence_halfwidth(variance, settings.min_effect, settings.alpha)
    threshold = 1 / settings.alpha
    low, high = math.expm1(difference - half), math.expm1(difference + half)
    numbers |= {
        "difference": difference,
        "variance": variance,
        "lift": math.expm1(difference),
        "lift_low": low,
        "lift_high": high,
        "lambda": math.exp(min(log_lambda, 700.0)),
        "threshold": threshold,
        "p_value": min(1.0, math.exp(-log_lambda)),
    }
    evidence = (
        f"clicks per impression canary {canary.value:.4f}, stable {stable.value:.4f} "
        f"({math.expm1(difference):+.1%}; always-valid {1 - settings.alpha:.0%} interval "
        f"{low:+.1%} to {high:+.1%}); Λ = {numbers['lambda']:.3g}"
    )
    if log_lambda >= math.log(threshold):
        better = difference > 0
        return Verdict(
            "promote" if better else "roll back",
            f"the canary is {'better' if better else 'worse'}: {evidence} ≥ 1/α = {threshold:g}",
            numbers,
        )
    if shown >= settings.max_impressions:
        return Verdict(
            "roll back",
            f"no difference found within {settings.max_impressions:,} canary impressions "
            f"({shown:,} shown), so the canary is not better: {evidence} < {threshold:g}",
            numbers,
        )
    return Verdict(
        "keep collecting",
        f"no difference yet: {evidence} < 1/α = {threshold:g}; {shown:,} of "
        f"{settings.max_impressions:,} canary impressions",
        numbers,
    )
