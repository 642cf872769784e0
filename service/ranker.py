"""The rank signatures' computation in NumPy, from the version's own weights.

A TensorFlow call costs a fixed ~0.4-1 ms here (the Python call into the runtime and ~160
small graph ops) whatever its size, while the arithmetic of ranking 100 candidates is a few
hundred thousand multiply-adds. ``Ranker`` does that arithmetic with NumPy on the weights of
the version's ``rank_weights`` signature and the rows of its ``items`` table (both described
in ``model/contract.py``): the formula of ``model/rank.py``, float32 throughout, with the
user x movie pairs' products regrouped (``Ranker._pairs``). ``service.scorer.load_model``
checks it against the version's ``rank_explain`` signature before using it (to 1e-5) and
serves the version through TensorFlow otherwise.

Arrays are pair-major, (pairs, candidates): the softmax over a candidate's pairs, and every
element-wise step before it, then run along rows of N candidates instead of rows of 15 or 28
pairs, where NumPy spends more on each row than on its elements. With ``Ranker.score``
computing the probabilities alone, that took scoring 1,000 candidates with eight fields from
0.92 to 0.43 ms (timeit, two BLAS threads).
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
        self._hidden_bias = weights[contract.OUTPUT_ATTENTION_BIAS][:, None]  # (t, 1)
        self._hidden_projection = weights[contract.OUTPUT_ATTENTION_PROJECTION]
        self._scale = np.float32(weights[contract.OUTPUT_PAIR_SCALE])
        self._bias = np.float32(weights[contract.OUTPUT_BIAS])
        self._attention = bool(weights[contract.OUTPUT_USES_ATTENTION])

        # Pair rows here: user pairs, user x movie pairs (movie field major, see _pairs),
        # movie pairs; ``_back`` puts them into ``pairs(fields)`` order.
        self._user_fields, self._i = user_fields, len(item_fields)
        user_pairs = contract.pairs(user_fields)
        self._left = [user_fields.index(a) for a, _ in user_pairs]
        self._right = [user_fields.index(b) for _, b in user_pairs]
        self._item_pairs = len(contract.pairs(item_fields))
        cross = [(a, b) for b in item_fields for a in user_fields]
        every = contract.pairs(tuple(fields))
        order = [every.index(p) for p in (*user_pairs, *cross, *contract.pairs(item_fields))]
        self._pair_bias = weights[contract.OUTPUT_PAIR_BIAS][order][:, None]  # (P, 1)
        self._back = np.argsort(order)

    def score(
        self,
        users: Mapping[str, Sequence[str]],
        user_index: np.ndarray,
        items: np.ndarray,
        item_index: np.ndarray,
    ) -> np.ndarray:
        """The click probabilities alone, float32 [N]; arguments as ``explain``."""
        weights, total, terms, linear = self._pairs(users, user_index, items, item_index)
        pooled = np.einsum("pn,pn->n", weights, terms) / total
        return _sigmoid(self._bias + linear.sum(axis=0) + self._scale * pooled)

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
        weights, total, terms, linear = self._pairs(users, user_index, items, item_index)
        attention = weights / total
        contribution = attention * terms * self._scale
        logit = self._bias + linear.sum(axis=0) + contribution.sum(axis=0)
        return {
            contract.OUTPUT_PROBABILITY: _sigmoid(logit),
            contract.OUTPUT_ATTENTION: attention.T[:, self._back],
            contract.OUTPUT_CONTRIBUTION: contribution.T[:, self._back],
            contract.OUTPUT_BIAS: np.full(len(logit), self._bias, np.float32),
            contract.OUTPUT_LINEAR: linear.T,
            contract.OUTPUT_LOGIT: logit,
        }

    def _pairs(
        self,
        users: Mapping[str, Sequence[str]],
        user_index: np.ndarray,
        items: np.ndarray,
        item_index: np.ndarray,
    ) -> tuple[np.ndarray, np.ndarray | float, np.ndarray, np.ndarray]:
        """Pair-major parts of the logit: (P, N) attention weights before normalising,
        their (N,) totals, the (P, N) projections p^T (v_i ⊙ v_j), the (F, N) linear terms."""
        k, i = self._k, self._i
        rows = np.array(  # (B, U) rows of the field table
            [
                [self._rows[f].get(value, unknown) for value in users[f]]
                for f, unknown in zip(self._user_fields, self._unknown, strict=True)
            ],
            dtype=np.intp,
        ).T
        user_vectors, user_linear = self._vectors[rows], self._linear[rows]  # (B, U, k), (B, U)
        user_scores, user_terms = self._user_pairs(
            user_vectors[:, self._left] * user_vectors[:, self._right]
        )
        picked = items[item_index]  # (N, width): the table's layout, model/contract.py
        u, n, pu = len(self._user_fields), len(item_index), len(self._left)
        cross = slice(pu, pu + i * u)
        scores = np.empty((cross.stop + self._item_pairs, n), np.float32)
        terms = np.empty_like(scores)
        linear = np.empty((u + i, n), np.float32)
        # The user x movie pairs: (u ⊙ v)^T W = (u[:, None] * W)^T v. Each user's vectors are
        # folded into W and p once, and each candidate costs one (U*t, k) @ (k,) product per
        # movie field. Forming the N * U * I product vectors first made the whole ranker
        # 0.9 ms instead of 0.6 ms at 1,000 candidates with eight fields (timeit).
        t = self._w.shape[1]
        folded_w = (user_vectors[:, :, None, :] * self._w.T).reshape(len(rows), u * t, k)
        folded_p = user_vectors * self._p  # (B, U, k)
        hidden = np.empty((i, u * t, n), np.float32)
        cross_terms = terms[cross].reshape(i, u, n)  # movie field major
        for user, run in _runs(user_index):
            scores[:pu, run] = user_scores[:, user, None]
            terms[:pu, run] = user_terms[:, user, None]
            linear[:u, run] = user_linear[user, :, None]
            for f in range(i):
                vectors = picked[run, f * k : (f + 1) * k].T  # (k, run)
                np.matmul(folded_w[user], vectors, out=hidden[f, :, run])
                np.matmul(folded_p[user], vectors, out=cross_terms[f, :, run])
        scores[cross] = self._scores(hidden.reshape(i * u, t, n))
        linear[u:] = picked[:, i * k : i * k + i].T
        pairs = picked[:, i * k + i :].T  # (2 * item pairs, N): scores, then projections
        scores[cross.stop :], terms[cross.stop :] = np.split(pairs, 2)
        if not self._attention:  # the FM ablation: every weight 1
            return np.ones_like(terms), 1.0, terms, linear
        scores += self._pair_bias
        scores -= scores.max(axis=0)
        np.exp(scores, out=scores)
        return scores, scores.sum(axis=0), terms, linear

    def _user_pairs(self, products: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(Pu, B) attention scores without c and projections p^T x of each user's pairs'
        products (B, Pu, k), as ``AttentionPooling.network_scores``."""
        hidden = np.matmul(products, self._w).transpose(1, 2, 0)  # (Pu, t, B)
        return self._scores(hidden), np.matmul(products, self._p).T

    def _scores(self, hidden: np.ndarray) -> np.ndarray:
        """(p, n) h^T ReLU(hidden + b) from the pairs' W^T x (p, t, n), in place; zeros
        without attention (unused then)."""
        if not self._attention:
            return np.zeros((hidden.shape[0], hidden.shape[2]), np.float32)
        hidden += self._hidden_bias
        np.maximum(hidden, 0, out=hidden)
        return np.matmul(self._hidden_projection, hidden)


def _runs(user_index: np.ndarray) -> list[tuple[int, slice]]:
    """(user row, candidates) of each run of consecutive candidates of one user: one run per
    request in a merged call."""
    if not len(user_index):
        return []
    cuts = (np.flatnonzero(user_index[1:] != user_index[:-1]) + 1).tolist()
    starts, stops = [0, *cuts], [*cuts, len(user_index)]
    return [(int(user_index[a]), slice(a, b)) for a, b in zip(starts, stops, strict=True)]


def _sigmoid(logit: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-logit))
