"""The Redis feature contract between ``afm-ctr load-features`` and the scoring service.

Layout, for a key prefix P (default ``afm:``)::

    P current                     string: the namespace in use, e.g. "afm:ns:1732761234567:"
    <namespace>user:<user_id>     hash: gender, age, occupation, zip (raw strings)

A load writes a fresh namespace, then points ``P current`` at it with one SET, then deletes
the previous namespace. Readers resolve the pointer and read the hash in one atomic Lua call
(READ_USER_SCRIPT), so they see either the old feature set or the new one, never a mix,
and never a namespace that is half written or already deleted.

Pure and synchronous: the writer and the reader share every byte-level decision here.
"""

from __future__ import annotations

from collections.abc import Mapping

DEFAULT_PREFIX = "afm:"

USER_FIELDS: tuple[str, ...] = ("gender", "age", "occupation", "zip")
"""Per-user features stored in Redis; with user_id these are the user half of contract.FIELDS."""

READ_USER_SCRIPT = """
local ns = redis.call('GET', KEYS[1])
if not ns then return false end
return redis.call('HGETALL', ns .. 'user:' .. ARGV[1])
"""
"""KEYS[1] = pointer_key(prefix), ARGV[1] = user_id. Returns nil when nothing is loaded,
an empty list for an unknown user, else the flat field/value list of the user's hash."""


def pointer_key(prefix: str) -> str:
    return f"{prefix}current"


def namespace(prefix: str, generation: str) -> str:
    """A namespace is its own key prefix; ``generation`` makes it unique per load."""
    return f"{prefix}ns:{generation}:"


def user_key(namespace: str, user_id: str | int) -> str:
    return f"{namespace}user:{user_id}"


def encode_user(features: Mapping[str, str]) -> dict[str, str]:
    """The hash written for one user. Raises KeyError if a USER_FIELDS entry is missing."""
    return {field: str(features[field]) for field in USER_FIELDS}


def decode_user(raw: Mapping[bytes | str, bytes | str] | None) -> dict[str, str] | None:
    """Features from a hash as read back; None for a missing or incomplete user."""
    if not raw:
        return None
    text = {_text(k): _text(v) for k, v in raw.items()}
    if any(field not in text for field in USER_FIELDS):
        return None
    return {field: text[field] for field in USER_FIELDS}


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
