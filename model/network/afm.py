"""The AFM network as a Keras functional model over integer field ids.

    logit(x)      = w0 + sum_f w_{x_f}  +  p^T sum_{i<j} a_ij (v_i ⊙ v_j)
    probability   = sigmoid(logit)
    contribution_ij = a_ij * p^T (v_i ⊙ v_j)       (sum over pairs = the interaction term)
    logit         = bias + sum_f linear_f + sum_ij contribution_ij    (the explain outputs)

With ``fm_init`` (the default) the pooled vector is P * sum a_ij (v_i ⊙ v_j) (P pairs) and h
starts at zero, so the untrained AFM equals the FM; then
contribution_ij = P * a_ij * p^T (v_i ⊙ v_j).

Strings never reach this model: the exported signatures wrap it with one StringLookup per
field (see ``model/export/signatures.py``), and training feeds the same ids from
``PreparedData.encode``.
The field set (``contract.FIELD_SETS``) decides the inputs: single-valued fields arrive
together as one ``(batch, S)`` id matrix, each multi-valued field (genres) as its own
``(batch, L)`` padded id matrix, embedded as the mean of its values. The watched movies
(``HISTORY_FIELD``, last when present) arrive as a ``(batch, HISTORY_LENGTH)`` id matrix and
are embedded by attention keyed by the candidate's movie vector (``HistoryAttention``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import keras

from model.config import AFMConfig
from model.contracts.export_format import (
    HISTORY_FIELD,
    HISTORY_LENGTH,
    LAST_WATCHED,
    MOVIE_ID,
    MULTI_VALUED,
    OUTPUT_ATTENTION,
    OUTPUT_BIAS,
    OUTPUT_CONTRIBUTION,
    OUTPUT_HISTORY_ATTENTION,
    OUTPUT_LINEAR,
    OUTPUT_LOGIT,
    OUTPUT_PROBABILITY,
    USER_FIELDS,
)
from model.data.dataset import SINGLE_INPUT
from model.network.layers import (
    AttentionPooling,
    BagEmbedding,
    FieldEmbedding,
    HistoryAttention,
    IdDropout,
    LogitSum,
    PairwiseInteraction,
)

OOV_GROUPS: tuple[tuple[str, ...], ...] = (
    ("user_id",), ("zip",), ("movie_id",), (*USER_FIELDS, LAST_WATCHED)
)  # fmt: skip
"""Fields ``AFMConfig.oov_rate`` drops together in training, one group at a time: a new user,
a new zip, a new movie (its genres and year still known), a user the feature store lacks
(a group's fields that a field set lacks are left out of it)."""


def split_fields(fields: Sequence[str]) -> tuple[list[str], list[str]]:
    """(single-valued, multi-valued) fields, each in field-set order."""
    return [f for f in fields if f not in MULTI_VALUED], [f for f in fields if f in MULTI_VALUED]


def build_afm(
    fields: Sequence[str], vocab_sizes: Mapping[str, int], config: AFMConfig, seed: int = 42
) -> keras.Model:
    """Build the AFM.

    Args:
        fields: the field set, single-valued fields first (``contract.FIELD_SETS``).
        vocab_sizes: ids per field, including the out-of-vocabulary id 0 (so
            ``len(vocabulary) + 1``), by field name.
        config: the model's hyperparameters.
        seed: seeds every initializer and random draw.

    Returns:
        A model from the inputs ``ids`` ``(batch, S)`` (the single-valued fields' ids in
        field order) and one ``(batch, L)`` input per multi-valued field, named after it, to
        a dict: ``probability`` ``(batch,)``, ``attention`` ``(batch, P)`` and
        ``contribution`` ``(batch, P)`` with P = len(pairs(fields)), columns in pairs order;
        ``bias`` ``(batch,)`` (w0), ``linear`` ``(batch, F)`` (each field's w term) and
        ``logit`` ``(batch,)``, so that logit = bias + sum(linear) + sum(contribution);
        with the watched movies also ``history_attention`` ``(batch, HISTORY_LENGTH)``.
        Dropout and id dropout act only with ``training=True``.
    """
    single, multi = split_fields(fields)
    if list(fields) != single + multi:
        raise ValueError(f"multi-valued fields must come last. Received: {list(fields)}")
    history = HISTORY_FIELD in fields
    if history and (fields[-1] != HISTORY_FIELD or MOVIE_ID not in single):
        raise ValueError(f"{HISTORY_FIELD} must come last, with {MOVIE_ID}. Received: {fields}")
    missing = [f for f in fields if f not in vocab_sizes]
    if missing:
        raise ValueError(f"vocabulary sizes missing for fields {missing}")
    sizes = [int(vocab_sizes[f]) for f in single]
    bags = [f for f in multi if f != HISTORY_FIELD]  # embedded as means
    regularizer = keras.regularizers.L2(config.l2_embedding) if config.l2_embedding else None
    ids_input = keras.Input(shape=(len(single),), dtype="int32", name=SINGLE_INPUT)
    bag_inputs = {
        f: keras.Input(
            shape=(HISTORY_LENGTH if f == HISTORY_FIELD else None,), dtype="int32", name=f
        )
        for f in multi
    }
    ids = IdDropout(
        config.oov_rate,
        [[single.index(f) for f in group if f in single] for group in OOV_GROUPS],
        seed=seed + 4,
        name="oov_dropout",
    )(ids_input)

    def embed(dim: int, initializer: object, name: str) -> list[keras.KerasTensor]:
        """[(batch, S, dim), then (batch, 1, dim) per bag]: single-valued fields from one
        table, then each bag's mean (the linear weights, dim 1, go unregularised)."""
        kwargs = {"embeddings_initializer": initializer}
        if dim > 1:
            kwargs["embeddings_regularizer"] = regularizer
        parts = [FieldEmbedding(sizes, dim, name=name, **kwargs)(ids)]
        for f in bags:
            bag = BagEmbedding(int(vocab_sizes[f]), dim, name=f"{name}_{f}", **kwargs)
            parts.append(bag(bag_inputs[f]))
        return parts

    vectors = embed(
        config.embedding_dim, keras.initializers.RandomNormal(stddev=0.01, seed=seed), "embedding"
    )
    weights = embed(1, "zeros", "linear")
    outputs = {}
    if history:
        watched = HistoryAttention(
            int(vocab_sizes[HISTORY_FIELD]),
            config.embedding_dim,
            HISTORY_LENGTH,
            embeddings_initializer=keras.initializers.RandomNormal(stddev=0.01, seed=seed + 5),
            embeddings_regularizer=regularizer,
            name="history",
        )
        movie = vectors[0][:, single.index(MOVIE_ID), :]  # (batch, k): the candidate's m
        vector, weight, outputs[OUTPUT_HISTORY_ATTENTION] = watched(
            [movie, bag_inputs[HISTORY_FIELD]]
        )
        vectors.append(vector)
        weights.append(weight)

    def joined(parts: list[keras.KerasTensor]) -> keras.KerasTensor:
        return parts[0] if len(parts) == 1 else keras.layers.Concatenate(axis=1)(parts)

    embeddings = joined(vectors)  # (batch, F, k)
    linear_terms = keras.layers.Reshape((len(fields),), name="linear_terms")(
        joined(weights)
    )  # (batch, F): w_{x_f}
    pairs = PairwiseInteraction(jit_compile_training=True, name="pairwise")(
        embeddings
    )  # (batch, P, k)
    pooling = AttentionPooling(
        attention_factor=config.attention_factor,
        l2_attention=config.l2_attention,
        use_attention=config.use_attention,
        kernel_initializer=keras.initializers.GlorotUniform(seed=seed + 1),
        jit_compile_training=True,
        projection_initializer="zeros" if config.fm_init else None,
        scale_by_pairs=config.fm_init,
        pair_bias=config.pair_bias,
        l2_pair_bias=config.l2_pair_bias,
        name="attention",
    )
    pooled, attention = pooling(pairs)  # (batch, k), (batch, P)

    # p: one projection shared by the pooled vector (the logit) and each pair (its contribution)
    projection = keras.layers.Dense(
        1,
        use_bias=False,
        kernel_initializer=keras.initializers.GlorotUniform(seed=seed + 2),
        name="projection",
    )
    dropped = keras.layers.Dropout(config.dropout, seed=seed + 3, name="dropout")(pooled)
    interaction = projection(dropped)  # (batch, 1)
    logit, bias = LogitSum(name="logit")([linear_terms, interaction])  # (batch,), (batch,)
    probability = keras.layers.Activation("sigmoid", name=OUTPUT_PROBABILITY)(logit)  # (batch,)

    num_pairs = len(fields) * (len(fields) - 1) // 2
    pair_scores = keras.layers.Reshape((num_pairs,), name="pair_scores")(
        projection(pairs)
    )  # (batch, P): p^T (v_i ⊙ v_j)
    scale = pooling.pair_scale(num_pairs)
    if scale != 1.0:  # the pooled vector carries the factor P, so each pair's term does too
        pair_scores = keras.layers.Rescaling(scale, name="pair_scale")(pair_scores)
    contribution = keras.layers.Multiply(name=OUTPUT_CONTRIBUTION)([attention, pair_scores])

    return keras.Model(
        inputs={SINGLE_INPUT: ids_input, **bag_inputs},
        outputs={
            OUTPUT_PROBABILITY: probability,
            OUTPUT_ATTENTION: attention,
            OUTPUT_CONTRIBUTION: contribution,
            OUTPUT_BIAS: bias,
            OUTPUT_LINEAR: linear_terms,
            OUTPUT_LOGIT: logit,
            **outputs,
        },
        name="afm",
    )


def probability_model(afm: keras.Model) -> keras.Model:
    """The same layers and weights with only the probability output: what training fits."""
    return keras.Model(afm.input, afm.output[OUTPUT_PROBABILITY], name="afm_probability")
