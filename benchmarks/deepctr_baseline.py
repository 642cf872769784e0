"""DeepCTR 0.9.4's AFM (or its FM ablation) on row files written by benchmarks/quality.py.

Runs in a separate DeepCTR venv, never in the project's (DeepCTR is not a dependency of
this project); create it outside the repository:

    python3.11 -m venv /work/deepctr-venv
    /work/deepctr-venv/bin/pip install tensorflow-cpu==2.21.0 deepctr==0.9.4 pandas
    /work/deepctr-venv/bin/pip install --no-deps tf-keras==2.21.0

    TF_USE_LEGACY_KERAS=1 /work/deepctr-venv/bin/python benchmarks/deepctr_baseline.py \\
        --split-dir DIR --fields all --model afm [--learning-rate 0.005] [--batch-size 4096] \\
        [--l2-embedding 0] [--max-epochs 50] [--patience 5] [--seed 42]

DIR holds train.tsv, valid.tsv and test.tsv: tab-separated, a header line naming the
columns, then one row per line with the raw values (``user_id gender age occupation zip
[last_watched] movie_id year genres [watched] label``). The model reads the columns of its
field set:

* ``all``: the eight fields; genres ("Comedy|Drama") is a VarLenSparseFeat, mean pooling.
* ``history``: the same, ``last_watched`` (how long before the row the user last watched
  a movie, "12" for 2**12 to 2**13 seconds), a SparseFeat, and ``watched``, the user's last
  20 movies ("50|1|181"), a VarLenSparseFeat of maxlen 20 sharing the movie_id embedding
  (``embedding_name``), mean pooling.

Ids come from the training split's values (1 stands for a value training never saw; 0 pads
the multi-valued fields). The network is DeepCTR's own: embedding 16, attention factor 8,
its default L2 1e-5 on the linear weights and on the attention net, no dropout, its default
embedding initialiser (normal, stddev 1e-4) seeded by ``--seed`` like every other
initialiser and the batch shuffle. ``--l2-embedding`` is DeepCTR's ``l2_reg_embedding``.
Adam, binary cross-entropy; early stopping on the exact validation AUC (Mann-Whitney, as
this project computes it) after ``--patience`` epochs without a better one, the best
epoch's weights restored for the test.

Prints one JSON line on stdout: test_auc, test_logloss, valid_auc (best epoch), best_epoch,
epochs_run, stopped ("patience" or "max-epochs"), history (per epoch: train_loss,
valid_auc, valid_logloss, seconds of the training pass, validation_seconds), rows, seconds
(the whole run). Standalone: imports deepctr, tensorflow, numpy and pandas only.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")  # DeepCTR needs tf-keras on TF >= 2.16
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import tensorflow as tf  # noqa: E402
from deepctr.feature_column import SparseFeat, VarLenSparseFeat, get_feature_names  # noqa: E402
from deepctr.models import AFM  # noqa: E402

SINGLE = ["user_id", "gender", "age", "occupation", "zip", "movie_id", "year"]
FIELD_SETS = {
    "all": [*SINGLE, "genres"],
    "history": [*SINGLE, "last_watched", "genres", "watched"],
}
MULTI_VALUED = {"genres": None, "watched": 20}  # field -> maxlen (None: the longest seen)
SHARES_TABLE = {"watched": "movie_id"}  # field -> the field whose ids and embedding it uses
PAD, UNKNOWN = 0, 1  # ids: 0 pads a multi-valued field, 1 is a value training never saw
SPLITS = ("train", "valid", "test")
EMBEDDING_DIM, ATTENTION_FACTOR = 16, 8


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Exact ROC AUC (Mann-Whitney U, ties as half): the same figure the project reports."""
    labels = np.asarray(labels) > 0.5
    pos = int(labels.sum())
    neg = len(labels) - pos
    order = np.argsort(scores, kind="mergesort")
    sorted_scores = np.asarray(scores)[order]
    _, first, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
    ranks = np.empty(len(scores), dtype=np.float64)
    ranks[order] = np.repeat(first + (counts + 1) / 2.0, counts)
    return float((ranks[labels].sum() - pos * (pos + 1) / 2.0) / (pos * neg))


def log_loss(labels: np.ndarray, probabilities: np.ndarray, eps: float = 1e-7) -> float:
    p = np.clip(np.asarray(probabilities, dtype=np.float64), eps, 1 - eps)
    y = np.asarray(labels, dtype=np.float64)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def read_split(path: Path, fields: list[str]) -> pd.DataFrame:
    frame = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False, quoting=3)
    missing = [c for c in [*fields, "label"] if c not in frame.columns]
    if missing:
        sys.exit(f"error: {path} has no column(s) {missing} (columns: {list(frame.columns)})")
    return frame


def _parts(joined: np.ndarray) -> list[list[str]]:
    return [[v for v in s.split("|") if v] for s in joined.tolist()]


def encode(
    frames: dict[str, pd.DataFrame], fields: list[str]
) -> tuple[dict[str, dict[str, np.ndarray]], dict[str, int], dict[str, int]]:
    """Model inputs per split, the vocabulary size of each field and each multi-valued
    field's maxlen. Vocabularies come from the training split only."""
    vocab: dict[str, np.ndarray] = {}
    for field in fields:
        if field in SHARES_TABLE:
            continue
        values = frames["train"][field].to_numpy()
        if field in MULTI_VALUED:
            values = np.array(sorted({v for bag in _parts(np.unique(values)) for v in bag}))
        vocab[field] = np.unique(values)
    sizes = {f: len(vocab[SHARES_TABLE.get(f, f)]) + 2 for f in fields}
    maxlen: dict[str, int] = {}
    inputs: dict[str, dict[str, np.ndarray]] = {name: {} for name in frames}

    def ids(values: np.ndarray, table: np.ndarray) -> np.ndarray:
        pos = np.searchsorted(table, values).clip(0, max(len(table) - 1, 0))
        return np.where(table[pos] == values, pos + 2, UNKNOWN).astype(np.int32)

    for field in fields:
        table = vocab[SHARES_TABLE.get(field, field)]
        for name, frame in frames.items():
            column = frame[field].to_numpy()
            if field not in MULTI_VALUED:
                inputs[name][field] = ids(column, table)
                continue
            # each distinct string once (the rows of one user or movie share theirs)
            codes, distinct = pd.factorize(column)
            bags = _parts(np.asarray(distinct, dtype=str))
            if field not in maxlen:
                maxlen[field] = MULTI_VALUED[field] or max(1, *(len(b) for b in bags))
            matrix = np.full((len(bags), maxlen[field]), PAD, dtype=np.int32)
            for row, bag in enumerate(bags):
                bag = bag[: maxlen[field]]
                if bag:
                    matrix[row, : len(bag)] = ids(np.asarray(bag, dtype=str), table)
            inputs[name][field] = matrix[codes]
    return inputs, sizes, maxlen


def feature_columns(fields: list[str], sizes: dict[str, int], maxlen: dict[str, int], seed: int):
    """DeepCTR's columns: SparseFeat per single-valued field, VarLenSparseFeat (mean) per
    multi-valued one; each embedding initialiser DeepCTR's default, seeded from ``seed``."""
    columns = []
    for i, field in enumerate(fields):
        initializer = tf.keras.initializers.RandomNormal(0.0, 1e-4, seed=seed * 100 + i)
        sparse = SparseFeat(
            field,
            vocabulary_size=sizes[field],
            embedding_dim=EMBEDDING_DIM,
            embeddings_initializer=initializer,
            embedding_name=SHARES_TABLE.get(field, field),
        )
        if field in MULTI_VALUED:
            columns.append(VarLenSparseFeat(sparse, maxlen=maxlen[field], combiner="mean"))
        else:
            columns.append(sparse)
    return columns


class ExactAucEarlyStopping(tf.keras.callbacks.Callback):
    """Per epoch: the training pass's seconds, the exact validation AUC and logloss; stops
    after ``patience`` epochs without a better AUC and restores the best weights."""

    def __init__(self, x: dict[str, np.ndarray], y: np.ndarray, patience: int) -> None:
        super().__init__()
        self.x, self.y, self.patience = x, y, patience
        self.best_auc, self.best_epoch, self.best_weights, self.waited = -np.inf, 0, None, 0
        self.history: list[dict] = []
        self.started = 0.0

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self.started = time.perf_counter()

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        seconds = time.perf_counter() - self.started
        p = self.model.predict(self.x, batch_size=65536, verbose=0).ravel()
        auc, loss = roc_auc(self.y, p), log_loss(self.y, p)
        self.history.append(
            {
                "epoch": epoch + 1,
                "train_loss": float((logs or {}).get("loss", float("nan"))),
                "valid_auc": auc,
                "valid_logloss": loss,
                "seconds": seconds,
                "validation_seconds": time.perf_counter() - self.started - seconds,
            }
        )
        sys.stderr.write(
            f"epoch {epoch + 1}: loss {(logs or {}).get('loss', 0):.4f} val_auc {auc:.4f} "
            f"({seconds:.1f}s)\n"
        )
        if auc > self.best_auc:
            self.best_auc, self.best_epoch, self.waited = auc, epoch + 1, 0
            self.best_weights = self.model.get_weights()
        else:
            self.waited += 1
            if self.waited >= self.patience:
                self.model.stop_training = True

    def on_train_end(self, logs: dict | None = None) -> None:
        if self.best_weights is not None:
            self.model.set_weights(self.best_weights)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--split-dir", type=Path, required=True)
    parser.add_argument("--fields", choices=sorted(FIELD_SETS), default="all")
    parser.add_argument("--model", choices=["afm", "fm"], default="afm")
    parser.add_argument("--learning-rate", type=float, default=5e-3)
    parser.add_argument("--batch-size", type=int, default=4096)
    parser.add_argument("--l2-embedding", type=float, default=0.0)
    parser.add_argument("--max-epochs", type=int, default=50)
    parser.add_argument("--patience", type=int, default=5)
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args()

    start = time.perf_counter()
    tf.keras.utils.set_random_seed(args.seed)
    fields = FIELD_SETS[args.fields]
    frames = {name: read_split(args.split_dir / f"{name}.tsv", fields) for name in SPLITS}
    inputs, sizes, maxlen = encode(frames, fields)
    labels = {name: frame["label"].astype(np.float32).to_numpy() for name, frame in frames.items()}
    columns = feature_columns(fields, sizes, maxlen, args.seed)
    assert get_feature_names(columns) == fields
    # use_attention=False is DeepCTR's own FM ablation of the same network
    model = AFM(
        columns,
        columns,
        use_attention=args.model == "afm",
        attention_factor=ATTENTION_FACTOR,
        l2_reg_embedding=args.l2_embedding,
        seed=args.seed,
        task="binary",
    )
    model.compile(tf.keras.optimizers.Adam(args.learning_rate), "binary_crossentropy")
    stopper = ExactAucEarlyStopping(inputs["valid"], labels["valid"], args.patience)
    model.fit(
        inputs["train"],
        labels["train"],
        batch_size=args.batch_size,
        epochs=args.max_epochs,
        shuffle=True,
        verbose=0,
        callbacks=[stopper],
    )
    test_p = model.predict(inputs["test"], batch_size=65536, verbose=0).ravel()
    epochs_run = len(stopper.history)  # the last epoch may end the patience and the cap alike
    print(
        json.dumps(
            {
                "test_auc": roc_auc(labels["test"], test_p),
                "test_logloss": log_loss(labels["test"], test_p),
                "valid_auc": stopper.best_auc,
                "best_epoch": stopper.best_epoch,
                "epochs_run": epochs_run,
                "stopped": "patience" if stopper.waited >= args.patience else "max-epochs",
                "history": stopper.history,
                "rows": {name: len(frame) for name, frame in frames.items()},
                "seconds": time.perf_counter() - start,
            }
        )
    )


if __name__ == "__main__":
    main()
