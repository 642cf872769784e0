"""The error-rate guard's input: scoring requests and 5xx answers per model version, read from
a service's ``/metrics``, so a canary that fails more is rolled back before clicks are asked.

The service counts every scoring request in ``afm_scored_request_duration_seconds`` by
``route``, ``version``, ``arm`` and ``status`` (``service/metrics.py``); the ``_count``
series of that histogram, summed over routes and arms, are a version's requests, those with
a 5xx status its errors. They count since the replica started, on the replica that answered
the scrape.
"""

from __future__ import annotations

import re
import urllib.error
import urllib.request

from model.errors import AfmError
from model.online.judge import ErrorCounts

SCORED_COUNT = "afm_scored_request_duration_seconds_count"
_SAMPLE = re.compile(r"^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(?P<labels>.*)\})?\s+(?P<value>\S+)")
_LABEL = re.compile(r'(?P<key>[a-zA-Z_][a-zA-Z0-9_]*)="(?P<value>(?:[^"\\]|\\.)*)"')


def errors_by_version(text: str) -> dict[int, ErrorCounts]:
    """Version -> its scoring requests and 5xx answers, from Prometheus text."""
    requests: dict[int, float] = {}
    errors: dict[int, float] = {}
    for line in text.splitlines():
        if not line.startswith(SCORED_COUNT):
            continue
        match = _SAMPLE.match(line)
        if match is None or match["name"] != SCORED_COUNT:
            continue
        labels = {m["key"]: m["value"] for m in _LABEL.finditer(match["labels"] or "")}
        try:
            version, value = int(labels["version"]), float(match["value"])
        except (KeyError, ValueError):
            continue
        requests[version] = requests.get(version, 0.0) + value
        if labels.get("status", "").startswith("5"):
            errors[version] = errors.get(version, 0.0) + value
    return {
        version: ErrorCounts(int(total), int(errors.get(version, 0.0)))
        for version, total in requests.items()
    }


def fetch_metrics(url: str, timeout: float = 5.0) -> str:
    """The Prometheus text at ``url``; AfmError in one line when it cannot be had."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as reply:  # noqa: S310 (a URL the user gave)
            return reply.read().decode("utf-8", errors="replace")
    except urllib.error.HTTPError as exc:
        raise AfmError(f"{url} answered {exc.code}: cannot read the error rates") from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise AfmError(f"cannot read {url} for the error rates: {reason}") from None
