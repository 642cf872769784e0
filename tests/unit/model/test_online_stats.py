"""The judge's statistics: the mixture SPRT's Λ, its guarantee under repeated looks, the
per-user delta-method variance, and the exact binomial bounds the benchmark reports."""

from __future__ import annotations

import math

import numpy as np
import pytest

from model.online import stats
from model.online.judge import ErrorCounts, JudgeSettings, error_guard, judge


def test_lambda_matches_a_hand_computation() -> None:
    # Δ̂ = 0.1, V = 0.0025, τ = 0.1: V + τ² = 0.0125, sqrt(V / (V + τ²)) = sqrt(0.2),
    # τ²Δ̂² / (2V(V + τ²)) = 1e-4 / 6.25e-5 = 1.6, so Λ = sqrt(0.2) · e^1.6.
    expected = math.sqrt(0.2) * math.exp(1.6)
    assert expected == pytest.approx(2.2150634, abs=1e-7)
    assert stats.msprt_lambda(0.1, 0.0025, 0.1) == pytest.approx(expected, rel=1e-12)
    assert stats.msprt_log_lambda(-0.1, 0.0025, 0.1) == pytest.approx(math.log(expected))
    array = stats.msprt_log_lambda_array(np.array([0.1, 0.0]), np.array([0.0025, np.inf]), 0.1)
    assert array[0] == pytest.approx(math.log(expected)) and array[1] == -np.inf


def test_the_always_valid_interval_ends_where_lambda_reaches_one_over_alpha() -> None:
    variance, tau, alpha = 0.0004, 0.05, 0.05
    half = stats.confidence_sequence_halfwidth(variance, tau, alpha)
    assert stats.msprt_lambda(half, variance, tau) == pytest.approx(1 / alpha, rel=1e-9)
    assert stats.msprt_lambda(0.99 * half, variance, tau) < 1 / alpha


def _equal_arms_looks(seed: int, runs: int, looks: int, per_look: int):  # noqa: ANN202
    """Per run, per look: each arm's per-user clicks and impressions so far (equal arms,
    users with their own click propensity and activity)."""
    rng = np.random.default_rng(seed)
    for _ in range(runs):
        users = looks * per_look
        impressions = 1 + rng.poisson(rng.gamma(1.0, 3.0, (2, users)))
        propensity = rng.beta(2, 18, (2, users))  # mean 0.1, varies by user
        clicks = rng.binomial(impressions, propensity)
        yield [
            (clicks[:, : k * per_look], impressions[:, : k * per_look]) for k in range(1, looks + 1)
        ]


def test_the_judge_asked_after_every_batch_of_equal_arms_stays_below_alpha() -> None:
    settings = JudgeSettings(alpha=0.1, min_effect=0.05, max_impressions=10**9, min_users=50)
    runs, looks = 150, 20
    judged = naive = 0
    for run in _equal_arms_looks(seed=11, runs=runs, looks=looks, per_look=40):
        decided = fixed_horizon = False
        for clicks, impressions in run:
            verdict = judge(clicks[0], impressions[0], clicks[1], impressions[1], settings)
            decided = decided or verdict.decision != "keep collecting"
            # The trap: a fixed-horizon z-test peeked at the same looks.
            a = stats.ratio_estimate(clicks[0], impressions[0])
            b = stats.ratio_estimate(clicks[1], impressions[1])
            z = (a.value - b.value) / math.sqrt(a.variance + b.variance)
            fixed_horizon = fixed_horizon or abs(z) > stats.normal_quantile(0.95)
        judged += decided
        naive += fixed_horizon
    assert judged / runs <= settings.alpha / 2, judged  # always valid, with margin
    assert naive / runs > 2 * settings.alpha, naive  # the simulation does see peeking


def test_the_delta_method_variance_agrees_with_a_bootstrap_over_users() -> None:
    rng = np.random.default_rng(5)
    users = 2000
    impressions = 1 + rng.poisson(rng.lognormal(1.0, 1.0, users))  # a few heavy users
    clicks = rng.binomial(impressions, rng.beta(0.5, 6, users))  # each their own propensity
    estimate = stats.ratio_estimate(clicks, impressions)
    draws = rng.integers(0, users, (1000, users))
    boot = clicks[draws].sum(axis=1) / impressions[draws].sum(axis=1)
    assert estimate.value == pytest.approx(clicks.sum() / impressions.sum())
    assert estimate.variance == pytest.approx(boot.var(ddof=1), rel=0.12)
    # Counting impressions as independent would understate it: users are the unit.
    per_impression = estimate.value * (1 - estimate.value) / impressions.sum()
    assert per_impression < 0.6 * estimate.variance


def test_ratio_estimates_without_data_say_so() -> None:
    assert math.isnan(stats.ratio_estimate(np.array([]), np.array([])).value)
    one = stats.ratio_estimate(np.array([1]), np.array([4]))
    assert one.value == 0.25 and one.variance == math.inf


def test_clopper_pearson_bounds_are_the_exact_binomial_ones() -> None:
    n, a = 1000, 0.05
    assert stats.clopper_pearson(0, n)[1] == pytest.approx(1 - a ** (1 / n), rel=1e-9)
    assert stats.clopper_pearson(n, n)[0] == pytest.approx(a ** (1 / n), rel=1e-9)
    low, high = stats.clopper_pearson(870, n)
    assert stats.binomial_upper_tail(870, n, low) == pytest.approx(a, rel=1e-6)
    assert 1 - stats.binomial_upper_tail(871, n, high) == pytest.approx(a, rel=1e-6)
    assert low < 0.87 < high


def test_normal_quantile() -> None:
    assert stats.normal_quantile(0.975) == pytest.approx(1.959963984540054, abs=1e-12)
    assert stats.normal_quantile(0.05) == pytest.approx(-1.6448536269514722, abs=1e-12)
    assert stats.normal_quantile(1e-9) == pytest.approx(-5.997807015007686, abs=1e-9)


def test_the_error_guard_trips_on_a_worse_canary_only() -> None:
    assert error_guard(ErrorCounts(1000, 10), ErrorCounts(10_000, 10)).worse
    assert not error_guard(ErrorCounts(1000, 1), ErrorCounts(10_000, 10)).worse  # same rate
    assert not error_guard(ErrorCounts(1000, 0), ErrorCounts(10_000, 50)).worse  # better
    assert not error_guard(ErrorCounts(0, 0), ErrorCounts(10_000, 50)).worse  # no requests
