"""The canary judge's settings, apart from the judge so the command line can show their
defaults without importing NumPy."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class JudgeSettings:
    """The judge's knobs: fixed before the canary starts, so the guarantee holds."""

    alpha: float = 0.05
    """Chance of a false decision (either way) between two equal versions, over every look."""
    min_effect: float = 0.05
    """The relative difference in clicks per impression worth finding: the mixture's τ on the
    log scale. Smaller finds small effects sooner and large ones later."""
    max_impressions: int = 100_000
    """Canary impressions after which, with no difference found, the canary is rolled back."""
    min_users: int = 100
    """Users each arm needs before any decision by clicks (the variance needs a few)."""
    max_latency_ratio: float = 1.5
    """With a /metrics scrape: a canary whose mean or p99 /score latency is more than this
    times stable's is rolled back whatever its clicks. 1.5: well past the run-to-run noise of
    a mean over hundreds of requests, well short of a version that doubles the cost."""
    min_latency_requests: int = 500
    """Successful /score requests each arm needs before latency is compared (a p99 needs a
    few requests above it)."""

    def __post_init__(self) -> None:
        if not 0 < self.alpha < 1:
            raise ValueError(f"alpha must be in (0, 1), got {self.alpha}")
        if not self.min_effect > 0:
            raise ValueError(f"the minimum effect must be positive, got {self.min_effect}")
        if self.max_impressions < 1 or self.min_users < 2:
            raise ValueError("max_impressions must be >= 1 and min_users >= 2")
        if not self.max_latency_ratio > 1 or self.min_latency_requests < 1:
            raise ValueError(
                f"the latency ratio must be above 1 (got {self.max_latency_ratio}) and the "
                f"requests it needs at least 1 (got {self.min_latency_requests})"
            )
