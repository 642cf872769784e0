"""Latency and throughput of POST /score on a real `afm-ctr serve` + Redis, driven by wrk.

For 1, 100 and 1000 candidates at concurrency 1 and 8: p50/p99 latency and requests/s, each
the median of ``--rounds`` runs that alternate between the servers measured (the service,
``--variant`` services with other settings, ``--bare`` the issue's yardstick); then an
in-process breakdown of one request's parts (parsing, Redis, TensorFlow, serialization).

    .venv/bin/python benchmarks/serve_latency.py --bare          # synth + train once, cached
    .venv/bin/python benchmarks/serve_latency.py --candidates 100 --concurrency 8 \
        --variant two:AFM_SCORING_THREADS=2
    .venv/bin/python benchmarks/serve_latency.py --model-dir DIR --data-dir DIR --breakdown-only

Needs `wrk` (apt-get install -y wrk) and a Redis at --redis-url. The service and the load
generator share this machine's cores, so figures are a floor for a dedicated host.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from fastapi import Request  # module level: the bare endpoint's annotation must resolve

from model import contract

REPO = Path(__file__).resolve().parent.parent
PREFIX = "bench:"
CANDIDATES = (1, 100, 1000)
CONCURRENCY = (1, 8)


def main() -> None:
    args = _parse_args()
    if args.serve_bare:
        _serve_bare(*args.serve_bare)
        return
    if shutil.which("wrk") is None:
        sys.exit("wrk not found: apt-get install -y wrk")
    model_dir, data_dir = _model_and_data(args)
    _cli("load-features", "--dataset", "synthetic", "--data-dir", str(data_dir),
         "--redis-url", args.redis_url, "--prefix", PREFIX)  # fmt: skip
    users, movies = _ids(data_dir / "users.dat"), _ids(data_dir / "movies.dat")
    if not args.breakdown_only:
        _load_bare_users(args.redis_url, data_dir)
        _measure(args, model_dir, users, movies)
    _breakdown(model_dir, args.redis_url, users, movies)
    _remove_keys(args.redis_url, (PREFIX, "bare:"))


def _ids(dat: Path) -> list[str]:
    return [line.split("::")[0] for line in dat.read_text(encoding="latin-1").splitlines()]


def _measure(
    args: argparse.Namespace, model_dir: Path, users: list[str], movies: list[str]
) -> None:
    """wrk on every server, cell by cell; each cell alternates the servers for ``rounds``
    rounds and reports the median, so slow drifts in background load hit all servers alike."""
    base_env = {**os.environ, "AFM_REDIS_PREFIX": PREFIX, "AFM_RELOAD_INTERVAL": "0"}
    configs = {"service": args.env, **dict(_variant(v) for v in args.variant)}
    servers = {}
    for name, env in configs.items():
        servers[name] = _start(["-m", "model.cli", "serve", "--model-dir", str(model_dir),
                                "--redis-url", args.redis_url, "--workers", str(args.workers),
                                "--port"], base_env | dict(kv.split("=", 1) for kv in env),
                               "/readyz")  # fmt: skip
    if args.bare:
        version_dir = model_dir / str(contract.latest_version(model_dir))
        servers["bare"] = _start([__file__, "--serve-bare"], dict(os.environ), "/healthz",
                                 extra=[str(version_dir), args.redis_url])  # fmt: skip
    rows = []
    try:
        for n in args.candidates:
            for c in args.concurrency:
                runs: dict[str, list[tuple]] = {name: [] for name in servers}
                for url, path, _ in servers.values():  # warm-up at this batch size
                    _wrk(url, _lua_script(users, movies, n, Path(args.work_dir), path), c, 2)
                for _ in range(args.rounds):
                    for name, (url, path, _) in servers.items():
                        script = _lua_script(users, movies, n, Path(args.work_dir), path)
                        runs[name].append(_wrk(url, script, c, args.duration))
                for name, results in runs.items():
                    rows.append((name, n, c, results))
                    print(_row(name, n, c, results), flush=True)
    finally:
        for _, _, process in servers.values():
            process.send_signal(signal.SIGINT)
            process.wait(timeout=30)
    print(f"\nPOST /score, median of {args.rounds} alternating rounds of {args.duration}s, "
          f"workers={args.workers}; variants: "
          + "; ".join(f"{k}: {' '.join(v) or 'defaults'}" for k, v in configs.items()))  # fmt: skip
    print("| server | candidates | concurrency | req/s | (min–max) | p50 ms | p99 ms | non-2xx |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        print(_row(*row))


def _row(name: str, n: int, c: int, results: list[tuple]) -> str:
    rps, p50, p99, errors = zip(*results, strict=True)
    median = statistics.median
    return (f"| {name} | {n} | {c} | {median(rps):,.0f} | {min(rps):,.0f}–{max(rps):,.0f} "
            f"| {median(p50):.2f} | {median(p99):.2f} | {sum(errors)} |")  # fmt: skip


def _variant(text: str) -> tuple[str, list[str]]:
    """``name:AFM_X=1,AFM_Y=2`` -> (name, ["AFM_X=1", "AFM_Y=2"])."""
    name, _, env = text.partition(":")
    return name, [kv for kv in env.split(",") if kv]


def _remove_keys(redis_url: str, prefixes: tuple[str, ...]) -> None:
    import redis

    client = redis.Redis.from_url(redis_url)
    for prefix in prefixes:
        keys = list(client.scan_iter(match=f"{prefix}*", count=2000))
        for start in range(0, len(keys), 2000):
            client.unlink(*keys[start : start + 2000])
    client.close()


def _start(command: list[str], env: dict, ready_path: str, extra: list[str] = ()) -> tuple:  # noqa: B006
    """(url, scored path, process) of a server started on a free port, once it answers."""
    port = _free_port()
    process = subprocess.Popen(
        [sys.executable, *command, str(port), *extra], cwd=REPO, env=env,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    _wait_ready(url, ready_path)
    return url, "/bare" if ready_path == "/healthz" else "/score", process


def _load_bare_users(redis_url: str, data_dir: Path) -> None:
    """Plain ``bare:user:<id>`` hashes (no namespace pointer) for the bare endpoint."""
    import redis

    from model.feature_layout import USER_FIELDS

    client = redis.Redis.from_url(redis_url)
    pipe = client.pipeline(transaction=False)
    for line in (data_dir / "users.dat").read_text(encoding="latin-1").splitlines():
        user_id, *values = line.split("::")
        pipe.hset(f"bare:user:{user_id}", mapping=dict(zip(USER_FIELDS, values, strict=True)))
    pipe.execute()
    client.close()


def _serve_bare(port: str, version_dir: str, redis_url: str) -> None:
    """The issue's yardstick: no validation bounds, no pointer, TF on the event loop."""
    import redis.asyncio as aioredis
    import tensorflow as tf
    import uvicorn
    from fastapi import FastAPI

    from model import contract

    signature = tf.saved_model.load(version_dir).signatures[contract.SIGNATURE_SCORE]
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    app = FastAPI()

    @app.get("/healthz")
    async def healthz() -> dict:
        return {}

    @app.post("/bare")
    async def bare(request: Request) -> dict:
        body = await request.json()
        user = await client.hgetall(f"bare:user:{body['user_id']}")
        n = len(body["movie_ids"])
        inputs = {f: [user.get(f, "")] * n for f in ("gender", "age", "occupation", "zip")}
        inputs |= {
            "user_id": [str(body["user_id"])] * n,
            "movie_id": list(map(str, body["movie_ids"])),
        }
        outputs = signature(**{f: tf.constant(v, tf.string) for f, v in inputs.items()})
        return {"scores": outputs[contract.OUTPUT_PROBABILITY].numpy().tolist()}

    uvicorn.run(app, host="127.0.0.1", port=int(port), log_level="warning")


def _parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-dir", type=Path, help="Export root (default: train one).")
    parser.add_argument("--data-dir", type=Path, help="Synthetic/ML-1M-format data for users.")
    parser.add_argument("--work-dir", default=str(Path(tempfile.gettempdir()) / "afm-bench"))
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--duration", type=int, default=5, help="Seconds per wrk run.")
    parser.add_argument("--rounds", type=int, default=3, help="Alternating runs per cell.")
    parser.add_argument("--candidates", type=int, nargs="+", default=list(CANDIDATES))
    parser.add_argument("--concurrency", type=int, nargs="+", default=list(CONCURRENCY))
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--env", nargs="*", default=[], help="Extra AFM_X=Y for the service.")
    parser.add_argument("--variant", action="append", default=[], metavar="NAME:AFM_X=Y,...",
                        help="Another service with these settings, measured too.")  # fmt: skip
    parser.add_argument(
        "--bare", action="store_true", help="Also measure the bare reference endpoint."
    )
    parser.add_argument(
        "--breakdown-only", action="store_true", help="Only the in-process time breakdown."
    )
    parser.add_argument("--serve-bare", nargs=3, metavar=("PORT", "VERSION_DIR", "REDIS_URL"),
                        help=argparse.SUPPRESS)  # fmt: skip
    return parser.parse_args()


def _model_and_data(args: argparse.Namespace) -> tuple[Path, Path]:
    """The given model and data, or an ML-1M-sized synthetic set and a model trained on it."""
    if args.model_dir and args.data_dir:
        return args.model_dir, args.data_dir
    work = Path(args.work_dir)
    data_dir, model_dir = work / "data", work / "models"
    if not (data_dir / "users.dat").exists():
        _cli(
            "synth",
            "--out",
            str(data_dir),
            "--users",
            "6040",
            "--movies",
            "3706",
            "--ratings",
            "200000",
            "--seed",
            "1",
        )
    if not any(p.name.isdigit() for p in model_dir.glob("*")):
        _cli(
            "train",
            "--dataset",
            "synthetic",
            "--data-dir",
            str(data_dir),
            "--model-dir",
            str(model_dir),
            "--epochs",
            "1",
        )
    return model_dir, data_dir


def _cli(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "model.cli", *args], cwd=REPO, check=True,
                   stdout=subprocess.DEVNULL)  # fmt: skip


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_ready(url: str, path: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}{path}", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    sys.exit(f"service at {url} not ready after {timeout}s")


def _lua_script(users: list[str], movies: list[str], n: int, work: Path, path: str) -> Path:
    """wrk script cycling through 64 request bodies (different users, random candidates)."""
    import random

    rng = random.Random(n)
    bodies = [
        json.dumps({"user_id": int(rng.choice(users)),
                    "movie_ids": [int(m) for m in rng.choices(movies, k=n)]})
        for _ in range(64)
    ]  # fmt: skip
    lines = ["local bodies = {"] + [f"  [[{b}]]," for b in bodies] + ["}", "local i = 0"]
    lines += ['local headers = {["Content-Type"] = "application/json"}']
    lines += [
        "request = function()",
        "  i = i % #bodies + 1",
        f'  return wrk.format("POST", "{path}", headers, bodies[i])',
        "end",
    ]
    work.mkdir(parents=True, exist_ok=True)
    script = work / f"{path.strip('/')}_{n}.lua"
    script.write_text("\n".join(lines) + "\n")
    return script


def _wrk(
    url: str, script: Path, connections: int, duration: int
) -> tuple[float, float, float, int]:
    """(requests/s, p50 ms, p99 ms, non-2xx responses) from one wrk run."""
    threads = min(connections, 2)
    command = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{duration}s", "--latency"]
    out = subprocess.run(
        [*command, "-s", str(script), url], capture_output=True, text=True, check=True
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    p50 = _ms(re.search(r"50%\s+([\d.]+\w+)", out).group(1))
    p99 = _ms(re.search(r"99%\s+([\d.]+\w+)", out).group(1))
    errors = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    socket_errors = re.search(r"Socket errors: (.*)", out)
    if socket_errors:
        print(f"  wrk socket errors: {socket_errors.group(1)}")
    return rps, p50, p99, int(errors.group(1)) if errors else 0


def _ms(text: str) -> float:
    value, unit = re.fullmatch(r"([\d.]+)(\w+)", text).groups()
    return float(value) * {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 6e4}[unit]


def _breakdown(model_dir: Path, redis_url: str, users: list[str], movies: list[str]) -> None:
    """Median microseconds of each step of one request, in this process."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import redis.asyncio as aioredis
    import uvloop

    from service.feature_store import FeatureStore
    from service.ranking import batch_columns
    from service.scorer import Scorer, configure_tensorflow, load_model

    configure_tensorflow(1, 1)
    model = load_model(model_dir / str(contract.latest_version(model_dir)))

    def median_us(fn, repeat: int = 300) -> float:  # noqa: ANN001
        fn()
        times = []
        for _ in range(repeat):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        return sorted(times)[len(times) // 2] * 1e6

    async def redis_us() -> tuple[float, float]:
        """(plain HGETALL, the store's EVALSHA read) medians, same client library."""
        store = FeatureStore.connect(redis_url, PREFIX, timeout=1.0)
        plain = aioredis.Redis.from_url(redis_url)
        namespace = (await plain.get(f"{PREFIX}current")).decode()
        plain_times, store_times = [], []
        for i in range(600):
            user = users[i % len(users)]
            start = time.perf_counter()
            await plain.hgetall(f"{namespace}user:{user}")
            plain_times.append(time.perf_counter() - start)
            start = time.perf_counter()
            await store.user_features(user)
            store_times.append(time.perf_counter() - start)
        await store.aclose()
        await plain.aclose()
        return _median_us(plain_times[100:]), _median_us(store_times[100:])

    async def pooled_us(columns: dict) -> float:
        """Median of the TensorFlow call handed to the scoring thread and awaited, as the
        route does it. Not interleaved with direct calls: TensorFlow is slower when the
        calling thread keeps changing, which never happens in the service."""
        scorer = Scorer(threads=1)
        times = []
        for _ in range(350):
            start = time.perf_counter()
            await scorer.run(model.score, columns)
            times.append(time.perf_counter() - start)
        scorer.shutdown()
        return _median_us(times[50:])

    # uvloop, as under uvicorn: the thread hand-off is cheaper than on asyncio's default loop.
    plain_us, store_us = uvloop.run(redis_us())
    print(f"\nRedis, median µs: plain HGETALL {plain_us:.0f}, store read (EVALSHA) {store_us:.0f}")
    print("\nWhere the time goes (median µs per request, in-process, one thread):")
    print("| candidates | parse+validate | Redis EVALSHA | build columns | TensorFlow |", end="")
    print(" rank+serialize | TF via pool |\n|---:|---:|---:|---:|---:|---:|---:|")
    for n in CANDIDATES:
        parse, build, tf_time, out = _breakdown_row(model, n, users[0], movies, median_us)
        columns = batch_columns(1, None, [int(m) for m in movies[:n]])
        pooled = uvloop.run(pooled_us(columns))
        print(f"| {n} | {parse:.0f} | {store_us:.0f} | {build:.0f} | {tf_time:.0f} | {out:.0f} "
              f"| {pooled:.0f} |")  # fmt: skip


def _median_us(times: list[float]) -> float:
    return sorted(times)[len(times) // 2] * 1e6


def _breakdown_row(model, n: int, user: str, movies: list[str], median_us) -> tuple:  # noqa: ANN001
    import orjson

    from service.ranking import batch_columns, score_entries
    from service.schemas import ScoreRequest

    body = orjson.dumps({"user_id": int(user), "movie_ids": [int(m) for m in movies[:n]]})
    request = ScoreRequest.model_validate_json(body)
    features = {"gender": "F", "age": "25", "occupation": "4", "zip": "48067"}
    columns = batch_columns(request.user_id, features, request.movie_ids)
    probability = model.score(columns)

    def respond() -> bytes:
        known = model.known("movie_id", columns["movie_id"])
        scores = score_entries(request.movie_ids, probability, known, None)
        reply = {"user_id": 1, "model_version": 1, "user_known": True, "scores": scores}
        return orjson.dumps(reply)

    return (
        median_us(lambda: ScoreRequest.model_validate_json(body)),
        median_us(lambda: batch_columns(request.user_id, features, request.movie_ids)),
        median_us(lambda: model.score(columns), repeat=200),
        median_us(respond),
    )


if __name__ == "__main__":
    main()
