"""AFM's scores and explanations in NumPy, a pure function of the weights a version exports.

``NumpyScorer`` computes the ``explain`` signature's outputs from raw strings, with the arrays
of the version's ``weights`` signature and its training vocabularies (both described in
``model/contracts/export_format.py``), float32 throughout:

    logit = w0 + sum_f w_f + s * sum_ij a_ij p^T (v_i ⊙ v_j)
    a_ij  = softmax over the pairs of h^T ReLU(W (v_i ⊙ v_j) + b) + c_ij    (1 without attention)

It imports NumPy only, so the service scores without TensorFlow: a TensorFlow call costs a
fixed overhead (the Python call into the runtime and ~160 small graph ops) whatever its size,
while ranking 100 candidates is a few hundred thousand multiply-adds.

Many terms depend on one side only. ``item_table`` computes each movie's side once per movie
table: its fields' vectors and linear terms and, for each pair of two movie fields, its
attention score before c and its projection p^T (v_i ⊙ v_j). ``score`` and ``explain``
compute each user's side once per call, and per candidate only the pairs of a user field and
a movie field (5 of 15 pairs with the seed fields, 15 of 28 with all eight); the softmax still
runs over all P pairs. A candidate's interaction term is s * sum_ij a_ij (p^T (v_i ⊙ v_j)),
the sum of its pairs' contributions: p^T of the pooled vector, regrouped.

The watched movies (``HISTORY_FIELD``) are a user's feature whose [v | w] depends on the
candidate: per call, each user's watched movies are looked up once, and each candidate's
attention over them (keyed by its movie vector) pools them into one more movie-side field, so
it pairs with the user fields in the same folded product and with each movie field apart.

Arrays are pair-major, (pairs, candidates): the softmax over a candidate's pairs, and every
element-wise step before it, then run along rows of N candidates instead of rows of 15 or 28
pairs, where NumPy spends more on each row than on its elements.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType

import numpy as np

from model.contracts import export_format

_NO_FIELDS: Mapping[str, str] = MappingProxyType({})


@dataclass(frozen=True, eq=False)
class ItemTable:
    """One movie table's side of the model: one row per movie, the last an unknown movie's
    (every movie field out of vocabulary). Built by ``NumpyScorer.item_table``.

    ``movies`` is the table it was built from; ``known`` flags the rows whose movie id is in
    the training vocabulary. ``rows`` maps a requested integer movie id to its row, so a
    request's ids are looked up as the integers they arrive as, not through strings.
    ``vectors`` (rows, I, k + 1): each movie field's vector with a 1 appended, which picks up
    the attention network's bias in the same matrix product as W. ``rest`` (rows, I + 2 *
    movie pairs): the linear terms, then the movie pairs' attention scores without c and their
    projections. Candidates are gathered as whole rows (``np.take``), cheaper than columns.
    """

    movies: Mapping[str, Mapping[str, str]]
    known: np.ndarray  # bool (rows,)
    rows: Mapping[int, int]
    vectors: np.ndarray  # float32 (rows, I, k + 1)
    rest: np.ndarray  # float32 (rows, I + 2 * movie pairs)

    def index(self, movie_ids: Sequence[int]) -> np.ndarray:
        """(len(movie_ids),) int32: each id's row; an id not in the table gets the last row."""
        unknown = len(self.known) - 1
        rows = map(self.rows.get, movie_ids, itertools.repeat(unknown))
        return np.fromiter(rows, np.int32, len(movie_ids))


class NumpyScorer:
    """The explain outputs of N candidates of B users, as ``export_format.SIGNATURE_EXPLAIN``.

    Args:
        fields: the version's field set, user fields first (``export_format.rank_sides``).
        weights: the outputs of the ``export_format.SIGNATURE_WEIGHTS`` signature, as NumPy
            arrays.
        vocabularies: each field's training values; value i has id i + 1, anything else 0.
    """

    def __init__(
        self,
        fields: Sequence[str],
        weights: Mapping[str, np.ndarray],
        vocabularies: Mapping[str, Sequence[str]],
    ) -> None:
        self.fields: tuple[str, ...] = tuple(fields)
        user_fields, item_fields = export_format.rank_sides(self.fields)
        self._history = export_format.HISTORY_FIELD in item_fields
        item_fields = [f for f in item_fields if f != export_format.HISTORY_FIELD]
        single = [f for f in self.fields if f not in export_format.MULTI_VALUED]
        _check(self.fields, single, weights)

        def array(name: str) -> np.ndarray:
            return np.asarray(weights[name], np.float32)

        field_offsets = np.asarray(weights[export_format.OUTPUT_FIELD_OFFSETS]).tolist()
        offsets = dict(zip(single, field_offsets, strict=True))  # single-valued field -> row
        table = array(export_format.OUTPUT_FIELD_TABLE)  # (rows, k + 1): [v | w]
        self._k = k = table.shape[1] - 1
        self._vectors, self._linear = table[:, :k], table[:, k]
        self._rows = {  # user field -> raw value -> row of the field table
            f: {value: offsets[f] + i + 1 for i, value in enumerate(vocabularies[f])}
            for f in user_fields
        }
        self._unknown = [offsets[f] for f in user_fields]
        self._ids = {f: {v: i + 1 for i, v in enumerate(vocabularies[f])} for f in item_fields}
        self._tables = {  # movie field -> (ids, k + 1): [v | w] of each id
            f: (
                array(export_format.OUTPUT_BAG_TABLES[f])
                if f in export_format.MULTI_VALUED
                else table[offsets[f] : offsets[f] + len(vocabularies[f]) + 1]
            )
            for f in item_fields
        }
        self._attention = bool(weights[export_format.OUTPUT_USES_ATTENTION])
        kernel = array(export_format.OUTPUT_ATTENTION_KERNEL).reshape(k, -1)  # W^T (k, t)
        projection = array(export_format.OUTPUT_PROJECTION).reshape(k, 1)  # p
        self._kernel = np.concatenate([kernel, projection], axis=1)  # (k, t + 1): [W^T | p]
        self._t = kernel.shape[1]
        self._hidden_bias = array(export_format.OUTPUT_ATTENTION_BIAS)  # b (t,)
        # A user field's column of the folded kernel: [W^T | p]^T (u ⊙ v) + [b; 0], with v's
        # appended 1 picking up [b; 0] (``ItemTable.vectors``).
        self._bias_column = np.append(self._hidden_bias, 0).astype(np.float32)
        self._hidden_projection = array(export_format.OUTPUT_ATTENTION_PROJECTION).reshape(1, -1)
        self._scale = np.float32(weights[export_format.OUTPUT_PAIR_SCALE])
        self._bias = np.float32(weights[export_format.OUTPUT_BIAS])
        if self._history:
            watched = export_format.HISTORY_FIELD
            self._watched_ids = {v: i + 1 for i, v in enumerate(vocabularies[watched])}
            self._watched_table = array(export_format.OUTPUT_BAG_TABLES[watched])  # [u | w]
            self._query = array(export_format.OUTPUT_HISTORY_QUERY)  # q (k,)
            self._recency = array(export_format.OUTPUT_HISTORY_RECENCY)  # r (HISTORY_LENGTH,)
            self._movie = item_fields.index(export_format.MOVIE_ID)

        # Pair rows here: user pairs, user x movie pairs (user field major; the watched
        # movies count as the last movie field), movie pairs, then each movie field with the
        # watched movies; ``_back`` puts them into ``pairs(fields)`` order.
        self._user_fields, self._item_fields, self._i = user_fields, item_fields, len(item_fields)
        user_pairs, item_pairs = export_format.pairs(user_fields), export_format.pairs(item_fields)
        self._user_sides = _sides(user_fields, user_pairs)
        self._item_sides = _sides(item_fields, item_pairs)
        self._item_pairs = len(item_pairs)
        watched = [export_format.HISTORY_FIELD] if self._history else []
        cross = [(a, b) for a in user_fields for b in (*item_fields, *watched)]
        history_pairs = [(a, b) for b in watched for a in item_fields]
        every = export_format.pairs(self.fields)
        order = [every.index(p) for p in (*user_pairs, *cross, *item_pairs, *history_pairs)]
        self._pair_bias = array(export_format.OUTPUT_PAIR_BIAS)[order][:, None]  # c (P, 1)
        self._back = np.argsort(order)

    def item_table(self, movies: Mapping[str, Mapping[str, str]]) -> ItemTable:
        """The movie side of ``movies`` (id string -> raw movie fields; a missing field is
        ``""``), then of every vocabulary movie id ``movies`` lacks (its other fields
        unknown), then of an unknown movie. An id that does not read as an integer ("012",
        "x") cannot be requested: its row is kept, but ``ItemTable.index`` never returns it."""
        known_ids = self._ids[export_format.MOVIE_ID]
        ids = [*movies, *(movie for movie in known_ids if movie not in movies)]
        sides = np.stack(  # (M, I, k + 1): each movie field's [v | w]
            [self._embed(f, _movie_values(movies, ids, f)) for f in self._item_fields],
            axis=1,
        )
        k = self._k
        linear = sides[:, :, k].copy()  # (M, I)
        sides[:, :, k] = 1.0
        rest = [linear]
        if self._item_pairs:  # none with one movie field
            left, right = self._item_sides
            rest += self._pair_scores(sides[:, left, :k] * sides[:, right, :k])
        return ItemTable(
            movies=movies,
            known=np.array([movie in known_ids for movie in ids] + [False]),
            rows={int(movie): row for row, movie in enumerate(ids) if requestable_id(movie)},
            vectors=sides,
            rest=np.concatenate(rest, axis=1),
        )

    def score(
        self,
        users: Mapping[str, Sequence[str]],
        user_index: np.ndarray,
        items: ItemTable,
        item_index: np.ndarray,
    ) -> np.ndarray:
        """The click probabilities alone, float32 (N,); arguments as ``explain``."""
        weights, total, terms, linear, _ = self._pairs(users, user_index, items, item_index)
        pooled = np.einsum("pn,pn->n", weights, terms) / total
        return _sigmoid(self._bias + linear.sum(axis=0) + self._scale * pooled)

    def explain(
        self,
        users: Mapping[str, Sequence[str]],
        user_index: np.ndarray,
        items: ItemTable,
        item_index: np.ndarray,
    ) -> dict[str, np.ndarray]:
        """The explain outputs by their contract names: ``probability`` (N,), ``attention``
        and ``contribution`` (N, P) in ``pairs(fields)`` order, ``bias`` (N,), ``linear``
        (N, F) in field order and ``logit`` (N,); with the watched movies also
        ``history_attention`` (N, HISTORY_LENGTH).

        Args:
            users: each of ``export_format.user_inputs(fields)`` -> (B,) raw strings, one row
                per user.
            user_index: (N,) int32, each candidate's user row.
            items: the movie table's ``item_table``.
            item_index: (N,) int32, each candidate's row of ``items`` (``ItemTable.index``).
        """
        weights, total, terms, linear, watched = self._pairs(users, user_index, items, item_index)
        attention = weights / total
        contribution = attention * terms * self._scale
        logit = self._bias + linear.sum(axis=0) + contribution.sum(axis=0)
        history = {} if watched is None else {export_format.OUTPUT_HISTORY_ATTENTION: watched}
        return {
            export_format.OUTPUT_PROBABILITY: _sigmoid(logit),
            export_format.OUTPUT_ATTENTION: attention.T[:, self._back],
            export_format.OUTPUT_CONTRIBUTION: contribution.T[:, self._back],
            export_format.OUTPUT_BIAS: np.full(len(logit), self._bias, np.float32),
            export_format.OUTPUT_LINEAR: linear.T,
            export_format.OUTPUT_LOGIT: logit,
            **history,
        }

    def _embed(self, field: str, values: Sequence[str]) -> np.ndarray:
        """(n, k + 1): [v | w] of a movie field's raw values; a multi-valued field's is the
        mean over its non-empty parts, an unknown part counting as id 0, no part as one id 0
        (as ``bag_ids`` and ``BagEmbedding``)."""
        ids, table = self._ids[field], self._tables[field]
        if field not in export_format.MULTI_VALUED:
            return table[[ids.get(value, 0) for value in values]]
        distinct = {joined: row for row, joined in enumerate(dict.fromkeys(values))}  # few
        counts = np.zeros((len(distinct), len(table)), np.float32)  # each id's count
        for row, joined in enumerate(distinct):
            for part in export_format.split_values(field, joined) or [""]:
                counts[row, ids.get(part, 0)] += 1
        means = (counts @ table) / counts.sum(axis=1, keepdims=True)
        return means[[distinct[joined] for joined in values]]

    def _pairs(
        self,
        users: Mapping[str, Sequence[str]],
        user_index: np.ndarray,
        items: ItemTable,
        item_index: np.ndarray,
    ) -> tuple[np.ndarray, np.ndarray | float, np.ndarray, np.ndarray, np.ndarray | None]:
        """Pair-major parts of the logit: (P, N) attention weights before normalising,
        their (N,) totals, the (P, N) projections p^T (v_i ⊙ v_j), the (F, N) linear terms;
        and the (N, HISTORY_LENGTH) attention over the watched movies (None without)."""
        k, t, i = self._k, self._t, self._i
        rows = np.array(  # (B, U) rows of the field table
            [
                [self._rows[f].get(value, unknown) for value in users[f]]
                for f, unknown in zip(self._user_fields, self._unknown, strict=True)
            ],
            dtype=np.intp,
        ).T
        user_vectors, user_linear = self._vectors[rows], self._linear[rows]  # (B, U, k), (B, U)
        left, right = self._user_sides
        user_scores, user_terms = self._pair_scores(user_vectors[:, left] * user_vectors[:, right])
        u, n, pu = len(self._user_fields), len(item_index), len(left)
        vectors = np.take(items.vectors, item_index, axis=0)  # (N, I, k + 1)
        rest = np.take(items.rest, item_index, axis=0).T  # (I + 2 * movie pairs, N)
        runs = [(0, slice(0, n))] if len(rows) == 1 else _runs(user_index)
        watched = beta = None
        if self._history:  # one more movie-side field, (N, k + 1): [v | w]
            watched, beta = self._watched(users[export_format.HISTORY_FIELD], runs, vectors)
            history_scores, history_terms = self._pair_scores(
                vectors[:, :, :k] * watched[:, None, :k]
            )  # (N, I) each: the movie fields x watched pairs
            linear_watched = watched[:, k].copy()
            watched[:, k] = 1.0
            vectors = np.concatenate([vectors, watched[:, None, :]], axis=1)
            i += 1
        # The user x movie pairs: W (u ⊙ v) = (u[:, None] * W^T)^T v, and p likewise. Each
        # user's vectors are folded into [W^T | p] once, and one (U * (t + 1), k + 1) @
        # (k + 1, N * I) product per user gives its candidates' hidden layers (the bias
        # included) and projections, columns in (candidate, movie field) order: no N * U * I
        # product vectors, and rows gathered whole.
        folded = np.empty((len(rows), u, t + 1, k + 1), np.float32)
        folded[..., :k] = user_vectors[:, :, None, :] * self._kernel.T
        folded[..., k] = self._bias_column
        folded = folded.reshape(len(rows), u * (t + 1), k + 1)
        if len(runs) == 1:  # one user
            product = np.matmul(folded[runs[0][0]], vectors.reshape(n * i, k + 1).T)
        else:
            product = np.empty((u * (t + 1), n * i), np.float32)
            for user, run in runs:
                part = vectors[run].reshape(-1, k + 1).T
                product[:, run.start * i : run.stop * i] = np.matmul(folded[user], part)
        product = product.reshape(u, t + 1, n * i)  # [hidden (t); projection] per user field
        history_pairs = self._i if self._history else 0
        scores = np.empty((pu + u * i + self._item_pairs + history_pairs, n), np.float32)
        terms = np.empty_like(scores)
        cross = slice(pu, pu + u * i)
        movie_pairs = slice(cross.stop, cross.stop + self._item_pairs)
        if self._attention:
            hidden = np.maximum(product[:, :t], 0, out=product[:, :t])
            _pair_major(scores[cross], np.matmul(self._hidden_projection, hidden)[:, 0], i)
        _pair_major(terms[cross], product[:, t], i)
        linear = np.empty((u + i, n), np.float32)
        for user, run in runs:
            scores[:pu, run] = user_scores[user, :, None]
            terms[:pu, run] = user_terms[user, :, None]
            linear[:u, run] = user_linear[user, :, None]
        linear[u : u + self._i] = rest[: self._i]
        if self._item_pairs:
            scores[movie_pairs] = rest[self._i : self._i + self._item_pairs]
            terms[movie_pairs] = rest[self._i + self._item_pairs :]
        if self._history:
            linear[-1] = linear_watched
            scores[movie_pairs.stop :] = history_scores.T
            terms[movie_pairs.stop :] = history_terms.T
        if not self._attention:  # the FM ablation: every weight 1
            return np.ones_like(terms), 1.0, terms, linear, beta
        scores += self._pair_bias
        scores -= scores.max(axis=0)
        np.exp(scores, out=scores)
        return scores, scores.sum(axis=0), terms, linear, beta

    def _watched(
        self, joined: Sequence[str], runs: list[tuple[int, slice]], vectors: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Each candidate's [v | w] of the watched movies, (N, k + 1), and its attention over
        them, (N, HISTORY_LENGTH): beta = softmax(q^T (m ⊙ u_j) + r_j) over the present
        parts, m the candidate's movie vector (``vectors``' movie_id column)."""
        k, n = self._k, len(vectors)
        ids = _history_ids(joined, self._watched_ids)  # (B, HISTORY_LENGTH), -1 past the end
        keys = vectors[:, self._movie, :k] * self._query  # (N, k): m ⊙ q
        beta = np.empty((n, export_format.HISTORY_LENGTH), np.float32)
        pooled = np.empty((n, k + 1), np.float32)
        for user, run in runs:
            present = ids[user] >= 0
            rows = self._watched_table[ids[user][present]]  # (H, k + 1): [u_j | w_j]
            logits = keys[run] @ rows[:, :k].T + self._recency[present]  # (n_run, H)
            logits -= logits.max(axis=1, keepdims=True)
            weights = np.exp(logits)
            weights /= weights.sum(axis=1, keepdims=True)
            beta[run] = 0.0
            beta[run][:, present] = weights
            pooled[run] = weights @ rows
        return pooled, beta

    def _pair_scores(self, products: np.ndarray) -> list[np.ndarray]:
        """[(n, p) attention scores without c, (n, p) projections p^T x] of pairs' products
        (n, p, k), from one matmul with [W^T | p]; without attention the scores are zeros."""
        n, p, k = products.shape
        projected = np.matmul(products.reshape(n * p, k), self._kernel)  # (n * p, t + 1)
        terms = projected[:, self._t].reshape(n, p)
        if not self._attention:
            return [np.zeros_like(terms), terms]
        hidden = np.maximum(projected[:, : self._t] + self._hidden_bias, 0)
        return [np.matmul(hidden, self._hidden_projection[0]).reshape(n, p), terms]


def _check(fields: tuple[str, ...], single: list[str], weights: Mapping[str, np.ndarray]) -> None:
    """ValueError unless ``weights`` holds every array ``fields`` need, of the right length."""
    missing = [name for name in export_format.weights_outputs(fields) if name not in weights]
    if missing:
        raise ValueError(f"the weights lack {missing}")
    if len(weights[export_format.OUTPUT_FIELD_OFFSETS]) != len(single):
        raise ValueError(
            f"{export_format.OUTPUT_FIELD_OFFSETS} must have one offset per field of {single}"
        )
    if len(weights[export_format.OUTPUT_PAIR_BIAS]) != len(export_format.pairs(fields)):
        raise ValueError(
            f"{export_format.OUTPUT_PAIR_BIAS} must have one offset per pair of {fields}"
        )


def _sides(
    side: Sequence[str], side_pairs: Sequence[tuple[str, str]]
) -> tuple[list[int], list[int]]:
    """Each pair's left and right field, as positions in ``side``."""
    return [side.index(a) for a, _ in side_pairs], [side.index(b) for _, b in side_pairs]


def _movie_values(
    movies: Mapping[str, Mapping[str, str]], movie_ids: Sequence[str], field: str
) -> list[str]:
    """Each movie's raw value of a movie field (``""`` where unknown), then the unknown
    movie's ``""``."""
    if field == export_format.MOVIE_ID:
        return [*movie_ids, ""]
    return [*(movies.get(movie, _NO_FIELDS).get(field, "") for movie in movie_ids), ""]


def _history_ids(joined: Sequence[str], vocabulary: Mapping[str, int]) -> np.ndarray:
    """(B, HISTORY_LENGTH) int: each row's first HISTORY_LENGTH parts' ids by position (an
    unknown part 0), -1 at empty parts and past the end; no part at all is the single id 0."""
    length, separator = (
        export_format.HISTORY_LENGTH,
        export_format.MULTI_VALUED[export_format.HISTORY_FIELD],
    )
    ids = np.full((len(joined), length), -1, np.intp)
    for row, value in enumerate(joined):
        for j, part in enumerate(value.split(separator)[:length]):
            if part:
                ids[row, j] = vocabulary.get(part, 0)
        if (ids[row] < 0).all():
            ids[row, 0] = 0
    return ids


def requestable_id(movie_id: str) -> bool:
    """Whether ``movie_id`` is how a requested integer id reads: "12", not "012" or "x"."""
    return movie_id.isdecimal() and movie_id == str(int(movie_id))


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
