"""The online CTR reader and `afm-ctr rollout --judge --redis-cluster` on a real Redis Cluster:
the log's streams and per-impression hashes spread over the masters, read through the same
contract keys."""

from __future__ import annotations

from pathlib import Path

import pytest
from redis.cluster import RedisCluster
from typer.testing import CliRunner

from model.cli.main import app
from model.contracts import event_log, rollout
from model.contracts.rollout import RolloutPolicy
from model.online import ctr, log_reader
from tests.integration.cluster.conftest import LocalCluster
from tests.unit.model.impression_log import write_impression
from tests.unit.model.test_rollout_policy import _versions

pytestmark = pytest.mark.integration

T0 = 1_800_000_000_000


def test_the_window_is_read_from_every_master(cluster: LocalCluster) -> None:
    client = RedisCluster.from_url(cluster.url)
    for user in range(1, 81):
        write_impression(client, "ctr:", user_id=user, version=3 + user % 2,
                         arm="canary" if user % 2 else "stable", movies=[1, 2, 3],
                         clicks=[2] if user % 4 == 1 else [], ts_ms=T0 - 60_000)  # fmt: skip
    masters = {
        client.get_node_from_key(event_log.impressions_key("ctr:", s)).port
        for s in range(event_log.LOG_SHARDS)
    }
    assert len(masters) > 1  # the shards do spread
    read = log_reader.read_window(log_reader.connect(cluster.url, cluster=True), "ctr:",
                                  T0 - 3_600_000, T0)  # fmt: skip
    samples = ctr.per_user(read.impressions)
    assert (read.without_hash, read.unreadable) == (0, 0)
    assert samples[(4, "canary")].total_clicks == 20 and samples[(3, "stable")].total_clicks == 0
    assert samples[(4, "canary")].users.size == samples[(3, "stable")].users.size == 40
    client.close()


def test_judge_reads_a_cluster(cluster: LocalCluster, tmp_path: Path) -> None:
    _versions(tmp_path, 1, 2)
    rollout.write_policy(tmp_path, RolloutPolicy(stable=1, canary=2, percent=50))
    client = RedisCluster.from_url(cluster.url)
    for user in range(1, 21):
        write_impression(client, "judge:", user_id=user, version=1 + user % 2,
                         arm="canary" if user % 2 else "stable", movies=[1, 2])  # fmt: skip
    result = CliRunner(env={"COLUMNS": "300"}).invoke(
        app,
        ["rollout", "--model-dir", str(tmp_path), "--judge", "--redis-url", cluster.url,
         "--redis-cluster", "--prefix", "judge:"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert result.output.startswith("keep collecting: 10 canary and 10 stable users so far")
    client.close()
