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


@pytest.fixture(autouse=True)
def _own_redis_prefix(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    prefix = f"test:{uuid.uuid4().hex}:"
    monkeypatch.setenv("AFM_REDIS_PREFIX", prefix)
    yield
    try:  # best effort: these tests do not need a Redis, and pass without one
        url = os.environ.get("AFM_REDIS_URL") or Settings.model_fields["redis_url"].default
        client = redis.Redis.from_url(url, socket_connect_timeout=1)
        keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
        if keys:
            client.unlink(*keys)
        client.close()
    except redis.RedisError:
        pass
