"""How often the canary judge (``model.online.judge``) decides, and decides right, when it is
asked after every batch of impressions: simulated users and clicks, no service, no HTTP.

Each run is one canary from start to finish. A fixed population of seeded users, each with
a click propensity (Gamma, mean 1) and an activity (log-normal: a few users see most
impressions), is split for good between the arms (the canary's share by user, as the
rollout's buckets do). Impressions arrive in batches, spread over users by activity; each is
a list of 10 movies, the movie at position k (0 first) examined with probability
1 / log2(k + 2) and clicked once examined with the user's attraction (propensity × base;
the canary's × (1 + effect)): a Bernoulli per impression and position. After every
batch the judge gets each arm's per-user clicks and impressions and says promote, roll back
or keep collecting; a run ends at its first decision or at the budget (the judge's
``max_impressions``: the canary's impressions).

Three truths, ``--runs`` seeded runs each:

* better: the canary's CTR is 10 % higher (relative);
* worse: 10 % lower;
* equal: the same.

For the equal truth, two traps are scored on the same looks, for contrast: the same test
with each impression counted as independent (no per-user variance), and a fixed-horizon
z-test at 5 % asked at every look (peeking).

Figures come with one-sided 95 % Clopper-Pearson bounds (exact, computed by
``model.online.stats.clopper_pearson``: scipy is not in the venv). Results go to JSON
(``--out``) and a markdown table made from it is printed.

    .venv/bin/python benchmarks/judge_error_rates.py               # 1,000 runs per truth
    .venv/bin/python benchmarks/judge_error_rates.py --runs 100    # a quick look
    .venv/bin/python benchmarks/judge_error_rates.py --table benchmarks/judge_error_rates.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from model.online.judge import JudgeSettings, judge  # noqa: E402
from model.online.stats import (  # noqa: E402
    clopper_pearson,
    msprt_log_lambda,
    normal_quantile,
)

TRUTHS = {"better": 0.10, "worse": -0.10, "equal": 0.0}
DEFAULT_OUT = Path(__file__).resolve().parent / "judge_error_rates.json"


@dataclass(frozen=True)
class Setup:
    """One simulated world and the judge's settings."""

    users: int = 20_000
    canary_share: float = 0.2
    shown: int = 10
    ctr_per_shown: float = 0.03
    """The mean click-through rate of a shown movie, over positions and users."""
    propensity_shape: float = 2.0
    """Gamma shape of the users' click propensity (mean 1; 2: a coefficient of variation
    of 0.71)."""
    activity_sigma: float = 1.0
    """Log-normal sigma of the users' activity (how unevenly impressions fall on users)."""
    batch: int = 2_000
    """Impressions (both arms) between two looks of the judge."""
    alpha: float = 0.05
    min_effect: float = 0.05
    budget: int = 150_000
    """Canary impressions: the judge's max_impressions."""
    min_users: int = 100

    def settings(self) -> JudgeSettings:
        return JudgeSettings(
            alpha=self.alpha,
            min_effect=self.min_effect,
            max_impressions=self.budget,
            min_users=self.min_users,
        )


def examination(shown: int) -> np.ndarray:
    """Chance the movie at each position is looked at: 1 / log2(k + 2)."""
    return 1.0 / np.log2(np.arange(shown) + 2.0)


@dataclass(frozen=True)
class Run:
    """How one canary ended, and what two flawed judges would have said on the same looks."""

    decision: str
    by_test: bool
    """Decided by the test crossing 1/α (not by reaching the budget)."""
    canary_impressions: int
    impressions: int
    looks: int
    per_impression_decided: bool
    """The same mixture SPRT with each impression counted as independent (no per-user
    variance) would have decided by the run's end."""
    peeking_decided: bool
    """A fixed-horizon z-test (two-sided, 5 %, per-user variance) asked at every look would
    have found a difference by the run's end."""


def one_run(setup: Setup, effect: float, seed: int) -> Run:
    """One canary, from its first batch to its decision."""
    rng = np.random.default_rng(seed)
    settings = setup.settings()
    exam = examination(setup.shown)
    base = setup.ctr_per_shown / exam.mean()
    propensity = rng.gamma(setup.propensity_shape, 1 / setup.propensity_shape, setup.users)
    activity = rng.lognormal(0.0, setup.activity_sigma, setup.users)
    canary = rng.random(setup.users) < setup.canary_share
    attraction = np.minimum(base * propensity * np.where(canary, 1 + effect, 1.0), 1.0)
    cumulative = np.cumsum(activity)
    impressions = np.zeros(setup.users, np.int64)
    clicks = np.zeros(setup.users, np.int64)
    squares = np.zeros(2)  # Σ clicks² over single impressions: canary, stable
    looks = 0
    per_impression = peeking = False
    z_critical = normal_quantile(0.975)
    while True:
        # Whose impressions these are (by activity), then a Bernoulli per shown position.
        whose = np.searchsorted(cumulative, rng.random(setup.batch) * cumulative[-1])
        whose = np.minimum(whose, setup.users - 1)
        examined_and_attracted = rng.random((setup.batch, setup.shown)) < (
            attraction[whose, None] * exam[None, :]
        )
        clicked = examined_and_attracted.sum(axis=1)
        clicks += np.bincount(whose, weights=clicked, minlength=setup.users).astype(np.int64)
        impressions += np.bincount(whose, minlength=setup.users)
        in_canary = canary[whose]
        squares += [np.sum(clicked[in_canary] ** 2), np.sum(clicked[~in_canary] ** 2)]
        looks += 1
        seen_c = canary & (impressions > 0)
        seen_s = ~canary & (impressions > 0)
        verdict = judge(
            clicks[seen_c], impressions[seen_c], clicks[seen_s], impressions[seen_s], settings
        )
        numbers = verdict.numbers
        if "variance" in numbers:
            difference = numbers["difference"]
            peeking = peeking or abs(difference) > z_critical * math.sqrt(numbers["variance"])
            naive = float(_per_impression_variance(numbers, squares))
            per_impression = per_impression or (
                msprt_log_lambda(difference, naive, setup.min_effect) >= math.log(1 / setup.alpha)
            )
        if verdict.decision != "keep collecting":
            return Run(
                decision=verdict.decision,
                by_test=numbers.get("lambda", 0.0) >= numbers.get("threshold", math.inf),
                canary_impressions=int(impressions[canary].sum()),
                impressions=int(impressions.sum()),
                looks=looks,
                per_impression_decided=per_impression,
                peeking_decided=peeking,
            )


def _per_impression_variance(numbers: dict[str, float], squares: np.ndarray) -> float:
    """Var(log canary − log stable) if every impression were an independent unit."""
    total = 0.0
    for arm, square in zip(("canary", "stable"), squares, strict=True):
        n, rate = numbers[f"{arm}_impressions"], numbers[f"{arm}_ctr"]
        total += (square / n - rate * rate) / n / (rate * rate)
    return total


def _runs(args: tuple[Setup, float, list[int]]) -> list[Run]:
    setup, effect, seeds = args
    return [one_run(setup, effect, seed) for seed in seeds]


def simulate(setup: Setup, runs: int, seed: int, workers: int) -> dict[str, list[Run]]:
    """truth -> every run's outcome; run i of truth t is seeded by (seed, t, i)."""
    results: dict[str, list[Run]] = {}
    with ProcessPoolExecutor(max_workers=workers) as pool:
        for index, (truth, effect) in enumerate(TRUTHS.items()):
            seeds = [seed * 1_000_003 + index * 100_003 + run for run in range(runs)]
            chunks = [(setup, effect, seeds[i::workers]) for i in range(workers)]
            results[truth] = [r for chunk in pool.map(_runs, chunks) for r in chunk]
    return results


def share(count: int, of: int, bound: str, target: float | None) -> dict:
    """A share with its one-sided 95 % Clopper-Pearson bound (``lower``: the share is at
    least it; ``upper``: at most) and whether that bound meets ``target`` (None: none)."""
    low, high = clopper_pearson(count, of) if of else (0.0, 1.0)
    value = low if bound == "lower" else high
    meets = None
    if target is not None:
        meets = bool(of) and (value >= target if bound == "lower" else value <= target)
    return {
        "count": count,
        "of": of,
        "share": count / of if of else None,
        "bound": bound,
        "bound_value": value,
        "target": target,
        "meets_target": meets,
    }


def summarise(results: dict[str, list[Run]]) -> dict[str, dict]:
    """The figures of each truth (see the module docstring)."""
    out: dict[str, dict] = {}
    for truth, runs in results.items():
        decided = [r for r in runs if r.by_test]  # within the budget
        promoted = sum(1 for r in runs if r.decision == "promote")
        figures: dict[str, dict] = {"runs": {"count": len(runs)}}
        if truth == "better":
            right = sum(1 for r in decided if r.decision == "promote")
            figures["decided_within_budget"] = share(len(decided), len(runs), "lower", 0.80)
            figures["right_when_decided"] = share(right, len(decided), "lower", 0.95)
        elif truth == "worse":
            figures["promoted"] = share(promoted, len(runs), "upper", 0.05)
            figures["decided_within_budget"] = share(len(decided), len(runs), "lower", 0.0)
        else:
            figures["neither_picked"] = share(len(runs) - len(decided), len(runs), "lower", 0.95)
            figures["promoted"] = share(promoted, len(runs), "upper", 0.05)
            # What the traps would have done on the same looks (each run went to the budget).
            naive = sum(r.per_impression_decided for r in runs)
            peeked = sum(r.peeking_decided for r in runs)
            figures["per_impression_variance_decided"] = share(naive, len(runs), "lower", None)
            figures["peeked_z_test_decided"] = share(peeked, len(runs), "lower", None)
        figures["canary_impressions_to_decision"] = _quartiles(
            [r.canary_impressions for r in decided]
        )
        figures["impressions_to_decision"] = _quartiles([r.impressions for r in decided])
        figures["looks"] = _quartiles([r.looks for r in runs])
        out[truth] = figures
    return out


def _quartiles(values: list[int]) -> dict:
    if not values:
        return {"p25": None, "median": None, "p75": None}
    q = np.percentile(values, [25, 50, 75])
    return {"p25": int(q[0]), "median": int(q[1]), "p75": int(q[2])}


def table(report: dict) -> str:
    """The markdown table of a report (as written to JSON)."""
    setup, figures = report["setup"], report["figures"]
    budget = f"{setup['budget']:,}"
    rows = [
        "| truth | figure | result | one-sided 95 % bound | target | met |",
        "|---|---|---:|---:|---:|:---:|",
    ]

    def row(truth: str, label: str, figure: dict) -> None:
        sign = "≥" if figure["bound"] == "lower" else "≤"
        target = "–" if figure["target"] is None else f"{sign} {_percent(figure['target'])}"
        met = {None: "–", True: "yes", False: "NO"}[figure["meets_target"]]
        rows.append(
            f"| {truth} | {label} | {_percent(figure['share'])} "
            f"({figure['count']:,}/{figure['of']:,}) | {sign} {_percent(figure['bound_value'])} "
            f"| {target} | {met} |"
        )

    def spread(truth: str, label: str, figure: dict) -> None:
        if figure["median"] is None:
            return
        rows.append(
            f"| {truth} | {label} | {figure['median']:,} "
            f"({figure['p25']:,}–{figure['p75']:,}) | | | |"
        )

    better, worse, equal = figures["better"], figures["worse"], figures["equal"]
    row(
        "canary +10 %",
        f"decided within {budget} canary impressions",
        better["decided_within_budget"],
    )
    row("canary +10 %", "decisions that promote it", better["right_when_decided"])
    spread(
        "canary +10 %",
        "canary impressions to a decision: median (p25–p75)",
        better["canary_impressions_to_decision"],
    )
    spread(
        "canary +10 %",
        "all impressions to a decision: median (p25–p75)",
        better["impressions_to_decision"],
    )
    row("canary −10 %", "promoted", worse["promoted"])
    spread(
        "canary −10 %",
        "canary impressions to a roll back by the test: median (p25–p75)",
        worse["canary_impressions_to_decision"],
    )
    row(
        "equal",
        f"neither picked (no decision by the test within {budget})",
        equal["neither_picked"],
    )
    row("equal", "promoted", equal["promoted"])
    if "per_impression_variance_decided" in equal:
        row("equal", "trap: the same test, impressions counted as independent, picked one",
            equal["per_impression_variance_decided"])  # fmt: skip
        row("equal", "trap: a fixed-horizon z-test (5 %) asked at every look, picked one",
            equal["peeked_z_test_decided"])  # fmt: skip
    return "\n".join(rows)


def describe(setup: dict) -> str:
    """The simulated world and the judge's settings, in one paragraph."""
    exam = examination(setup["shown"])
    base = setup["ctr_per_shown"] / exam.mean()
    total = setup["budget"] / setup["canary_share"]
    return (
        f"{setup['users']:,} users (click propensity Gamma({setup['propensity_shape']:g}), mean "
        f"1; activity log-normal(σ = {setup['activity_sigma']:g})), the canary's share "
        f"{setup['canary_share']:.0%} of them; {setup['shown']} movies shown per impression, "
        f"{setup['ctr_per_shown']:.0%} CTR per shown movie ({base * exam[0]:.1%} at the top, "
        f"{base * exam[-1]:.1%} at position {setup['shown'] - 1}; position bias "
        f"1 / log2(k + 2)); the judge asked every {setup['batch']:,} impressions; α = "
        f"{setup['alpha']:g}, minimum effect (τ) {setup['min_effect']:g}, {setup['min_users']} "
        f"users per arm first; budget {setup['budget']:,} canary impressions "
        f"(about {total:,.0f} in all)."
    )


def _percent(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f} %"


def machine() -> dict:
    """What the run ran on: ``nproc`` and the lscpu lines that say how fast."""
    import subprocess

    facts: dict = {"nproc": os.cpu_count(), "python": platform.python_version()}
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return facts
    wanted = ("Model name", "CPU(s)", "Thread(s) per core", "BogoMIPS", "L3 cache",
              "Hypervisor vendor")  # fmt: skip
    for line in lscpu.splitlines():
        name, _, value = line.partition(":")
        if name.strip() in wanted:
            facts[name.strip()] = value.strip()
    return facts


def _commit() -> str:
    import subprocess

    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return ""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=1000, help="Seeded runs per truth.")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--budget", type=int, default=25_000, help="Canary impressions.")
    parser.add_argument("--users", type=int, default=Setup.users)
    parser.add_argument("--canary-share", type=float, default=Setup.canary_share)
    parser.add_argument("--batch", type=int, default=Setup.batch)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--table", type=Path, help="Only print the table of this JSON.")
    args = parser.parse_args()
    if args.table is not None:
        report = json.loads(args.table.read_text())
        print(describe(report["setup"]) + "\n")
        print(table(report))
        return
    setup = Setup(
        users=args.users, canary_share=args.canary_share, batch=args.batch, budget=args.budget
    )
    commit = _commit()
    started = time.perf_counter()
    results = simulate(setup, args.runs, args.seed, args.workers)
    report = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join([".venv/bin/python", "benchmarks/judge_error_rates.py", *sys.argv[1:]]),
        "commit": commit,
        "machine": machine(),
        "seconds": round(time.perf_counter() - started, 1),
        "runs": args.runs,
        "seed": args.seed,
        "setup": asdict(setup),
        "figures": summarise(results),
    }
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(describe(report["setup"]) + "\n")
    print(table(report))
    print(f"\n{args.runs:,} runs per truth in {report['seconds']:.0f} s; wrote {args.out}")


if __name__ == "__main__":
    main()
