"""Test AUC of this project's AFM and FM ablation against DeepCTR 0.9.4's, on identical rows.

    .venv/bin/python benchmarks/quality_vs_deepctr.py \
        [--work-dir /tmp/afm-quality] [--splits ml-100k,ml-1m] \
        [--models deepctr-afm,deepctr-fm,afm,fm] [--data ../shared/data] \
        [--deepctr-python /work/deepctr-venv/bin/python] [--train-args="--epochs 20"] \
        [--seeds 42,43,44]

Splits (seed-row files written ONCE into --work-dir/<split>/{train,valid,test}.tsv, reused when
present, so every model trains on the identical rows):
  ml-100k  next-item: leave-last-out per user, 10 sampled negatives per positive, seed 42
  ml-1m    rating: >= 4 positive, <= 2 negative, 3 dropped, random 80/10/10, seed 42
           (from ml-1m-notime, whose ratings have no timestamps)

Models:
  deepctr-afm, deepctr-fm  DeepCTR's AFM / AFM(use_attention=False): embedding 16, attention
                           factor 8, DeepCTR's default L2 (1e-5), batch 4096, Adam 1e-3, early
                           stopping on exact validation AUC (patience 2, best weights restored),
                           up to --deepctr-epochs. Run by benchmarks/deepctr_baseline.py in the
                           DeepCTR venv, which must live outside the repo:
      python3.11 -m venv /work/deepctr-venv
      /work/deepctr-venv/bin/pip install tensorflow-cpu==2.21.0 deepctr==0.9.4 pandas
      /work/deepctr-venv/bin/pip install --no-deps tf-keras==2.21.0
  afm, fm                  ``python -m model.cli train`` on the seed files with default flags
                           (fm adds --no-attention), plus --train-args; metrics from the exported
                           version's metrics.json.
  afm-items, fm-items      the same, trained from the dataset itself with ``--fields all`` (the
                           movie's year and genres beside the six seed fields): the protocol
                           and seed that wrote the seed files give the identical rows, so the
                           difference to afm/fm is what the two item fields add.

``--seeds`` trains each of this project's models once per training seed (``--seed``: the
initial weights, the batch order, the out-of-vocabulary draws) and reports the mean, with each
seed's test AUC beside it. With seed files the rows stay identical; the -items models take
their split from the seed too. On ML-100K's 943 test positives one run's AUC moves by a few
thousandths from seed to seed, so two close models are compared by their means.

Wall time is each model's whole subprocess (TensorFlow import, data reading, training, and for
ours the export), so both sides pay the same fixed costs. Prints one markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SPLITS = ("ml-100k", "ml-1m")
MODELS = ("deepctr-afm", "deepctr-fm", "afm", "fm", "afm-items", "fm-items")
SPLIT_FILES = ("train", "valid", "test")
SOURCES = {"ml-100k": ("ml-100k", "next-item"), "ml-1m": ("ml-1m-notime", "rating")}


class BenchmarkError(Exception):
    """A setup problem reported as one line, not a traceback."""


def write_split(split: str, data_root: Path, out: Path) -> Path:
    """Write ``split``'s seed-row files into ``out`` once; reuse them when all three exist."""
    if all((out / f"{name}.tsv").is_file() for name in SPLIT_FILES):
        return out
    folder, protocol = SOURCES[split]
    data_dir = data_root / folder
    if not data_dir.is_dir():
        raise BenchmarkError(f"MovieLens data for {split} not found at {data_dir} (see --data)")
    sys.path.insert(0, str(REPO))
    from model.config import DataConfig
    from model.contracts.export_format import SEED_FIELDS
    from model.data.protocols import prepare

    data = prepare(DataConfig(dataset=split, data_dir=data_dir, protocol=protocol))
    out.mkdir(parents=True, exist_ok=True)
    for name in SPLIT_FILES:
        rows = getattr(data, name)
        raw = data.raw(rows, SEED_FIELDS)
        columns = [raw[f] for f in SEED_FIELDS] + [rows.label.astype(int).astype(str)]
        lines = ["\t".join(values) for values in zip(*columns, strict=True)]
        # write to a temp name first: a half-written split must never be "reused"
        tmp = out / f".{name}.tsv.partial"
        tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
        tmp.rename(out / f"{name}.tsv")
    return out


def run_deepctr(model: str, split_dir: Path, python: Path, max_epochs: int) -> dict:
    """DeepCTR's model in its own venv; returns the runner's JSON line plus the wall time."""
    command = [
        str(python),
        str(REPO / "benchmarks" / "deepctr_baseline.py"),
        "--split-dir",
        str(split_dir),
        "--model",
        model.removeprefix("deepctr-"),
        "--max-epochs",
        str(max_epochs),
    ]
    env = {**os.environ, "TF_USE_LEGACY_KERAS": "1", "TF_CPP_MIN_LOG_LEVEL": "2"}
    env.pop("PYTHONPATH", None)  # the project must not leak into DeepCTR's interpreter
    start = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise BenchmarkError(f"{model} failed:\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return {**result, "wall": wall}


def run_ours(
    model: str, split: str, split_dir: Path, data_root: Path, train_args: list[str]
) -> dict:
    """``afm-ctr train`` on the seed files (or, for *-items, on the dataset with all fields);
    metrics from the exported version's metrics.json."""
    folder, protocol = SOURCES[split]
    if model.endswith("-items"):
        data = [f"--dataset={split}", f"--data-dir={data_root / folder}", f"--protocol={protocol}"]
    else:
        data = [f"--{name}-file={split_dir / f'{name}.tsv'}" for name in SPLIT_FILES]
    with tempfile.TemporaryDirectory(prefix="afm-quality-") as model_dir:
        command = [
            sys.executable,
            "-m",
            "model.cli",
            "train",
            *data,
            f"--model-dir={model_dir}",
            *(["--no-attention"] if model.startswith("fm") else []),
            *train_args,
        ]
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        start = time.perf_counter()
        done = subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True)
        wall = time.perf_counter() - start
        if done.returncode != 0:
            raise BenchmarkError(f"afm-ctr train ({model}) failed:\n{done.stderr[-3000:]}")
        metrics_file = max(Path(model_dir).glob("*/metrics.json"))
        metrics = json.loads(metrics_file.read_text())
    return {
        "test_auc": metrics["test"]["auc"],
        "test_logloss": metrics["test"]["logloss"],
        "valid_auc": metrics["valid"]["auc"],
        "best_epoch": metrics["best_epoch"],
        "epochs_run": metrics["epochs_run"],
        "wall": wall,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work-dir", type=Path, default=None, help="Default: a new temp dir.")
    parser.add_argument("--splits", default=",".join(SPLITS))
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument(
        "--deepctr-python", type=Path, default=Path("/work/deepctr-venv/bin/python")
    )
    parser.add_argument("--deepctr-epochs", type=int, default=100)
    parser.add_argument("--train-args", default="", help="Extra `afm-ctr train` flags, quoted.")
    parser.add_argument(
        "--seeds", default="42", help="Training seeds for this project's models, comma-separated."
    )
    parser.add_argument("--json", type=Path, default=None, help="Also write the rows as JSON.")
    args = parser.parse_args()

    splits = [s for s in args.splits.split(",") if s]
    models = [m for m in args.models.split(",") if m]
    seeds = [int(s) for s in args.seeds.split(",") if s]
    try:
        unknown = [s for s in splits if s not in SPLITS] + [m for m in models if m not in MODELS]
        if unknown:
            raise BenchmarkError(f"unknown split or model {unknown}; choose from {SPLITS} {MODELS}")
        if any(m.startswith("deepctr-") for m in models) and not args.deepctr_python.is_file():
            raise BenchmarkError(
                f"DeepCTR venv not found: {args.deepctr_python} does not exist; create it as "
                "this script's docstring says, or pass --deepctr-python"
            )
        work = args.work_dir or Path(tempfile.mkdtemp(prefix="afm-quality-splits-"))
        rows = []
        for split in splits:
            split_dir = write_split(split, args.data, work / split)
            for model in models:
                print(f"[{split}] {model} ...", file=sys.stderr, flush=True)
                if model.startswith("deepctr-"):
                    result = run_deepctr(model, split_dir, args.deepctr_python, args.deepctr_epochs)
                else:
                    runs = [
                        run_ours(
                            model,
                            split,
                            split_dir,
                            args.data,
                            [*shlex.split(args.train_args), f"--seed={seed}"],
                        )
                        for seed in seeds
                    ]
                    result = _mean_of(runs)
                rows.append({"split": split, "model": model, **result})
                print(f"[{split}] {model}: {json.dumps(result)}", file=sys.stderr, flush=True)
    except BenchmarkError as exc:
        sys.exit(f"error: {exc}")

    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    print(f"splits in {work}; afm-ctr train extra flags: {args.train_args or '(none)'}\n")
    if len(seeds) > 1:
        print(f"this project's rows: means over training seeds {seeds}\n")
    print("| split | model | test AUC | per seed | test logloss | epochs (best) | wall time |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        per_seed = " / ".join(f"{auc:.4f}" for auc in r.get("per_seed_auc", ()))
        print(
            f"| {r['split']} | {r['model']} | {r['test_auc']:.4f} | {per_seed} "
            f"| {r['test_logloss']:.4f} | {r['epochs_run']:.3g} ({r['best_epoch']:.3g}) "
            f"| {r['wall']:.0f} s |"
        )


def _mean_of(runs: list[dict]) -> dict:
    """One row for several seeds' runs: the mean of each figure, and each run's test AUC."""
    mean = {key: sum(run[key] for run in runs) / len(runs) for key in runs[0]}
    return {**mean, "per_seed_auc": [run["test_auc"] for run in runs]}


if __name__ == "__main__":
    main()
