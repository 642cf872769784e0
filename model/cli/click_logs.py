"""The ``afm-ctr logs`` commands: the impression and click log the service writes.

``logs export`` moves closed impressions with their clicks from Redis into hourly Parquet
files (``model/data/click_logs.py``), for ``afm-ctr train --from-logs``. (Not to be confused
with ``model/cli/logs.py``, the process's own logging.)
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer

from model.cli.options import DEFAULT_REDIS_URL, RedisClusterOpt, RedisUrlOpt, fail
from model.contracts.event_log import ATTRIBUTION_WINDOW_S
from model.contracts.feature_layout import DEFAULT_PREFIX
from model.errors import AfmError

log = logging.getLogger(__name__)

app = typer.Typer(
    help="The impression and click log the service writes: export it for training.",
    no_args_is_help=True,
    rich_markup_mode=None,
)


@app.command()
def export(
    out: Annotated[
        Path,
        typer.Option(help="Directory of the hourly Parquet files (hour=YYYY-MM-DDTHH/*.parquet)."),
    ],
    redis_url: RedisUrlOpt = DEFAULT_REDIS_URL,
    redis_cluster: RedisClusterOpt = False,
    prefix: Annotated[
        str,
        typer.Option(
            "--prefix",
            "--redis-prefix",
            help="Key prefix of the feature set, whose log this is.",
            envvar="AFM_REDIS_PREFIX",
        ),
    ] = DEFAULT_PREFIX,
    flush: Annotated[
        bool,
        typer.Option(
            "--flush",
            help="Export impressions whose attribution window is still open too, labelled "
            "with the clicks seen so far (else they wait for a later run).",
        ),
    ] = False,
    follow: Annotated[
        bool,
        typer.Option(
            "--follow",
            help="Export again every --interval seconds until Ctrl-C or SIGTERM (the pass under "
            "way finishes first).",
        ),
    ] = False,
    interval: Annotated[
        float, typer.Option(min=0.1, help="Seconds between passes with --follow.")
    ] = 60.0,
    attribution_window: Annotated[
        int,
        typer.Option(
            min=0,
            help="Seconds after an impression during which its clicks count; should match "
            "the service's.",
        ),
    ] = ATTRIBUTION_WINDOW_S,
    batch: Annotated[
        int, typer.Option(min=1, help="Impressions read at once (at most one file per hour each).")
    ] = 5000,
) -> None:
    """Export the logged impressions, one row per shown movie labelled with its click, into
    hourly Parquet files under --out (for `afm-ctr train --from-logs`); each impression once,
    even when an export is killed and run again."""
    from model.data.click_logs import ExportSummary, LogExporter, connect, export_lock

    total = ExportSummary()
    try:
        client = connect(redis_url, redis_cluster)
        exporter = LogExporter(
            client, prefix, out, window_s=attribution_window, flush=flush, batch=batch
        )
        with export_lock(out), _stop_between_passes(follow) as stop:
            while not stop.is_set():
                try:
                    summary = exporter.export()
                except AfmError as exc:
                    if not follow:
                        raise
                    log.warning(f"{exc}; trying again in {interval:g} s")
                else:
                    total.add(summary)
                    if not follow or summary.impressions or summary.already_exported:
                        typer.echo(summary.line())
                if not follow:
                    return
                stop.wait(interval)
    except AfmError as exc:
        raise fail(exc) from None
    except KeyboardInterrupt:  # a second Ctrl-C, or one without --follow
        pass
    typer.echo(f"stopped; in all, {total.line()}")


@contextmanager
def _stop_between_passes(follow: bool) -> Iterator[threading.Event]:
    """With ``follow``, an event that Ctrl-C or SIGTERM sets: the pass under way finishes
    (its files written and counted), then the loop stops; a second Ctrl-C stops at once."""
    stop = threading.Event()
    if not follow:
        yield stop
        return

    def request_stop(signum: int, _frame: object) -> None:
        stop.set()
        signal.signal(signal.SIGINT, signal.default_int_handler)  # the next Ctrl-C: now

    previous = {s: signal.signal(s, request_stop) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
