"""ModelRegistry: newest loadable version wins, broken versions are refused once."""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path

import pytest

from service.model_registry import ModelRegistry


class Loaded:
    def __init__(self, version_dir: Path) -> None:
        self.version = int(version_dir.name)


class CountingLoader:
    """Loads any version not listed as broken; counts attempts per version."""

    def __init__(self, broken: set[int] | None = None) -> None:
        self.broken = broken or set()
        self.attempts: dict[int, int] = {}

    def __call__(self, version_dir: Path) -> Loaded:
        version = int(version_dir.name)
        self.attempts[version] = self.attempts.get(version, 0) + 1
        if version in self.broken:
            raise OSError(f"SavedModel file does not exist at: {version_dir}")
        return Loaded(version_dir)


def _versions(root: Path, *versions: int) -> None:
    for v in versions:
        (root / str(v)).mkdir()


def _refresh(registry: ModelRegistry):  # noqa: ANN202
    return asyncio.run(registry.refresh())


def test_empty_dir_loads_nothing(tmp_path: Path) -> None:
    registry = ModelRegistry(tmp_path / "missing", CountingLoader())
    assert _refresh(registry) is None and registry.current is None


def test_loads_the_newest_version_and_ignores_temporary_dirs(tmp_path: Path) -> None:
    _versions(tmp_path, 1, 3, 2)
    (tmp_path / ".tmp-abc").mkdir()
    loader = CountingLoader()
    registry = ModelRegistry(tmp_path, loader)
    assert _refresh(registry).version == 3
    assert loader.attempts == {3: 1}
    assert registry.reloads == {"loaded": 1, "refused": 0}


def test_new_version_is_swapped_in(tmp_path: Path) -> None:
    _versions(tmp_path, 1)
    registry = ModelRegistry(tmp_path, CountingLoader())
    first = _refresh(registry)
    _versions(tmp_path, 2)
    assert _refresh(registry).version == 2
    assert first.version == 1  # a request holding the old model keeps it


def test_broken_version_is_refused_once_and_old_one_serves(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _versions(tmp_path, 1)
    loader = CountingLoader(broken={2})
    registry = ModelRegistry(tmp_path, loader)
    _refresh(registry)
    _versions(tmp_path, 2)
    with caplog.at_level(logging.ERROR, logger="service.model_registry"):
        for _ in range(3):
            assert _refresh(registry).version == 1
    assert loader.attempts[2] == 1
    assert registry.refused_versions == [2]
    assert [r.message for r in caplog.records] == [
        f"refusing model version 2: OSError: SavedModel file does not exist at: {tmp_path / '2'}"
        " (keeping version 1)"
    ]


def test_refusal_without_a_message_names_the_error_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    def loader(version_dir: Path) -> Loaded:
        raise MemoryError

    _versions(tmp_path, 1)
    with caplog.at_level(logging.ERROR, logger="service.model_registry"):
        assert _refresh(ModelRegistry(tmp_path, loader)) is None
    assert [r.message for r in caplog.records] == [
        "refusing model version 1: MemoryError (keeping version none)"
    ]


def test_broken_newest_falls_back_to_the_next_newer(tmp_path: Path) -> None:
    _versions(tmp_path, 1, 2, 3)
    registry = ModelRegistry(tmp_path, CountingLoader(broken={3}))
    assert _refresh(registry).version == 2


def test_replaced_broken_version_is_retried(tmp_path: Path) -> None:
    _versions(tmp_path, 1, 2)
    loader = CountingLoader(broken={2})
    registry = ModelRegistry(tmp_path, loader)
    _refresh(registry)
    loader.broken.clear()
    stat = (tmp_path / "2").stat()
    os.utime(tmp_path / "2", ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    assert _refresh(registry).version == 2
    assert registry.refused_versions == []


def test_never_goes_back_to_an_older_version(tmp_path: Path) -> None:
    _versions(tmp_path, 5)
    registry = ModelRegistry(tmp_path, CountingLoader())
    _refresh(registry)
    _versions(tmp_path, 4)
    assert _refresh(registry).version == 5
