"""One loaded model version, and the scorer that runs its calls off the event loop in batches.

``LoadedModel`` wraps ``<model-dir>/<version>/`` (see ``model/contracts/export_format.py``): it
keeps the
items signature's table of the feature set's movies (built by TensorFlow on the first call
that meets a new movie table), and scores ``Candidates`` (each user's raw fields once, each
candidate's movie id) with it: in NumPy from the version's rank weights (``service/ranker.py``),
or through its rank signatures (``model/export/rank.py``) for a version without them. Its methods
are synchronous and return NumPy.
``Scorer`` runs them on a small dedicated pool, so at most ``threads`` scoring calls run at
once and the event loop keeps serving health checks and Redis reads meanwhile. Requests that
arrive while every thread is busy are merged into one call when a thread frees up. A small
call that finds no call running or queued runs on the event loop instead when it scores in
NumPy (merged with the other such calls of the same loop iteration), or when the server
handles no other request: the hand-off to a thread and back costs ~0.3 ms, more than such a
call.
"""

from __future__ import annotations

import asyncio
import gc
import itertools
import logging
import math
import os
import threading
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any, Protocol, Self, TypeVar

import numpy as np

from model.contracts import export_format
from service.errors import ScoringFailed
from service.ranker import ItemRows, Ranker

log = logging.getLogger(__name__)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's C++ info lines, before import

MAX_BATCH_ROWS = 4096
"""Most rows one merged scoring call takes; a single larger request still runs, alone."""

NUMPY_ROWS = 2000
"""Calls of at most this many rows score in NumPy (``service/ranker.py``), larger ones through
TensorFlow. NumPy is faster alone (eight fields, four merged requests of 1,000 rows: 1.44
against 3.70 ms, timeit), but a TensorFlow call leaves the GIL to the event loop for its
whole length: with eight clients at 1,000 candidates, 581 against 448 req/s with eight
fields (benchmarks/serve_latency.py, variant AFM_NUMPY_RANKER_ROWS=4096)."""


class Rows(Protocol):
    def __getitem__(self, rows: slice, /) -> Self: ...


T = TypeVar("T", bound=Rows)
R = TypeVar("R")


UNKNOWN_VALUE = ""
"""Sent for every feature Redis does not know (a user or movie without features): in no
vocabulary, so the model's out-of-vocabulary value."""

UNKNOWN_MOVIE = -1
"""A movie id no request can carry (ids are >= 0): no movie table or vocabulary has it."""

_NONE: Mapping[str, str] = {}


@dataclass(frozen=True)
class Candidates:
    """One call's rows: each user once, each candidate's movie by id.

    ``users``: each user field -> one raw value per user; ``user_index``: int32, each
    candidate's row in ``users``; ``movie_ids``: each candidate's movie id, as requested (an
    integer; its raw value is its decimal string); ``movies``: the feature set's movie table
    (id string -> raw movie fields), where the other movie fields come from. The ``Scorer``
    merges calls on the same movie table, renumbering their user rows.
    """

    users: Mapping[str, Sequence[str]]
    user_index: np.ndarray
    movie_ids: Sequence[int]
    movies: Mapping[str, Mapping[str, str]]

    def __len__(self) -> int:
        return len(self.movie_ids)

    def value(self, field_name: str, row: int) -> str:
        """Candidate ``row``'s raw value of ``field_name``."""
        if field_name in self.users:
            return self.users[field_name][int(self.user_index[row])]
        return _movie_value(self.movies, str(self.movie_ids[row]), field_name)

    def columns(self, fields: Sequence[str]) -> dict[str, list[str]]:
        """Each field's raw value per candidate: the rows as the contract signatures take them."""
        return {name: [self.value(name, row) for row in range(len(self))] for name in fields}

    def mergeable(self, other: Candidates) -> bool:
        return other.movies is self.movies

    @classmethod
    def concat(cls, parts: Sequence[Candidates]) -> Candidates:
        offsets = np.cumsum([0, *(len(next(iter(p.users.values()))) for p in parts[:-1])])
        return cls(
            users={f: _chain(p.users[f] for p in parts) for f in parts[0].users},
            user_index=np.concatenate(
                [p.user_index + offset for p, offset in zip(parts, offsets, strict=True)]
            ).astype(np.int32),
            movie_ids=_chain(p.movie_ids for p in parts),
            movies=parts[0].movies,
        )


def _chain(lists: Iterable[Sequence[R]]) -> list[R]:
    return list(itertools.chain.from_iterable(lists))


def _movie_value(movies: Mapping[str, Mapping[str, str]], movie_id: str, field_name: str) -> str:
    """Movie ``movie_id``'s raw value of a movie field, from the movie table."""
    if field_name == export_format.MOVIE_ID:
        return movie_id
    return movies.get(movie_id, _NONE).get(field_name, UNKNOWN_VALUE)


@dataclass(frozen=True)
class Scores:
    """A scoring call's click probabilities, and whether the model was trained on each
    candidate's movie id (read from the item table with the same row index)."""

    probability: np.ndarray  # float32 [batch]
    movie_known: np.ndarray  # bool [batch]

    def __getitem__(self, rows: slice) -> Scores:
        return Scores(self.probability[rows], self.movie_known[rows])


@dataclass(frozen=True)
class Explanation:
    """The explain signature's outputs: logit = bias + sum(linear) + sum(contribution); and
    ``movie_known`` as in ``Scores``."""

    probability: np.ndarray  # float32 [batch]
    attention: np.ndarray  # float32 [batch, pairs], rows sum to 1
    contribution: np.ndarray  # float32 [batch, pairs], each pair's term in the logit
    bias: np.ndarray  # float32 [batch], w0
    linear: np.ndarray  # float32 [batch, fields], each field's linear term
    logit: np.ndarray  # float32 [batch]
    movie_known: np.ndarray  # bool [batch]

    def __getitem__(self, rows: slice) -> Explanation:
        return Explanation(
            **{name: getattr(self, name)[rows] for name in EXPLAIN_OUTPUTS},
            movie_known=self.movie_known[rows],
        )


EXPLAIN_OUTPUTS: dict[str, str] = {
    "probability": export_format.OUTPUT_PROBABILITY,
    "attention": export_format.OUTPUT_ATTENTION,
    "contribution": export_format.OUTPUT_CONTRIBUTION,
    "bias": export_format.OUTPUT_BIAS,
    "linear": export_format.OUTPUT_LINEAR,
    "logit": export_format.OUTPUT_LOGIT,
}
"""Explanation attribute -> the explain signature's output it holds."""


@dataclass(frozen=True)
class ItemTable:
    """The items signature's output for one movie table: one row per movie, the last an
    unknown movie's (every movie field out of vocabulary).

    ``rows`` maps a requested movie id (an integer) to its row, and ``known`` flags the rows
    of the movie ids the model was trained on, so a request's ids are looked up as the
    integers they arrive as: at 1,000 candidates 31 µs for rows and flags, against 109 µs
    through their strings (``timeit``).
    """

    movies: Mapping[str, Mapping[str, str]]  # what it was built from (identity: cache key)
    rows: Mapping[int, int]
    known: np.ndarray  # bool (movies + 1,)
    tensor: Any  # tf.Tensor (movies + 1, width)
    ranked: ItemRows | None  # the same laid out for the Ranker, for a version with one

    def index(self, movie_ids: Sequence[int]) -> np.ndarray:
        unknown = len(self.known) - 1
        rows = map(self.rows.get, movie_ids, itertools.repeat(unknown))
        return np.fromiter(rows, np.int32, len(movie_ids))


Indexed = tuple[ItemTable, np.ndarray]
"""An item table and each candidate's row in it (``LoadedModel._rows``)."""


@dataclass(frozen=True)
class LoadedModel:
    """A version's signatures, metadata and training vocabularies (for the *_known flags).

    ``score_fn`` and ``explain_fn`` are the rank signatures (``_ranked``) with ``items_fn``
    the items signature; for a version exported before those existed, ``items_fn`` is None
    and they are the contract's score and explain signatures (``_stacked``). With a
    ``ranker`` (the version has ``rank_weights``), scoring runs in NumPy on the items table
    instead, and TensorFlow only builds that table.
    """

    version: int
    path: Path
    metadata: export_format.ModelMetadata
    fields: tuple[str, ...]
    pairs: tuple[tuple[str, str], ...]
    score_fn: Callable[..., Mapping[str, Any]] = field(repr=False)
    explain_fn: Callable[..., Mapping[str, Any]] = field(repr=False)
    vocabularies: Mapping[str, frozenset[str]] = field(repr=False)
    items_fn: Callable[..., Any] | None = field(repr=False, default=None)
    ranker: Ranker | None = field(repr=False, default=None)
    numpy_rows: int = 0  # calls of at most this many rows score with ``ranker``
    loaded_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))
    # The restored object: signatures hold only weak references to its variables.
    saved_model: Any = field(repr=False, default=None)
    # The item tables of the last two movie tables seen (a feature set switch keeps serving).
    _item_tables: deque[ItemTable] = field(
        repr=False, compare=False, default_factory=lambda: deque(maxlen=2)
    )
    _item_lock: threading.Lock = field(repr=False, compare=False, default_factory=threading.Lock)

    def known(self, field_name: str, values: Sequence[str]) -> list[bool]:
        """Whether each value is in the training vocabulary of ``field_name`` (a multi-valued
        one: every one of its values is, and it has one)."""
        vocabulary = self.vocabularies[field_name]
        if field_name not in export_format.MULTI_VALUED:
            return list(map(vocabulary.__contains__, values))
        return [
            bool(parts) and all(part in vocabulary for part in parts)
            for parts in (export_format.split_values(field_name, value) for value in values)
        ]

    def score(self, candidates: Candidates) -> Scores:
        """Click probabilities and ``movie_known`` flags."""
        rows = self._rows(candidates)
        ranker = self._ranker_for(candidates)
        if ranker is not None:
            probability = self._rank(ranker.score, candidates, rows)
        else:
            outputs = self._call(self.score_fn, candidates, rows)
            probability = outputs[export_format.OUTPUT_PROBABILITY].numpy()
        return Scores(probability, self._movies_known(candidates, rows))

    def explain(self, candidates: Candidates) -> Explanation:
        ranker = self._ranker_for(candidates)
        return (
            self.explain_tensorflow(candidates)
            if ranker is None
            else self._explain(ranker, candidates)
        )

    def explain_tensorflow(self, candidates: Candidates) -> Explanation:
        """``explain`` through the version's signatures, whatever ranks it."""
        rows = self._rows(candidates)
        return self._explained(self._call(self.explain_fn, candidates, rows), candidates, rows)

    def _explain(self, ranker: Ranker, candidates: Candidates) -> Explanation:
        """``explain`` through ``ranker``, whatever the number of rows."""
        rows = self._rows(candidates)
        return self._explained(self._rank(ranker.explain, candidates, rows), candidates, rows)

    def item_table(self, movies: Mapping[str, Mapping[str, str]]) -> ItemTable:
        """The item table of ``movies`` and of every movie id the model knows; built once per
        movie table (~4k movies: a few ms)."""
        with self._item_lock:
            for table in self._item_tables:
                if table.movies is movies:
                    return table
            vocabulary = self.vocabularies[export_format.MOVIE_ID]
            ids = list(movies) + sorted(vocabulary - movies.keys())
            _, item_fields = export_format.rank_sides(self.fields)
            tensor = self.items_fn(
                _strings(
                    [_movie_value(movies, movie, name) for movie in [*ids, UNKNOWN_VALUE]]
                    for name in item_fields
                )
            )
            # a request asks by integer: an id that does not read as one cannot be asked for
            rows_of = {int(movie): row for row, movie in enumerate(ids) if _decimal(movie)}
            known = np.array([movie in vocabulary for movie in ids] + [False])
            ranked = self.ranker.item_rows(tensor.numpy()) if self.ranker else None
            table = ItemTable(movies, rows_of, known, tensor, ranked)
            self._item_tables.append(table)
            return table

    def _rows(self, candidates: Candidates) -> Indexed | None:
        """The item table of the candidates' movie table and each candidate's row in it, for
        a version with an items signature; built once, used for the scores and the flags."""
        if self.items_fn is None:
            return None
        table = self.item_table(candidates.movies)
        return table, table.index(candidates.movie_ids)

    def _movies_known(self, candidates: Candidates, rows: Indexed | None) -> np.ndarray:
        """Whether the model was trained on each candidate's movie id: the item table's
        flags, or the vocabulary for a version without one."""
        if rows is None:
            ids = [str(m) for m in candidates.movie_ids]
            return np.array(self.known(export_format.MOVIE_ID, ids), dtype=bool)
        table, index = rows
        return table.known[index]

    def _explained(
        self,
        outputs: Mapping[str, Any],
        candidates: Candidates,
        rows: Indexed | None,
    ) -> Explanation:
        """The explain outputs (NumPy arrays or tensors) by their contract names."""
        return Explanation(
            **{name: np.asarray(outputs[key]) for name, key in EXPLAIN_OUTPUTS.items()},
            movie_known=self._movies_known(candidates, rows),
        )

    def _call(
        self,
        fn: Callable[..., Mapping[str, Any]],
        candidates: Candidates,
        rows: Indexed | None,
    ) -> Any:
        import tensorflow as tf

        if rows is None:
            return fn(_strings(candidates.columns(self.fields).values()))
        user_fields, _ = export_format.rank_sides(self.fields)
        table, index = rows
        return fn(
            _strings(candidates.users[name] for name in user_fields),
            tf.constant(candidates.user_index, tf.int32),
            table.tensor,
            tf.constant(index, tf.int32),
        )

    def in_numpy(self, rows: int) -> bool:
        """Whether a call of ``rows`` rows scores in NumPy: the version has a ranker and
        ``rows`` is at most ``numpy_rows``."""
        return self.ranker is not None and rows <= self.numpy_rows

    def _ranker_for(self, candidates: Candidates) -> Ranker | None:
        """The NumPy ranker if it scores these rows."""
        return self.ranker if self.in_numpy(len(candidates)) else None

    def _rank(self, method: Callable[..., R], candidates: Candidates, rows: Indexed) -> R:
        """``method`` (``Ranker.score`` or ``Ranker.explain``) of ``candidates``."""
        table, index = rows
        return method(candidates.users, candidates.user_index, table.ranked, index)


def _decimal(movie_id: str) -> bool:
    """Whether ``movie_id`` is how a requested integer id reads: "12", not "012" or "x"."""
    return movie_id.isdecimal() and movie_id == str(int(movie_id))


def _strings(rows: Iterable[Sequence[str]]) -> Any:
    import tensorflow as tf

    return tf.constant(list(rows), tf.string)


def _stacked(signature: Callable[..., Mapping[str, Any]], fields: Sequence[str]) -> Any:
    """``signature`` as a function of one (len(fields), n) string tensor, traced once.

    One tensor conversion and one argument instead of one per field, split again inside the
    graph, and the signature's captured variables resolved once at tracing instead of on
    every call: ~0.1 ms less per call at 1 to 1,000 rows (benchmarks/serve_latency.py).
    """
    import tensorflow as tf

    def call(stacked: tf.Tensor) -> Mapping[str, tf.Tensor]:
        return signature(**dict(zip(fields, tf.unstack(stacked), strict=True)))

    spec = tf.TensorSpec([len(fields), None], tf.string, name="fields")
    return tf.function(call, input_signature=[spec]).get_concrete_function()


def _ranked(signature: Callable[..., Mapping[str, Any]], fields: Sequence[str]) -> Any:
    """A rank signature as a function of (users (U, B) strings, user_index, items,
    item_index), traced once, as ``_stacked``."""
    import tensorflow as tf

    user_fields, _ = export_format.rank_sides(fields)

    def call(users: tf.Tensor, user_index: tf.Tensor, items: tf.Tensor, item_index: tf.Tensor):
        return signature(
            **dict(zip(user_fields, tf.unstack(users), strict=True)),
            **{
                export_format.INPUT_USER_INDEX: user_index,
                export_format.INPUT_ITEMS: items,
                export_format.INPUT_ITEM_INDEX: item_index,
            },
        )

    specs = [
        tf.TensorSpec([len(user_fields), None], tf.string),
        tf.TensorSpec([None], tf.int32),
        tf.TensorSpec([None, None], tf.float32),
        tf.TensorSpec([None], tf.int32),
    ]
    return tf.function(call, input_signature=specs).get_concrete_function()


def _items(signature: Callable[..., Mapping[str, Any]], fields: Sequence[str]) -> Any:
    """The items signature as a function of one (I, movies) string tensor -> the table."""
    _, item_fields = export_format.rank_sides(fields)
    stacked = _stacked(signature, item_fields)
    return lambda rows: stacked(rows)[export_format.OUTPUT_ITEMS]


def _scoring_functions(signatures: Mapping[str, Any], fields: tuple[str, ...]) -> dict[str, Any]:
    """LoadedModel's score_fn, explain_fn and items_fn: the ranking signatures when the
    version has them, else the contract's two."""
    ranking = (
        export_format.SIGNATURE_ITEMS,
        export_format.SIGNATURE_RANK,
        export_format.SIGNATURE_RANK_EXPLAIN,
    )
    if not set(ranking) <= set(signatures):
        return {
            "score_fn": _stacked(signatures[export_format.SIGNATURE_SCORE], fields),
            "explain_fn": _stacked(signatures[export_format.SIGNATURE_EXPLAIN], fields),
            "items_fn": None,
        }
    return {
        "score_fn": _ranked(signatures[export_format.SIGNATURE_RANK], fields),
        "explain_fn": _ranked(signatures[export_format.SIGNATURE_RANK_EXPLAIN], fields),
        "items_fn": _items(signatures[export_format.SIGNATURE_ITEMS], fields),
    }


def load_model(version_dir: Path, numpy_rows: int = NUMPY_ROWS) -> LoadedModel:
    """Load, check and warm one version. Raises on anything that would fail a request later.
    With rank weights in the version, calls of at most ``numpy_rows`` rows score with a
    ``Ranker`` checked against its signatures."""
    import tensorflow as tf

    metadata = export_format.read_metadata(version_dir)  # refuses unknown formats and field sets
    fields = tuple(metadata.fields)
    vocabularies = export_format.read_vocabularies(version_dir, fields)
    loaded = tf.saved_model.load(str(version_dir))
    missing = {export_format.SIGNATURE_SCORE, export_format.SIGNATURE_EXPLAIN} - set(
        loaded.signatures
    )
    if missing:
        raise ValueError(f"SavedModel lacks signature(s) {sorted(missing)}")
    for name in (export_format.SIGNATURE_SCORE, export_format.SIGNATURE_EXPLAIN):
        inputs = set(loaded.signatures[name].structured_input_signature[1])
        if inputs != set(fields):
            raise ValueError(f"signature {name} takes {sorted(inputs)}, metadata says {fields}")
    lacking = set(EXPLAIN_OUTPUTS.values()) - set(
        loaded.signatures[export_format.SIGNATURE_EXPLAIN].structured_outputs
    )
    if lacking:
        raise ValueError(
            f"signature {export_format.SIGNATURE_EXPLAIN} lacks output(s) {sorted(lacking)}: "
            "exported by an older afm-ctr; train a new version"
        )
    model = LoadedModel(
        version=int(version_dir.name),
        path=version_dir,
        metadata=metadata,
        fields=fields,
        pairs=export_format.pairs(fields),
        **_scoring_functions(loaded.signatures, fields),
        vocabularies={name: frozenset(values) for name, values in vocabularies.items()},
        saved_model=loaded,
    )
    _warm(model)
    if numpy_rows and model.items_fn and export_format.SIGNATURE_RANK_WEIGHTS in loaded.signatures:
        weights = loaded.signatures[export_format.SIGNATURE_RANK_WEIGHTS]()
        ranker = Ranker(fields, {k: v.numpy() for k, v in weights.items()}, vocabularies)
        # a fresh item table cache: the tables built so far lack the ranker's layout
        with_ranker = replace(
            model, ranker=ranker, numpy_rows=numpy_rows, _item_tables=deque(maxlen=2)
        )
        model = with_checked_ranker(with_ranker, vocabularies)
        _warm(model)
    return model


def with_checked_ranker(
    model: LoadedModel, vocabularies: Mapping[str, Sequence[str]]
) -> LoadedModel:
    """``model`` if its ranker gives the rank signatures' outputs (to 1e-5) on known and
    unknown users and movies; else the model without it, served through TensorFlow."""
    if model.ranker is None:
        return model
    rows = ranker_check_rows(model.fields, vocabularies)
    expected = model.explain_tensorflow(rows)
    ranked = model._explain(model.ranker, rows)
    worst = max(
        float(np.abs(getattr(ranked, name) - getattr(expected, name)).max())
        for name in EXPLAIN_OUTPUTS
    )
    if worst <= 1e-5:
        return model
    log.warning(
        "version %s: the NumPy ranker differs from the rank signatures by %.2g; "
        "scoring through TensorFlow",
        model.version,
        worst,
    )
    return replace(model, ranker=None)


def ranker_check_rows(
    fields: Sequence[str], vocabularies: Mapping[str, Sequence[str]]
) -> Candidates:
    """The rows ``with_checked_ranker`` compares on: an unknown and a known user, 32 known
    movies (requested by integer id, as requests ask) with known values of every movie field,
    so the table's rows differ, and an unknown movie."""
    users, movies = export_format.rank_sides(tuple(fields))
    ids = [movie for movie in vocabularies[export_format.MOVIE_ID] if _decimal(movie)][:32]
    others = [f for f in movies if f != export_format.MOVIE_ID]
    table = {
        movie: {f: vocabularies[f][n % len(vocabularies[f])] for f in others}
        for n, movie in enumerate(ids)
    }
    return Candidates(
        users={f: [UNKNOWN_VALUE, vocabularies[f][0]] for f in users},
        user_index=np.arange(len(ids) + 1, dtype=np.int32) % 2,
        movie_ids=[*map(int, ids), UNKNOWN_MOVIE],
        movies=table,
    )


def _warm(model: LoadedModel) -> None:
    """Run both signatures once (first calls build kernels) and check the outputs' invariants."""
    users, _ = export_format.rank_sides(model.fields)
    for batch in (1, 64):
        candidates = Candidates(
            users={name: ["", "x"] for name in users},
            user_index=np.arange(batch, dtype=np.int32) % 2,
            movie_ids=[UNKNOWN_MOVIE] * batch,
            movies={},
        )
        probability = model.score(candidates).probability
        explained = model.explain(candidates)
        if probability.shape != (batch,) or not np.all((probability >= 0) & (probability <= 1)):
            raise ValueError(
                f"{export_format.SIGNATURE_SCORE} returned bad probabilities {probability[:3]}"
            )
        if explained.attention.shape != (batch, len(model.pairs)):
            raise ValueError(f"attention has shape {explained.attention.shape}")
        row_sums = explained.attention.sum(axis=1)
        if not all(math.isclose(s, 1.0, abs_tol=1e-3) for s in row_sums.tolist()):
            raise ValueError(f"attention rows sum to {row_sums[:3]}, not 1")


@dataclass
class _Job:
    fn: Callable[[Candidates], Any]
    candidates: Candidates
    rows: int
    done: asyncio.Future


class Scorer:
    """Runs scoring calls on ``threads`` threads, merging calls that queue up meanwhile.

    A call that finds a thread free runs at once, alone: batching never adds waiting at low
    load. Calls that arrive while every thread is busy queue; when a thread frees up, the
    queued calls of the same function (same model version and signature) run as one batch
    of up to ``max_batch_rows`` rows. Each call has a fixed cost (a TensorFlow one ~0.5 ms)
    whatever its size, so under load this serves several requests for the price of one.

    A call of at most ``inline_rows`` rows made while no call is running or queued stays on
    the event loop, no hand-off: at once when ``alone()`` (no other request in the server);
    under load, with ``inline_numpy``, when the caller says it scores in NumPy
    (``LoadedModel.in_numpy``): it then joins the other such calls of the same loop
    iteration, and they run merged (up to ``inline_rows`` rows a call) once the iteration's
    other callbacks have run.
    """

    def __init__(
        self,
        threads: int,
        max_batch_rows: int = MAX_BATCH_ROWS,
        inline_rows: int = 0,
        alone: Callable[[], bool] = lambda: False,
        inline_numpy: bool = False,
    ) -> None:
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="tf-score")
        self._threads = threads
        self._max_batch_rows = max_batch_rows
        self._inline_rows = inline_rows
        self._alone = alone
        self._inline_numpy = inline_numpy
        self._busy = 0
        self._queue: deque[_Job] = deque()
        self._on_loop: list[_Job] = []  # this loop iteration's NumPy calls
        self.calls_total = 0  # scoring calls; read by the metrics collector
        self.requests_total = 0  # calls of run() they served

    async def run(
        self, fn: Callable[[Candidates], T], candidates: Candidates, in_numpy: bool = False
    ) -> T:
        """``fn(candidates)``, computed on the pool, possibly within a larger batch, or on
        the event loop (see ``inline_rows``); ``in_numpy``: ``fn`` scores these rows in
        NumPy."""
        loop = asyncio.get_running_loop()
        if len(candidates) <= self._inline_rows and self._busy == 0 and not self._queue:
            alone = self._alone()
            if in_numpy and self._inline_numpy and not alone:
                job = _Job(fn, candidates, len(candidates), loop.create_future())
                if not self._on_loop:
                    loop.call_soon(self._run_on_loop)
                self._on_loop.append(job)
                return await job.done
            if alone:
                self.calls_total += 1
                self.requests_total += 1
                try:
                    return fn(candidates)
                except Exception as exc:
                    log.error("scoring call failed", exc_info=exc)
                    raise _failure(exc) from exc
        job = _Job(fn, candidates, len(candidates), loop.create_future())
        self._queue.append(job)
        self._dispatch()
        return await job.done

    def shutdown(self) -> None:
        for job in self._queue:
            job.done.cancel()
        self._queue.clear()
        self._pool.shutdown(wait=True, cancel_futures=True)

    def _run_on_loop(self) -> None:
        """The iteration's NumPy calls, merged as the pool's queue is, run here and now."""
        jobs, self._on_loop = deque(self._on_loop), []
        while jobs:
            batch, jobs = _take_batch(jobs, self._inline_rows)
            try:
                result, exc = _call_merged(batch), None
            except Exception as error:
                result, exc = None, error
            self._settle(batch, result, exc)

    def _dispatch(self) -> None:
        loop = asyncio.get_running_loop()
        while self._queue and self._busy < self._threads:
            batch, self._queue = _take_batch(self._queue, self._max_batch_rows)
            if batch:
                self._busy += 1
                running = loop.run_in_executor(self._pool, _call_merged, batch)
                running.add_done_callback(partial(self._finish, batch))

    def _finish(self, batch: list[_Job], running: asyncio.Future) -> None:
        self._busy -= 1
        if running.cancelled():
            for job in batch:
                job.done.cancel()
        else:
            exc = running.exception()
            self._settle(batch, None if exc else running.result(), exc)
        self._dispatch()

    def _settle(self, batch: list[_Job], result: Any, exc: BaseException | None) -> None:
        """Each job's rows of ``result``, or ``exc`` as each one's ScoringFailed."""
        self.calls_total += 1
        self.requests_total += len(batch)
        if exc is not None:
            log.error("scoring call failed", exc_info=exc)
        start = 0
        for job in batch:
            stop = start + job.rows
            if job.done.done():  # cancelled: its client went away
                pass
            elif exc is not None:
                job.done.set_exception(_failure(exc))
            else:
                job.done.set_result(result[start:stop])
            start = stop


def _take_batch(jobs: deque[_Job], max_rows: int) -> tuple[list[_Job], deque[_Job]]:
    """(the oldest live job and every later one of the same function and movie table that
    fits with it, the jobs left)."""
    batch: list[_Job] = []
    rows = 0
    kept: deque[_Job] = deque()
    for job in jobs:
        if job.done.done():  # the client went away while it waited
            continue
        if not batch or (
            job.fn == batch[0].fn
            and job.candidates.mergeable(batch[0].candidates)
            and rows + job.rows <= max_rows
        ):
            batch.append(job)
            rows += job.rows
        else:
            kept.append(job)
    return batch, kept


def _failure(exc: BaseException) -> ScoringFailed:
    """What each request of a failed scoring call sees (one exception per request)."""
    return ScoringFailed(f"the model failed to score this request: {type(exc).__name__}")


def _call_merged(batch: list[_Job]) -> Any:
    """One call of the batch's function on the jobs' candidates, concatenated in order."""
    if len(batch) == 1:
        return batch[0].fn(batch[0].candidates)
    return batch[0].fn(Candidates.concat([job.candidates for job in batch]))


def configure_threads(intra_op: int, inter_op: int) -> None:
    """Import TensorFlow, set its thread pools and exempt its import from garbage collection;
    keep NumPy's BLAS on the calling thread.

    Thread counts can only be set before TF's runtime starts (else logged and kept).
    """
    import tensorflow as tf
    from threadpoolctl import threadpool_limits

    # The ranker's matrix products are small: with OpenBLAS's two threads on two cores, eight
    # fields at 1,000 candidates scored in 0.44 ms, on one in 0.38 ms (timeit), and a second
    # thread would compete with the event loop.
    threadpool_limits(limits=1, user_api="blas")

    # Importing TF leaves ~380k Python objects that every full collection would walk: 140 ms
    # pauses, measured as the p99 of 1,000-candidate requests. Frozen, they are never scanned.
    gc.freeze()
    try:
        tf.config.threading.set_intra_op_parallelism_threads(intra_op)
        tf.config.threading.set_inter_op_parallelism_threads(inter_op)
    except RuntimeError:
        log.info("TensorFlow already initialised in this process; thread settings left as they are")
