"""Does a model trained on the impression log rank the next, later impressions at least as
well as the model that served them?

    .venv/bin/python benchmarks/from_logs_auc.py [--seeds 1 2 3] [--work-dir DIR]
    .venv/bin/python benchmarks/from_logs_auc.py --table benchmarks/from_logs_auc.json

Per seed, through the command line as a user runs it (Redis at --redis-url, keys under
``--prefix`` + the seed, removed before and after):

1. ``afm-ctr synth`` (the seed) and version 1: one epoch on little data, as click_loop.sh;
   ``load-features``; ``afm-ctr serve`` on a free port, impressions logged.
2. Window A: ``afm-ctr simulate`` (seed ``1000 * seed + 1``), exported with ``logs export
   --flush`` into ``logs-a/``; then window B (seed ``1000 * seed + 2``), exported into
   ``logs-b/``. Both are served by version 1; every A impression is older than every B one
   (checked from the files' ``ts``).
3. Version 2: ``train --from-logs logs-a`` (window A alone); version 3: the same with the
   dataset's rows (``--dataset synthetic``), both with version 1's fields, to early stopping.
4. On window B's exported rows (label = clicked), the exact ROC AUC of: version 1's logged
   ``score`` (what ranked them), versions 2 and 3 scoring the same rows with the features as
   logged (each version's exported SavedModel, its score signature on raw strings), and the
   position alone (-position). Version 1 is also rescored from its SavedModel, which shows
   the logged features reproduce the logged scores.

Writes the results to --out (JSON) and prints a Markdown table. Everything is seeded; the
figures do not depend on the machine's speed.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from model.training.metrics import roc_auc  # noqa: E402

IMPRESSION_KEYS = "k1:from-logs-auc"
VARIANTS = ("v1", "v2_log", "v2_log_dataset")
"""version 1 (its logged scores), version 2 (window A's log), version 3 (A's log + dataset)."""
LABELS = {
    "v1": "v1 (logged scores)",
    "v2_log": "v2 (log A)",
    "v2_log_dataset": "v2 (log A + dataset)",
}
RANKINGS = {
    "v1": "version 1",
    "v2_log": "version 2 (log A)",
    "v2_log_dataset": "version 3 (log A + dataset)",
}
COLUMNS = (
    "impression_id",
    "movie_id",
    "label",
    "position",
    "score",
    "model_version",
    "ts",
    "user_id",
    "gender",
    "age",
    "occupation",
    "zip",
    "watched",
    "year",
    "genres",
)
"""What the evaluation reads of the exported files (the Parquet columns, by name)."""


@dataclass
class Config:
    seeds: list[int] = field(default_factory=lambda: [1, 2, 3])
    users: int = 2000
    movies: int = 1000
    ratings: int = 10000
    requests_a: int = 4000
    requests_b: int = 2000
    candidates: int = 50
    top_k: int = 10
    epochs: int = 10
    work_dir: Path = Path("/tmp/afm-from-logs-auc")
    redis_url: str = "redis://127.0.0.1:6379/0"
    prefix: str = "fromlogs:"
    dataset_variant: bool = True
    expected_clicks_requests: int = 1000


def say(message: str) -> None:
    print(f"[{datetime.now(UTC):%H:%M:%S}] {message}", flush=True)


def afm(*args: str, env: dict[str, str] | None = None, show: str = "") -> str:
    """Run ``afm-ctr ARGS`` as a user would; its output (stdout and stderr), whose lines
    matching ``show`` are printed as they come. Raises with the output when it fails."""
    cmd = [sys.executable, "-m", "model.cli", *args]
    proc = subprocess.Popen(
        cmd,
        cwd=REPO,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if show and re.search(show, line):
            print("    " + line.rstrip(), flush=True)
    if proc.wait() != 0:
        raise RuntimeError(
            f"afm-ctr {' '.join(args)} failed ({proc.returncode}):\n{''.join(lines)}"
        )
    return "".join(lines)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def clear_prefix(redis_url: str, prefix: str) -> None:
    """Delete the keys under ``prefix`` (never FLUSHDB: the Redis may be shared)."""
    import redis

    client = redis.Redis.from_url(redis_url)
    keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
    for i in range(0, len(keys), 1000):
        client.delete(*keys[i : i + 1000])
    client.close()


def read_log(directory: Path) -> pa.Table:
    """Every exported row under ``directory`` (the columns COLUMNS names; one missing reads
    as null), ``ts`` as ms since the epoch."""
    tables = []
    for path in sorted(directory.glob("hour=*/*.parquet")):
        table = pq.read_table(path)
        n = len(table)
        tables.append(
            pa.table(
                {c: table.column(c) if c in table.column_names else pa.nulls(n) for c in COLUMNS}
            )
        )
    if not tables:
        raise RuntimeError(f"no exported rows under {directory}")
    table = pa.concat_tables(tables, promote_options="permissive")
    ts = table.column("ts")
    if pa.types.is_timestamp(ts.type):
        ts = ts.cast(pa.timestamp("ms", tz="UTC")).cast(pa.int64())
    return table.set_column(COLUMNS.index("ts"), "ts", ts.cast(pa.int64()))


def window_summary(table: pa.Table) -> dict:
    ts = table.column("ts").to_numpy()

    def when(ms: int) -> str:
        return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds")

    return {
        "impressions": len(set(table.column("impression_id").to_pylist())),
        "rows": len(table),
        "clicks": int(np.asarray(table.column("label").to_numpy(zero_copy_only=False)).sum()),
        "first_impression": when(int(ts.min())),
        "last_impression": when(int(ts.max())),
        "first_ts_ms": int(ts.min()),
        "last_ts_ms": int(ts.max()),
    }


def export_window(cfg: Config, prefix: str, out: Path, expected: int) -> dict:
    """``logs export --flush`` into ``out`` until it holds ``expected`` impressions (the
    service writes its log a few ms after each reply), at most ~20 s; the window's summary."""
    have = 0
    for _ in range(20):
        afm(
            "logs",
            "export",
            "--out",
            str(out),
            "--redis-url",
            cfg.redis_url,
            "--prefix",
            prefix,
            "--flush",
            show=r"^exported",
        )
        have = 0
        if any(out.glob("hour=*/*.parquet")):
            have = window_summary(read_log(out))["impressions"]
        if have >= expected:
            break
        time.sleep(1.0)
    if have != expected:
        say(f"  note: {have} impressions exported, {expected} replies counted")
    return window_summary(read_log(out))


def simulate(cfg: Config, url: str, data: Path, requests: int, seed: int) -> dict:
    """Play ``requests`` requests; the counts the simulator printed for version 1."""
    text = afm(
        "simulate",
        "--url",
        url,
        "--data-dir",
        str(data),
        "--requests",
        str(requests),
        "--seed",
        str(seed),
        "--candidates",
        str(cfg.candidates),
        "--top-k",
        str(cfg.top_k),
        show=r"CTR",
    )
    found = re.search(r"(\d+)/\w+: (\d+) requests, (\d+) shown, (\d+) clicks", text)
    if not found:
        return {"requests": requests}
    version, replies, shown, clicks = map(int, found.groups())
    return {"version": version, "requests": replies, "shown": shown, "clicks": clicks}


def score_rows(version_dir: Path, table: pa.Table) -> np.ndarray:
    """The click probabilities the version's SavedModel gives ``table``'s rows, each field
    read from the column of its name (the features as logged; null reads as unknown)."""
    from model.cli.logs import quiet_tensorflow_import
    from model.contracts import export_format

    quiet_tensorflow_import()
    import tensorflow as tf

    metadata = export_format.read_metadata(version_dir)
    saved = tf.saved_model.load(str(version_dir))
    signature = saved.signatures[export_format.SIGNATURE_SCORE]
    inputs = {}
    for name in metadata.fields:
        values = table.column(name).cast(pa.string()).fill_null("").to_pylist()
        inputs[name] = tf.constant(values, dtype=tf.string)
    out = signature(**inputs)[export_format.OUTPUT_PROBABILITY]
    return out.numpy().astype(np.float64)


def truth_aucs(data: Path, rows: pa.Table, labels: np.ndarray, position: np.ndarray) -> dict:
    """References from the simulator's planted truth on the same rows: the AUC of the chance
    each row was clicked (examined at its position, then clicked), and of its chance once
    examined (the planted taste alone, the position left out)."""
    from model.data.synth import PlantedTaste
    from model.online.traffic import click_probability, examination

    taste = PlantedTaste(data)
    users = np.asarray(rows.column("user_id").cast(pa.int64()).to_numpy())
    movies = np.asarray(rows.column("movie_id").cast(pa.int64()).to_numpy())
    clicked = np.empty(len(users))
    for user in np.unique(users):
        at = np.flatnonzero(users == user)
        clicked[at] = click_probability(taste, int(user), movies[at].tolist())
    return {
        "truth_auc": roc_auc(labels, examination(position) * clicked),
        "truth_without_position_auc": roc_auc(labels, clicked),
    }


def expected_clicks(cfg: Config, data: Path, models: Path, versions: dict[str, Path]) -> dict:
    """benchmarks/expected_clicks.py on the versions: the true expected clicks per request of
    each version's top k of random candidates (the whole candidate list, not only what
    version 1 showed)."""
    cmd = [
        sys.executable,
        str(REPO / "benchmarks" / "expected_clicks.py"),
        "--data-dir",
        str(data),
        "--model-dir",
        str(models),
        "--requests",
        str(cfg.expected_clicks_requests),
        "--candidates",
        str(cfg.candidates),
        "--top-k",
        str(cfg.top_k),
        *(p.name for p in versions.values()),
    ]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"expected_clicks.py failed:\n{done.stdout}\n{done.stderr}")
    found = dict(re.findall(r"^\| (.+?) \| ([\d.]+) \|$", done.stdout, re.M))
    by_version = {p.name: name for name, p in versions.items()}
    out = {}
    for label, value in found.items():
        version = re.fullmatch(r"version (\d+)", label)
        key = (
            by_version.get(version.group(1))
            if version
            else ("truth" if label.startswith("the truth") else "unranked")
        )
        out[key] = float(value)
    return out


def version_summary(version_dir: Path) -> dict:
    metadata = json.loads((version_dir / "metadata.json").read_text())
    metrics = metadata.get("metrics", {})
    log = metadata.get("data", {}).get("log")
    return {
        "version": int(version_dir.name),
        "fields": metadata["fields"],
        "best_epoch": metrics.get("best_epoch"),
        "own_test_auc": metrics.get("test", {}).get("auc"),
        "log_window": log,
    }


def run_seed(cfg: Config, seed: int) -> dict:
    """The whole pipeline for one seed; its results."""
    started = time.monotonic()
    work = cfg.work_dir / f"seed-{seed}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    data, models = work / "data", work / "models"
    logs_a, logs_b = work / "logs-a", work / "logs-b"
    prefix = f"{cfg.prefix}{seed}:"
    clear_prefix(cfg.redis_url, prefix)

    say(
        f"seed {seed}: synthetic data ({cfg.users} users, {cfg.movies} movies, "
        f"{cfg.ratings} ratings), version 1 (one epoch)"
    )
    afm(
        "synth",
        "--out",
        str(data),
        "--users",
        str(cfg.users),
        "--movies",
        str(cfg.movies),
        "--ratings",
        str(cfg.ratings),
        "--seed",
        str(seed),
    )
    afm(
        "train",
        "--dataset",
        "synthetic",
        "--data-dir",
        str(data),
        "--model-dir",
        str(models),
        "--epochs",
        "1",
        "--seed",
        str(seed),
        show=r"^best epoch",
    )
    afm(
        "load-features",
        "--dataset",
        "synthetic",
        "--data-dir",
        str(data),
        "--redis-url",
        cfg.redis_url,
        "--prefix",
        prefix,
    )
    v1_fields = json.loads((models / "1" / "metadata.json").read_text())["fields"]

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {
        **os.environ,
        "TF_CPP_MIN_LOG_LEVEL": "2",
        "AFM_IMPRESSION_KEYS": IMPRESSION_KEYS,
        "AFM_LOG_IMPRESSIONS": "true",
        "AFM_RELOAD_INTERVAL": "3600",
    }
    serve_log = open(work / "serve.log", "w")  # noqa: SIM115 - closed below
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "model.cli",
            "serve",
            "--model-dir",
            str(models),
            "--port",
            str(port),
            "--redis-url",
            cfg.redis_url,
            "--prefix",
            prefix,
        ],
        cwd=REPO,
        env=env,
        stdout=serve_log,
        stderr=subprocess.STDOUT,
    )
    try:
        import httpx

        deadline = time.monotonic() + 180
        while True:
            if server.poll() is not None:
                raise RuntimeError(f"afm-ctr serve exited:\n{(work / 'serve.log').read_text()}")
            try:
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("afm-ctr serve not ready within 180 s")
            time.sleep(0.5)
        say(f"seed {seed}: serving version 1 on :{port}; window A, {cfg.requests_a} requests")
        sim_a = simulate(cfg, url, data, cfg.requests_a, 1000 * seed + 1)
        time.sleep(1.0)
        window_a = export_window(cfg, prefix, logs_a, sim_a["requests"])
        say(f"seed {seed}: window B, {cfg.requests_b} requests")
        sim_b = simulate(cfg, url, data, cfg.requests_b, 1000 * seed + 2)
        time.sleep(1.0)
        window_b = export_window(cfg, prefix, logs_b, sim_b["requests"])
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        serve_log.close()
        clear_prefix(cfg.redis_url, prefix)
    if not window_a["last_ts_ms"] < window_b["first_ts_ms"]:
        raise RuntimeError("window A's impressions are not all older than window B's")

    say(
        f"seed {seed}: version 2 on window A's log alone (to early stopping, "
        f"at most {cfg.epochs} epochs)"
    )
    field_set = "history" if "watched" in v1_fields else "all" if "year" in v1_fields else "seed"
    train = ["train", "--from-logs", str(logs_a), "--model-dir", str(models),
             "--epochs", str(cfg.epochs), "--seed", str(seed), "--fields", field_set]  # fmt: skip
    afm(*train, show=r"^best epoch")
    versions = {"v1": models / "1", "v2_log": models / "2"}
    if cfg.dataset_variant:
        say(f"seed {seed}: version 3 on window A's log and the dataset's rows")
        afm(*train, "--dataset", "synthetic", "--data-dir", str(data), show=r"^best epoch")
        versions["v2_log_dataset"] = models / "3"

    say(f"seed {seed}: AUC on window B's {window_b['rows']:,} logged rows")
    rows_b = read_log(logs_b)
    labels = np.asarray(rows_b.column("label").to_numpy(zero_copy_only=False), dtype=np.float64)
    logged = np.asarray(rows_b.column("score").to_numpy(zero_copy_only=False), dtype=np.float64)
    position = np.asarray(rows_b.column("position").to_numpy(zero_copy_only=False), dtype=float)
    served = set(rows_b.column("model_version").to_pylist())
    result = {
        "seed": seed,
        "traffic_seeds": {"a": 1000 * seed + 1, "b": 1000 * seed + 2},
        "window_a": {**window_a, "simulated": sim_a},
        "window_b": {**window_b, "simulated": sim_b, "served_by": sorted(served)},
        "position_auc": roc_auc(labels, -position),
        **truth_aucs(data, rows_b, labels, position),
    }
    for name, version_dir in versions.items():
        summary = version_summary(version_dir)
        rescored = score_rows(version_dir, rows_b)
        if name == "v1":
            summary["auc"] = roc_auc(labels, logged)
            summary["rescored_auc"] = roc_auc(labels, rescored)
            summary["rescored_max_abs_diff"] = float(np.max(np.abs(rescored - logged)))
        else:
            summary["auc"] = roc_auc(labels, rescored)
            log = summary["log_window"] or {}
            summary["trained_before_b"] = bool(
                log.get("last_impression")
                and datetime.fromisoformat(log["last_impression"]).timestamp() * 1000
                < window_b["first_ts_ms"]
            )
        result[name] = summary
    if cfg.expected_clicks_requests:
        say(
            f"seed {seed}: expected clicks of each version's top {cfg.top_k} of "
            f"{cfg.candidates} on {cfg.expected_clicks_requests} seeded requests"
        )
        result["expected_clicks"] = expected_clicks(cfg, data, models, versions)
    result["seconds"] = round(time.monotonic() - started, 1)
    line = "  ".join(f"{n} {result[n]['auc']:.4f}" for n in versions)
    say(
        f"seed {seed}: AUC on B: {line}  position {result['position_auc']:.4f} "
        f"({result['seconds']:.0f} s)"
    )
    return result


def summarize(seeds: list[dict]) -> dict:
    means = {}
    for name in (*VARIANTS, "position"):
        values = [
            s[name]["auc"] if name != "position" else s["position_auc"]
            for s in seeds
            if name == "position" or name in s
        ]
        if values:
            means[name] = float(np.mean(values))
    reached = {
        name: sum(s[name]["auc"] >= s["v1"]["auc"] for s in seeds if name in s)
        for name in VARIANTS[1:]
    }
    return {"mean_auc": means, "seeds_at_least_v1": reached, "seeds": len(seeds)}


def table(results: dict) -> str:
    seeds = results["seeds"]
    has_dataset = any("v2_log_dataset" in s for s in seeds)
    head = ["seed", LABELS["v1"], LABELS["v2_log"]]
    head += [LABELS["v2_log_dataset"]] if has_dataset else []
    head += ["position only", "A: impressions / rows / clicks", "B: impressions / rows / clicks"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---:|" * len(head)]

    def counts(w: dict) -> str:
        return f"{w['impressions']:,} / {w['rows']:,} / {w['clicks']:,}"

    for s in seeds:
        cells = [str(s["seed"]), f"{s['v1']['auc']:.4f}", f"{s['v2_log']['auc']:.4f}"]
        cells += [f"{s['v2_log_dataset']['auc']:.4f}"] if has_dataset else []
        cells += [f"{s['position_auc']:.4f}", counts(s["window_a"]), counts(s["window_b"])]
        lines.append("| " + " | ".join(cells) + " |")
    mean = results["summary"]["mean_auc"]
    cells = ["mean", f"{mean['v1']:.4f}", f"{mean['v2_log']:.4f}"]
    cells += [f"{mean['v2_log_dataset']:.4f}"] if has_dataset else []
    cells += [f"{mean['position']:.4f}", "", ""]
    lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "References on the same window B rows, from the simulator's planted truth:",
        "",
        "| seed | truth: P(click) at its position | truth without the position |",
        "|---:|---:|---:|",
    ]
    lines += [
        f"| {s['seed']} | {s['truth_auc']:.4f} | {s['truth_without_position_auc']:.4f} |"
        for s in seeds
    ]
    ranked = [s for s in seeds if "expected_clicks" in s]
    if ranked:
        names = [n for n in VARIANTS if n in ranked[0]["expected_clicks"]]
        config = results["config"]
        lines += [
            "",
            f"Expected clicks per request of each version's top {config['top_k']} of "
            f"{config['candidates']} random candidates ({config['expected_clicks_requests']} "
            "seeded requests, benchmarks/expected_clicks.py):",
            "",
            "| seed | "
            + " | ".join(RANKINGS[n] for n in names)
            + " | the truth's own ranking | unranked |",
            "|" + "---:|" * (len(names) + 3),
        ]
        for s in ranked:
            e = s["expected_clicks"]
            cells = [str(s["seed"]), *(f"{e[n]:.3f}" for n in names)]
            cells += [
                f"{e.get('truth', float('nan')):.3f}",
                f"{e.get('unranked', float('nan')):.3f}",
            ]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def run(cfg: Config, out: Path | None, command: str = "") -> dict:
    """Every seed's pipeline; the results, also written to ``out`` as JSON."""
    started = datetime.now(UTC)
    load_before = os.getloadavg()
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
    ).stdout.strip()
    seeds = []
    for seed in cfg.seeds:
        seeds.append(run_seed(cfg, seed))
    config = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(cfg).items()}
    results = {
        "command": command,
        "started_at": started.isoformat(timespec="seconds"),
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {
            "nproc": os.cpu_count(),
            "load_before": [round(x, 2) for x in load_before],
            "load_after": [round(x, 2) for x in os.getloadavg()],
        },
        "commit": commit,
        "config": config,
        "seeds": seeds,
        "summary": summarize(seeds),
    }
    if out is not None:
        out.write_text(json.dumps(results, indent=2) + "\n")
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    defaults = Config()
    parser.add_argument("--seeds", type=int, nargs="+", default=defaults.seeds)
    for name in (
        "users",
        "movies",
        "ratings",
        "requests_a",
        "requests_b",
        "candidates",
        "top_k",
        "epochs",
    ):
        parser.add_argument(
            f"--{name.replace('_', '-')}", type=int, default=getattr(defaults, name)
        )
    parser.add_argument(
        "--expected-clicks-requests",
        type=int,
        default=defaults.expected_clicks_requests,
        help="Requests of benchmarks/expected_clicks.py per seed; 0 skips it.",
    )
    parser.add_argument("--work-dir", type=Path, default=defaults.work_dir)
    parser.add_argument("--redis-url", default=defaults.redis_url)
    parser.add_argument("--prefix", default=defaults.prefix)
    parser.add_argument(
        "--no-dataset-variant",
        action="store_true",
        help="Train only version 2 (window A's log alone).",
    )
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "from_logs_auc.json")
    parser.add_argument("--table", type=Path, help="Print the table of a results file and stop.")
    args = parser.parse_args()
    if args.table:
        print(table(json.loads(args.table.read_text())))
        return
    cfg = Config(
        seeds=args.seeds,
        users=args.users,
        movies=args.movies,
        ratings=args.ratings,
        requests_a=args.requests_a,
        requests_b=args.requests_b,
        candidates=args.candidates,
        top_k=args.top_k,
        epochs=args.epochs,
        work_dir=args.work_dir,
        redis_url=args.redis_url,
        prefix=args.prefix,
        dataset_variant=not args.no_dataset_variant,
        expected_clicks_requests=args.expected_clicks_requests,
    )
    command = " ".join([".venv/bin/python", "benchmarks/from_logs_auc.py", *sys.argv[1:]])
    results = run(cfg, args.out, command)
    print(table(results))
    print(f"results in {args.out}")


if __name__ == "__main__":
    main()
