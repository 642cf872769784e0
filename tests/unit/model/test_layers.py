"""AFM layers against NumPy references with the same weights."""

from __future__ import annotations

import itertools

import keras
import numpy as np
import pytest

from model.contracts.export_format import SEED_FIELDS, pairs
from model.network.layers import (
    AttentionPooling,
    BagEmbedding,
    FieldEmbedding,
    HistoryAttention,
    IdDropout,
    LogitSum,
    PairwiseInteraction,
)

RNG = np.random.default_rng(0)


def numpy_pairs(embeddings: np.ndarray) -> np.ndarray:
    """(batch, F, k) -> (batch, P, k), pairs in combinations order."""
    fields = embeddings.shape[1]
    return np.stack(
        [embeddings[:, i] * embeddings[:, j] for i, j in itertools.combinations(range(fields), 2)],
        axis=1,
    )


def numpy_attention(
    pairs: np.ndarray,
    kernel: np.ndarray,
    bias: np.ndarray,
    projection: np.ndarray,
    pair_bias: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """a'_ij = h^T ReLU(W x + b) (+ c_ij), softmax over pairs; pooled = sum_ij a_ij x_ij."""
    hidden = np.maximum(pairs @ kernel + bias, 0.0)  # (batch, P, t)
    scores = (hidden @ projection)[..., 0]  # (batch, P)
    if pair_bias is not None:
        scores = scores + pair_bias
    exp = np.exp(scores - scores.max(axis=1, keepdims=True))
    weights = exp / exp.sum(axis=1, keepdims=True)
    return (weights[..., None] * pairs).sum(axis=1), weights


def built_attention(k: int = 4, t: int = 3, **kwargs) -> AttentionPooling:
    layer = AttentionPooling(attention_factor=t, **kwargs)
    layer.build((None, 15, k))
    # Non-trivial weights, bias included, so every term of the equation is exercised.
    layer.attention_kernel.assign(RNG.normal(size=(k, t)).astype("float32"))
    layer.attention_bias.assign(RNG.normal(size=(t,)).astype("float32"))
    layer.attention_projection.assign(RNG.normal(size=(t, 1)).astype("float32"))
    if layer.pair_bias:
        layer.attention_pair_bias.assign(RNG.normal(size=(15,)).astype("float32"))
    return layer


def test_field_embedding_reads_each_field_from_its_own_slice() -> None:
    layer = FieldEmbedding([3, 2], output_dim=2)
    layer.build((None, 2))
    table = np.arange(10, dtype="float32").reshape(5, 2)
    layer.embeddings.assign(table)
    out = keras.ops.convert_to_numpy(layer(np.array([[1, 0], [2, 1]], dtype="int32")))
    # field 0 uses rows 0..2, field 1 rows 3..4
    np.testing.assert_array_equal(out, table[[[1, 3], [2, 4]]])


def test_bag_embedding_is_the_mean_of_the_present_values() -> None:
    layer = BagEmbedding(4, output_dim=2)
    layer.build((None, 3))
    table = np.arange(8, dtype="float32").reshape(4, 2)
    layer.embeddings.assign(table)
    ids = np.array([[1, 2, -1], [3, -1, -1], [0, -1, -1], [1, 2, 3]], dtype="int32")
    out = keras.ops.convert_to_numpy(layer(ids))
    assert out.shape == (4, 1, 2)
    np.testing.assert_allclose(
        out[:, 0], [(table[1] + table[2]) / 2, table[3], table[0], table[1:].mean(0)]
    )


def test_history_attention_weighs_the_watched_movies_by_the_candidate() -> None:
    layer = HistoryAttention(5, output_dim=2, history_length=3)
    layer.build([(None, 2), (None, 3)])
    table = RNG.normal(size=(5, 2)).astype("float32")
    linear = RNG.normal(size=(5, 1)).astype("float32")
    query, recency = np.array([1.5, -0.5], "float32"), np.array([0.3, 0.0, -0.2], "float32")
    for variable, value in zip(
        (layer.embeddings, layer.linear, layer.query, layer.recency),
        (table, linear, query, recency),
        strict=True,
    ):
        variable.assign(value)
    candidates = RNG.normal(size=(3, 2)).astype("float32")
    ids = np.array([[1, 2, 4], [3, -1, 2], [0, -1, -1]], "int32")
    vector, weight, attention = (keras.ops.convert_to_numpy(t) for t in layer([candidates, ids]))
    assert vector.shape == (3, 1, 2) and weight.shape == (3, 1, 1) and attention.shape == (3, 3)
    for row in range(3):
        present = ids[row] >= 0
        scores = (candidates[row] * query) @ table[ids[row][present]].T + recency[present]
        beta = np.exp(scores - scores.max())
        beta /= beta.sum()
        want = np.zeros(3, "float32")
        want[present] = beta
        np.testing.assert_allclose(attention[row], want, rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(vector[row, 0], beta @ table[ids[row][present]], rtol=1e-5)
        np.testing.assert_allclose(
            weight[row, 0, 0], beta @ linear[ids[row][present], 0], rtol=1e-5
        )
    other = keras.ops.convert_to_numpy(layer([candidates[::-1], ids])[2])
    assert np.abs(other[0] - attention[0]).max() > 1e-3  # another candidate, other weights


def test_history_attention_starts_as_the_mean() -> None:
    layer = HistoryAttention(5, output_dim=2, history_length=3)
    ids = np.array([[1, 2, -1]], "int32")
    attention = keras.ops.convert_to_numpy(layer([np.ones((1, 2), "float32"), ids])[2])
    np.testing.assert_allclose(attention, [[0.5, 0.5, 0.0]])


def test_id_dropout_drops_whole_groups_and_only_in_training() -> None:
    layer = IdDropout(0.3, groups=[[0], [0, 1, 2]], seed=1)
    ids = np.full((4000, 4), 7, dtype="int32")
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(layer(ids)), ids)
    dropped = keras.ops.convert_to_numpy(layer(ids, training=True)) == 0
    assert not dropped[:, 3].any()  # in no group
    # columns 1 and 2 only ever go together (their one group); column 0 with them or alone
    np.testing.assert_array_equal(dropped[:, 1], dropped[:, 2])
    assert (dropped[:, 0] >= dropped[:, 1]).all()
    assert 0.27 < dropped[:, 1].mean() < 0.33  # one group: the rate
    assert 0.48 < dropped[:, 0].mean() < 0.54  # two groups: 1 - 0.7 ** 2 = 0.51


def test_logit_sum_is_bias_plus_linear_terms_plus_interaction() -> None:
    layer = LogitSum()
    layer.build([(None, 2), (None, 1)])
    layer.bias.assign(np.array([0.5], dtype="float32"))
    linear = np.array([[1.0, 2.0], [3.0, 4.0]], "float32")
    logit, bias = layer([linear, np.array([[10.0], [20.0]], "float32")])
    np.testing.assert_allclose(keras.ops.convert_to_numpy(logit), [13.5, 27.5])
    np.testing.assert_allclose(keras.ops.convert_to_numpy(bias), [0.5, 0.5])


def test_pairwise_interaction_matches_numpy_in_contract_pair_order() -> None:
    embeddings = RNG.normal(size=(3, len(SEED_FIELDS), 5)).astype("float32")
    out = keras.ops.convert_to_numpy(PairwiseInteraction()(embeddings))
    assert out.shape == (3, len(pairs(SEED_FIELDS)), 5)
    np.testing.assert_allclose(out, numpy_pairs(embeddings), rtol=1e-5, atol=1e-6)
    # column p is the product of the fields named in pairs(SEED_FIELDS)[p]
    for p, (left, right) in enumerate(pairs(SEED_FIELDS)):
        i, j = SEED_FIELDS.index(left), SEED_FIELDS.index(right)
        np.testing.assert_allclose(out[:, p], embeddings[:, i] * embeddings[:, j], rtol=1e-6)


@pytest.mark.parametrize("pair_bias", [False, True], ids=["shared", "pair-bias"])
def test_attention_pooling_matches_numpy_reference(pair_bias: bool) -> None:
    layer = built_attention(k=4, t=3, pair_bias=pair_bias)
    pairs = RNG.normal(size=(6, 15, 4)).astype("float32")
    pooled, weights = (keras.ops.convert_to_numpy(t) for t in layer(pairs))
    ref_pooled, ref_weights = numpy_attention(
        pairs,
        layer.attention_kernel.numpy(),
        layer.attention_bias.numpy(),
        layer.attention_projection.numpy(),
        layer.attention_pair_bias.numpy() if pair_bias else None,
    )
    np.testing.assert_allclose(weights, ref_weights, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(pooled, ref_pooled, rtol=1e-5, atol=1e-5)


def test_attention_rows_sum_to_one_and_vary_across_inputs() -> None:
    layer = built_attention(k=8, t=4)
    _, weights = layer(RNG.normal(size=(32, 15, 8)).astype("float32"))
    weights = keras.ops.convert_to_numpy(weights)
    np.testing.assert_allclose(weights.sum(axis=1), 1.0, rtol=1e-5)
    assert (weights > 0).all()
    assert weights.std(axis=1).max() > 1e-3, "weights are uniform within an example"
    assert np.abs(weights - weights[0]).max() > 1e-3, "every example got the same weights"


def test_without_attention_every_weight_is_one_and_pooling_is_a_plain_sum() -> None:
    layer = AttentionPooling(use_attention=False)
    pairs = RNG.normal(size=(4, 15, 3)).astype("float32")
    pooled, weights = (keras.ops.convert_to_numpy(t) for t in layer(pairs))
    assert layer.trainable_weights == []
    np.testing.assert_array_equal(weights, np.ones((4, 15)))
    np.testing.assert_allclose(pooled, pairs.sum(axis=1), rtol=1e-5, atol=1e-6)


def test_fm_ablation_equals_a_numpy_factorization_machine() -> None:
    """sum_{i<j} <v_i, v_j> via the layers == FM's O(kn) identity 1/2((sum v)^2 - sum v^2)."""
    embeddings = RNG.normal(size=(5, 6, 4)).astype("float32")
    pooled, _ = AttentionPooling(use_attention=False)(PairwiseInteraction()(embeddings))
    interaction = keras.ops.convert_to_numpy(pooled).sum(axis=1)
    fm = 0.5 * ((embeddings.sum(axis=1) ** 2) - (embeddings**2).sum(axis=1)).sum(axis=1)
    np.testing.assert_allclose(interaction, fm, rtol=1e-5, atol=1e-5)


def test_l2_applies_to_the_attention_matrix_only() -> None:
    layer = built_attention(k=4, t=3, l2_attention=0.1)
    layer(RNG.normal(size=(2, 15, 4)).astype("float32"))
    kernel = layer.attention_kernel.numpy()
    assert len(layer.losses) == 1
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(layer.losses[0]), 0.1 * (kernel**2).sum(), rtol=1e-5
    )


def test_pair_bias_starts_at_zero_and_takes_its_own_l2() -> None:
    layer = AttentionPooling(attention_factor=3, l2_attention=0.1, pair_bias=True, l2_pair_bias=0.2)
    layer.build((None, 15, 4))
    np.testing.assert_array_equal(layer.attention_pair_bias.numpy(), np.zeros(15))
    layer.attention_pair_bias.assign(RNG.normal(size=(15,)).astype("float32"))
    layer(RNG.normal(size=(2, 15, 4)).astype("float32"))
    kernel, offsets = layer.attention_kernel.numpy(), layer.attention_pair_bias.numpy()
    losses = sorted(float(keras.ops.convert_to_numpy(loss)) for loss in layer.losses)
    want = sorted([0.1 * (kernel**2).sum(), 0.2 * (offsets**2).sum()])
    np.testing.assert_allclose(losses, want, rtol=1e-5)


def test_pair_bias_alone_gives_the_same_weights_to_every_example() -> None:
    """With h = 0 the attention is softmax(c): a global weight per pair, rows still sum to 1."""
    layer = built_attention(k=4, t=3, pair_bias=True)
    layer.attention_projection.assign(np.zeros((3, 1), "float32"))
    _, weights = layer(RNG.normal(size=(5, 15, 4)).astype("float32"))
    c = layer.attention_pair_bias.numpy()
    want = np.exp(c - c.max()) / np.exp(c - c.max()).sum()
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(weights), np.tile(want, (5, 1)), rtol=1e-5
    )


def test_xla_compiled_training_path_equals_the_plain_path() -> None:
    embeddings = RNG.normal(size=(8, 6, 4)).astype("float32")
    pairwise = PairwiseInteraction(jit_compile_training=True)
    attention = built_attention(k=4, t=3, jit_compile_training=True, pair_bias=True)
    plain_pairs = keras.ops.convert_to_numpy(pairwise(embeddings))
    xla_pairs = keras.ops.convert_to_numpy(pairwise(embeddings, training=True))
    np.testing.assert_allclose(xla_pairs, plain_pairs, rtol=1e-5, atol=1e-6)
    plain = [keras.ops.convert_to_numpy(t) for t in attention(plain_pairs)]
    xla = [keras.ops.convert_to_numpy(t) for t in attention(plain_pairs, training=True)]
    for got, want in zip(xla, plain, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "layer",
    [
        FieldEmbedding([4, 2, 7], output_dim=3, name="emb"),
        BagEmbedding(19, output_dim=3, name="bag"),
        FieldEmbedding([4, 2], output_dim=3, embeddings_regularizer="l2", name="emb_l2"),
        HistoryAttention(9, output_dim=3, history_length=4, embeddings_regularizer="l2"),
        IdDropout(0.1, groups=[[0], [0, 5]], seed=3, name="oov"),
        LogitSum(name="logit"),
        PairwiseInteraction(jit_compile_training=True, name="pairs"),
        AttentionPooling(attention_factor=5, l2_attention=1e-4, use_attention=False, name="att"),
        AttentionPooling(projection_initializer="zeros", scale_by_pairs=True, name="att_fm"),
        AttentionPooling(pair_bias=True, l2_pair_bias=1e-4, name="att_pair_bias"),
    ],
    ids=lambda layer: type(layer).__name__,
)
def test_config_round_trip(layer: keras.layers.Layer) -> None:
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer))
    assert type(restored) is type(layer)
    assert restored.get_config() == layer.get_config()


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: AttentionPooling(attention_factor=0), r"`attention_factor` .* Received: 0"),
        (lambda: AttentionPooling(l2_attention=-1.0), r"`l2_attention` .* Received: -1.0"),
        (lambda: AttentionPooling(l2_pair_bias=-1.0), r"`l2_pair_bias` .* Received: -1.0"),
        (lambda: FieldEmbedding([], output_dim=4), r"`vocab_sizes` .* Received: \[\]"),
        (lambda: FieldEmbedding([3, 0], output_dim=4), r"`vocab_sizes` .* Received: \[3, 0\]"),
        (lambda: FieldEmbedding([3], output_dim=0), r"`output_dim` .* Received: 0"),
        (lambda: PairwiseInteraction()(np.ones((2, 1, 4))), r"fields >= 2"),
        (lambda: PairwiseInteraction()(np.ones((2, 4))), r"\(batch, fields >= 2, k\)"),
        (lambda: FieldEmbedding([3, 2], 4)(np.ones((2, 3), "int32")), r"ids of shape \(batch, 2\)"),
        (lambda: BagEmbedding(0, 4), r"`vocab_sizes` .* Received: \[0\]"),
        (lambda: HistoryAttention(9, 4, 0), r"`history_length` .* Received: 4, 0"),
        (lambda: IdDropout(1.0, [[0]]), r"`rate` must be in \[0, 1\). Received: 1.0"),
        (lambda: IdDropout(0.1, [[3]])(np.ones((2, 3), "int32")), r"`groups` must index 3"),
    ],
)
def test_invalid_arguments_are_refused_with_the_value(make, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make()
