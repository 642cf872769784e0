"""afm-ctr load-features against a real Redis: layout, atomic switch, failure cleanup."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
import redis

from model import feature_layout
from model import load_features as loader
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
    assert "loaded 300 users" in result.stdout
    namespace = client.get(feature_layout.pointer_key(feature_prefix))
    assert namespace.startswith(f"{feature_prefix}ns:")
    first_user = (synthetic_dir / "users.dat").read_text().splitlines()[0].split("::")
    assert client.hgetall(feature_layout.user_key(namespace, first_user[0])) == dict(
        zip(feature_layout.USER_FIELDS, first_user[1:], strict=True)
    )
    assert len(_keys(client, namespace)) == 300


def test_reload_switches_namespace_and_deletes_the_old_one(
    redis_url: str, feature_prefix: str, client: redis.Redis
) -> None:
    assert loader.load_features(_users(50, "A"), redis_url, feature_prefix) == 50
    old = client.get(feature_layout.pointer_key(feature_prefix))
    assert loader.load_features(_users(40, "B"), redis_url, feature_prefix) == 40
    new = client.get(feature_layout.pointer_key(feature_prefix))
    assert new != old
    assert _keys(client, old) == []
    assert len(_keys(client, new)) == 40
    assert client.hget(feature_layout.user_key(new, 1), "zip") == "zB"


def test_readers_never_see_a_mix_or_a_gap_during_reloads(
    redis_url: str, feature_prefix: str, client: redis.Redis
) -> None:
    loader.load_features(_users(3000, "A"), redis_url, feature_prefix)
    read_user = client.register_script(feature_layout.READ_USER_SCRIPT)
    pointer = feature_layout.pointer_key(feature_prefix)
    seen: list[str] = []
    bad: list[object] = []
    stop = threading.Event()

    def read() -> None:
        user = 1
        while not stop.is_set():
            raw = read_user(keys=[pointer], args=[user])
            features = feature_layout.decode_user(dict(zip(raw[::2], raw[1::2], strict=True)))
            markers = {value[1:] for value in features.values()} if features else None
            if markers is None or len(markers) != 1:
                bad.append(raw)
            else:
                seen.append(markers.pop())
            user = user % 3000 + 1

    readers = [threading.Thread(target=read) for _ in range(2)]
    for reader in readers:
        reader.start()
    for marker in "BABA":
        loader.load_features(_users(3000, marker), redis_url, feature_prefix)
    stop.set()
    for reader in readers:
        reader.join()
    assert bad == []
    assert {"A", "B"} <= set(seen)


def test_failed_load_keeps_the_pointer_and_cleans_up(
    redis_url: str, feature_prefix: str, client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    loader.load_features(_users(10, "A"), redis_url, feature_prefix)
    pointer = feature_layout.pointer_key(feature_prefix)
    before = client.get(pointer)
    # Plant a string where the next load will HSET user 2500: Redis answers WRONGTYPE mid-load,
    # after the first chunk of hashes is already written.
    monkeypatch.setattr(loader, "_new_generation", lambda: "doomed")
    doomed = feature_layout.namespace(feature_prefix, "doomed")
    client.set(feature_layout.user_key(doomed, 2500), "not a hash")
    with pytest.raises(AfmError, match="WRONGTYPE") as failure:
        loader.load_features(_users(3000, "B"), redis_url, feature_prefix)
    assert "\n" not in str(failure.value)
    assert client.get(pointer) == before
    assert _keys(client, doomed) == []
    assert client.hget(feature_layout.user_key(before, 1), "zip") == "zA"


def test_unreachable_redis_is_one_line_error(feature_prefix: str, synthetic_dir: Path) -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    with pytest.raises(AfmError, match=f"loading features into {url} failed"):
        loader.load_features(_users(5, "A"), url, feature_prefix)
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
    ("users", "message"),
    [
        ({"user_id": np.array(["1"])}, "lacks column"),
        ({**_users(3, "A"), "zip": np.array(["1", "2"])}, "differ in length"),
        ({**_users(3, "A"), "user_id": np.array(["1", "1", "2"])}, "duplicate user_id"),
    ],
)
def test_malformed_user_table_is_refused(
    users: dict, message: str, redis_url: str, feature_prefix: str, client: redis.Redis
) -> None:
    with pytest.raises(MalformedInput, match=message):
        loader.load_features(users, redis_url, feature_prefix)
    assert _keys(client, feature_prefix) == []
