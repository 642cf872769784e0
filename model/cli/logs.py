"""Logging for the ``afm-ctr`` process: one stderr handler, for humans or as JSON lines.

``configure`` runs once, in the CLI callback, before any command imports TensorFlow; library
code only calls ``logging.getLogger(__name__)``. ``quiet_tensorflow_import`` keeps
TensorFlow's C++ start-up notices (absl writes them to file descriptor 2 before anything can
configure it, so ``TF_CPP_MIN_LOG_LEVEL`` does not reach them) off a normal run.
Stdlib only: importing this never loads TensorFlow.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import time
from collections.abc import Iterator
from typing import Literal

LogFormat = Literal["text", "json"]

_TF_LOG_LEVEL = "TF_CPP_MIN_LOG_LEVEL"
_QUIET_TF_LOG_LEVEL = "2"  # TensorFlow's C++ errors still show; info and warnings do not
_LOUD_LOGGERS = ("absl", "h5py", "matplotlib", "PIL", "tensorflow")
_UVICORN_LOGGERS = ("uvicorn", "uvicorn.error", "uvicorn.access")
# uvicorn's general logger is "uvicorn.error": shown as "uvicorn", its start and stop lines
# being no errors.
_SHOWN_NAMES = {"uvicorn.error": "uvicorn"}


class HumanFormatter(logging.Formatter):
    """``message`` for INFO, ``warning: message`` / ``error: message`` above it, ``debug: ...``
    below; with ``timestamps`` (serve, -v) the time and logger name go in front."""

    def __init__(self, *, timestamps: bool, color: bool) -> None:
        super().__init__()
        self.timestamps = timestamps
        self.color = color
        self._second: tuple[int, str] = (-1, "")  # the last second formatted, and its text

    def _time(self, record: logging.LogRecord) -> str:
        """The record's local time to the second; formatted once per second (an access line
        per request would otherwise format the same second over and over)."""
        second = int(record.created)
        if second != self._second[0]:
            self._second = (second, self.formatTime(record, "%Y-%m-%d %H:%M:%S"))
        return self._second[1]

    def format(self, record: logging.LogRecord) -> str:
        text = record.getMessage()
        if record.levelno != logging.INFO:
            text = f"{record.levelname.lower()}: {text}"
            if self.color and record.levelno >= logging.WARNING:
                red_or_yellow = "31" if record.levelno >= logging.ERROR else "33"
                text = f"\x1b[{red_or_yellow}m{text}\x1b[0m"
        if self.timestamps:
            text = f"{self._time(record)} {_SHOWN_NAMES.get(record.name, record.name)}: {text}"
        if record.exc_info:
            text = f"{text}\n{self.formatException(record.exc_info)}"
        return text


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``time`` (UTC, ISO 8601), ``level``, ``logger``, ``message``,
    the record's ``fields`` if it has any (``extra={"fields": {...}}``), ``exception``."""

    def format(self, record: logging.LogRecord) -> str:
        seconds = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        entry = {
            "time": f"{seconds}.{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if fields:
            entry.update(fields)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


def dict_config(
    *, verbose: bool = False, fmt: LogFormat = "text", timestamps: bool = False
) -> dict:
    """``configure`` as a ``logging.config.dictConfig``, for uvicorn to apply in each worker
    process (``log_config=``), so workers log like the parent."""
    if fmt == "json":
        formatter: dict = {"()": JsonFormatter}
    else:
        color = stderr_is_terminal() and "NO_COLOR" not in os.environ
        formatter = {"()": HumanFormatter, "timestamps": timestamps or verbose, "color": color}
    quiet = "INFO" if verbose else "WARNING"  # their DEBUG output is about themselves
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"afm": formatter},
        "handlers": {
            "stderr": {
                "class": "logging.StreamHandler",
                "formatter": "afm",
                "stream": "ext://sys.stderr",
            }
        },
        "root": {"handlers": ["stderr"], "level": "DEBUG" if verbose else "INFO"},
        # uvicorn's own handlers go: its records reach the root handler, in our format.
        "loggers": {
            **{name: {"level": quiet} for name in _LOUD_LOGGERS},
            **{name: {"handlers": [], "propagate": True} for name in _UVICORN_LOGGERS},
        },
    }


def configure(*, verbose: bool = False, fmt: LogFormat = "text", timestamps: bool = False) -> None:
    """Route every logger (ours, uvicorn's, TensorFlow's Python side) to one stderr handler.

    ``verbose``: DEBUG level and TensorFlow's C++ notices back on. A ``TF_CPP_MIN_LOG_LEVEL``
    the user set is kept unless ``verbose`` asks for everything.
    """
    if verbose:
        os.environ[_TF_LOG_LEVEL] = "0"
    else:
        os.environ.setdefault(_TF_LOG_LEVEL, _QUIET_TF_LOG_LEVEL)
    # By hand, not dictConfig: that closes every existing handler, absl's (and its stream) too.
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        color = stderr_is_terminal() and "NO_COLOR" not in os.environ
        handler.setFormatter(HumanFormatter(timestamps=timestamps or verbose, color=color))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    for name in _LOUD_LOGGERS:  # their DEBUG output is about themselves, not the run
        logging.getLogger(name).setLevel(logging.INFO if verbose else logging.WARNING)
    for name in _UVICORN_LOGGERS:  # uvicorn's records reach the root handler, in our format
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    logging.captureWarnings(True)


def active_dict_config() -> dict:
    """``dict_config`` of what ``configure`` set up, read back from the root logger (for
    uvicorn, which applies it again in each worker process)."""
    root = logging.getLogger()
    formatters = [h.formatter for h in root.handlers]
    verbose = root.level <= logging.DEBUG
    if any(isinstance(f, JsonFormatter) for f in formatters):
        return dict_config(verbose=verbose, fmt="json")
    human = [f for f in formatters if isinstance(f, HumanFormatter)]
    return dict_config(verbose=verbose, timestamps=human[0].timestamps if human else True)


def json_output() -> bool:
    """Whether the root handler writes JSON (then no progress bar may share stderr)."""
    return any(isinstance(h.formatter, JsonFormatter) for h in logging.getLogger().handlers)


def stderr_is_terminal() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


@contextlib.contextmanager
def _stderr_fd_silenced() -> Iterator[None]:
    """File descriptor 2 points at /dev/null inside the block (C++ writes go there too)."""
    sys.stderr.flush()
    try:
        saved = os.dup(2)
    except OSError:  # no fd 2 (some embedded runners): nothing to silence
        yield
        return
    try:
        with open(os.devnull, "wb") as devnull:
            os.dup2(devnull.fileno(), 2)
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)


def quiet_tensorflow_import() -> None:
    """Import TensorFlow with its C++ start-up notices dropped (kept with -v, which sets
    ``TF_CPP_MIN_LOG_LEVEL=0``, or when the user set that).

    TensorFlow 2.21 logs the oneDNN notice through absl before absl is initialised, so it
    reaches stderr whatever ``TF_CPP_MIN_LOG_LEVEL`` says, once per shared library (twice).
    Dropping fd 2 for the import alone is the only switch; an import error still raises
    (its traceback prints after fd 2 is back). Call it before other threads write to stderr.
    ``TF_ENABLE_ONEDNN_OPTS`` is left alone: it changes numerics, not just the notice.
    """
    if os.environ.get(_TF_LOG_LEVEL) == "0" or "tensorflow" in sys.modules:
        return
    with _stderr_fd_silenced():
        import tensorflow  # noqa: F401
