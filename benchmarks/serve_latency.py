"""Latency and throughput of POST /score on a real `afm-ctr serve` + Redis, driven by wrk.

For 1, 100 and 1000 candidates at concurrency 1 and 8: p50/p99 latency and requests/s, each
the median of ``--rounds`` runs that alternate between the servers measured; then an
in-process breakdown of one request's parts (parsing, the store's read, building candidates,
scoring, ordering and JSON) for each model.

Servers, all on the same feature set in Redis (users and movies, ``load_features``):

* ``service-<set>``: ``afm-ctr serve`` of a model of each field set of ``--fields``
  (``seed``: the six seed fields; ``all``: eight, with the movie's year and genres taken
  from the service's in-process movie table);
* ``<name>-<set>``: each ``--variant``, another service with other settings, per field set;
* ``bare`` (``--bare``): the yardstick, FastAPI + one HGETALL + the SavedModel
  signature on the event loop. By default it keeps the six seed fields it has always used
  (user hash, user_id, movie_id; no movie features), so it serves the seed model, trained or
  reused even when ``--fields`` lacks ``seed``. ``--bare-fields all`` or ``history`` makes
  it serve that field set's model, with the movie table read from Redis once at start and
  (history) the user's watched movies and their time from the same hash: the same reply,
  like for like.
* ``floor`` (``--floor``): FastAPI under uvicorn that reads the body and returns a fixed
  JSON reply, no Redis, no model: the most requests/s any endpoint on this HTTP stack
  reaches on this machine and load generator, so the ceiling of the ratio to ``bare``.

    .venv/bin/python benchmarks/serve_latency.py --bare          # synth + train once, cached
    .venv/bin/python benchmarks/serve_latency.py --fields seed,all --bare --rounds 5 \
        --candidates 100 1000
    .venv/bin/python benchmarks/serve_latency.py --candidates 100 --concurrency 8 \
        --variant quiet:AFM_ACCESS_LOG=false
    .venv/bin/python benchmarks/serve_latency.py --model-dir DIR --model-dir DIR2 \
        --data-dir DIR --breakdown-only

Models are trained 1 epoch on the data, one export root per field set under --work-dir
(``models-seed``, ``models-all``), and reused by later runs. A ``--model-dir`` replaces
that: its newest version's ``metadata.json`` says its field set, and ``--fields`` is ignored.

Needs `wrk` (apt-get install -y wrk) and a Redis at --redis-url. The servers and the load
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
from collections.abc import Sequence
from pathlib import Path

from fastapi import Request  # module level: the bare endpoint's annotation must resolve

from model.contracts import export_format
from model.contracts.feature_layout import WATCHED, WATCHED_AT

REPO = Path(__file__).resolve().parent.parent
PREFIX = "bench:"
CANDIDATES = (1, 100, 1000)
CONCURRENCY = (1, 8)


def main() -> None:
    args = _parse_args()
    if args.serve_bare:
        _serve_bare(*args.serve_bare)
        return
    if args.serve_floor:
        _serve_floor(args.serve_floor)
        return
    if shutil.which("wrk") is None and not args.breakdown_only:
        sys.exit("wrk not found: apt-get install -y wrk")
    data_dir = _data_dir(args)
    model_dirs = _model_dirs(args, data_dir)
    users, movies = _load_features(data_dir, args.redis_url)
    try:
        if not args.breakdown_only:
            _load_bare_users(args.redis_url, users)
            _measure(args, model_dirs, users["user_id"], movies)
        _breakdown(args, model_dirs, users["user_id"], movies)
    finally:
        _remove_keys(args.redis_url, (PREFIX, "bare:"))


def _load_features(data_dir: Path, redis_url: str) -> tuple[dict[str, list[str]], list[str]]:
    """Users, movies and watched movies of ``data_dir`` loaded under PREFIX; (user columns
    with each user's watched string and its time, movie ids)."""
    from model.config import DataConfig
    from model.data.load_features import load_features
    from model.data.movielens import load_feature_set

    features = load_feature_set(DataConfig(dataset="synthetic", data_dir=data_dir))
    users, movies = features.users, features.movies
    n_users, n_movies = load_features(
        users, movies, redis_url, PREFIX, watched=features.watched, watched_at=features.watched_at
    )
    print(f"loaded {n_users} users and {n_movies} movies under {PREFIX!r}", flush=True)
    columns = {**users, WATCHED: features.watched, WATCHED_AT: features.watched_at}
    user_columns = {name: [str(v) for v in values.tolist()] for name, values in columns.items()}
    movie_ids = [str(m) for m in movies[export_format.MOVIE_ID].tolist()]
    return user_columns, movie_ids


def _measure(
    args: argparse.Namespace, model_dirs: dict[str, Path], users: list[str], movies: list[str]
) -> None:
    """wrk on every server, cell by cell; each cell alternates the servers for ``rounds``
    rounds and reports the median, so slow drifts in background load hit all servers alike."""
    base_env = {**os.environ, "AFM_REDIS_PREFIX": PREFIX, "AFM_RELOAD_INTERVAL": "0"}
    configs = {"service": args.env, **dict(_variant(v) for v in args.variant)}
    servers = {}
    try:
        for field_set, model_dir in model_dirs.items():
            if field_set not in args.served:
                continue
            for name, env in configs.items():
                servers[f"{name}-{field_set}"] = _start(
                    ["-m", "model.cli", "serve", "--model-dir", str(model_dir),
                     "--redis-url", args.redis_url, "--workers", str(args.workers), "--port"],
                    base_env | dict(kv.split("=", 1) for kv in env), "/readyz", "/score",
                )  # fmt: skip
        if args.bare:
            bare_dir = model_dirs[args.bare_fields]
            version_dir = bare_dir / str(export_format.latest_version(bare_dir))
            servers["bare"] = _start([__file__, "--serve-bare"], dict(os.environ), "/healthz",
                                     "/bare", extra=[str(version_dir), args.redis_url])  # fmt: skip
        if args.floor:
            servers["floor"] = _start([__file__, "--serve-floor"], dict(os.environ), "/healthz",
                                      "/floor")  # fmt: skip
        rows = _alternate(args, servers, users, movies)
    finally:
        for _, _, process in servers.values():
            process.send_signal(signal.SIGINT)
            process.wait(timeout=30)
    print(f"\nPOST /score, median of {args.rounds} alternating rounds of {args.duration}s, "
          f"workers={args.workers}; load average before/after: {args.load_before} / "
          f"{_load_average()}; variants: "
          + "; ".join(f"{k}: {' '.join(v) or 'defaults'}" for k, v in configs.items()))  # fmt: skip
    for field_set in args.served:
        metadata = export_format.read_metadata(_latest(model_dirs[field_set]))
        print(f"service-{field_set}: {len(metadata.fields)} fields, version {metadata.version} "
              f"of {model_dirs[field_set]}")  # fmt: skip
    print("| server | candidates | concurrency | req/s | (min–max) | p50 ms | p99 ms | non-2xx |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        print(_row(*row))


def _alternate(
    args: argparse.Namespace, servers: dict[str, tuple], users: list[str], movies: list[str]
) -> list[tuple]:
    rows = []
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
    return rows


def _row(name: str, n: int, c: int, results: list[tuple]) -> str:
    rps, p50, p99, errors = zip(*results, strict=True)
    median = statistics.median
    return (f"| {name} | {n} | {c} | {median(rps):,.0f} | {min(rps):,.0f}–{max(rps):,.0f} "
            f"| {median(p50):.2f} | {median(p99):.2f} | {sum(errors)} |")  # fmt: skip


def _variant(text: str) -> tuple[str, list[str]]:
    """``name:AFM_X=1,AFM_Y=2`` -> (name, ["AFM_X=1", "AFM_Y=2"])."""
    name, _, env = text.partition(":")
    return name, [kv for kv in env.split(",") if kv]


def _load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def _remove_keys(redis_url: str, prefixes: tuple[str, ...]) -> None:
    import redis

    client = redis.Redis.from_url(redis_url)
    for prefix in prefixes:
        keys = list(client.scan_iter(match=f"{prefix}*", count=2000))
        for start in range(0, len(keys), 2000):
            client.unlink(*keys[start : start + 2000])
    client.close()


def _start(
    command: list[str], env: dict, ready_path: str, path: str, extra: Sequence[str] = ()
) -> tuple:
    """(url, ``path``, process) of a server started on a free port, once it answers."""
    port = _free_port()
    process = subprocess.Popen(
        [sys.executable, *command, str(port), *extra], cwd=REPO, env=env,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    _wait_ready(url, ready_path)
    return url, path, process


def _load_bare_users(redis_url: str, users: dict[str, list[str]]) -> None:
    """Plain ``bare:user:<id>`` hashes (no namespace pointer) for the bare endpoint."""
    import redis

    from model.contracts.feature_layout import USER_FIELDS

    client = redis.Redis.from_url(redis_url)
    pipe = client.pipeline(transaction=False)
    for i, user_id in enumerate(users[export_format.USER_ID]):
        features = {f: users[f][i] for f in (*USER_FIELDS, WATCHED, WATCHED_AT)}
        pipe.hset(f"bare:user:{user_id}", mapping=features)
    pipe.execute()
    client.close()


def _serve_bare(port: str, version_dir: str, redis_url: str) -> None:
    """The yardstick: no validation bounds, no pointer, TF on the event loop; the user's
    hash read per request and (for a model with movie fields) the movie table held in
    memory, read from Redis once at start."""
    import redis
    import redis.asyncio as aioredis
    import tensorflow as tf

    from model.contracts import export_format, feature_layout

    fields = export_format.read_metadata(Path(version_dir)).fields
    signature = tf.saved_model.load(version_dir).signatures[export_format.SIGNATURE_SCORE]
    sync = redis.Redis.from_url(redis_url, decode_responses=True)
    namespace = sync.get(feature_layout.pointer_key(PREFIX))
    movies = {
        movie: feature_layout.decode_movie(raw)
        for movie, raw in sync.hgetall(feature_layout.movies_key(namespace)).items()
    }
    sync.close()
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    user_fields = [f for f in export_format.user_inputs(fields) if f != export_format.USER_ID]
    movie_fields = [f for f in fields if f not in user_fields and f != export_format.USER_ID]
    app = _app_with_healthz()

    @app.post("/bare")
    async def bare(request: Request) -> dict:
        body = await request.json()
        user = await client.hgetall(f"bare:user:{body['user_id']}")
        if user.get(WATCHED_AT):  # a history version's time since the latest watched movie
            gap = time.time() - float(user[WATCHED_AT])
            user[export_format.LAST_WATCHED] = export_format.last_watched_value(gap)
        ids = list(map(str, body["movie_ids"]))
        n = len(ids)
        inputs = {f: [user.get(f, "")] * n for f in user_fields}
        inputs[export_format.USER_ID] = [str(body["user_id"])] * n
        for f in movie_fields:
            if f == export_format.MOVIE_ID:
                inputs[f] = ids
            else:
                inputs[f] = [(movies.get(m) or {}).get(f, "") for m in ids]
        outputs = signature(**{f: tf.constant(v, tf.string) for f, v in inputs.items()})
        return {"scores": outputs[export_format.OUTPUT_PROBABILITY].numpy().tolist()}

    _run(app, port)


def _serve_floor(port: str) -> None:
    """The HTTP stack alone: the body read, a fixed reply."""
    from fastapi.responses import Response

    app = _app_with_healthz()

    @app.post("/floor")
    async def floor(request: Request) -> Response:
        await request.body()
        return Response(b'{"scores":[]}', media_type="application/json")

    _run(app, port)


def _app_with_healthz():  # noqa: ANN202 - a FastAPI app (imported lazily)
    from fastapi import FastAPI

    app = FastAPI()

    @app.get("/healthz")
    async def healthz() -> dict:
        return {}

    return app


def _run(app, port: str) -> None:  # noqa: ANN001
    import uvicorn

    uvicorn.run(app, host="127.0.0.1", port=int(port), log_level="warning")


def _parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-dir", type=Path, action="append", default=[],
                        help="Export root to serve, repeatable; its newest version's "
                        "metadata.json says its field set. Default: one per --fields.")  # fmt: skip
    parser.add_argument("--data-dir", type=Path, help="Synthetic/ML-1M-format users and movies.")
    parser.add_argument("--fields", default="all", type=_field_sets,
                        help="Field sets to serve, comma-separated: seed, all (default), "
                        "history, or several (one service each, same alternating "
                        "rounds).")  # fmt: skip
    parser.add_argument("--work-dir", default=str(Path(tempfile.gettempdir()) / "afm-bench"))
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--duration", type=int, default=5, help="Seconds per wrk run.")
    parser.add_argument("--rounds", type=int, default=3, help="Alternating runs per cell.")
    parser.add_argument("--candidates", type=int, nargs="+", default=list(CANDIDATES))
    parser.add_argument("--concurrency", type=int, nargs="+", default=list(CONCURRENCY))
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--env", nargs="*", default=[], help="Extra AFM_X=Y for the service.")
    parser.add_argument("--variant", action="append", default=[], metavar="NAME:AFM_X=Y,...",
                        help="Another service (per field set) with these settings.")  # fmt: skip
    parser.add_argument(
        "--bare", action="store_true", help="Also measure the bare reference endpoint."
    )
    parser.add_argument("--bare-fields", default="seed", choices=list(export_format.FIELD_SETS),
                        help="The field set the bare endpoint serves (default: seed).")  # fmt: skip
    parser.add_argument(
        "--floor", action="store_true", help="Also measure the HTTP stack alone (no model)."
    )
    parser.add_argument(
        "--breakdown-only", action="store_true", help="Only the in-process time breakdown."
    )
    parser.add_argument("--serve-bare", nargs=3, metavar=("PORT", "VERSION_DIR", "REDIS_URL"),
                        help=argparse.SUPPRESS)  # fmt: skip
    parser.add_argument("--serve-floor", metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.load_before = _load_average()
    return args


def _field_sets(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in export_format.FIELD_SETS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"expected {', '.join(export_format.FIELD_SETS)}: {text!r}"
        )
    return list(dict.fromkeys(names))


def _data_dir(args: argparse.Namespace) -> Path:
    """The given data, or an ML-1M-sized synthetic set (made once under --work-dir)."""
    if args.data_dir:
        return args.data_dir
    data_dir = Path(args.work_dir) / "data"
    if not (data_dir / "users.dat").exists():
        _cli("synth", "--out", str(data_dir), "--users", "6040", "--movies", "3706",
             "--ratings", "200000", "--seed", "1")  # fmt: skip
    return data_dir


def _model_dirs(args: argparse.Namespace, data_dir: Path) -> dict[str, Path]:
    """Field set -> export root. Sets ``args.served``: the field sets whose services run.

    Given --model-dir roots are taken as they are (their newest version's field set);
    otherwise one model per --fields set (and the bare endpoint's seed model) is trained 1
    epoch under --work-dir, once, and reused.
    """
    if args.model_dir:
        dirs = {_field_set(_latest(d)): d for d in args.model_dir}
        if len(dirs) != len(args.model_dir):
            sys.exit("give at most one --model-dir per field set")
        if args.bare and args.bare_fields not in dirs:
            sys.exit(f"--bare serves a {args.bare_fields!r} model: add a --model-dir of one")
        args.served = list(dirs)
        return dirs
    args.served = args.fields
    needed = [*args.fields, *([args.bare_fields] if args.bare else [])]
    dirs = {}
    for field_set in dict.fromkeys(needed):
        model_dir = Path(args.work_dir) / f"models-{field_set}"
        if export_format.latest_version(model_dir) is None:
            print(f"training a {field_set!r} model into {model_dir}", flush=True)
            _cli("train", "--dataset", "synthetic", "--data-dir", str(data_dir),
                 "--model-dir", str(model_dir), "--epochs", "1", "--fields", field_set)  # fmt: skip
        dirs[field_set] = model_dir
    return dirs


def _latest(model_dir: Path) -> Path:
    version = export_format.latest_version(model_dir)
    if version is None:
        sys.exit(f"no model version under {model_dir}")
    return model_dir / str(version)


def _field_set(version_dir: Path) -> str:
    fields = tuple(export_format.read_metadata(version_dir).fields)
    return next(name for name, value in export_format.FIELD_SETS.items() if value == fields)


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


def _breakdown(
    args: argparse.Namespace, model_dirs: dict[str, Path], users: list[str], movies: list[str]
) -> None:
    """Median microseconds of each step of one request, in this process, per served model."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import redis.asyncio as aioredis
    import uvloop

    from service.feature_store import FeatureStore
    from service.loaded_model import load_model

    models = {name: load_model(_latest(model_dirs[name])) for name in args.served}

    def median_us(fn, repeat: int = 300) -> float:  # noqa: ANN001
        fn()
        times = []
        for _ in range(repeat):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        return sorted(times)[len(times) // 2] * 1e6

    async def redis_us() -> tuple[float, float, object]:
        """(redis-py HGETALL, the store's read) medians, and one read."""
        store = FeatureStore.connect(args.redis_url, PREFIX, timeout=1.0)
        plain = aioredis.Redis.from_url(args.redis_url)
        namespace = (await plain.get(f"{PREFIX}current")).decode()
        plain_times, store_times = [], []
        for i in range(600):  # the first read fetches the movie table: warm-up, dropped
            user = users[i % len(users)]
            start = time.perf_counter()
            await plain.hgetall(f"{namespace}user:{user}")
            plain_times.append(time.perf_counter() - start)
            start = time.perf_counter()
            await store.read(user)
            store_times.append(time.perf_counter() - start)
        read = await store.read(users[0])
        await store.aclose()
        await plain.aclose()
        return _median_us(plain_times[100:]), _median_us(store_times[100:]), read

    plain_us, store_us, read = uvloop.run(redis_us())  # uvloop, as under uvicorn
    print(f"\nRedis, median µs: redis-py HGETALL {plain_us:.0f}, store read {store_us:.0f}"
          f"; load average {_load_average()}")  # fmt: skip
    for name, model in models.items():

        def build_table(model=model) -> None:  # noqa: ANN001
            model.scorer.item_table(dict(read.movies))  # a new movie table each time

        build_ms = median_us(build_table, repeat=5) / 1000
        print(f"item table of {len(read.movies)} movies, {name}: {build_ms:.1f} ms to build")
    print("\nWhere the time goes (median µs per request, in-process, one thread):")
    print("| fields | candidates | parse+validate | store read | build candidates |", end="")
    print(" score (NumPy) | explain (NumPy) | order+serialize |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, model in models.items():
        for n in args.candidates:
            parse, build, score, explain, out = _breakdown_row(
                model, n, users[0], movies, read, median_us
            )
            cells = (parse, store_us, build, score, explain, out)
            print(
                f"| {name} ({len(model.fields)}) | {n} | "
                + " | ".join(f"{c:.0f}" for c in cells)
                + " |"
            )


def _median_us(times: list[float]) -> float:
    return sorted(times)[len(times) // 2] * 1e6


def _breakdown_row(model, n: int, user: str, movies: list[str], read, median_us) -> tuple:  # noqa: ANN001
    """(parse+validate, build candidates, score, explain, order+serialize) medians, as the
    route does them, with the user's features and the movie table from a real
    ``FeatureStore.read``."""
    import orjson

    from service.candidates import Candidates
    from service.routes.scoring import ranked_indices, scores_json
    from service.schemas import ScoreRequest

    body = orjson.dumps({"user_id": int(user), "movie_ids": [int(m) for m in movies[:n]]})
    request = ScoreRequest.model_validate_json(body)

    def rows_of() -> Candidates:
        return Candidates.of_request(
            model.fields, request.user_id, read.user, request.movie_ids, read.movies
        )

    rows = rows_of()
    scored = model.score(rows)

    def respond() -> bytes:
        order = ranked_indices(scored.probability, request.top_k)
        scores = scores_json(request.movie_ids, scored, order)
        reply = {"user_id": 1, "model_version": 1, "user_known": True, "scores": scores}
        return orjson.dumps(reply)

    return (
        median_us(lambda: ScoreRequest.model_validate_json(body)),
        median_us(rows_of),
        median_us(lambda: model.score(rows), repeat=200),
        median_us(lambda: model.explain(rows), repeat=200),
        median_us(respond),
    )


if __name__ == "__main__":
    main()
