"""Two ``afm-ctr train --prepared`` workers under TF_CONFIG (MultiWorkerMirroredStrategy, CPU,
one machine) against one process on the same prepared rows."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from model.contracts.export_format import list_versions, read_metadata
from tests.conftest import REPO_ROOT, run_cli

pytestmark = [pytest.mark.integration, pytest.mark.slow]  # two TensorFlow processes, 4 epochs

MODEL = (
    "--epochs", "4", "--embedding-dim", "4", "--attention-factor", "2",
    "--batch-size", "2048", "--seed", "3",
)  # fmt: skip
WORKER_TIMEOUT = 900  # seconds: a guard against a hung collective, not a speed check


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


@pytest.fixture(scope="module")
def prepared_dir(synthetic_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("prepared-2w") / "rows"
    run_cli(
        "prepare", "--dataset", "synthetic", "--data-dir", str(synthetic_dir), "--seed", "3",
        "--shards", "4", "--out", str(out),
    )  # fmt: skip
    return out


def test_two_workers_match_one_process(prepared_dir: Path, tmp_path: Path) -> None:
    single_dir, cluster_dir = tmp_path / "single", tmp_path / "cluster"
    run_cli("train", "--prepared", str(prepared_dir), *MODEL, "--model-dir", str(single_dir))

    addresses = [f"127.0.0.1:{port}" for port in free_ports(2)]
    workers = []
    for index in range(2):
        tf_config = {"cluster": {"worker": addresses}, "task": {"type": "worker", "index": index}}
        workers.append(
            subprocess.Popen(
                [sys.executable, "-m", "model.cli", "train", "--prepared", str(prepared_dir),
                 *MODEL, "--model-dir", str(cluster_dir)],
                env={**os.environ, "TF_CONFIG": json.dumps(tf_config), "CUDA_VISIBLE_DEVICES": ""},
                cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            )
        )  # fmt: skip
    outputs = []
    try:
        for worker in workers:
            outputs.append(worker.communicate(timeout=WORKER_TIMEOUT))
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
    for worker, (_stdout, stderr) in zip(workers, outputs, strict=True):
        assert worker.returncode == 0, stderr
    assert "exported" in outputs[0][0]  # worker 0 is the chief
    assert "worker 1 of 2 done; the chief exports" in outputs[1][0]
    assert list_versions(cluster_dir) == [1]  # one version, from the chief alone

    single, cluster = read_metadata(single_dir / "1"), read_metadata(cluster_dir / "1")
    assert cluster.data["workers"] == 2
    # both workers stopped at the same epoch: each logged every epoch line the chief did
    epochs = [line for line in outputs[1][1].splitlines() if line.startswith("epoch ")]
    assert len(epochs) == cluster.metrics["epochs_run"]
    auc, reference = cluster.metrics["test"]["auc"], single.metrics["test"]["auc"]
    print(f"test AUC two workers {auc:.4f}, one process {reference:.4f}")
    assert abs(auc - reference) < 0.005
