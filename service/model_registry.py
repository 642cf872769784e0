"""Find, load, warm and atomically swap model versions under the model directory.

``current`` is a single reference: a request reads it once and keeps that ``LoadedModel`` to
the end, so a swap never changes the model under a request in flight. New versions are loaded
on a dedicated thread (never the scoring pool, never the event loop) and swapped in only after
warming succeeded. A version that fails is logged once and not retried, unless its directory
is replaced (its mtime changes); the version already serving keeps serving.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from model import contract
from service.errors import first_line
from service.scorer import LoadedModel

log = logging.getLogger(__name__)

Loader = Callable[[Path], LoadedModel]


class ModelRegistry:
    def __init__(self, model_dir: Path, loader: Loader) -> None:
        self.model_dir = model_dir
        self._loader = loader
        self._current: LoadedModel | None = None
        self._refused: dict[int, int] = {}  # version -> directory mtime_ns when it failed
        self._lock = asyncio.Lock()
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="model-load")
        self.reloads = {"loaded": 0, "refused": 0}

    @property
    def current(self) -> LoadedModel | None:
        return self._current

    @property
    def refused_versions(self) -> list[int]:
        return sorted(self._refused)

    async def refresh(self) -> LoadedModel | None:
        """Load the newest version above the current one that loads and warms; return current.

        Candidates are tried newest first, so a broken newest version falls back to the next
        newer-than-current one. Never raises: failures are logged and remembered.
        """
        async with self._lock:
            serving = self._current.version if self._current else 0
            for version in reversed(contract.list_versions(self.model_dir)):
                if version <= serving:
                    break
                version_dir = self.model_dir / str(version)
                stamp = _mtime_ns(version_dir)
                if self._refused.get(version) == stamp:
                    continue
                model = await self._load(version_dir)
                if model is None:
                    self._refused[version] = stamp
                    continue
                self._current = model  # the swap: one reference assignment
                self._refused.pop(version, None)
                log.info("serving model version %d from %s", version, version_dir)
                break
            return self._current

    async def poll(self, interval: float) -> None:
        """Refresh every ``interval`` seconds until cancelled."""
        while True:
            await asyncio.sleep(interval)
            await self.refresh()

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    async def _load(self, version_dir: Path) -> LoadedModel | None:
        loop = asyncio.get_running_loop()
        try:
            model = await loop.run_in_executor(self._pool, self._loader, version_dir)
        except Exception as exc:  # any failure: this version is refused, the old one serves
            self.reloads["refused"] += 1
            log.error(
                "refusing model version %s: %s: %s (keeping version %s)",
                version_dir.name,
                type(exc).__name__,
                first_line(exc),
                self._current.version if self._current else "none",
            )
            return None
        self.reloads["loaded"] += 1
        return model


def _mtime_ns(path: Path) -> int:
    try:
        return path.stat().st_mtime_ns
    except OSError:
        return -1
