"""One log line per HTTP request: method, route template, status, duration in milliseconds.

A pure ASGI middleware (no per-request objects beyond one log record), logging to
``service.access`` through whatever handler the process has: the CLI's text or JSON format.
The route is the matched template (``/explain``, not ``/explain?user_id=1``) when FastAPI
records one, else the raw path. Turned off with ``AFM_ACCESS_LOG=false``.
"""

from __future__ import annotations

import logging

from starlette.types import ASGIApp, Receive, Scope, Send

from service.metrics import call_observed

log = logging.getLogger("service.access")


class AccessLogMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not log.isEnabledFor(logging.INFO):
            await self.app(scope, receive, send)
            return
        path = scope["path"]  # routing may rewrite it for mounts

        def observe(status: int, seconds: float) -> None:
            ms = seconds * 1000
            route_path = getattr(scope.get("route"), "path", None) or path
            method = scope["method"]
            log.info(
                "%s %s %d %.1fms",
                method,
                route_path,
                status,
                ms,
                extra={
                    "fields": {
                        "method": method,
                        "route": route_path,
                        "status": status,
                        "duration_ms": round(ms, 3),
                    }
                },
            )

        await call_observed(self.app, scope, receive, send, observe)
