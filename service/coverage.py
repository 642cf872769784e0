"""How much of the loaded feature set the served model was trained on.

A model trained on one dataset and served against another's features still answers: every
value it never saw is scored as out of vocabulary, silently. Coverage makes that visible:
per user field, the share of loaded users whose value is in the model's training vocabulary
(from the per-value user counts ``load-features`` records in the meta hash), and for
``movie_id`` the share of loaded movies whose id is. A share below the threshold is reported
on ``/model``, ``/readyz`` and ``/metrics`` and logged once; it does not block readiness.

``compute_coverage`` is the pure decision; ``CoverageMonitor`` caches its result per
(model version, feature namespace), the only inputs that change it.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Mapping, Set
from dataclasses import dataclass
from types import MappingProxyType

from model.contracts import export_format
from service.errors import ServiceError
from service.feature_store import FeatureStore
from service.loaded_model import LoadedModel

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Coverage:
    shares: Mapping[str, float]
    """Field -> share in [0, 1] of the loaded users (movie_id: movies) whose value the model
    was trained on. A field the model lacks, or the load recorded nothing for, is absent."""
    threshold: float

    @property
    def low(self) -> tuple[str, ...]:
        """Fields whose share is below the threshold, in ``shares`` order."""
        return tuple(name for name, share in self.shares.items() if share < self.threshold)

    @property
    def ok(self) -> bool:
        return not self.low

    @property
    def reason(self) -> str | None:
        """One line for people when coverage is low, else None."""
        if self.ok:
            return None
        shares = ", ".join(f"{name} {self.shares[name]:.0%}" for name in self.low)
        return (
            f"the model was trained on few of the loaded values ({shares}; threshold "
            f"{self.threshold:.0%}): it scores the rest as out of vocabulary; was it trained "
            "on the dataset the features were loaded from?"
        )


def compute_coverage(
    vocabularies: Mapping[str, Set[str]],
    user_values: Mapping[str, Mapping[str, int]],
    movie_ids: Collection[str],
    threshold: float,
) -> Coverage:
    """Coverage of a feature set by a model's training ``vocabularies`` (field -> values).

    ``user_values`` is the load's user field -> raw value -> users with it; ``movie_ids`` the
    loaded movies. A user field is reported when the model has it and the load counted at
    least one user; ``movie_id`` when the model has it and movies were loaded.
    """
    shares: dict[str, float] = {}
    for name, counts in user_values.items():
        vocabulary = vocabularies.get(name)
        total = sum(counts.values())
        if vocabulary is not None and total > 0:
            known = sum(n for value, n in counts.items() if value in vocabulary)
            shares[name] = known / total
    movies = vocabularies.get(export_format.MOVIE_ID)
    if movies is not None and movie_ids:
        shares[export_format.MOVIE_ID] = sum(m in movies for m in movie_ids) / len(movie_ids)
    return Coverage(MappingProxyType(shares), threshold)


class CoverageMonitor:
    """The coverage of the model serving now against the feature set loaded now, computed
    once per (model version, namespace) and logged once at WARNING when low."""

    def __init__(self, threshold: float) -> None:
        self.threshold = threshold
        self._key: tuple[int, str] | None = None
        self.latest: Coverage | None = None
        """The last coverage computed, for the metrics collector (None before the first)."""

    async def check(self, model: LoadedModel | None, store: FeatureStore) -> Coverage | None:
        """Coverage now; None without a model or a readable feature set (never raises)."""
        if model is None:
            return None
        try:
            info = await store.feature_set()
        except ServiceError:
            return None  # Redis down or nothing loaded: /readyz says so on its own
        key = (model.version, info.namespace)
        if key != self._key or self.latest is None:
            coverage = compute_coverage(
                model.vocabularies, info.meta.user_values, info.movie_ids, self.threshold
            )
            self._key, self.latest = key, coverage
            if not coverage.ok:
                log.warning(
                    "model version %d against feature set %s: %s",
                    model.version,
                    info.namespace,
                    coverage.reason,
                )
        return self.latest
