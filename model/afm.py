"""The AFM network as a Keras functional model over integer field ids.

    logit(x)      = w0 + sum_f w_{x_f}  +  p^T sum_{i<j} a_ij (v_i ⊙ v_j)
    probability   = sigmoid(logit)
    contribution_ij = a_ij * p^T (v_i ⊙ v_j)       (sum over pairs = the interaction term)

Strings never reach this model: the exported signatures wrap it with one StringLookup per
field (see ``model/export.py``), and training feeds the same ids from ``PreparedData.encode``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import keras

from model.config import AFMConfig
from model.contract import FIELDS, OUTPUT_ATTENTION, OUTPUT_CONTRIBUTION, OUTPUT_PROBABILITY
from model.layers import AttentionPooling, FieldEmbedding, FieldLinear, PairwiseInteraction

IDS_INPUT = "ids"


def field_sizes(vocab_sizes: Mapping[str, int] | Sequence[int]) -> list[int]:
    """Table sizes in FIELDS order, from a mapping by field name or a list already in order."""
    if isinstance(vocab_sizes, Mapping):
        missing = [f for f in FIELDS if f not in vocab_sizes]
        if missing:
            raise ValueError(f"vocabulary sizes missing for fields {missing}")
        return [int(vocab_sizes[f]) for f in FIELDS]
    sizes = [int(s) for s in vocab_sizes]
    if len(sizes) != len(FIELDS):
        raise ValueError(
            f"expected {len(FIELDS)} vocabulary sizes (one per field), got {len(sizes)}"
        )
    return sizes


def build_afm(
    vocab_sizes: Mapping[str, int] | Sequence[int], config: AFMConfig, seed: int = 42
) -> keras.Model:
    """Build the AFM.

    Args:
        vocab_sizes: ids per field, including the out-of-vocabulary id 0 (so
            ``len(vocabulary) + 1``), by field name or as a list in FIELDS order.
        config: the model's hyperparameters.
        seed: seeds every initializer.

    Returns:
        A model from int ids ``(batch, len(FIELDS))`` in FIELDS order to a dict:
        ``probability`` ``(batch,)``, ``attention`` ``(batch, P)`` and ``contribution``
        ``(batch, P)`` with P = len(PAIRS), columns in PAIRS order. Dropout on the pooled
        vector is active only with ``training=True``.
    """
    sizes = field_sizes(vocab_sizes)
    ids = keras.Input(shape=(len(FIELDS),), dtype="int32", name=IDS_INPUT)
    embeddings = FieldEmbedding(
        sizes,
        config.embedding_dim,
        embeddings_initializer=keras.initializers.RandomNormal(stddev=0.01, seed=seed),
        name="embedding",
    )(ids)  # (batch, F, k)
    linear = FieldLinear(sizes, name="linear")(ids)  # (batch, 1)
    pairs = PairwiseInteraction(jit_compile_training=True, name="pairwise")(
        embeddings
    )  # (batch, P, k)
    pooled, attention = AttentionPooling(
        attention_factor=config.attention_factor,
        l2_attention=config.l2_attention,
        use_attention=config.use_attention,
        kernel_initializer=keras.initializers.GlorotUniform(seed=seed + 1),
        jit_compile_training=True,
        name="attention",
    )(pairs)  # (batch, k), (batch, P)

    # p: one projection shared by the pooled vector (the logit) and each pair (its contribution)
    projection = keras.layers.Dense(
        1,
        use_bias=False,
        kernel_initializer=keras.initializers.GlorotUniform(seed=seed + 2),
        name="projection",
    )
    dropped = keras.layers.Dropout(config.dropout, seed=seed + 3, name="dropout")(pooled)
    interaction = projection(dropped)  # (batch, 1)
    logit = keras.layers.Add(name="logit")([linear, interaction])  # (batch, 1)
    probability = keras.layers.Reshape((), name=OUTPUT_PROBABILITY)(
        keras.layers.Activation("sigmoid", name="sigmoid")(logit)
    )  # (batch,)

    pair_scores = keras.layers.Reshape((len(sizes) * (len(sizes) - 1) // 2,), name="pair_scores")(
        projection(pairs)
    )  # (batch, P): p^T (v_i ⊙ v_j)
    contribution = keras.layers.Multiply(name=OUTPUT_CONTRIBUTION)([attention, pair_scores])

    return keras.Model(
        inputs=ids,
        outputs={
            OUTPUT_PROBABILITY: probability,
            OUTPUT_ATTENTION: attention,
            OUTPUT_CONTRIBUTION: contribution,
        },
        name="afm",
    )


def probability_model(afm: keras.Model) -> keras.Model:
    """The same layers and weights with only the probability output: what training fits."""
    return keras.Model(afm.input, afm.output[OUTPUT_PROBABILITY], name="afm_probability")
