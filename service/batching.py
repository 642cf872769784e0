"""Scoring calls merged per event-loop iteration and run on the loop.

A scoring call is NumPy on a few hundred kilobytes (``model.contracts.numpy_scorer``): it
takes less time on the event loop than the hand-off to a thread and back would. Under load,
requests whose Redis replies arrive together resume in the same loop iteration; ``Batcher``
collects the calls they make there and, once the iteration's other callbacks have run, makes
one call for all of them (one user row per request) and hands each request its rows. Each
call has a fixed cost whatever its size, so this serves several requests for the price of
one, and a request alone in the server still scores within its own iteration.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, Self, TypeVar

from service.candidates import Candidates
from service.errors import ScoringFailed

log = logging.getLogger(__name__)

MAX_BATCH_ROWS = 4096
"""Most rows one merged call takes (a larger request still runs, alone): bounds how long one
call holds the event loop."""


class Rows(Protocol):
    def __getitem__(self, rows: slice, /) -> Self: ...


T = TypeVar("T", bound=Rows)


@dataclass
class _Job:
    fn: Callable[[Candidates], Any]
    candidates: Candidates
    done: asyncio.Future


class Batcher:
    """Merges the scoring calls of one loop iteration; see the module docstring.

    Calls merge when they are of the same function (the same version's ``score`` or
    ``explain``) on the same movie table, up to ``max_rows`` rows.
    """

    def __init__(self, max_rows: int = MAX_BATCH_ROWS) -> None:
        self._max_rows = max_rows
        self._pending: list[_Job] = []
        self.calls_total = 0  # scoring calls made; read by the metrics collector
        self.requests_total = 0  # calls of ``run`` they served

    async def run(self, fn: Callable[[Candidates], T], candidates: Candidates) -> T:
        """``fn(candidates)``, computed with the other calls of this loop iteration; raises
        ``ScoringFailed`` if the call fails."""
        loop = asyncio.get_running_loop()
        job = _Job(fn, candidates, loop.create_future())
        if not self._pending:
            loop.call_soon(self._run_pending)
        self._pending.append(job)
        return await job.done

    def shutdown(self) -> None:
        """Cancel the calls not made yet."""
        for job in self._pending:
            job.done.cancel()
        self._pending.clear()

    def _run_pending(self) -> None:
        jobs, self._pending = deque(self._pending), []
        while jobs:
            batch, jobs = _take_batch(jobs, self._max_rows)
            if not batch:
                break
            try:
                result, error = _call_merged(batch), None
            except Exception as exc:
                result, error = None, exc
                log.error("scoring call failed", exc_info=exc)
            self.calls_total += 1
            self.requests_total += len(batch)
            start = 0
            for job in batch:
                stop = start + len(job.candidates)
                if job.done.done():  # cancelled: its client went away
                    pass
                elif error is not None:
                    failure = f"the model failed to score this request: {type(error).__name__}"
                    job.done.set_exception(ScoringFailed(failure))
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
            and rows + len(job.candidates) <= max_rows
        ):
            batch.append(job)
            rows += len(job.candidates)
        else:
            kept.append(job)
    return batch, kept


def _call_merged(batch: list[_Job]) -> Any:
    """One call of the batch's function on the jobs' candidates, concatenated in order."""
    if len(batch) == 1:
        return batch[0].fn(batch[0].candidates)
    return batch[0].fn(Candidates.concat([job.candidates for job in batch]))
