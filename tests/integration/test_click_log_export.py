"""``afm-ctr logs export`` against a real Redis: rows, labels, hold-back, and a kill at any
point followed by a restart losing and duplicating nothing."""

from __future__ import annotations

import collections
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis

from model.contracts import event_log
from model.data import click_logs
from model.data.click_log_files import CRASH_ENV, TMP_PREFIX
from tests.conftest import REPO_ROOT, run_cli
from tests.integration.click_log_helpers import (
    BASE_MS,
    HOUR_MS,
    exported_rows,
    log_event,
    log_impression,
    user_features,
    users_in_shard,
)

pytestmark = pytest.mark.integration


@pytest.fixture
def client(redis_url: str) -> redis.Redis:
    return redis.Redis.from_url(redis_url, decode_responses=True)


def export(redis_url: str, prefix: str, out: Path, *flags: str, env: dict | None = None):
    return run_cli(
        "logs", "export", "--out", str(out), "--redis-url", redis_url, "--prefix", prefix, *flags,
        env=env, check=env is None,
    )  # fmt: skip


def pending(client: redis.Redis, prefix: str) -> int:
    return len(_pending_ids(client, prefix))


def test_export_writes_one_row_per_shown_movie_with_labels_positions_and_logged_features(
    client: redis.Redis, redis_url: str, feature_prefix: str, tmp_path: Path
) -> None:
    first = log_impression(
        client, feature_prefix, user_id=7, ts_ms=BASE_MS, movies=[50, 181, 1],
        user_features=user_features(7, watched="3|2"), clicks=[181], version=3, arm="canary",
    )  # fmt: skip
    second = log_impression(
        client, feature_prefix, user_id=8, ts_ms=BASE_MS + HOUR_MS, movies=[9, 50],
        user_features=user_features(8), clicks=[9, 50],
    )  # fmt: skip
    log_event(client, feature_prefix, first, 7, 1, "view", BASE_MS + 500)
    log_event(client, feature_prefix, first, 7, 181, "click", BASE_MS + 900)  # a repeat: no-op

    result = export(redis_url, feature_prefix, tmp_path)

    assert result.stdout.strip() == (
        "exported 2 impressions (5 rows, 3 clicks) in 2 files; dropped 0 clicks on movies "
        "not shown; held back 0 impressions"
    )
    wrote = re.findall(r"^\[logs\] wrote (hour=\S+): (\d+) rows", result.stderr, re.MULTILINE)
    assert sorted(wrote) == [
        (f"hour=2023-11-14T22/{_name(client, feature_prefix, 7)}", "3"),
        (f"hour=2023-11-14T23/{_name(client, feature_prefix, 8)}", "2"),
    ]
    rows = {(r["impression_id"], r["movie_id"]): r for r in exported_rows(tmp_path)}
    assert len(rows) == 5
    row = rows[(first, "181")]
    assert (row["label"], row["position"], row["score"], row["model_version"], row["arm"]) == (
        1, 1, 0.8, 3, "canary",
    )  # fmt: skip
    assert row["user_id"] == "7" and row["ts"].timestamp() * 1000 == BASE_MS
    logged = ("gender", "age", "occupation", "zip", "last_watched", "watched")
    assert {k: row[k] for k in logged} == user_features(7, watched="3|2")
    assert (row["year"], row["genres"]) == ("1981", "Comedy|Comedy")
    assert [rows[(first, m)]["label"] for m in ("50", "181", "1")] == [0, 1, 0]
    assert [rows[(first, m)]["view"] for m in ("50", "181", "1")] == [0, 0, 1]
    assert [rows[(second, m)]["label"] for m in ("9", "50")] == [1, 1]
    assert pending(client, feature_prefix) == 0
    again = export(redis_url, feature_prefix, tmp_path)  # nothing new: nothing written twice
    assert again.stdout.startswith("exported 0 impressions (0 rows, 0 clicks) in 0 files")
    assert len(exported_rows(tmp_path)) == 5


def _name(client: redis.Redis, prefix: str, user_id: int) -> str:
    """The file name of the one entry in ``user_id``'s impression stream."""
    shard = event_log.shard(user_id)
    [(stream_id, _)] = client.xrange(event_log.impressions_key(prefix, shard))
    return f"s{shard}_{stream_id}_{stream_id}.parquet"


def test_clicks_on_movies_not_shown_are_dropped_and_counted(
    client: redis.Redis, redis_url: str, feature_prefix: str, tmp_path: Path
) -> None:
    shown = log_impression(
        client, feature_prefix, user_id=5, ts_ms=BASE_MS, movies=[10, 11],
        user_features=user_features(5), clicks=[11, 999],
    )  # fmt: skip
    log_event(client, feature_prefix, shown, 5, 998, "view", BASE_MS + 10)  # not a click
    result = export(redis_url, feature_prefix, tmp_path)
    assert "2 rows, 1 clicks" in result.stdout and "dropped 1 clicks" in result.stdout
    assert sorted((r["movie_id"], r["label"]) for r in exported_rows(tmp_path)) == [
        ("10", 0), ("11", 1),
    ]  # fmt: skip


def test_open_windows_are_held_back_until_they_close_or_flush(
    client: redis.Redis, redis_url: str, feature_prefix: str, tmp_path: Path
) -> None:
    [old_user, new_user] = users_in_shard(2, 2)  # one stream: the open one stops it
    now_ms = int(time.time() * 1000)
    log_impression(
        client, feature_prefix, user_id=old_user, ts_ms=now_ms - 2 * HOUR_MS, movies=[1, 2],
        user_features=user_features(old_user), clicks=[2],
    )  # fmt: skip
    fresh = log_impression(
        client, feature_prefix, user_id=new_user, ts_ms=now_ms - 1000, movies=[3, 4],
        user_features=user_features(new_user),
    )  # fmt: skip
    exporter = click_logs.LogExporter(client, feature_prefix, tmp_path)
    summary = exporter.export()
    assert (summary.impressions, summary.rows, summary.clicks, summary.held_back) == (1, 2, 1, 1)
    assert pending(client, feature_prefix) == 1  # read, left pending for the next run

    log_event(client, feature_prefix, fresh, new_user, 4, "click", now_ms)
    assert exporter.export().impressions == 0
    # A short window has closed: the pending entry is re-read first, with its click.
    result = export(redis_url, feature_prefix, tmp_path, "--attribution-window", "0")
    assert "exported 1 impressions (2 rows, 1 clicks)" in result.stdout
    assert "held back 0 impressions" in result.stdout

    late = log_impression(
        client, feature_prefix, user_id=new_user, ts_ms=int(time.time() * 1000), movies=[5, 6],
        user_features=user_features(new_user), clicks=[5],
    )  # fmt: skip
    assert exporter.export().held_back == 1
    result = export(redis_url, feature_prefix, tmp_path, "--flush")
    assert "exported 1 impressions (2 rows, 1 clicks)" in result.stdout
    labels = {(r["impression_id"], r["movie_id"]): r["label"] for r in exported_rows(tmp_path)}
    assert [labels[(fresh, "3")], labels[(fresh, "4")]] == [0, 1]
    assert [labels[(late, "5")], labels[(late, "6")]] == [1, 0]
    assert len(labels) == 6 and pending(client, feature_prefix) == 0


def test_killed_before_the_rename_or_the_ack_a_restart_loses_and_duplicates_nothing(
    client: redis.Redis, redis_url: str, feature_prefix: str, tmp_path: Path
) -> None:
    users = users_in_shard(4, 3) + users_in_shard(6, 2)
    expected = collections.Counter()
    for i in range(14):  # over two hours, so one batch may write two files
        user = users[i % len(users)]
        movies = [100 + i, 200 + i, 300 + i]
        impression = log_impression(
            client, feature_prefix, user_id=user, ts_ms=BASE_MS + i * HOUR_MS // 8,
            movies=movies, user_features=user_features(user), clicks=movies[i % 3 : i % 3 + 1],
        )  # fmt: skip
        expected.update((impression, str(m)) for m in movies)

    # After the second batch's files are renamed, before its XACK.
    killed = export(redis_url, feature_prefix, tmp_path, "--batch", "3",
                    env={CRASH_ENV: "before-ack:2"})  # fmt: skip
    assert killed.returncode == -9, killed.stderr
    written = exported_rows(tmp_path)
    assert written and pending(client, feature_prefix) == 3  # acknowledged only after writing
    assert {r["stream_id"] for r in written} >= _pending_ids(client, feature_prefix)

    # Then during a write, before the rename: a partial file, its entries still pending.
    killed = export(redis_url, feature_prefix, tmp_path, "--batch", "3",
                    env={CRASH_ENV: "before-rename:2"})  # fmt: skip
    assert killed.returncode == -9, killed.stderr
    assert "3 impressions of shard 4 are in a file already" in killed.stderr
    assert list(tmp_path.glob(f"hour=*/{TMP_PREFIX}*"))
    assert pending(client, feature_prefix) > 0

    result = export(redis_url, feature_prefix, tmp_path, "--batch", "3")
    assert "held back 0 impressions" in result.stdout
    assert not list(tmp_path.glob(f"hour=*/{TMP_PREFIX}*"))
    rows = collections.Counter((r["impression_id"], r["movie_id"]) for r in exported_rows(tmp_path))
    assert rows == expected  # every logged row exactly once
    assert sum(r["label"] for r in exported_rows(tmp_path)) == 14
    assert pending(client, feature_prefix) == 0


def _pending_ids(client: redis.Redis, prefix: str) -> set[str]:
    """The entries read by the exporter's group and not acknowledged, over every shard."""
    ids = set()
    for shard in range(event_log.LOG_SHARDS):
        key = event_log.impressions_key(prefix, shard)
        try:
            entries = client.xpending_range(key, click_logs.GROUP, "-", "+", 1000)
        except redis.ResponseError:  # NOGROUP: the exporter has not reached this shard
            continue
        ids |= {entry["message_id"] for entry in entries}
    return ids


def test_a_reset_consumer_group_writes_nothing_twice(
    client: redis.Redis, feature_prefix: str, tmp_path: Path
) -> None:
    for user in (1, 2, 3):
        log_impression(
            client, feature_prefix, user_id=user, ts_ms=BASE_MS, movies=[1, 2],
            user_features=user_features(user),
        )  # fmt: skip
    assert click_logs.LogExporter(client, feature_prefix, tmp_path).export().impressions == 3
    for shard in range(event_log.LOG_SHARDS):  # e.g. a failover lost the group's progress
        client.xgroup_destroy(event_log.impressions_key(feature_prefix, shard), click_logs.GROUP)
    again = click_logs.LogExporter(client, feature_prefix, tmp_path).export()
    assert (again.impressions, again.already_exported, again.files) == (0, 3, 0)
    assert len(exported_rows(tmp_path)) == 6 and pending(client, feature_prefix) == 0


def test_unreadable_entries_are_skipped_and_acknowledged(
    client: redis.Redis, redis_url: str, feature_prefix: str, tmp_path: Path
) -> None:
    key = event_log.impressions_key(feature_prefix, event_log.shard(3))
    client.xadd(key, {"impression": "i1.x", "data": "{not json"})
    log_impression(
        client, feature_prefix, user_id=3, ts_ms=BASE_MS, movies=[1],
        user_features=user_features(3),
    )  # fmt: skip
    result = export(redis_url, feature_prefix, tmp_path)
    assert "exported 1 impressions (1 rows, 0 clicks)" in result.stdout
    assert "1 unreadable" in result.stdout and "is not readable" in result.stderr
    assert pending(client, feature_prefix) == 0


def test_impressions_trimmed_before_export_are_counted_and_named(
    client: redis.Redis, redis_url: str, feature_prefix: str, tmp_path: Path
) -> None:
    """Three exported, then eight more of which MAXLEN keeps two: six never read."""
    user = users_in_shard(0, 1)[0]

    def log(count: int, start: int) -> None:
        for i in range(count):
            log_impression(
                client, feature_prefix, user_id=user, ts_ms=BASE_MS + start + i, movies=[1],
                user_features=user_features(user),
            )  # fmt: skip

    log(3, 0)
    assert "exported 3 impressions" in export(redis_url, feature_prefix, tmp_path).stdout
    log(8, 10)
    client.xtrim(event_log.impressions_key(feature_prefix, 0), maxlen=2, approximate=False)
    result = export(redis_url, feature_prefix, tmp_path)
    assert "exported 2 impressions" in result.stdout
    assert "6 trimmed from the streams before export" in result.stdout
    assert "raise the service's AFM_LOG_STREAM_MAX_LENGTH" in result.stderr
    again = export(redis_url, feature_prefix, tmp_path)  # counted once, not at every pass
    assert "exported 0 impressions" in again.stdout and "trimmed" not in again.stdout


def test_a_second_exporter_into_the_same_directory_is_refused(
    redis_url: str, feature_prefix: str, tmp_path: Path
) -> None:
    with click_logs.export_lock(tmp_path):
        result = export(redis_url, feature_prefix, tmp_path, env={})
    assert result.returncode == 1
    assert result.stderr.strip() == f"error: another `afm-ctr logs export` is writing to {tmp_path}"


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_follow_exports_as_impressions_close_until_interrupted(
    client: redis.Redis, redis_url: str, feature_prefix: str, tmp_path: Path, stop: int
) -> None:
    """A signal stops the exporter after the pass under way: the rows a test sees in the
    files are in the totals it prints."""
    log_impression(
        client, feature_prefix, user_id=1, ts_ms=BASE_MS, movies=[1, 2],
        user_features=user_features(1), clicks=[1],
    )  # fmt: skip
    follower = subprocess.Popen(
        [sys.executable, "-m", "model.cli", "logs", "export", "--out", str(tmp_path),
         "--redis-url", redis_url, "--prefix", feature_prefix, "--follow", "--interval", "0.1"],
        cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        _wait_for_rows(tmp_path, 2)
        log_impression(
            client, feature_prefix, user_id=2, ts_ms=BASE_MS + 1, movies=[3, 4, 5],
            user_features=user_features(2), clicks=[5],
        )  # fmt: skip
        _wait_for_rows(tmp_path, 5)
        follower.send_signal(stop)
        out, err = follower.communicate(timeout=10)
    finally:
        follower.kill()
    assert follower.returncode == 0, err
    lines = out.strip().splitlines()
    assert lines[0].startswith("exported 1 impressions (2 rows, 1 clicks) in 1 files")
    assert lines[1].startswith("exported 1 impressions (3 rows, 1 clicks) in 1 files")
    assert lines[-1].startswith("stopped; in all, exported 2 impressions (5 rows, 2 clicks)")


def _wait_for_rows(out: Path, rows: int, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while len(exported_rows(out)) < rows:
        assert time.monotonic() < deadline, f"no {rows} rows under {out} in {timeout_s} s"
        time.sleep(0.05)
