"""The whole AFM network against a NumPy AFM with the same weights."""

from __future__ import annotations

import itertools
from dataclasses import replace

import keras
import numpy as np
import pytest

from model.config import AFMConfig
from model.contracts.export_format import (
    ALL_FIELDS,
    HISTORY_FIELD,
    HISTORY_FIELDS,
    HISTORY_LENGTH,
    LAST_WATCHED,
    OUTPUT_ATTENTION,
    OUTPUT_BIAS,
    OUTPUT_CONTRIBUTION,
    OUTPUT_HISTORY_ATTENTION,
    OUTPUT_LINEAR,
    OUTPUT_LOGIT,
    OUTPUT_PROBABILITY,
    SEED_FIELDS,
    pairs,
)
from model.network.afm import build_afm, probability_model

# ids per field, OOV id 0 included; genres (multi-valued, last) has 6
SIZES = dict(zip(ALL_FIELDS, [9, 3, 8, 5, 7, 11, 4, 6], strict=True))
CONFIG = AFMConfig(embedding_dim=4, attention_factor=3, dropout=0.5)


def random_ids(n: int, seed: int = 0, fields: tuple[str, ...] = ALL_FIELDS) -> dict:
    """Model inputs: single-valued ids, and genres as up to 3 values padded with -1."""
    rng = np.random.default_rng(seed)
    single = [f for f in fields if f != "genres"]
    sizes = {**SIZES, LAST_WATCHED: 5}
    inputs = {"ids": np.stack([rng.integers(0, sizes[f], n) for f in single], 1).astype("int32")}
    if "genres" in fields:
        genres = rng.integers(0, SIZES["genres"], (n, 3)).astype("int32")
        genres[np.arange(n) % 3 == 1, 1:] = -1  # some rows hold one value, some two or three
        genres[np.arange(n) % 3 == 2, 2] = -1
        inputs["genres"] = genres
    return inputs


def randomize(model: keras.Model, seed: int = 1) -> None:
    """Non-zero values everywhere (linear weights and biases start at zero)."""
    rng = np.random.default_rng(seed)
    for variable in model.weights:
        variable.assign(rng.normal(scale=0.5, size=variable.shape).astype("float32"))


def numpy_afm(model: keras.Model, inputs: dict, fields: tuple[str, ...]) -> dict[str, np.ndarray]:
    """y = w0 + sum_f w_f + p^T sum_ij a_ij (v_i ⊙ v_j), written out from the weights."""
    single = [f for f in fields if f != "genres"]
    offsets = np.cumsum([0, *[SIZES[f] for f in single][:-1]])
    rows = inputs["ids"] + offsets
    v = model.get_layer("embedding").embeddings.numpy()[rows]  # (n, S, k)
    w = model.get_layer("linear").embeddings.numpy()[rows][..., 0]  # (n, S)
    if "genres" in fields:
        genres = inputs["genres"]
        present = (genres >= 0)[..., None]
        count = present.sum(1)

        def mean(table: np.ndarray) -> np.ndarray:
            return (table[np.maximum(genres, 0)] * present).sum(1) / count

        v = np.concatenate(
            [v, mean(model.get_layer("embedding_genres").embeddings.numpy())[:, None]], 1
        )
        w = np.concatenate([w, mean(model.get_layer("linear_genres").embeddings.numpy())], 1)
    w0 = model.get_layer("logit").bias.numpy()[0]
    p = model.get_layer("projection").kernel.numpy()[:, 0]
    attention = model.get_layer("attention")

    pair_products = np.stack(
        [v[:, i] * v[:, j] for i, j in itertools.combinations(range(len(fields)), 2)], 1
    )
    if attention.use_attention:
        hidden = np.maximum(
            pair_products @ attention.attention_kernel.numpy() + attention.attention_bias.numpy(), 0
        )
        scores = (hidden @ attention.attention_projection.numpy())[..., 0]
        if attention.pair_bias:
            scores = scores + attention.attention_pair_bias.numpy()
        a = np.exp(scores - scores.max(1, keepdims=True))
        a /= a.sum(1, keepdims=True)
    else:
        a = np.ones(pair_products.shape[:2])
    scale = len(a[0]) if attention.use_attention and attention.scale_by_pairs else 1
    contribution = scale * a * (pair_products @ p)
    logit = w0 + w.sum(1) + contribution.sum(1)
    return {
        OUTPUT_PROBABILITY: 1 / (1 + np.exp(-logit)),
        OUTPUT_ATTENTION: a,
        OUTPUT_CONTRIBUTION: contribution,
        OUTPUT_BIAS: np.full(len(logit), w0),
        OUTPUT_LINEAR: w,
        "logit": logit,
    }


def outputs(model: keras.Model, ids: np.ndarray, **kwargs) -> dict[str, np.ndarray]:
    return {k: keras.ops.convert_to_numpy(v) for k, v in model(ids, **kwargs).items()}


@pytest.mark.parametrize("fields", [ALL_FIELDS, SEED_FIELDS], ids=["all", "seed"])
@pytest.mark.parametrize("use_attention", [True, False])
@pytest.mark.parametrize("fm_init", [True, False], ids=["fm-init", "paper"])
@pytest.mark.parametrize("pair_bias", [True, False], ids=["pair-bias", "no-pair-bias"])
def test_outputs_match_numpy_afm(
    use_attention: bool, fields: tuple[str, ...], fm_init: bool, pair_bias: bool
) -> None:
    config = AFMConfig(
        embedding_dim=4,
        attention_factor=3,
        use_attention=use_attention,
        fm_init=fm_init,
        pair_bias=pair_bias,
    )
    model = build_afm(fields, SIZES, config)
    randomize(model)
    ids = random_ids(16, fields=fields)
    got, want = outputs(model, ids), numpy_afm(model, ids, fields)
    assert got[OUTPUT_PROBABILITY].shape == (16,)
    shape = (16, len(pairs(fields)))
    assert got[OUTPUT_ATTENTION].shape == got[OUTPUT_CONTRIBUTION].shape == shape
    for name in (OUTPUT_PROBABILITY, OUTPUT_ATTENTION, OUTPUT_CONTRIBUTION):
        np.testing.assert_allclose(got[name], want[name], rtol=1e-5, atol=1e-5, err_msg=name)


@pytest.mark.parametrize("fields", [ALL_FIELDS, SEED_FIELDS], ids=["all", "seed"])
def test_bias_linear_and_contributions_add_up_to_the_logit(fields: tuple[str, ...]) -> None:
    model = build_afm(fields, SIZES, CONFIG)
    randomize(model)
    ids = random_ids(8, fields=fields)
    got = outputs(model, ids)
    want = numpy_afm(model, ids, fields)
    assert got[OUTPUT_LINEAR].shape == (8, len(fields))
    np.testing.assert_allclose(got[OUTPUT_LINEAR], want[OUTPUT_LINEAR], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got[OUTPUT_BIAS], want[OUTPUT_BIAS], rtol=1e-6)
    parts = got[OUTPUT_BIAS] + got[OUTPUT_LINEAR].sum(1) + got[OUTPUT_CONTRIBUTION].sum(1)
    np.testing.assert_allclose(got[OUTPUT_LOGIT], parts, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got[OUTPUT_LOGIT], want["logit"], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got[OUTPUT_PROBABILITY], 1 / (1 + np.exp(-parts)), rtol=1e-5)
    np.testing.assert_allclose(got[OUTPUT_ATTENTION].sum(axis=1), 1.0, rtol=1e-5)


def test_oov_dropout_groups_new_users_zips_movies_and_unknown_users() -> None:
    model = build_afm(ALL_FIELDS, SIZES, AFMConfig(oov_rate=0.5))
    assert model.get_layer("oov_dropout").groups == [[0], [4], [5], [0, 1, 2, 3, 4]]


def test_dropout_acts_only_in_training() -> None:
    model = build_afm(ALL_FIELDS, SIZES, CONFIG)
    randomize(model)
    ids = random_ids(64)
    first = outputs(model, ids)[OUTPUT_PROBABILITY]
    np.testing.assert_array_equal(first, outputs(model, ids)[OUTPUT_PROBABILITY])
    dropped = outputs(model, ids, training=True)[OUTPUT_PROBABILITY]
    assert np.abs(dropped - first).max() > 1e-4


def test_probability_model_shares_weights() -> None:
    model = build_afm(ALL_FIELDS, SIZES, CONFIG)
    randomize(model)
    ids = random_ids(8)
    scorer = probability_model(model)
    assert len(scorer.weights) == len(model.weights)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(scorer(ids)), outputs(model, ids)[OUTPUT_PROBABILITY], rtol=1e-6
    )


def test_same_seed_same_initial_weights() -> None:
    a, b = (
        build_afm(ALL_FIELDS, SIZES, CONFIG, seed=3),
        build_afm(ALL_FIELDS, SIZES, CONFIG, seed=3),
    )
    c = build_afm(ALL_FIELDS, SIZES, CONFIG, seed=4)
    for wa, wb in zip(a.get_weights(), b.get_weights(), strict=True):
        np.testing.assert_array_equal(wa, wb)
    embedding = a.get_layer("embedding").embeddings.numpy()
    assert not np.array_equal(embedding, c.get_layer("embedding").embeddings.numpy())


def test_missing_sizes_and_misplaced_multi_valued_fields_are_refused() -> None:
    with pytest.raises(ValueError, match="missing for fields \\['genres'\\]"):
        build_afm(ALL_FIELDS, dict.fromkeys(SEED_FIELDS + ("year",), 3), CONFIG)
    with pytest.raises(ValueError, match="multi-valued fields must come last"):
        build_afm(("genres", *SEED_FIELDS), SIZES, CONFIG)


def test_saved_and_loaded_model_gives_the_same_outputs(tmp_path) -> None:
    model = build_afm(ALL_FIELDS, SIZES, CONFIG)
    randomize(model)
    path = tmp_path / "afm.keras"
    model.save(path)
    restored = keras.saving.load_model(path)
    ids = random_ids(8)
    for name, value in outputs(model, ids).items():
        np.testing.assert_allclose(outputs(restored, ids)[name], value, rtol=1e-6, err_msg=name)


@pytest.mark.parametrize("fields", [ALL_FIELDS, SEED_FIELDS], ids=["all", "seed"])
def test_fm_init_starts_as_the_fm(fields: tuple[str, ...]) -> None:
    """h = 0 and pooled x P: the untrained AFM scores exactly like the FM with the same weights."""
    afm = build_afm(fields, SIZES, AFMConfig(embedding_dim=4, attention_factor=3))
    fm = build_afm(
        fields, SIZES, AFMConfig(embedding_dim=4, attention_factor=3, use_attention=False)
    )
    randomize(fm)
    shared = [layer.name for layer in fm.layers if layer.weights and layer.name != "attention"]
    for name in shared:
        afm.get_layer(name).set_weights(fm.get_layer(name).get_weights())
    ids = random_ids(16, fields=fields)
    got, want = outputs(afm, ids), outputs(fm, ids)
    np.testing.assert_allclose(got[OUTPUT_PROBABILITY], want[OUTPUT_PROBABILITY], rtol=1e-5)
    np.testing.assert_allclose(got[OUTPUT_ATTENTION], 1 / len(pairs(fields)), rtol=1e-6)
    np.testing.assert_allclose(
        got[OUTPUT_CONTRIBUTION], want[OUTPUT_CONTRIBUTION], rtol=1e-4, atol=1e-6
    )


HISTORY_SIZES = {**SIZES, LAST_WATCHED: 5, HISTORY_FIELD: 11}


def history_inputs(n: int) -> dict:
    """``random_ids`` plus the watched movies: a full history, a short one, none."""
    inputs = random_ids(n, fields=tuple(f for f in HISTORY_FIELDS if f != HISTORY_FIELD))
    rng = np.random.default_rng(1)
    watched = rng.integers(0, HISTORY_SIZES[HISTORY_FIELD], (n, HISTORY_LENGTH)).astype("int32")
    watched[1::3, 4:] = -1
    watched[2::3] = -1
    watched[2::3, 0] = 0
    return {**inputs, HISTORY_FIELD: watched}


def test_history_model_saves_loads_and_explains_the_watched_movies(tmp_path) -> None:
    model = build_afm(HISTORY_FIELDS, HISTORY_SIZES, CONFIG)
    randomize(model)
    inputs = history_inputs(9)
    got = outputs(model, inputs)
    assert got[OUTPUT_ATTENTION].shape == (9, len(pairs(HISTORY_FIELDS)))
    beta = got[OUTPUT_HISTORY_ATTENTION]
    np.testing.assert_allclose(beta.sum(axis=1), 1.0, rtol=1e-5)
    assert (beta[1::3, 4:] == 0).all()
    np.testing.assert_allclose(beta[2::3, 0], 1.0, rtol=1e-6)  # no history: id 0 alone
    path = tmp_path / "afm.keras"
    model.save(path)
    restored = outputs(keras.saving.load_model(path), inputs)
    for name, value in got.items():
        np.testing.assert_allclose(restored[name], value, rtol=1e-6, err_msg=name)


def test_embedding_l2_regularises_the_vector_tables_only() -> None:
    plain = build_afm(HISTORY_FIELDS, HISTORY_SIZES, CONFIG)
    assert len(plain.losses) == 1  # the attention matrix's own L2
    model = build_afm(HISTORY_FIELDS, HISTORY_SIZES, replace(CONFIG, l2_embedding=1e-3))
    # the field table, the genres table and the watched movies' table; no linear weights
    assert len(model.losses) == 4


def test_the_watched_movies_must_come_last() -> None:
    fields = (*SEED_FIELDS, HISTORY_FIELD, "year", "genres")
    with pytest.raises(ValueError, match="must come last"):
        build_afm(fields, HISTORY_SIZES, CONFIG)
