"""The judge's decisions: guard first, then the sequential test, then the budget."""

from __future__ import annotations

import numpy as np
import pytest

from model.online.judge import ErrorCounts, JudgeSettings, error_guard, judge

SETTINGS = JudgeSettings(alpha=0.05, min_effect=0.05, max_impressions=50_000, min_users=100)


def _arm(users: int, ctr: float, seed: int, per_user: int = 5) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    impressions = np.full(users, per_user)
    return rng.binomial(impressions * 10, ctr / 10), impressions


@pytest.mark.parametrize(
    ("canary_ctr", "decision", "words"),
    [(0.40, "promote", "the canary is better"), (0.20, "roll back", "the canary is worse")],
)
def test_a_clear_difference_decides(canary_ctr: float, decision: str, words: str) -> None:
    verdict = judge(*_arm(2000, canary_ctr, 1), *_arm(8000, 0.30, 2), SETTINGS)
    assert verdict.decision == decision and words in verdict.reason
    assert verdict.numbers["lambda"] >= 20 and "Λ =" in verdict.reason
    low, high = verdict.numbers["lift_low"], verdict.numbers["lift_high"]
    assert low < verdict.numbers["lift"] < high and (low > 0 or high < 0)


def test_too_little_data_keeps_collecting() -> None:
    verdict = judge(*_arm(50, 0.40, 1), *_arm(8000, 0.30, 2), SETTINGS)
    assert verdict.decision == "keep collecting" and "needs 100" in verdict.reason
    verdict = judge(*_arm(300, 0.31, 1), *_arm(1200, 0.30, 2), SETTINGS)
    assert verdict.decision == "keep collecting" and "no difference yet" in verdict.reason


def test_no_difference_by_the_budget_rolls_back() -> None:
    few = JudgeSettings(max_impressions=1000, min_users=100)
    verdict = judge(*_arm(300, 0.30, 1), *_arm(1200, 0.30, 2), few)
    assert verdict.decision == "roll back" and "no difference found within 1,000" in verdict.reason


def test_a_worse_error_rate_rolls_back_whatever_the_clicks() -> None:
    guard = error_guard(ErrorCounts(2000, 40), ErrorCounts(8000, 8))
    verdict = judge(*_arm(2000, 0.40, 1), *_arm(8000, 0.30, 2), SETTINGS, guard)
    assert verdict.decision == "roll back"
    assert verdict.reason.startswith("the canary's error rate is worse (5xx rate canary 2.00%")


@pytest.mark.parametrize(
    "fields", [{"alpha": 0}, {"alpha": 1.5}, {"min_effect": 0}, {"min_users": 1}]
)
def test_settings_refuse_nonsense(fields: dict) -> None:
    with pytest.raises(ValueError):
        JudgeSettings(**fields)
