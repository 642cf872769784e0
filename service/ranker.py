"""The rank signatures' computation in NumPy, from the version's own weights.

A TensorFlow call costs a fixed ~0.4-1 ms here (the Python call into the runtime and ~160
small graph ops) whatever its size, while the arithmetic of ranking 100 candidates is a few
hundred thousand multiply-adds. ``Ranker`` does that arithmetic with NumPy on the weights of
the version's ``rank_weights`` signature and the rows of its ``items`` table (both described
in ``model/contracts/export_format.py``): the formula of ``model/export/rank.py``, float32
throughout, with the user x movie pairs' products regrouped (``Ranker._pairs``).
``service.scorer.load_model`` checks it against the version's ``rank_explain`` signature before
using it (to 1e-5) and serves the version through TensorFlow otherwise.

Arrays are pair-major, (pairs, candidates): the softmax over a candidate's pairs, and every
element-wise step before it, then run along rows of N candidates instead of rows of 15 or 28
pairs, where NumPy spends more on each row than on its elements. With ``Ranker.score``
computing the probabilities alone, that took scoring 1,000 candidates with eight fields from
0.92 to 0.43 ms (timeit, two BLAS threads).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from model.contracts import export_format


@dataclass(frozen=True)
class ItemRows:
    """An ``items`` table laid out for the ranker (``Ranker.item_rows``), once per table.

    ``vectors`` (M, I, k + 1): each movie field's vector with a 1 appended, which picks up
    the attention network's bias in the same matrix product. ``rest`` (M, I + 2 * item
    pairs): the linear terms, then the movie pairs' attention scores and projections.
    Candidates are gathered as whole rows (``np.take``): 7 µs for 1,000 candidates with
    eight fields, against 28 µs for the same values gathered as columns (timeit).
    """

    vectors: np.ndarray
    rest: np.ndarray


class Ranker:
    """The six explain outputs of N candidates of B users, as
    ``export_format.SIGNATURE_RANK_EXPLAIN``.

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
        user_fields, item_fields = export_format.rank_sides(tuple(fields))
        offsets = weights[export_format.OUTPUT_USER_OFFSETS]
        self._rows = {  # user field -> raw value -> row of the field table
            f: {value: int(offsets[n]) + i + 1 for i, value in enumerate(vocabularies[f])}
            for n, f in enumerate(user_fields)
        }
        self._unknown = [int(offsets[n]) for n in range(len(user_fields))]
        table = weights[export_format.OUTPUT_FIELD_TABLE]
        self._k = table.shape[1] - 1
        self._vectors, self._linear = table[:, : self._k], table[:, self._k]
        self._kernel = weights[export_format.OUTPUT_PAIR_KERNEL]  # (k, t + 1): [W | p]
        self._t = self._kernel.shape[1] - 1
        self._hidden_bias = weights[export_format.OUTPUT_ATTENTION_BIAS]  # (t,)
        # A user field's column of the folded kernel: [W | p]^T (u ⊙ v) + [b; 0], with v's
        # appended 1 picking up [b; 0] (``ItemRows``).
        self._bias_column = np.append(self._hidden_bias, 0).astype(np.float32)
        self._hidden_projection = weights[export_format.OUTPUT_ATTENTION_PROJECTION].reshape(1, -1)
        self._scale = np.float32(weights[export_format.OUTPUT_PAIR_SCALE])
        self._bias = np.float32(weights[export_format.OUTPUT_BIAS])
        self._attention = bool(weights[export_format.OUTPUT_USES_ATTENTION])

        # Pair rows here: user pairs, user x movie pairs (user field major), movie pairs;
        # ``_back`` puts them into ``pairs(fields)`` order.
        self._user_fields, self._i = user_fields, len(item_fields)
        user_pairs = export_format.pairs(user_fields)
        self._left = [user_fields.index(a) for a, _ in user_pairs]
        self._right = [user_fields.index(b) for _, b in user_pairs]
        self._item_pairs = len(export_format.pairs(item_fields))
        cross = [(a, b) for a in user_fields for b in item_fields]
        every = export_format.pairs(tuple(fields))
        order = [every.index(p) for p in (*user_pairs, *cross, *export_format.pairs(item_fields))]
        self._pair_bias = weights[export_format.OUTPUT_PAIR_BIAS][order][:, None]  # (P, 1)
        self._back = np.argsort(order)

    def item_rows(self, items: np.ndarray) -> ItemRows:
        """The ``items`` signature's table (M, width), laid out for ``score`` and ``explain``."""
        k, i = self._k, self._i
        vectors = np.ones((len(items), i, k + 1), np.float32)
        vectors[:, :, :k] = items[:, : i * k].reshape(len(items), i, k)
        return ItemRows(vectors, np.ascontiguousarray(items[:, i * k :]))

    def score(
        self,
        users: Mapping[str, Sequence[str]],
        user_index: np.ndarray,
        items: ItemRows,
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
        items: ItemRows,
        item_index: np.ndarray,
    ) -> dict[str, np.ndarray]:
        """``users``: each user field -> (B,) raw values; ``user_index``: (N,) each
        candidate's user row; ``items``: the ``items`` signature's table as ``item_rows``
        lays it out; ``item_index``: (N,) each candidate's row in it. Returns the explain outputs
        by their contract names."""
        weights, total, terms, linear = self._pairs(users, user_index, items, item_index)
        attention = weights / total
        contribution = attention * terms * self._scale
        logit = self._bias + linear.sum(axis=0) + contribution.sum(axis=0)
        return {
            export_format.OUTPUT_PROBABILITY: _sigmoid(logit),
            export_format.OUTPUT_ATTENTION: attention.T[:, self._back],
            export_format.OUTPUT_CONTRIBUTION: contribution.T[:, self._back],
            export_format.OUTPUT_BIAS: np.full(len(logit), self._bias, np.float32),
            export_format.OUTPUT_LINEAR: linear.T,
            export_format.OUTPUT_LOGIT: logit,
        }

    def _pairs(
        self,
        users: Mapping[str, Sequence[str]],
        user_index: np.ndarray,
        items: ItemRows,
        item_index: np.ndarray,
    ) -> tuple[np.ndarray, np.ndarray | float, np.ndarray, np.ndarray]:
        """Pair-major parts of the logit: (P, N) attention weights before normalising,
        their (N,) totals, the (P, N) projections p^T (v_i ⊙ v_j), the (F, N) linear terms."""
        k, t, i = self._k, self._t, self._i
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
        u, n, pu = len(self._user_fields), len(item_index), len(self._left)
        vectors = np.take(items.vectors, item_index, axis=0)  # (N, I, k + 1)
        rest = np.take(items.rest, item_index, axis=0).T  # (I + 2 * item pairs, N)
        # The user x movie pairs: W^T (u ⊙ v) = (u[:, None] * W)^T v, and p likewise. Each
        # user's vectors are folded into [W | p] once, and one (U * (t + 1), k + 1) @
        # (k + 1, N * I) product per user gives its candidates' hidden layers (the bias
        # included) and projections, columns in (candidate, movie field) order. Forming the
        # N * U * I product vectors first made the ranker 0.9 instead of 0.6 ms at 1,000
        # candidates with eight fields; one product over the gathered rows, transposed, takes
        # 60 µs there against 112 µs for the same values gathered as columns (timeit).
        folded = np.empty((len(rows), u, t + 1, k + 1), np.float32)
        folded[..., :k] = user_vectors[:, :, None, :] * self._kernel.T
        folded[..., k] = self._bias_column
        folded = folded.reshape(len(rows), u * (t + 1), k + 1)
        runs = [(0, slice(0, n))] if len(rows) == 1 else _runs(user_index)
        if len(runs) == 1:  # one user
            product = np.matmul(folded[runs[0][0]], vectors.reshape(n * i, k + 1).T)
        else:
            product = np.empty((u * (t + 1), n * i), np.float32)
            for user, run in runs:
                part = vectors[run].reshape(-1, k + 1).T
                product[:, run.start * i : run.stop * i] = np.matmul(folded[user], part)
        product = product.reshape(u, t + 1, n * i)  # [hidden (t); projection] per user field
        scores = np.empty((pu + u * i + self._item_pairs, n), np.float32)
        terms = np.empty_like(scores)
        cross = slice(pu, pu + u * i)
        if self._attention:
            hidden = np.maximum(product[:, :t], 0, out=product[:, :t])
            _pair_major(scores[cross], np.matmul(self._hidden_projection, hidden)[:, 0], i)
        _pair_major(terms[cross], product[:, t], i)
        linear = np.empty((u + i, n), np.float32)
        for user, run in runs:
            scores[:pu, run] = user_scores[:, user, None]
            terms[:pu, run] = user_terms[:, user, None]
            linear[:u, run] = user_linear[user, :, None]
        linear[u:] = rest[:i]
        if self._item_pairs:  # none with one movie field
            scores[cross.stop :] = rest[i : i + self._item_pairs]
            terms[cross.stop :] = rest[i + self._item_pairs :]
        if not self._attention:  # the FM ablation: every weight 1
            return np.ones_like(terms), 1.0, terms, linear
        scores += self._pair_bias
        scores -= scores.max(axis=0)
        np.exp(scores, out=scores)
        return scores, scores.sum(axis=0), terms, linear

    def _user_pairs(self, products: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(Pu, B) attention scores without c and projections p^T x of each user's pairs'
        products (B, Pu, k), as ``AttentionPooling.network_scores``."""
        projected = np.matmul(products, self._kernel)  # (B, Pu, t + 1)
        terms = projected[:, :, self._t].T
        if not self._attention:
            return np.zeros_like(terms), terms
        hidden = np.maximum(projected[:, :, : self._t] + self._hidden_bias, 0)
        return np.matmul(hidden, self._hidden_projection[0]).T, terms


def _pair_major(out: np.ndarray, values: np.ndarray, i: int) -> None:
    """``values`` (U, N * I), columns in (candidate, movie field) order, into ``out``
    (U * I, N): one row per user x movie pair, user field major."""
    if i == 1:  # the same order
        out[...] = values
        return
    u, n = len(values), out.shape[1]
    out.reshape(u, i, n)[...] = values.reshape(u, n, i).transpose(0, 2, 1)


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
