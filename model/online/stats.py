"""The statistics of judging a canary, pure NumPy (and ``math``): per-user ratio estimates,
the mixture sequential probability ratio test, exact binomial tails and bounds.

Users, not impressions, are the unit: the rollout assigns a user to an arm for good, so one
user's impressions are correlated, and a variance that counts each impression as independent
is too small (it promotes too often). A rate ``R = Σ clicks / Σ impressions`` over users is
a ratio of two per-user means; its variance comes from the delta method::

    Var(R) ≈ Var_u(c_u − R n_u) / (m · n̄²)

(``m`` users, ``c_u`` clicks and ``n_u`` impressions of user u, ``n̄`` the mean ``n_u``).

The mixture SPRT (Johari, Pekelis, Walsh, "Always valid inference", 2017) puts a normal
N(0, τ²) mixture over the true difference Δ; with Δ̂ its estimate and V the variance of Δ̂::

    Λ = sqrt(V / (V + τ²)) · exp(τ² Δ̂² / (2 V (V + τ²)))

Under "no difference" Λ is a nonnegative martingale, so P(Λ ever ≥ 1/α) ≤ α: the test may
be asked after every batch of impressions without inflating its false positives.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class RatioEstimate:
    """A per-user ratio ``Σ numerator / Σ denominator`` and its delta-method variance."""

    value: float
    variance: float
    users: int
    numerator: float
    denominator: float

    @property
    def standard_error(self) -> float:
        return math.sqrt(self.variance)

    def interval(self, level: float = 0.95) -> tuple[float, float]:
        """The normal-approximation interval at ``level`` (two-sided)."""
        half = normal_quantile(0.5 + level / 2) * self.standard_error
        return self.value - half, self.value + half


def ratio_estimate(numerator: np.ndarray, denominator: np.ndarray) -> RatioEstimate:
    """``Σ numerator / Σ denominator`` over users (one entry each) with its per-user
    delta-method variance; NaN value without a denominator, infinite variance below 2 users."""
    c = np.asarray(numerator, dtype=np.float64)
    n = np.asarray(denominator, dtype=np.float64)
    users = int(c.size)
    total_c, total_n = float(c.sum()), float(n.sum())
    if total_n <= 0:
        return RatioEstimate(math.nan, math.inf, users, total_c, total_n)
    ratio = total_c / total_n
    if users < 2:
        return RatioEstimate(ratio, math.inf, users, total_c, total_n)
    mean_n = total_n / users
    residual = c - ratio * n
    variance = float(residual.var(ddof=1)) / (users * mean_n**2)
    return RatioEstimate(ratio, variance, users, total_c, total_n)


def log_ratio_difference(canary: RatioEstimate, stable: RatioEstimate) -> tuple[float, float]:
    """Δ̂ = log(canary) − log(stable), the relative difference on a log scale, and its
    variance (delta method, independent arms); NaN when either rate is not positive."""
    if not (canary.value > 0 and stable.value > 0):
        return math.nan, math.nan
    difference = math.log(canary.value) - math.log(stable.value)
    variance = canary.variance / canary.value**2 + stable.variance / stable.value**2
    return difference, variance


def msprt_log_lambda(difference: float, variance: float, tau: float) -> float:
    """log Λ of the normal-mixture SPRT for an estimate ``difference`` of variance
    ``variance`` and a mixing N(0, ``tau``²) (formula in the module docstring)."""
    if not (variance > 0 and math.isfinite(variance) and math.isfinite(difference)):
        return -math.inf  # no estimate yet: no evidence
    total = variance + tau * tau
    return 0.5 * math.log(variance / total) + (
        tau * tau * difference * difference / (2.0 * variance * total)
    )


def msprt_lambda(difference: float, variance: float, tau: float) -> float:
    """Λ of the normal-mixture SPRT (see ``msprt_log_lambda``)."""
    return math.exp(min(msprt_log_lambda(difference, variance, tau), 700.0))


def msprt_log_lambda_array(difference: np.ndarray, variance: np.ndarray, tau: float) -> np.ndarray:
    """``msprt_log_lambda`` over arrays (for simulations); -inf where the variance is not
    finite and positive."""
    d = np.asarray(difference, dtype=np.float64)
    v = np.asarray(variance, dtype=np.float64)
    ok = np.isfinite(v) & (v > 0) & np.isfinite(d)
    v_safe = np.where(ok, v, 1.0)
    total = v_safe + tau * tau
    out = 0.5 * np.log(v_safe / total) + tau * tau * d * d / (2.0 * v_safe * total)
    return np.where(ok, out, -np.inf)


def confidence_sequence_halfwidth(variance: float, tau: float, alpha: float) -> float:
    """Half-width of the always-valid (1 − ``alpha``) interval around Δ̂: the Δ for which
    Λ(Δ̂ − Δ) stays below 1/``alpha``. Covers the truth at every look at once."""
    if not variance > 0 or not math.isfinite(variance):
        return math.inf
    total = variance + tau * tau
    spread = 2 * math.log(1 / alpha) + math.log(total / variance)
    return math.sqrt(variance * total / (tau * tau) * spread)


def normal_quantile(p: float) -> float:
    """The standard normal quantile (Acklam's rational approximation, refined by one
    Halley step: good to ~1e-12 on (0, 1))."""
    if not 0 < p < 1:
        raise ValueError(f"a quantile needs 0 < p < 1, got {p}")
    a = (-3.969683028665376e01, 2.209460984245205e02, -2.759285104469687e02,
         1.383577518672690e02, -3.066479806614716e01, 2.506628277459239e00)  # fmt: skip
    b = (-5.447609879822406e01, 1.615858368580409e02, -1.556989798598866e02,
         6.680131188771972e01, -1.328068155288572e01)  # fmt: skip
    c = (-7.784894002430293e-03, -3.223964580411365e-01, -2.400758277161838e00,
         -2.549732539343734e00, 4.374664141464968e00, 2.938163982698783e00)  # fmt: skip
    d = (7.784695709041462e-03, 3.224671290700398e-01, 2.445134137142996e00,
         3.754408661907416e00)  # fmt: skip
    if p < 0.02425:
        q = math.sqrt(-2 * math.log(p))
        x = (((((c[0] * q + c[1]) * q + c[2]) * q + c[3]) * q + c[4]) * q + c[5]) / (
            (((d[0] * q + d[1]) * q + d[2]) * q + d[3]) * q + 1
        )
    elif p > 1 - 0.02425:
        q = math.sqrt(-2 * math.log(1 - p))
        x = -(((((c[0] * q + c[1]) * q + c[2]) * q + c[3]) * q + c[4]) * q + c[5]) / (
            (((d[0] * q + d[1]) * q + d[2]) * q + d[3]) * q + 1
        )
    else:
        q = p - 0.5
        r = q * q
        x = (
            (((((a[0] * r + a[1]) * r + a[2]) * r + a[3]) * r + a[4]) * r + a[5])
            * q
            / (((((b[0] * r + b[1]) * r + b[2]) * r + b[3]) * r + b[4]) * r + 1)
        )
    error = 0.5 * math.erfc(-x / math.sqrt(2)) - p
    u = error * math.sqrt(2 * math.pi) * math.exp(x * x / 2)
    return x - u / (1 + x * u / 2)


def binomial_upper_tail(k: int, n: int, p: float) -> float:
    """P(X ≥ k) for X ~ Binomial(n, p), summed exactly in log space."""
    if k <= 0:
        return 1.0
    if k > n:
        return 0.0
    if p <= 0:
        return 0.0
    if p >= 1:
        return 1.0
    j = np.arange(k, n + 1, dtype=np.float64)
    log_terms = (
        math.lgamma(n + 1)
        - _lgamma(j + 1)
        - _lgamma(n - j + 1)
        + j * math.log(p)
        + (n - j) * math.log1p(-p)
    )
    top = float(log_terms.max())
    return min(1.0, math.exp(top) * float(np.exp(log_terms - top).sum()))


def clopper_pearson(k: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """One-sided exact (Clopper-Pearson) bounds for a proportion ``k``/``n``: the lower bound
    L with P(X ≥ k | L) = 1 − confidence and the upper U with P(X ≤ k | U) = 1 − confidence,
    each holding at ``confidence`` on its own (the beta quantiles, found by bisection)."""
    if not 0 <= k <= n or n <= 0:
        raise ValueError(f"need 0 <= k <= n and n > 0, got k={k}, n={n}")
    a = 1.0 - confidence
    lower = 0.0 if k == 0 else _bisect(lambda p: binomial_upper_tail(k, n, p) - a)
    # P(X <= k | p) = 1 - P(X >= k+1 | p), decreasing in p.
    upper = 1.0 if k == n else _bisect(lambda p: a - (1.0 - binomial_upper_tail(k + 1, n, p)))
    return lower, upper


def _bisect(increasing: Callable[[float], float]) -> float:
    """The root in (0, 1) of an increasing function, to 1e-12."""
    low, high = 0.0, 1.0
    for _ in range(60):
        middle = (low + high) / 2
        if increasing(middle) < 0:
            low = middle
        else:
            high = middle
    return (low + high) / 2


_lgamma = np.vectorize(math.lgamma, otypes=[np.float64])
