"""One log line per HTTP request: method, route template, status, duration in milliseconds.

Written to ``service.access`` through whatever handler the process has (``afm-ctr serve``
sets the text or JSON format) by ``service.metrics.ObservedRequestsMiddleware``, which times
each request once for the metrics and this line. The route is the matched template
(``/explain``, not ``/explain?user_id=1``) when FastAPI records one, else the raw path.
Turned off with ``AFM_ACCESS_LOG=false``.
"""

from __future__ import annotations

import logging

log = logging.getLogger("service.access")


def lean_records() -> None:
    """Leave out of every log record of the process what no line prints: the calling file
    and line (a walk up the stack per record), and the thread and process names (the logging
    documentation's "Optimization" settings), so an access line costs less."""
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False


def log_request(method: str, route: str, status: int, seconds: float) -> None:
    ms = seconds * 1000
    log.info(
        "%s %s %d %.1fms",
        method,
        route,
        status,
        ms,
        extra={
            "fields": {
                "method": method,
                "route": route,
                "status": status,
                "duration_ms": round(ms, 3),
            }
        },
    )


def enabled() -> bool:
    """Whether an access line would be written now (the logger's level may change)."""
    return log.isEnabledFor(logging.INFO)
