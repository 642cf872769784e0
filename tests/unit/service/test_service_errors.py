"""The one-line reason the service gives for an exception (in problem details and logs)."""

from __future__ import annotations

from redis.exceptions import ConnectionError as RedisConnectionError

from service.errors import first_line


def test_a_reason_is_the_first_line_of_the_message() -> None:
    assert first_line(RedisConnectionError("Error 111 connecting\nTraceback...")) == (
        "Error 111 connecting"
    )


def test_an_exception_without_a_message_is_named_by_its_type() -> None:
    assert first_line(TimeoutError()) == "TimeoutError"
    assert first_line(RedisConnectionError("  \n")) == "ConnectionError"
