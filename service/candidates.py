"""What a scoring call takes and gives: the candidates of one or more requests, their scores
and explanations. Plain data, NumPy arrays; no I/O."""

from __future__ import annotations

import dataclasses
import functools
import itertools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from model.contracts import export_format

UNKNOWN_VALUE = ""
"""Sent for every feature Redis does not know (a user or movie without features): in no
vocabulary, so the model's out-of-vocabulary value."""

_NONE: Mapping[str, str] = {}


@dataclass(frozen=True)
class Candidates:
    """One call's rows: each user once, each candidate's movie by id.

    ``users``: each field whose value comes with the user (``export_format.user_inputs``:
    the user fields, and HISTORY_FIELD for a history version) -> one raw value per user;
    ``user_index``: int32, each
    candidate's row in ``users``; ``movie_ids``: each candidate's movie id, as requested (an
    integer; its raw value is its decimal string); ``movies``: the feature set's movie table
    (id string -> raw movie fields), where the other movie fields come from. Calls on the
    same movie table merge (``concat``), their user rows renumbered.
    """

    users: Mapping[str, Sequence[str]]
    user_index: np.ndarray
    movie_ids: Sequence[int]
    movies: Mapping[str, Mapping[str, str]]

    @classmethod
    def of_request(
        cls,
        fields: Sequence[str],
        user_id: int,
        user_features: Mapping[str, str] | None,
        movie_ids: Sequence[int],
        movies: Mapping[str, Mapping[str, str]],
    ) -> Candidates:
        """One request's rows for a model of ``fields``: the user's raw features once (None:
        a user Redis does not know), each candidate's movie id, and the movie table. A
        history version's watched movies come with the user, from the same Redis read."""
        user = user_features or _NONE
        users = {
            name: [str(user_id) if name == export_format.USER_ID else user.get(name, UNKNOWN_VALUE)]
            for name in _user_inputs(tuple(fields))
        }
        return cls(users, np.zeros(len(movie_ids), dtype=np.int32), movie_ids, movies)

    def __len__(self) -> int:
        return len(self.movie_ids)

    def value(self, field_name: str, row: int) -> str:
        """Candidate ``row``'s raw value of ``field_name``."""
        if field_name in self.users:
            return self.users[field_name][int(self.user_index[row])]
        movie_id = str(self.movie_ids[row])
        if field_name == export_format.MOVIE_ID:
            return movie_id
        return self.movies.get(movie_id, _NONE).get(field_name, UNKNOWN_VALUE)

    def mergeable(self, other: Candidates) -> bool:
        return other.movies is self.movies

    @classmethod
    def concat(cls, parts: Sequence[Candidates]) -> Candidates:
        offsets = np.cumsum([0, *(len(next(iter(p.users.values()))) for p in parts[:-1])])
        return cls(
            users={f: _chain(p.users[f] for p in parts) for f in parts[0].users},
            user_index=np.concatenate(
                [p.user_index + offset for p, offset in zip(parts, offsets, strict=True)]
            ).astype(np.int32),
            movie_ids=_chain(p.movie_ids for p in parts),
            movies=parts[0].movies,
        )


@functools.cache
def _user_inputs(fields: tuple[str, ...]) -> tuple[str, ...]:
    """``export_format.user_inputs(fields)``, worked out once per field set rather than on
    every request."""
    return tuple(export_format.user_inputs(fields))


def _chain(lists: Iterable[Sequence]) -> list:
    return list(itertools.chain.from_iterable(lists))


@dataclass(frozen=True)
class Scores:
    """A scoring call's click probabilities, and whether the model was trained on each
    candidate's movie id."""

    probability: np.ndarray  # float32 [batch]
    movie_known: np.ndarray  # bool [batch]

    def __getitem__(self, rows: slice) -> Scores:
        return Scores(self.probability[rows], self.movie_known[rows])


EXPLAIN_OUTPUTS: dict[str, str] = {
    "probability": export_format.OUTPUT_PROBABILITY,
    "attention": export_format.OUTPUT_ATTENTION,
    "contribution": export_format.OUTPUT_CONTRIBUTION,
    "bias": export_format.OUTPUT_BIAS,
    "linear": export_format.OUTPUT_LINEAR,
    "logit": export_format.OUTPUT_LOGIT,
}
"""Explanation attribute -> the contract's output it holds, for every version."""

HISTORY_OUTPUTS: dict[str, str] = {"history_attention": export_format.OUTPUT_HISTORY_ATTENTION}
"""The same, for the outputs only a version with HISTORY_FIELD has."""


def explain_outputs(fields: Sequence[str]) -> dict[str, str]:
    """Explanation attribute -> contract output, for a version of ``fields``: what its
    explain signature returns and the NumPy scorer must match."""
    if export_format.HISTORY_FIELD in fields:
        return {**EXPLAIN_OUTPUTS, **HISTORY_OUTPUTS}
    return EXPLAIN_OUTPUTS


@dataclass(frozen=True)
class Explanation:
    """Every term of the logit: logit = bias + sum(linear) + sum(contribution); and
    ``movie_known`` as in ``Scores``. A history version also says how each candidate
    attended to the user's watched movies (``history_attention``; None for other versions)."""

    probability: np.ndarray  # float32 [batch]
    attention: np.ndarray  # float32 [batch, pairs], rows sum to 1
    contribution: np.ndarray  # float32 [batch, pairs], each pair's term in the logit
    bias: np.ndarray  # float32 [batch], w0
    linear: np.ndarray  # float32 [batch, fields], each field's linear term
    logit: np.ndarray  # float32 [batch]
    movie_known: np.ndarray  # bool [batch]
    history_attention: np.ndarray | None = None  # float32 [batch, HISTORY_LENGTH], beta by position

    @classmethod
    def of_outputs(
        cls, fields: Sequence[str], outputs: Mapping[str, np.ndarray], movie_known: np.ndarray
    ) -> Explanation:
        """From the explain outputs of a version of ``fields``, by their contract names;
        KeyError if one the version must have is missing."""
        return cls(
            **{name: np.asarray(outputs[key]) for name, key in explain_outputs(fields).items()},
            movie_known=movie_known,
        )

    def __getitem__(self, rows: slice | int) -> Explanation:
        """The rows ``rows`` of every array (a slice keeps them 2-D, an int gives one row)."""
        return dataclasses.replace(
            self,
            **{
                item.name: getattr(self, item.name)[rows]
                for item in dataclasses.fields(self)
                if getattr(self, item.name) is not None
            },
        )
