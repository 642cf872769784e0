"""Time reading and protocol preparation at ML-1M size, and report each case's peak memory.

    .venv/bin/python benchmarks/prepare_data.py [--repeat 3] [--shared ../shared/data]

Cases (each in a fresh subprocess, so peak RSS is the case's own):
  synth      write 1M synthetic ratings (6040 users x 3706 movies, ML-1M's shape)
  next-item  load those ratings, then the next-item protocol with 10 negatives (~11M rows)
  rating     load the shared ML-1M copy (999,414 ratings), then the rating protocol
  seed-rows  read the next-item rows back from the article's tab-separated seed row files
Reported times are the best of --repeat runs; peak RSS is the process maximum.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SHAPE = {"users": 6040, "movies": 3706, "ratings": 1_000_000, "seed": 1}


def peak_rss_mb() -> float:
    """This process's high-water RSS (VmHWM: unlike ru_maxrss, not inherited over fork)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_case(case: str, folder: Path, repeat: int) -> dict:
    sys.path.insert(0, str(REPO))
    from model.config import DataConfig
    from model.data.movielens import load_ratings
    from model.data.protocols import next_item, prepare, rating_threshold
    from model.data.synth import write_synthetic

    timings: dict[str, list[float]] = {}

    def timed(name, fn, *args, **kwargs):
        start = time.perf_counter()
        result = fn(*args, **kwargs)
        timings.setdefault(name, []).append(time.perf_counter() - start)
        return result

    rows = None
    for _ in range(repeat):
        if case == "synth":
            timed("synth", write_synthetic, folder, **SHAPE)
        elif case == "next-item":
            ratings = timed("load", load_ratings, DataConfig(dataset="synthetic", data_dir=folder))
            data = timed("next-item", next_item, ratings, negatives=10, seed=42)
            rows = sum(v["rows"] for v in data.summary().values())
        elif case == "seed-rows":
            files = {f"{name}_file": folder / f"{name}.txt" for name in ("train", "valid", "test")}
            data = timed("seed-rows", prepare, DataConfig(**files))
            rows = sum(v["rows"] for v in data.summary().values())
        else:
            ratings = timed("load", load_ratings, DataConfig(dataset="ml-1m", data_dir=folder))
            data = timed("rating", rating_threshold, ratings, seed=42)
            rows = sum(v["rows"] for v in data.summary().values())
    peak_mb = peak_rss_mb()
    return {
        "case": case,
        "best_s": {k: round(min(v), 2) for k, v in timings.items()},
        "rows": rows,
        "peak_rss_mb": round(peak_mb),
    }


def write_seed_rows(synthetic: Path, out: Path) -> None:
    """The next-item rows of ``synthetic`` as seed row files (not timed)."""
    sys.path.insert(0, str(REPO))
    import numpy as np
    import pandas as pd

    from model.config import DataConfig
    from model.contracts.export_format import SEED_FIELDS
    from model.data.protocols import prepare

    data = prepare(DataConfig(dataset="synthetic", data_dir=synthetic))
    for name in ("train", "valid", "test"):
        rows = getattr(data, name)
        frame = pd.DataFrame(data.raw(rows, SEED_FIELDS))
        frame["label"] = rows.label.astype(np.int8)
        frame.to_csv(out / f"{name}.txt", sep="\t", header=False, index=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--shared", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--case", help=argparse.SUPPRESS)
    parser.add_argument("--folder", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        print(json.dumps(run_case(args.case, args.folder, args.repeat)))
        return

    with tempfile.TemporaryDirectory() as tmp:
        synthetic = Path(tmp) / "synthetic-1m"
        cases = [("synth", synthetic), ("next-item", synthetic), ("seed-rows", Path(tmp))]
        ml1m = args.shared / "ml-1m-notime"
        if ml1m.is_dir():
            cases.append(("rating", ml1m))
        else:
            print(f"skipping the rating case: {ml1m} not found")
        for case, folder in cases:
            if case == "seed-rows":
                write_seed_rows(synthetic, folder)
            out = subprocess.run(
                [sys.executable, __file__, "--case", case, "--folder", str(folder),
                 "--repeat", str(args.repeat)],
                check=True, capture_output=True, text=True,
            )  # fmt: skip
            print(out.stdout.strip())


if __name__ == "__main__":
    main()
