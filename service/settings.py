"""Service configuration: one ``Settings`` class, every field an ``AFM_*`` environment variable.

No module-level instance: ``create_app(settings)`` takes one (tests pass their own) and
``get_settings()`` reads the environment once for the uvicorn factory.
"""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path
from typing import Annotated

from pydantic import Field, PrivateAttr, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from model.contracts import event_log
from model.contracts.feature_layout import DEFAULT_PREFIX, check_cluster_prefix


class Settings(BaseSettings):
    """Bounds live on the fields, so a bad environment fails at startup with the field named
    (and not its value: it may be a key or a password)."""

    model_config = SettingsConfigDict(
        env_prefix="AFM_", extra="ignore", frozen=True, hide_input_in_errors=True
    )

    model_dir: Path = Field(description="Export root; the newest version under it is served.")
    redis_url: str = Field("redis://127.0.0.1:6379/0", description="Redis holding user features.")
    redis_prefix: str = Field(DEFAULT_PREFIX, description="Key prefix of the feature set.")
    redis_cluster: bool = Field(
        False,
        description="redis_url names any node of a Redis Cluster "
        "(docs/operations.md#redis-cluster).",
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
    api_keys: SecretStr | None = Field(
        None,
        description="API keys, comma-separated; with api_keys_file, either file's or these "
        "keys are accepted. None: no authentication.",
    )
    api_keys_file: Path | None = Field(
        None, description="A file of API keys, one a line (a mounted secret); read at startup."
    )
    cors_origins: Annotated[list[str], NoDecode] = Field(
        [],
        description="Origins (scheme://host[:port], comma-separated, or *) whose pages may call "
        "the API from a browser. None: no CORS headers.",
    )
    log_impressions: bool = Field(
        True,
        description="Log each /score reply (what was shown, to whom, with the features as "
        "served) to Redis streams for training from logs; off: replies carry no impression_id.",
    )
    impression_keys: SecretStr | None = Field(
        None,
        description='Keys signing impression ids, "<id>:<secret>" comma-separated, the '
        "first signing, every one verifying (list a new key first to rotate). With neither "
        "this nor impression_keys_file, a random key per process: ids then verify only on the "
        "replica that issued them, until it restarts.",
    )
    impression_keys_file: Path | None = Field(
        None,
        description='A file of impression keys, "<id>:<secret>" one a line (a mounted '
        "secret); read at startup; its keys come before impression_keys'.",
    )
    impression_buffer: int = Field(
        10_000,
        ge=1,
        description="Impressions waiting in memory to be written to Redis; when full, a "
        "reply's impression is dropped (and counted), never the reply.",
    )
    log_stream_max_length: int = Field(
        100_000,
        ge=1,
        description="Entries each log stream keeps, about (XADD MAXLEN ~); there are "
        f"{event_log.LOG_SHARDS} impression and {event_log.LOG_SHARDS} event streams. A "
        "canary's judge needs impressions/s × its window (s) ÷ "
        f"{event_log.LOG_SHARDS} (docs/online.md).",
    )
    attribution_window_s: int = Field(
        event_log.ATTRIBUTION_WINDOW_S,
        ge=1,
        le=30 * 86_400,
        description="Seconds after an impression during which its events are accepted.",
    )
    max_events: int = Field(500, ge=1, description="Most events one POST /events may carry.")
    _accepted_keys: tuple[str, ...] = PrivateAttr(())
    _signing_keys: dict[str, bytes] = PrivateAttr(default_factory=dict)

    @property
    def accepted_api_keys(self) -> tuple[str, ...]:
        """Every key a request may send; empty: authentication is off."""
        return self._accepted_keys

    @property
    def impression_signing_keys(self) -> dict[str, bytes]:
        """Key id -> secret of the configured impression keys, the signing one first; empty
        when none are configured."""
        return dict(self._signing_keys)

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _split_origins(cls, value: object) -> object:
        return _split(value) if isinstance(value, str) else value

    @field_validator("cors_origins")
    @classmethod
    def _origins_are_origins(cls, origins: list[str]) -> list[str]:
        for origin in origins:
            if origin != "*" and not _ORIGIN.fullmatch(origin):
                raise ValueError(
                    f"{origin!r} is not an origin: scheme://host[:port] with no path, "
                    "e.g. https://app.example.com"
                )
        return origins

    @model_validator(mode="after")
    def _read_api_keys(self) -> Settings:
        keys = _split(self.api_keys.get_secret_value()) if self.api_keys else []
        if self.api_keys_file is not None:
            keys += _read_keys(self.api_keys_file)
        for key in keys:
            if not _KEY.fullmatch(key):  # the key itself never goes into a message
                raise ValueError(
                    "an API key may hold only printable ASCII without spaces or commas"
                )
        self._accepted_keys = tuple(dict.fromkeys(keys))
        return self

    @model_validator(mode="after")
    def _read_impression_keys(self) -> Settings:
        text = ""
        if self.impression_keys_file is not None:
            text = _read_text(self.impression_keys_file, "impression keys")
            if not text.strip():
                raise ValueError(f"the impression keys file {self.impression_keys_file} is empty")
        if self.impression_keys is not None:
            text += "," + self.impression_keys.get_secret_value()
        self._signing_keys = event_log.parse_keys(text)  # its errors never quote a secret
        return self

    @model_validator(mode="after")
    def _cluster_prefix(self) -> Settings:
        if self.redis_cluster:
            check_cluster_prefix(self.redis_prefix)  # ValueError: a validation error
        return self


_ORIGIN = re.compile(r"https?://[^/\s]+")
_KEY = re.compile(r"[!-+\--~]+")  # printable ASCII but space and comma


def _split(value: str) -> list[str]:
    return [part.strip() for part in value.split(",") if part.strip()]


def _read_text(path: Path, what: str) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ValueError(f"cannot read the {what} file {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ValueError(f"the {what} file {path} is not UTF-8 text") from None


def _read_keys(path: Path) -> list[str]:
    lines = _read_text(path, "API keys").splitlines()
    keys = [line.strip() for line in lines if line.strip()]
    if not keys:  # an empty secret must not turn authentication off
        raise ValueError(f"the API keys file {path} holds no key")
    return keys


@lru_cache
def get_settings() -> Settings:
    return Settings()  # type: ignore[call-arg]  # model_dir comes from AFM_MODEL_DIR
