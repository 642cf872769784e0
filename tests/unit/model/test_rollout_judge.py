"""`afm-ctr rollout --status --redis-url` and `--judge`: the online CTR and the canary judge
read from a real Redis holding a log written as the contract says."""

from __future__ import annotations

import contextlib
import http.server
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
import redis
from typer.testing import CliRunner

from model.cli.main import app
from model.contracts import event_log, rollout
from model.contracts.rollout import RolloutPolicy
from tests.unit.model.impression_log import write_impression
from tests.unit.model.test_rollout_policy import _versions

runner = CliRunner(env={"COLUMNS": "300", "AFM_REDIS_URL": None, "AFM_REDIS_PREFIX": None})


@pytest.fixture
def canary_dir(tmp_path: Path) -> Path:
    """Versions 1-3, with 3 the canary of 2 for 20 % of users."""
    _versions(tmp_path, 1, 2, 3)
    rollout.write_policy(tmp_path, RolloutPolicy(stable=2, canary=3, percent=20, previous=1))
    return tmp_path


def _log(
    redis_url: str,
    prefix: str,
    canary_ctr: float,
    stable_ctr: float,
    users: int,
    ts_ms: int | None = None,
) -> None:
    """``users`` users per arm, four impressions of ten movies each, clicks drawn per movie
    (stored at ``ts_ms``; default: now)."""
    rng = np.random.default_rng(3)
    client = redis.Redis.from_url(redis_url)
    pipe = client.pipeline(transaction=False)
    for arm, version, rate, first in (
        ("canary", 3, canary_ctr, 1),
        ("stable", 2, stable_ctr, 10**6),
    ):
        for user in range(first, first + users):
            for _ in range(4):
                movies = list(range(100, 110))
                clicked = [m for m in movies if rng.random() < rate]
                write_impression(client, prefix, user_id=user, version=version, arm=arm,
                                 movies=movies, clicks=clicked, pipe=pipe,
                                 ts_ms=ts_ms)  # fmt: skip
        pipe.execute()
    client.close()


def _rollout(model_dir: Path, *args: str):  # noqa: ANN202
    return runner.invoke(app, ["rollout", "--model-dir", str(model_dir), *args])


def _judge(model_dir: Path, redis_url: str, prefix: str, *args: str):  # noqa: ANN202
    return _rollout(model_dir, "--judge", "--redis-url", redis_url, "--prefix", prefix,
                    "--min-users", "50", *args)  # fmt: skip


def test_judge_promotes_a_better_canary_and_auto_writes_it(
    canary_dir: Path, redis_url: str, feature_prefix: str
) -> None:
    _log(redis_url, feature_prefix, canary_ctr=0.06, stable_ctr=0.03, users=150)
    result = _judge(canary_dir, redis_url, feature_prefix)
    assert result.exit_code == 0, result.output
    first, *rest = result.output.splitlines()
    assert first.startswith("promote: the canary is better: clicks per impression canary 0.")
    assert "Λ = " in first and "≥ 1/α = 20" in first
    assert "canary 3: 150 users, 600 impressions" in result.output
    assert "(since canary 3 started)" in result.output
    assert "error guard: skipped (no --metrics-url)" in result.output
    assert rollout.read_policy(canary_dir).canary == 3  # without --auto nothing changes

    result = _judge(canary_dir, redis_url, feature_prefix, "--auto")
    assert result.exit_code == 0, result.output
    assert "wrote " in result.output and "stable 3, previous 2" in result.output
    policy = rollout.read_policy(canary_dir)
    assert (policy.stable, policy.canary, policy.previous) == (3, None, 2)


def test_judge_rolls_back_a_worse_canary_with_auto(
    canary_dir: Path, redis_url: str, feature_prefix: str
) -> None:
    _log(redis_url, feature_prefix, canary_ctr=0.015, stable_ctr=0.03, users=300)
    result = _judge(canary_dir, redis_url, feature_prefix, "--auto")
    assert result.exit_code == 0, result.output
    assert result.output.startswith("roll back: the canary is worse")
    policy = rollout.read_policy(canary_dir)
    assert (policy.stable, policy.canary, policy.previous) == (2, None, 1)


def test_judge_keeps_collecting_on_too_little_and_auto_writes_nothing(
    canary_dir: Path, redis_url: str, feature_prefix: str
) -> None:
    _log(redis_url, feature_prefix, canary_ctr=0.06, stable_ctr=0.03, users=20)
    result = _judge(canary_dir, redis_url, feature_prefix, "--auto")
    assert result.exit_code == 0, result.output
    assert result.output.startswith("keep collecting: 20 canary and 20 stable users so far")
    assert "--auto: nothing to write yet" in result.output
    assert rollout.read_policy(canary_dir).canary == 3


def test_the_window_starts_with_the_canary_not_a_later_change_of_its_share(
    canary_dir: Path, redis_url: str, feature_prefix: str
) -> None:
    now = _canary_started_two_hours_ago(canary_dir)
    ninety_minutes_ago = int((now - timedelta(minutes=90)).timestamp() * 1000)
    _log(redis_url, feature_prefix, canary_ctr=0.06, stable_ctr=0.03, users=150,
         ts_ms=ninety_minutes_ago)  # fmt: skip
    assert _rollout(canary_dir, "--canary", "3", "--percent", "30").exit_code == 0  # share only
    result = _judge(canary_dir, redis_url, feature_prefix)
    assert result.exit_code == 0, result.output
    assert result.output.startswith("promote: ")
    assert "canary 3: 150 users, 600 impressions" in result.output
    window = next(line for line in result.output.splitlines() if line.startswith("window: "))
    assert window.endswith("(since canary 3 started)")
    assert f"{now - timedelta(hours=2):%Y-%m-%d %H:%M}" in window


def _canary_started_two_hours_ago(canary_dir: Path) -> datetime:
    """The policy's canary marked as started two hours ago; returns now."""
    now = datetime.now(UTC)
    policy = rollout.read_policy(canary_dir)
    started = (now - timedelta(hours=2)).isoformat(timespec="seconds")
    rollout.write_policy(canary_dir, policy.model_copy(update={"canary_since": started}))
    return now


def _trim(redis_url: str, prefix: str, length: int) -> None:
    """Every impression stream capped as the service's XADD does (MAXLEN ~ ``length``)."""
    client = redis.Redis.from_url(redis_url)
    for shard in range(event_log.LOG_SHARDS):
        client.xtrim(event_log.impressions_key(prefix, shard), maxlen=length, approximate=True)
    client.close()


def test_a_window_the_log_was_trimmed_past_is_not_judged_and_status_warns(
    canary_dir: Path, redis_url: str, feature_prefix: str
) -> None:
    now = _canary_started_two_hours_ago(canary_dir)
    _log(redis_url, feature_prefix, canary_ctr=0.06, stable_ctr=0.03, users=150,
         ts_ms=int((now - timedelta(minutes=90)).timestamp() * 1000))  # fmt: skip
    assert _judge(canary_dir, redis_url, feature_prefix).output.startswith("promote: ")
    _trim(redis_url, feature_prefix, 50)  # a small stream length

    result = _judge(canary_dir, redis_url, feature_prefix, "--auto")
    assert result.exit_code == 1
    assert len(result.output.strip().splitlines()) == 1, result.output
    line = " ".join(result.output.split())
    assert "not judged: the impression log was trimmed: a stream now begins at " in line
    assert "raise the service's AFM_LOG_STREAM_MAX_LENGTH" in line
    assert "judge a --window that starts after " in line
    assert rollout.read_policy(canary_dir).canary == 3  # nothing written

    status = _rollout(canary_dir, "--status", "--redis-url", redis_url, "--prefix",
                      feature_prefix, "--window", "2h")  # fmt: skip
    assert status.exit_code == 0, status.output
    warning = next(x for x in status.output.splitlines() if x.startswith("warning: "))
    assert "the impression log was trimmed" in warning and "the streams keep about" in warning
    # A guard decides whatever the clicks, so it decides on a trimmed log too.
    with _serving(ERRORS) as url:
        guarded = _judge(canary_dir, redis_url, feature_prefix, "--metrics-url", url)
    assert guarded.exit_code == 0, guarded.output
    assert guarded.output.startswith("roll back: the canary's error rate is worse")
    assert "warning: the impression log was trimmed" in guarded.output


@pytest.fixture
def metrics_url() -> Iterator[str]:
    """A /metrics where canary version 3 answered 5xx far more often than stable 2."""
    with _serving(ERRORS) as url:
        yield url


ERRORS = (
    b"# TYPE afm_scored_request_duration_seconds histogram\n"
    b'afm_scored_request_duration_seconds_count{route="/score",version="2",arm="stable",'
    b'status="200"} 5000.0\n'
    b'afm_scored_request_duration_seconds_count{route="/score",version="2",arm="stable",'
    b'status="500"} 2.0\n'
    b'afm_scored_request_duration_seconds_count{route="/score",version="3",arm="canary",'
    b'status="200"} 1000.0\n'
    b'afm_scored_request_duration_seconds_count{route="/score",version="3",arm="canary",'
    b'status="503"} 30.0\n'
)


@contextlib.contextmanager
def _serving(text: bytes) -> Iterator[str]:
    """The URL of a /metrics answering ``text``."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            self.send_response(200)
            self.send_header("content-type", "text/plain; version=0.0.4")
            self.end_headers()
            self.wfile.write(text)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/metrics"
    finally:
        server.shutdown()
        server.server_close()


def test_a_canary_with_a_worse_error_rate_is_rolled_back_whatever_its_clicks(
    canary_dir: Path, redis_url: str, feature_prefix: str, metrics_url: str
) -> None:
    _log(redis_url, feature_prefix, canary_ctr=0.06, stable_ctr=0.03, users=150)
    result = _judge(canary_dir, redis_url, feature_prefix, "--metrics-url", metrics_url)
    assert result.exit_code == 0, result.output
    assert result.output.startswith(
        "roll back: the canary's error rate is worse (5xx rate canary 2.91% (30/1,030), "
        "stable 0.04% (2/5,002)"
    )


def _latency(version: int, arm: str, within_10ms: int, requests: int, total_s: float) -> bytes:
    """/score requests of one version and arm answered 200: ``within_10ms`` of them within
    10 ms, the rest within 100 ms."""
    labels = f'arm="{arm}",route="/score",status="200",version="{version}"'
    name = "afm_scored_request_duration_seconds"
    return (
        f'{name}_bucket{{{labels},le="0.01"}} {within_10ms}.0\n'
        f'{name}_bucket{{{labels},le="0.1"}} {requests}.0\n'
        f'{name}_bucket{{{labels},le="+Inf"}} {requests}.0\n'
        f"{name}_count{{{labels}}} {requests}.0\n{name}_sum{{{labels}}} {total_s}\n"
    ).encode()


def test_a_canary_slower_than_stable_is_rolled_back_whatever_its_clicks(
    canary_dir: Path, redis_url: str, feature_prefix: str
) -> None:
    _log(redis_url, feature_prefix, canary_ctr=0.06, stable_ctr=0.03, users=150)
    text = _latency(2, "stable", 2000, 2000, 10.0) + _latency(3, "canary", 700, 1000, 20.0)
    with _serving(text) as url:
        lax = _judge(canary_dir, redis_url, feature_prefix, "--metrics-url", url,
                     "--max-latency-ratio", "20")  # fmt: skip
        result = _judge(canary_dir, redis_url, feature_prefix, "--metrics-url", url, "--auto")
    assert lax.exit_code == 0 and lax.output.startswith("promote: "), lax.output  # the clicks
    assert "latency guard: " in lax.output and ": not worse" in lax.output
    assert result.exit_code == 0, result.output
    first = result.output.splitlines()[0]
    assert first.startswith("roll back: the canary is slower (mean 4.00x, p99 9.80x stable's")
    assert "canary mean 20 ms, p99 97 ms (1,000 requests)" in first
    assert any(
        line.startswith("latency guard: ") and line.endswith(": WORSE")
        for line in result.output.splitlines()
    ), result.output
    policy = rollout.read_policy(canary_dir)
    assert (policy.stable, policy.canary) == (2, None)


def test_an_unreachable_metrics_url_is_one_error_line(
    canary_dir: Path, redis_url: str, feature_prefix: str
) -> None:
    result = _judge(canary_dir, redis_url, feature_prefix, "--metrics-url", "http://127.0.0.1:1/")
    assert result.exit_code == 1
    assert len(result.output.strip().splitlines()) == 1, result.output
    assert "cannot read http://127.0.0.1:1/ for the error rates" in result.output


def test_status_with_redis_shows_online_ctr_per_version_and_arm(
    canary_dir: Path, redis_url: str, feature_prefix: str
) -> None:
    _log(redis_url, feature_prefix, canary_ctr=0.06, stable_ctr=0.03, users=30)
    result = _rollout(canary_dir, "--status", "--redis-url", redis_url, "--prefix",
                      feature_prefix, "--window", "10m")  # fmt: skip
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0] == "stable 2, canary 3 for 20% of users, previous 1 kept for rollback"
    assert "online CTR" in lines[1] and "(240 impressions;" in lines[1]
    assert any(line.split()[:3] == ["2/stable", "30", "120"] for line in lines), lines
    assert any(line.split()[:3] == ["3/canary", "30", "120"] for line in lines), lines
    assert "clicks per reply showing a position (0 = top" in result.output
    assert any(line.strip().startswith("9 ") for line in lines)  # ten positions shown


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["--judge"], 2, "--judge needs --redis-url (or AFM_REDIS_URL)"),
        (["--auto"], 2, "--auto goes with --judge"),
        (["--judge", "--promote"], 2, "give one action, not --promote and --judge"),
        (["--status", "--redis-url", "redis://x", "--window", "soon"], 2, "'soon' is not a"),
        (["--status", "--window", "1h"], 2, "--window goes with --redis-url"),
    ],
)
def test_judge_usage_errors(canary_dir: Path, args: list[str], code: int, message: str) -> None:
    result = _rollout(canary_dir, *args)
    assert result.exit_code == code
    assert message in " ".join(result.output.split())


def test_judge_without_a_canary_is_one_error_line(
    tmp_path: Path, redis_url: str, feature_prefix: str
) -> None:
    _versions(tmp_path, 1, 2)
    rollout.write_policy(tmp_path, RolloutPolicy(stable=2))
    result = _judge(tmp_path, redis_url, feature_prefix)
    assert result.exit_code == 1
    assert len(result.output.strip().splitlines()) == 1, result.output
    assert result.output.strip().endswith(
        "no canary to judge (start one with --canary VERSION --percent P)"
    )
