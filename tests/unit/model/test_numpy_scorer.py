"""The NumPy scorer against the Keras AFM, on the weights the ``weights`` signature exports."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import tensorflow as tf

from model.config import AFMConfig
from model.contracts import export_format
from model.contracts.export_format import (
    ALL_FIELDS,
    HISTORY_FIELD,
    HISTORY_FIELDS,
    HISTORY_LENGTH,
    LAST_WATCHED,
    MOVIE_ID,
    SEED_FIELDS,
    pairs,
    user_inputs,
)
from model.contracts.numpy_scorer import ItemTable, NumpyScorer
from model.export.signatures import build_lookups, model_inputs
from model.export.weights import afm_weights
from model.network.afm import build_afm

VOCABULARIES = {
    "user_id": ["1", "2", "3", "4"],
    "gender": ["F", "M"],
    "age": ["1", "18", "25"],
    "occupation": ["0", "4", "7"],
    "zip": ["10001", "48067"],
    "movie_id": ["1", "2", "3", "5", "8"],
    "year": ["1995", "1999", "2000"],
    "genres": ["Action", "Comedy", "Drama", "Horror"],
    LAST_WATCHED: ["", "3", "12", "20"],
    HISTORY_FIELD: ["1", "2", "3", "5", "8"],
}
CONFIG = AFMConfig(embedding_dim=6, attention_factor=4)
VARIANTS = {
    "afm": {},
    "fm-ablation": {"use_attention": False},
    "no-pair-offsets": {"pair_bias": False},
    "no-fm-init": {"pair_bias": False, "fm_init": False},
}

USERS = {  # three users: known, partly unknown ("" and unseen values), wholly unknown
    "user_id": ["2", "99", ""],
    "gender": ["F", "", "X"],
    "age": ["25", "18", "0"],
    "occupation": ["7", "5", ""],
    "zip": ["48067", "00000", ""],
    # most recent first: a short history; none; more than HISTORY_LENGTH parts, with an
    # unknown movie and an empty part
    LAST_WATCHED: ["12", "", "30"],  # known; no history; unseen
    HISTORY_FIELD: ["3|1|5", "", "|".join(["8", "99", "", "2", *["1", "3"] * 12])],
}
# a fourth user, whose only watched movie lies past HISTORY_LENGTH: no history
USERS = {f: [*values, values[0]] for f, values in USERS.items()}
USERS[HISTORY_FIELD][3] = "|" * HISTORY_LENGTH + "5"
MOVIES = {  # the movie table: raw fields by id
    "1": {"year": "1995", "genres": "Comedy|Drama"},
    "2": {"year": "2001", "genres": "Comedy|Sci-Fi"},  # unseen year, one unseen genre
    "3": {"year": "1999", "genres": ""},  # no genres
    "5": {"genres": "Action||Horror|"},  # no year, empty parts
    "77": {"year": "2000", "genres": "Horror"},  # in the table, not in the vocabulary
    "012": {"year": "2000", "genres": "|"},  # not requestable: not how an integer reads
}
# Movie 8 is in the vocabulary, not in the table; 4242 in neither.
USER_INDEX = np.array([0, 0, 1, 1, 1, 0, 2, 2, 3, 1], np.int32)
MOVIE_IDS = [1, 2, 3, 5, 77, 8, 4242, 1, 3, 2]


def scorer_and_model(fields: tuple[str, ...], variant: str, seed: int = 0):
    """A NumpyScorer on the weights of a Keras AFM whose every variable is drawn at random."""
    config = replace(CONFIG, **VARIANTS[variant])
    model = build_afm(fields, {f: len(VOCABULARIES[f]) + 1 for f in fields}, config, seed=seed)
    rng = np.random.default_rng(seed)
    for variable in model.weights:  # a wide attention network: attention far from uniform
        scale = 1.5 if variable.path.startswith("attention/") else 0.5
        variable.assign(rng.normal(scale=scale, size=variable.shape).astype("float32"))
    weights = {name: np.asarray(value) for name, value in afm_weights(model, fields).items()}
    return NumpyScorer(fields, weights, VOCABULARIES), model


def keras_outputs(model, fields: tuple[str, ...], raw: dict[str, list[str]]) -> dict:
    """The Keras model's outputs on raw strings, encoded as the SavedModel encodes them."""
    lookups = build_lookups(fields, {f: np.array(VOCABULARIES[f]) for f in fields})
    inputs = model_inputs(lookups, {f: tf.constant(raw[f], tf.string) for f in fields})
    return {name: value.numpy() for name, value in model(inputs, training=False).items()}


def candidate_rows(fields: tuple[str, ...], user_index, movie_ids) -> dict[str, list[str]]:
    """Each candidate's raw strings, as the scorer should see them: an id outside the table
    but in the vocabulary has its other fields unknown; an id in neither is wholly unknown."""
    users = user_inputs(fields)
    raw = {f: [USERS[f][u] for u in user_index] for f in users}
    for f in fields:
        if f not in users:
            raw[f] = [
                str(m) if f == MOVIE_ID else MOVIES.get(str(m), {}).get(f, "") for m in movie_ids
            ]
    return raw


def max_differences(got: dict, want: dict) -> dict[str, float]:
    assert set(got) == set(want)
    return {name: float(np.abs(got[name] - want[name]).max()) for name in want}


FIELD_SETS = pytest.mark.parametrize(
    "fields", [SEED_FIELDS, ALL_FIELDS, HISTORY_FIELDS], ids=["six", "eight", "history"]
)


@pytest.mark.parametrize("variant", list(VARIANTS))
@FIELD_SETS
def test_explain_and_score_equal_the_keras_model(fields: tuple[str, ...], variant: str) -> None:
    scorer, model = scorer_and_model(fields, variant)
    items = scorer.item_table(MOVIES)
    item_index = items.index(MOVIE_IDS)
    users = {f: USERS[f] for f in user_inputs(fields)}
    got = scorer.explain(users, USER_INDEX, items, item_index)
    want = keras_outputs(model, fields, candidate_rows(fields, USER_INDEX, MOVIE_IDS))
    for name, difference in max_differences(got, want).items():
        assert difference < 1e-5, name
    np.testing.assert_allclose(
        scorer.score(users, USER_INDEX, items, item_index),
        want[export_format.OUTPUT_PROBABILITY],
        atol=1e-5,
    )
    assert (
        got[export_format.OUTPUT_ATTENTION].shape
        == got[export_format.OUTPUT_CONTRIBUTION].shape
        == (10, len(pairs(fields)))
    )
    assert got[export_format.OUTPUT_LINEAR].shape == (10, len(fields))
    parts = (
        got[export_format.OUTPUT_BIAS]
        + got[export_format.OUTPUT_LINEAR].sum(1)
        + got[export_format.OUTPUT_CONTRIBUTION].sum(1)
    )
    np.testing.assert_allclose(parts, got[export_format.OUTPUT_LOGIT], atol=1e-5)
    if variant == "fm-ablation":
        assert (got[export_format.OUTPUT_ATTENTION] == 1).all()
    else:
        np.testing.assert_allclose(got[export_format.OUTPUT_ATTENTION].sum(1), 1, rtol=1e-5)
        uniform = 1 / len(pairs(fields))
        assert got[export_format.OUTPUT_ATTENTION].max() > 3 * uniform  # far from uniform


@FIELD_SETS
def test_one_user_alone_scores_as_in_a_merged_call(fields: tuple[str, ...]) -> None:
    scorer, model = scorer_and_model(fields, "afm", seed=1)
    items = scorer.item_table(MOVIES)
    users = {f: USERS[f][1:2] for f in user_inputs(fields)}
    user_index = np.zeros(len(MOVIE_IDS), np.int32)
    got = scorer.explain(users, user_index, items, items.index(MOVIE_IDS))
    want = keras_outputs(model, fields, candidate_rows(fields, user_index + 1, MOVIE_IDS))
    for name, difference in max_differences(got, want).items():
        assert difference < 1e-5, name


def test_item_table_rows_index_and_known_flags() -> None:
    scorer, _ = scorer_and_model(ALL_FIELDS, "afm")
    items = scorer.item_table(MOVIES)
    assert isinstance(items, ItemTable) and items.movies is MOVIES
    # the table's movies in order, then vocabulary movie 8, then the unknown movie
    assert items.known.tolist() == [True, True, True, True, False, False, True, False]
    assert items.vectors.shape[0] == items.rest.shape[0] == 8
    index = items.index([1, 77, 8, 12, 4242, 5])
    assert index.dtype == np.int32
    assert index.tolist() == [0, 4, 6, 7, 7, 3]  # "012" cannot be asked for as 12
    assert items.index([]).tolist() == []


def test_weights_missing_an_array_are_refused() -> None:
    scorer, model = scorer_and_model(ALL_FIELDS, "afm")
    weights = {name: np.asarray(value) for name, value in afm_weights(model, ALL_FIELDS).items()}
    del weights["bag_table_genres"]
    with pytest.raises(ValueError, match="bag_table_genres"):
        NumpyScorer(ALL_FIELDS, weights, VOCABULARIES)


def test_history_attention_is_over_the_watched_movies_and_follows_the_candidate() -> None:
    scorer, _ = scorer_and_model(HISTORY_FIELDS, "afm", seed=2)
    items = scorer.item_table(MOVIES)
    users = {f: USERS[f] for f in user_inputs(HISTORY_FIELDS)}
    user_index = np.array([0, 0, 0, 1, 2], np.int32)
    got = scorer.explain(users, user_index, items, items.index([1, 2, 8, 1, 1]))
    beta = got[export_format.OUTPUT_HISTORY_ATTENTION]
    assert beta.shape == (5, HISTORY_LENGTH)
    np.testing.assert_allclose(beta.sum(axis=1), 1, rtol=1e-5)
    assert (beta[:3, 3:] == 0).all()  # three watched movies
    assert beta[3].tolist() == [1.0] + [0.0] * (HISTORY_LENGTH - 1)  # no history: id 0 alone
    assert beta[4, 2] == 0 and (beta[4] > 0).sum() == HISTORY_LENGTH - 1  # the empty part
    assert np.abs(beta[0] - beta[1]).max() > 1e-3  # another candidate, other weights
