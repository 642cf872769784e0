"""The impression log across a Redis restart under load, with append-only persistence on
(fsync always: what Redis acknowledged is on disk): no /score fails because of logging,
every impression id a reply carried is exported exactly once or counted dropped in
/metrics, and the two add up. A real redis-server, the real service on a real uvicorn,
clients posting back to back, the real exporter."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import httpx
import pytest
import redis

from model.data.click_logs import LogExporter
from model.data.load_features import load_features
from model.data.movielens import FeatureSet
from service.settings import Settings
from tests.integration.click_log_helpers import exported_rows
from tests.integration.serving.helpers import Hammer, RedisProcess, ServerThread, wait_until

pytestmark = pytest.mark.integration

PREFIX = "restart:"


def _counters(url: str) -> dict[str, float]:
    """The impression log's series in /metrics: logged, dropped (all reasons), buffered."""
    totals = {"logged": 0.0, "dropped": 0.0, "buffered": 0.0}
    for line in httpx.get(f"{url}/metrics").text.splitlines():
        name = line.split("{")[0].split(" ")[0]
        kind = {
            "afm_impressions_logged_total": "logged",
            "afm_impressions_dropped_total": "dropped",
            "afm_impressions_buffered": "buffered",
        }.get(name)
        if kind:
            totals[kind] += float(line.rsplit(" ", 1)[1])
    return totals


def test_a_redis_restart_under_load_neither_loses_nor_repeats_an_acknowledged_impression(
    tmp_path: Path, trained_model_dir: Path, synthetic_feature_set: FeatureSet
) -> None:
    data = tmp_path / "redis"
    data.mkdir()
    server = RedisProcess(
        options=["--appendonly", "yes", "--appendfsync", "always", "--dir", str(data)]
    ).start()
    try:
        fs = synthetic_feature_set
        load_features(fs.users, fs.movies, server.url, PREFIX, source=fs.source)
        settings = Settings(
            model_dir=trained_model_dir,
            redis_url=server.url,
            redis_prefix=PREFIX,
            impression_keys="k1:restart-secret",
            reload_interval=0,
            access_log=False,
        )
        with ServerThread(settings) as api:
            wait_until(lambda: httpx.get(f"{api.url}/readyz").status_code == 200, what="ready")
            users = [list(range(1 + i, 200, 4)) for i in range(4)]
            with Hammer(api.url, users=users) as hammer:
                wait_until(lambda: len(hammer.impression_ids) >= 300, what="traffic")
                server.stop()  # SIGTERM: Redis writes its append-only file and exits
                server.start()  # and reads it back
                before = len(hammer.impression_ids)
                wait_until(lambda: len(hammer.impression_ids) >= before + 300, what="traffic")
            issued = list(hammer.impression_ids)
            # Only the feature read may fail while Redis is away (503), never the log.
            assert set(hammer.statuses()) <= {200, 503}, Counter(hammer.statuses())
            wait_until(
                lambda: (
                    (c := _counters(api.url))["buffered"] == 0
                    and c["logged"] + c["dropped"] == len(issued)
                ),
                what="every impression logged or counted dropped",
            )
            counted = _counters(api.url)
        client = redis.Redis.from_url(server.url, decode_responses=True)
        LogExporter(client, PREFIX, tmp_path / "out", flush=True).export()
        client.close()
    finally:
        server.stop()
    rows = exported_rows(tmp_path / "out")
    exported = Counter(row["impression_id"] for row in rows)
    assert len(issued) == len(set(issued))
    assert set(exported) <= set(issued)
    assert set(exported.values()) == {10}  # once each: top_k 10 rows per impression
    assert len(exported) == counted["logged"]
    assert len(issued) - len(exported) == counted["dropped"]
    # The restart took far less than the time a failed batch is sent again for.
    assert counted["dropped"] == 0
