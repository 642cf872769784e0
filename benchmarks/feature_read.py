"""``FeatureStore.read`` on one Redis and on a Redis Cluster: median µs per read.

One process, the service's clients (its pipelined connection on one Redis, redis-py's cluster
client on a cluster; hiredis) on uvloop as under uvicorn.
``--reads`` sequential reads of random users per store, the stores taking turns read by
read (each user read by every store, in rotating order), so background load hits them
alike; reported is the median of each store's reads (and p99), next to a plain HGETALL on
the same Redis as the floor. Stores:

* ``one Redis``: the store as the service builds it (one EVALSHA per read);
* ``baseline`` (``--compare-with DIR``): ``service/feature_store.py`` of another checkout,
  e.g. ``git archive HEAD | tar -x -C /tmp/base``, to check a change leaves the one-Redis
  path as fast as before;
* ``cluster`` (``--cluster-url``): the store in cluster mode (one HGETALL to the user's node,
  namespace from its pointer cache).

Users and movies are synthetic (ML-1M's counts: 6,040 users, 3,706 movies), loaded with
``load_features`` under a prefix of their own, removed afterwards.

    .venv/bin/python benchmarks/feature_read.py
    .venv/bin/python benchmarks/feature_read.py --compare-with /tmp/base
    .venv/bin/python benchmarks/feature_read.py --cluster-url redis://127.0.0.1:7000/0

A local cluster for the last: six ``redis-server --port P --cluster-enabled yes --save ""``
processes and ``redis-cli --cluster create 127.0.0.1:7000 ... --cluster-replicas 1
--cluster-yes`` (docs/operations.md#redis-cluster).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import random
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import redis
import redis.asyncio as aioredis
import uvloop

from model.contracts import feature_layout
from model.data.load_features import load_features
from service.feature_store import FeatureStore

PREFIX = "bench-read:"
USERS, MOVIES = 6040, 3706


def main() -> None:
    args = _parse_args()
    print(f"load average {_load_average()}", flush=True)
    _load(args.redis_url, cluster=False)
    if args.cluster_url:
        _load(args.cluster_url, cluster=True)
    try:
        results = uvloop.run(_measure(args))
    finally:
        _remove(args.redis_url, cluster=False)
        if args.cluster_url:
            _remove(args.cluster_url, cluster=True)
    print(f"\n{args.reads} reads per store; load average {_load_average()}")
    print("| store | median µs | p99 µs |\n|---|---:|---:|")
    for name, times in results.items():
        p99 = statistics.quantiles(times, n=100)[98]
        print(f"| {name} | {statistics.median(times) * 1e6:.0f} | {p99 * 1e6:.0f} |")


async def _measure(args: argparse.Namespace) -> dict[str, list[float]]:
    plain = aioredis.Redis.from_url(args.redis_url)
    namespace = (await plain.get(feature_layout.pointer_key(PREFIX))).decode()

    async def hgetall(user: str) -> object:
        return await plain.hgetall(feature_layout.user_key(namespace, user))

    stores = {"one Redis": FeatureStore.connect(args.redis_url, PREFIX, timeout=1.0)}
    if args.compare_with:
        baseline = _baseline_store_class(args.compare_with)
        stores["baseline"] = baseline.connect(args.redis_url, PREFIX, timeout=1.0)
    if args.cluster_url:
        stores["cluster"] = FeatureStore.connect(
            args.cluster_url, PREFIX, timeout=1.0, cluster=True
        )
    readers = {"plain HGETALL": hgetall, **{name: s.read for name, s in stores.items()}}
    rng = random.Random(7)
    times: dict[str, list[float]] = {name: [] for name in readers}
    try:
        for read in readers.values():  # warm-up: pools, scripts, movie tables
            for _ in range(200):
                await read(str(rng.randint(1, USERS)))
        order = list(readers)
        for i in range(args.reads):
            user = str(rng.randint(1, USERS))
            for name in order[i % len(order) :] + order[: i % len(order)]:
                start = time.perf_counter()
                await readers[name](user)
                times[name].append(time.perf_counter() - start)
    finally:
        for store in stores.values():
            await store.aclose()
        await plain.aclose()
    return times


def _baseline_store_class(checkout: Path) -> type:
    """``FeatureStore`` of another checkout's service/feature_store.py, imported under its
    own name (it shares this checkout's ``model`` and ``service.errors``)."""
    path = checkout / "service" / "feature_store.py"
    spec = importlib.util.spec_from_file_location("baseline_feature_store", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module.FeatureStore


def _load(url: str, *, cluster: bool) -> None:
    rng = np.random.default_rng(7)
    users = {
        "user_id": np.array([str(i) for i in range(1, USERS + 1)]),
        "gender": rng.choice(["F", "M"], USERS),
        "age": rng.choice(["1", "18", "25", "35", "45", "50", "56"], USERS),
        "occupation": rng.integers(0, 21, USERS).astype(str),
        "zip": rng.integers(10000, 99999, USERS).astype(str),
    }
    movies = {
        "movie_id": np.array([str(i) for i in range(1, MOVIES + 1)]),
        "title": np.array([f"Movie {i} (1995)" for i in range(1, MOVIES + 1)]),
        "year": np.full(MOVIES, "1995"),
        "genres": rng.choice(["Action|Crime", "Comedy", "Drama|Romance"], MOVIES),
    }
    load_features(users, movies, url, PREFIX, source="benchmark", cluster=cluster)


def _remove(url: str, *, cluster: bool) -> None:
    client = (redis.RedisCluster if cluster else redis.Redis).from_url(url)
    for key in client.scan_iter(match=f"{PREFIX}*", count=1000):
        client.unlink(key)
    client.close()


def _load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def _parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--cluster-url", help="Any node of a Redis Cluster.")
    parser.add_argument(
        "--compare-with",
        type=Path,
        metavar="DIR",
        help="Another checkout whose FeatureStore is measured as 'baseline'.",
    )
    parser.add_argument("--reads", type=int, default=10_000, help="Reads per store.")
    return parser.parse_args()


if __name__ == "__main__":
    main()
