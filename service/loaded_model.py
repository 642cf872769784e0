"""One model version, loaded: its metadata, vocabularies and the NumPy scorer of its weights.

``load_model`` reads ``<model-dir>/<version>/`` (``model.contracts.export_format``), builds a
``NumpyScorer`` from the SavedModel's weights signature and checks it against the
SavedModel's own explain signature before the version may serve: TensorFlow runs only here,
on the loader's thread, never per request. Requests score in NumPy on the event loop, so a
``LoadedModel`` is used from that one thread once it serves.
"""

from __future__ import annotations

import gc
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from types import ModuleType

import numpy as np

from model.contracts import export_format
from model.contracts.numpy_scorer import ItemTable, NumpyScorer, requestable_id
from service.candidates import (
    UNKNOWN_VALUE,
    Candidates,
    Explanation,
    Scores,
    explain_outputs,
)

CHECK_TOLERANCE = 1e-5
"""Largest difference allowed between the NumPy scorer and the explain signature at load."""

UNKNOWN_MOVIE = -1
"""A movie id no request can carry (ids are >= 0): no movie table or vocabulary has it."""

UNKNOWN_WATCHED = ("unknown-movie-1", "unknown-movie-2")
"""Watched movie ids no vocabulary has, for the check rows' histories."""


@dataclass(frozen=True, eq=False)
class LoadedModel:
    """A version's metadata, training vocabularies (for the *_known flags) and scorer.

    Keeps the item tables of the last two movie tables it scored with, so a feature set
    switch keeps serving while requests of the old one finish.
    """

    version: int
    path: Path
    metadata: export_format.ModelMetadata
    fields: tuple[str, ...]
    pairs: tuple[tuple[str, str], ...]
    vocabularies: Mapping[str, frozenset[str]] = field(repr=False)
    scorer: NumpyScorer = field(repr=False)
    loaded_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))
    _item_tables: deque[ItemTable] = field(repr=False, default_factory=lambda: deque(maxlen=2))

    def known(self, field_name: str, values: Sequence[str]) -> list[bool]:
        """Whether each value is in the training vocabulary of ``field_name`` (a multi-valued
        one: every one of its values is, and it has one)."""
        vocabulary = self.vocabularies[field_name]
        if field_name not in export_format.MULTI_VALUED:
            return list(map(vocabulary.__contains__, values))
        return [
            bool(parts) and all(part in vocabulary for part in parts)
            for parts in (export_format.split_values(field_name, value) for value in values)
        ]

    def score(self, candidates: Candidates) -> Scores:
        """Click probabilities, and whether the model was trained on each candidate's movie."""
        table, index = self._rows(candidates)
        probability = self.scorer.score(candidates.users, candidates.user_index, table, index)
        return Scores(probability, table.known[index])

    def explain(self, candidates: Candidates) -> Explanation:
        """Every term of each candidate's logit, as the explain signature gives them."""
        table, index = self._rows(candidates)
        outputs = self.scorer.explain(candidates.users, candidates.user_index, table, index)
        return Explanation.of_outputs(self.fields, outputs, table.known[index])

    def _rows(self, candidates: Candidates) -> tuple[ItemTable, np.ndarray]:
        """The item table of the candidates' movie table (built once per table: the movie
        side of the model for ~4k movies) and each candidate's row in it."""
        table = next((t for t in self._item_tables if t.movies is candidates.movies), None)
        if table is None:
            table = self.scorer.item_table(candidates.movies)
            self._item_tables.append(table)
        return table, table.index(candidates.movie_ids)


def load_model(version_dir: Path) -> LoadedModel:
    """Load one version and check it; raises (ValueError, OSError, TensorFlow's errors) on
    anything that would fail or mislead a request later."""
    tf = _tensorflow()
    metadata = export_format.read_metadata(version_dir)  # refuses unknown formats, field sets
    fields = tuple(metadata.fields)
    vocabularies = export_format.read_vocabularies(version_dir, fields)
    saved = tf.saved_model.load(str(version_dir))
    missing = {export_format.SIGNATURE_EXPLAIN, export_format.SIGNATURE_WEIGHTS}
    missing -= set(saved.signatures)
    if missing:
        raise ValueError(f"SavedModel lacks signature(s) {sorted(missing)}")
    weights = saved.signatures[export_format.SIGNATURE_WEIGHTS]()
    model = LoadedModel(
        version=int(version_dir.name),
        path=version_dir,
        metadata=metadata,
        fields=fields,
        pairs=export_format.pairs(fields),
        vocabularies={name: frozenset(values) for name, values in vocabularies.items()},
        scorer=NumpyScorer(fields, {k: v.numpy() for k, v in weights.items()}, vocabularies),
    )
    rows = check_rows(fields, vocabularies)
    columns = {f: tf.constant([rows.value(f, r) for r in range(len(rows))]) for f in fields}
    expected = saved.signatures[export_format.SIGNATURE_EXPLAIN](**columns)
    explained = model.explain(rows)
    model._item_tables.clear()  # the check's movie table is no feature set's
    worst = largest_difference(fields, explained, {k: v.numpy() for k, v in expected.items()})
    if not worst <= CHECK_TOLERANCE:  # a NaN fails too
        raise ValueError(
            f"the NumPy scorer differs from the SavedModel's {export_format.SIGNATURE_EXPLAIN} "
            f"signature by {worst:.2g} (tolerance {CHECK_TOLERANCE:g})"
        )
    return model


def largest_difference(
    fields: Sequence[str], explained: Explanation, expected: Mapping[str, np.ndarray]
) -> float:
    """The largest difference between the NumPy scorer's ``explained`` and the explain
    signature's ``expected`` outputs, over every output the version has (a history
    version's attention over the watched movies too); NaN if either has a NaN."""
    return max(
        float(np.abs(getattr(explained, name) - expected[output]).max())
        for name, output in explain_outputs(fields).items()
    )


def check_rows(fields: Sequence[str], vocabularies: Mapping[str, Sequence[str]]) -> Candidates:
    """The rows ``load_model`` compares on: users taking turns (``check_users``), up to 32
    known movies (requested by integer id) each with known values of every other movie
    field, so the item table's rows differ, and an unknown movie; the movies again while a
    user is left without one."""
    inputs = export_format.user_inputs(fields)
    ids = [movie for movie in vocabularies[export_format.MOVIE_ID] if requestable_id(movie)][:32]
    others = [f for f in fields if f not in inputs and f != export_format.MOVIE_ID]
    table = {
        movie: {f: vocabularies[f][n % len(vocabularies[f])] for f in others}
        for n, movie in enumerate(ids)
    }
    users = check_users(inputs, vocabularies)
    count = len(next(iter(users.values())))
    movie_ids = [*map(int, ids), UNKNOWN_MOVIE]
    rows = max(len(movie_ids), count)  # every user has a candidate, even with few movies
    return Candidates(
        users=users,
        user_index=np.arange(rows, dtype=np.int32) % count,
        movie_ids=[movie_ids[n % len(movie_ids)] for n in range(rows)],
        movies=table,
    )


def check_users(
    inputs: Sequence[str], vocabularies: Mapping[str, Sequence[str]]
) -> dict[str, list[str]]:
    """The check's users: an unknown and a known one; with HISTORY_FIELD, each of the
    ``check_histories`` in turn, so every kind of history meets known and unknown users."""
    plain = [f for f in inputs if f != export_format.HISTORY_FIELD]
    if len(plain) == len(inputs):
        return {f: [UNKNOWN_VALUE, vocabularies[f][0]] for f in plain}
    histories = check_histories(vocabularies[export_format.HISTORY_FIELD])
    turns = range(len(histories))
    users = {f: [vocabularies[f][0] if n % 2 else UNKNOWN_VALUE for n in turns] for f in plain}
    return {**users, export_format.HISTORY_FIELD: histories}


def check_histories(watched: Sequence[str]) -> list[str]:
    """Raw watched strings of every kind a request may bring: none, a few known movies,
    known and unknown ones with empty parts, only unknown ones, and more than
    HISTORY_LENGTH (the rest must not count)."""
    join = export_format.MULTI_VALUED[export_format.HISTORY_FIELD].join
    known = [watched[n % len(watched)] for n in range(export_format.HISTORY_LENGTH + 5)]
    return [
        UNKNOWN_VALUE,
        join(known[:3]),
        join([known[3], UNKNOWN_WATCHED[0], "", known[4], UNKNOWN_WATCHED[1]]),
        join(UNKNOWN_WATCHED),
        join(known[::-1]),
        join(known[5:6]),
    ]


@cache
def _tensorflow() -> ModuleType:
    """TensorFlow, imported once; the ~380k objects its import leaves are exempted from
    garbage collection, which would otherwise walk them in every full collection (pauses of
    ~0.1 s in the middle of requests)."""
    import tensorflow as tf

    gc.freeze()
    return tf
