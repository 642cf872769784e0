"""The batcher: the scoring calls of one event-loop iteration run as one merged call on the
loop and each request gets its own rows back. Deterministic: calls started together by
``asyncio.gather`` all reach the batcher in the same iteration."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest

from service.batching import Batcher
from service.candidates import Candidates
from service.errors import ScoringFailed

MOVIES: dict[str, dict[str, str]] = {}  # one movie table: every call may merge


class Recorder:
    """Scores movie_id as a float; records each call's movies, users and thread."""

    def __init__(self, fail: bool = False) -> None:
        self.calls: list[list[int]] = []
        self.users: list[list[str]] = []  # each row's user, as the merged call sees it
        self.threads: list[int] = []
        self.fail = fail

    def __call__(self, candidates: Candidates) -> np.ndarray:
        self.calls.append(list(candidates.movie_ids))
        self.users.append([candidates.value("user_id", row) for row in range(len(candidates))])
        self.threads.append(threading.get_ident())
        if self.fail:
            raise RuntimeError("tensor exploded")
        return np.array([float(m) for m in candidates.movie_ids])


def _rows(*movies: int, user: int = 1, table: dict | None = None) -> Candidates:
    """One request's candidates: user ``user``, then ``movies``."""
    index = np.zeros(len(movies), dtype=np.int32)
    return Candidates(
        {"user_id": [str(user)]}, index, list(movies), MOVIES if table is None else table
    )


def test_a_lone_call_runs_on_the_event_loop() -> None:
    async def main() -> tuple[list[float], int]:
        batcher, fn = Batcher(), Recorder()
        result = await batcher.run(fn, _rows(5, 6))
        assert (batcher.calls_total, batcher.requests_total) == (1, 1)
        assert fn.threads == [threading.get_ident()]  # no thread hand-off
        return result.tolist(), len(fn.calls)

    assert asyncio.run(main()) == ([5.0, 6.0], 1)


def test_calls_of_one_iteration_merge_into_one_call_and_split_back() -> None:
    async def main() -> tuple[list[list[float]], Recorder, Batcher]:
        batcher, fn = Batcher(), Recorder()
        results = await asyncio.gather(
            *(batcher.run(fn, _rows(i, i + 1, user=i)) for i in (10, 20, 30))
        )
        return [r.tolist() for r in results], fn, batcher

    results, fn, batcher = asyncio.run(main())
    assert results == [[10.0, 11.0], [20.0, 21.0], [30.0, 31.0]]
    assert fn.calls == [[10, 11, 20, 21, 30, 31]]
    assert fn.users == [["10", "10", "20", "20", "30", "30"]]  # user rows renumbered
    assert (batcher.calls_total, batcher.requests_total) == (1, 3)


def test_calls_of_later_iterations_run_apart() -> None:
    async def main() -> Recorder:
        batcher, fn = Batcher(), Recorder()
        await batcher.run(fn, _rows(1))
        await batcher.run(fn, _rows(2))
        return fn

    assert asyncio.run(main()).calls == [[1], [2]]


def test_merged_calls_hold_one_function_and_table_and_respect_the_row_limit() -> None:
    async def main() -> tuple[Recorder, Recorder]:
        batcher, first, second = Batcher(max_rows=4), Recorder(), Recorder()
        other_table: dict[str, dict[str, str]] = {}
        await asyncio.gather(
            batcher.run(first, _rows(1, 2)),
            batcher.run(second, _rows(3)),
            batcher.run(first, _rows(4, 5)),
            batcher.run(first, _rows(6)),  # over 4 rows with 1, 2, 4, 5: next call
            batcher.run(first, _rows(7, table=other_table)),  # another movie table
        )
        return first, second

    first, second = asyncio.run(main())
    assert first.calls == [[1, 2, 4, 5], [6], [7]]
    assert second.calls == [[3]]


def test_a_failed_call_fails_each_of_its_requests_and_the_next_call_runs() -> None:
    async def main() -> tuple[list, list[float]]:
        batcher, failing = Batcher(), Recorder(fail=True)
        outcomes = await asyncio.gather(
            batcher.run(failing, _rows(1)), batcher.run(failing, _rows(2)), return_exceptions=True
        )
        after = await batcher.run(Recorder(), _rows(3))
        return outcomes, after.tolist()

    outcomes, after = asyncio.run(main())
    assert [type(o) for o in outcomes] == [ScoringFailed, ScoringFailed]
    assert outcomes[0] is not outcomes[1]  # one exception per request
    assert "RuntimeError" in outcomes[0].detail and "exploded" not in outcomes[0].detail
    assert after == [3.0]


def test_a_request_cancelled_before_its_call_is_left_out() -> None:
    async def main() -> Recorder:
        batcher, fn = Batcher(), Recorder()
        gone = asyncio.ensure_future(batcher.run(fn, _rows(1)))
        kept = asyncio.ensure_future(batcher.run(fn, _rows(2)))
        await asyncio.sleep(0)  # both are pending in the batcher now
        gone.cancel()
        assert (await kept).tolist() == [2.0]
        with pytest.raises(asyncio.CancelledError):
            await gone
        return fn

    assert asyncio.run(main()).calls == [[2]]


def test_shutdown_cancels_the_calls_not_made() -> None:
    async def main() -> Recorder:
        batcher, fn = Batcher(), Recorder()
        pending = asyncio.ensure_future(batcher.run(fn, _rows(1)))
        await asyncio.sleep(0)
        batcher.shutdown()
        with pytest.raises(asyncio.CancelledError):
            await pending
        await asyncio.sleep(0)  # the scheduled run finds nothing to do
        return fn

    assert asyncio.run(main()).calls == []
