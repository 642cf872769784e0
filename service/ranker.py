"""The rank signatures' computation in NumPy, from the version's own weights.

A TensorFlow call costs a fixed ~0.4-1 ms here (the Python call into the runtime and ~160
small graph ops) whatever its size, while the arithmetic of ranking 100 candidates is a few
hundred thousand multiply-adds. ``Ranker`` does that arithmetic with NumPy on the weights of
the version's ``rank_weights`` signature and the rows of its ``items`` table (both described
in ``model/contract.py``): the formula of ``model/rank.py``, float32 throughout, with the
user x movie pairs' products regrouped (``Ranker._cross``). ``service.scorer.load_model``
checks it against the version's ``rank_explain`` signature before using it (to 1e-5) and
serves the version through TensorFlow otherwise.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from model import contract


class Ranker:
    """The six explain outputs of N candidates of B users, as ``contract.SIGNATURE_RANK_EXPLAIN``.

    Args:
        fields: the version's field set.
        weights: the ``rank_weights`` signature's outputs, as NumPy arrays.
        vocabularies: each user field's training values; value i has id i + 1 (0: unknown).
    """

    def __init__(
        self,
        fields: Sequence[str],
        weights: Mapping[str, np.ndarray],
        vocabularies: Mapping[str, Sequence[str]],
    ) -> None:
        user_fields, item_fields = contract.rank_sides(tuple(fields))
        offsets = weights[contract.OUTPUT_USER_OFFSETS]
        self._rows = {  # user field -> raw value -> row of the field table
            f: {value: int(offsets[n]) + i + 1 for i, value in enumerate(vocabularies[f])}
            for n, f in enumerate(user_fields)
        }
        self._unknown = [int(offsets[n]) for n in range(len(user_fields))]
        table = weights[contract.OUTPUT_FIELD_TABLE]
        self._k = table.shape[1] - 1
        self._vectors, self._linear = table[:, : self._k], table[:, self._k]
        kernel = weights[contract.OUTPUT_PAIR_KERNEL]  # (k, t + 1): [W | p]
        self._w, self._p = np.ascontiguousarray(kernel[:, :-1]), np.ascontiguousarray(kernel[:, -1])
        self._hidden_bias = weights[contract.OUTPUT_ATTENTION_BIAS]
        self._hidden_projection = weights[contract.OUTPUT_ATTENTION_PROJECTION]
        self._scale = np.float32(weights[contract.OUTPUT_PAIR_SCALE])
        self._bias = np.float32(weights[contract.OUTPUT_BIAS])
        self._attention = bool(weights[contract.OUTPUT_USES_ATTENTION])

        # Pair columns here: user pairs, user x movie pairs (movie field major, see _cross),
        # movie pairs; ``_back`` puts them into ``pairs(fields)`` order.
        self._user_fields, self._i = user_fields, len(item_fields)
        user_pairs = contract.pairs(user_fields)
        self._left = [user_fields.index(a) for a, _ in user_pairs]
        self._right = [user_fields.index(b) for _, b in user_pairs]
        self._item_pairs = len(contract.pairs(item_fields))
        cross = [(a, b) for b in item_fields for a in user_fields]
        every = contract.pairs(tuple(fields))
        order = [every.index(p) for p in (*user_pairs, *cross, *contract.pairs(item_fields))]
        self._pair_bias = weights[contract.OUTPUT_PAIR_BIAS][order]
        self._back = np.argsort(order)

    def explain(
        self,
        users: Mapping[str, Sequence[str]],
        user_index: np.ndarray,
        items: np.ndarray,
        item_index: np.ndarray,
    ) -> dict[str, np.ndarray]:
        """``users``: each user field -> (B,) raw values; ``user_index``: (N,) each
        candidate's user row; ``items``: the ``items`` signature's table; ``item_index``:
        (N,) each candidate's row in it. Returns the explain outputs by their contract names."""
        k, i = self._k, self._i
        rows = np.array(  # (B, U) rows of the field table
            [
                [self._rows[f].get(value, unknown) for value in users[f]]
                for f, unknown in zip(self._user_fields, self._unknown, strict=True)
            ],
            dtype=np.intp,
        ).T
        user_vectors, user_linear = self._vectors[rows], self._linear[rows]  # (B, U, k), (B, U)
        user_scores, user_terms = self._pair_scores(
            user_vectors[:, self._left] * user_vectors[:, self._right]
        )

        picked = items[item_index]  # (N, width): the table's layout, model/contract.py
        item_vectors = picked[:, : i * k].reshape(-1, i, k)
        item_linear = picked[:, i * k : i * k + i]
        item_scores = picked[:, i * k + i : i * k + i + self._item_pairs]
        item_terms = picked[:, i * k + i + self._item_pairs :]

        cross_scores, cross_terms = self._cross(user_vectors, user_index, item_vectors)
        terms = np.concatenate([user_terms[user_index], cross_terms, item_terms], axis=1)
        if self._attention:
            scores = np.concatenate([user_scores[user_index], cross_scores, item_scores], 1)
            scores += self._pair_bias
            scores = np.exp(scores - scores.max(axis=1, keepdims=True))
            attention = scores / scores.sum(axis=1, keepdims=True)
        else:  # the FM ablation: every weight 1
            attention = np.ones_like(terms)
        contribution = attention * terms * self._scale

        linear = np.concatenate([user_linear[user_index], item_linear], axis=1)  # (N, F)
        logit = self._bias + linear.sum(axis=1) + contribution.sum(axis=1)
        return {
            contract.OUTPUT_PROBABILITY: 1 / (1 + np.exp(-logit)),
            contract.OUTPUT_ATTENTION: attention[:, self._back],
            contract.OUTPUT_CONTRIBUTION: contribution[:, self._back],
            contract.OUTPUT_BIAS: np.full(len(logit), self._bias, np.float32),
            contract.OUTPUT_LINEAR: linear,
            contract.OUTPUT_LOGIT: logit,
        }

    def _cross(
        self, user_vectors: np.ndarray, user_index: np.ndarray, item_vectors: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """(N, I*U) attention scores without c and projections of the user x movie pairs,
        movie field major.

        (u ⊙ v)^T W = v^T (u[:, None] * W): each user's vectors are folded into W and p once,
        and each candidate costs one (I, k) @ (k, U*t) product. Forming the N * U * I product
        vectors first made the whole ranker 0.9 ms instead of 0.6 ms at 1,000 candidates with
        eight fields (timeit).
        """
        n, i, k = item_vectors.shape
        users, u, _ = user_vectors.shape
        t = self._w.shape[1]
        by_dim = user_vectors.transpose(0, 2, 1)  # (B, k, U)
        folded_w = (by_dim[:, :, :, None] * self._w[None, :, None, :]).reshape(users, k, u * t)
        folded_p = by_dim * self._p[None, :, None]  # (B, k, U)
        # Candidate-major rows (candidate, movie field), written run by run of candidates
        # of one user (one run per request in a merged call) straight into the outputs.
        flat = item_vectors.reshape(-1, k)  # (N * I, k)
        hidden = np.empty((n * i, u * t), np.float32)
        terms = np.empty((n * i, u), np.float32)
        cuts = np.flatnonzero(np.diff(user_index)) + 1
        for start, stop in zip([0, *cuts], [*cuts, n], strict=True):
            if start == stop:  # no candidates
                continue
            rows, user = slice(start * i, stop * i), user_index[start]
            np.matmul(flat[rows], folded_w[user], out=hidden[rows])
            np.matmul(flat[rows], folded_p[user], out=terms[rows])
        return self._scores(hidden.reshape(n, i * u, t)), terms.reshape(n, i * u)

    def _pair_scores(self, products: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(n, p) attention scores without c and (n, p) projections p^T x of the pairs'
        products (n, p, k), as ``AttentionPooling.network_scores``."""
        n, p, k = products.shape
        flat = products.reshape(-1, k)
        hidden = (flat @ self._w).reshape(n, p, self._w.shape[1])
        return self._scores(hidden), (flat @ self._p).reshape(n, p)

    def _scores(self, hidden: np.ndarray) -> np.ndarray:
        """(n, p) h^T ReLU(hidden + b) from the pairs' W^T x (n, p, t), in place; zeros
        without attention (unused then)."""
        if not self._attention:
            return np.zeros(hidden.shape[:2], np.float32)
        hidden += self._hidden_bias
        np.maximum(hidden, 0, out=hidden)
        return hidden @ self._hidden_projection
