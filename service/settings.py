"""Service configuration: one ``Settings`` class, every field an ``AFM_*`` environment variable.

No module-level instance: ``create_app(settings)`` takes one (tests pass their own) and
``get_settings()`` reads the environment once for the uvicorn factory.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from model.contracts.feature_layout import DEFAULT_PREFIX, check_cluster_prefix
from service.scorer import NUMPY_ROWS


class Settings(BaseSettings):
    """Bounds live on the fields, so a bad environment fails at startup with the field named."""

    model_config = SettingsConfigDict(env_prefix="AFM_", extra="ignore", frozen=True)

    model_dir: Path = Field(description="Export root; the newest version under it is served.")
    redis_url: str = Field("redis://127.0.0.1:6379/0", description="Redis holding user features.")
    redis_prefix: str = Field(DEFAULT_PREFIX, description="Key prefix of the feature set.")
    redis_cluster: bool = Field(
        False,
        description="redis_url names any node of a Redis Cluster (docs/service.md#redis-cluster).",
    )
    redis_timeout: float = Field(
        0.5,
        gt=0,
        le=30,
        description="Seconds a feature read may take before the request gets 503.",
    )
    redis_max_connections: int = Field(32, ge=1, description="Redis connection pool size.")
    retry_after: int = Field(1, ge=1, description="Seconds advertised in Retry-After on 503.")
    max_candidates: int = Field(
        1000, ge=1, description="Most movie_ids one /score request may carry."
    )
    max_body_bytes: int = Field(
        65_536, ge=1024, description="Largest request body accepted; larger ones get 413."
    )
    reload_interval: float = Field(
        5.0, ge=0, description="Seconds between polls of model_dir for a new version; 0 disables."
    )
    scoring_threads: int = Field(
        1,
        ge=1,
        description="Threads running TensorFlow off the event loop; requests that queue while "
        "they are busy are merged into one call. More pay off only with more cores.",
    )
    inline_scoring_rows: int = Field(
        1000,
        ge=0,
        description="A request of at most this many candidates that finds no scoring call "
        "running or queued is scored on the event loop, no thread hand-off (~0.3 ms), when it "
        "scores in NumPy (inline_numpy) or the server handles no other. 0: always on the "
        "scoring threads.",
    )
    inline_numpy: bool = Field(
        True,
        description="Under load too, a request of at most inline_scoring_rows candidates "
        "whose call scores in NumPy runs on the event loop when no scoring call is running "
        "or queued: NumPy is faster than the hand-off to a thread.",
    )
    numpy_ranker_rows: int = Field(
        NUMPY_ROWS,
        ge=0,
        description="Scoring calls (merged requests included) of at most this many rows run in "
        "NumPy from the version's rank weights, checked against its signatures at load; "
        "larger ones, and all with 0, through TensorFlow.",
    )
    tf_intra_op_threads: int = Field(
        1,
        ge=0,
        description="Threads inside one TensorFlow op; 0 = available CPUs (cgroup-aware). "
        "This model's ops are tiny: one thread measured fastest.",
    )
    tf_inter_op_threads: int = Field(1, ge=0, description="Ops TensorFlow runs in parallel.")
    min_feature_coverage: float = Field(
        0.5,
        ge=0,
        le=1,
        description="Below this share of loaded users (per user field) or movies whose value "
        "the model was trained on, /model, /readyz and /metrics report low coverage and a "
        "warning is logged; readiness is not affected.",
    )
    access_log: bool = Field(
        True,
        description="One log line per request (method, route, status, ms) on the "
        "service.access logger; ~10 % of requests/s at 100 candidates and one client "
        "(docs/service.md).",
    )

    @model_validator(mode="after")
    def _cluster_prefix(self) -> Settings:
        if self.redis_cluster:
            check_cluster_prefix(self.redis_prefix)  # ValueError: a validation error
        return self


@lru_cache
def get_settings() -> Settings:
    return Settings()  # type: ignore[call-arg]  # model_dir comes from AFM_MODEL_DIR


def available_cpus() -> int:
    """CPUs this process may use: the affinity mask, capped by a cgroup v2 quota (containers)."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()
        if quota != "max":
            cpus = min(cpus, max(1, int(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, cpus)
