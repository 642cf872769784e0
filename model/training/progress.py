"""The progress bar of one training epoch, for a person watching a terminal."""

from __future__ import annotations

import time
from typing import Any

import keras

from model.cli.logs import json_output, stderr_is_terminal


def show_progress_bar() -> bool:
    """A bar only for a person watching: stderr is a terminal and the log is not JSON."""
    return stderr_is_terminal() and not json_output()


class EpochProgress(keras.callbacks.Callback):
    """A rich progress bar over one epoch: rows done, rows/s, running loss, ETA.

    Keras calls ``on_train_batch_end`` once per ``steps_per_execution`` batches, with the
    last batch's index, so the bar moves in steps of that many batches; that costs one read
    of the running loss per step and nothing else. The bar is transient: the epoch line
    replaces it.
    """

    def __init__(self, rows: int, batch_size: int, description: str) -> None:
        super().__init__()
        self.rows, self.batch_size, self.description = rows, batch_size, description
        self._progress: Any = None

    def on_train_begin(self, logs: dict | None = None) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
        )

        self._progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("rows  {task.fields[speed]}  loss {task.fields[loss]}"),
            TimeRemainingColumn(),
            console=Console(stderr=True),
            transient=True,
        )
        self._progress.start()
        self._task = self._progress.add_task(self.description, total=self.rows, speed="", loss="-")
        self._start = time.perf_counter()

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        done = min((batch + 1) * self.batch_size, self.rows)
        rate = done / max(time.perf_counter() - self._start, 1e-9)
        loss = f"{float(logs['loss']):.4f}" if logs and "loss" in logs else "-"
        self._progress.update(self._task, completed=done, speed=f"{rate:,.0f}/s", loss=loss)

    def on_train_end(self, logs: dict | None = None) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
