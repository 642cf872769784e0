"""Readable explanations: labels, knownness and the logit's parts, as pure functions."""

from __future__ import annotations

import numpy as np
import pytest

from model.contracts import export_format
from service import explanation
from service.candidates import Explanation

FIELDS = export_format.ALL_FIELDS
PAIRS = export_format.pairs(FIELDS)
LABELS = {"age": {"25": "25-34"}, "gender": {"F": "Female"}}
MOVIES = {
    "1193": {"title": "One Flew Over the Cuckoo's Nest (1975)", "year": "1975", "genres": "Drama"}
}


class Vocabulary:
    def known(self, field_name: str, values: list[str]) -> list[bool]:
        return [value not in ("", "99999") for value in values]


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("age", "25", "25-34"),
        ("gender", "F", "Female"),
        ("occupation", "4", "4"),  # no label: the raw value
        ("movie_id", "1193", "One Flew Over the Cuckoo's Nest (1975)"),
        ("movie_id", "5", "5"),  # a movie Redis does not know
        ("genres", "Comedy|Drama", "Comedy, Drama"),
        ("zip", "", "unknown"),
    ],
)
def test_labels_are_readable_names_or_the_raw_value(field: str, value: str, expected: str) -> None:
    assert explanation.label(field, value, LABELS, MOVIES) == expected


def test_breakdown_names_values_and_adds_up() -> None:
    rng = np.random.default_rng(0)
    values = ["1", "F", "25", "4", "99999", "1193", "1975", "Drama"]
    attention = rng.dirichlet(np.ones(len(PAIRS))).astype(np.float32)
    contribution = rng.normal(size=len(PAIRS)).astype(np.float32)
    linear = rng.normal(size=len(FIELDS)).astype(np.float32)
    bias = np.float32(-1.5)
    logit = bias + linear.sum() + contribution.sum()
    row = Explanation(
        probability=np.float32(1 / (1 + np.exp(-logit))),
        attention=attention,
        contribution=contribution,
        bias=bias,
        linear=linear,
        logit=np.float32(logit),
        movie_known=np.True_,
    )
    described = explanation.features(FIELDS, values, Vocabulary(), LABELS, MOVIES)
    assert [f["field"] for f in described] == list(FIELDS)
    assert described[4] == {"field": "zip", "value": "99999", "label": "99999", "known": False}
    body = explanation.breakdown(FIELDS, PAIRS, row, described)
    assert body["bias"] + sum(body["linear"].values()) + sum(
        p["contribution"] for p in body["pairs"]
    ) == pytest.approx(body["logit"], abs=1e-4)
    weights = [p["weight"] for p in body["pairs"]]
    assert weights == sorted(weights, reverse=True) and len(weights) == 28
    heaviest = body["pairs"][0]
    i = int(np.argmax(attention))
    assert heaviest["fields"] == list(PAIRS[i])
    assert heaviest["values"] == [values[FIELDS.index(f)] for f in PAIRS[i]]
    age_genres = next(p for p in body["pairs"] if p["fields"] == ["age", "genres"])
    assert age_genres["labels"] == ["25-34", "Drama"] and age_genres["values"] == ["25", "Drama"]


def test_a_multi_valued_value_is_known_when_every_part_is() -> None:
    from pathlib import Path

    from service.loaded_model import LoadedModel

    model = LoadedModel(
        version=1,
        path=Path("/m/1"),
        metadata=None,  # type: ignore[arg-type]
        fields=FIELDS,
        pairs=PAIRS,
        scorer=None,  # type: ignore[arg-type]
        vocabularies={"genres": frozenset({"Comedy", "Drama"}), "zip": frozenset({"48067"})},
    )
    assert model.known("genres", ["Comedy|Drama", "Drama", "Comedy|Horror", ""]) == [
        True,
        True,
        False,
        False,
    ]
    assert model.known("zip", ["48067", "1"]) == [True, False]
