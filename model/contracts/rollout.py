"""The rollout policy: which versions of a model directory serve whom. An executable spec.

The policy is one small JSON file beside the versions, so every replica reading the directory
follows the same one::

    <model-dir>/rollout.json
        {"format_version": 2, "stable": 3, "canary": 4, "percent": 5.0, "previous": 2,
         "canary_since": "2026-11-29T16:00:00+00:00", "updated_at": "2026-11-29T17:00:00+00:00"}

Rules both halves rely on:

* No file: the newest loadable version serves everything (each new version takes over).
  With a file, versions serve only as it says: a new version waits to be named a canary.
* ``stable`` scores every request not given to the canary. ``canary`` (optional) scores the
  users whose ``user_bucket(user_id, canary)`` is below ``percent * 100``: a user keeps
  their version across requests, replicas and restarts, and raising ``percent`` only adds
  users. ``previous`` (optional) is kept loaded for an instant rollback.
* ``canary_since`` is when the canary version started: written with a new canary and kept
  by every later write that leaves the canary version as it was (a new share, the same
  canary again), so a judge's window covers the whole experiment. ``updated_at`` is the
  last write. Format 1 (no ``canary_since``) is still read: its canary's start is unknown.
* The file is replaced only by ``os.replace`` of a complete temporary file: a reader sees
  the old policy or the new one, never a part. ``read_policy`` refuses a file that does not
  parse or breaks a rule with ``PolicyError``; a reader keeps the last good policy then.

``user_bucket`` is reproducible in any language: the first 8 bytes of
SHA-256(``"<canary>:<user_id>"``, both in decimal ASCII), as a big-endian unsigned integer,
modulo 10,000. Salting with the canary version gives each canary its own users, so the
same users are not always the first to see a new version.

Importing this module never imports TensorFlow.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from model.contracts import export_format

POLICY_FILE = "rollout.json"
FORMAT_VERSION = 2
"""Written; 1 (before ``canary_since``) is read too."""
BUCKETS = 10_000
"""Users are split into this many buckets: ``percent`` has a resolution of 0.01."""

Role = Literal["stable", "canary", "previous"]


class PolicyError(ValueError):
    """The policy file cannot be used, or a rollout step is not possible; says why."""


class RolloutPolicy(BaseModel):
    """Content of ``rollout.json``. Unknown keys are refused: a typo must not pass silently."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    format_version: Literal[1, 2] = FORMAT_VERSION
    stable: int = Field(ge=0)
    canary: int | None = Field(None, ge=0)
    percent: float = Field(0.0, ge=0, le=100, description="Share of users the canary scores.")
    previous: int | None = Field(None, ge=0)
    canary_since: str | None = Field(
        None, description="When the canary version started (ISO 8601, UTC)."
    )
    updated_at: str = ""

    @model_validator(mode="after")
    def _consistent(self) -> RolloutPolicy:
        if self.canary is None and self.percent != 0:
            raise ValueError(f"percent is {self.percent} but no canary is set")
        if self.canary is not None and self.canary == self.stable:
            raise ValueError(f"canary and stable are both version {self.stable}")
        if self.previous is not None and self.previous in (self.stable, self.canary):
            raise ValueError(f"previous version {self.previous} also has another role")
        if self.canary is None and self.canary_since is not None:
            raise ValueError("canary_since is set but no canary is")
        return self

    def roles(self) -> dict[int, Role]:
        """Version -> role, stable first."""
        named: dict[int, Role] = {self.stable: "stable"}
        if self.canary is not None:
            named[self.canary] = "canary"
        if self.previous is not None:
            named[self.previous] = "previous"
        return named


def user_bucket(user_id: int, canary: int) -> int:
    """The user's bucket in [0, BUCKETS) for this canary (see the module docstring)."""
    digest = hashlib.sha256(f"{canary}:{user_id}".encode("ascii")).digest()
    return int.from_bytes(digest[:8], "big") % BUCKETS


def in_canary(user_id: int, canary: int, percent: float) -> bool:
    return user_bucket(user_id, canary) < round(percent * BUCKETS / 100)


def policy_path(model_dir: Path) -> Path:
    return model_dir / POLICY_FILE


def read_policy(model_dir: Path) -> RolloutPolicy | None:
    """The policy in ``model_dir``, or None without one; PolicyError for a broken file."""
    path = policy_path(model_dir)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise PolicyError(f"{path}: cannot read: {exc.strerror}") from None
    try:
        return RolloutPolicy.model_validate_json(raw)
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(str(part) for part in error["loc"])
        more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
        raise PolicyError(f"{path}: {where + ': ' if where else ''}{error['msg']}{more}") from None


def write_policy(model_dir: Path, policy: RolloutPolicy) -> Path:
    """Write ``policy`` atomically (temporary file, fsync, ``os.replace``); return its path.
    Stamps ``updated_at``, and ``canary_since`` of a canary that has none (a new one)."""
    path = policy_path(model_dir)
    now = datetime.now(UTC).isoformat(timespec="seconds")
    since = policy.canary_since or (now if policy.canary is not None else None)
    stamped = RolloutPolicy.model_validate(
        {**policy.model_dump(), "format_version": FORMAT_VERSION, "canary_since": since,
         "updated_at": now}
    )  # fmt: skip
    text = stamped.model_dump_json(indent=2) + "\n"
    fd, temporary = tempfile.mkstemp(prefix=f".{POLICY_FILE}.", dir=model_dir)
    try:
        with os.fdopen(fd, "w") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(temporary, 0o644)  # mkstemp's 0600 would hide it from a service user
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


# The rollout steps: pure functions from the policy in force (None: no file yet) to the next.


def start_canary(
    policy: RolloutPolicy | None, versions: list[int], canary: int, percent: float
) -> RolloutPolicy:
    """Send ``percent`` of users to ``canary``; without a policy, stable becomes the newest
    version below the canary (the one serving before it appeared). The same canary keeps its
    start (``canary_since``; a format 1 file's last write stands in for it); another starts
    anew when written."""
    _require(versions, canary)
    if policy is None:
        older = [v for v in versions if v < canary]
        if not older:
            raise PolicyError(f"no version older than {canary} to keep as stable")
        policy = RolloutPolicy(stable=older[-1])
    if canary == policy.stable:
        raise PolicyError(f"version {canary} is already the stable version")
    previous = None if policy.previous == canary else policy.previous
    since = None
    if policy.canary == canary:
        since = policy.canary_since or policy.updated_at or None
    return _valid(
        stable=policy.stable, canary=canary, percent=percent, previous=previous, canary_since=since
    )


def promote(policy: RolloutPolicy | None) -> RolloutPolicy:
    """The canary becomes stable for everyone; the old stable is kept as previous."""
    if policy is None or policy.canary is None:
        raise PolicyError("no canary to promote (start one with --canary VERSION --percent P)")
    return _valid(stable=policy.canary, previous=policy.stable)


def rollback(
    policy: RolloutPolicy | None, versions: list[int], version: int | None = None
) -> RolloutPolicy:
    """Undo the last step. With a canary: drop it. Without: stable goes back to previous.
    ``version`` makes that version stable instead (any present one), dropping any canary."""
    if version is not None:
        _require(versions, version)
        stable = policy.stable if policy else (versions[-1] if versions else None)
        return _valid(stable=version, previous=stable if stable != version else None)
    if policy is None:
        raise PolicyError("no rollout policy yet; name the version: --rollback VERSION")
    if policy.canary is not None:
        return _valid(stable=policy.stable, previous=policy.previous)
    if policy.previous is None:
        raise PolicyError("no previous stable version; name one: --rollback VERSION")
    return _valid(stable=policy.previous)


def _require(versions: list[int], version: int) -> None:
    if version not in versions:
        raise PolicyError(f"version {version} is not in the model directory (has {versions})")


def _valid(**fields: object) -> RolloutPolicy:
    try:
        return RolloutPolicy.model_validate(fields)
    except ValidationError as exc:
        raise PolicyError(exc.errors()[0]["msg"]) from None


def describe(policy: RolloutPolicy | None, model_dir: Path) -> str:
    """One line a person reads: who serves whom."""
    if policy is None:
        newest = export_format.latest_version(model_dir)
        return f"no rollout policy: the newest loadable version serves everyone (newest: {newest})"
    text = f"stable {policy.stable}"
    if policy.canary is not None:
        text += f", canary {policy.canary} for {policy.percent:g}% of users"
    if policy.previous is not None:
        text += f", previous {policy.previous} kept for rollback"
    return text
