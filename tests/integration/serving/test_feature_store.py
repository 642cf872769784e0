"""service.feature_store against a real Redis: reads, misses, bursts, switches, failures."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest
import redis

from model import feature_layout
from model.load_features import load_features
from service.errors import FeaturesNotLoaded, FeatureStoreUnavailable
from service.feature_store import FeatureRead, FeatureStore
from tests.integration.serving.helpers import free_port

pytestmark = pytest.mark.integration


def _users(n: int, marker: str) -> dict[str, np.ndarray]:
    """n users whose every feature carries ``marker``, to tell feature sets apart."""
    return {
        "user_id": np.array([str(i) for i in range(1, n + 1)]),
        **{field: np.full(n, f"{field[0]}{marker}") for field in feature_layout.USER_FIELDS},
    }


def _movies(n: int, marker: str) -> dict[str, np.ndarray]:
    return {
        "movie_id": np.array([str(i) for i in range(1, n + 1)]),
        "title": np.array([f"Movie {i} {marker}" for i in range(1, n + 1)]),
        "year": np.full(n, f"y{marker}"),
        "genres": np.full(n, f"Drama|{marker}"),
    }


def _markers(read: FeatureRead) -> set[str]:
    """The load markers a read carries: one element when user and movies agree."""
    user = {value[1:] for value in read.user.values()} if read.user else set()
    movies = {features["year"][1:] for features in read.movies.values()}
    return user | movies


def _run(coro):  # noqa: ANN001, ANN202
    return asyncio.run(coro)


async def _with_store(url: str, prefix: str, action, **kwargs):  # noqa: ANN001, ANN202
    store = FeatureStore.connect(url, prefix, timeout=0.5, **kwargs)
    try:
        return await action(store)
    finally:
        await store.aclose()


@pytest.fixture
def client(redis_url: str):  # noqa: ANN201
    connection = redis.Redis.from_url(redis_url, decode_responses=True)
    yield connection
    connection.close()


@pytest.fixture
def loaded(redis_url: str, feature_prefix: str) -> str:
    """``feature_prefix`` holding 300 users and 40 movies marked "A"."""
    load_features(_users(300, "A"), _movies(40, "A"), redis_url, feature_prefix)
    return feature_prefix


def test_reads_the_user_and_the_movie_table(redis_url: str, loaded: str) -> None:
    async def read(store: FeatureStore):  # noqa: ANN202
        return await store.read(1), await store.read(10**9), await store.check(), store

    known, unknown, check, store = _run(_with_store(redis_url, loaded, read))
    assert known.user == {"gender": "gA", "age": "aA", "occupation": "oA", "zip": "zA"}
    assert len(known.movies) == 40
    assert known.movies["7"] == {"title": "Movie 7 A", "year": "yA", "genres": "Drama|A"}
    assert "41" not in known.movies
    assert unknown.user is None and unknown.movies is known.movies
    assert check == (True, True)
    assert store.movies_loaded == 40


def test_user_features_is_the_user_half_of_read(redis_url: str, loaded: str) -> None:
    async def read(store: FeatureStore):  # noqa: ANN202
        return await store.user_features(1), await store.user_features(10**9)

    assert _run(_with_store(redis_url, loaded, read)) == (
        {"gender": "gA", "age": "aA", "occupation": "oA", "zip": "zA"},
        None,
    )


def test_the_table_is_read_only(redis_url: str, loaded: str) -> None:
    read = _run(_with_store(redis_url, loaded, lambda store: store.read(1)))
    with pytest.raises(TypeError):
        read.movies["1"] = {}  # type: ignore[index]
    with pytest.raises(TypeError):
        read.movies["1"]["year"] = "1900"  # type: ignore[index]


def test_burst_beyond_the_pool_queues_and_shares_one_table(redis_url: str, loaded: str) -> None:
    async def burst(store: FeatureStore):  # noqa: ANN202
        return await asyncio.gather(*(store.read(i) for i in range(1, 201)))

    results = _run(_with_store(redis_url, loaded, burst, max_connections=2))
    assert len(results) == 200 and all(r.user is not None for r in results[:100])
    assert len({id(r.movies) for r in results}) == 1  # one fetch, shared by all 200 requests


def test_a_feature_set_without_movies_reads_an_empty_table(
    redis_url: str, feature_prefix: str, client: redis.Redis
) -> None:
    # What an older loader wrote: user hashes and the pointer, no movies hash.
    user = {"gender": "F", "age": "1", "occupation": "10", "zip": "02138"}
    namespace = feature_layout.namespace(feature_prefix, "old")
    client.hset(feature_layout.user_key(namespace, 1), mapping=user)
    client.set(feature_layout.pointer_key(feature_prefix), namespace)

    read = _run(_with_store(redis_url, feature_prefix, lambda store: store.read(1)))
    assert read.user == user
    assert dict(read.movies) == {}


def test_unreadable_movies_are_left_out(redis_url: str, loaded: str, client: redis.Redis) -> None:
    namespace = client.get(feature_layout.pointer_key(loaded))
    client.hset(feature_layout.movies_key(namespace), mapping={"3": "{", "4": '{"title":"x"}'})
    read = _run(_with_store(redis_url, loaded, lambda store: store.read(1)))
    assert len(read.movies) == 38 and "3" not in read.movies and "4" not in read.movies


def test_next_read_after_a_load_gets_the_new_table(
    redis_url: str, loaded: str, client: redis.Redis
) -> None:
    async def reads(store: FeatureStore):  # noqa: ANN202
        before = await store.read(1)
        old = client.get(feature_layout.pointer_key(loaded))
        await asyncio.to_thread(
            load_features, _users(300, "B"), _movies(25, "B"), redis_url, loaded
        )
        return before, old, await store.read(1)

    before, old, after = _run(_with_store(redis_url, loaded, reads))
    assert _markers(before) == {"A"} and len(before.movies) == 40
    assert _markers(after) == {"B"} and len(after.movies) == 25
    assert after.movies["7"] == {"title": "Movie 7 B", "year": "yB", "genres": "Drama|B"}
    assert list(client.scan_iter(match=f"{old}*")) == []


def test_concurrent_reads_never_mix_two_loads(redis_url: str, loaded: str) -> None:
    """Loads alternate between A and B (different users' values, titles and table sizes)
    while many requests read: each must see one load's user with that load's table.

    Loads here come every ~20 ms, so a read slower than that on each of its attempts may
    give up with FeatureStoreUnavailable (retry later), which is allowed; a mix is not."""
    sizes = {"A": 40, "B": 25}
    loads_done = threading.Event()

    def alternate() -> None:
        for marker in "BA" * 6:
            load_features(_users(300, marker), _movies(sizes[marker], marker), redis_url, loaded)
        loads_done.set()

    async def reader(store: FeatureStore, seen: list[FeatureRead], gave_up: list[str]) -> None:
        user = 1
        while not loads_done.is_set():
            try:
                seen.append(await store.read(user))
            except FeatureStoreUnavailable as exc:
                gave_up.append(exc.detail)
            user = user % 300 + 1

    async def run(store: FeatureStore) -> tuple[list[FeatureRead], list[str]]:
        seen: list[FeatureRead] = [await store.read(1)]  # connected, scripts loaded
        gave_up: list[str] = []
        await asyncio.gather(
            asyncio.to_thread(alternate), *(reader(store, seen, gave_up) for _ in range(16))
        )
        return seen, gave_up

    seen, gave_up = _run(_with_store(redis_url, loaded, run, max_connections=8))
    mixed = [read for read in seen if len(_markers(read)) != 1]
    assert mixed == []
    assert all(len(read.movies) == sizes[_markers(read).pop()] for read in seen)
    assert {"A", "B"} <= {_markers(read).pop() for read in seen}
    assert set(gave_up) <= {"the feature set switched during each of 3 reads"}
    assert len(gave_up) < len(seen) / 10, gave_up


def test_missing_feature_set_raises(redis_url: str, feature_prefix: str) -> None:
    async def read(store: FeatureStore):  # noqa: ANN202
        assert await store.check() == (True, False)
        await store.read(1)

    with pytest.raises(FeaturesNotLoaded, match="load-features"):
        _run(_with_store(redis_url, feature_prefix, read))


def test_unreachable_redis_raises_unavailable_and_counts(feature_prefix: str) -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"

    async def read(store: FeatureStore):  # noqa: ANN202
        assert await store.check() == (False, False)
        with pytest.raises(FeatureStoreUnavailable, match="Redis unavailable") as failure:
            await store.read(1)
        assert "\n" not in failure.value.detail and failure.value.retry_after == 1
        return store.errors_total

    assert _run(_with_store(url, feature_prefix, read)) == 2
