"""A real service in a uvicorn thread and a headless Chromium driving it.

The service is the serving tests' setup (the session's trained model, the synthetic feature
set in real Redis under a unique prefix); only the HTTP server is real here instead of a
TestClient. Chromium and chromedriver are Debian's (``apt-get install chromium
chromium-driver``, as .ci/run does); Selenium is given both paths, so Selenium Manager never
downloads a browser or a driver.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from service.settings import Settings
from tests.integration.serving.conftest import *  # noqa: F403 - the loaded prefixes and what they need
from tests.integration.serving.helpers import ServerThread, wait_until

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
VIEWPORT = (1280, 900)


@pytest.fixture(scope="module")
def server(trained_model_dir: Path, redis_url: str, loaded_prefix: str) -> Iterator[ServerThread]:
    settings = Settings(
        model_dir=trained_model_dir, redis_url=redis_url, redis_prefix=loaded_prefix
    )
    with ServerThread(settings) as running:
        wait_until(
            lambda: httpx.get(f"{running.url}/readyz").status_code == 200,
            what="/readyz to turn 200",
        )
        yield running


@pytest.fixture(scope="module")
def history_server(
    history_model_dir: Path, redis_url: str, history_prefix: str
) -> Iterator[ServerThread]:
    """The same with a version that reads what users watched, and their histories loaded."""
    settings = Settings(
        model_dir=history_model_dir, redis_url=redis_url, redis_prefix=history_prefix
    )
    with ServerThread(settings) as running:
        wait_until(
            lambda: httpx.get(f"{running.url}/readyz").status_code == 200,
            what="/readyz to turn 200",
        )
        yield running


@pytest.fixture(scope="module")
def http(server: ServerThread) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=30) as client:
        yield client


@pytest.fixture(scope="module")
def browser() -> Iterator:
    """Headless Chromium with its console and network logs readable (``get_log``)."""
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    if missing:
        pytest.skip(
            f"{' and '.join(missing)} not installed (apt-get install chromium chromium-driver)"
        )
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in (
        "--headless=new",
        "--no-sandbox",  # CI runs as root
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--no-first-run",
        "--disable-background-networking",  # no requests of Chromium's own to the Internet
        "--hide-scrollbars",
    ):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(30)
    width, height = VIEWPORT  # the page itself, not the window around it
    driver.execute_cdp_cmd(
        "Emulation.setDeviceMetricsOverride",
        {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False},
    )
    try:
        yield driver
    finally:
        driver.quit()
