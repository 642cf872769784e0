"""Candidates' item features: in-process movie table vs. one Lua call with HMGET per request.

For 100 and 1,000 candidates drawn from the 3,883 movies of ML-1M, median µs per request of

* table: ``FeatureStore.read(user)`` in the steady state (one EVALSHA of READ_USER_SCRIPT,
  the movie table already in process) plus one dict lookup per candidate;
* lua:   one EVALSHA per request that resolves the pointer and returns the user's hash and
  ``HMGET <namespace>movies <candidates...>``, then ``decode_movie`` per candidate.

Both end with the same thing: the user's features and one features mapping per candidate.
Same process, same redis-py asyncio client (hiredis parser) as the service, uvloop as under
uvicorn; the variants alternate request by request, so background load hits both alike. Also
reported: the one-off cost of the first read after a load (user read + fetching and decoding
the whole table), paid once per feature set by the request that sees the switch.

    .venv/bin/python benchmarks/item_features.py                    # ML-1M from ../shared/data
    .venv/bin/python benchmarks/item_features.py --data-dir DIR --requests 3000

Measured on the dev container: 2 vCPUs, load average 4-5 from another process
training on ~1.5 of them, Redis 7.0.15 on localhost, redis-py 8.1 + hiredis, uvloop 0.23.
Five runs of ``.venv/bin/python benchmarks/item_features.py`` (2,000 requests per cell);
median of the runs' p50s, with the runs' range::

    | candidates | table µs p50     | lua+HMGET µs p50      | lua / table |
    |-----------:|-----------------:|----------------------:|------------:|
    |        100 |   208 (191-234)  |     553 (529-572)     |       2.7x  |
    |      1,000 |   536 (499-800)  |   4,024 (3,991-5,297) |       7.5x  |

    first read after a load (user read + HGETALL of 3,883 movies, 300 KB, + decoding):
    p50 14,500 µs (13,900-22,600), once per load per worker; ~3/4 of it decode_movie

p99s were dominated by the other process (0.3-9 ms for either variant) and are not compared.
Of the table variant, ~160 µs is the user's EVALSHA; each candidate adds ~0.35 µs (str(id)
and a dict lookup). The Lua variant pays, per request, HMGET, a reply of ~75 bytes per
candidate and one JSON decode per candidate. The decoded table holds ~1.9 MB per worker
(tracemalloc).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import uuid
from pathlib import Path

import numpy as np

from model.config import DataConfig
from model.contracts import feature_layout
from model.data.load_features import load_features
from model.data.movielens import load_movies, load_users

REPO = Path(__file__).resolve().parent.parent
CANDIDATES = (100, 1000)

READ_USER_AND_MOVIES_SCRIPT = """
local ns = redis.call('GET', KEYS[1])
if not ns then return false end
return {ns, redis.call('HGETALL', ns .. 'user:' .. ARGV[1]),
        redis.call('HMGET', ns .. 'movies', unpack(ARGV, 2))}
"""
"""The alternative to the in-process table: KEYS[1] = pointer, ARGV = user_id, movie ids."""


def main() -> None:
    args = _parse_args()
    config = DataConfig(dataset="ml-1m", data_dir=args.data_dir)
    users, movies = load_users(config), load_movies(config)
    prefix = f"bench:items:{uuid.uuid4().hex}:"
    load_features(users, movies, args.redis_url, prefix)
    try:
        import uvloop

        # Candidates arrive as ints in a request body (ScoreRequest.movie_ids), users too.
        user_ids = [int(u) for u in users["user_id"].tolist()]
        movie_ids = [int(m) for m in movies["movie_id"].tolist()]
        uvloop.run(_measure(args, prefix, user_ids, movie_ids))
    finally:
        _remove_prefix(args.redis_url, prefix)


async def _measure(
    args: argparse.Namespace, prefix: str, user_ids: list[int], movie_ids: list[int]
) -> None:
    from service.feature_store import FeatureStore

    store = FeatureStore.connect(args.redis_url, prefix, timeout=2.0)
    # The same client and pool the store uses: only the script and the decoding differ.
    lua = store._client.register_script(READ_USER_AND_MOVIES_SCRIPT)
    pointer = feature_layout.pointer_key(prefix)
    rng = np.random.default_rng(args.seed)

    async def table(user: int, candidates: list[int]) -> list:
        read = await store.read(user)
        return [read.movies.get(str(movie)) for movie in candidates]

    async def hmget(user: int, candidates: list[int]) -> list:
        namespace, raw_user, raw_movies = await lua(keys=[pointer], args=[user, *candidates])
        feature_layout.decode_user(dict(zip(raw_user[::2], raw_user[1::2], strict=True)))
        return [feature_layout.decode_movie(v) if v is not None else None for v in raw_movies]

    variants = {"table": table, "lua": hmget}
    print(f"{len(user_ids)} users, {len(movie_ids)} movies, {args.requests} requests per cell")
    print("| candidates | table µs (p50) | lua+HMGET µs (p50) | table p99 | lua p99 |")
    print("|---:|---:|---:|---:|---:|")
    for n in CANDIDATES:
        times: dict[str, list[float]] = {name: [] for name in variants}
        for i in range(args.warmup + args.requests):
            user = user_ids[rng.integers(len(user_ids))]
            candidates = [movie_ids[j] for j in rng.choice(len(movie_ids), n, replace=False)]
            for name, variant in variants.items():
                start = time.perf_counter()
                found = await variant(user, candidates)
                if i >= args.warmup:
                    times[name].append((time.perf_counter() - start) * 1e6)
                assert len(found) == n and found[0] is not None
        t, lua_times = times["table"], times["lua"]
        print(f"| {n:,} | {_p(t, 50):,.0f} | {_p(lua_times, 50):,.0f} "
              f"| {_p(t, 99):,.0f} | {_p(lua_times, 99):,.0f} |", flush=True)  # fmt: skip
    await store.aclose()
    await _first_read_after_a_load(args, prefix, user_ids)


async def _first_read_after_a_load(
    args: argparse.Namespace, prefix: str, user_ids: list[int]
) -> None:
    """A fresh store per sample, connected first, so the timed read is the user read plus
    fetching and decoding the whole table, as for the first request after a switch."""
    import redis.asyncio as aioredis

    from service.feature_store import FeatureStore

    plain = aioredis.Redis.from_url(args.redis_url)
    namespace = (await plain.get(feature_layout.pointer_key(prefix))).decode()
    raw = await plain.hgetall(feature_layout.movies_key(namespace))
    size = sum(len(k) + len(v) for k, v in raw.items())
    await plain.aclose()
    times = []
    for i in range(args.cold):
        store = FeatureStore.connect(args.redis_url, prefix, timeout=2.0)
        await store.check()
        start = time.perf_counter()
        await store.read(user_ids[i % len(user_ids)])
        times.append((time.perf_counter() - start) * 1e6)
        await store.aclose()
    print(f"first read after a load (user + table, {store.movies_loaded:,} movies, "
          f"{size / 1000:,.0f} KB): p50 {statistics.median(times):,.0f} µs")  # fmt: skip


def _p(values: list[float], q: int) -> float:
    return float(np.percentile(values, q))


def _remove_prefix(redis_url: str, prefix: str) -> None:
    import redis

    client = redis.Redis.from_url(redis_url)
    keys = list(client.scan_iter(match=f"{prefix}*", count=2000))
    for start in range(0, len(keys), 2000):
        client.unlink(*keys[start : start + 2000])
    client.close()


def _parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    parser.add_argument(
        "--data-dir", type=Path, default=REPO.parent / "shared" / "data" / "ml-1m-notime"
    )
    parser.add_argument("--requests", type=int, default=2000, help="timed requests per cell")
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--cold", type=int, default=30, help="first-read samples")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if not args.data_dir.is_dir():
        sys.exit(f"ML-1M not found at {args.data_dir}; pass --data-dir")
    return args


if __name__ == "__main__":
    main()
