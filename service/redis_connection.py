"""One Redis connection that every request shares, its commands pipelined.

Redis answers each connection's commands in the order they arrive, so concurrent requests
can share a connection: each command's reply future waits in a FIFO and is resolved when its
reply comes back. The commands issued during one event-loop iteration leave in one write at
its end, so requests whose replies arrive together resume in one iteration, where the
batcher merges their scoring calls (``service.batching``). hiredis parses the replies. Against
redis-py's pooled client (a connection checked out and back per command, each reply read
apart) this serves a third more requests/s at eight concurrent clients (see
benchmarks/results.md).

Failures raise redis-py's exceptions, as its client would: ``ConnectionError`` when Redis
cannot be reached or the connection drops (every command waiting on it fails), and
``ResponseError`` for an error reply. A command unanswered ``timeout`` seconds after it was
asked for (its connect included) raises ``TimeoutError``: the connection is then presumed
dead (a frozen server, a vanished host), every command waiting on it fails the same way, and
the next command opens a new one. One timer per connection, set for the oldest unanswered
command, keeps that time. A command cancelled by its caller keeps its place in the FIFO, and
its reply is dropped when it comes. The URL forms are redis-py's (``redis://``,
``rediss://``, ``unix://``, with username, password and database).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Sequence
from functools import partial
from typing import Any

import hiredis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.connection import SSLConnection, UnixDomainSocketConnection, parse_url
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError, ResponseError

Arg = bytes | str | int


def cluster_client(url: str, timeout: float, max_connections: int) -> RedisCluster:
    """The service's client of a Redis Cluster (features and the log alike). One immediate
    retry re-reads the slot map after a failover; more would stretch the bounded wait the
    caller was promised."""
    return RedisCluster.from_url(
        url,
        max_connections=max_connections,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        retry=Retry(NoBackoff(), 1),
    )


class PipelinedConnection:
    """Commands over one lazily opened connection to the Redis at ``url``; ``timeout``
    bounds the connect and tells a dead connection (see the module docstring)."""

    def __init__(self, url: str, timeout: float) -> None:
        self._options = parse_url(url)
        self._timeout = timeout
        self._protocol: _Protocol | None = None
        self._connecting: asyncio.Task[_Protocol] | None = None

    async def call(self, *args: Arg) -> Any:
        """The reply to one command; an error reply raises ``ResponseError``, and none within
        ``timeout`` seconds ``TimeoutError``."""
        deadline = asyncio.get_running_loop().time() + self._timeout
        protocol = self._protocol
        if protocol is None or protocol.lost is not None:
            protocol = await self._connected()
        reply = await protocol.request(args, deadline)
        if isinstance(reply, ResponseError):
            raise reply
        return reply

    async def call_many(self, commands: Sequence[Sequence[Arg]]) -> list[Any]:
        """The replies to ``commands``, sent together in one write: an error reply is
        returned in its place (a ``ResponseError``), not raised; a lost connection or no
        reply within ``timeout`` seconds raises as ``call`` does."""
        return await self.call_encoded(b"".join(map(encode, commands)), len(commands))

    async def call_encoded(self, payload: bytes, count: int) -> list[Any]:
        """The replies to the ``count`` commands ``payload`` holds, already in RESP
        (``encode``), as ``call_many`` answers: one future for them all, so a batch of
        hundreds costs little more than one command."""
        if not count:
            return []
        deadline = asyncio.get_running_loop().time() + self._timeout
        protocol = self._protocol
        if protocol is None or protocol.lost is not None:
            protocol = await self._connected()
        return await protocol.request_encoded(payload, count, deadline)

    async def evalsha(self, script: str, sha: str, keys: list[Arg], args: list[Arg]) -> Any:
        """The Lua ``script`` (whose SHA1 is ``sha``) on ``keys`` and ``args``; sent whole
        when the server does not have it cached (after a restart), which caches it."""
        try:
            return await self.call(b"EVALSHA", sha, len(keys), *keys, *args)
        except ResponseError as exc:
            if not str(exc).startswith("NOSCRIPT"):
                raise
        return await self.call(b"EVAL", script, len(keys), *keys, *args)

    def close(self) -> None:
        """Close the connection; commands waiting on it fail with ``ConnectionError``."""
        if self._connecting is not None:
            self._connecting.cancel()
        if self._protocol is not None:
            self._protocol.fail(ConnectionError("Connection to Redis closed"))
            self._protocol = None

    async def _connected(self) -> _Protocol:
        """A new connection, once the last one was lost or there was none."""
        self._protocol = None
        if self._connecting is None:  # one connect, shared by the commands that wait for it
            self._connecting = asyncio.create_task(self._connect())
            self._connecting.add_done_callback(self._connected_or_not)
        return await asyncio.shield(self._connecting)

    def _connected_or_not(self, task: asyncio.Task[_Protocol]) -> None:
        self._connecting = None
        if not task.cancelled() and task.exception() is None:
            self._protocol = task.result()

    async def _connect(self) -> _Protocol:
        loop = asyncio.get_running_loop()
        options = self._options
        opened = partial(_Protocol, self._timeout)
        host, port = options.get("host", "localhost"), options.get("port", 6379)
        try:
            async with asyncio.timeout(self._timeout):
                if options.get("connection_class") is UnixDomainSocketConnection:
                    _, protocol = await loop.create_unix_connection(opened, options["path"])
                else:
                    _, protocol = await loop.create_connection(
                        opened, host, port, ssl=_ssl_context(options)
                    )
                await self._handshake(protocol)
        except (OSError, TimeoutError) as exc:
            where = options.get("path") or f"{host}:{port}"
            raise ConnectionError(f"Error connecting to {where}: {exc or 'timed out'}") from exc
        return protocol

    async def _handshake(self, protocol: _Protocol) -> None:
        """AUTH and SELECT, as the URL asks."""
        commands: list[tuple[Arg, ...]] = []
        if self._options.get("password") is not None:
            user = self._options.get("username")
            commands.append((b"AUTH", *([user] if user else []), self._options["password"]))
        if self._options.get("db"):
            commands.append((b"SELECT", self._options["db"]))
        deadline = asyncio.get_running_loop().time() + self._timeout
        for command in commands:
            reply = await protocol.request(command, deadline)
            if isinstance(reply, ResponseError):
                protocol.fail(ConnectionError(f"Redis refused {command[0].decode()}: {reply}"))
                raise protocol.lost


class _Protocol(asyncio.Protocol):
    """The connection's bytes: commands written once per loop iteration, replies parsed by
    hiredis and matched to the commands in order; closed once its oldest unanswered command
    is ``timeout`` seconds late."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.reader = hiredis.Reader(replyError=ResponseError)
        # (reply future, deadline, None) per command, or (replies future, deadline, the
        # replies so far, how many) per batch of call_encoded
        self.waiting: deque[tuple] = deque()
        self.unsent: list[bytes] = []
        self.transport: asyncio.Transport | None = None
        self.lost: Exception | None = None
        self.timer: asyncio.TimerHandle | None = None  # set for the oldest unanswered command

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        try:
            while (reply := self.reader.gets()) is not False:
                entry = self.waiting[0]
                if entry[2] is None:
                    self.waiting.popleft()
                    if not entry[0].done():  # not cancelled by its caller's timeout
                        entry[0].set_result(reply)
                    continue
                entry[2].append(reply)
                if len(entry[2]) == entry[3]:
                    self.waiting.popleft()
                    if not entry[0].done():
                        entry[0].set_result(entry[2])
        except hiredis.ProtocolError as exc:
            self.fail(ConnectionError(f"unreadable reply from Redis: {exc}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.fail(ConnectionError(f"Connection closed by Redis: {exc or 'end of stream'}"))

    def request(self, args: tuple[Arg, ...], deadline: float) -> asyncio.Future:
        """The future of ``args``'s reply, due by ``deadline`` (loop time); the command leaves
        with the others of this loop iteration, in one write at its end."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        if self.lost is not None:
            future.set_exception(self.lost)
            return future
        self.waiting.append((future, deadline, None))
        self._send(encode(args), deadline, loop)
        return future

    def request_encoded(self, payload: bytes, count: int, deadline: float) -> asyncio.Future:
        """The future of the list of replies to the ``count`` commands in ``payload``."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        if self.lost is not None:
            future.set_exception(self.lost)
            return future
        self.waiting.append((future, deadline, [], count))
        self._send(payload, deadline, loop)
        return future

    def _send(self, payload: bytes, deadline: float, loop: asyncio.AbstractEventLoop) -> None:
        if self.timer is None:
            self.timer = loop.call_at(deadline, self._expire)
        if not self.unsent:
            loop.call_soon(self._flush)
        self.unsent.append(payload)

    def fail(self, error: Exception) -> None:
        """Close, failing every command still waiting with ``error`` (the first one given)."""
        if self.lost is None:
            self.lost = error
            if self.transport is not None:
                self.transport.close()
            if self.timer is not None:
                self.timer.cancel()
        while self.waiting:
            future = self.waiting.popleft()[0]
            if not future.done():
                future.set_exception(self.lost)

    def _expire(self) -> None:
        """The timer: close if the oldest unanswered command is late, else wait for it."""
        self.timer = None
        if not self.waiting or self.lost is not None:
            return
        loop = asyncio.get_running_loop()
        deadline = self.waiting[0][1]
        if loop.time() >= deadline:
            self.fail(TimeoutError(f"Redis did not answer within {self.timeout:g}s"))
        else:
            self.timer = loop.call_at(deadline, self._expire)

    def _flush(self) -> None:
        unsent, self.unsent = self.unsent, []
        if self.lost is None:
            self.transport.write(b"".join(unsent))


def encode(args: Sequence[Arg]) -> bytes:
    """``args`` in RESP: an array of bulk strings."""
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        value = arg if isinstance(arg, bytes) else str(arg).encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(value), value))
    return b"".join(parts)


def _ssl_context(options: dict[str, Any]) -> Any:
    """The TLS context redis-py would use for a ``rediss://`` URL; None for plain TCP."""
    if options.get("connection_class") is not SSLConnection:
        return None
    ssl_options = {k: v for k, v in options.items() if k.startswith("ssl_")}
    return SSLConnection(**ssl_options).ssl_context.get()
