"""Training throughput (examples/s) and peak memory of the AFM trainer at ML-1M size.

    .venv/bin/python benchmarks/train_throughput.py [--source synthetic|ml-1m] [--epochs 1]
                                                    [--fields all|seed]

Sources:
  synthetic  1M synthetic ratings (6040 users x 3706 movies, ML-1M's shape), next-item protocol
             with 10 negatives: ~11M training rows (the article's setting)
  ml-1m      the shared ML-1M copy (../shared/data/ml-1m-notime), rating protocol: ~0.6M rows

Model and training settings are the reference's: embedding 16, attention factor 8, batch 4096.
The trainer is the one ``afm-ctr train`` uses (``model.training.train.compiled_trainer`` and
``model.training.rows.epoch_dataset``). A warm-up pass of a few batches traces and
XLA-compiles the step first (once per process in a real run too); then each timed epoch is
one full, shuffled pass.

Reported: examples/s by wall clock (the figure to compare), CPU seconds per 1M examples (less
sensitive to other processes on a shared machine), the load average before and after, and
the process's peak RSS.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SHARED_ML1M = REPO.parent / "shared" / "data" / "ml-1m-notime"
WARMUP_BATCHES = 20


def peak_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def prepare_data(source: str, seed: int):
    sys.path.insert(0, str(REPO))
    from model.config import DataConfig
    from model.data.protocols import prepare
    from model.data.synth import write_synthetic

    if source == "ml-1m":
        if not SHARED_ML1M.is_dir():
            sys.exit(f"error: {SHARED_ML1M} not found")
        return prepare(
            DataConfig(dataset="ml-1m", data_dir=SHARED_ML1M, protocol="rating", seed=seed)
        )
    folder = Path(tempfile.mkdtemp(prefix="afm-bench-"))
    write_synthetic(folder, users=6040, movies=3706, ratings=1_000_000, seed=seed)
    return prepare(DataConfig(dataset="synthetic", data_dir=folder, negatives=10, seed=seed))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", choices=("synthetic", "ml-1m"), default="synthetic")
    parser.add_argument("--epochs", type=int, default=1, help="timed epochs after the warm-up")
    parser.add_argument("--batch-size", type=int, default=4096)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--fields", choices=("seed", "all"), default="all")
    args = parser.parse_args()

    data = prepare_data(args.source, args.seed)
    import keras
    import numpy as np
    import tensorflow as tf

    from model.config import AFMConfig, TrainConfig
    from model.contracts.export_format import FIELD_SETS
    from model.network.afm import build_afm
    from model.training.rows import epoch_dataset
    from model.training.train import compiled_trainer

    afm = AFMConfig(fields=args.fields, embedding_dim=16, attention_factor=8)
    fields = FIELD_SETS[afm.fields]
    train = replace(TrainConfig(), batch_size=args.batch_size, seed=args.seed)
    keras.utils.set_random_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    vocabularies = data.vocabularies(fields)
    x = data.encode(data.train, vocabularies, fields)
    y = data.train.label.astype(np.float32)
    model = build_afm(fields, {f: len(vocabularies[f]) + 1 for f in fields}, afm, seed=args.seed)
    trainer = compiled_trainer(model, train)

    # Warm-up: the full and the final partial batch shape, so that tracing and XLA compiling
    # (once per batch shape and process, as in a training run) stay out of the timed epochs.
    warmup = WARMUP_BATCHES * args.batch_size + len(y) % args.batch_size
    trainer.fit(
        epoch_dataset({k: v[:warmup] for k, v in x.items()}, y[:warmup], args.batch_size, rng),
        epochs=1, shuffle=False, verbose=0,
    )  # fmt: skip
    load_before = os.getloadavg()[0]
    epochs = []
    for _ in range(args.epochs):
        batches = epoch_dataset(x, y, args.batch_size, rng)
        wall, cpu = time.perf_counter(), time.process_time()
        trainer.fit(batches, epochs=1, shuffle=False, verbose=0)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        epochs.append({"examples_per_second": len(y) / wall, "cpu_s_per_1m": cpu / len(y) * 1e6})
    report = {
        "source": args.source,
        "fields": list(fields),
        "train_rows": len(y),
        "batch_size": args.batch_size,
        "embedding_dim": afm.embedding_dim,
        "attention_factor": afm.attention_factor,
        "epochs": epochs,
        "best_examples_per_second": round(max(e["examples_per_second"] for e in epochs)),
        "peak_rss_mb": round(peak_rss_mb()),
        "load_average_before_after": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "cpus": os.cpu_count(),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
