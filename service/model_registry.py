"""Find, load, check and atomically swap the serving versions under the model directory.

What serves is one immutable ``Serving`` (stable, optional canary and its share of users,
previous stable), swapped as a single reference: a request reads it once and keeps its
``LoadedModel`` to the end, so a swap never changes the model under a request in flight.
Versions are loaded on a dedicated thread (never the event loop, where requests score) and
serve only after ``load_model``'s check succeeded. A version that fails is logged once and
not retried unless its directory is replaced (its mtime changes); what serves keeps serving,
so a broken version is never promoted.

Without a rollout policy file (``model/contracts/rollout.py``) the newest loadable version serves
everyone and the one it replaced stays loaded as ``previous``. With one, the registry follows
it; a broken policy file is logged, counted and ignored: the last good policy stays in force.
At most three versions serve (stable, canary, previous); a fourth is held while it loads.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from model.contracts import export_format, rollout
from model.contracts.rollout import Role, RolloutPolicy
from service.errors import VersionNotLoaded, first_line
from service.loaded_model import LoadedModel

log = logging.getLogger(__name__)

Loader = Callable[[Path], LoadedModel]
Arm = Literal["stable", "canary", "pinned"]
"""How a request's version was chosen: by the policy (stable or canary arm) or pinned."""


@dataclass(frozen=True, eq=False)  # identity, not field by field: models hold TensorFlow objects
class Serving:
    """The versions serving now and who gets which; immutable, replaced whole."""

    stable: LoadedModel | None = None
    canary: LoadedModel | None = None
    percent: float = 0.0
    previous: LoadedModel | None = None

    def same_as(self, other: Serving) -> bool:
        return self.percent == other.percent and all(
            getattr(self, role) is getattr(other, role) for role in ("stable", "canary", "previous")
        )

    def roles(self) -> list[tuple[Role, LoadedModel]]:
        """Each loaded version with its role, stable first."""
        named: list[tuple[Role, LoadedModel | None]] = [
            ("stable", self.stable),
            ("canary", self.canary),
            ("previous", self.previous),
        ]
        return [(role, model) for role, model in named if model is not None]

    def pick(self, user_id: int, pinned: int | None = None) -> tuple[LoadedModel, Arm]:
        """The version scoring ``user_id``: ``pinned`` if given (VersionNotLoaded when it is
        not loaded), else the canary for its share of users (``rollout.in_canary``), else
        stable. Requires a stable version."""
        if pinned is not None:
            for _, model in self.roles():
                if model.version == pinned:
                    return model, "pinned"
            loaded = ", ".join(f"{m.version} ({role})" for role, m in self.roles()) or "none"
            raise VersionNotLoaded(f"model version {pinned} is not loaded; loaded: {loaded}")
        assert self.stable is not None, "pick() needs a stable version; check it first"
        canary = self.canary
        if canary is not None and rollout.in_canary(user_id, canary.version, self.percent):
            return canary, "canary"
        return self.stable, "stable"


class ModelRegistry:
    def __init__(self, model_dir: Path, loader: Loader) -> None:
        self.model_dir = model_dir
        self._loader = loader
        self._serving = Serving()
        self._refused: dict[int, int] = {}  # version -> directory mtime_ns when it failed
        self._lock = asyncio.Lock()
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="model-load")
        self.reloads = {"loaded": 0, "refused": 0}
        self.policy: RolloutPolicy | None = None  # the last good policy; None: follow newest
        self.policy_error: str | None = None  # why the policy file on disk is ignored
        self.policy_errors = 0
        self._policy_stamp: tuple[int, int, int] | None = None

    @property
    def current(self) -> LoadedModel | None:
        """The stable version (what serves requests not given to a canary or pinned)."""
        return self._serving.stable

    @property
    def serving(self) -> Serving:
        return self._serving

    @property
    def refused_versions(self) -> list[int]:
        return sorted(self._refused)

    async def refresh(self) -> LoadedModel | None:
        """Bring the serving versions in line with the policy (or the newest version); return
        the stable one. Never raises: failures are logged and remembered."""
        async with self._lock:
            self._read_policy()
            if self.policy is None:
                await self._follow_newest()
            else:
                await self._follow_policy(self.policy)
            return self._serving.stable

    async def poll(self, interval: float) -> None:
        """Refresh every ``interval`` seconds until cancelled."""
        while True:
            await asyncio.sleep(interval)
            await self.refresh()

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _read_policy(self) -> None:
        """Re-read the policy file when it changed; keep the last good policy if it is broken."""
        path = rollout.policy_path(self.model_dir)
        try:
            stat = path.stat()
            stamp = (stat.st_ino, stat.st_mtime_ns, stat.st_size)
        except OSError:
            stamp = None
        if stamp == self._policy_stamp:
            return
        self._policy_stamp = stamp
        try:
            policy = rollout.read_policy(self.model_dir)
        except rollout.PolicyError as exc:
            self.policy_errors += 1
            self.policy_error = str(exc)
            log.error(
                "ignoring rollout policy: %s (keeping: %s)",
                exc,
                rollout.describe(self.policy, self.model_dir),
            )
            return
        self.policy, self.policy_error = policy, None
        log.info("rollout policy: %s", rollout.describe(policy, self.model_dir))

    async def _follow_newest(self) -> None:
        """Load the newest version above the stable one that loads and warms.

        Candidates are tried newest first, so a broken newest version falls back to the next
        newer-than-stable one. The replaced stable version stays loaded as previous.
        """
        old = self._serving
        serving = old.stable.version if old.stable else 0
        loaded = {model.version: model for _, model in old.roles()}
        for version in reversed(export_format.list_versions(self.model_dir)):
            if version <= serving:
                break
            model = await self._obtain(version, loaded)
            if model is not None:
                self._swap(Serving(stable=model, previous=old.stable))
                return
        if old.canary is not None:  # a policy was removed: everyone back on stable
            self._swap(Serving(stable=old.stable, previous=old.previous))

    async def _follow_policy(self, policy: RolloutPolicy) -> None:
        """Serve the policy's versions; a role whose version does not load is left as it
        was (stable) or empty (canary, previous)."""
        old = self._serving
        loaded = {model.version: model for _, model in old.roles()}
        stable = await self._obtain(policy.stable, loaded) or old.stable
        if stable is None:
            return
        taken = {stable.version}
        canary = previous = None
        if policy.canary is not None and policy.canary not in taken:
            canary = await self._obtain(policy.canary, loaded)
            taken.add(policy.canary)
        if policy.previous is not None and policy.previous not in taken:
            previous = await self._obtain(policy.previous, loaded)
        self._swap(Serving(stable, canary, policy.percent if canary else 0.0, previous))

    async def _obtain(self, version: int, loaded: dict[int, LoadedModel]) -> LoadedModel | None:
        """``version`` already loaded, or loaded now; None if it fails (remembered)."""
        if version in loaded:
            return loaded[version]
        version_dir = self.model_dir / str(version)
        stamp = _mtime_ns(version_dir)
        if self._refused.get(version) == stamp:
            return None
        model = await self._load(version_dir)
        if model is None:
            self._refused[version] = stamp
        else:
            self._refused.pop(version, None)
        return model

    def _swap(self, serving: Serving) -> None:
        if serving.same_as(self._serving):
            return
        self._serving = serving  # the swap: one reference assignment
        roles = ", ".join(f"{role} {m.version}" for role, m in serving.roles())
        share = f" ({serving.percent:g}% of users on the canary)" if serving.canary else ""
        log.info("serving model versions from %s: %s%s", self.model_dir, roles, share)

    async def _load(self, version_dir: Path) -> LoadedModel | None:
        loop = asyncio.get_running_loop()
        try:
            model = await loop.run_in_executor(self._pool, self._loader, version_dir)
        except Exception as exc:  # any failure: this version is refused, the old one serves
            self.reloads["refused"] += 1
            reason = first_line(exc)  # the type's name alone when the message is empty
            if reason != type(exc).__name__:
                reason = f"{type(exc).__name__}: {reason}"
            log.error(
                "refusing model version %s: %s (keeping version %s)",
                version_dir.name,
                reason,
                self._serving.stable.version if self._serving.stable else "none",
            )
            return None
        self.reloads["loaded"] += 1
        return model


def _mtime_ns(path: Path) -> int:
    try:
        return path.stat().st_mtime_ns
    except OSError:
        return -1
