"""Cold start: how well unseen movies and unknown users are scored, with and without item fields.

    .venv/bin/python benchmarks/cold_start.py [--dataset ml-100k] [--protocol next-item]
        [--holdout-movies 0.05] [--fields seed,all] [--oov-rates 0,0.05] [--epochs 20] \
        [--learning-rate 0.005]

For each field set and OOV rate, trains on ``--dataset`` (from ``../shared/data``) with a
seeded share of the movies held out of training, with the trainer's default settings
otherwise, and reports on the test split:

  test AUC            all test rows
  held-out AUC        the test rows of the held-out movies only (``metrics.test_held_out_movies``)
  unknown user AUC    all test rows scored as a user Redis does not know (every user field "")
  mean p / base rate  the mean probability of those rows against the test split's positive rate:
                      a calibrated cold start gives about 1

Prints one markdown table. Everything runs in this process on the exported signatures, the
way the service calls them.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared" / "data"
FOLDERS = {"ml-100k": "ml-100k", "ml-1m": "ml-1m-notime"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", choices=sorted(FOLDERS), default="ml-100k")
    parser.add_argument("--protocol", choices=("next-item", "rating"), default="next-item")
    parser.add_argument("--holdout-movies", type=float, default=0.05)
    parser.add_argument("--fields", default="seed,all")
    parser.add_argument("--oov-rates", default="0,0.05")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--learning-rate", type=float, default=None, help="Default: the trainer's.")
    args = parser.parse_args()
    folder = SHARED / FOLDERS[args.dataset]
    if not folder.is_dir():
        sys.exit(f"error: {folder} not found (real MovieLens data, see ../shared/data/README)")

    sys.path.insert(0, str(REPO))
    import numpy as np
    import tensorflow as tf

    from model.config import AFMConfig, DataConfig, TrainConfig
    from model.contracts.export_format import (
        FIELD_SETS,
        OUTPUT_PROBABILITY,
        SIGNATURE_SCORE,
        USER_FIELDS,
    )
    from model.data.protocols import prepare
    from model.training.metrics import roc_auc
    from model.training.rows import InMemoryRows
    from model.training.train import export_trained, fit

    data_config = DataConfig(
        dataset=args.dataset,
        data_dir=folder,
        protocol=args.protocol,
        holdout_movies=args.holdout_movies,
    )
    data = prepare(data_config)
    labels = data.test.label
    rows = [
        "| fields | OOV rate | test AUC | held-out AUC | unknown user AUC | mean p / base rate "
        "| wall |"
    ]
    rows.append("|---|---|---|---|---|---|---|")
    for fields in args.fields.split(","):
        for rate in (float(r) for r in args.oov_rates.split(",")):
            afm = replace(AFMConfig(), fields=fields, oov_rate=rate)
            train = replace(TrainConfig(), epochs=args.epochs)
            if args.learning_rate is not None:
                train = replace(train, learning_rate=args.learning_rate)
            start = time.perf_counter()
            result = fit(InMemoryRows(data, fields, data_config), afm, train)
            wall = time.perf_counter() - start
            with tempfile.TemporaryDirectory() as tmp:
                version = export_trained(result, Path(tmp))
                score = tf.saved_model.load(str(version)).signatures[SIGNATURE_SCORE]
                raw = data.raw(data.test, FIELD_SETS[fields])
                for field in USER_FIELDS[1:]:
                    raw[field] = np.full(len(labels), "")
                raw["user_id"] = np.full(len(labels), "never-seen")
                p = score(**{f: tf.constant(v.astype(str)) for f, v in raw.items()})
                p = p[OUTPUT_PROBABILITY].numpy()
            held = result.metrics["test_held_out_movies"]["auc"]
            rows.append(
                f"| {fields} | {rate:g} | {result.metrics['test']['auc']:.4f} | {held:.4f} | "
                f"{roc_auc(labels, p):.4f} | {p.mean() / labels.mean():.2f} | {wall:.0f} s |"
            )
    print(f"\n{args.dataset}, {args.protocol}, {args.holdout_movies:.0%} of movies held out\n")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
