"""One loaded model version, and the scorer that runs TensorFlow off the event loop in batches.

``LoadedModel`` wraps the rank signatures of ``<model-dir>/<version>/`` (the contract's, see
``model/contract.py``); its methods are synchronous, take ``Candidates`` (each user's fields
once, each candidate's movie fields and its user's row) as raw strings, and return NumPy.
``Scorer`` runs them on a small dedicated pool, so at most ``threads`` TensorFlow calls run at
once and the event loop keeps serving health checks and Redis reads meanwhile. Requests that
arrive while every thread is busy are merged into one call when a thread frees up.
"""

from __future__ import annotations

import asyncio
import gc
import itertools
import logging
import math
import os
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any, Protocol, Self, TypeVar

import numpy as np

from model import contract
from service.errors import ScoringFailed

log = logging.getLogger(__name__)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's C++ info lines, before import

MAX_BATCH_ROWS = 4096
"""Most rows one merged TensorFlow call takes; a single larger request still runs, alone."""


class Rows(Protocol):
    def __getitem__(self, rows: slice, /) -> Self: ...


T = TypeVar("T", bound=Rows)


@dataclass(frozen=True)
class Candidates:
    """One call's rows as the rank signatures take them (raw strings).

    ``users``: each user field -> one value per user; ``items``: each movie field -> one
    value per candidate; ``user_index``: int32, each candidate's row in ``users``. Calls
    merged by the ``Scorer`` are concatenated, their user rows renumbered.
    """

    users: Mapping[str, Sequence[str]]
    items: Mapping[str, Sequence[str]]
    user_index: np.ndarray

    def __len__(self) -> int:
        return len(self.user_index)

    def value(self, field_name: str, row: int) -> str:
        """Candidate ``row``'s raw value of ``field_name``."""
        if field_name in self.users:
            return self.users[field_name][int(self.user_index[row])]
        return self.items[field_name][row]

    @classmethod
    def concat(cls, parts: Sequence[Candidates]) -> Candidates:
        offsets = np.cumsum([0, *(len(next(iter(p.users.values()))) for p in parts[:-1])])
        return cls(
            users={f: _chain(p.users[f] for p in parts) for f in parts[0].users},
            items={f: _chain(p.items[f] for p in parts) for f in parts[0].items},
            user_index=np.concatenate(
                [p.user_index + offset for p, offset in zip(parts, offsets, strict=True)]
            ).astype(np.int32),
        )


def _chain(lists: Iterable[Sequence[str]]) -> list[str]:
    return list(itertools.chain.from_iterable(lists))


@dataclass(frozen=True)
class Explanation:
    """The explain signature's outputs: logit = bias + sum(linear) + sum(contribution)."""

    probability: np.ndarray  # float32 [batch]
    attention: np.ndarray  # float32 [batch, pairs], rows sum to 1
    contribution: np.ndarray  # float32 [batch, pairs], each pair's term in the logit
    bias: np.ndarray  # float32 [batch], w0
    linear: np.ndarray  # float32 [batch, fields], each field's linear term
    logit: np.ndarray  # float32 [batch]

    def __getitem__(self, rows: slice) -> Explanation:
        return Explanation(**{name: getattr(self, name)[rows] for name in EXPLAIN_OUTPUTS})


EXPLAIN_OUTPUTS: dict[str, str] = {
    "probability": contract.OUTPUT_PROBABILITY,
    "attention": contract.OUTPUT_ATTENTION,
    "contribution": contract.OUTPUT_CONTRIBUTION,
    "bias": contract.OUTPUT_BIAS,
    "linear": contract.OUTPUT_LINEAR,
    "logit": contract.OUTPUT_LOGIT,
}
"""Explanation attribute -> the explain signature's output it holds."""


@dataclass(frozen=True)
class LoadedModel:
    """A version's signatures, metadata and training vocabularies (for the *_known flags)."""

    version: int
    path: Path
    metadata: contract.ModelMetadata
    fields: tuple[str, ...]
    pairs: tuple[tuple[str, str], ...]
    score_fn: Callable[..., Mapping[str, Any]] = field(repr=False)
    explain_fn: Callable[..., Mapping[str, Any]] = field(repr=False)
    vocabularies: Mapping[str, frozenset[str]] = field(repr=False)
    loaded_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))
    # The restored object: signatures hold only weak references to its variables.
    saved_model: Any = field(repr=False, default=None)

    def known(self, field_name: str, values: Sequence[str]) -> list[bool]:
        """Whether each value is in the training vocabulary of ``field_name`` (a multi-valued
        one: every one of its values is, and it has one)."""
        vocabulary = self.vocabularies[field_name]
        if field_name not in contract.MULTI_VALUED:
            return [value in vocabulary for value in values]
        return [
            bool(parts) and all(part in vocabulary for part in parts)
            for parts in (contract.split_values(field_name, value) for value in values)
        ]

    def score(self, candidates: Candidates) -> np.ndarray:
        """Click probabilities, float32 [batch]."""
        outputs = self.score_fn(*self._tensors(candidates))
        return outputs[contract.OUTPUT_PROBABILITY].numpy()

    def explain(self, candidates: Candidates) -> Explanation:
        outputs = self.explain_fn(*self._tensors(candidates))
        return Explanation(**{name: outputs[key].numpy() for name, key in EXPLAIN_OUTPUTS.items()})

    def _tensors(self, candidates: Candidates) -> tuple[Any, Any, Any]:
        import tensorflow as tf

        users, items = contract.rank_sides(self.fields)
        return (
            tf.constant([candidates.users[name] for name in users], tf.string),
            tf.constant([candidates.items[name] for name in items], tf.string),
            tf.constant(candidates.user_index, tf.int32),
        )


def _ranked(
    signatures: Mapping[str, Callable[..., Mapping[str, Any]]],
    name: str,
    fallback: str,
    fields: tuple[str, ...],
) -> Callable[..., Mapping[str, Any]]:
    """Signature ``name`` as a function of (users (U, B), items (I, N), user_index (N,)),
    traced once.

    Two string tensors and the index instead of one argument per field, split again inside
    the graph, and the signature's captured variables resolved once at tracing instead of on
    every call: ~0.1 ms less per call at 1 to 1,000 rows (benchmarks/serve_latency.py). A
    version exported before the rank signatures existed has only the contract's
    ``fallback``: its users are then gathered per candidate and scored row by row.
    """
    import tensorflow as tf

    users, items = contract.rank_sides(fields)
    if name in signatures:
        signature = signatures[name]

        def call(user_rows: tf.Tensor, item_rows: tf.Tensor, index: tf.Tensor) -> Any:
            named = zip(
                (*users, *items), (*tf.unstack(user_rows), *tf.unstack(item_rows)), strict=True
            )
            return signature(**dict(named), **{contract.INPUT_USER_INDEX: index})
    else:
        signature = signatures[fallback]

        def call(user_rows: tf.Tensor, item_rows: tf.Tensor, index: tf.Tensor) -> Any:
            per_row = tf.gather(user_rows, index, axis=1)  # (U, N)
            named = zip(
                (*users, *items), (*tf.unstack(per_row), *tf.unstack(item_rows)), strict=True
            )
            return signature(**dict(named))

    specs = [
        tf.TensorSpec([len(users), None], tf.string, name="users"),
        tf.TensorSpec([len(items), None], tf.string, name="items"),
        tf.TensorSpec([None], tf.int32, name=contract.INPUT_USER_INDEX),
    ]
    return tf.function(call, input_signature=specs).get_concrete_function()


def load_model(version_dir: Path) -> LoadedModel:
    """Load, check and warm one version. Raises on anything that would fail a request later."""
    import tensorflow as tf

    metadata = contract.read_metadata(version_dir)  # refuses unknown formats and field sets
    fields = tuple(metadata.fields)
    loaded = tf.saved_model.load(str(version_dir))
    missing = {contract.SIGNATURE_SCORE, contract.SIGNATURE_EXPLAIN} - set(loaded.signatures)
    if missing:
        raise ValueError(f"SavedModel lacks signature(s) {sorted(missing)}")
    for name in (contract.SIGNATURE_SCORE, contract.SIGNATURE_EXPLAIN):
        inputs = set(loaded.signatures[name].structured_input_signature[1])
        if inputs != set(fields):
            raise ValueError(f"signature {name} takes {sorted(inputs)}, metadata says {fields}")
    lacking = set(EXPLAIN_OUTPUTS.values()) - set(
        loaded.signatures[contract.SIGNATURE_EXPLAIN].structured_outputs
    )
    if lacking:
        raise ValueError(
            f"signature {contract.SIGNATURE_EXPLAIN} lacks output(s) {sorted(lacking)}: exported "
            "by an older afm-ctr; train a new version"
        )
    model = LoadedModel(
        version=int(version_dir.name),
        path=version_dir,
        metadata=metadata,
        fields=fields,
        pairs=contract.pairs(fields),
        score_fn=_ranked(
            loaded.signatures, contract.SIGNATURE_RANK, contract.SIGNATURE_SCORE, fields
        ),
        explain_fn=_ranked(
            loaded.signatures, contract.SIGNATURE_RANK_EXPLAIN, contract.SIGNATURE_EXPLAIN, fields
        ),
        vocabularies={
            name: frozenset(values)
            for name, values in contract.read_vocabularies(version_dir, fields).items()
        },
        saved_model=loaded,
    )
    _warm(model)
    return model


def _warm(model: LoadedModel) -> None:
    """Run both signatures once (first calls build kernels) and check the outputs' invariants."""
    users, items = contract.rank_sides(model.fields)
    for batch in (1, 64):
        candidates = Candidates(
            users={name: ["", "x"] for name in users},
            items={name: [""] * batch for name in items},
            user_index=np.arange(batch, dtype=np.int32) % 2,
        )
        probability = model.score(candidates)
        explained = model.explain(candidates)
        if probability.shape != (batch,) or not np.all((probability >= 0) & (probability <= 1)):
            raise ValueError(
                f"{contract.SIGNATURE_SCORE} returned bad probabilities {probability[:3]}"
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
    """Runs TensorFlow calls on ``threads`` threads, merging calls that queue up meanwhile.

    A call that finds a thread free runs at once, alone: batching never adds waiting at low
    load. Calls that arrive while every thread is busy queue; when a thread frees up, the
    queued calls of the same function (same model version and signature) run as one batch
    of up to ``max_batch_rows`` rows. Each TensorFlow call has a fixed cost of ~0.3 ms
    whatever its size, so under load this serves several requests for the price of one.
    """

    def __init__(self, threads: int, max_batch_rows: int = MAX_BATCH_ROWS) -> None:
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="tf-score")
        self._threads = threads
        self._max_batch_rows = max_batch_rows
        self._busy = 0
        self._queue: deque[_Job] = deque()
        self.calls_total = 0  # TensorFlow calls; read by the metrics collector
        self.requests_total = 0  # calls of run() they served

    async def run(self, fn: Callable[[Candidates], T], candidates: Candidates) -> T:
        """``fn(candidates)``, computed on the pool, possibly within a larger batch."""
        job = _Job(fn, candidates, len(candidates), asyncio.get_running_loop().create_future())
        self._queue.append(job)
        self._dispatch()
        return await job.done

    def shutdown(self) -> None:
        for job in self._queue:
            job.done.cancel()
        self._queue.clear()
        self._pool.shutdown(wait=True, cancel_futures=True)

    def _dispatch(self) -> None:
        loop = asyncio.get_running_loop()
        while self._queue and self._busy < self._threads:
            batch = self._take_batch()
            if batch:
                self._busy += 1
                running = loop.run_in_executor(self._pool, _call_merged, batch)
                running.add_done_callback(partial(self._finish, batch))

    def _take_batch(self) -> list[_Job]:
        """The oldest live job and every queued job of the same function that fits with it."""
        batch: list[_Job] = []
        rows = 0
        kept: deque[_Job] = deque()
        for job in self._queue:
            if job.done.done():  # the client went away while it waited
                continue
            if not batch or (job.fn == batch[0].fn and rows + job.rows <= self._max_batch_rows):
                batch.append(job)
                rows += job.rows
            else:
                kept.append(job)
        self._queue = kept
        return batch

    def _finish(self, batch: list[_Job], running: asyncio.Future) -> None:
        self._busy -= 1
        self.calls_total += 1
        self.requests_total += len(batch)
        exc = None if running.cancelled() else running.exception()
        if exc is not None:
            log.error("TensorFlow call failed", exc_info=exc)
        start = 0
        for job in batch:
            stop = start + job.rows
            if job.done.done():  # cancelled: its client went away
                pass
            elif running.cancelled():
                job.done.cancel()
            elif exc is not None:
                job.done.set_exception(
                    ScoringFailed(f"the model failed to score this request: {type(exc).__name__}")
                )
            else:
                job.done.set_result(running.result()[start:stop])
            start = stop
        self._dispatch()


def _call_merged(batch: list[_Job]) -> Any:
    """One call of the batch's function on the jobs' candidates, concatenated in order."""
    if len(batch) == 1:
        return batch[0].fn(batch[0].candidates)
    return batch[0].fn(Candidates.concat([job.candidates for job in batch]))


def configure_tensorflow(intra_op: int, inter_op: int) -> None:
    """Import TensorFlow, set its thread pools and exempt its import from garbage collection.

    Thread counts can only be set before TF's runtime starts (else logged and kept).
    """
    import tensorflow as tf

    # Importing TF leaves ~380k Python objects that every full collection would walk: 140 ms
    # pauses, measured as the p99 of 1,000-candidate requests. Frozen, they are never scanned.
    gc.freeze()
    try:
        tf.config.threading.set_intra_op_parallelism_threads(intra_op)
        tf.config.threading.set_inter_op_parallelism_threads(inter_op)
    except RuntimeError:
        log.info("TensorFlow already initialised in this process; thread settings left as they are")
