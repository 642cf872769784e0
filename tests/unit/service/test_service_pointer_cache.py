"""The cluster reader's copy of the pointer: when it reads, when it waits, what it keeps.

A stand-in client answers GET with a scripted namespace (or error) and counts the calls; the
clock is the test's, so ages are exact. Against a real cluster: tests/integration/cluster.
"""

from __future__ import annotations

import asyncio

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from service.pointer_cache import PointerCache


class _Pointer:
    """GET of the pointer: returns ``value`` (raises it if an exception); counts calls."""

    def __init__(self, value: bytes | None | Exception) -> None:
        self.value = value
        self.gets = 0

    async def get(self, key: str) -> bytes | None:
        assert key == "afm:current"
        self.gets += 1
        await asyncio.sleep(0)  # a real round trip yields to the loop
        if isinstance(self.value, Exception):
            raise self.value
        return self.value


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _cache(pointer: _Pointer, clock: _Clock) -> PointerCache:
    client = pointer  # stands in for a RedisCluster: GET is all the cache calls
    return PointerCache(client, "afm:current", 0.5, refresh_after=1.0, max_age=10.0, clock=clock)


def test_reads_once_then_serves_the_copy_until_it_is_a_second_old() -> None:
    async def run() -> None:
        pointer, clock = _Pointer(b"afm:ns:1-a:"), _Clock()
        cache = _cache(pointer, clock)
        assert await cache.namespace() == b"afm:ns:1-a:"
        clock.now += 0.9
        assert await cache.namespace() == b"afm:ns:1-a:"
        assert pointer.gets == 1

    asyncio.run(run())


def test_an_old_copy_answers_at_once_while_one_background_read_refreshes_it() -> None:
    async def run() -> None:
        pointer, clock = _Pointer(b"afm:ns:1-a:"), _Clock()
        cache = _cache(pointer, clock)
        await cache.namespace()
        pointer.value = b"afm:ns:2-b:"  # a new load switched the pointer
        clock.now += 5
        answers = await asyncio.gather(*(cache.namespace() for _ in range(5)))
        assert answers == [b"afm:ns:1-a:"] * 5  # nobody waited for the GET
        await asyncio.sleep(0.01)
        assert pointer.gets == 2  # one shared background GET
        assert await cache.namespace() == b"afm:ns:2-b:"

    asyncio.run(run())


def test_a_copy_past_the_max_age_is_never_used() -> None:
    async def run() -> None:
        pointer, clock = _Pointer(b"afm:ns:1-a:"), _Clock()
        cache = _cache(pointer, clock)
        await cache.namespace()
        pointer.value = RedisConnectionError("node down")
        clock.now += 5
        assert await cache.namespace() == b"afm:ns:1-a:"  # refresh fails in the background
        await asyncio.sleep(0.01)
        clock.now += 5.5  # the last good GET was sent 10.5 s ago
        with pytest.raises(RedisConnectionError, match="node down"):
            await cache.namespace()
        pointer.value = b"afm:ns:2-b:"
        assert await cache.namespace() == b"afm:ns:2-b:"

    asyncio.run(run())


def test_nothing_loaded_reads_as_none_and_forget_forces_a_new_read() -> None:
    async def run() -> None:
        pointer, clock = _Pointer(None), _Clock()
        cache = _cache(pointer, clock)
        assert await cache.namespace() is None
        pointer.value = b"afm:ns:1-a:"
        cache.forget()
        assert await cache.namespace() == b"afm:ns:1-a:"
        assert pointer.gets == 2

    asyncio.run(run())
