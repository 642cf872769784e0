"""What ``afm-ctr rollout`` says from clicks: ``--status --redis-url`` shows the online CTR per
version and arm, ``--judge`` decides the canary (and with ``--auto`` writes the decision),
so a canary can be judged by what users did rather than by hand.

Reads the impression log (``model.online.log_reader``), sums it per user
(``model.online.ctr``), asks the judge (``model.online.judge``); the rollout command in
``serving.py`` owns the flags and the policy file.
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import typer

from model.contracts import export_format
from model.contracts import rollout as policies
from model.contracts.rollout import RolloutPolicy
from model.errors import AfmError
from model.online import ctr, log_reader
from model.online.judge import (
    GuardResult,
    JudgeSettings,
    Verdict,
    error_guard,
    judge,
    latency_guard,
)
from model.online.stats import RatioEstimate

STATUS_WINDOW = "1h"
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d)\s*$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86_400}


@dataclass(frozen=True)
class LogSource:
    """Where the impression log is: the feature store's Redis and key prefix."""

    redis_url: str
    prefix: str
    cluster: bool = False


def parse_window(text: str) -> int:
    """Seconds in a duration such as ``90s``, ``30m``, ``1h`` or ``2d``; typer.BadParameter
    otherwise."""
    match = _DURATION.match(text)
    if match is None or float(match[1]) <= 0:
        raise typer.BadParameter(
            f"--window {text!r} is not a duration such as 30m, 1h or 2d", param_hint="--window"
        )
    return max(1, round(float(match[1]) * _UNIT_SECONDS[match[2]]))


def show_status(
    policy: RolloutPolicy | None, model_dir: Path, source: LogSource, window: str | None
) -> None:
    """The policy, then the online CTR of every version and arm logged over the window."""
    typer.echo(policies.describe(policy, model_dir))
    end_ms = _now_ms()
    start_ms = end_ms - parse_window(window or STATUS_WINDOW) * 1000
    read = _read(source, start_ms, end_ms)
    samples = ctr.per_user(read.impressions)
    typer.echo(
        f"online CTR {_span(start_ms, end_ms)} ({len(read.impressions):,} impressions; "
        "95 % intervals by the per-user delta method):"
    )
    trimmed = read.trimmed()
    if trimmed is not None:
        typer.echo(f"warning: {trimmed}; the figures below are short of them")
    for line in read.notes():
        typer.echo(f"  note: {line}")
    if not samples:
        typer.echo("  no impressions logged in the window")
        return
    for line in ctr_table(samples):
        typer.echo(f"  {line}")


def ctr_table(samples: dict[tuple[int, str], ctr.ArmSample]) -> list[str]:
    """Rows of clicks per impression per version and arm, then clicks by position."""
    rows = [["version/arm", "users", "impressions", "clicks", "clicks/impression (95 % CI)",
             "CTR per shown"]]  # fmt: skip
    for (version, arm), sample in samples.items():
        rate = sample.clicks_per_impression()
        rows.append(
            [f"{version}/{arm}", f"{rate.users:,}", f"{sample.total_impressions:,}",
             f"{sample.total_clicks:,}", _rate(rate), _percent(sample.clicks_per_shown().value)]
        )  # fmt: skip
    lines = _aligned(rows)
    shown = np.sum([s.shown_at.sum(axis=0) for s in samples.values()], axis=0)
    positions = [k for k in range(ctr.POSITIONS + 1) if shown[k] > 0]
    lines.append("clicks per reply showing a position (0 = top; ± the 95 % half-width):")
    header = ["position", *(f"{v}/{a}" for v, a in samples)]
    by_position = [header]
    for k in positions:
        label = str(k) if k < ctr.POSITIONS else f"{ctr.POSITIONS}+ (per movie)"
        cells = []
        for sample in samples.values():
            estimate = sample.at_position(k)
            cells.append(
                "–"
                if math.isnan(estimate.value)
                else f"{estimate.value:.4f} ±{_half(estimate.interval()):.4f}"
            )
        by_position.append([label, *cells])
    lines += _aligned(by_position)
    return lines


def judge_canary(
    policy: RolloutPolicy | None,
    model_dir: Path,
    source: LogSource,
    window: str | None,
    settings: JudgeSettings,
    metrics_url: str | None,
) -> RolloutPolicy | None:
    """Print the judge's decision on the canary and why; return the policy the decision
    asks for (None: keep collecting), which ``--auto`` writes."""
    if policy is None or policy.canary is None:
        raise AfmError("no canary to judge (start one with --canary VERSION --percent P)")
    end_ms = _now_ms()
    start_ms, since = _judged_span(policy, window, end_ms)
    read = _read(source, start_ms, end_ms)
    samples = ctr.per_user(read.impressions)
    empty = _empty_sample()
    canary = samples.get((policy.canary, "canary"), empty)
    stable = samples.get((policy.stable, "stable"), empty)
    guards, guard_lines = _guards(metrics_url, policy, settings)
    _refuse_a_trimmed_window(read, guards)
    verdict = judge(
        canary.clicks, canary.impressions, stable.clicks, stable.impressions, settings, *guards
    )
    typer.echo(f"{verdict.decision}: {verdict.reason}")
    typer.echo(
        f"canary {policy.canary}: {canary.users.size:,} users, {canary.total_impressions:,} "
        f"impressions, {canary.total_clicks:,} clicks; stable {policy.stable}: "
        f"{stable.users.size:,} users, {stable.total_impressions:,} impressions, "
        f"{stable.total_clicks:,} clicks"
    )
    typer.echo(f"window: {_span(start_ms, end_ms)} ({since})")
    typer.echo(
        f"test: mixture SPRT, α = {settings.alpha:g}, minimum effect (τ) "
        f"{settings.min_effect:.0%} relative, at most {settings.max_impressions:,} canary "
        f"impressions, {settings.min_users:,} users per arm first"
    )
    for line in guard_lines:
        typer.echo(line)
    if read.trimmed() is not None:  # decided by a guard
        typer.echo(f"warning: {read.trimmed()}")
    for line in read.notes():
        typer.echo(f"note: {line}")
    return _next_policy(verdict, policy, model_dir)


def _refuse_a_trimmed_window(read: log_reader.LogWindow, guards: list[GuardResult | None]) -> None:
    """AfmError when the streams were trimmed past the window's start, unless a guard rolls
    the canary back anyway. Refused rather than judged on what is left: the always-valid
    guarantee is for one sample growing from the start, and what is left has lost each
    user's oldest impressions, shard by shard."""
    trimmed = read.trimmed()
    if trimmed is None or any(guard is not None and guard.worse for guard in guards):
        return
    begins = _clock(read.log_begins_ms or read.start_ms)
    raise AfmError(
        f"not judged: {trimmed}, then start the canary again (--rollback, then --canary), or "
        f"judge a --window that starts after {begins}"
    )


def _next_policy(verdict: Verdict, policy: RolloutPolicy, model_dir: Path) -> RolloutPolicy | None:
    """The policy ``--promote`` or ``--rollback`` would write for the decision."""
    if verdict.decision == "promote":
        return policies.promote(policy)
    if verdict.decision == "roll back":
        return policies.rollback(policy, export_format.list_versions(model_dir))
    return None


def _guards(
    metrics_url: str | None, policy: RolloutPolicy, settings: JudgeSettings
) -> tuple[list[GuardResult | None], list[str]]:
    """The error-rate and latency guards' findings (None: skipped) and their lines, from one
    scrape of ``metrics_url``; both skipped without it."""
    if metrics_url is None:
        return [None, None], [
            "error guard: skipped (no --metrics-url): the canary's 5xx rate was not compared",
            "latency guard: skipped (no --metrics-url): the canary's latency was not compared",
        ]
    from model.online.guard import fetch_metrics

    text = fetch_metrics(metrics_url)
    error, error_line = _error_guard(text, policy, metrics_url)
    latency, latency_line = _latency_guard(text, policy, settings, metrics_url)
    return [error, latency], [f"error guard: {error_line}", f"latency guard: {latency_line}"]


def _error_guard(text: str, policy: RolloutPolicy, url: str) -> tuple[GuardResult | None, str]:
    from model.online.guard import errors_by_version

    counts = errors_by_version(text)
    canary, stable = counts.get(policy.canary or -1), counts.get(policy.stable)
    if canary is None or stable is None or not canary.requests:
        missing = policy.canary if canary is None or not canary.requests else policy.stable
        return None, f"{url} shows no scoring requests of version {missing} yet"
    result = error_guard(canary, stable)
    return result, f"{result.line} at {url}: {'WORSE' if result.worse else 'not worse'}"


def _latency_guard(
    text: str, policy: RolloutPolicy, settings: JudgeSettings, url: str
) -> tuple[GuardResult | None, str]:
    from model.online.guard import latency_by_arm

    latency = latency_by_arm(text)
    canary = latency.get((policy.canary or -1, "canary"))
    stable = latency.get((policy.stable, "stable"))
    if canary is None or stable is None:
        missing = f"canary {policy.canary}" if canary is None else f"stable {policy.stable}"
        return None, f"{url} shows no /score requests answered by {missing} yet"
    result = latency_guard(canary, stable, settings)
    return result, f"{result.line} at {url}: {'WORSE' if result.worse else 'not worse'}"


def _judged_span(policy: RolloutPolicy, window: str | None, end_ms: int) -> tuple[int, str]:
    """The window's start: ``--window`` back from now, else when the canary version started
    (the policy's canary_since), so every look sees the whole experiment whatever was
    written since; a format 1 policy has only its last write (updated_at)."""
    if window is not None:
        return end_ms - parse_window(window) * 1000, f"--window {window}"
    for stamp, since in (
        (policy.canary_since, f"since canary {policy.canary} started"),
        (policy.updated_at, "since the policy was last written: it does not say when the "
                            "canary started"),
    ):  # fmt: skip
        try:
            return int(datetime.fromisoformat(stamp or "").timestamp() * 1000), since
        except ValueError:
            continue
    return end_ms - parse_window(STATUS_WINDOW) * 1000, (
        "the policy says neither when the canary started nor when it was written; the last hour"
    )


def _read(source: LogSource, start_ms: int, end_ms: int) -> log_reader.LogWindow:
    client = log_reader.connect(source.redis_url, source.cluster)
    try:
        return log_reader.read_window(client, source.prefix, start_ms, end_ms)
    finally:
        client.close()


def _empty_sample() -> ctr.ArmSample:
    none = np.zeros(0, np.int64)
    grid = np.zeros((0, ctr.POSITIONS + 1), np.int64)
    return ctr.ArmSample(-1, "", none, none, none, grid, grid)


def _clock(ms: int) -> str:
    return f"{datetime.fromtimestamp(ms / 1000, UTC):%Y-%m-%d %H:%M:%S} UTC"


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _span(start_ms: int, end_ms: int) -> str:
    start = datetime.fromtimestamp(start_ms / 1000, UTC)
    end = datetime.fromtimestamp(end_ms / 1000, UTC)
    same_day = start.date() == end.date()
    return (
        f"{start:%Y-%m-%d %H:%M}–{end:%H:%M} UTC"
        if same_day
        else f"{start:%Y-%m-%d %H:%M} – {end:%Y-%m-%d %H:%M} UTC"
    )


def _rate(estimate: RatioEstimate) -> str:
    value = estimate.value
    if math.isnan(value):
        return "–"
    low, high = estimate.interval()
    if not math.isfinite(low):
        return f"{value:.4f} (one user: no interval)"
    return f"{value:.4f} ({low:.4f}–{high:.4f})"


def _half(interval: tuple[float, float]) -> float:
    return (interval[1] - interval[0]) / 2


def _percent(value: float) -> str:
    return "–" if math.isnan(value) else f"{value:.2%}"


def _aligned(rows: list[list[str]]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
            for row in rows]  # fmt: skip
