"""What rollout costs: memory of the serving versions, and time per request.

    .venv/bin/python benchmarks/rollout_cost.py --model-dir models [--cycles 6]

Memory: resident size with one, two and three versions loaded, and through repeated
canary -> promote cycles (each should release the version it drops).
Copies the newest version under ``--model-dir`` into a temporary model directory under new
version numbers (copies load as separate versions, as new trainings would) and drives the
service's own ``ModelRegistry`` with the service's loader, in this process, writing rollout
policies as ``afm-ctr rollout`` does. Prints one markdown table of VmRSS (``/proc/self/status``)
after each step.

Time: what a request pays for the canary choice (``rollout.in_canary``) and for the
per-version metrics (``Metrics.scoring``, with 10 to 1,000 probabilities), each the
mean of 20,000 calls.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import shutil
import sys
import tempfile
import timeit
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path, required=True)
    parser.add_argument("--cycles", type=int, default=6)
    args = parser.parse_args()

    sys.path.insert(0, str(REPO))
    from model.contracts import export_format, rollout
    from model.contracts.rollout import RolloutPolicy
    from service.loaded_model import load_model
    from service.model_registry import ModelRegistry

    newest = export_format.latest_version(args.model_dir)
    if newest is None:
        sys.exit(f"error: no version under {args.model_dir}")
    source = args.model_dir / str(newest)
    rows: list[tuple[str, str, float]] = [("TensorFlow imported, nothing loaded", "", rss_mib())]

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)

        def add(version: int) -> None:
            shutil.copytree(source, root / f".tmp-{version}")
            (root / f".tmp-{version}").rename(root / str(version))

        registry = ModelRegistry(root, load_model)

        def step(label: str, policy: RolloutPolicy | None) -> None:
            if policy is not None:
                rollout.write_policy(root, policy)
            asyncio.run(registry.refresh())
            gc.collect()
            roles = ", ".join(f"{role} {m.version}" for role, m in registry.serving.roles())
            rows.append((label, roles, rss_mib()))

        add(1)
        step("version 1 (no policy)", None)
        add(2)
        step("canary 2 at 10 %", RolloutPolicy(stable=1, canary=2, percent=10))
        step("promote 2", RolloutPolicy(stable=2, previous=1))
        for version in range(3, 3 + args.cycles):
            add(version)
            canary = RolloutPolicy(
                stable=version - 1, canary=version, percent=10, previous=version - 2
            )
            step(f"canary {version} at 10 %", canary)
            step(f"promote {version}", RolloutPolicy(stable=version, previous=version - 1))
        registry.close()

    size = sum(f.stat().st_size for f in source.rglob("*") if f.is_file()) / 2**20
    print(f"model: {source} ({size:.1f} MiB on disk)")
    print("| step | loaded | RSS (MiB) |\n|---|---|---|")
    for label, roles, rss in rows:
        print(f"| {label} | {roles} | {rss:.0f} |")
    print_time_per_request()


def print_time_per_request(calls: int = 20_000) -> None:
    import numpy as np

    from model.contracts.rollout import in_canary
    from service.metrics import Metrics

    def mean_us(fn) -> float:  # noqa: ANN001
        return timeit.timeit(fn, number=calls) / calls * 1e6

    metrics = Metrics()
    print("\n| per request | µs |\n|---|---|")
    print(f"| canary choice (in_canary) | {mean_us(lambda: in_canary(123_456, 4, 5)):.1f} |")
    for n in (10, 100, 1000):
        probability = np.random.default_rng(0).random(n).astype(np.float32)

        def observe(p: np.ndarray = probability) -> None:
            with metrics.scoring("/score", 4, "canary") as scored:
                scored.probability = p

        print(f"| per-version metrics, {n} candidates | {mean_us(observe):.1f} |")


if __name__ == "__main__":
    main()
