"""In-memory data shapes shared by the readers, the protocols and the trainer.

Rows never carry strings: a row is (user index, movie index, label) into small tables of raw
string values. That keeps ML-1M with 10 negatives (~11M rows) at a few hundred MB and lets
every step be a vectorised NumPy operation.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from model.contracts.export_format import MOVIE_ID, MULTI_VALUED, USER_FIELDS, split_values

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


@dataclass(frozen=True)
class LabeledRows:
    user_idx: np.ndarray  # int32 (n,)
    movie_idx: np.ndarray  # int32 (n,)
    label: np.ndarray  # float32 (n,), 0.0 or 1.0

    def __len__(self) -> int:
        return len(self.label)


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

    @property
    def movie_ids(self) -> np.ndarray:
        return self.movies[MOVIE_ID]

    def table(self, name: str) -> tuple[np.ndarray, str]:
        """The raw value of field ``name`` per table row, and which index picks the row."""
        if name in self.users:
            return self.users[name], "user_idx"
        return self.movies[name], "movie_idx"

    def vocabularies(self, fields: Sequence[str]) -> dict[str, np.ndarray]:
        """Sorted distinct raw values per field, from training rows only.

        Index i of a vocabulary is model id i + 1; id 0 is the out-of-vocabulary bucket, the
        same convention as a StringLookup(vocabulary=..., num_oov_indices=1). A MULTI_VALUED
        field's vocabulary holds its single values ("Comedy"), never "" .
        """
        seen = {
            "user_idx": _seen(self.train.user_idx, len(self.users[USER_COLUMNS[0]])),
            "movie_idx": _seen(self.train.movie_idx, len(self.movie_ids)),
        }
        vocab = {}
        for name in fields:
            values, index = self.table(name)
            values = np.unique(values[seen[index]])
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
        """
        single = []
        inputs = {}
        for name in fields:
            values, index = self.table(name)
            at = getattr(rows, index)
            if name in MULTI_VALUED:
                inputs[name] = _bag_codes(values, vocabularies[name], name)[at]
            else:
                single.append(_codes(values, vocabularies[name])[at])
        return {SINGLE_INPUT: np.stack(single, axis=1).astype(np.int32), **inputs}

    def raw(self, rows: LabeledRows, fields: Sequence[str]) -> dict[str, np.ndarray]:
        """Raw string inputs by field name, as the exported signatures take them."""
        raw = {}
        for name in fields:
            values, index = self.table(name)
            raw[name] = values[getattr(rows, index)]
        return raw

    def summary(self) -> dict[str, dict[str, int]]:
        return {
            name: {"rows": len(part), "positives": int(np.count_nonzero(part.label))}
            for name, part in (("train", self.train), ("valid", self.valid), ("test", self.test))
        }


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


def _seen(index: np.ndarray, size: int) -> np.ndarray:
    """Distinct table rows referenced by ``index``, ascending (a bincount: no sort of 10M rows)."""
    return np.flatnonzero(np.bincount(index, minlength=size))


def _codes(values: np.ndarray, vocabulary: np.ndarray) -> np.ndarray:
    """Model id of each value of a small table: position in the sorted vocabulary + 1, or 0."""
    pos = np.searchsorted(vocabulary, values)
    found = pos < len(vocabulary)
    found[found] = vocabulary[pos[found]] == values[found]
    return np.where(found, pos + 1, 0).astype(np.int32)
