"""Like-for-like test AUC of this project's AFM and FM ablation against DeepCTR 0.9.4's.

    .venv/bin/python benchmarks/quality.py                 # run (or resume) the whole benchmark
    .venv/bin/python benchmarks/quality.py --tables        # the markdown tables of the results
    .venv/bin/python benchmarks/quality.py --quick         # a smoke run of every step

Options: --datasets ml-100k,ml-1m  --field-sets all,history  --models afm,deepctr-afm,fm,
deepctr-fm  --work-dir /work/afm-quality  --results benchmarks/quality_results.json
--data ../shared/data  --deepctr-python /work/deepctr-venv/bin/python  --code-ref HEAD
--jobs 1 (runs at once)  --dry-run (list what would run). A full run takes many hours on a
2-core machine; start it with ``nice`` and let it resume. ``--quick`` (QUICK) trains two
grid points of the two AFMs for one epoch on ML-100K with one negative per positive, two
runs at a time: under a minute on an idle 2-core machine.

**Resumable.** Each finished run is appended to the results file (written atomically) and
skipped when the command runs again; a run that fails is reported and left for the next
invocation. The file records the settings below; it refuses to resume with other settings.
Each run's own output (its per-epoch lines) goes to ``--work-dir/logs/``.

**Splits.** ``model.data.protocols.prepare`` writes each (dataset, seed) once as row files
(``--work-dir/splits/<dataset>-seed<N>/{train,valid,test}.tsv``, a header line, the raw value
of every field the models read, the label):

  ml-100k  next-item: leave-last-out per user, 10 sampled negatives per positive
  ml-1m    rating: >= 4 positive, <= 2 negative, 3 dropped, random 80/10/10
           (from ml-1m-notime, whose ratings have no timestamps)

DeepCTR trains from these files. This project's trainer takes one ``--seed`` for the split
and the initialisation, so it trains from the dataset itself with the same protocol and seed,
which gives the identical rows: the first run of ours on each split checks it (row and
positive counts of the three splits against its metadata.json, and its exported model's AUC
on the written test file against the trainer's own test AUC) and records the check.

**Models.** ``afm`` and ``fm`` are ``afm-ctr train`` (``fm``: ``--no-attention``) with the
project's defaults (embedding 16, attention factor 8, L2 1e-4 on the attention matrix, pair
offsets, FM start) and ``--oov-rate 0`` (DeepCTR simulates no unknown users either).
``deepctr-afm`` and ``deepctr-fm`` are DeepCTR's ``AFM`` and ``AFM(use_attention=False)``,
run by benchmarks/deepctr_baseline.py in the DeepCTR venv (its docstring says how to create
it, outside the repository); embedding 16, attention factor 8 and DeepCTR's other defaults.
Field sets: ``all`` (user_id gender age occupation zip movie_id year genres) and ``history``
(the same, ``last_watched``, how long before the row the user last watched a movie, and
``watched``, the user's last 20 movies; it needs the history field set in ``afm-ctr train
--fields``).

**Tuning.** The same GRID of points (learning rate, L2 on the embedding tables, batch size)
for every model, each trained on seed 42 only; the point with the best validation AUC is
chosen (the test rows of seed 42 never choose anything). Early stopping on the exact
validation AUC with PATIENCE epochs and MAX_EPOCHS at most, the best epoch's weights kept.

**Reported.** The chosen point trained on seeds 43, 44 and 45, each a new split AND a new
initialisation, none seen in tuning: their test AUC, its mean and spread. Each run keeps its
per-epoch history (validation AUC, seconds of the training pass; validation scoring is not
counted on either side), from which the tables give the time to the best epoch and to
TARGET_VALID_AUC. The two sides' runs alternate (afm, deepctr-afm, fm, deepctr-fm, ...) so
the load of a shared machine falls on both alike; each run records the load average.

**Code.** Ours runs from a ``git archive`` of ``--code-ref`` (default HEAD) under
``--work-dir/code/``, so edits in progress in the checkout never reach a run; each run records
the commit (``--code-ref worktree`` runs the checkout as it is).

**Attention check** (history field set): for every run of ``afm``, the exported model's
attention (its ``explain`` signature) on the pairs with ``watched``, summed per row and
averaged by the number of watched movies (0, 1-4, 5-19, 20), on the test rows and on a fixed
sample of training rows (on MovieLens nearly every test row has a full history).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime
import hashlib
import inspect
import json
import math
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SPLIT_FILES = ("train", "valid", "test")


@dataclass(frozen=True)
class Source:
    folder: str  # under --data
    dataset: str  # afm-ctr train --dataset
    protocol: str
    title: str


DATASETS = {
    "ml-100k": Source(
        "ml-100k", "ml-100k", "next-item", "ML-100K, next-item, {negatives} negatives"
    ),
    "ml-1m": Source("ml-1m-notime", "ml-1m", "rating", "ML-1M (ml-1m-notime), rating >= 4 vs <= 2"),
}
FIELD_SETS = ("all", "history")
MODELS = ("afm", "deepctr-afm", "fm", "deepctr-fm")  # the order runs alternate in
MODEL_NAMES = {
    "afm": "AFM (this project)",
    "fm": "FM (this project, `--no-attention`)",
    "deepctr-afm": "DeepCTR AFM",
    "deepctr-fm": "DeepCTR FM (`use_attention=False`)",
}
TUNING_SEED = 42
SEEDS = (43, 44, 45)

GRID = (
    {"learning_rate": 1e-3, "l2_embedding": 0.0, "batch_size": 4096},
    {"learning_rate": 5e-3, "l2_embedding": 0.0, "batch_size": 4096},
    {"learning_rate": 2e-2, "l2_embedding": 0.0, "batch_size": 4096},
    {"learning_rate": 1e-3, "l2_embedding": 1e-5, "batch_size": 4096},
    {"learning_rate": 5e-3, "l2_embedding": 1e-6, "batch_size": 4096},
    {"learning_rate": 5e-3, "l2_embedding": 1e-5, "batch_size": 4096},
    {"learning_rate": 1e-3, "l2_embedding": 0.0, "batch_size": 1024},
    {"learning_rate": 5e-3, "l2_embedding": 0.0, "batch_size": 1024},
)
"""The same eight points for every model. Learning rates 1e-3 (DeepCTR's old setting),
5e-3 (this project's default) and 2e-2; L2 on the embedding tables 0 (this project's
default), 1e-6 and 1e-5 (DeepCTR's default); batch 4096 (both defaults) and 1024."""
MAX_EPOCHS = 60
PATIENCE = 6
TARGET_VALID_AUC = {"ml-100k": 0.88, "ml-1m": 0.88}
"""The validation AUC whose first epoch at or above it the tables time ("time to target")."""

QUICK = {
    "datasets": ("ml-100k",),
    "field_sets": ("all",),
    "models": ("afm", "deepctr-afm"),
    "negatives": 1,
    "grid": GRID[1:3],
    "max_epochs": 1,
    "patience": 1,
    "tuning_seed": TUNING_SEED,
    "seeds": (TUNING_SEED,),
}
"""--quick: ML-100K with one negative per positive, two grid points, one epoch, one seed
(tuned and reported on seed 42), the two AFMs unless --models says else: a smoke run of every
step, not a measurement."""

NEGATIVES = 10  # per positive, next-item
OURS_FIXED_FLAGS = ("--oov-rate=0",)
HISTORY_BUCKETS = ((0, 0), (1, 4), (5, 19), (20, 20))
ATTENTION_TRAIN_SAMPLE = 100_000


class BenchmarkError(Exception):
    """A setup problem reported as one line, not a traceback."""


# ---------------------------------------------------------------- settings and results


def settings(quick: bool) -> dict:
    """What the results file's runs were made with; a resume must match it."""
    if quick:
        grid, max_epochs, patience = QUICK["grid"], QUICK["max_epochs"], QUICK["patience"]
        tuning_seed, seeds, negatives = QUICK["tuning_seed"], QUICK["seeds"], QUICK["negatives"]
    else:
        grid, max_epochs, patience, tuning_seed, seeds = (
            GRID,
            MAX_EPOCHS,
            PATIENCE,
            TUNING_SEED,
            SEEDS,
        )
        negatives = NEGATIVES
    return {
        "negatives": negatives,
        "fields": field_columns(),
        "grid": [dict(point) for point in grid],
        "max_epochs": max_epochs,
        "patience": patience,
        "tuning_seed": tuning_seed,
        "seeds": list(seeds),
        "quick": quick,
        "ours": {
            "command": "afm-ctr train --dataset D --data-dir DIR --protocol P --fields F "
            "--seed S --learning-rate LR --batch-size B --l2-embedding L2 --epochs MAX "
            "--patience PATIENCE --oov-rate 0 [--no-attention]",
            "fixed": "project defaults: embedding 16, attention factor 8, L2 1e-4 on the "
            "attention matrix, pair offsets, FM start, dropout 0; --oov-rate 0",
        },
        "deepctr": {
            "version": "deepctr 0.9.4, tensorflow-cpu 2.21.0, tf-keras 2.21.0",
            "fixed": "embedding 16, attention factor 8, DeepCTR defaults: L2 1e-5 on the "
            "linear weights and the attention net, no dropout, embeddings initialised "
            "normal(0, 1e-4) (seeded by the run's seed); Adam",
        },
        "timing": "seconds of each epoch's training pass; validation scoring excluded on "
        "both sides",
    }


class Results:
    """The results file: settings, splits, checks, runs; written atomically after each change."""

    def __init__(self, path: Path, current: dict) -> None:
        self.path = path
        if path.is_file():
            self.data = json.loads(path.read_text())
            if self.data.get("settings") != current:
                raise BenchmarkError(
                    f"{path} holds runs made with other settings (fields, grid, epochs, "
                    "seeds); move it away or pass another --results"
                )
        else:
            self.data = {
                "about": "benchmarks/quality.py: like-for-like test AUC against DeepCTR; "
                "`python benchmarks/quality.py --tables` prints the tables",
                "settings": current,
                "splits": {},
                "checks": {},
                "runs": [],
            }

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.partial")
        tmp.write_text(json.dumps(self.data, indent=1) + "\n")
        tmp.replace(self.path)

    def run(self, key: dict) -> dict | None:
        for run in self.data["runs"]:
            if all(run.get(k) == v for k, v in key.items()):
                return run
        return None

    def add_run(self, run: dict) -> None:
        self.data["runs"].append(run)
        self.save()


def run_key(dataset: str, fields: str, model: str, phase: str, seed: int, point: int) -> dict:
    return {
        "dataset": dataset,
        "fields": fields,
        "model": model,
        "phase": phase,
        "seed": seed,
        "point": point,
    }


# ---------------------------------------------------------------- code and splits


def code_dir(ref: str, work: Path) -> tuple[Path, str]:
    """(directory ours runs from, commit): a ``git archive`` of ``ref`` or the checkout."""
    if ref == "worktree":
        head = _git("rev-parse", "HEAD")
        dirty = bool(_git("status", "--porcelain", "--", "model"))
        return REPO, f"{head}{'+uncommitted' if dirty else ''}"
    commit = _git("rev-parse", f"{ref}^{{commit}}")
    target = work / "code" / commit[:12]
    if not target.is_dir():
        partial = work / "code" / f".{commit[:12]}.partial"
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        archive = subprocess.run(
            ["git", "-C", str(REPO), "archive", commit], check=True, capture_output=True
        ).stdout
        with tempfile.TemporaryFile() as f:
            f.write(archive)
            f.seek(0)
            with tarfile.open(fileobj=f) as tar:
                tar.extractall(partial, filter="data")
        partial.rename(target)
    return target, commit


def runner_dir(work: Path) -> Path:
    """A copy of this script and the DeepCTR runner, named by their content, that the
    subprocesses run: editing the checkout's copies never changes a run in progress."""
    here = Path(__file__).resolve().parent
    files = {name: (here / name).read_bytes() for name in ("quality.py", "deepctr_baseline.py")}
    digest = hashlib.sha256(b"".join(files.values())).hexdigest()[:12]
    target = work / "runner" / digest
    if not target.is_dir():
        partial = work / "runner" / f".{digest}.partial"
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        for name, content in files.items():
            (partial / name).write_bytes(content)
        partial.rename(target)
    return target


def _git(*args: str) -> str:
    done = subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise BenchmarkError(f"git {' '.join(args)}: {done.stderr.strip()}")
    return done.stdout.strip()


def split_dir(dataset: str, seed: int, args: argparse.Namespace) -> Path:
    negatives = args.settings["negatives"]
    suffix = (
        ""
        if negatives == NEGATIVES or DATASETS[dataset].protocol != "next-item"
        else (f"-negatives{negatives}")
    )
    return args.work_dir / "splits" / f"{dataset}-seed{seed}{suffix}"


def project_env(code: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(code), "TF_CPP_MIN_LOG_LEVEL": "2"}


def write_split(dataset: str, seed: int, fields: str, args: argparse.Namespace) -> dict:
    """The split's row files, written once (in a subprocess with ours' code): reused when they
    hold the columns ``fields`` needs, rewritten with more columns when not."""
    out = split_dir(dataset, seed, args)
    info_file = out / "split.json"
    if info_file.is_file():
        info = json.loads(info_file.read_text())
        if set(args.field_columns[fields]) <= set(info["columns"]):
            return info
    command = [
        sys.executable,
        str(args.runner / "quality.py"),
        "--write-split",
        str(out),
        "--dataset-name",
        dataset,
        "--seed",
        str(seed),
        "--data",
        str(args.data),
        "--negatives",
        str(args.settings["negatives"]),
    ]
    done = subprocess.run(command, env=project_env(args.code), capture_output=True, text=True)
    if done.returncode != 0:
        raise BenchmarkError(f"writing the {dataset} seed {seed} split failed:\n{done.stderr}")
    info = json.loads(info_file.read_text())
    if set(args.field_columns[fields]) - set(info["columns"]):
        raise BenchmarkError(
            f"the {fields} field set needs {args.field_columns[fields]}, but this code's "
            f"PreparedData.raw gives only {info['columns']}"
        )
    return info


def _write_split_main(out: Path, dataset: str, seed: int, data: Path, negatives: int) -> None:
    """--write-split: ``prepare`` the split and write its row files (runs with ours' code)."""
    from model.config import DataConfig
    from model.contracts.export_format import FIELD_SETS
    from model.data.protocols import prepare

    source = DATASETS[dataset]
    data_dir = data / source.folder
    if not data_dir.is_dir():
        sys.exit(f"error: MovieLens data for {dataset} not found at {data_dir} (see --data)")
    config = DataConfig(
        dataset=source.dataset,
        data_dir=data_dir,
        protocol=source.protocol,
        seed=seed,
        negatives=negatives,
    )
    if "history" in inspect.signature(prepare).parameters:  # the watched movies too
        prepared = prepare(config, history=True)
        columns = list(FIELD_SETS["history"])
    else:  # a version of the data side without them
        prepared = prepare(config)
        columns = list(FIELD_SETS["all"])
    out.mkdir(parents=True, exist_ok=True)
    info: dict = {
        "dataset": dataset,
        "seed": seed,
        "protocol": source.protocol,
        "negatives": negatives if source.protocol == "next-item" else None,
        "columns": columns,
        "rows": {},
        "positives": {},
        "sha256": {},
    }
    for name in SPLIT_FILES:
        rows = getattr(prepared, name)
        raw = prepared.raw(rows, columns)
        for field, values in raw.items():
            bad = [v for v in values[:1000] if "\t" in v or "\n" in v]
            if bad:
                sys.exit(f"error: a {field} value holds a tab or newline: {bad[0]!r}")
        body = [raw[f].astype(str) for f in columns] + [rows.label.astype(int).astype(str)]
        lines = ["\t".join([*columns, "label"])]
        lines += ["\t".join(values) for values in zip(*body, strict=True)]
        text = ("\n".join(lines) + "\n").encode()
        tmp = out / f".{name}.tsv.partial"  # a half-written file must never be reused
        tmp.write_bytes(text)
        tmp.replace(out / f"{name}.tsv")
        info["rows"][name] = len(rows)
        info["positives"][name] = int(rows.label.sum())
        info["sha256"][name] = hashlib.sha256(text).hexdigest()
    (out / "split.json").write_text(json.dumps(info, indent=1) + "\n")


# ---------------------------------------------------------------- runs


def run_ours(
    model: str,
    dataset: str,
    fields: str,
    seed: int,
    point: dict,
    keep: Path | None,
    args,
    log: Path | None = None,
) -> dict:
    """``afm-ctr train`` from the dataset with the split's protocol and seed; the history and
    figures from the exported version's metrics.json; with the history field set, the AFM's
    attention on the test rows. ``keep``: where the export stays (the reported runs); else
    it is removed."""
    source = DATASETS[dataset]
    model_dir = Path(tempfile.mkdtemp(prefix="afm-quality-", dir=args.work_dir))
    command = [
        sys.executable,
        "-m",
        "model.cli",
        "train",
        f"--dataset={source.dataset}",
        f"--data-dir={args.data / source.folder}",
        f"--protocol={source.protocol}",
        f"--negatives={args.settings['negatives']}",
        f"--fields={fields}",
        f"--seed={seed}",
        f"--learning-rate={point['learning_rate']}",
        f"--batch-size={point['batch_size']}",
        *([f"--l2-embedding={point['l2_embedding']}"] if args.ours_l2 else []),
        f"--epochs={args.settings['max_epochs']}",
        f"--patience={args.settings['patience']}",
        *OURS_FIXED_FLAGS,
        *(["--no-attention"] if model == "fm" else []),
        f"--model-dir={model_dir}",
    ]
    try:
        wall, _ = _timed(command, args.code, project_env(args.code), log)
        version = max(p.parent for p in model_dir.glob("*/metrics.json"))
        metrics = json.loads((version / "metrics.json").read_text())
        metadata = json.loads((version / "metadata.json").read_text())
        history = [
            {
                "epoch": r["epoch"],
                "train_loss": r["train_loss"],
                "valid_auc": r["valid_auc"],
                "valid_logloss": r["valid_logloss"],
                "seconds": r["seconds"],
            }
            for r in metrics["history"]
        ]
        result = {
            "test_auc": metrics["test"]["auc"],
            "test_logloss": metrics["test"]["logloss"],
            "valid_auc": metrics["valid"]["auc"],
            "best_epoch": metrics["best_epoch"],
            "epochs_run": metrics["epochs_run"],
            "stopped": _stopped(history, metrics["best_epoch"], args.settings),
            "history": history,
            "wall_seconds": wall,
            "commit": args.commit,
            "runner": args.runner.name,
        }
        split = (dataset, seed, fields)
        with_attention = fields == "history" and model == "afm"
        if split not in args.checked or with_attention:
            scored = score_export(version, split_dir(dataset, seed, args), args)
            if with_attention:
                result["attention"] = scored["attention"]
            if split not in args.checked:
                with args.lock:
                    check_rows(split, metadata, result, scored, args)
        if keep is not None:
            keep.parent.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(keep, ignore_errors=True)
            version.rename(keep)
        return result
    finally:
        shutil.rmtree(model_dir, ignore_errors=True)


def run_deepctr(
    model: str, dataset: str, fields: str, seed: int, point: dict, args, log: Path | None = None
) -> dict:
    """benchmarks/deepctr_baseline.py in DeepCTR's venv, on the split's row files."""
    command = [
        str(args.deepctr_python),
        str(args.runner / "deepctr_baseline.py"),
        f"--split-dir={split_dir(dataset, seed, args)}",
        f"--fields={fields}",
        f"--model={model.removeprefix('deepctr-')}",
        f"--learning-rate={point['learning_rate']}",
        f"--batch-size={point['batch_size']}",
        f"--l2-embedding={point['l2_embedding']}",
        f"--max-epochs={args.settings['max_epochs']}",
        f"--patience={args.settings['patience']}",
        f"--seed={seed}",
    ]
    env = {**os.environ, "TF_USE_LEGACY_KERAS": "1", "TF_CPP_MIN_LOG_LEVEL": "2"}
    env.pop("PYTHONPATH", None)  # the project must not leak into DeepCTR's interpreter
    wall, out = _timed(command, REPO, env, log)
    result = json.loads(out.strip().splitlines()[-1])
    history = result.pop("history")
    result.pop("seconds", None)
    result.pop("rows", None)
    result["stopped"] = _stopped(history, result["best_epoch"], args.settings)
    return {**result, "history": history, "wall_seconds": wall, "runner": args.runner.name}


def _timed(command: list[str], cwd: Path, env: dict, log: Path | None = None) -> tuple[float, str]:
    """Run ``command``; (wall seconds, its stdout). Its stderr goes to ``log`` as it comes
    (the per-epoch lines of a run in progress), else it is kept for an error message."""
    start = time.perf_counter()
    if log is None:
        done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True)
        stderr = done.stderr
    else:
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("w") as err:
            done = subprocess.run(
                command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=err, text=True
            )
        stderr = log.read_text(errors="replace")
    wall = time.perf_counter() - start
    if done.returncode != 0:
        shown = " ".join(command[:6])
        raise BenchmarkError(f"{shown} ... failed ({done.returncode}):\n{stderr[-3000:]}")
    return wall, done.stdout


def _stopped(history: list[dict], best_epoch: int, settings: dict) -> str:
    """Why a run ended: "patience" (that many epochs without a better validation AUC) or
    "max-epochs" (the cap came first)."""
    return "patience" if len(history) - best_epoch >= settings["patience"] else "max-epochs"


def check_rows(split: tuple, metadata: dict, result: dict, scored: dict, args) -> None:
    """That ours trained on the rows the files hold: counts against metadata.json, and the
    exported model's AUC on the written test file (``scored``) against the trainer's test
    AUC."""
    dataset, seed, fields = split
    info = json.loads((split_dir(dataset, seed, args) / "split.json").read_text())
    summary = metadata["data"]  # holds each split's rows and positives
    counts_match = all(
        summary[name]["rows"] == info["rows"][name]
        and summary[name]["positives"] == info["positives"][name]
        for name in SPLIT_FILES
    )
    check = {
        "rows": {name: info["rows"][name] for name in SPLIT_FILES},
        "positives": {name: info["positives"][name] for name in SPLIT_FILES},
        "counts_match_metadata": counts_match,
        "test_sha256": info["sha256"]["test"],
        "trainer_test_auc": result["test_auc"],
        "export_on_test_file_auc": scored["auc"],
        "identical": counts_match and abs(scored["auc"] - result["test_auc"]) < 1e-6,
        "commit": args.commit,
    }
    args.results.data["checks"][f"{dataset}/seed{seed}/{fields}"] = check
    args.results.save()
    args.checked.add(split)
    if not check["identical"]:
        raise BenchmarkError(f"ours did not train on the written rows of {split}: {check}")


def score_export(version: Path, split_dir: Path, args) -> dict:
    """--score-export in a subprocess with ours' code: AUC on the test file and, with the
    watched movies, attention on the test rows and a sample of the training rows."""
    command = [
        sys.executable,
        str(args.runner / "quality.py"),
        "--score-export",
        str(version),
        "--rows",
        str(split_dir),
    ]
    _, out = _timed(command, args.code, project_env(args.code))
    return json.loads(out.strip().splitlines()[-1])


def _score_export_main(version: Path, split: Path) -> None:
    """--score-export: the explain signature on every row of the split's test file; prints
    its AUC and, with the watched movies, the mean attention on their pairs by history
    length, on the test rows and on ATTENTION_TRAIN_SAMPLE training rows (on MovieLens,
    where every user rated 20 movies or more, nearly every test row has a full history)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import numpy as np
    import pandas as pd
    import tensorflow as tf

    from model.contracts import export_format
    from model.training.metrics import roc_auc

    metadata = json.loads((version / export_format.METADATA_FILE).read_text())
    fields = metadata["fields"]
    explain = tf.saved_model.load(str(version)).signatures[export_format.SIGNATURE_EXPLAIN]
    history = export_format.HISTORY_FIELD
    pairs = export_format.pairs(fields)
    columns = [i for i, pair in enumerate(pairs) if history in pair]

    def read(name: str) -> pd.DataFrame:
        return pd.read_csv(
            split / f"{name}.tsv", sep="\t", dtype=str, keep_default_na=False, quoting=3
        )

    def scored(frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        probability, attention = [], []
        for start in range(0, len(frame), 8192):
            part = frame.iloc[start : start + 8192]
            out = explain(**{f: tf.constant(part[f].to_numpy(dtype=str)) for f in fields})
            probability.append(out[export_format.OUTPUT_PROBABILITY].numpy())
            attention.append(out[export_format.OUTPUT_ATTENTION].numpy())
        labels = frame["label"].astype(np.float32).to_numpy()
        return labels, np.concatenate(probability), np.concatenate(attention)

    def by_length(frame: pd.DataFrame, labels, p, attention) -> dict:
        on_history = attention[:, columns].sum(axis=1)
        lengths = np.array(
            [
                min(len(export_format.split_values(history, s)), export_format.HISTORY_LENGTH)
                for s in frame[history].tolist()
            ]
        )
        buckets = {}
        for lo, hi in HISTORY_BUCKETS:
            mask = (lengths >= lo) & (lengths <= hi)
            auc = roc_auc(labels[mask], p[mask]) if mask.any() else float("nan")
            buckets[str(lo) if lo == hi else f"{lo}-{hi}"] = {
                "rows": int(mask.sum()),
                "history_attention_share": float(on_history[mask].mean()) if mask.any() else None,
                "history_attention_sd": float(on_history[mask].std()) if mask.any() else None,
                "auc": None if math.isnan(auc) else auc,
            }
        return buckets

    test = read("test")
    labels, p, attention = scored(test)
    report: dict = {"rows": len(test), "auc": roc_auc(labels, p)}
    if history in fields:
        train = read("train")
        rng = np.random.default_rng(0)
        sample = train.iloc[np.sort(rng.permutation(len(train))[:ATTENTION_TRAIN_SAMPLE])]
        report["attention"] = {
            "history_pairs": len(columns),
            "pairs": len(pairs),
            "uniform_share": len(columns) / len(pairs),
            "by_history_length": by_length(test, labels, p, attention),
            "train_sample_by_history_length": by_length(sample, *scored(sample)),
        }
    print(json.dumps(report))


# ---------------------------------------------------------------- the plan


@dataclass(frozen=True)
class Job:
    dataset: str
    fields: str
    model: str
    phase: str  # "tune" or "test"
    seed: int
    point: int

    @property
    def key(self) -> dict:
        return run_key(self.dataset, self.fields, self.model, self.phase, self.seed, self.point)

    def __str__(self) -> str:
        return (
            f"[{self.dataset} {self.fields}] {self.model} {self.phase} seed {self.seed} "
            f"point {self.point}"
        )


def chosen_point(results: Results, dataset: str, fields: str, model: str) -> int | None:
    """The grid point with the best validation AUC on the tuning seed, once all have run."""
    grid, seed = results.data["settings"]["grid"], results.data["settings"]["tuning_seed"]
    runs = [results.run(run_key(dataset, fields, model, "tune", seed, i)) for i in range(len(grid))]
    if any(r is None for r in runs):
        return None
    return max(range(len(grid)), key=lambda i: runs[i]["valid_auc"])


def plan(results: Results, args) -> Iterator[Job]:
    """Jobs in order, the two sides alternating; test jobs once their model's tuning is done
    (a plan is re-read after every run, so a finished tuning releases its tests)."""
    s = results.data["settings"]
    for fields in args.field_sets:
        for dataset in args.datasets:
            for point in range(len(s["grid"])):
                for model in args.models:
                    yield Job(dataset, fields, model, "tune", s["tuning_seed"], point)
            for seed in s["seeds"]:
                for model in args.models:
                    point = chosen_point(results, dataset, fields, model)
                    if point is not None:
                        yield Job(dataset, fields, model, "test", seed, point)


def execute(job: Job, args) -> dict:
    s = args.settings
    point = s["grid"][job.point]
    if job.phase == "test" and job.seed == s["tuning_seed"]:  # --quick: tuned and reported alike
        tuned = args.results.run(
            run_key(job.dataset, job.fields, job.model, "tune", job.seed, job.point)
        )
        return {k: v for k, v in tuned.items() if k not in job.key}
    load = os.getloadavg()[0]
    started = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    name = f"{job.dataset}-{job.fields}-{job.model}-{job.phase}-seed{job.seed}-point{job.point}"
    log = args.work_dir / "logs" / f"{name}.log"
    continued = len(CONTINUED)
    if job.model.startswith("deepctr-"):
        result = run_deepctr(job.model, job.dataset, job.fields, job.seed, point, args, log)
    else:
        keep = None
        if job.phase == "test":
            name = f"{job.dataset}-{job.fields}-{job.model}-seed{job.seed}"
            keep = args.work_dir / "models" / name
        result = run_ours(job.model, job.dataset, job.fields, job.seed, point, keep, args, log)
    result = {**result, "started": started, "load_average": [load, os.getloadavg()[0]]}
    if len(CONTINUED) > continued:  # stopped and continued (SIGSTOP, SIGTSTP) while it ran
        result["paused"] = True
    return result


CONTINUED: list[float] = []
"""When this process got SIGCONT: a run in progress then was stopped for a while (someone
paused the benchmark), so its times include the pause and the tables leave them out."""


def _on_continue(signum, frame) -> None:
    CONTINUED.append(time.time())


def blocked(job: Job, args) -> str | None:
    """Why a job cannot run with this setup, or None."""
    point = args.settings["grid"][job.point]
    if job.model.startswith("deepctr-"):
        if not args.deepctr_python.is_file():
            return f"no DeepCTR venv at {args.deepctr_python}"
    elif point["l2_embedding"] and not args.ours_l2:
        return "this code's `afm-ctr train` has no --l2-embedding yet"
    return None


def run_all(args) -> int:
    """Every runnable job of the plan, ``args.jobs`` at a time (1: strictly one after the
    other, as timings need); returns the exit status."""
    attempted: set[str] = set()
    failed: list[str] = []
    running: dict[concurrent.futures.Future, Job] = {}
    with concurrent.futures.ThreadPoolExecutor(max_workers=args.jobs) as pool:
        while True:
            while len(running) < args.jobs:
                job = next(
                    (
                        j
                        for j in plan(args.results, args)
                        if str(j) not in attempted
                        and args.results.run(j.key) is None
                        and blocked(j, args) is None
                    ),
                    None,
                )
                if job is None:
                    break
                attempted.add(str(job))
                if args.dry_run:
                    print(f"would run {job}", file=sys.stderr)
                    continue
                print(f"{_now()} {job} ...", file=sys.stderr, flush=True)
                try:  # in this thread: two jobs must not write one split at once
                    if not (job.phase == "test" and job.seed == args.settings["tuning_seed"]):
                        write_split(job.dataset, job.seed, job.fields, args)
                except BenchmarkError as exc:
                    print(f"{_now()} {job} FAILED: {exc}", file=sys.stderr, flush=True)
                    failed.append(str(job))
                    continue
                running[pool.submit(execute, job, args)] = job
            if not running:
                break
            finished, _ = concurrent.futures.wait(
                running, return_when=concurrent.futures.FIRST_COMPLETED
            )
            for future in finished:
                job = running.pop(future)
                try:
                    result = future.result()
                except BenchmarkError as exc:
                    print(f"{_now()} {job} FAILED: {exc}", file=sys.stderr, flush=True)
                    failed.append(str(job))
                    continue
                with args.lock:
                    args.results.add_run({**job.key, **args.settings["grid"][job.point], **result})
                print(
                    f"{_now()} {job}: valid AUC {result['valid_auc']:.4f}, test AUC "
                    f"{result['test_auc']:.4f}, best epoch {result['best_epoch']}/"
                    f"{result['epochs_run']} ({result['stopped']}), "
                    f"{result.get('wall_seconds', 0):.0f} s",
                    file=sys.stderr,
                    flush=True,
                )
    if args.dry_run:
        print("(the reported seeds' runs follow once a model's tuning is done)", file=sys.stderr)
    skipped: dict[str, list[str]] = {}
    for job in plan(args.results, args):
        reason = blocked(job, args)
        if reason and args.results.run(job.key) is None:
            skipped.setdefault(reason, []).append(str(job))
    for reason, jobs in skipped.items():
        print(f"not run ({reason}): {len(jobs)} runs, e.g. {jobs[0]}", file=sys.stderr)
    if failed:
        print(f"{len(failed)} runs failed; run the command again to retry them", file=sys.stderr)
    return 1 if failed else 0


def _now() -> str:
    return datetime.datetime.now().strftime("%H:%M:%S")


# ---------------------------------------------------------------- tables


def tables(data: dict) -> str:
    """The markdown tables of a results file."""
    s = data["settings"]
    runs = data["runs"]
    out = []
    combos = sorted(
        {(r["dataset"], r["fields"]) for r in runs},
        key=lambda c: (list(DATASETS).index(c[0]), FIELD_SETS.index(c[1])),
    )
    seeds = s["seeds"]
    out.append(
        f"Grid points ({len(s['grid'])}, the same for every model), tuned on seed "
        f"{s['tuning_seed']}'s validation AUC; reported: seeds "
        f"{', '.join(map(str, seeds))} (split and initialisation). Early stopping on "
        f"validation AUC, patience {s['patience']}, at most {s['max_epochs']} epochs. Times: "
        "seconds of the training passes up to that epoch (validation scoring not counted), "
        "mean over the reported seeds.\n"
    )
    for dataset, fields in combos:
        target = TARGET_VALID_AUC.get(dataset)
        title = DATASETS[dataset].title.format(negatives=s["negatives"])
        out.append(f"#### {title}, `{fields}` fields\n")
        models = [m for m in MODELS if any(r["model"] == m for r in runs)]
        out.append(
            f"| model | test AUC (mean ± sd) | {' / '.join(f'seed {x}' for x in seeds)} "
            f"| chosen point (lr, L2 emb., batch) | epochs: best / run | time to best "
            f"| time to valid AUC {target} |"
        )
        out.append("|---|---|---|---|---|---|---|")
        for model in MODELS:
            tests = [_find(runs, dataset, fields, model, "test", seed) for seed in seeds]
            tests = [t for t in tests if t is not None]
            if not tests:
                continue
            aucs = [t["test_auc"] for t in tests]
            sd = statistics.stdev(aucs) if len(aucs) > 1 else float("nan")
            point = s["grid"][tests[0]["point"]]
            timed = [t for t in tests if not t.get("paused")]  # a paused run's times are off
            to_best = [_seconds_to(t["history"], t["best_epoch"]) for t in timed]
            to_target = [_seconds_to_auc(t["history"], target) for t in timed]
            reached = [x for x in to_target if x is not None]
            target_text = f"{statistics.mean(reached):.0f} s" if reached else "not reached"
            if reached and len(reached) < len(to_target):
                target_text += f" ({len(reached)} of {len(to_target)} reached)"
            best_text = f"{statistics.mean(to_best):.0f} s" if to_best else "–"
            if len(timed) < len(tests):
                best_text += f" ({len(tests) - len(timed)} paused run(s) left out)"
            epochs = ", ".join(f"{t['best_epoch']}/{t['epochs_run']}" for t in tests)
            so_far = "" if len(aucs) == len(seeds) else " (so far)"
            out.append(
                f"| {MODEL_NAMES[model]} | {statistics.mean(aucs):.4f} ± {sd:.4f} "
                f"| {' / '.join(f'{a:.4f}' for a in aucs)}{so_far} "
                f"| {_point_text(point)} | {epochs} | {best_text} "
                f"| {target_text} |"
            )
        out.append("")
        out.append(
            f"Validation AUC on seed {s['tuning_seed']} per grid point (best epoch / epochs "
            "run, seconds of training to the best epoch; **bold**: chosen; `cap`: stopped by "
            "the epoch cap):\n"
        )
        out.append(
            "| # | lr | L2 emb. | batch | " + " | ".join(MODEL_NAMES[m] for m in models) + " |"
        )
        out.append("|---|---|---|---|" + "---|" * len(models))
        chosen = {}
        for model in models:
            tuned = [
                _find(runs, dataset, fields, model, "tune", s["tuning_seed"], i)
                for i in range(len(s["grid"]))
            ]
            if all(t is not None for t in tuned):
                chosen[model] = max(range(len(tuned)), key=lambda i: tuned[i]["valid_auc"])
        for i, point in enumerate(s["grid"]):
            cells = []
            for model in models:
                t = _find(runs, dataset, fields, model, "tune", s["tuning_seed"], i)
                if t is None:
                    cells.append("")
                    continue
                seconds = _seconds_to(t["history"], t["best_epoch"])
                text = (
                    f"{t['valid_auc']:.4f} ({t['best_epoch']}/{t['epochs_run']}, {seconds:.0f} s)"
                )
                if t["stopped"] == "max-epochs":
                    text += " `cap`"
                cells.append(f"**{text}**" if chosen.get(model) == i else text)
            out.append(
                f"| {i} | {point['learning_rate']:g} | {point['l2_embedding']:g} "
                f"| {point['batch_size']} | " + " | ".join(cells) + " |"
            )
        out.append("")
        attention = [
            (t["seed"], t["attention"])
            for t in (_find(runs, dataset, fields, "afm", "test", seed) for seed in seeds)
            if t is not None and t.get("attention")
        ]
        if attention:
            first = attention[0][1]
            out.append(
                f"Attention of this project's AFM (the reported seeds' models) on the "
                f"{first['history_pairs']} pairs with `watched`, summed (of {first['pairs']} "
                f"pairs; uniform weights would give them {first['uniform_share']:.3f}), by the "
                f"number of watched movies; rows in brackets. Test rows, and a sample of "
                f"{ATTENTION_TRAIN_SAMPLE:,} training rows:\n"
            )
            heads = [f"seed {x}, test" for x, _ in attention]
            heads += [f"seed {x}, training" for x, _ in attention]
            out.append("| watched movies | " + " | ".join(heads) + " |")
            out.append("|---|" + "---|" * len(heads))
            for bucket in first["by_history_length"]:
                cells = []
                for key in ("by_history_length", "train_sample_by_history_length"):
                    for _, a in attention:
                        b = a.get(key, {}).get(bucket)
                        share = None if b is None else b["history_attention_share"]
                        cells.append("–" if share is None else f"{share:.3f} ({b['rows']:,})")
                out.append(f"| {bucket} | " + " | ".join(cells) + " |")
            out.append("")
    waits = [(_longest_wait(r["history"], r["best_epoch"]), r) for r in runs]
    if waits:
        wait, worst = max(waits, key=lambda w: w[0])
        capped = sum(r["stopped"] == "max-epochs" for r in runs)
        out.append(
            f"Early stopping: the longest stretch of epochs without a new best validation AUC "
            f"that a run later recovered from is {wait} (patience {s['patience']}; "
            f"{worst['model']}, {worst['dataset']} {worst['fields']}, {worst['phase']} seed "
            f"{worst['seed']} point {worst['point']}); {capped} of {len(runs)} runs reached "
            f"the cap of {s['max_epochs']} epochs.\n"
        )
    checks = data.get("checks", {})
    if checks:
        same = [k for k, c in checks.items() if c["identical"]]
        out.append(
            f"Identical rows: on {len(same)} of {len(checks)} splits checked, this project's "
            "trainer (from the dataset, same protocol and seed) saw the written files' row and "
            "positive counts, and its export scores the written test file at its own test AUC "
            "(to 1e-6)."
        )
    return "\n".join(out)


def _find(runs, dataset, fields, model, phase, seed, point=None):
    for r in runs:
        if (r["dataset"], r["fields"], r["model"], r["phase"], r["seed"]) == (
            dataset,
            fields,
            model,
            phase,
            seed,
        ) and (point is None or r["point"] == point):
            return r
    return None


def _longest_wait(history: list[dict], best_epoch: int) -> int:
    """The most epochs in a row without a new best validation AUC before ``best_epoch``."""
    best, wait, longest = -1.0, 0, 0
    for h in history[:best_epoch]:
        if h["valid_auc"] > best:
            best, wait = h["valid_auc"], 0
        else:
            wait += 1
            longest = max(longest, wait)
    return longest


def _point_text(point: dict) -> str:
    return f"{point['learning_rate']:g}, {point['l2_embedding']:g}, {point['batch_size']}"


def _seconds_to(history: list[dict], epoch: int) -> float:
    return sum(h["seconds"] for h in history[:epoch])


def _seconds_to_auc(history: list[dict], target: float | None) -> float | None:
    if target is None:
        return None
    for i, h in enumerate(history):
        if h["valid_auc"] >= target:
            return _seconds_to(history, i + 1)
    return None


# ---------------------------------------------------------------- main


def ours_has_l2(code: Path) -> bool:
    done = subprocess.run(
        [sys.executable, "-m", "model.cli", "train", "--help"],
        cwd=code,
        env={**project_env(code), "COLUMNS": "200"},
        capture_output=True,
        text=True,
    )
    return "--l2-embedding" in done.stdout


def field_columns() -> dict[str, list[str]]:
    """The columns each field set reads, as ``afm-ctr train --fields`` names them."""
    users = ["user_id", "gender", "age", "occupation", "zip"]
    movies = ["movie_id", "year", "genres"]
    return {"all": [*users, *movies], "history": [*users, "last_watched", *movies, "watched"]}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--datasets", default=",".join(DATASETS))
    parser.add_argument("--field-sets", default=None, help="Default: all,history.")
    parser.add_argument("--models", default=None, help=f"Default: {','.join(MODELS)}.")
    parser.add_argument("--work-dir", type=Path, default=Path("/work/afm-quality"))
    parser.add_argument(
        "--results",
        type=Path,
        default=None,
        help="Default: benchmarks/quality_results.json (--quick: in --work-dir).",
    )
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument(
        "--deepctr-python", type=Path, default=Path("/work/deepctr-venv/bin/python")
    )
    parser.add_argument(
        "--code-ref",
        default="HEAD",
        help="Commit ours runs from (a git archive of it); 'worktree': the checkout as it is.",
    )
    parser.add_argument("--quick", action="store_true", help="Tiny smoke run; see QUICK.")
    parser.add_argument(
        "--jobs",
        type=int,
        default=None,
        help="Runs at once (default 1; --quick: 2). Above 1 the timings mean nothing.",
    )
    parser.add_argument("--tables", action="store_true", help="Print the tables and exit.")
    parser.add_argument("--dry-run", action="store_true", help="List the runs to do and exit.")
    # internal steps, run in subprocesses with ours' code
    parser.add_argument("--write-split", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--dataset-name", help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--negatives", type=int, default=10, help=argparse.SUPPRESS)
    parser.add_argument("--score-export", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--rows", type=Path, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.write_split:
        _write_split_main(args.write_split, args.dataset_name, args.seed, args.data, args.negatives)
        return
    if args.score_export:
        _score_export_main(args.score_export, args.rows)
        return
    if args.results is None:
        args.results = (
            args.work_dir / "quick_results.json"
            if args.quick
            else REPO / "benchmarks" / "quality_results.json"
        )
    try:
        if args.tables:
            if not args.results.is_file():
                raise BenchmarkError(f"no results at {args.results}")
            print(tables(json.loads(args.results.read_text())))
            return
        args.settings = settings(args.quick)
        args.datasets = _choose(args.datasets, DATASETS, "dataset")
        default_field_sets = QUICK["field_sets"] if args.quick else FIELD_SETS
        args.field_sets = _choose(
            args.field_sets or ",".join(default_field_sets), FIELD_SETS, "field set"
        )
        default_models = QUICK["models"] if args.quick else MODELS
        args.models = _choose(args.models or ",".join(default_models), MODELS, "model")
        if args.quick:
            args.datasets = [d for d in args.datasets if d in QUICK["datasets"]]
        args.work_dir.mkdir(parents=True, exist_ok=True)
        args.results = Results(args.results, args.settings)
        args.code, args.commit = code_dir(args.code_ref, args.work_dir)
        args.runner = runner_dir(args.work_dir)
        args.ours_l2 = ours_has_l2(args.code)
        args.field_columns = field_columns()
        args.jobs = args.jobs or (2 if args.quick else 1)
        signal.signal(signal.SIGCONT, _on_continue)
        args.lock = threading.Lock()
        args.checked = {
            (c.split("/")[0], int(c.split("/")[1].removeprefix("seed")), c.split("/")[2])
            for c, v in args.results.data["checks"].items()
            if v["identical"]
        }
        print(
            f"ours from {args.code} ({args.commit[:12]}; --l2-embedding "
            f"{'yes' if args.ours_l2 else 'not yet'}); results in {args.results.path}",
            file=sys.stderr,
        )
        status = run_all(args)
    except BenchmarkError as exc:
        sys.exit(f"error: {exc}")
    if not args.dry_run:
        print(tables(args.results.data))
    sys.exit(status)


def _choose(text: str, known, what: str) -> list[str]:
    chosen = [x for x in text.split(",") if x]
    unknown = [x for x in chosen if x not in known]
    if unknown:
        raise BenchmarkError(f"unknown {what} {unknown}; choose from {list(known)}")
    return chosen


if __name__ == "__main__":
    main()
