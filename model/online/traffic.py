"""A recommender frontend played against a running service, clicking by a known truth.

Each simulated request draws a user of the synthetic population and ``candidates`` random
movies, asks ``POST /score`` for the ``top_k`` best, and "shows" them in reply order. A shown
movie at position k (0 first) is examined with probability 1 / log2(k + 2) and, once
examined, clicked with probability sigmoid(CLICK_BIAS + affinity(user, movie)), the planted
affinity of ``model.data.synth.PlantedTaste``; the clicks go back to ``POST /events`` with
the reply's impression id. Seeded: the same seed asks the same requests and, given the same
replies, makes the same clicks.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np

from model.contracts import event_log
from model.data.synth import PlantedTaste
from model.errors import AfmError

logger = logging.getLogger(__name__)

CLICK_BIAS = -4.5
"""Puts an examined movie's click probability at a few percent for what a user would pick
(affinity ~2) and under 1 % for a random movie (affinity ~-0.5)."""


def examination(position: np.ndarray) -> np.ndarray:
    """The chance a shown movie at ``position`` (0 first) is looked at: 1 / log2(k + 2)."""
    return 1.0 / np.log2(np.asarray(position) + 2.0)


def click_probability(taste: PlantedTaste, user_id: int, movie_ids: list[int]) -> np.ndarray:
    """The true chance each movie is clicked once examined."""
    affinity = taste.affinity(np.full(len(movie_ids), user_id), np.asarray(movie_ids))
    return 1.0 / (1.0 + np.exp(-(CLICK_BIAS + affinity)))


@dataclass
class ArmTally:
    """What one rollout arm showed and got."""

    requests: int = 0
    shown: int = 0
    clicks: int = 0

    @property
    def ctr(self) -> float:
        """Clicks per shown movie."""
        return self.clicks / self.shown if self.shown else 0.0


@dataclass
class TrafficReport:
    """A simulation's outcome: per ``version/arm``, and what went wrong."""

    arms: dict[str, ArmTally] = field(default_factory=dict)
    failed: Counter = field(default_factory=Counter)  # "score 503", "events 401", ...
    seconds: float = 0.0

    def tally(self, version: int, arm: str) -> ArmTally:
        return self.arms.setdefault(f"{version}/{arm}", ArmTally())

    def lines(self) -> list[str]:
        out = [
            f"{name}: {t.requests} requests, {t.shown} shown, {t.clicks} clicks, CTR {t.ctr:.4f}"
            for name, t in sorted(self.arms.items())
        ]
        out += [f"failed: {what} x{n}" for what, n in sorted(self.failed.items())]
        return out


def simulate(
    url: str,
    data_dir: Path,
    *,
    requests: int,
    seed: int,
    candidates: int = 50,
    top_k: int = 10,
    max_seconds: float = 600.0,
    api_key: str | None = None,
    progress_every: int = 0,
) -> TrafficReport:
    """Play ``requests`` requests (or until ``max_seconds``) against the service at ``url``,
    whose feature set is the synthetic population in ``data_dir``."""
    taste = PlantedTaste(data_dir)
    if candidates > taste.movies or top_k > candidates:
        raise AfmError(f"need top_k <= candidates <= {taste.movies} movies")
    rng = np.random.default_rng(seed)
    report = TrafficReport()
    headers = {"X-API-Key": api_key} if api_key else {}
    start = time.monotonic()
    logging.getLogger("httpx").setLevel(logging.WARNING)  # not a line per request
    with httpx.Client(base_url=url.rstrip("/"), headers=headers, timeout=30.0) as client:
        ready = client.get("/readyz")
        if ready.status_code != 200:
            raise AfmError(f"the service at {url} is not ready (/readyz: {ready.status_code})")
        for done in range(requests):
            if time.monotonic() - start > max_seconds:
                break
            user = int(rng.integers(1, taste.users + 1))
            movies = rng.choice(taste.movies, size=candidates, replace=False) + 1
            draws = rng.random((2, top_k))  # drawn whatever the reply: seeded requests stay
            reply = client.post(
                "/score",
                json={"user_id": user, "movie_ids": movies.tolist(), "top_k": top_k},
            )
            if reply.status_code != 200:
                report.failed[f"score {reply.status_code}"] += 1
                continue
            _show(client, taste, report, user, reply.json(), draws)
            if progress_every and (done + 1) % progress_every == 0:
                logger.info("%d requests, %.0f s", done + 1, time.monotonic() - start)
    report.seconds = time.monotonic() - start
    return report


def _show(
    client: httpx.Client,
    taste: PlantedTaste,
    report: TrafficReport,
    user: int,
    reply: dict,
    draws: np.ndarray,
) -> None:
    """Show a reply's movies, click by the truth, post the clicks."""
    shown = [int(score["movie_id"]) for score in reply["scores"]]
    impression = reply["impression_id"]
    claims = event_log.read_impression_id(impression)
    tally = report.tally(claims.version, claims.arm)
    tally.requests += 1
    tally.shown += len(shown)
    if not shown:
        return
    positions = np.arange(len(shown))
    clicked = (draws[0, : len(shown)] < examination(positions)) & (
        draws[1, : len(shown)] < click_probability(taste, user, shown)
    )
    events = [
        {"impression_id": impression, "movie_id": movie, "type": "click"}
        for movie, hit in zip(shown, clicked, strict=True)
        if hit
    ]
    if not events:
        return
    answer = client.post("/events", json={"events": events})
    if answer.status_code != 202:
        report.failed[f"events {answer.status_code}"] += 1
        return
    tally.clicks += len(events)
