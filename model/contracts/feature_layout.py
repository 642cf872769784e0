"""The Redis feature contract between ``afm-ctr load-features`` and the scoring service.

Layout, for a key prefix P (default ``afm:``)::

    P current                  string: the namespace in use, e.g. "afm:ns:1732761234567-3fa2c1:"
    <namespace>user:<user_id>  hash: gender, age, occupation, zip (raw strings), and
                               watched (WATCHED, contract.HISTORY_FIELD's raw format): the
                               user's 20 (HISTORY_LENGTH) most recently rated movies of all
                               their ratings, most recent first, ids joined by "|"
                               ("50|1|181"; "" for none); without timestamps, a seeded
                               random 20 (model.data.history.latest_watched); and
                               watched_at (WATCHED_AT): when the most recent of them was
                               watched, Unix seconds ("874965758"; absent without times)
    <namespace>movies          hash: field = movie_id, value = that movie's features as compact
                               JSON, keys in MOVIE_FEATURES order:
                               {"title":"Heat (1995)","year":"1995","genres":"Action|Crime"}
    <namespace>meta            hash: what the load is (META_FIELDS), every value a string:
                               source       "ml-1m at /data/ml-1m"
                               users        "6040" (decimal)
                               movies       "3883" (decimal)
                               loaded_at    "2026-01-02T03:04:05Z" (UTC, ISO 8601 seconds)
                               labels       {"gender":{"F":"Female","M":"Male"}} (compact JSON:
                                            field -> raw value -> readable label)
                               popular      ["2858","260"] (JSON: up to 100 movie ids, most
                                            rated first)
                               sample_users ["1","2"] (JSON: up to 20 user ids)
                               user_values  {"gender":{"F":1709,"M":4331},"age":{...},...}
                                            (compact JSON: USER_FIELDS -> raw value -> users
                                            with it, values sorted; what the service compares
                                            with a model's vocabularies)

A load writes a fresh namespace (users, movies and meta), then points ``P current`` at it
with one SET, then deletes the previous namespace. Readers resolve the pointer and read in
one atomic Lua call that also returns the namespace it read from (READ_USER_SCRIPT,
READ_MOVIES_SCRIPT), so each read sees either the old feature set or the new one, never a
mix, and never a namespace that is half written or already deleted. A reader that caches
the movie table and meta (the service does) keeps them per namespace and pairs a user only
with the table of the namespace the user came from.

On a Redis Cluster the keys are the same, spelled the same; no key carries a hash tag, so
each hashes whole to its slot (CRC16 mod 16384) and a load's user hashes spread evenly over
every master: ``afm:ns:123-ab:user:1`` is slot 8470, ``...:user:2`` slot 4469, ``...:user:3``
slot 340, ``afm:current`` slot 584. A script may touch one slot only, so a cluster reader does
not use the scripts above; what the Lua call gave, one namespace per read and no read of a
deleted one, comes from these rules instead:

* The loader writes the whole namespace, waits until each master's replica holds it (WAIT),
  then SETs the pointer (and waits for that too), so a failover never exposes half a load.
* A reader resolves the pointer with a plain GET and keeps the answer: it re-reads it in the
  background once its copy is CLUSTER_REFRESH_SECONDS old and never starts a read with a
  copy more than CLUSTER_MAX_AGE_SECONDS old (counted from when the GET was sent). Every key
  of one request comes from that one namespace: the user's hash, and the movies and meta
  hashes of the same namespace (fetched once per namespace, pipelined).
* The loader does not delete the namespace it replaced: it sets a TTL of
  CLUSTER_RETIRE_SECONDS on each of its keys, far beyond the longest any reader may still
  use it (the max age plus a request's reads, each bounded by the service's timeout).
* A failed load deletes what it wrote before the pointer moved, as on one Redis.
* Every cluster load writes a meta hash: a reader that finds none when it fetches its
  namespace's tables knows the namespace is gone and reads the pointer again.
* The prefix may not contain ``{`` or ``}`` (check_cluster_prefix): a hash tag in it would
  put every key, so every user, in one slot on one master.

A namespace written by an older loader may lack ``movies`` (reads as an empty table) or
``meta`` (reads as ``FeatureSetMeta()``: no source, counts or time, no labels, no samples),
a meta hash may lack ``user_values`` (reads as empty: nothing to compare), and a user hash
may lack ``watched`` or ``watched_at`` (read as "": no history, no time). A user's history
lives in the user's own hash, so a request still reads one key per user.
Movie values are raw strings exactly as in the data, "" when unknown.

Pure and synchronous: the writer and the reader share every byte-level decision here.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

DEFAULT_PREFIX = "afm:"

USER_FIELDS: tuple[str, ...] = ("gender", "age", "occupation", "zip")
"""Per-user features stored in Redis; with user_id these are contract.USER_FIELDS."""

WATCHED = "watched"
"""The optional field of a user's hash holding what the user watched: contract.HISTORY_FIELD,
spelled out so that importing this module stays free of pydantic (the CLI starts with it)."""

WATCHED_AT = "watched_at"
"""The optional field of a user's hash holding when the user watched the most recent of
WATCHED: Unix time in seconds, decimal ("874965758", "1733612345.25"). The service turns it
into contract.LAST_WATCHED, the time from then to the request."""

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
return {ns, redis.call('HGETALL', ns .. 'movies'), redis.call('HGETALL', ns .. 'meta')}
"""
"""KEYS[1] = pointer_key(prefix). Returns nil when nothing is loaded, else ``{namespace, flat
movie_id/JSON list of the movies hash, flat field/value list of the meta hash}`` (an empty
list for a hash the load did not write)."""

CLUSTER_REFRESH_SECONDS = 1.0
"""A cluster reader re-reads the pointer, in the background, once its copy is this old: a
new load reaches it within about this long."""

CLUSTER_MAX_AGE_SECONDS = 10.0
"""A cluster reader never starts a read with a namespace from a pointer GET sent longer
ago than this; it waits for a fresh GET instead (and fails the read if that fails)."""

CLUSTER_RETIRE_SECONDS = 300
"""TTL the cluster loader puts on every key of the namespace it replaced. It must exceed
CLUSTER_MAX_AGE_SECONDS plus the longest a request may keep reading (a few calls of at most
the service's 30 s timeout ceiling), so no reader can still be using a retired key."""

META_FIELDS: tuple[str, ...] = (
    "source", "users", "movies", "loaded_at", "labels", "popular", "sample_users", "user_values",
)  # fmt: skip
"""Fields of the meta hash, in the order encode_meta writes them."""


@dataclass(frozen=True)
class FeatureSetMeta:
    """What one load wrote, as stored in its meta hash. The defaults are what a namespace
    without a meta hash (an older loader) reads as."""

    source: str = ""
    """The dataset, e.g. "ml-1m at /data/ml-1m"; "" when unknown."""
    users: int | None = None
    movies: int | None = None
    loaded_at: str = ""
    """UTC, ISO 8601 to the second: "2026-01-02T03:04:05Z"; "" when unknown."""
    labels: Mapping[str, Mapping[str, str]] = field(default_factory=lambda: MappingProxyType({}))
    """field -> raw value -> readable label, for fields whose values are codes (ML-1M's age
    "1" is "Under 18"). A field or value not in it has no label but its raw value."""
    popular: tuple[str, ...] = ()
    """Movie ids, most rated first."""
    sample_users: tuple[str, ...] = ()
    """User ids present in the load, for people trying the service."""
    user_values: Mapping[str, Mapping[str, int]] = field(
        default_factory=lambda: MappingProxyType({})
    )
    """USER_FIELDS -> raw value -> number of loaded users with it; empty when not recorded."""


def pointer_key(prefix: str) -> str:
    return f"{prefix}current"


def namespace(prefix: str, generation: str) -> str:
    """A namespace is its own key prefix; ``generation`` makes it unique per load."""
    return f"{prefix}ns:{generation}:"


def user_key(namespace: str, user_id: str | int) -> str:
    return f"{namespace}user:{user_id}"


def movies_key(namespace: str) -> str:
    return f"{namespace}movies"


def meta_key(namespace: str) -> str:
    return f"{namespace}meta"


def check_cluster_prefix(prefix: str) -> str:
    """``prefix`` if it is fit for a Redis Cluster; raises ValueError if it holds ``{`` or
    ``}``, since a hash tag would put every key of every load in one slot."""
    if "{" in prefix or "}" in prefix:
        raise ValueError(
            f"prefix {prefix!r} holds a brace: on a Redis Cluster a hash tag would put "
            "every key in one slot, on one master"
        )
    return prefix


def encode_user(features: Mapping[str, str]) -> dict[str, str]:
    """The hash written for one user: USER_FIELDS, and WATCHED and WATCHED_AT when
    ``features`` has them (a WATCHED_AT of "" is left out). Raises KeyError if a USER_FIELDS
    entry is missing; other keys are ignored."""
    encoded = {field: str(features[field]) for field in USER_FIELDS}
    if WATCHED in features:
        encoded[WATCHED] = str(features[WATCHED])
    if features.get(WATCHED_AT, ""):
        encoded[WATCHED_AT] = str(features[WATCHED_AT])
    return encoded


def decode_user(raw: Mapping[bytes | str, bytes | str] | None) -> dict[str, str] | None:
    """Features from a hash as read back: USER_FIELDS, WATCHED and WATCHED_AT ("" when the
    hash has none, e.g. one written by an older loader); None for a missing or incomplete
    user."""
    if not raw:
        return None
    text = {_text(k): _text(v) for k, v in raw.items()}
    if any(field not in text for field in USER_FIELDS):
        return None
    optional = {field: text.get(field, "") for field in (WATCHED, WATCHED_AT)}
    return {**{field: text[field] for field in USER_FIELDS}, **optional}


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


def encode_meta(meta: FeatureSetMeta) -> dict[str, str]:
    """The meta hash of one load: META_FIELDS as strings, the JSON ones compact with
    non-ASCII text kept as is. A count that is None is left out, as decode_meta reads it back."""
    encoded = {
        "source": meta.source,
        "users": _count(meta.users),
        "movies": _count(meta.movies),
        "loaded_at": meta.loaded_at,
        "labels": _json({f: dict(values) for f, values in meta.labels.items()}),
        "popular": _json(list(meta.popular)),
        "sample_users": _json(list(meta.sample_users)),
        "user_values": _json({f: dict(values) for f, values in meta.user_values.items()}),
    }
    return {name: value for name, value in encoded.items() if value is not None}


def decode_meta(raw: Mapping[bytes | str, bytes | str] | None) -> FeatureSetMeta:
    """The meta of a load from its hash as read back; never raises.

    A missing hash, or any missing or unreadable field, reads as that field's default
    (FeatureSetMeta()), so a bad meta hash costs labels, samples or value counts, never a
    read. The result is read-only all the way down: readers may share it.
    """
    try:
        text = {_text(k): _text(v) for k, v in (raw or {}).items()}
    except UnicodeDecodeError:
        return FeatureSetMeta()
    labels = _loads(text.get("labels"), dict)
    popular = _loads(text.get("popular"), list)
    samples = _loads(text.get("sample_users"), list)
    user_values = _loads(text.get("user_values"), dict)
    return FeatureSetMeta(
        source=text.get("source", ""),
        users=_decimal(text.get("users")),
        movies=_decimal(text.get("movies")),
        loaded_at=text.get("loaded_at", ""),
        labels=MappingProxyType(
            {
                name: MappingProxyType(dict(values))
                for name, values in labels.items()
                if isinstance(values, dict) and _all_str(*values.keys(), *values.values())
            }
        ),
        popular=tuple(popular) if _all_str(*popular) else (),
        sample_users=tuple(samples) if _all_str(*samples) else (),
        user_values=MappingProxyType(
            {
                name: MappingProxyType(dict(counts))
                for name, counts in user_values.items()
                if isinstance(counts, dict) and _all_counts(counts)
            }
        ),
    )


def _json(value: object) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _loads(text: str | None, kind: type) -> dict | list:
    """JSON ``text`` if it is a ``kind``, else an empty one."""
    try:
        value = json.loads(text) if text is not None else None
    except ValueError:
        value = None
    return value if isinstance(value, kind) else kind()


def _count(value: int | None) -> str | None:
    return None if value is None else str(int(value))


def _decimal(text: str | None) -> int | None:
    return int(text) if text is not None and text.isascii() and text.isdigit() else None


def _all_str(*values: object) -> bool:
    return all(isinstance(v, str) for v in values)


def _all_counts(counts: dict) -> bool:
    """Every key a string and every value a count (an int >= 0, not a bool)."""
    return _all_str(*counts) and all(type(n) is int and n >= 0 for n in counts.values())


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
