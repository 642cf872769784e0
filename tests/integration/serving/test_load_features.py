"""afm-ctr load-features against a real Redis: layout, atomic switch, failure cleanup."""

from __future__ import annotations

import json
import re
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
import redis

from model.contracts import feature_layout
from model.data import load_features as loader
from model.data.movielens import ML_1M_LABELS
from model.errors import AfmError, MalformedInput
from tests.conftest import run_cli
from tests.integration.serving.helpers import free_port

pytestmark = pytest.mark.integration


def _users(n: int, marker: str) -> dict[str, np.ndarray]:
    """n users whose every feature carries ``marker``, to tell feature sets apart."""
    ids = np.array([str(i) for i in range(1, n + 1)])
    return {
        "user_id": ids,
        "gender": np.full(n, f"g{marker}"),
        "age": np.full(n, f"a{marker}"),
        "occupation": np.full(n, f"o{marker}"),
        "zip": np.full(n, f"z{marker}"),
    }


def _movies(n: int, marker: str) -> dict[str, np.ndarray]:
    """n movies whose every feature carries ``marker``."""
    return {
        "movie_id": np.array([str(i) for i in range(1, n + 1)]),
        "title": np.array([f"Movie {i} {marker} (1995)" for i in range(1, n + 1)]),
        "year": np.full(n, f"y{marker}"),
        "genres": np.full(n, f"Comedy|{marker}"),
    }


def _latest_watched(folder: Path, user_id: str) -> tuple[str, str]:
    """The user's 20 most recently rated movies in ``folder``'s ratings.dat, most recent first
    (the synthetic data's timestamps are distinct per user), and the latest one's time."""
    rows = [line.split("::") for line in (folder / "ratings.dat").read_text().splitlines()]
    mine = sorted((int(ts), movie) for user, movie, _, ts in rows if user == user_id)
    return "|".join(movie for _, movie in reversed(mine[-20:])), str(mine[-1][0])


def _keys(client: redis.Redis, prefix: str) -> list[bytes]:
    return list(client.scan_iter(match=f"{prefix}*", count=1000))


@pytest.fixture
def client(redis_url: str):  # noqa: ANN201
    connection = redis.Redis.from_url(redis_url, decode_responses=True)
    yield connection
    connection.close()


def test_cli_loads_every_user_as_a_hash(
    synthetic_dir: Path, redis_url: str, feature_prefix: str, client: redis.Redis
) -> None:
    result = run_cli(
        "load-features",
        "--dataset",
        "synthetic",
        "--data-dir",
        str(synthetic_dir),
        "--redis-url",
        redis_url,
        "--prefix",
        feature_prefix,
    )
    assert result.stdout.splitlines() == [
        f"loaded 300 users and 200 movies of synthetic at {synthetic_dir} into {redis_url} "
        f"under prefix {feature_prefix!r}"
    ]
    namespace = client.get(feature_layout.pointer_key(feature_prefix))
    assert namespace.startswith(f"{feature_prefix}ns:")
    first_user = (synthetic_dir / "users.dat").read_text().splitlines()[0].split("::")
    watched, watched_at = _latest_watched(synthetic_dir, first_user[0])
    assert client.hgetall(feature_layout.user_key(namespace, first_user[0])) == {
        **dict(zip(feature_layout.USER_FIELDS, first_user[1:], strict=True)),
        "watched": watched,
        "watched_at": watched_at,
    }
    movies = client.hgetall(feature_layout.movies_key(namespace))
    assert len(movies) == 200
    first_movie = (synthetic_dir / "movies.dat").read_text(encoding="latin-1").splitlines()[0]
    movie_id, title, genres = first_movie.split("::")
    assert feature_layout.decode_movie(movies[movie_id]) == {
        "title": title,
        "year": title[-5:-1],
        "genres": genres,
    }
    assert len(_keys(client, namespace)) == 300 + 2  # users, movies, meta
    meta = client.hgetall(feature_layout.meta_key(namespace))
    assert {k: meta[k] for k in ("source", "users", "movies")} == {
        "source": f"synthetic at {synthetic_dir}",
        "users": "300",
        "movies": "200",
    }
    assert json.loads(meta["labels"]) == ML_1M_LABELS  # synthetic users carry ML-1M codes
    assert json.loads(meta["sample_users"]) == [str(i) for i in range(1, 21)]
    popular = json.loads(meta["popular"])
    rated = [line.split("::")[1] for line in (synthetic_dir / "ratings.dat").open()]
    counts = {m: rated.count(m) for m in set(rated)}
    assert len(popular) == 100 and set(popular) <= set(movies)
    assert [counts[m] for m in popular] == sorted(counts.values(), reverse=True)[:100]


def test_users_and_movies_land_in_one_namespace_before_the_single_pointer_set(
    redis_url: str, feature_prefix: str, client: redis.Redis
) -> None:
    pointer = feature_layout.pointer_key(feature_prefix)
    with client.monitor() as monitor:
        counts = loader.load_features(_users(50, "A"), _movies(30, "A"), redis_url, feature_prefix)
        client.echo(f"{feature_prefix}done")  # the Redis may be shared: MONITOR sees everyone
        commands = []
        while (command := monitor.next_command()["command"]) != f"ECHO {feature_prefix}done":
            commands.append(command)
    assert counts == (50, 30)
    namespace = client.get(pointer)
    writes = [c.split(" ", 2)[:2] for c in commands if feature_prefix in c]
    assert writes[-1] == ["SET", pointer]  # once, and last: all of the load switches together
    assert writes[-2] == ["HSET", feature_layout.meta_key(namespace)]
    assert {key.startswith(namespace) for _, key in writes[:-1]} == {True}
    assert sorted({verb for verb, _ in writes[:-1]}) == ["HSET"]
    assert len(_keys(client, namespace)) == 50 + 2
    assert client.hget(feature_layout.movies_key(namespace), "7") == (
        '{"title":"Movie 7 A (1995)","year":"yA","genres":"Comedy|A"}'
    )


def test_the_meta_hash_records_what_was_loaded(
    redis_url: str, feature_prefix: str, client: redis.Redis
) -> None:
    before = datetime.now(UTC).replace(microsecond=0)
    loader.load_features(
        _users(50, "A"),
        _movies(30, "A"),
        redis_url,
        feature_prefix,
        source="marked A at /nowhere",
        labels={"gender": {"gA": "Gender A"}, "age": {}},
        popular=["7", "30", "1"],
        sample_users=("2", "1"),
    )
    namespace = client.get(feature_layout.pointer_key(feature_prefix))
    meta = client.hgetall(feature_layout.meta_key(namespace))
    loaded_at = meta.pop("loaded_at")
    assert meta == {
        "source": "marked A at /nowhere",
        "users": "50",
        "movies": "30",
        "labels": '{"gender":{"gA":"Gender A"},"age":{}}',
        "popular": '["7","30","1"]',
        "sample_users": '["2","1"]',
        "user_values": '{"gender":{"gA":50},"age":{"aA":50},"occupation":{"oA":50},'
        '"zip":{"zA":50}}',
    }
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", loaded_at)
    stamp = datetime.strptime(loaded_at, "%Y-%m-%dT%H:%M:%S%z")
    assert before <= stamp <= datetime.now(UTC)


def test_meta_counts_the_users_of_each_value_sorted_by_value(
    redis_url: str, feature_prefix: str, client: redis.Redis
) -> None:
    users = _users(3, "A")
    users["zip"] = np.array(["20500", "02138", "20500"])
    loader.load_features(users, _movies(0, "A"), redis_url, feature_prefix)
    namespace = client.get(feature_layout.pointer_key(feature_prefix))
    assert client.hget(feature_layout.meta_key(namespace), "user_values") == (
        '{"gender":{"gA":3},"age":{"aA":3},"occupation":{"oA":3},"zip":{"02138":1,"20500":2}}'
    )


def test_a_load_without_a_description_still_records_counts_and_time(
    redis_url: str, feature_prefix: str, client: redis.Redis
) -> None:
    loader.load_features(_users(5, "A"), _movies(0, "A"), redis_url, feature_prefix)
    namespace = client.get(feature_layout.pointer_key(feature_prefix))
    meta = feature_layout.decode_meta(client.hgetall(feature_layout.meta_key(namespace)))
    assert (meta.source, meta.users, meta.movies) == ("", 5, 0)
    assert (dict(meta.labels), meta.popular, meta.sample_users) == ({}, (), ())
    stamp = datetime.strptime(meta.loaded_at, "%Y-%m-%dT%H:%M:%S%z")
    assert datetime.now(UTC) - stamp < timedelta(minutes=1)


def test_reload_switches_namespace_and_deletes_the_old_one(
    redis_url: str, feature_prefix: str, client: redis.Redis
) -> None:
    assert loader.load_features(_users(50, "A"), _movies(30, "A"), redis_url, feature_prefix) == (
        50,
        30,
    )
    old = client.get(feature_layout.pointer_key(feature_prefix))
    assert loader.load_features(_users(40, "B"), _movies(20, "B"), redis_url, feature_prefix) == (
        40,
        20,
    )
    new = client.get(feature_layout.pointer_key(feature_prefix))
    assert new != old
    assert _keys(client, old) == []
    assert len(_keys(client, new)) == 40 + 2
    assert client.hget(feature_layout.user_key(new, 1), "zip") == "zB"
    assert client.hlen(feature_layout.movies_key(new)) == 20


def test_a_table_without_movies_writes_no_movies_hash(
    redis_url: str, feature_prefix: str, client: redis.Redis
) -> None:
    assert loader.load_features(_users(5, "A"), _movies(0, "A"), redis_url, feature_prefix) == (
        5,
        0,
    )
    namespace = client.get(feature_layout.pointer_key(feature_prefix))
    assert client.exists(feature_layout.movies_key(namespace)) == 0


def test_readers_never_see_a_mix_or_a_gap_during_reloads(
    redis_url: str, feature_prefix: str, client: redis.Redis
) -> None:
    def load(marker: str) -> None:
        watched = np.full(3000, f"w{marker}")  # the history switches with the rest
        users, movies = _users(3000, marker), _movies(10, marker)
        loader.load_features(users, movies, redis_url, feature_prefix, watched=watched)

    load("A")
    read_user = client.register_script(feature_layout.READ_USER_SCRIPT)
    pointer = feature_layout.pointer_key(feature_prefix)
    seen: list[str] = []
    bad: list[object] = []
    stop = threading.Event()

    def read() -> None:
        user = 1
        while not stop.is_set():
            _, raw = read_user(keys=[pointer], args=[user])
            features = feature_layout.decode_user(dict(zip(raw[::2], raw[1::2], strict=True)))
            marked = (*feature_layout.USER_FIELDS, feature_layout.WATCHED)
            markers = {features[f][1:] for f in marked} if features else None
            if markers is None or len(markers) != 1:
                bad.append(raw)
            else:
                seen.append(markers.pop())
            user = user % 3000 + 1

    readers = [threading.Thread(target=read) for _ in range(2)]
    for reader in readers:
        reader.start()
    for marker in "BABA":
        load(marker)
    stop.set()
    for reader in readers:
        reader.join()
    assert bad == []
    assert {"A", "B"} <= set(seen)


@pytest.mark.parametrize(
    "planted",
    [
        # Redis answers WRONGTYPE mid-load, after the first chunk of user hashes is written
        lambda ns: feature_layout.user_key(ns, 2500),
        # ... or after every user is written, at the movies hash
        feature_layout.movies_key,
        # ... or after users and movies, at the meta hash: the last write before the switch
        feature_layout.meta_key,
    ],
    ids=["users", "movies", "meta"],
)
def test_failed_load_keeps_the_pointer_and_cleans_up(
    planted,  # noqa: ANN001
    redis_url: str,
    feature_prefix: str,
    client: redis.Redis,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    loader.load_features(_users(10, "A"), _movies(5, "A"), redis_url, feature_prefix)
    pointer = feature_layout.pointer_key(feature_prefix)
    before = client.get(pointer)
    # Plant a string where the next load will write a hash.
    monkeypatch.setattr(loader, "_new_generation", lambda: "doomed")
    doomed = feature_layout.namespace(feature_prefix, "doomed")
    client.set(planted(doomed), "not a hash")
    with pytest.raises(AfmError, match="WRONGTYPE") as failure:
        loader.load_features(_users(3000, "B"), _movies(5, "B"), redis_url, feature_prefix)
    assert "\n" not in str(failure.value)
    assert client.get(pointer) == before
    assert _keys(client, doomed) == []
    assert client.hget(feature_layout.user_key(before, 1), "zip") == "zA"
    assert client.hlen(feature_layout.movies_key(before)) == 5


def test_refused_movie_table_keeps_the_previous_load(
    redis_url: str, feature_prefix: str, client: redis.Redis
) -> None:
    loader.load_features(_users(10, "A"), _movies(5, "A"), redis_url, feature_prefix)
    before = sorted(_keys(client, feature_prefix))
    duplicate = {**_movies(3, "B"), "movie_id": np.array(["1", "2", "1"])}
    with pytest.raises(MalformedInput, match="duplicate movie_id"):
        loader.load_features(_users(10, "B"), duplicate, redis_url, feature_prefix)
    assert sorted(_keys(client, feature_prefix)) == before
    namespace = client.get(feature_layout.pointer_key(feature_prefix))
    assert client.hget(feature_layout.user_key(namespace, 1), "zip") == "zA"


def test_unreachable_redis_is_one_line_error(feature_prefix: str, synthetic_dir: Path) -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    with pytest.raises(AfmError, match=f"loading features into {url} failed"):
        loader.load_features(_users(5, "A"), _movies(5, "A"), url, feature_prefix)
    result = run_cli(
        "load-features",
        "--dataset",
        "synthetic",
        "--data-dir",
        "/nonexistent",
        "--redis-url",
        url,
        check=False,
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("meta", "message"),
    [
        ({"source": None}, "source must be a string"),
        ({"labels": {"gender": ["F", "M"]}}, "labels of 'gender' must map value -> label"),
        ({"labels": {"age": {"1": 1}}}, r"labels of 'age': 1 \(int\) is not a string"),
        ({"labels": {"age": {1: "Under 18"}}}, r"labels of 'age': 1 \(int\) is not a string"),
        ({"labels": {3: {"1": "x"}}}, r"labels of 3: 3 \(int\) is not a string"),
        ({"popular": [7]}, r"popular movie id 7 \(int\) is not a string"),
        ({"popular": ["4"]}, "popular movie id '4' is not in the table"),
        ({"popular": "123"}, "popular movie ids must be a sequence of strings"),
        ({"sample_users": np.array([1, 2])}, r"sample user id 1 \(int64\) is not a string"),
        ({"sample_users": ["1", "99"]}, "sample user id '99' is not in the table"),
        ({"watched": ["1|2", ""]}, "watched has 2 values for 3 users"),
        ({"watched": ["1|2", "", 3]}, r"watched value 3 \(int\) is not a string"),
    ],
)
def test_malformed_meta_is_refused(
    meta: dict, message: str, redis_url: str, feature_prefix: str, client: redis.Redis
) -> None:
    with pytest.raises(MalformedInput, match=message):
        loader.load_features(_users(3, "A"), _movies(3, "A"), redis_url, feature_prefix, **meta)
    assert _keys(client, feature_prefix) == []


@pytest.mark.parametrize(
    ("users", "movies", "message"),
    [
        ({"user_id": np.array(["1"])}, _movies(3, "A"), "user table lacks column"),
        ({**_users(3, "A"), "zip": np.array(["1", "2"])}, _movies(3, "A"), "user columns differ"),
        (
            {**_users(3, "A"), "user_id": np.array(["1", "1", "2"])},
            _movies(3, "A"),
            "duplicate user_id",
        ),
        (_users(3, "A"), {"movie_id": np.array(["1"])}, "movie table lacks column.*title"),
        (
            _users(3, "A"),
            {**_movies(3, "A"), "year": np.array(["1", "2"])},
            "movie columns differ in length",
        ),
        (
            _users(3, "A"),
            {**_movies(3, "A"), "movie_id": np.array(["1", "1", "2"])},
            "duplicate movie_id",
        ),
    ],
)
def test_malformed_table_is_refused(
    users: dict,
    movies: dict,
    message: str,
    redis_url: str,
    feature_prefix: str,
    client: redis.Redis,
) -> None:
    with pytest.raises(MalformedInput, match=message):
        loader.load_features(users, movies, redis_url, feature_prefix)
    assert _keys(client, feature_prefix) == []
