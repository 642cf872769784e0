"""In-memory data shapes shared by the readers, the protocols and the trainer.

Rows never carry strings: a row is (user index, movie index, label) into small tables of raw
string values. That keeps ML-1M with 10 negatives (~11M rows) at a few hundred MB and lets
every step be a vectorised NumPy operation.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from model.contract import FIELDS

USER_COLUMNS: tuple[str, ...] = FIELDS[:-1]  # user_id, gender, age, occupation, zip
MOVIE_COLUMN = FIELDS[-1]  # movie_id


@dataclass(frozen=True)
class Ratings:
    """A ratings table: the output of every reader (ML-1M, ML-100K, synthetic)."""

    users: dict[str, np.ndarray]  # USER_COLUMNS -> raw string array, shape (n_users,)
    movie_ids: np.ndarray  # raw string array, shape (n_movies,)
    user_idx: np.ndarray  # int32 (n,): row into `users`
    movie_idx: np.ndarray  # int32 (n,): row into `movie_ids`
    rating: np.ndarray  # int8 (n,)
    timestamp: np.ndarray  # int64 (n,)
    source: str  # human-readable origin, e.g. "ml-100k at /path"


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
    movie_ids: np.ndarray
    train: LabeledRows
    valid: LabeledRows
    test: LabeledRows
    protocol: str
    source: str
    extra: dict = field(default_factory=dict)  # protocol details recorded in metadata.json

    def vocabularies(self) -> dict[str, np.ndarray]:
        """Sorted distinct raw values per field, from training rows only.

        Index i of a vocabulary is model id i + 1; id 0 is the out-of-vocabulary bucket, the
        same convention as a StringLookup(vocabulary=..., num_oov_indices=1).
        """
        seen_users = _seen(self.train.user_idx, len(self.users[USER_COLUMNS[0]]))
        vocab = {col: np.unique(self.users[col][seen_users]) for col in USER_COLUMNS}
        vocab[MOVIE_COLUMN] = np.unique(
            self.movie_ids[_seen(self.train.movie_idx, len(self.movie_ids))]
        )
        return vocab

    def encode(self, rows: LabeledRows, vocabularies: dict[str, np.ndarray]) -> np.ndarray:
        """Model ids, int32 of shape (n, len(FIELDS)) in FIELDS order; unseen values map to 0."""
        columns = [
            _codes(self.users[col], vocabularies[col])[rows.user_idx] for col in USER_COLUMNS
        ]
        columns.append(_codes(self.movie_ids, vocabularies[MOVIE_COLUMN])[rows.movie_idx])
        return np.stack(columns, axis=1).astype(np.int32)

    def raw(self, rows: LabeledRows) -> dict[str, np.ndarray]:
        """Raw string inputs by field name, as the exported signatures take them."""
        raw = {col: self.users[col][rows.user_idx] for col in USER_COLUMNS}
        raw[MOVIE_COLUMN] = self.movie_ids[rows.movie_idx]
        return raw

    def summary(self) -> dict[str, dict[str, int]]:
        return {
            name: {"rows": len(part), "positives": int(np.count_nonzero(part.label))}
            for name, part in (("train", self.train), ("valid", self.valid), ("test", self.test))
        }


def _seen(index: np.ndarray, size: int) -> np.ndarray:
    """Distinct table rows referenced by ``index``, ascending (a bincount: no sort of 10M rows)."""
    return np.flatnonzero(np.bincount(index, minlength=size))


def _codes(values: np.ndarray, vocabulary: np.ndarray) -> np.ndarray:
    """Model id of each value of a small table: position in the sorted vocabulary + 1, or 0."""
    pos = np.searchsorted(vocabulary, values)
    found = pos < len(vocabulary)
    found[found] = vocabulary[pos[found]] == values[found]
    return np.where(found, pos + 1, 0).astype(np.int32)
