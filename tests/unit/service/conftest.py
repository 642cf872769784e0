"""The apps these tests build with default settings still log impressions to the local Redis
(the default AFM_REDIS_URL): each test gets a key prefix of its own, removed afterwards, so
they never write into the default ``afm:`` namespace a service on the same machine uses."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest
import redis

from service.settings import Settings
from tests.conftest import remove_prefix


@pytest.fixture(autouse=True)
def _own_redis_prefix(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    prefix = f"test:{uuid.uuid4().hex}:"
    monkeypatch.setenv("AFM_REDIS_PREFIX", prefix)
    yield
    url = os.environ.get("AFM_REDIS_URL") or Settings.model_fields["redis_url"].default
    try:  # best effort: these tests do not need a Redis, and pass without one
        remove_prefix(url, prefix)
    except redis.RedisError:
        pass
