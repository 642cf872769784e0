"""service.redis_connection against private redis-servers: one shared connection, one write for
the commands of a loop iteration, error replies, scripts missing from the cache, AUTH and
SELECT, and servers that freeze, drop the connection, stop and come back."""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import time

import pytest
import redis

from service.redis_connection import PipelinedConnection, encode
from tests.integration.serving.helpers import RedisProcess, wait_until

pytestmark = pytest.mark.integration

SCRIPT = "return {KEYS[1], ARGV[1]}"
SHA = hashlib.sha1(SCRIPT.encode()).hexdigest()


def _admin(server: RedisProcess) -> redis.Redis:
    return redis.Redis(port=server.port, password=server.password)


def _connections(server: RedisProcess) -> int:
    """Connections the server has accepted so far (the admin client's own included)."""
    return _admin(server).info("stats")["total_connections_received"]


class _CountingTransport:
    """The connection's transport, counting its writes."""

    def __init__(self, transport: asyncio.Transport) -> None:
        self.transport, self.writes = transport, 0

    def write(self, data: bytes) -> None:
        self.writes += 1
        self.transport.write(data)

    def close(self) -> None:
        self.transport.close()


def test_commands_of_one_iteration_leave_in_one_write_on_one_connection(
    private_redis: RedisProcess,
) -> None:
    _admin(private_redis).mset({f"key:{i}": f"value {i}" for i in range(50)})
    before = _connections(private_redis)

    async def main() -> tuple[list, int]:
        connection = PipelinedConnection(private_redis.url, timeout=2.0)
        assert await connection.call("PING") == b"PONG"
        counting = _CountingTransport(connection._protocol.transport)
        connection._protocol.transport = counting
        replies = await asyncio.gather(*(connection.call("GET", f"key:{i}") for i in range(50)))
        connection.close()
        return replies, counting.writes

    replies, writes = asyncio.run(main())
    assert replies == [f"value {i}".encode() for i in range(50)]  # each its own, in order
    assert writes == 1
    assert _connections(private_redis) - before == 2  # ours, and the admin client counting


def test_an_error_reply_raises_and_the_connection_goes_on(private_redis: RedisProcess) -> None:
    _admin(private_redis).set("text", "not a hash")

    async def main() -> bytes:
        connection = PipelinedConnection(private_redis.url, timeout=2.0)
        with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
            await connection.call("HGETALL", "text")
        reply = await connection.call("GET", "text")
        connection.close()
        return reply

    before = _connections(private_redis)
    assert asyncio.run(main()) == b"not a hash"
    assert _connections(private_redis) - before == 2


def test_a_batch_answers_each_command_in_place_with_calls_around_it(
    private_redis: RedisProcess,
) -> None:
    """call_many and call_encoded: one reply per command, an error reply in its place (not
    raised), and single calls asked in the same iteration answered in their turn."""
    _admin(private_redis).set("text", "not a hash")

    async def main() -> tuple:
        connection = PipelinedConnection(private_redis.url, timeout=2.0)
        batch = [("SET", "a", 1), ("HGETALL", "text"), ("INCR", "a")]
        before, many, after, encoded = await asyncio.gather(
            connection.call("GET", "text"),
            connection.call_many(batch),
            connection.call("GET", "a"),
            connection.call_encoded(b"".join(map(encode, batch)), len(batch)),
        )
        connection.close()
        return before, many, after, encoded

    before, many, after, encoded = asyncio.run(main())
    assert before == b"not a hash" and after == b"2"
    for replies, incremented in ((many, 2), (encoded, 2)):
        assert replies[0] == b"OK" and replies[2] == incremented
        assert isinstance(replies[1], redis.ResponseError) and "WRONGTYPE" in str(replies[1])


def test_a_batch_fails_whole_when_the_connection_is_lost(private_redis: RedisProcess) -> None:
    async def main() -> None:
        connection = PipelinedConnection(private_redis.url, timeout=2.0)
        assert await connection.call("PING") == b"PONG"
        private_redis.stop()
        with pytest.raises(redis.ConnectionError):
            await connection.call_many([("PING",), ("PING",)])
        connection.close()

    asyncio.run(main())


def test_a_script_the_server_lacks_is_sent_whole_and_then_cached(
    private_redis: RedisProcess,
) -> None:
    admin = _admin(private_redis)
    admin.script_flush()
    assert admin.script_exists(SHA) == [False]

    async def main() -> list:
        connection = PipelinedConnection(private_redis.url, timeout=2.0)
        replies = [await connection.evalsha(SCRIPT, SHA, ["k"], [7]) for _ in range(2)]
        connection.close()
        return replies

    assert asyncio.run(main()) == [[b"k", b"7"]] * 2
    assert admin.script_exists(SHA) == [True]


def test_password_and_database_come_from_the_url() -> None:
    server = RedisProcess(password="s3cret").start()
    try:
        redis.Redis(port=server.port, password="s3cret", db=3).set("where", "db 3")
        url = f"redis://:s3cret@127.0.0.1:{server.port}/3"
        wrong = f"redis://:wrong@127.0.0.1:{server.port}/3"

        async def main() -> bytes:
            connection = PipelinedConnection(url, timeout=2.0)
            reply = await connection.call("GET", "where")
            connection.close()
            refused = PipelinedConnection(wrong, timeout=2.0)
            with pytest.raises(redis.ConnectionError, match="Redis refused AUTH"):
                await refused.call("GET", "where")
            return reply

        assert asyncio.run(main()) == b"db 3"
    finally:
        server.stop()


def test_a_frozen_server_times_out_and_the_next_command_opens_a_new_connection(
    private_redis: RedisProcess,
) -> None:
    async def main() -> bytes:
        connection = PipelinedConnection(private_redis.url, timeout=0.2)
        assert await connection.call("PING") == b"PONG"
        os.kill(private_redis.process.pid, signal.SIGSTOP)
        started = time.monotonic()
        async with asyncio.timeout(5):  # the test's own bound, well beyond the connection's
            first = asyncio.ensure_future(connection.call("PING"))
            await asyncio.sleep(0.1)
            with pytest.raises(TimeoutError, match="did not answer within 0.2s"):
                await connection.call("PING")  # fails with the first, at its deadline
            with pytest.raises(TimeoutError):
                await first
        assert 0.2 <= time.monotonic() - started < 1.0
        os.kill(private_redis.process.pid, signal.SIGCONT)
        reply = await connection.call("ECHO", "again")
        connection.close()
        return reply

    before = _connections(private_redis)
    assert asyncio.run(main()) == b"again"
    assert _connections(private_redis) - before == 3  # two of ours, and the admin client counting


def test_commands_waiting_when_the_server_drops_the_connection_fail(
    private_redis: RedisProcess,
) -> None:
    admin = _admin(private_redis)

    async def main() -> bytes:
        connection = PipelinedConnection(private_redis.url, timeout=10.0)
        waiting = asyncio.ensure_future(connection.call("BLPOP", "never", 30))
        while not any(client["cmd"] == "blpop" for client in admin.client_list()):
            await asyncio.sleep(0.01)
        admin.client_kill_filter(_type="normal", skipme=True)
        with pytest.raises(redis.ConnectionError, match="Connection closed by Redis"):
            await waiting
        reply = await connection.call("ECHO", "reconnected")
        connection.close()
        return reply

    assert asyncio.run(main()) == b"reconnected"


def test_a_stopped_server_fails_fast_and_a_restarted_one_is_used_again(
    private_redis: RedisProcess,
) -> None:
    async def main() -> bytes:
        connection = PipelinedConnection(private_redis.url, timeout=2.0)
        assert await connection.call("PING") == b"PONG"
        private_redis.stop()
        started = time.monotonic()
        for _ in range(2):  # the dropped connection, then a refused connect
            with pytest.raises(redis.ConnectionError):
                await connection.call("PING")
        assert time.monotonic() - started < 1.0  # refused at once, not after the timeout
        private_redis.start()
        wait_until(lambda: _admin(private_redis).ping(), timeout=10, what="the restarted server")
        reply = await connection.call("ECHO", "back")
        connection.close()
        return reply

    assert asyncio.run(main()) == b"back"
