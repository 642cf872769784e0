"""Online click-through rates per model version and arm, summed per user, because the rollout
assigns users (not requests) to arms and the variance must be taken over them.

Two rates, each a ratio of per-user sums with a delta-method interval (``stats``):

* clicks per impression: clicks on a ``/score`` reply's movies per reply shown;
* by position: clicks on the movie at position k per reply that showed a position k (the
  top slots get most of the attention, so a canary that only reorders shows there first).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from model.online.stats import RatioEstimate, ratio_estimate

POSITIONS = 10
"""Positions reported one by one (0 first); later ones are summed into the last column."""


@dataclass(frozen=True)
class ArmSample:
    """One version and arm's per-user totals over a window (row u: user ``users[u]``)."""

    version: int
    arm: str
    users: np.ndarray
    impressions: np.ndarray
    clicks: np.ndarray
    shown_at: np.ndarray
    """users × (POSITIONS + 1): replies that showed each position; the last column counts
    the movies shown past POSITIONS."""
    clicks_at: np.ndarray
    """users × (POSITIONS + 1): clicks at each position, the last column past POSITIONS."""

    @property
    def total_impressions(self) -> int:
        return int(self.impressions.sum())

    @property
    def total_clicks(self) -> int:
        return int(self.clicks.sum())

    def clicks_per_impression(self) -> RatioEstimate:
        return ratio_estimate(self.clicks, self.impressions)

    def clicks_per_shown(self) -> RatioEstimate:
        """Clicks per shown movie (every position)."""
        return ratio_estimate(self.clicks, self.shown_at.sum(axis=1))

    def at_position(self, position: int) -> RatioEstimate:
        """Clicks per reply showing ``position`` (POSITIONS: every later position, per shown
        movie there)."""
        return ratio_estimate(self.clicks_at[:, position], self.shown_at[:, position])


class Outcome(Protocol):
    """What ``per_user`` reads of an impression (``log_reader.LoggedOutcome`` has it)."""

    @property
    def user_id(self) -> int: ...
    @property
    def version(self) -> int: ...
    @property
    def arm(self) -> str: ...
    @property
    def positions(self) -> tuple[int, ...]: ...
    @property
    def clicked(self) -> tuple[int, ...]: ...


class _Tally:
    __slots__ = ("impressions", "clicks", "shown_at", "clicks_at")

    def __init__(self) -> None:
        self.impressions = 0
        self.clicks = 0
        self.shown_at = np.zeros(POSITIONS + 1, np.int64)
        self.clicks_at = np.zeros(POSITIONS + 1, np.int64)


def per_user(outcomes: Iterable[Outcome]) -> dict[tuple[int, str], ArmSample]:
    """(version, arm) -> that arm's per-user totals over ``outcomes``, sorted by key."""
    tallies: dict[tuple[int, str], dict[int, _Tally]] = {}
    for outcome in outcomes:
        users = tallies.setdefault((outcome.version, outcome.arm), {})
        tally = users.get(outcome.user_id)
        if tally is None:
            tally = users[outcome.user_id] = _Tally()
        tally.impressions += 1
        tally.clicks += len(outcome.clicked)
        for position in outcome.positions:
            tally.shown_at[min(position, POSITIONS)] += 1
        for position in outcome.clicked:
            tally.clicks_at[min(position, POSITIONS)] += 1
    return {key: _sample(key, users) for key, users in sorted(tallies.items())}


def _sample(key: tuple[int, str], users: dict[int, _Tally]) -> ArmSample:
    tallies = list(users.values())
    return ArmSample(
        version=key[0],
        arm=key[1],
        users=np.fromiter(users, dtype=np.int64, count=len(users)),
        impressions=np.array([t.impressions for t in tallies], np.int64),
        clicks=np.array([t.clicks for t in tallies], np.int64),
        shown_at=np.stack([t.shown_at for t in tallies]),
        clicks_at=np.stack([t.clicks_at for t in tallies]),
    )
