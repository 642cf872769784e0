"""The rank signatures' computation: the user's side once per user, the rest per candidate.

In one ranking request every candidate shares the user. Of the AFM's terms

    logit = w0 + sum_f w_f + s * sum_ij a_ij p^T (v_i ⊙ v_j)
    a_ij  = softmax over the pairs of h^T ReLU(W (v_i ⊙ v_j) + b) + c_ij

(s = P with ``fm_init``, see ``AttentionPooling``) the user fields' linear terms and, for each
pair of two user fields, the product v_i ⊙ v_j, its attention score and its projection
p^T (v_i ⊙ v_j) are the same for every candidate: 10 of the 15 pairs with the seed fields, 10
of 28 with all eight. They are computed once per user row and gathered per candidate
(``user_index``); only pairs that involve a movie field are computed per candidate. The
softmax still runs over all P pairs of each candidate, so every output equals the explain
signature's for the same rows (float32 rounding apart; tested to 1e-5).

Each candidate's interaction term is taken as s * sum_ij a_ij (p^T (v_i ⊙ v_j)), the sum of
its pairs' contributions, rather than p^T of the pooled vector: the same number, and one
matmul gives both the attention network's hidden layer and the projection.

The user's lookups (five strings instead of five per candidate) and the user pairs' attention
network drop out of the per-candidate work: measured in ``benchmarks/serve_latency.py``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import keras
import numpy as np
import tensorflow as tf

from model.afm import split_fields
from model.contract import (
    MULTI_VALUED,
    OUTPUT_ATTENTION,
    OUTPUT_BIAS,
    OUTPUT_CONTRIBUTION,
    OUTPUT_LINEAR,
    OUTPUT_LOGIT,
    OUTPUT_PROBABILITY,
    pairs,
    rank_sides,
)

Encode = Callable[[str, tf.Tensor], tf.Tensor]
"""(field, (n,) raw strings) -> int32 ids: (n,) for a single-valued field, (n, L) padded for
a multi-valued one (the export's StringLookups)."""


def rank_outputs(
    model: keras.Model,
    fields: Sequence[str],
    encode: Encode,
    users: Mapping[str, tf.Tensor],
    items: Mapping[str, tf.Tensor],
    user_index: tf.Tensor,
) -> dict[str, tf.Tensor]:
    """The explain signature's six outputs for N candidates of B users.

    Args:
        model: the trained dict-output AFM of ``model.afm.build_afm`` for ``fields``.
        fields: the model's field set.
        encode: raw strings to the ids the model was trained on.
        users: each user field -> ``(B,)`` raw strings, one row per user.
        items: each movie field -> ``(N,)`` raw strings, one row per candidate.
        user_index: ``(N,)`` int32, the row in ``users`` of each candidate's user.

    Returns:
        ``probability`` (N,), ``attention`` and ``contribution`` (N, P) in ``pairs(fields)``
        order, ``bias`` (N,), ``linear`` (N, F) in field order and ``logit`` (N,).
    """
    user_fields, item_fields = rank_sides(fields)
    single, _ = split_fields(fields)
    k = model.get_layer("embedding").output_dim

    def encoded(side: Sequence[str], raw: Mapping[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        """The side's ids, looked up once for both tables: its single-valued fields stacked
        (n, S') under "", each multi-valued field (n, L) under its name."""
        ids = {f: encode(f, raw[f]) for f in side if f in MULTI_VALUED}
        return {"": tf.stack([encode(f, raw[f]) for f in side if f not in MULTI_VALUED], 1), **ids}

    def embed(name: str, side: Sequence[str], ids: Mapping[str, tf.Tensor]) -> tf.Tensor:
        """(n, len(side), dim) from table ``name``: one gather, then each bag's mean."""
        table = model.get_layer(name)
        offsets = [table.offsets[single.index(f)] for f in side if f not in MULTI_VALUED]
        parts = [tf.gather(table.embeddings, ids[""] + tf.constant(offsets, tf.int32))]
        parts += [model.get_layer(f"{name}_{f}")(ids[f]) for f in side if f in MULTI_VALUED]
        return parts[0] if len(parts) == 1 else tf.concat(parts, axis=1)

    user_ids, item_ids = encoded(user_fields, users), encoded(item_fields, items)
    user_vectors = embed("embedding", user_fields, user_ids)  # (B, U, k)
    item_vectors = embed("embedding", item_fields, item_ids)  # (N, I, k)
    user_linear = embed("linear", user_fields, user_ids)[:, :, 0]  # (B, U)
    item_linear = embed("linear", item_fields, item_ids)[:, :, 0]  # (N, I)

    # Pair columns: the user pairs first, then the candidate pairs; ``order`` maps them back.
    all_pairs = pairs(tuple(fields))
    index = {f: i for i, f in enumerate(fields)}
    user_pairs = [p for p in all_pairs if p[1] in user_fields]
    candidate_pairs = [p for p in all_pairs if p[1] not in user_fields]
    order = [all_pairs.index(p) for p in (*user_pairs, *candidate_pairs)]

    # (N, F, k): each candidate's user vectors beside its movie's
    vectors = tf.concat([tf.gather(user_vectors, user_index), item_vectors], axis=1)
    user_scores, user_terms = _pair_scores(model, _products(user_vectors, user_pairs, index), k)
    item_scores, item_terms = _pair_scores(model, _products(vectors, candidate_pairs, index), k)
    # (N, P) in ``order``: a' and p^T (v_i ⊙ v_j)
    scores = tf.concat([tf.gather(user_scores, user_index), item_scores], axis=1)
    terms = tf.concat([tf.gather(user_terms, user_index), item_terms], axis=1)

    attention_layer = model.get_layer("attention")
    if attention_layer.use_attention:
        if attention_layer.pair_bias:
            scores += tf.gather(attention_layer.attention_pair_bias, order)
        attention = tf.nn.softmax(scores, axis=-1)
    else:  # the FM ablation: every weight 1
        attention = tf.ones_like(terms)
    contribution = attention * terms * attention_layer.pair_scale(len(all_pairs))

    bias = tf.zeros_like(item_linear[:, 0]) + model.get_layer("logit").bias  # (N,)
    linear = tf.concat([tf.gather(user_linear, user_index), item_linear], axis=1)  # (N, F)
    logit = bias + tf.reduce_sum(linear, axis=1) + tf.reduce_sum(contribution, axis=1)
    back = np.argsort(order)  # column j of ``pairs(fields)`` is column back[j] here
    return {
        OUTPUT_PROBABILITY: tf.sigmoid(logit),
        OUTPUT_ATTENTION: tf.gather(attention, back, axis=1),
        OUTPUT_CONTRIBUTION: tf.gather(contribution, back, axis=1),
        OUTPUT_BIAS: bias,
        OUTPUT_LINEAR: linear,
        OUTPUT_LOGIT: logit,
    }


def _products(
    vectors: tf.Tensor, field_pairs: Sequence[tuple[str, str]], index: Mapping[str, int]
) -> tf.Tensor:
    """(n, len(field_pairs), k): v_i ⊙ v_j of each pair, from ``vectors`` (n, fields, k)."""
    left = tf.gather(vectors, [index[a] for a, _ in field_pairs], axis=1)
    right = tf.gather(vectors, [index[b] for _, b in field_pairs], axis=1)
    return left * right


def _pair_scores(model: keras.Model, products: tf.Tensor, k: int) -> tuple[tf.Tensor, tf.Tensor]:
    """((n, p) attention scores h^T ReLU(W x + b) without c, (n, p) projections p^T x).

    One matmul of the (n * p, k) rows with [W | p] gives both; without attention the scores
    are zeros (unused)."""
    count = products.shape[1]
    flat = tf.reshape(products, (-1, k))
    attention_layer = model.get_layer("attention")
    projection = model.get_layer("projection").kernel  # (k, 1)
    if not attention_layer.use_attention:
        terms = tf.reshape(tf.matmul(flat, projection), (-1, count))
        return tf.zeros_like(terms), terms
    t = attention_layer.attention_factor
    both = tf.matmul(flat, tf.concat([attention_layer.attention_kernel, projection], axis=1))
    hidden = tf.nn.relu(both[:, :t] + attention_layer.attention_bias)
    scores = tf.reshape(tf.matmul(hidden, attention_layer.attention_projection), (-1, count))
    return scores, tf.reshape(both[:, t], (-1, count))
