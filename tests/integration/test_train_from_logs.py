"""``afm-ctr train --from-logs``: training on exported impressions with the features as they
were served (the feature store changed since must not leak in), split by time."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import redis

from model.contracts import feature_layout
from model.contracts.export_format import HISTORY_FIELDS, LAST_WATCHED, read_metadata
from model.data.click_logs import LogExporter
from model.data.load_features import load_features
from model.data.logged_rows import read_logged_rows
from service.feature_store import last_watched
from tests.conftest import remove_prefix, run_cli
from tests.integration.click_log_helpers import BASE_MS, log_impression, user_features

pytestmark = pytest.mark.integration

USERS, MOVIES, IMPRESSIONS, SHOWN = 30, 24, 200, 5
MINUTE_MS = 60_000


@dataclass(frozen=True)
class Log:
    """An exported log, and what its impressions served versus today's feature store."""

    out: Path
    served_zips: set[str]
    today_zips: set[str]
    served_watched: set[tuple[str, str]]  # (watched, last_watched) as served
    impressions: list[tuple[str, int]]  # (impression id, ts), in time order
    clicks: int


def _feature_set(version: int) -> tuple[dict, dict, list[str], list[str]]:
    """Users, movies, watched strings and their times of load ``version``: every value
    changes with it."""
    ids = np.arange(1, USERS + 1)
    users = {
        name: np.array([user_features(u)[name] for u in ids]) for name in feature_layout.USER_FIELDS
    }
    users["zip"] = np.array([f"{version}{u:04d}" for u in ids])
    users = {"user_id": ids.astype(str), **users}
    movie_ids = np.arange(1, MOVIES + 1)
    genres = ("Action", "Comedy", "Drama")
    movies = {
        "movie_id": movie_ids.astype(str),
        "title": np.array([f"Movie {m}" for m in movie_ids]),
        "year": np.array([str(1990 + m + version) for m in movie_ids]),
        "genres": np.array([genres[(m + version) % 3] for m in movie_ids]),
    }
    watched = [f"{(u + version) % MOVIES + 1}|{(u * version) % MOVIES + 1}" for u in ids]
    watched_at = [str(BASE_MS // 1000 - 600 * u * version) for u in ids]
    return users, movies, watched, watched_at


def _served(client: redis.Redis, prefix: str, user_id: int, movies: list[int], ts: int) -> tuple:
    """What the service reads for a request at ``ts`` (ms): the user's and the movies'
    current features, LAST_WATCHED as of ``ts``."""
    namespace = client.get(feature_layout.pointer_key(prefix))
    user = feature_layout.decode_user(client.hgetall(feature_layout.user_key(namespace, user_id)))
    user[LAST_WATCHED] = last_watched(user[feature_layout.WATCHED_AT], ts / 1000)
    table = client.hmget(feature_layout.movies_key(namespace), [str(m) for m in movies])
    movie_features = {
        m: {k: v for k, v in feature_layout.decode_movie(raw).items() if k != "title"}
        for m, raw in zip(movies, table, strict=True)
    }
    return user, movie_features


@pytest.fixture(scope="module")
def exported_log(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Log]:
    """200 impressions served from feature load 1, then load 2 in Redis, then the export."""
    prefix = f"test:{uuid.uuid4().hex}:"
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    users, movies, watched, watched_at = _feature_set(1)
    load_features(users, movies, redis_url, prefix, watched=watched, watched_at=watched_at)
    rng = np.random.default_rng(5)
    impressions, clicks, served_watched = [], 0, set()
    for i in range(IMPRESSIONS):
        user = int(rng.integers(1, USERS + 1))
        shown = [int(m) for m in rng.choice(np.arange(1, MOVIES + 1), SHOWN, replace=False)]
        ts = BASE_MS + i * MINUTE_MS
        user_served, movie_served = _served(client, prefix, user, shown, ts)
        clicked = [m for m in shown if (user + m) % 4 == 0][:1] or ([shown[0]] if i % 3 else [])
        impression = log_impression(
            client, prefix, user_id=user, ts_ms=ts, movies=shown, user_features=user_served,
            movie_features=movie_served, clicks=clicked,
        )  # fmt: skip
        impressions.append((impression, ts))
        clicks += len(clicked)
        served_watched.add((user_served["watched"], user_served[LAST_WATCHED]))
    today_users, today_movies, today_watched, today_at = _feature_set(2)
    load_features(
        today_users, today_movies, redis_url, prefix, watched=today_watched, watched_at=today_at
    )
    out = tmp_path_factory.mktemp("log")
    summary = LogExporter(client, prefix, out, batch=64).export()
    assert (summary.impressions, summary.clicks) == (IMPRESSIONS, clicks)
    yield Log(out, set(users["zip"]), set(today_users["zip"]), served_watched, impressions, clicks)
    client.close()
    remove_prefix(redis_url, prefix)


def test_training_rows_carry_the_features_as_served_not_todays_feature_store(
    exported_log: Log,
) -> None:
    data = read_logged_rows(exported_log.out, "history")
    assert set(data.users["zip"]) <= exported_log.served_zips
    assert not set(data.users["zip"]) & exported_log.today_zips
    served = set(zip(data.histories, data.last_watched, strict=True))
    assert served == exported_log.served_watched
    assert len({value for _, value in served}) > 2  # by user and time
    raw = data.raw(data.train, HISTORY_FIELDS)
    # load 1's years are 1991 + movie id; load 2's would be 1992 + movie id
    assert all(int(y) == 1991 + int(m) for y, m in zip(raw["year"], raw["movie_id"], strict=True))
    assert len(data.vocabularies(HISTORY_FIELDS)["zip"]) == len(set(raw["zip"]))


def test_rows_are_split_by_impression_time_the_latest_for_validation_and_test(
    exported_log: Log,
) -> None:
    data = read_logged_rows(exported_log.out, "all")
    summary = data.summary()
    assert [summary[s]["rows"] // SHOWN for s in ("train", "valid", "test")] == [160, 20, 20]
    assert sum(part["positives"] for part in summary.values()) == exported_log.clicks
    window = data.extra["log"]
    ordered = exported_log.impressions
    assert window["impressions"] == IMPRESSIONS and window["rows"] == IMPRESSIONS * SHOWN
    assert window["first_impression"] == "2023-11-14T22:13:20.000+00:00"
    assert window["valid_from"] == _iso(ordered[160][1])
    assert window["test_from"] == _iso(ordered[180][1])
    assert window["last_impression"] == _iso(ordered[-1][1])
    assert window["clicks"] == exported_log.clicks


def _iso(ms: int) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds")


def test_train_from_logs_exports_a_version_whose_metadata_names_the_log_window(
    exported_log: Log, tmp_path: Path
) -> None:
    result = run_cli(
        "train", "--from-logs", str(exported_log.out), "--fields", "history", "--epochs", "1",
        "--embedding-dim", "4", "--attention-factor", "2", "--batch-size", "256",
        "--model-dir", str(tmp_path),
    )  # fmt: skip
    assert result.stdout.strip() == f"exported {tmp_path / '1'}"
    assert "[data] 1,000 logged rows of 200 impressions" in result.stderr
    meta = read_metadata(tmp_path / "1")
    assert tuple(meta.fields) == HISTORY_FIELDS and meta.protocol == "logs"
    window = meta.data["log"]
    assert (window["files"], window["rows"], window["clicks"]) == (
        len(list(exported_log.out.glob("hour=*/*.parquet"))),
        IMPRESSIONS * SHOWN,
        exported_log.clicks,
    )
    assert window["first_impression"] == _iso(exported_log.impressions[0][1])
    assert window["last_impression"] == _iso(exported_log.impressions[-1][1])
    assert meta.hyperparameters["data"] == {"from_logs": str(exported_log.out)}
    vocabularies = json.loads((tmp_path / "1" / "vocabularies.json").read_text())
    assert set(vocabularies["zip"]) <= exported_log.served_zips  # never today's


def test_an_empty_log_a_log_without_clicks_and_a_missing_field_are_refused_in_one_line(
    client_prefix: tuple[redis.Redis, str], tmp_path: Path
) -> None:
    client, prefix = client_prefix
    empty = _train_refusal(tmp_path / "empty", "all", mkdir=True)
    assert empty == f"error: no exported impressions under {tmp_path / 'empty'}; run " + (
        f"`afm-ctr logs export --out {tmp_path / 'empty'}` first"
    )
    features = {k: v for k, v in user_features(4).items() if k not in ("last_watched", "watched")}
    for i in range(3):
        log_impression(
            client, prefix, user_id=4, ts_ms=BASE_MS + i, movies=[1, 2], user_features=features
        )
    LogExporter(client, prefix, tmp_path / "quiet").export()
    assert _train_refusal(tmp_path / "quiet", "all") == (
        f"error: the 6 logged rows under {tmp_path / 'quiet'} hold no click: nothing to learn "
        "from yet (export again once people have clicked)"
    )
    assert _train_refusal(tmp_path / "quiet", "history") == (
        f"error: none of the 6 logged rows under {tmp_path / 'quiet'} carries last_watched, "
        "watched: the "
        "versions served did not log it; train with another --fields"
    )


@pytest.fixture
def client_prefix(redis_url: str, feature_prefix: str) -> Iterator[tuple[redis.Redis, str]]:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    yield client, feature_prefix
    client.close()


def _train_refusal(log_dir: Path, fields: str, mkdir: bool = False) -> str:
    if mkdir:
        log_dir.mkdir()
    result = run_cli(
        "train", "--from-logs", str(log_dir), "--fields", fields,
        "--model-dir", str(log_dir.parent / "models"), check=False,
    )  # fmt: skip
    assert result.returncode == 1, result.stderr
    assert not (log_dir.parent / "models").exists()
    [line] = result.stderr.strip().splitlines()
    return line
