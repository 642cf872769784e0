"""Pipelined commands to the Redis the features come from, for the impression and event log.

The service opens one ``LogRedis`` for the impression log, ``POST /events`` and the
stream-length scrape: on one Redis a connection of its own, so a batch of log writes never
queues in front of a ``/score``'s feature read on the feature store's connection; on a Redis
Cluster a client of its own, whose pipeline sends each command to the master holding its key (the
log's keys spread over the masters by user, ``model.contracts.event_log.shard``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any, Protocol

from redis.exceptions import RedisClusterException, RedisError

from service.redis_connection import Arg, PipelinedConnection, cluster_client

Command = Sequence[Arg]

__all__ = ["FAILURES", "Command", "LogRedis", "connect"]

FAILURES: tuple[type[BaseException], ...] = (RedisError, RedisClusterException, TimeoutError)
"""What ``LogRedis.run`` raises when Redis cannot be reached, fails or is late: catch these.
(The cluster client raises RedisClusterException, not a RedisError, when no node answers.)"""


class LogRedis(Protocol):
    async def run(self, commands: Sequence[Command]) -> list[Any]:
        """The replies to ``commands``, pipelined; an error reply in its place (an
        exception instance, not raised). Raises one of FAILURES when Redis cannot answer."""
        ...

    async def load_script(self, script: bytes) -> None:
        """Load ``script`` (SCRIPT LOAD) where EVALSHA will look for it: every master."""
        ...

    async def close(self) -> None: ...


class SingleLogRedis:
    """One Redis, over a pipelined connection of its own."""

    def __init__(self, url: str, timeout: float) -> None:
        self._connection = PipelinedConnection(url, timeout)

    async def run(self, commands: Sequence[Command]) -> list[Any]:
        return await self._connection.call_many(commands)

    async def load_script(self, script: bytes) -> None:
        await self._connection.call(b"SCRIPT", b"LOAD", script)

    async def close(self) -> None:
        self._connection.close()


class ClusterLogRedis:
    """A Redis Cluster through redis-py's pipeline (one round trip per master involved),
    bounded by ``timeout``."""

    def __init__(self, url: str, timeout: float, max_connections: int) -> None:
        self._client = cluster_client(url, timeout, max_connections)
        self._timeout = timeout

    async def run(self, commands: Sequence[Command]) -> list[Any]:
        if not commands:
            return []
        pipe = self._client.pipeline()
        for name, *args in commands:  # the cluster client looks command names up as str
            pipe.execute_command(name.decode() if isinstance(name, bytes) else name, *args)
        async with asyncio.timeout(self._timeout):
            return await pipe.execute(raise_on_error=False)

    async def load_script(self, script: bytes) -> None:
        async with asyncio.timeout(self._timeout):
            await self._client.script_load(script)  # on every primary

    async def close(self) -> None:
        await self._client.aclose()


def connect(url: str, timeout: float, *, cluster: bool, max_connections: int) -> LogRedis:
    """A ``LogRedis`` for the feature store's ``url``; connects lazily (Redis may be down)."""
    if cluster:
        return ClusterLogRedis(url, timeout, max_connections)
    return SingleLogRedis(url, timeout)
