"""TF_CONFIG parsing (model/training/distributed.py): the chief, the shards a task reads."""

from __future__ import annotations

import json

import pytest

from model.errors import AfmError
from model.training.distributed import Cluster, cluster_from_env


def env(cluster: dict, kind: str, index: int) -> dict[str, str]:
    return {"TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": kind, "index": index}})}


WORKERS = {"worker": ["a:1", "b:1", "c:1"]}


def test_no_tf_config_means_one_process() -> None:
    assert cluster_from_env({}) is None
    assert cluster_from_env({"TF_CONFIG": "  "}) is None


@pytest.mark.parametrize(
    ("cluster", "kind", "index", "expected"),
    [
        (WORKERS, "worker", 0, Cluster(workers=3, index=0, chief=True)),
        (WORKERS, "worker", 2, Cluster(workers=3, index=2, chief=False)),
        ({"chief": ["c:1"], **WORKERS}, "chief", 0, Cluster(workers=4, index=0, chief=True)),
        ({"chief": ["c:1"], **WORKERS}, "worker", 0, Cluster(workers=4, index=1, chief=False)),
    ],
)
def test_the_chief_is_the_chief_task_or_else_worker_0(cluster, kind, index, expected) -> None:
    assert cluster_from_env(env(cluster, kind, index)) == expected


@pytest.mark.parametrize(
    ("tf_config", "message"),
    [
        ({"TF_CONFIG": "{not json"}, "not a cluster spec"),
        ({"TF_CONFIG": json.dumps({"cluster": WORKERS})}, "not a cluster spec"),
        (env({**WORKERS, "ps": ["p:1"]}, "worker", 0), r"names \['ps'\] tasks"),
        (env(WORKERS, "worker", 3), "task worker 3 is not in its cluster"),
    ],
)
def test_unusable_tf_config_is_a_clear_error(tf_config: dict, message: str) -> None:
    with pytest.raises(AfmError, match=message):
        cluster_from_env(tf_config)
