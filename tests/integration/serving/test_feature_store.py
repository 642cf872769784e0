"""service.feature_store against a real Redis: reads, misses, bursts, switches, failures."""

from __future__ import annotations

import asyncio
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import pytest
import redis

from model.contracts import feature_layout
from model.contracts.feature_layout import FeatureSetMeta
from model.data.load_features import load_features
from service.errors import FeaturesNotLoaded, FeatureStoreUnavailable
from service.feature_store import FeatureRead, FeatureSetInfo, FeatureStore
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


def _load(url: str, prefix: str, users: int, movies: int, marker: str) -> None:
    """A load whose users, movies and meta (source, labels, popular, samples) carry ``marker``."""
    load_features(
        _users(users, marker),
        _movies(movies, marker),
        url,
        prefix,
        source=f"marked {marker}",
        labels={"gender": {f"g{marker}": f"Gender {marker}"}},
        popular=("7", "3", str(movies)),
        sample_users=("2", "1"),
        watched=np.full(users, f"w{marker}"),
    )


def _markers(read: FeatureRead) -> set[str]:
    """The load markers a read carries: one element when user, movies and meta agree."""
    stored = (*feature_layout.USER_FIELDS, feature_layout.WATCHED)  # the fields _load marks
    user = {read.user[f][1:] for f in stored} if read.user else set()
    movies = {features["year"][1:] for features in read.movies.values()}
    meta = {read.meta.source.removeprefix("marked ")} if read.meta.source else set()
    return user | movies | meta


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
    """``feature_prefix`` holding 300 users, 40 movies and a meta marked "A"."""
    _load(redis_url, feature_prefix, 300, 40, "A")
    return feature_prefix


@contextmanager
def _monitored(client: redis.Redis, prefix: str) -> Iterator[list[str]]:
    """Collects, on exit, what clients sent to Redis on keys of ``prefix`` meanwhile (not what
    Lua scripts ran): each command's verb and first key."""
    commands: list[str] = []
    with client.monitor() as monitor:
        yield commands
        client.echo(f"{prefix}done")  # the Redis may be shared: MONITOR sees everyone
        while (command := monitor.next_command())["command"] != f"ECHO {prefix}done":
            if command["client_type"] != "lua" and prefix in command["command"]:
                verb, *args = command["command"].split(" ")
                commands.append(" ".join([verb, *[a for a in args if prefix in a][:1]]))


def test_reads_the_user_and_the_movie_table(redis_url: str, loaded: str) -> None:
    async def read(store: FeatureStore):  # noqa: ANN202
        return await store.read(1), await store.read(10**9), await store.check(), store

    known, unknown, check, store = _run(_with_store(redis_url, loaded, read))
    assert known.user == {
        "gender": "gA", "age": "aA", "occupation": "oA", "zip": "zA", "watched": "wA",
        "watched_at": "", "last_watched": "",  # a load without times
    }  # fmt: skip
    assert len(known.movies) == 40
    assert known.movies["7"] == {"title": "Movie 7 A", "year": "yA", "genres": "Drama|A"}
    assert "41" not in known.movies
    assert unknown.user is None and unknown.movies is known.movies
    assert check == (True, True)
    assert store.movies_loaded == 40
    assert known.meta.source == "marked A" and (known.meta.users, known.meta.movies) == (300, 40)
    assert known.meta.labels == {"gender": {"gA": "Gender A"}}
    assert known.meta.popular == ("7", "3", "40") and known.meta.sample_users == ("2", "1")
    assert unknown.meta is known.meta  # decoded once per load, shared


def test_feature_set_is_the_meta_and_the_popular_movies(redis_url: str, loaded: str) -> None:
    async def both(store: FeatureStore):  # noqa: ANN202
        return await store.feature_set(), await store.read(1)

    info, read = _run(_with_store(redis_url, loaded, both))
    assert isinstance(info, FeatureSetInfo)
    assert info.meta is read.meta
    assert [movie_id for movie_id, _ in info.popular_movies] == ["7", "3", "40"]
    assert info.popular_movies[0][1] == {"title": "Movie 7 A", "year": "yA", "genres": "Drama|A"}
    assert info.popular_movies[2][1] is read.movies["40"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", info.meta.loaded_at)


def test_steady_state_is_one_evalsha_per_read_and_one_get_per_feature_set(
    redis_url: str, loaded: str, client: redis.Redis
) -> None:
    async def steady(store: FeatureStore) -> list[str]:
        await store.read(1)  # connects, loads the scripts and fetches the table
        with _monitored(client, loaded) as commands:
            await store.read(1)
            await store.feature_set()
            await store.read(2)
            await store.feature_set()
        return commands

    pointer = feature_layout.pointer_key(loaded)
    assert _run(_with_store(redis_url, loaded, steady)) == [
        f"EVALSHA {pointer}",
        f"GET {pointer}",
        f"EVALSHA {pointer}",
        f"GET {pointer}",
    ]


def test_feature_set_follows_a_load(redis_url: str, loaded: str) -> None:
    async def around_a_load(store: FeatureStore):  # noqa: ANN202
        before = await store.feature_set()
        await asyncio.to_thread(_load, redis_url, loaded, 300, 25, "B")
        return before, await store.feature_set(), await store.read(1)

    before, after, read = _run(_with_store(redis_url, loaded, around_a_load))
    assert before.meta.source == "marked A" and after.meta.source == "marked B"
    assert after.meta is read.meta and _markers(read) == {"B"}
    assert [m for m, _ in after.popular_movies] == ["7", "3", "25"]
    assert after.popular_movies[0][1]["year"] == "yB"


def test_popular_movies_missing_from_the_table_are_left_out(
    redis_url: str, loaded: str, client: redis.Redis
) -> None:
    namespace = client.get(feature_layout.pointer_key(loaded))
    client.hset(feature_layout.meta_key(namespace), "popular", '["999","7"]')
    info = _run(_with_store(redis_url, loaded, lambda store: store.feature_set()))
    assert info.meta.popular == ("999", "7")
    assert [m for m, _ in info.popular_movies] == ["7"]


def test_feature_set_without_a_load_raises(redis_url: str, feature_prefix: str) -> None:
    with pytest.raises(FeaturesNotLoaded, match="load-features"):
        _run(_with_store(redis_url, feature_prefix, lambda store: store.feature_set()))


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

    async def both(store: FeatureStore):  # noqa: ANN202
        return await store.read(1), await store.feature_set()

    read, info = _run(_with_store(redis_url, feature_prefix, both))
    assert read.user == {**user, "watched": "", "watched_at": "", "last_watched": ""}  # no history
    assert dict(read.movies) == {}
    assert read.meta == FeatureSetMeta() and dict(read.meta.labels) == {}
    assert info == FeatureSetInfo(FeatureSetMeta(), (), namespace, frozenset())


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
        await asyncio.to_thread(_load, redis_url, loaded, 300, 25, "B")
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
            _load(redis_url, loaded, 300, sizes[marker], marker)
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
