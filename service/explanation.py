"""Explanations a person can read: each field's value and label, and the logit's parts.

Pure functions over one request's columns and the explain signature's outputs. Labels come
from the loaded feature set (documented codes such as ML-1M's age groups, movie titles);
a value without a label is shown as it is, a missing one as UNKNOWN_LABEL. A history
version's watched movies are labelled by the candidate's attention over them: the ones it
attends to most name the field ("Fargo (1996), Heat (1995), Clerks (1994), …").
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import numpy as np

from model.contracts.export_format import (
    HISTORY_FIELD,
    HISTORY_LENGTH,
    LAST_WATCHED,
    MOVIE_ID,
    MULTI_VALUED,
    split_values,
)
from model.contracts.numpy_scorer import requestable_id

UNKNOWN_LABEL = "unknown"
NOTHING_WATCHED = "nothing yet"
"""HISTORY_FIELD's label for a user without watched movies."""
WATCHED_SHOWN = 3
"""Titles in HISTORY_FIELD's label; "…" follows when the user watched more."""
MORE = "…"

Labels = Mapping[str, Mapping[str, str]]
"""field -> raw value -> readable label."""


class Vocabulary(Protocol):
    def known(self, field_name: str, values: Sequence[str]) -> list[bool]: ...


class Outputs(Protocol):
    """One row's explain outputs (``service.candidates.Explanation`` of one row)."""

    attention: np.ndarray
    contribution: np.ndarray
    bias: np.ndarray
    linear: np.ndarray
    logit: np.ndarray
    probability: np.ndarray
    history_attention: np.ndarray | None


def label(field: str, value: str, labels: Labels, movies: Mapping[str, Mapping[str, str]]) -> str:
    """A readable name for ``value`` of ``field``: a code's meaning, a movie's title, genres
    as a list; the raw value when there is none; UNKNOWN_LABEL for no value."""
    if value == "":
        return UNKNOWN_LABEL
    if field == MOVIE_ID:
        return movies.get(value, {}).get("title") or value
    if field == LAST_WATCHED and value.isdigit():
        return last_watched_label(int(value))
    if field in MULTI_VALUED:
        return ", ".join(split_values(field, value))
    return labels.get(field, {}).get(value, value)


DURATION_UNITS: tuple[tuple[str, float], ...] = (
    ("seconds", 1), ("minutes", 60), ("hours", 3_600), ("days", 86_400), ("years", 31_557_600)
)  # fmt: skip


def last_watched_label(power: int) -> str:
    """LAST_WATCHED's label for its value ``power`` (2**power to 2**(power + 1) seconds),
    in the largest unit its lower end reaches, rounded: 11 is "34-68 minutes ago", 12 "1-2
    hours ago"."""
    low, high = (2**power if power else 0), 2 ** (power + 1)
    unit, size = next(u for u in reversed(DURATION_UNITS) if low >= u[1] or u[1] == 1)
    digits = 1 if unit == "years" else 0
    return f"{low / size:.{digits}f}-{high / size:.{digits}f} {unit} ago"


def features(
    fields: Sequence[str],
    values: Sequence[str],
    model: Vocabulary,
    labels: Labels,
    movies: Mapping[str, Mapping[str, str]],
    seen: Sequence[Mapping[str, Any]] = (),
) -> list[dict[str, Any]]:
    """``{"field", "value", "label", "known"}`` for each field, in field order; HISTORY_FIELD's
    label is ``watched_label(seen)``, ``seen`` being the row's ``watched``."""
    return [
        {
            "field": field,
            "value": value,
            "label": (
                watched_label(seen)
                if field == HISTORY_FIELD
                else label(field, value, labels, movies)
            ),
            "known": model.known(field, [value])[0],
        }
        for field, value in zip(fields, values, strict=True)
    ]


def watched(
    value: str,
    attention: np.ndarray,
    model: Vocabulary,
    movies: Mapping[str, Mapping[str, str]],
) -> list[dict[str, Any]]:
    """The movies of a raw HISTORY_FIELD ``value`` that the model reads, with one candidate's
    ``attention`` over them, most attended first (ties: most recent first), so a page can
    show what the candidate was compared with: ``{"movie_id", "title", "position", "weight",
    "known"}``.

    ``attention`` is the row's HISTORY_ATTENTION: beta by position, the position of a part
    in the raw string (an empty part keeps its place, weight 0), the first HISTORY_LENGTH
    only. Parts no request could name ("", "x", "012") are left out, as in /feature-set."""
    parts = value.split(MULTI_VALUED[HISTORY_FIELD])[:HISTORY_LENGTH]
    shown = [j for j, part in enumerate(parts) if requestable_id(part)]
    weights = attention.tolist()
    known = dict(zip(shown, model.known(HISTORY_FIELD, [parts[j] for j in shown]), strict=True))
    return [
        {
            "movie_id": int(parts[j]),
            "title": label(MOVIE_ID, parts[j], {}, movies),
            "position": j,
            "weight": weights[j],
            "known": known[j],
        }
        for j in sorted(shown, key=lambda j: -weights[j])  # stable: ties by position
    ]


def watched_label(seen: Sequence[Mapping[str, Any]]) -> str:
    """HISTORY_FIELD's label for one candidate: the titles of its ``watched`` it attends to
    most, MORE when there are others; NOTHING_WATCHED without any."""
    if not seen:
        return NOTHING_WATCHED
    titles = [entry["title"] for entry in seen[:WATCHED_SHOWN]]
    return ", ".join([*titles, MORE] if len(seen) > WATCHED_SHOWN else titles)


def explain(
    fields: Sequence[str],
    pairs: Sequence[tuple[str, str]],
    values: Sequence[str],
    row: Outputs,
    model: Vocabulary,
    labels: Labels,
    movies: Mapping[str, Mapping[str, str]],
) -> dict[str, Any]:
    """One prediction for people: its ``features`` labelled and its logit's parts
    (``breakdown``), and for a history version the ``watched`` movies by its attention.

    ``values`` are the row's raw values in field order, ``row`` its explain outputs."""
    if row.history_attention is None:
        return breakdown(fields, pairs, row, features(fields, values, model, labels, movies))
    history = values[list(fields).index(HISTORY_FIELD)]
    seen = watched(history, row.history_attention, model, movies)
    described = features(fields, values, model, labels, movies, seen)
    return {**breakdown(fields, pairs, row, described), "watched": seen}


def breakdown(
    fields: Sequence[str],
    pairs: Sequence[tuple[str, str]],
    row: Outputs,
    described: list[dict[str, Any]],
) -> dict[str, Any]:
    """The logit's parts for one prediction: bias + sum(linear) + sum(contribution) = logit.

    ``row`` holds one prediction's outputs (scalars and 1-D arrays), ``described`` the
    ``features`` of the same row; pairs come heaviest attention first.
    """
    by_field = {entry["field"]: entry for entry in described}
    weights, terms = row.attention.tolist(), row.contribution.tolist()
    order = sorted(range(len(weights)), key=lambda i: -weights[i])
    return {
        "probability": float(row.probability),
        "logit": float(row.logit),
        "bias": float(row.bias),
        "linear": dict(zip(fields, row.linear.tolist(), strict=True)),
        "features": described,
        "pairs": [
            {
                "fields": list(pairs[i]),
                "values": [by_field[f]["value"] for f in pairs[i]],
                "labels": [by_field[f]["label"] for f in pairs[i]],
                "weight": weights[i],
                "contribution": terms[i],
            }
            for i in order
        ],
    }
