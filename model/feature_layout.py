"""The Redis feature contract between ``afm-ctr load-features`` and the scoring service.

Layout, for a key prefix P (default ``afm:``)::

    P current                  string: the namespace in use, e.g. "afm:ns:1732761234567-3fa2c1:"
    <namespace>user:<user_id>  hash: gender, age, occupation, zip (raw strings)
    <namespace>movies          hash: field = movie_id, value = that movie's features as compact
                               JSON, keys in MOVIE_FEATURES order:
                               {"title":"Heat (1995)","year":"1995","genres":"Action|Crime"}

A load writes a fresh namespace (users and movies), then points ``P current`` at it with one
SET, then deletes the previous namespace. Readers resolve the pointer and read in one atomic
Lua call that also returns the namespace it read from (READ_USER_SCRIPT, READ_MOVIES_SCRIPT),
so each read sees either the old feature set or the new one, never a mix, and never a
namespace that is half written or already deleted. A reader that caches the movie table
(the service does) keeps it per namespace and pairs a user only with the table of the
namespace the user came from.

A namespace written by a loader that knew no movies has no ``movies`` key: it reads as an
empty table. Movie values are raw strings exactly as in the data, "" when unknown.

Pure and synchronous: the writer and the reader share every byte-level decision here.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

DEFAULT_PREFIX = "afm:"

USER_FIELDS: tuple[str, ...] = ("gender", "age", "occupation", "zip")
"""Per-user features stored in Redis; with user_id these are contract.USER_FIELDS."""

MOVIE_FEATURES: tuple[str, ...] = ("title", "year", "genres")
"""Per-movie features in the movies hash, in JSON key order: dataset.MOVIE_COLUMNS after
movie_id. year and genres are contract.ITEM_FIELDS; title is for people, not the model."""

READ_USER_SCRIPT = """
local ns = redis.call('GET', KEYS[1])
if not ns then return false end
return {ns, redis.call('HGETALL', ns .. 'user:' .. ARGV[1])}
"""
"""KEYS[1] = pointer_key(prefix), ARGV[1] = user_id. Returns nil when nothing is loaded, else
``{namespace, flat field/value list of the user's hash}`` (an empty list for an unknown user)."""

READ_MOVIES_SCRIPT = """
local ns = redis.call('GET', KEYS[1])
if not ns then return false end
return {ns, redis.call('HGETALL', ns .. 'movies')}
"""
"""KEYS[1] = pointer_key(prefix). Returns nil when nothing is loaded, else ``{namespace, flat
movie_id/JSON list of the movies hash}`` (an empty list when the load wrote no movies)."""


def pointer_key(prefix: str) -> str:
    return f"{prefix}current"


def namespace(prefix: str, generation: str) -> str:
    """A namespace is its own key prefix; ``generation`` makes it unique per load."""
    return f"{prefix}ns:{generation}:"


def user_key(namespace: str, user_id: str | int) -> str:
    return f"{namespace}user:{user_id}"


def movies_key(namespace: str) -> str:
    return f"{namespace}movies"


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


def encode_movie(features: Mapping[str, str]) -> str:
    """The movies-hash value of one movie: compact JSON, keys in MOVIE_FEATURES order.

    Raises KeyError if a MOVIE_FEATURES entry is missing; other keys are ignored.
    """
    return json.dumps(
        {feature: str(features[feature]) for feature in MOVIE_FEATURES},
        ensure_ascii=False,
        separators=(",", ":"),
    )


def decode_movie(raw: bytes | str) -> dict[str, str] | None:
    """A movie's features from its movies-hash value; None if unreadable or incomplete."""
    try:
        # Decoding first is faster than json.loads(bytes), which sniffs the encoding.
        value = json.loads(_text(raw))
    except (ValueError, TypeError):  # UnicodeDecodeError is a ValueError
        return None
    if not isinstance(value, dict):
        return None
    features = {feature: value.get(feature) for feature in MOVIE_FEATURES}
    if not all(isinstance(v, str) for v in features.values()):
        return None
    return features


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
