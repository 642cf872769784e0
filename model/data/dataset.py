"""In-memory data shapes shared by the readers, the protocols and the trainer.

Rows never carry strings: a row is (user index, movie index, label) into small tables of raw
string values. That keeps ML-1M with 10 negatives (~11M rows) at a few hundred MB and lets
every step be a vectorised NumPy operation. What the user watched before a row (HISTORY_FIELD)
is one more index, into a table of distinct history strings that rows share (the negatives of
a positive, the rows of one user at one time), built only when a field set asks for it.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from model.contracts.export_format import (
    HISTORY_FIELD,
    HISTORY_LENGTH,
    LAST_WATCHED,
    MOVIE_ID,
    MULTI_VALUED,
    USER_FIELDS,
    split_values,
)
from model.errors import AfmError

USER_COLUMNS: tuple[str, ...] = USER_FIELDS  # user_id, gender, age, occupation, zip
MOVIE_COLUMNS: tuple[str, ...] = (MOVIE_ID, "title", "year", "genres")
"""The movie table: id, title (not a model field), then contract.ITEM_FIELDS. A missing
value is "" (seed rows know no titles, genres or years)."""
PAD = -1
"""Fills the rows of a multi-valued field's id matrix past its last value; masked out."""


@dataclass(frozen=True)
class Ratings:
    """A ratings table: the output of every reader (ML-1M, ML-100K, synthetic)."""

    users: dict[str, np.ndarray]  # USER_COLUMNS -> raw string array, shape (n_users,)
    movies: dict[str, np.ndarray]  # MOVIE_COLUMNS -> raw string array, shape (n_movies,)
    user_idx: np.ndarray  # int32 (n,): row into `users`
    movie_idx: np.ndarray  # int32 (n,): row into `movies`
    rating: np.ndarray  # int8 (n,)
    timestamp: np.ndarray  # int64 (n,)
    source: str  # human-readable origin, e.g. "ml-100k at /path"

    @property
    def movie_ids(self) -> np.ndarray:
        return self.movies[MOVIE_ID]


NO_HISTORY = (
    "these rows carry no history (what each user watched before them); seed row files "
    "never do, and a dataset's rows have one only when prepared for --fields history"
)


@dataclass(frozen=True)
class LabeledRows:
    user_idx: np.ndarray  # int32 (n,)
    movie_idx: np.ndarray  # int32 (n,)
    label: np.ndarray  # float32 (n,), 0.0 or 1.0
    history_idx: np.ndarray | None = None  # int32 (n,): row into PreparedData.histories

    def __len__(self) -> int:
        return len(self.label)

    def take(self, at: np.ndarray) -> LabeledRows:
        """The rows ``at`` (indices or a boolean mask), every index column kept aligned."""
        history = None if self.history_idx is None else self.history_idx[at]
        return LabeledRows(self.user_idx[at], self.movie_idx[at], self.label[at], history)


@dataclass(frozen=True)
class PreparedData:
    """Train/valid/test rows over shared user and movie tables: the output of every protocol."""

    users: dict[str, np.ndarray]
    movies: dict[str, np.ndarray]
    train: LabeledRows
    valid: LabeledRows
    test: LabeledRows
    protocol: str
    source: str
    extra: dict = field(default_factory=dict)  # protocol details recorded in metadata.json
    held_out_movies: np.ndarray | None = None  # movie rows kept out of train and valid
    histories: np.ndarray | None = None
    """Distinct raw HISTORY_FIELD values (object array of str, "" for no history), picked
    by ``LabeledRows.history_idx``; None when the rows were prepared without history."""
    last_watched: np.ndarray | None = None
    """Each history's LAST_WATCHED value (object array of str, parallel to ``histories``):
    rows that watched the same movies at another distance in time have a history each."""

    @property
    def movie_ids(self) -> np.ndarray:
        return self.movies[MOVIE_ID]

    def table(self, name: str) -> tuple[np.ndarray, str]:
        """The raw value of field ``name`` per table row, and which index picks the row."""
        if name in (HISTORY_FIELD, LAST_WATCHED):
            if self.histories is None or self.last_watched is None:
                raise AfmError(NO_HISTORY)
            values = self.histories if name == HISTORY_FIELD else self.last_watched
            return values, "history_idx"
        if name in self.users:
            return self.users[name], "user_idx"
        return self.movies[name], "movie_idx"

    def vocabularies(self, fields: Sequence[str]) -> dict[str, np.ndarray]:
        """Sorted distinct raw values per field, from training rows only.

        Index i of a vocabulary is model id i + 1; id 0 is the out-of-vocabulary bucket, the
        same convention as a StringLookup(vocabulary=..., num_oov_indices=1). A MULTI_VALUED
        field's vocabulary holds its single values ("Comedy"), never "" .
        """
        vocab, seen = {}, {}
        for name in fields:
            values, index = self.table(name)
            if index not in seen:  # one pass over the training rows per index column
                seen[index] = _seen(_index_of(self.train, index), len(values))
            at = seen[index]
            if name == HISTORY_FIELD:
                vocab[name] = _history_vocabulary(values[at])
                continue
            values = np.unique(values[at])
            if name in MULTI_VALUED:
                values = np.unique([v for joined in values for v in split_values(name, joined)])
            vocab[name] = values.astype(str)
        return vocab

    def encode(
        self, rows: LabeledRows, vocabularies: Mapping[str, np.ndarray], fields: Sequence[str]
    ) -> dict[str, np.ndarray]:
        """Model inputs for ``rows``, as ``model.network.afm.build_afm``'s model takes them.

        Single-valued fields become one int32 column each (unseen values map to 0), stacked
        in ``fields`` order; each MULTI_VALUED field becomes an int32 (n, longest) matrix of
        its values' ids, padded with PAD (a movie without values gets the OOV id 0 alone).
        HISTORY_FIELD is always (n, HISTORY_LENGTH) wide, as the exported signature makes it
        (``history_codes``).
        """
        single = []
        inputs = {}
        for name in fields:
            values, index = self.table(name)
            at = _index_of(rows, index)
            if name == HISTORY_FIELD:  # encode each distinct history once
                distinct = _seen(at, len(values))
                position = np.zeros(len(values), dtype=np.int64)
                position[distinct] = np.arange(len(distinct))
                inputs[name] = history_codes(values[distinct], vocabularies[name])[position[at]]
            elif name in MULTI_VALUED:
                inputs[name] = _bag_codes(values, vocabularies[name], name)[at]
            else:
                single.append(_codes(values, vocabularies[name])[at])
        return {SINGLE_INPUT: np.stack(single, axis=1).astype(np.int32), **inputs}

    def raw(self, rows: LabeledRows, fields: Sequence[str]) -> dict[str, np.ndarray]:
        """Raw string inputs by field name, as the exported signatures take them."""
        raw = {}
        for name in fields:
            values, index = self.table(name)
            raw[name] = values[_index_of(rows, index)]
        return raw

    def summary(self) -> dict[str, dict[str, int]]:
        return {
            name: {"rows": len(part), "positives": int(np.count_nonzero(part.label))}
            for name, part in (("train", self.train), ("valid", self.valid), ("test", self.test))
        }


def add_training_rows(data: PreparedData, extra: PreparedData) -> PreparedData:
    """``data`` with ``extra``'s training rows beside its own (tables appended, indices
    shifted); validation and test stay ``data``'s, so they measure what ``data`` is about.

    Logged impressions only ever show what the serving model ranked first, so a model trained
    on them alone never sees the movies it ranked low; a dataset's rows, whose negatives are
    drawn from the whole catalogue, fill that gap."""
    users, movies = len(data.users[USER_COLUMNS[0]]), len(data.movie_ids)
    histories = last_watched = None
    if data.histories is not None and extra.histories is not None:
        histories = np.concatenate([data.histories, extra.histories])
        last_watched = np.concatenate([data.last_watched, extra.last_watched])
    moved = LabeledRows(
        user_idx=extra.train.user_idx + users,
        movie_idx=extra.train.movie_idx + movies,
        label=extra.train.label,
        history_idx=None if histories is None else extra.train.history_idx + len(data.histories),
    )
    train = LabeledRows(
        user_idx=np.concatenate([data.train.user_idx, moved.user_idx]).astype(np.int32),
        movie_idx=np.concatenate([data.train.movie_idx, moved.movie_idx]).astype(np.int32),
        label=np.concatenate([data.train.label, moved.label]),
        history_idx=None
        if histories is None
        else np.concatenate([data.train.history_idx, moved.history_idx]).astype(np.int32),
    )
    return dataclasses.replace(
        data,
        users={c: np.concatenate([data.users[c], extra.users[c]]) for c in USER_COLUMNS},
        movies={c: np.concatenate([data.movies[c], extra.movies[c]]) for c in MOVIE_COLUMNS},
        train=train,
        histories=histories,
        last_watched=last_watched,
        extra={**data.extra, "added_training_rows": {"source": extra.source, "rows": len(moved)}},
    )


SINGLE_INPUT = "ids"
"""Model input holding every single-valued field's id, (batch, fields) in field-set order."""


def _bag_codes(values: np.ndarray, vocabulary: np.ndarray, name: str) -> np.ndarray:
    """Per table row, the ids of its values padded with PAD: int32 (rows, longest)."""
    index = {v: i + 1 for i, v in enumerate(vocabulary.tolist())}
    bags = [
        [index.get(v, 0) for v in split_values(name, joined)] or [0] for joined in values.tolist()
    ]
    codes = np.full((len(bags), max((len(b) for b in bags), default=1)), PAD, dtype=np.int32)
    for row, bag in enumerate(bags):
        codes[row, : len(bag)] = bag
    return codes


HISTORY_CHUNK = 1 << 16
"""Histories split at once while encoding: bounds the Python strings alive (~1.3M parts)."""


def history_codes(histories: np.ndarray, vocabulary: np.ndarray) -> np.ndarray:
    """int32 (len(histories), HISTORY_LENGTH): per raw HISTORY_FIELD string, part j's id at
    column j for its first HISTORY_LENGTH parts (vocabulary index + 1, unknown 0; an empty
    part PAD in place), PAD after the last; a history without any such part is the single id
    0 in column 0. The exported signature and the NumPy scorer read a raw string the same way.
    """
    codes = np.full((len(histories), HISTORY_LENGTH), PAD, dtype=np.int32)
    lookup = pd.Index(np.asarray(vocabulary, dtype=object))
    for start in range(0, len(histories), HISTORY_CHUNK):
        row, column, parts = _history_parts(histories[start : start + HISTORY_CHUNK])
        codes[start + row, column] = lookup.get_indexer(parts) + 1  # -1 (unknown) -> 0
    codes[(codes == PAD).all(axis=1), 0] = 0
    return codes


def _history_vocabulary(histories: np.ndarray) -> np.ndarray:
    """Sorted distinct non-empty parts among the first HISTORY_LENGTH of each history."""
    found = [
        np.asarray(pd.unique(_history_parts(histories[start : start + HISTORY_CHUNK])[2]), str)
        for start in range(0, len(histories), HISTORY_CHUNK)
    ]
    return np.unique(np.concatenate(found)) if found else np.array([], dtype=str)


def _history_parts(histories: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(row, position, part) of every non-empty part among the first HISTORY_LENGTH parts of
    each raw history: one C-level split per string, the rest vectorised."""
    separator = MULTI_VALUED[HISTORY_FIELD]
    split = [text.split(separator, HISTORY_LENGTH) for text in histories.tolist()]
    lengths = np.fromiter(map(len, split), dtype=np.int64, count=len(split))
    parts = np.fromiter(itertools.chain.from_iterable(split), dtype=object, count=lengths.sum())
    row = np.repeat(np.arange(len(split)), lengths)
    position = np.arange(len(parts)) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    kept = (position < HISTORY_LENGTH) & (parts != "")  # part 20 holds the rest, unsplit
    return row[kept], position[kept], parts[kept]


def _index_of(rows: LabeledRows, index: str) -> np.ndarray:
    """Column ``index`` of ``rows``; AfmError when the rows lack it (no history)."""
    at = getattr(rows, index)
    if at is None:
        raise AfmError(NO_HISTORY)
    return at


def _seen(index: np.ndarray, size: int) -> np.ndarray:
    """Distinct table rows referenced by ``index``, ascending (a bincount: no sort of 10M rows)."""
    return np.flatnonzero(np.bincount(index, minlength=size))


def _codes(values: np.ndarray, vocabulary: np.ndarray) -> np.ndarray:
    """Model id of each value of a small table: position in the sorted vocabulary + 1, or 0."""
    pos = np.searchsorted(vocabulary, values)
    found = pos < len(vocabulary)
    found[found] = vocabulary[pos[found]] == values[found]
    return np.where(found, pos + 1, 0).astype(np.int32)
