"""The scorer's batching, with a scoring function that blocks until a test lets it go."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest

from service.errors import ScoringFailed
from service.scorer import Candidates, Scorer


class Gate:
    """Scores movie_id as a float; each call waits for ``release`` and is recorded."""

    def __init__(self, fail: bool = False) -> None:
        self.release = threading.Event()
        self.entered = threading.Event()
        self.calls: list[list[str]] = []
        self.users: list[list[str]] = []  # each row's user, as the merged call sees it
        self.fail = fail

    def __call__(self, candidates: Candidates) -> np.ndarray:
        self.entered.set()
        assert self.release.wait(10), "test never released the gate"
        self.calls.append([str(m) for m in candidates.movie_ids])
        self.users.append([candidates.value("user_id", row) for row in range(len(candidates))])
        if self.fail:
            raise RuntimeError("tensor exploded")
        return np.array([float(m) for m in candidates.movie_ids])


MOVIES: dict[str, dict[str, str]] = {}  # one movie table: every call may merge


def _columns(*movies: int, user: int = 1) -> Candidates:
    """One request's candidates: user ``user``, then ``movies``."""
    index = np.zeros(len(movies), dtype=np.int32)
    return Candidates({"user_id": [str(user)]}, index, list(movies), MOVIES)


async def _occupy(scorer: Scorer, gate: Gate) -> asyncio.Task:
    """Start a one-row call on ``gate`` and wait until it holds the scorer's only thread."""
    task = asyncio.create_task(scorer.run(gate, _columns(0)))
    await asyncio.to_thread(gate.entered.wait, 10)
    return task


def test_a_lone_call_runs_at_once_and_alone() -> None:
    async def main() -> tuple[list[float], Scorer, Gate]:
        scorer, gate = Scorer(threads=1), Gate()
        gate.release.set()
        result = await scorer.run(gate, _columns(5, 6))
        scorer.shutdown()
        return result.tolist(), scorer, gate

    result, scorer, gate = asyncio.run(main())
    assert result == [5.0, 6.0]
    assert gate.calls == [["5", "6"]]
    assert (scorer.calls_total, scorer.requests_total) == (1, 1)


def test_calls_queued_behind_a_busy_thread_are_merged_and_split_back() -> None:
    async def main() -> tuple[list[list[float]], Scorer, Gate]:
        scorer, gate = Scorer(threads=1), Gate()
        first = await _occupy(scorer, gate)
        queued = [
            asyncio.create_task(scorer.run(gate, _columns(i, i + 1, user=i))) for i in (10, 20, 30)
        ]
        await asyncio.sleep(0.05)  # all three are queued now
        gate.release.set()
        results = await asyncio.gather(first, *queued)
        scorer.shutdown()
        return [r.tolist() for r in results], scorer, gate

    results, scorer, gate = asyncio.run(main())
    assert results == [[0.0], [10.0, 11.0], [20.0, 21.0], [30.0, 31.0]]
    assert gate.calls == [["0"], ["10", "11", "20", "21", "30", "31"]]
    assert gate.users[1] == ["10", "10", "20", "20", "30", "30"]  # user rows renumbered
    assert (scorer.calls_total, scorer.requests_total) == (2, 4)


def test_batches_hold_one_function_and_respect_the_row_limit() -> None:
    async def main() -> tuple[Gate, Gate, list[list[float]]]:
        scorer, gate, other = Scorer(threads=1, max_batch_rows=4), Gate(), Gate()
        other.release.set()
        first = await _occupy(scorer, gate)
        queued = [
            asyncio.create_task(scorer.run(gate, _columns(1, 2, 3))),
            asyncio.create_task(scorer.run(other, _columns(7))),  # another model/signature
            asyncio.create_task(scorer.run(gate, _columns(4))),  # fits with 1, 2, 3
            asyncio.create_task(scorer.run(gate, _columns(5))),  # would make 5 rows
        ]
        await asyncio.sleep(0.05)
        gate.release.set()
        results = await asyncio.gather(first, *queued)
        scorer.shutdown()
        return gate, other, [r.tolist() for r in results]

    gate, other, results = asyncio.run(main())
    assert gate.calls == [["0"], ["1", "2", "3", "4"], ["5"]]
    assert other.calls == [["7"]]
    assert results == [[0.0], [1.0, 2.0, 3.0], [7.0], [4.0], [5.0]]


def test_a_failed_call_fails_each_of_its_requests_and_the_next_call_runs() -> None:
    async def main() -> tuple[list[BaseException | None], list[float]]:
        scorer, gate = Scorer(threads=1), Gate(fail=True)
        first = await _occupy(scorer, gate)
        queued = [asyncio.create_task(scorer.run(gate, _columns(i))) for i in (1, 2)]
        await asyncio.sleep(0.05)
        gate.release.set()
        outcomes = await asyncio.gather(first, *queued, return_exceptions=True)
        gate.fail = False
        after = await scorer.run(gate, _columns(9))
        scorer.shutdown()
        return outcomes, after.tolist()

    outcomes, after = asyncio.run(main())
    assert all(isinstance(o, ScoringFailed) for o in outcomes)
    assert "RuntimeError" in str(outcomes[0]) and "exploded" not in str(outcomes[0])
    assert after == [9.0]


def test_a_request_cancelled_while_queued_is_left_out() -> None:
    async def main() -> tuple[Gate, list[float]]:
        scorer, gate = Scorer(threads=1), Gate()
        first = await _occupy(scorer, gate)
        gone = asyncio.create_task(scorer.run(gate, _columns(1)))
        kept = asyncio.create_task(scorer.run(gate, _columns(2)))
        await asyncio.sleep(0.05)
        gone.cancel()  # its client disconnected
        await asyncio.sleep(0)
        gate.release.set()
        await first
        result = await kept
        with pytest.raises(asyncio.CancelledError):
            await gone
        scorer.shutdown()
        return gate, result.tolist()

    gate, result = asyncio.run(main())
    assert gate.calls == [["0"], ["2"]]
    assert result == [2.0]


class ThreadRecorder:
    """Scores movie_id as a float and records each call's movies and the thread it ran on."""

    def __init__(self, fail: bool = False) -> None:
        self.threads: list[int] = []
        self.calls: list[list[int]] = []
        self.fail = fail

    def __call__(self, candidates: Candidates) -> np.ndarray:
        self.threads.append(threading.get_ident())
        self.calls.append(list(candidates.movie_ids))
        if self.fail:
            raise RuntimeError("tensor exploded")
        return np.array([float(m) for m in candidates.movie_ids])


def test_a_small_call_made_alone_runs_on_the_event_loop() -> None:
    async def main() -> tuple[list[list[float]], ThreadRecorder, Scorer]:
        alone = True
        scorer = Scorer(threads=1, inline_rows=2, alone=lambda: alone)
        recorder = ThreadRecorder()
        results = [await scorer.run(recorder, _columns(1, 2))]  # small, alone: inline
        results.append(await scorer.run(recorder, _columns(1, 2, 3)))  # too many rows
        alone = False
        results.append(await scorer.run(recorder, _columns(4)))  # another request in flight
        scorer.shutdown()
        return [r.tolist() for r in results], recorder, scorer

    loop_thread = threading.get_ident()  # asyncio.run runs the loop on this thread
    results, recorder, scorer = asyncio.run(main())
    assert results == [[1.0, 2.0], [1.0, 2.0, 3.0], [4.0]]
    assert recorder.threads[0] == loop_thread
    assert loop_thread not in recorder.threads[1:]
    assert (scorer.calls_total, scorer.requests_total) == (3, 3)


def test_a_small_numpy_call_runs_on_the_event_loop_under_load_too() -> None:
    async def main() -> tuple[list[list[float]], ThreadRecorder]:
        scorer = Scorer(threads=1, inline_rows=2, alone=lambda: False, inline_numpy=True)
        recorder = ThreadRecorder()
        results = [await scorer.run(recorder, _columns(1, 2), in_numpy=True)]  # inline
        results.append(await scorer.run(recorder, _columns(3)))  # TensorFlow: the pool
        results.append(await scorer.run(recorder, _columns(4, 5, 6), in_numpy=True))  # too big
        off = Scorer(threads=1, inline_rows=2, alone=lambda: False, inline_numpy=False)
        results.append(await off.run(recorder, _columns(7), in_numpy=True))  # switched off
        scorer.shutdown()
        off.shutdown()
        return [r.tolist() for r in results], recorder

    loop_thread = threading.get_ident()
    results, recorder = asyncio.run(main())
    assert results == [[1.0, 2.0], [3.0], [4.0, 5.0, 6.0], [7.0]]
    assert recorder.threads[0] == loop_thread
    assert loop_thread not in recorder.threads[1:]


def test_numpy_calls_of_one_loop_iteration_run_merged_on_the_loop() -> None:
    async def main() -> tuple[list, ThreadRecorder, Scorer]:
        scorer = Scorer(threads=1, inline_rows=4, inline_numpy=True)
        recorder = ThreadRecorder()
        requests = [_columns(1, 2), _columns(3), _columns(4, 5, 6), _columns(7, user=2)]
        results = await asyncio.gather(  # their first steps all run in one iteration
            *(scorer.run(recorder, rows, in_numpy=True) for rows in requests)
        )
        scorer.shutdown()
        return [r.tolist() for r in results], recorder, scorer

    loop_thread = threading.get_ident()
    results, recorder, scorer = asyncio.run(main())
    assert results == [[1.0, 2.0], [3.0], [4.0, 5.0, 6.0], [7.0]]  # each its own rows
    assert recorder.calls == [[1, 2, 3, 7], [4, 5, 6]]  # at most inline_rows rows a call
    assert set(recorder.threads) == {loop_thread}
    assert (scorer.calls_total, scorer.requests_total) == (2, 4)


def test_a_merged_call_on_the_loop_that_fails_fails_each_of_its_requests() -> None:
    async def main() -> list:
        scorer = Scorer(threads=1, inline_rows=4, inline_numpy=True)
        recorder = ThreadRecorder(fail=True)
        outcomes = await asyncio.gather(
            *(scorer.run(recorder, _columns(m), in_numpy=True) for m in (1, 2)),
            return_exceptions=True,
        )
        recorder.fail = False
        outcomes.append((await scorer.run(recorder, _columns(9), in_numpy=True)).tolist())
        scorer.shutdown()
        return outcomes

    first, second, after = asyncio.run(main())
    assert isinstance(first, ScoringFailed) and isinstance(second, ScoringFailed)
    assert after == [9.0]


def test_a_numpy_call_queues_behind_a_running_call() -> None:
    async def main() -> Gate:
        scorer, gate = Scorer(threads=1, inline_rows=5, inline_numpy=True), Gate()
        first = await _occupy(scorer, gate)
        second = asyncio.create_task(scorer.run(gate, _columns(5), in_numpy=True))
        third = asyncio.create_task(scorer.run(gate, _columns(6), in_numpy=True))
        await asyncio.sleep(0.05)
        gate.release.set()
        await asyncio.gather(first, second, third)
        scorer.shutdown()
        return gate

    # Inline, the second call would block the loop in the Gate; queued, it merges.
    assert asyncio.run(main()).calls == [["0"], ["5", "6"]]


def test_a_call_never_runs_inline_while_another_is_running() -> None:
    async def main() -> tuple[Gate, list[list[float]]]:
        scorer, gate = Scorer(threads=1, inline_rows=1, alone=lambda: True), Gate()
        first = asyncio.create_task(scorer.run(gate, _columns(0, 1)))  # 2 rows: the pool
        await asyncio.to_thread(gate.entered.wait, 10)
        # Small and "alone", but a call is running: it queues. Run inline, it would block
        # the loop in the Gate until the 10 s timeout, since only the loop releases it.
        second = asyncio.create_task(scorer.run(gate, _columns(5)))
        await asyncio.sleep(0.05)
        gate.release.set()
        results = await asyncio.gather(first, second)
        scorer.shutdown()
        return gate, [r.tolist() for r in results]

    gate, results = asyncio.run(main())
    assert gate.calls == [["0", "1"], ["5"]]
    assert results == [[0.0, 1.0], [5.0]]


def test_an_inline_call_that_fails_raises_scoring_failed() -> None:
    async def main() -> tuple[BaseException | None, list[float]]:
        scorer = Scorer(threads=1, inline_rows=10, alone=lambda: True)
        recorder = ThreadRecorder(fail=True)
        try:
            await scorer.run(recorder, _columns(1))
            outcome = None
        except ScoringFailed as exc:
            outcome = exc
        recorder.fail = False
        after = await scorer.run(recorder, _columns(9))
        scorer.shutdown()
        return outcome, after.tolist()

    outcome, after = asyncio.run(main())
    assert isinstance(outcome, ScoringFailed)
    assert "RuntimeError" in str(outcome) and "exploded" not in str(outcome)
    assert after == [9.0]
