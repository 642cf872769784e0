"""The rank signatures' computation: each movie's side once per feature set, each user's once
per request, and only the user x movie pairs per candidate.

Of the AFM's terms

    logit = w0 + sum_f w_f + s * sum_ij a_ij p^T (v_i ⊙ v_j)
    a_ij  = softmax over the pairs of h^T ReLU(W (v_i ⊙ v_j) + b) + c_ij

(s = P with ``fm_init``, see ``AttentionPooling``) many depend on one side only. The movie
fields' vectors and linear terms and, for each pair of two movie fields, its attention
score a'_ij - c_ij and projection p^T (v_i ⊙ v_j) depend only on the movie: ``item_table``
computes them for a whole catalogue, which a server keeps while its feature set and model
version stay the same. The user fields' are the same for every candidate of a request:
``rank_outputs`` computes them once per user row and gathers them per candidate
(``user_index``), gathers each candidate's movie row (``item_index``), and computes only
the pairs of a user field and a movie field per candidate (5 of 15 pairs with the seed
fields, 15 of 28 with all eight), with no string lookups for the movies. The softmax still
runs over all P pairs of each candidate, so every output equals the explain signature's for
the same rows (float32 rounding apart; tested to 1e-5).

Each candidate's interaction term is taken as s * sum_ij a_ij (p^T (v_i ⊙ v_j)), the sum of
its pairs' contributions, rather than p^T of the pooled vector: the same number. The
attention scores and projections come from ``AttentionPooling.network_scores``, the layer's
own network, in one matmul.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import keras
import numpy as np
import tensorflow as tf

from model.contracts.export_format import (
    MULTI_VALUED,
    OUTPUT_ATTENTION,
    OUTPUT_ATTENTION_BIAS,
    OUTPUT_ATTENTION_PROJECTION,
    OUTPUT_BIAS,
    OUTPUT_CONTRIBUTION,
    OUTPUT_FIELD_TABLE,
    OUTPUT_LINEAR,
    OUTPUT_LOGIT,
    OUTPUT_PAIR_BIAS,
    OUTPUT_PAIR_KERNEL,
    OUTPUT_PAIR_SCALE,
    OUTPUT_PROBABILITY,
    OUTPUT_USER_OFFSETS,
    OUTPUT_USES_ATTENTION,
    pairs,
    rank_sides,
)
from model.network.afm import split_fields

Encode = Callable[[str, tf.Tensor], tf.Tensor]
"""(field, (n,) raw strings) -> int32 ids: (n,) for a single-valued field, (n, L) padded for
a multi-valued one (the export's StringLookups)."""


def item_table(
    model: keras.Model, fields: Sequence[str], encode: Encode, items: Mapping[str, tf.Tensor]
) -> tf.Tensor:
    """(M, width) float32: each movie's side of the model, one row per movie.

    A row holds the movie fields' vectors v_i (I * k), their linear terms w_i (I) and, for
    each pair of two movie fields, its attention score without c and its projection
    p^T (v_i ⊙ v_j) (2 * I(I-1)/2). ``rank_outputs`` reads rows by index; the layout is
    part of the contract (``model/contracts/export_format.py``), for rankers outside TensorFlow.

    Args:
        model: the trained dict-output AFM of ``model.network.afm.build_afm`` for ``fields``.
        fields: the model's field set.
        encode: raw strings to the ids the model was trained on.
        items: each movie field -> ``(M,)`` raw strings.
    """
    _, item_fields = rank_sides(fields)
    ids = _encoded(encode, item_fields, items)
    vectors = _embed(model, fields, "embedding", item_fields, ids)  # (M, I, k)
    linear = _embed(model, fields, "linear", item_fields, ids)[:, :, 0]  # (M, I)
    parts = [tf.reshape(vectors, (tf.shape(vectors)[0], -1)), linear]
    item_pairs = pairs(tuple(item_fields))
    if item_pairs:
        index = {f: i for i, f in enumerate(item_fields)}
        parts += _pair_scores(model, _products(vectors, item_pairs, index))
    return tf.concat(parts, axis=1)


def rank_outputs(
    model: keras.Model,
    fields: Sequence[str],
    encode: Encode,
    users: Mapping[str, tf.Tensor],
    user_index: tf.Tensor,
    items: tf.Tensor,
    item_index: tf.Tensor,
) -> dict[str, tf.Tensor]:
    """The explain signature's six outputs for N candidates of B users.

    Args:
        model: the trained dict-output AFM of ``model.network.afm.build_afm`` for ``fields``.
        fields: the model's field set.
        encode: raw strings to the ids the model was trained on.
        users: each user field -> ``(B,)`` raw strings, one row per user.
        user_index: ``(N,)`` int32, the row in ``users`` of each candidate's user.
        items: ``(M, width)``, ``item_table`` of the movies.
        item_index: ``(N,)`` int32, the row in ``items`` of each candidate's movie.

    Returns:
        ``probability`` (N,), ``attention`` and ``contribution`` (N, P) in ``pairs(fields)``
        order, ``bias`` (N,), ``linear`` (N, F) in field order and ``logit`` (N,).
    """
    user_fields, item_fields = rank_sides(fields)
    k = model.get_layer("embedding").output_dim
    ids = _encoded(encode, user_fields, users)
    user_vectors = _embed(model, fields, "embedding", user_fields, ids)  # (B, U, k)
    user_linear = _embed(model, fields, "linear", user_fields, ids)[:, :, 0]  # (B, U)

    # The candidates' rows of the item table, split back into its parts.
    u, i = len(user_fields), len(item_fields)
    rows = tf.gather(items, item_index)  # (N, width)
    item_vectors = tf.reshape(rows[:, : i * k], (-1, i, k))  # (N, I, k)
    item_linear = rows[:, i * k : i * k + i]  # (N, I)
    item_pairs = pairs(tuple(item_fields))
    item_scores = rows[:, i * k + i : i * k + i + len(item_pairs)]
    item_terms = rows[:, i * k + i + len(item_pairs) :]

    # Pair columns: user pairs, user x movie pairs (user field major), movie pairs.
    user_pairs = pairs(tuple(user_fields))
    cross_pairs = [(a, b) for a in user_fields for b in item_fields]
    all_pairs = pairs(tuple(fields))
    order = [all_pairs.index(p) for p in (*user_pairs, *cross_pairs, *item_pairs)]

    user_index_of = {f: n for n, f in enumerate(user_fields)}
    user_scores, user_terms = _pair_scores(
        model, _products(user_vectors, user_pairs, user_index_of)
    )  # (B, U(U-1)/2) each
    cross = tf.gather(user_vectors, user_index)[:, :, None, :] * item_vectors[:, None, :, :]
    cross_scores, cross_terms = _pair_scores(model, tf.reshape(cross, (-1, u * i, k)))
    # (N, P) in ``order``: a' without c, and p^T (v_i ⊙ v_j)
    scores = tf.concat([tf.gather(user_scores, user_index), cross_scores, item_scores], axis=1)
    terms = tf.concat([tf.gather(user_terms, user_index), cross_terms, item_terms], axis=1)

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


def rank_weights(model: keras.Model, fields: Sequence[str]) -> dict[str, tf.Tensor]:
    """The weights ``rank_outputs`` uses besides the item table, for a ranker outside
    TensorFlow (``contract.SIGNATURE_RANK_WEIGHTS``, which says what each one is)."""
    user_fields, _ = rank_sides(fields)
    single, _ = split_fields(fields)
    embedding, attention = model.get_layer("embedding"), model.get_layer("attention")
    projection = model.get_layer("projection").kernel  # (k, 1)
    num_pairs = len(pairs(tuple(fields)))
    if attention.use_attention:
        kernel = tf.concat([attention.attention_kernel, projection], axis=1)
        hidden_bias = tf.convert_to_tensor(attention.attention_bias)
        hidden_projection = attention.attention_projection[:, 0]
    else:  # t = 0: the kernel is p alone
        kernel, hidden_bias, hidden_projection = (
            tf.convert_to_tensor(projection), tf.zeros([0]), tf.zeros([0])
        )  # fmt: skip
    if attention.use_attention and attention.pair_bias:
        pair_bias = tf.convert_to_tensor(attention.attention_pair_bias)
    else:
        pair_bias = tf.zeros([num_pairs])
    return {
        OUTPUT_FIELD_TABLE: tf.concat(
            [embedding.embeddings, model.get_layer("linear").embeddings], axis=1
        ),
        OUTPUT_USER_OFFSETS: tf.constant(
            [embedding.offsets[single.index(f)] for f in user_fields], tf.int32
        ),
        OUTPUT_PAIR_KERNEL: kernel,
        OUTPUT_ATTENTION_BIAS: hidden_bias,
        OUTPUT_ATTENTION_PROJECTION: hidden_projection,
        OUTPUT_PAIR_BIAS: pair_bias,
        OUTPUT_PAIR_SCALE: tf.constant(attention.pair_scale(num_pairs), tf.float32),
        OUTPUT_BIAS: tf.convert_to_tensor(model.get_layer("logit").bias)[0],
        OUTPUT_USES_ATTENTION: tf.constant(attention.use_attention),
    }


def _encoded(encode: Encode, side: Sequence[str], raw: Mapping[str, tf.Tensor]) -> dict:
    """The side's ids, looked up once for both tables: its single-valued fields stacked
    (n, S') under "", each multi-valued field (n, L) under its name."""
    ids = {f: encode(f, raw[f]) for f in side if f in MULTI_VALUED}
    return {"": tf.stack([encode(f, raw[f]) for f in side if f not in MULTI_VALUED], 1), **ids}


def _embed(
    model: keras.Model,
    fields: Sequence[str],
    name: str,
    side: Sequence[str],
    ids: Mapping[str, tf.Tensor],
) -> tf.Tensor:
    """(n, len(side), dim) from table ``name``: one gather, then each bag's mean."""
    single, _ = split_fields(fields)
    table = model.get_layer(name)
    offsets = [table.offsets[single.index(f)] for f in side if f not in MULTI_VALUED]
    parts = [tf.gather(table.embeddings, ids[""] + tf.constant(offsets, tf.int32))]
    parts += [model.get_layer(f"{name}_{f}")(ids[f]) for f in side if f in MULTI_VALUED]
    return parts[0] if len(parts) == 1 else tf.concat(parts, axis=1)


def _products(
    vectors: tf.Tensor, field_pairs: Sequence[tuple[str, str]], index: Mapping[str, int]
) -> tf.Tensor:
    """(n, len(field_pairs), k): v_i ⊙ v_j of each pair, from ``vectors`` (n, fields, k)."""
    left = tf.gather(vectors, [index[a] for a, _ in field_pairs], axis=1)
    right = tf.gather(vectors, [index[b] for _, b in field_pairs], axis=1)
    return left * right


def _pair_scores(model: keras.Model, products: tf.Tensor) -> list[tf.Tensor]:
    """((n, p) attention scores without c, (n, p) projections p^T x) of the pairs'
    products (n, p, k); without attention the scores are zeros (unused)."""
    projection = model.get_layer("projection").kernel  # (k, 1)
    attention_layer = model.get_layer("attention")
    if attention_layer.use_attention:
        return list(attention_layer.network_scores(products, projection))
    count, k = products.shape[1], products.shape[2]
    terms = tf.reshape(tf.matmul(tf.reshape(products, (-1, k)), projection), (-1, count))
    return [tf.zeros_like(terms), terms]
