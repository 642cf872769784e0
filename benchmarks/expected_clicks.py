"""Expected clicks per impression of model versions under a synthetic data's planted truth.

    .venv/bin/python benchmarks/expected_clicks.py --data-dir DIR --model-dir M 1 2 3

For the same seeded requests (a random user, ``--candidates`` random movies), each version
ranks the candidates and shows its top ``--top-k``; the expected clicks of that list are
sum_k examination(k) * P(click | examined), the truth ``afm-ctr simulate`` clicks by
(``model/online/traffic.py``). No service, no sampling noise from clicks: a like-for-like
comparison of rankings. Also prints the best possible list (ranked by the truth) and an
unranked one.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np

from model.config import DataConfig
from model.contracts import export_format
from model.data.movielens import load_feature_set
from model.data.synth import PlantedTaste
from model.online.traffic import click_probability, examination


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--model-dir", type=Path, required=True)
    parser.add_argument("versions", type=int, nargs="+")
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--candidates", type=int, default=50)
    parser.add_argument("--top-k", type=int, default=10)
    parser.add_argument("--seed", type=int, default=5)
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from service.candidates import Candidates
    from service.loaded_model import load_model

    taste = PlantedTaste(args.data_dir)
    features = load_feature_set(DataConfig(dataset="synthetic", data_dir=args.data_dir))
    columns = {name: values.astype(str) for name, values in features.users.items()}
    watched = features.watched.astype(str)
    movies = {
        str(m): {"year": str(y), "genres": str(g)}
        for m, y, g in zip(
            features.movies["movie_id"],
            features.movies["year"],
            features.movies["genres"],
            strict=True,
        )
    }
    rng = np.random.default_rng(args.seed)
    requests = [
        (int(rng.integers(1, taste.users + 1)),
         rng.choice(taste.movies, args.candidates, replace=False) + 1)
        for _ in range(args.requests)
    ]  # fmt: skip
    exam = examination(np.arange(args.top_k))

    def expected(top: np.ndarray, user: int) -> float:
        return float((exam * click_probability(taste, user, top.tolist())).sum())

    print(f"| ranking | expected clicks per impression ({args.requests} requests, top "
          f"{args.top_k} of {args.candidates}) |\n|---|---:|")  # fmt: skip
    for version in args.versions:
        model = load_model(args.model_dir / str(version))
        total = 0.0
        for user, candidates in requests:
            row = {f: columns[f][user - 1] for f in export_format.USER_FIELDS}
            row[export_format.HISTORY_FIELD] = watched[user - 1]
            rows = Candidates.of_request(model.fields, user, row, candidates.tolist(), movies)
            scores = model.score(rows).probability
            total += expected(candidates[np.argsort(-scores, kind="stable")[: args.top_k]], user)
        print(f"| version {version} | {total / len(requests):.3f} |")
    best = sum(
        expected(c[np.argsort(-click_probability(taste, u, c.tolist()))[: args.top_k]], u)
        for u, c in requests
    )
    unranked = sum(expected(c[: args.top_k], u) for u, c in requests)
    print(f"| the truth's own ranking | {best / len(requests):.3f} |")
    print(f"| unranked (the first {args.top_k} candidates) | {unranked / len(requests):.3f} |")


if __name__ == "__main__":
    main()
