"""Peak memory and examples/s: in-memory training against rows streamed from prepared shards.

    .venv/bin/python benchmarks/train_memory.py --ratings 1000000 [--ratings 5000000 ...]
        [--work-dir /tmp/afm-train-memory] [--steps 1500] [--workers]

For each size: synthetic ratings (ML-1M's shape scaled: 6,040 users per 1M ratings, 3,706
movies), next-item with 10 negatives, all eight fields, embedding 16, attention factor 8,
batch 4096. Each measurement runs in its own process, so its peak RSS (VmHWM) is its own:

  prepare    ``afm-ctr prepare`` (protocol + encoding + writing the shards): wall time, RSS
  in-memory  what ``afm-ctr train`` does: protocol, encode, ``epoch_dataset``; then a warm-up
             of 20 batches (tracing, XLA) and ``--steps`` timed batches of one epoch
  streamed   what ``afm-ctr train --prepared`` does: ``shards.training_batches``; the same
             warm-up and ``--steps`` timed batches

With ``--workers``: ``afm-ctr train --prepared DIR --epochs 1`` as one process and as two
TF_CONFIG workers on this machine; examples/s of that one epoch from the chief's
metrics.json (first epoch: includes tracing; two workers also compile their collectives).

Prints one JSON object per measurement, with the load average before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
WARMUP_BATCHES = 20
BATCH = 4096


def peak_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def synthetic(work: Path, ratings: int) -> Path:
    sys.path.insert(0, str(REPO))
    from model.data.synth import write_synthetic

    folder = work / f"synthetic-{ratings}"
    if not folder.is_dir():
        users = max(100, round(6040 * ratings / 1_000_000))
        write_synthetic(folder, users=users, movies=3706, ratings=ratings, seed=1)
    return folder


def timed_fit(trainer, warmup, timed) -> dict:
    """Wall and CPU seconds of one ``fit`` over ``timed``, after one over ``warmup``."""
    trainer.fit(warmup, epochs=1, shuffle=False, verbose=0)
    wall, cpu = time.perf_counter(), time.process_time()
    trainer.fit(timed, epochs=1, shuffle=False, verbose=0)
    return {"wall_s": time.perf_counter() - wall, "cpu_s": time.process_time() - cpu}


def child(mode: str, source: Path, steps: int) -> dict:
    sys.path.insert(0, str(REPO))
    from model.cli import logs

    logs.quiet_tensorflow_import()
    import keras
    import numpy as np

    from model.config import AFMConfig, DataConfig, TrainConfig
    from model.contracts.export_format import FIELD_SETS
    from model.network.afm import build_afm
    from model.training.rows import epoch_dataset
    from model.training.train import compiled_trainer

    afm, train = AFMConfig(), TrainConfig(batch_size=BATCH, seed=1)
    fields = FIELD_SETS[afm.fields]
    keras.utils.set_random_seed(1)
    start = time.perf_counter()
    if mode == "in-memory":
        from model.data.protocols import prepare

        data = prepare(DataConfig(dataset="synthetic", data_dir=source, negatives=10, seed=1))
        vocabularies = data.vocabularies(fields)
        x = data.encode(data.train, vocabularies, fields)
        y = data.train.label.astype(np.float32)
        rng = np.random.default_rng(1)
        rows = len(y)
        warm = WARMUP_BATCHES * BATCH
        warmup = epoch_dataset({k: v[:warm] for k, v in x.items()}, y[:warm], BATCH, rng)
        timed = epoch_dataset(x, y, BATCH, rng).take(steps)
    else:
        from model.data.shards import Manifest, training_batches

        manifest = Manifest.load(source)
        vocabularies, rows = manifest.vocabularies, manifest.rows("train")
        files = manifest.files("train")
        warmup = training_batches(manifest, files, BATCH, seed=1, epoch=0).take(WARMUP_BATCHES)
        timed = training_batches(manifest, files, BATCH, seed=1, epoch=1).take(steps)
    ready = time.perf_counter() - start
    model = build_afm(fields, {f: len(vocabularies[f]) + 1 for f in fields}, afm, seed=1)
    trainer = compiled_trainer(model, train)
    load_before = os.getloadavg()[0]
    timing = timed_fit(trainer, warmup, timed)
    examples = min(steps * BATCH, rows)
    return {
        "mode": mode,
        "train_rows": rows,
        "data_ready_s": round(ready, 1),
        "timed_examples": examples,
        "examples_per_second": round(examples / timing["wall_s"]),
        "cpu_s_per_1m": round(timing["cpu_s"] / examples * 1e6, 2),
        "peak_rss_mb": round(peak_rss_mb()),
        "load_average_before_after": [round(load_before, 2), round(os.getloadavg()[0], 2)],
    }


def run_child(*args: str, env: dict | None = None) -> dict:
    result = subprocess.run(
        [sys.executable, __file__, *args],
        capture_output=True, text=True, env={**os.environ, **(env or {})}, cwd=REPO,
    )  # fmt: skip
    if result.returncode != 0:
        sys.exit(f"child {args} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def prepare(source: Path, out: Path) -> dict:
    if (out / "manifest.json").is_file():
        return {"mode": "prepare", "reused": str(out)}
    load_before = os.getloadavg()[0]
    start = time.perf_counter()
    result = subprocess.run(
        ["/usr/bin/time", "-f", "%M", sys.executable, "-m", "model.cli", "prepare",
         "--dataset", "synthetic", "--data-dir", str(source), "--seed", "1", "--shards", "8",
         "--out", str(out)],
        capture_output=True, text=True, cwd=REPO,
    )  # fmt: skip
    if result.returncode != 0:
        sys.exit(f"prepare failed:\n{result.stderr[-3000:]}")
    size = sum(p.stat().st_size for p in out.iterdir())
    return {
        "mode": "prepare",
        "wall_s": round(time.perf_counter() - start, 1),
        "peak_rss_mb": round(int(result.stderr.strip().splitlines()[-1]) / 1024),
        "bytes_on_disk": size,
        "load_average_before_after": [round(load_before, 2), round(os.getloadavg()[0], 2)],
    }


def one_epoch(prepared: Path, work: Path, workers: int) -> dict:
    """``afm-ctr train --prepared --epochs 1`` on ``workers`` processes; the chief's figures."""
    model_dir = work / f"models-{workers}w-{time.time_ns()}"
    command = [sys.executable, "-m", "model.cli", "train", "--prepared", str(prepared),
               "--epochs", "1", "--seed", "1", "--model-dir", str(model_dir)]  # fmt: skip
    load_before = os.getloadavg()[0]
    if workers == 1:
        subprocess.run(command, check=True, capture_output=True, cwd=REPO)
    else:
        sockets = [socket.socket() for _ in range(workers)]
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        addresses = [f"127.0.0.1:{s.getsockname()[1]}" for s in sockets]
        for s in sockets:
            s.close()
        processes = [
            subprocess.Popen(
                command,
                env={**os.environ, "TF_CONFIG": json.dumps(
                    {"cluster": {"worker": addresses}, "task": {"type": "worker", "index": i}}
                )},
                cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )
            for i in range(workers)
        ]  # fmt: skip
        if any(p.wait() != 0 for p in processes):
            sys.exit(f"a worker of {workers} failed")
    epoch = json.loads((model_dir / "1" / "metrics.json").read_text())["history"][0]
    return {
        "mode": f"{workers} worker(s), one epoch",
        "examples_per_second": round(epoch["examples_per_second"]),
        "seconds": round(epoch["seconds"], 1),
        "load_average_before_after": [round(load_before, 2), round(os.getloadavg()[0], 2)],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ratings", type=int, action="append", help="repeatable")
    parser.add_argument("--work-dir", type=Path, default=Path("/tmp/afm-train-memory"))
    parser.add_argument("--steps", type=int, default=1500, help="timed batches of 4096")
    parser.add_argument("--modes", default="in-memory,streamed")
    parser.add_argument("--workers", action="store_true", help="also one vs two workers")
    parser.add_argument("--child", choices=("in-memory", "streamed"), help=argparse.SUPPRESS)
    parser.add_argument("--source", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.source, args.steps)))
        return

    args.work_dir.mkdir(parents=True, exist_ok=True)
    print(json.dumps({"cpus": os.cpu_count(), "steps": args.steps, "batch": BATCH}))
    for ratings in args.ratings or [1_000_000]:
        source = synthetic(args.work_dir, ratings)
        prepared = args.work_dir / f"prepared-{ratings}"
        for mode in [m for m in args.modes.split(",") if m]:
            if mode == "streamed":
                print(json.dumps({"ratings": ratings, **prepare(source, prepared)}), flush=True)
            where = prepared if mode == "streamed" else source
            report = run_child("--child", mode, "--source", str(where), "--steps", str(args.steps))
            print(json.dumps({"ratings": ratings, **report}), flush=True)
        if args.workers:
            prepare(source, prepared)
            for workers in (1, 2):
                report = one_epoch(prepared, args.work_dir, workers)
                print(json.dumps({"ratings": ratings, **report}), flush=True)


if __name__ == "__main__":
    main()
