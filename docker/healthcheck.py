"""Container health probe (the image's HEALTHCHECK): healthy when the API's /readyz answers 200.

One image runs two roles. Only the API has something to probe; a container whose PID 1 is not
``afm-ctr serve`` (the trainer job, a shell) reports healthy, so the one-shot trainer is never
marked unhealthy for lacking an HTTP server. Exit 0 = healthy, 1 = unhealthy (Docker's rule).
"""

import os
import sys
import urllib.request
from pathlib import Path


def serving() -> bool:
    """True when PID 1 is the API (the entrypoint execs ``afm-ctr serve``)."""
    try:
        argv = Path("/proc/1/cmdline").read_bytes().split(b"\0")
    except OSError:
        return True  # cannot tell: probe
    return b"serve" in argv


def ready(port: str) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as response:
            return response.status == 200
    except OSError:  # connection refused, timeout, or an HTTP error status (503 not ready)
        return False


if __name__ == "__main__":
    sys.exit(0 if not serving() or ready(os.environ.get("AFM_PORT", "8000")) else 1)
