"""The impression and event log: what ``/score`` showed and what people did with it.

The scoring service writes it; ``afm-ctr logs export`` reads it; ``afm-ctr train --from-logs``
trains on what the exporter wrote. An executable spec, like ``feature_layout``.

Impression ids
--------------
Every ``/score`` reply carries an ``impression_id`` that a frontend sends back with the
events of what it showed. The service checks it without a lookup::

    i1.<key id>.<version>.<arm>.<user id>.<ms>.<nonce>.<signature>
    i1.k1.3.stable.42.1796616305123.9f1c2a7be04d.Yf3kQ2V0aXyUq1v8cFqL0w

``ms`` is when it was issued (milliseconds since the epoch), ``nonce`` 12 random hex digits,
``signature`` the first 16 bytes of HMAC-SHA256(key, everything before the last dot),
base64url without padding. Keys come from a setting, each with an id (``k1:secret``); the
first signs, every listed key verifies, so a key is rotated by listing the new one first and
dropping the old one after the attribution window. ``parse_impression_id`` refuses a
malformed, forged or expired id with ``ImpressionIdError``, whose ``reason`` says which.

Redis layout, for a key prefix P (the feature store's, default ``afm:``)::

    P log:impressions:{<shard>}         stream, one entry per logged /score reply:
                                        impression  the impression id
                                        data        compact JSON, IMPRESSION_FIELDS below
    P log:impression:{<shard>}:<id>     hash, expires ATTRIBUTION_TTL_GRACE_S after the window:
                                        shown           "50,181,1" (the movie ids it returned)
                                        <movie>:<type>  ms of the first such event (HSETNX: a
                                                        repeat changes nothing)
    P log:events:<shard>                stream, one entry per accepted event:
                                        impression, movie_id, type, ts (ms)

``<shard>`` is ``shard(user_id)``: a user's impressions and events land in one of
LOG_SHARDS streams, so on a Redis Cluster the log spreads over the masters by user. An
impression's stream and its hash share the hash tag ``{<shard>}`` (one cluster slot), so the
service writes both in one script, for several impressions of a shard at once: atomically,
and once (the script writes nothing for an impression whose ``shown`` is set, so a batch
whose reply was lost can be sent again). Streams are capped with
``XADD ... MAXLEN ~ <n>`` (a setting). An event whose impression hash is not there yet (an
event may arrive before its impression is stored) is accepted, and the exporter drops it if
the impression did not show its movie.

An impression's ``data`` (``impression_data`` writes it, ``read_impression_data`` reads it)::

    {"user_id": 42, "ts": 1796616305123, "version": 3, "arm": "stable",
     "features": {"gender": "F", "age": "25", "occupation": "7", "zip": "48067",
                  "watched": "50|181"},
     "movies": {"movie_id": [181, 50], "score": [0.4321, 0.1234],
                "year": ["1983", "1977"], "genres": ["Action|Sci-Fi", "Action|Sci-Fi"]}}

``features`` are the raw values the model was given (USER_LOG_FIELDS: what the feature store
held then), so training from logs never re-joins against a later feature set. ``movies``
holds the returned candidates in reply order (after ``top_k``; position 0 first) as columns:
their ids, their scores as the reply wrote them, and MOVIE_LOG_FIELDS ("" for a movie the
feature set did not have). Columns, not an object per movie: an entry is half the size,
which is half the work for Redis on every ``/score``.

Importing this module never imports TensorFlow.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import re
import secrets
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import orjson

from model.contracts import export_format, feature_layout

LOG_SHARDS = 8
"""Streams per kind; a user's entries always land in the same one (``shard``)."""

EVENT_TYPES: tuple[str, ...] = ("click", "view", "skip")
EventType = Literal["click", "view", "skip"]

ATTRIBUTION_WINDOW_S = 3600
"""Default: an event counts for an impression issued at most this long before it; the
exporter labels an impression once its window has closed."""

ATTRIBUTION_TTL_GRACE_S = 86_400
"""The per-impression hash outlives the window by this much, so an exporter that runs a day
late still finds the clicks."""

ID_VERSION = "i1"
_SIGNATURE_BYTES = 16
_ID_PATTERN = re.compile(
    r"^i1\.(?P<kid>[A-Za-z0-9_-]{1,16})\.(?P<version>\d{1,9})\.(?P<arm>[a-z]{1,16})"
    r"\.(?P<user>\d{1,19})\.(?P<ms>\d{13})\.(?P<nonce>[0-9a-f]{12})\.(?P<sig>[A-Za-z0-9_-]{22})$"
)

IMPRESSION_FIELDS: tuple[str, ...] = ("user_id", "ts", "version", "arm", "features", "movies")

USER_LOG_FIELDS: tuple[str, ...] = (
    *feature_layout.USER_FIELDS, export_format.LAST_WATCHED, feature_layout.WATCHED
)  # fmt: skip
"""A logged impression's user features: every user field the feature store holds, and the
watched movies with how long before the request the latest was ("" for none), whichever the
version read, so a log can train any field set without a join against a later feature set."""

MOVIE_LOG_FIELDS: tuple[str, ...] = export_format.ITEM_FIELDS
"""A logged movie's features (year, genres): what the feature set held for it, "" unknown."""


class ImpressionIdError(ValueError):
    """An impression id that cannot be accepted; ``reason`` is malformed, forged or expired."""

    def __init__(self, reason: Literal["malformed", "forged", "expired"], detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


@dataclass(frozen=True)
class ImpressionId:
    """What a valid impression id says."""

    text: str
    key_id: str
    version: int
    arm: str
    user_id: int
    issued_ms: int


def parse_keys(text: str) -> dict[str, bytes]:
    """Signing keys from ``"k2:secret2,k1:secret1"`` (first signs); ValueError, in one line,
    for an entry without an id, a bad id or a repeated id."""
    keys: dict[str, bytes] = {}
    for entry in (part.strip() for part in text.replace("\n", ",").split(",")):
        if not entry:
            continue
        key_id, sep, secret = entry.partition(":")
        if not sep or not secret or not re.fullmatch(r"[A-Za-z0-9_-]{1,16}", key_id):
            raise ValueError(
                "each impression key reads <id>:<secret>, the id 1-16 letters, digits, - or _"
            )
        if key_id in keys:
            raise ValueError(f"impression key id {key_id!r} is listed twice")
        keys[key_id] = secret.encode()
    return keys


def issue_impression_id(
    keys: Mapping[str, bytes], version: int, arm: str, user_id: int, now_ms: int
) -> str:
    """A new signed id, signed with the first of ``keys``."""
    key_id, secret = next(iter(keys.items()))
    body = f"{ID_VERSION}.{key_id}.{version}.{arm}.{user_id}.{now_ms:013d}.{secrets.token_hex(6)}"
    return f"{body}.{_sign(secret, body)}"


def read_impression_id(text: str) -> ImpressionId:
    """What an id says, NOT verified (for clients and reports, which hold no key);
    ImpressionIdError("malformed") if it is not shaped like one."""
    match = _ID_PATTERN.match(text)
    if match is None:
        raise ImpressionIdError("malformed", "not an impression id issued by /score")
    return ImpressionId(
        text,
        match["kid"],
        int(match["version"]),
        match["arm"],
        int(match["user"]),
        int(match["ms"]),
    )


def parse_impression_id(
    text: str, keys: Mapping[str, bytes], now_ms: int, window_s: int
) -> ImpressionId:
    """The id's content if it is well formed, signed by one of ``keys`` and issued at most
    ``window_s`` before ``now_ms``; ImpressionIdError otherwise."""
    claims = read_impression_id(text)
    secret = keys.get(claims.key_id)
    body, signature = text.rsplit(".", 1)
    if secret is None or not hmac.compare_digest(_sign(secret, body), signature):
        raise ImpressionIdError("forged", "the impression id's signature does not verify")
    if now_ms - claims.issued_ms > window_s * 1000:
        raise ImpressionIdError(
            "expired", f"the impression is older than the attribution window ({window_s} s)"
        )
    return claims


def shard(user_id: int | str) -> int:
    """The stream shard of a user's entries: CRC-32 of the decimal id, modulo LOG_SHARDS."""
    return zlib.crc32(str(user_id).encode()) % LOG_SHARDS


def impressions_key(prefix: str, shard_number: int) -> str:
    return f"{prefix}log:impressions:{{{shard_number}}}"


def events_key(prefix: str, shard_number: int) -> str:
    return f"{prefix}log:events:{shard_number}"


def impression_key(prefix: str, impression_id: str) -> str:
    """The hash of ``impression_id`` (a well-formed id: its user names the shard)."""
    return f"{prefix}log:impression:{{{shard(impression_id.split('.')[4])}}}:{impression_id}"


SHOWN_FIELD = "shown"
"""The per-impression hash's field listing the movie ids it showed, comma-separated."""


def event_field(movie_id: int, event_type: str) -> str:
    """The per-impression hash's field recording the first ``event_type`` on ``movie_id``."""
    return f"{movie_id}:{event_type}"


def impression_data(
    user_id: int,
    ts: int,
    version: int,
    arm: str,
    features: Mapping[str, str],
    movie_ids: bytes,
    scores: bytes,
    movie_features: Mapping[str, Sequence[str] | orjson.Fragment],
) -> bytes:
    """An impression's ``data``. ``movie_ids``, ``scores``: the returned movies' ids and
    scores as the reply wrote them, comma-separated ("50,181", "0.43,0.2"); ``features``:
    USER_LOG_FIELDS; ``movie_features``: MOVIE_LOG_FIELDS -> one value per returned movie
    (or those values as a JSON array already)."""
    return orjson.dumps(
        {
            "user_id": user_id,
            "ts": ts,
            "version": version,
            "arm": arm,
            "features": features,
            "movies": {
                "movie_id": orjson.Fragment(b"[%b]" % movie_ids),
                "score": orjson.Fragment(b"[%b]" % scores),
                **movie_features,
            },
        }
    )


@dataclass(frozen=True)
class ImpressionData:
    """An impression's ``data``, read. Position p showed ``movie_ids[p]``."""

    user_id: int
    ts: int
    version: int
    arm: str
    features: dict[str, str | None]  # USER_LOG_FIELDS; None: not logged (an older entry)
    movie_ids: list[int]
    scores: list[float]
    movie_features: dict[str, list[str | None]]  # MOVIE_LOG_FIELDS, one value per movie


def read_impression_data(data: str | bytes) -> ImpressionData:
    """``data`` as ``impression_data`` wrote it (or as a list of movie objects, as releases
    before the columns did); ValueError when it is neither."""
    try:
        value: Any = orjson.loads(data)
        movies = value["movies"]
        if isinstance(movies, list):
            movies = _columns(movies)
        ids = [int(m) for m in movies["movie_id"]]
        columns = {
            name: [_text(v) for v in movies[name]] if name in movies else [None] * len(ids)
            for name in MOVIE_LOG_FIELDS
        }
        scores = [float(s) for s in movies["score"]]
        if any(len(column) != len(ids) for column in (scores, *columns.values())):
            raise ValueError("the movies' columns differ in length")
        features = value.get("features") or {}
        return ImpressionData(
            user_id=int(value["user_id"]),
            ts=int(value["ts"]),
            version=int(value["version"]),
            arm=str(value["arm"]),
            features={name: _text(features.get(name)) for name in USER_LOG_FIELDS},
            movie_ids=ids,
            scores=scores,
            movie_features=columns,
        )
    except (KeyError, TypeError, AttributeError, orjson.JSONDecodeError) as exc:
        raise ValueError(f"not an impression entry's data: {exc!r}") from None


def _columns(movies: list[dict[str, Any]]) -> dict[str, list[Any]]:
    """A list of movie objects ({"movie_id", "position", "score", "features"}) as columns."""
    movies = sorted(movies, key=lambda m: m.get("position", 0))
    return {
        "movie_id": [m["movie_id"] for m in movies],
        "score": [m["score"] for m in movies],
        **{
            name: [(m.get("features") or {}).get(name) for m in movies] for name in MOVIE_LOG_FIELDS
        },
    }


def _text(value: object) -> str | None:
    return None if value is None else str(value)


def _sign(secret: bytes, body: str) -> str:
    mac = _keyed(secret).copy()  # half the cost of hmac.new: the key is prepared once
    mac.update(body.encode())
    digest = mac.digest()[:_SIGNATURE_BYTES]
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


@functools.lru_cache(maxsize=64)
def _keyed(secret: bytes) -> hmac.HMAC:
    """An HMAC-SHA256 of ``secret`` over nothing yet, to copy per signature."""
    return hmac.new(secret, digestmod=hashlib.sha256)
