"""The whole AFM network against a NumPy AFM with the same weights."""

from __future__ import annotations

import itertools

import keras
import numpy as np
import pytest

from model.afm import build_afm, field_sizes, probability_model
from model.config import AFMConfig
from model.contract import FIELDS, OUTPUT_ATTENTION, OUTPUT_CONTRIBUTION, OUTPUT_PROBABILITY, PAIRS

SIZES = [9, 3, 8, 5, 7, 11]  # ids per field, OOV id 0 included
CONFIG = AFMConfig(embedding_dim=4, attention_factor=3, dropout=0.5)


def random_ids(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.stack([rng.integers(0, size, n) for size in SIZES], axis=1).astype("int32")


def randomize(model: keras.Model, seed: int = 1) -> None:
    """Non-zero values everywhere (linear weights and biases start at zero)."""
    rng = np.random.default_rng(seed)
    for variable in model.weights:
        variable.assign(rng.normal(scale=0.5, size=variable.shape).astype("float32"))


def numpy_afm(model: keras.Model, ids: np.ndarray) -> dict[str, np.ndarray]:
    """y = w0 + sum_f w_f + p^T sum_ij a_ij (v_i ⊙ v_j), written out from the weights."""
    offsets = np.cumsum([0, *SIZES[:-1]])
    rows = ids + offsets
    table = model.get_layer("embedding").embeddings.numpy()
    linear = model.get_layer("linear")
    w = linear.weights_table.embeddings.numpy()[:, 0]
    w0 = linear.bias.numpy()[0]
    p = model.get_layer("projection").kernel.numpy()[:, 0]
    attention = model.get_layer("attention")

    v = table[rows]  # (n, F, k)
    pairs = np.stack([v[:, i] * v[:, j] for i, j in itertools.combinations(range(6), 2)], 1)
    if attention.use_attention:
        hidden = np.maximum(
            pairs @ attention.attention_kernel.numpy() + attention.attention_bias.numpy(), 0
        )
        scores = (hidden @ attention.attention_projection.numpy())[..., 0]
        a = np.exp(scores - scores.max(1, keepdims=True))
        a /= a.sum(1, keepdims=True)
    else:
        a = np.ones(pairs.shape[:2])
    contribution = a * (pairs @ p)
    logit = w0 + w[rows].sum(1) + contribution.sum(1)
    return {
        OUTPUT_PROBABILITY: 1 / (1 + np.exp(-logit)),
        OUTPUT_ATTENTION: a,
        OUTPUT_CONTRIBUTION: contribution,
        "logit": logit,
    }


def outputs(model: keras.Model, ids: np.ndarray, **kwargs) -> dict[str, np.ndarray]:
    return {k: keras.ops.convert_to_numpy(v) for k, v in model(ids, **kwargs).items()}


@pytest.mark.parametrize("use_attention", [True, False])
def test_outputs_match_numpy_afm(use_attention: bool) -> None:
    model = build_afm(
        SIZES, AFMConfig(embedding_dim=4, attention_factor=3, use_attention=use_attention)
    )
    randomize(model)
    ids = random_ids(16)
    got, want = outputs(model, ids), numpy_afm(model, ids)
    assert got[OUTPUT_PROBABILITY].shape == (16,)
    assert got[OUTPUT_ATTENTION].shape == got[OUTPUT_CONTRIBUTION].shape == (16, len(PAIRS))
    for name in (OUTPUT_PROBABILITY, OUTPUT_ATTENTION, OUTPUT_CONTRIBUTION):
        np.testing.assert_allclose(got[name], want[name], rtol=1e-5, atol=1e-5, err_msg=name)


def test_contributions_are_the_pair_terms_of_the_logit() -> None:
    model = build_afm(SIZES, CONFIG)
    randomize(model)
    ids = random_ids(8)
    got = outputs(model, ids)
    linear = keras.ops.convert_to_numpy(model.get_layer("linear")(ids))[:, 0]
    logit = linear + got[OUTPUT_CONTRIBUTION].sum(axis=1)
    np.testing.assert_allclose(got[OUTPUT_PROBABILITY], 1 / (1 + np.exp(-logit)), rtol=1e-5)
    np.testing.assert_allclose(got[OUTPUT_ATTENTION].sum(axis=1), 1.0, rtol=1e-5)


def test_dropout_acts_only_in_training() -> None:
    model = build_afm(SIZES, CONFIG)
    randomize(model)
    ids = random_ids(64)
    first = outputs(model, ids)[OUTPUT_PROBABILITY]
    np.testing.assert_array_equal(first, outputs(model, ids)[OUTPUT_PROBABILITY])
    dropped = outputs(model, ids, training=True)[OUTPUT_PROBABILITY]
    assert np.abs(dropped - first).max() > 1e-4


def test_probability_model_shares_weights() -> None:
    model = build_afm(SIZES, CONFIG)
    randomize(model)
    ids = random_ids(8)
    scorer = probability_model(model)
    assert len(scorer.weights) == len(model.weights)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(scorer(ids)), outputs(model, ids)[OUTPUT_PROBABILITY], rtol=1e-6
    )


def test_same_seed_same_initial_weights() -> None:
    a, b = build_afm(SIZES, CONFIG, seed=3), build_afm(SIZES, CONFIG, seed=3)
    c = build_afm(SIZES, CONFIG, seed=4)
    for wa, wb in zip(a.get_weights(), b.get_weights(), strict=True):
        np.testing.assert_array_equal(wa, wb)
    embedding = a.get_layer("embedding").embeddings.numpy()
    assert not np.array_equal(embedding, c.get_layer("embedding").embeddings.numpy())


def test_vocab_sizes_by_name_or_in_order() -> None:
    assert field_sizes(dict(zip(FIELDS, SIZES, strict=True))) == SIZES
    assert field_sizes(SIZES) == SIZES
    with pytest.raises(ValueError, match="missing for fields \\['movie_id'\\]"):
        field_sizes(dict(zip(FIELDS[:-1], SIZES, strict=False)))
    with pytest.raises(ValueError, match="expected 6 vocabulary sizes"):
        field_sizes(SIZES[:3])


def test_saved_and_loaded_model_gives_the_same_outputs(tmp_path) -> None:
    model = build_afm(SIZES, CONFIG)
    randomize(model)
    path = tmp_path / "afm.keras"
    model.save(path)
    restored = keras.saving.load_model(path)
    ids = random_ids(8)
    for name, value in outputs(model, ids).items():
        np.testing.assert_allclose(outputs(restored, ids)[name], value, rtol=1e-6, err_msg=name)
