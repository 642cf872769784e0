"""Coverage of a loaded feature set by a model's vocabularies: the pure computation and the
per-(version, namespace) cache that logs low coverage once."""

from __future__ import annotations

import asyncio
import logging
from types import SimpleNamespace

import pytest

from model.contracts.feature_layout import FeatureSetMeta
from service.coverage import CoverageMonitor, compute_coverage
from service.errors import FeatureStoreUnavailable
from service.feature_store import FeatureSetInfo

VOCABULARIES = {
    "gender": frozenset({"F", "M"}),
    "zip": frozenset({"02138", "10001"}),
    "movie_id": frozenset({"1", "2", "3"}),
}


def test_shares_weigh_values_by_their_user_counts() -> None:
    user_values = {
        "gender": {"F": 3, "M": 1},  # all known
        "zip": {"02138": 1, "99999": 3},  # 1 of 4 users
    }
    coverage = compute_coverage(VOCABULARIES, user_values, {"1", "2", "7", "8"}, 0.5)
    assert dict(coverage.shares) == {"gender": 1.0, "zip": 0.25, "movie_id": 0.5}
    assert coverage.low == ("zip",) and coverage.ok is False
    assert coverage.reason is not None and "zip 25%" in coverage.reason
    assert "threshold 50%" in coverage.reason and "movie_id" not in coverage.reason


def test_a_share_equal_to_the_threshold_is_ok() -> None:
    coverage = compute_coverage(VOCABULARIES, {"zip": {"02138": 1, "x": 1}}, (), 0.5)
    assert dict(coverage.shares) == {"zip": 0.5}
    assert coverage.ok is True and coverage.low == () and coverage.reason is None


def test_fields_the_model_lacks_or_the_load_did_not_count_are_not_reported() -> None:
    user_values = {"occupation": {"4": 10}, "gender": {}}  # not a model field; no users
    coverage = compute_coverage(VOCABULARIES, user_values, (), 0.5)
    assert dict(coverage.shares) == {} and coverage.ok is True


def test_an_older_load_without_value_counts_reports_movies_only() -> None:
    coverage = compute_coverage(VOCABULARIES, FeatureSetMeta().user_values, {"9"}, 0.5)
    assert dict(coverage.shares) == {"movie_id": 0.0} and coverage.low == ("movie_id",)


class _Store:
    def __init__(self, info: FeatureSetInfo) -> None:
        self.info = info
        self.error: Exception | None = None

    async def feature_set(self) -> FeatureSetInfo:
        if self.error is not None:
            raise self.error
        return self.info


def _model(version: int) -> SimpleNamespace:
    return SimpleNamespace(version=version, vocabularies=VOCABULARIES)


def test_monitor_computes_and_warns_once_per_version_and_namespace(
    caplog: pytest.LogCaptureFixture,
) -> None:
    foreign = FeatureSetMeta(user_values={"zip": {"99999": 5}})
    store = _Store(FeatureSetInfo(foreign, (), "ns:a:", frozenset({"1"})))
    monitor = CoverageMonitor(0.5)

    async def check(version: int):  # noqa: ANN202
        return await monitor.check(_model(version), store)  # type: ignore[arg-type]

    with caplog.at_level(logging.WARNING, logger="service.coverage"):
        first = asyncio.run(check(1))
        assert asyncio.run(check(1)) is first  # cached
        assert dict(first.shares) == {"zip": 0.0, "movie_id": 1.0}
        assert len(caplog.records) == 1
        assert "model version 1 against feature set ns:a:" in caplog.text
        assert "zip 0%" in caplog.text
        store.info = FeatureSetInfo(foreign, (), "ns:b:", frozenset({"1"}))
        assert asyncio.run(check(1)) is not first  # a new load
        asyncio.run(check(2))  # a new model
        assert len(caplog.records) == 3
    assert monitor.latest is not None and monitor.latest.low == ("zip",)


def test_monitor_without_model_or_features_is_none() -> None:
    store = _Store(FeatureSetInfo(FeatureSetMeta(), (), "ns:a:"))
    monitor = CoverageMonitor(0.5)
    assert asyncio.run(monitor.check(None, store)) is None  # type: ignore[arg-type]
    store.error = FeatureStoreUnavailable("down")
    assert asyncio.run(monitor.check(_model(1), store)) is None  # type: ignore[arg-type]
