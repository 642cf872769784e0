"""Features in a real Redis Cluster (three masters, three replicas): users spread over every
master, reloads never mix two loads, a failed load changes nothing, and a killed master costs
its users 503s with Retry-After until its replica takes over, never a 500 or wrong features."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import redis
from fastapi.testclient import TestClient
from redis.cluster import RedisCluster

from model.contracts import event_log, feature_layout
from model.contracts.export_format import LAST_WATCHED
from model.data.load_features import load_features
from model.errors import AfmError
from service.app import create_app
from service.feature_store import FeatureRead, FeatureStore
from service.settings import Settings
from tests.conftest import run_cli
from tests.integration.cluster.conftest import LocalCluster
from tests.integration.serving.helpers import wait_until

pytestmark = pytest.mark.integration

USERS = 300
MOVIES = 50


def _users(marker: str) -> dict[str, np.ndarray]:
    """USERS users whose every feature names ``marker`` and the user: "A:zip:7"."""
    ids = [str(i) for i in range(1, USERS + 1)]
    return {
        "user_id": np.array(ids),
        **{f: np.array([f"{marker}:{f}:{i}" for i in ids]) for f in feature_layout.USER_FIELDS},
    }


def _movies(marker: str) -> dict[str, np.ndarray]:
    ids = [str(i) for i in range(1, MOVIES + 1)]
    return {
        "movie_id": np.array(ids),
        "title": np.array([f"{marker}:title:{i}" for i in ids]),
        "year": np.full(MOVIES, f"{marker}:year"),
        "genres": np.full(MOVIES, f"{marker}:genres"),
    }


def _load(url: str, prefix: str, marker: str) -> None:
    watched = [f"{marker}:watched:{i}" for i in range(1, USERS + 1)]
    load_features(
        _users(marker),
        _movies(marker),
        url,
        prefix,
        source=f"load {marker}",
        cluster=True,
        watched=watched,
    )


def _marker(read: FeatureRead, user_id: str) -> str:
    """The one load every part of ``read`` comes from; fails on a mix or a wrong user."""
    assert read.user is not None, f"user {user_id} unknown"
    marked = (*feature_layout.USER_FIELDS, feature_layout.WATCHED)  # watched_at: none loaded
    markers = {read.user[f].split(":")[0] for f in marked}
    markers |= {f["year"].split(":")[0] for f in read.movies.values()}
    markers.add(read.meta.source.removeprefix("load "))
    assert len(markers) == 1, f"one read mixes loads {sorted(markers)}"
    (marker,) = markers
    assert read.user == {
        **{f: f"{marker}:{f}:{user_id}" for f in marked},
        feature_layout.WATCHED_AT: "",
        LAST_WATCHED: "",
    }
    assert len(read.movies) == MOVIES
    return marker


def _keys_per_master(cluster: LocalCluster, pattern: str) -> dict[int, list[bytes]]:
    found = {}
    for port in cluster.masters():
        client = redis.Redis(port=port)
        found[port] = list(client.scan_iter(match=pattern, count=1000))
        client.close()
    return found


@pytest.fixture(scope="module")
def client(cluster: LocalCluster) -> Iterator[RedisCluster]:
    client = RedisCluster.from_url(cluster.url)
    yield client
    client.close()


def test_users_spread_over_every_master(
    cluster: LocalCluster, client: RedisCluster, synthetic_dir: Path
) -> None:
    result = run_cli(
        "load-features", "--dataset", "synthetic", "--data-dir", str(synthetic_dir),
        "--redis-url", cluster.url, "--prefix", "spread:",
        env={"AFM_REDIS_CLUSTER": "1"},
    )  # fmt: skip
    assert "loaded 300 users" in result.stdout
    namespace = client.get("spread:current").decode()
    per_master = _keys_per_master(cluster, f"{namespace}user:*")
    counts = {port: len(keys) for port, keys in per_master.items()}
    assert len(counts) == 3 and sum(counts.values()) == 300
    # An even spread gives 100 each (binomial sd ~8): a master short of 60 means a hash tag.
    assert min(counts.values()) >= 60, counts


def test_reload_never_mixes_two_loads(cluster: LocalCluster, client: RedisCluster) -> None:
    _load(cluster.url, "reload:", "A")
    old = client.get("reload:current").decode()
    seen: list[str] = []
    during_load = 0

    async def read_during_load() -> None:
        nonlocal during_load
        store = FeatureStore.connect(cluster.url, "reload:", timeout=2.0, cluster=True)
        try:
            loading = asyncio.create_task(asyncio.to_thread(_load, cluster.url, "reload:", "B"))
            user = 0
            # Read all through the load and on until the store has switched to B.
            while not loading.done() or not seen or seen[-1] != "B":
                user_id = str(user % USERS + 1)
                seen.append(_marker(await store.read(user_id), user_id))
                during_load += not loading.done()
                user += 1
                await asyncio.sleep(0.002)
            await loading
        finally:
            await store.aclose()

    asyncio.run(asyncio.wait_for(read_during_load(), timeout=30))
    assert seen[0] == "A" and seen[-1] == "B" and during_load > 0
    assert "A" not in seen[seen.index("B") :], "a reader went back to the old load"

    # The old namespace is retired, not deleted: every key expires within the grace period.
    new = client.get("reload:current").decode()
    assert new != old
    old_keys = [key for keys in _keys_per_master(cluster, f"{old}*").values() for key in keys]
    assert len(old_keys) == USERS + 2  # users, movies, meta
    ttls = {client.ttl(key) for key in old_keys}
    assert all(0 < ttl <= feature_layout.CLUSTER_RETIRE_SECONDS for ttl in ttls), ttls
    assert client.ttl(f"{new}meta") == -1  # the live one never expires


def test_failed_load_changes_nothing(cluster: LocalCluster, client: RedisCluster) -> None:
    _load(cluster.url, "failed:", "A")
    pointer = client.get("failed:current")
    before = sorted(k for keys in _keys_per_master(cluster, "failed:*").values() for k in keys)
    # One master runs out of memory part-way through the next load: a real write failure.
    full = cluster.masters()[1]
    master = redis.Redis(port=full)
    used = int(master.info("memory")["used_memory"])
    master.config_set("maxmemory", str(used + 4096))
    try:
        with pytest.raises(AfmError, match="maxmemory"):
            _load(cluster.url, "failed:", "B")
    finally:
        master.config_set("maxmemory", "0")
        master.close()
    assert client.get("failed:current") == pointer
    after = sorted(k for keys in _keys_per_master(cluster, "failed:*").values() for k in keys)
    assert after == before

    async def read_one() -> FeatureRead:
        store = FeatureStore.connect(cluster.url, "failed:", timeout=2.0, cluster=True)
        try:
            return await store.read("5")
        finally:
            await store.aclose()

    assert _marker(asyncio.run(read_one()), "5") == "A"


def _without_impression(body: dict) -> dict:
    """A reply without its impression_id, which is new in every reply."""
    return {key: value for key, value in body.items() if key != "impression_id"}


def test_impressions_and_events_spread_over_the_masters(
    cluster: LocalCluster, client: RedisCluster, trained_model_dir: Path, tmp_path: Path
) -> None:
    """Each user's impressions and events land in the stream shard the contract names,
    so the log spreads over the masters; a click updates the watched movies of a user on
    any master (a one-key script); `logs export --redis-cluster` reads every shard."""
    _load(cluster.url, "evlog:", "A")
    namespace = client.get("evlog:current").decode()
    settings = Settings(
        model_dir=trained_model_dir,
        redis_url=cluster.url,
        redis_prefix="evlog:",
        redis_cluster=True,
        redis_timeout=2.0,
        impression_keys="k1:cluster-secret",
        reload_interval=0,
        access_log=False,
    )
    users = range(1, 25)
    with TestClient(create_app(settings)) as api:
        wait_until(lambda: api.get("/readyz").status_code == 200, what="/readyz to turn 200")
        replies = {
            user: api.post("/score", json={"user_id": user, "movie_ids": [1, 2, 3]}).json()
            for user in users
        }
        api.portal.call(api.app.state.impressions.flush)  # type: ignore[attr-defined]
        clicks = [
            {"impression_id": replies[user]["impression_id"], "movie_id": 2, "type": "click"}
            for user in users
        ]
        first = api.post("/events", json={"events": clicks}).json()
        again = api.post("/events", json={"events": clicks[:3]}).json()
        metrics = api.get("/metrics").text
    assert first["accepted"] == len(clicks) and again["duplicate"] == 3
    streams = _keys_per_master(cluster, "evlog:log:*s:*")
    assert sum(1 for keys in streams.values() if keys) >= 2, streams  # more than one master
    for user in users:
        shard = event_log.shard(user)
        entries = client.xrange(event_log.impressions_key("evlog:", shard))
        ids = {fields[b"impression"].decode() for _, fields in entries}
        assert replies[user]["impression_id"] in ids
        hashed = client.hgetall(event_log.impression_key("evlog:", replies[user]["impression_id"]))
        assert hashed[b"shown"] == b",".join(
            str(s["movie_id"]).encode() for s in replies[user]["scores"]
        )
        assert event_log.event_field(2, "click").encode() in hashed
        watched = client.hget(feature_layout.user_key(namespace, user), feature_layout.WATCHED)
        assert watched == f"2|A:watched:{user}".encode()
        watched_at = client.hget(
            feature_layout.user_key(namespace, user), feature_layout.WATCHED_AT
        )
        assert abs(float(watched_at) - time.time()) < 600  # the click's time, in the same hash
    logged = sum(
        float(line.split()[-1])
        for line in metrics.splitlines()
        if line.startswith("afm_log_stream_length{") and 'stream="impressions"' in line
    )
    assert logged >= len(users)
    exported = run_cli(
        "logs", "export", "--out", str(tmp_path / "log"), "--redis-url", cluster.url,
        "--redis-cluster", "--prefix", "evlog:", "--flush",
    ).stdout  # fmt: skip
    assert f"exported {len(users)} impressions ({3 * len(users)} rows, {len(users)} clicks)" in (
        exported
    )


def test_master_killed_under_traffic_gives_503_then_200(
    cluster: LocalCluster, client: RedisCluster, trained_model_dir: Path
) -> None:
    """Runs last in the module: the cluster is left with a master down."""
    _load(cluster.url, "failover:", "A")
    namespace = client.get("failover:current").decode()
    masters = cluster.masters()
    by_master: dict[int, list[int]] = {port: [] for port in masters}
    for user in range(1, USERS + 1):
        node = client.get_node_from_key(feature_layout.user_key(namespace, user))
        by_master[node.port].append(user)
    victim = masters[0]
    users = [ids[i] for ids in by_master.values() for i in range(3)]
    victims = set(by_master[victim][:3])
    settings = Settings(
        model_dir=trained_model_dir,
        redis_url=cluster.url,
        redis_prefix="failover:",
        redis_cluster=True,
        redis_timeout=2.0,  # a refused connection fails at once; a busy CPU must not
        reload_interval=0,
        access_log=False,
    )
    # (user, status, sent after the kill, body); "after" is read before sending: a request
    # answered before the kill but logged after it must not count as served after it.
    log: list[tuple[int, int, bool, dict]] = []
    killed, stop = threading.Event(), threading.Event()

    def traffic(api: TestClient) -> None:
        while not stop.is_set():
            for user in users:
                after = killed.is_set()
                response = api.post("/score", json={"user_id": user, "movie_ids": [1, 2, 3]})
                body = _without_impression(response.json())
                if response.status_code == 503:
                    body["retry_after"] = response.headers.get("retry-after")
                log.append((user, response.status_code, after, body))

    with TestClient(create_app(settings)) as api:
        wait_until(lambda: api.get("/readyz").status_code == 200, what="/readyz to turn 200")
        expected = {}
        for user in users:
            response = api.post("/score", json={"user_id": user, "movie_ids": [1, 2, 3]})
            assert response.status_code == 200 and response.json()["user_known"]
            expected[user] = _without_impression(response.json())
        thread = threading.Thread(target=traffic, args=(api,))
        thread.start()
        try:
            wait_until(lambda: len(log) > len(users), timeout=10, what="traffic")
            cluster.kill(victim)
            killed.set()
            wait_until(
                lambda: any(u in victims and s == 200 and k for u, s, k, _ in log[-len(users) :]),
                timeout=30,
                what="the killed master's users to be served again",
            )
            mark = len(log)
            wait_until(lambda: len(log) > mark + 2 * len(users), timeout=10, what="traffic")
        finally:
            stop.set()
            thread.join(timeout=30)

    statuses = {status for _, status, _, _ in log}
    assert statuses <= {200, 503}, statuses
    failed = [(u, body) for u, s, _, body in log if s == 503]
    assert failed, "no request hit the killed master: the test proved nothing"
    for user, body in failed:
        assert user in victims, f"user {user} lives on a master that stayed up: {body}"
        assert body["type"] == "urn:afm-ctr:problem:feature-node-unavailable", body
        assert body["retry_after"] == "1"
    for user, status, _, body in log:
        if status == 200:
            assert body == expected[user], f"user {user} got other features after the kill"
    # Once the replica took over, every user is served again.
    late = [(u, s, body.get("detail")) for u, s, _, body in log[mark:] if s != 200]
    assert not late, late
