"""Service configuration: one ``Settings`` class, every field an ``AFM_*`` environment variable.

No module-level instance: ``create_app(settings)`` takes one (tests pass their own) and
``get_settings()`` reads the environment once for the uvicorn factory.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from model.contracts.feature_layout import DEFAULT_PREFIX, check_cluster_prefix


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
    redis_max_connections: int = Field(
        32, ge=1, description="Redis Cluster: connections per node (one Redis: one, shared)."
    )
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
    min_feature_coverage: float = Field(
        0.5,
        ge=0,
        le=1,
        description="Below this share of loaded users (per user field) or movies whose value "
        "the model was trained on, /model, /readyz and /metrics report low coverage and a "
        "warning is logged; readiness is not affected.",
    )
    access_log: bool = Field(
        True, description="One log line per request (method, route, status, milliseconds)."
    )

    @model_validator(mode="after")
    def _cluster_prefix(self) -> Settings:
        if self.redis_cluster:
            check_cluster_prefix(self.redis_prefix)  # ValueError: a validation error
        return self


@lru_cache
def get_settings() -> Settings:
    return Settings()  # type: ignore[call-arg]  # model_dir comes from AFM_MODEL_DIR
