"""service.feature_store against a real Redis: reads, misses, bursts, failures."""

from __future__ import annotations

import asyncio

import pytest

from service.errors import FeaturesNotLoaded, FeatureStoreUnavailable
from service.feature_store import FeatureStore
from tests.integration.serving.helpers import free_port

pytestmark = pytest.mark.integration


def _run(coro):  # noqa: ANN001, ANN202
    return asyncio.run(coro)


async def _with_store(url: str, prefix: str, action, **kwargs):  # noqa: ANN001, ANN202
    store = FeatureStore.connect(url, prefix, timeout=0.5, **kwargs)
    try:
        return await action(store)
    finally:
        await store.aclose()


def test_reads_known_and_unknown_users(redis_url: str, loaded_prefix: str, synthetic_users) -> None:  # noqa: ANN001
    async def read(store: FeatureStore):  # noqa: ANN202
        return await store.user_features(1), await store.user_features(10**9), await store.check()

    known, unknown, check = _run(_with_store(redis_url, loaded_prefix, read))
    assert known == {f: str(synthetic_users[f][0]) for f in ("gender", "age", "occupation", "zip")}
    assert unknown is None
    assert check == (True, True)


def test_burst_beyond_the_pool_queues_instead_of_failing(
    redis_url: str, loaded_prefix: str
) -> None:
    async def burst(store: FeatureStore):  # noqa: ANN202
        return await asyncio.gather(*(store.user_features(i) for i in range(1, 201)))

    results = _run(_with_store(redis_url, loaded_prefix, burst, max_connections=2))
    assert len(results) == 200 and all(r is not None for r in results[:100])


def test_missing_feature_set_raises(redis_url: str, feature_prefix: str) -> None:
    async def read(store: FeatureStore):  # noqa: ANN202
        assert await store.check() == (True, False)
        await store.user_features(1)

    with pytest.raises(FeaturesNotLoaded, match="load-features"):
        _run(_with_store(redis_url, feature_prefix, read))


def test_unreachable_redis_raises_unavailable_and_counts(feature_prefix: str) -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"

    async def read(store: FeatureStore):  # noqa: ANN202
        assert await store.check() == (False, False)
        with pytest.raises(FeatureStoreUnavailable, match="Redis unavailable") as failure:
            await store.user_features(1)
        assert "\n" not in failure.value.detail and failure.value.retry_after == 1
        return store.errors_total

    assert _run(_with_store(url, feature_prefix, read)) == 2
