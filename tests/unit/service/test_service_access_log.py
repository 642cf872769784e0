import json
import logging
import re
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from model.cli.logs import JsonFormatter
from service.app import create_app
from service.metrics import Metrics, ObservedRequestsMiddleware
from service.settings import Settings


def _app() -> FastAPI:
    app = FastAPI()

    @app.get("/items/{item_id}")
    async def item(item_id: int) -> dict[str, int]:
        return {"item_id": item_id}

    app.add_middleware(ObservedRequestsMiddleware, metrics=Metrics(), access_log=True)
    return app


def _access_lines(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "service.access"]


def test_one_access_line_per_request_with_the_route_template(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.INFO, logger="service.access"):
        client = TestClient(_app())
        client.get("/items/3?x=1")
        client.get("/nowhere")
    found, missing = _access_lines(caplog)
    assert re.fullmatch(r"GET /items/\{item_id\} 200 \d+\.\dms", found.getMessage())
    assert re.fullmatch(r"GET /nowhere 404 \d+\.\dms", missing.getMessage())
    entry = json.loads(JsonFormatter().format(found))
    assert entry["method"] == "GET" and entry["route"] == "/items/{item_id}"
    assert entry["status"] == 200 and entry["duration_ms"] > 0


def test_access_log_is_on_by_default_and_can_be_turned_off(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    def lines(**settings: object) -> list[str]:
        caplog.clear()
        app = create_app(Settings(model_dir=tmp_path, reload_interval=0, **settings))
        with caplog.at_level(logging.INFO, logger="service.access"):
            TestClient(app).get("/healthz")
        return [r.getMessage() for r in _access_lines(caplog)]

    assert [line.split()[:3] for line in lines()] == [["GET", "/healthz", "200"]]
    assert lines(access_log=False) == []


def test_a_refused_body_is_logged_and_counted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    app = create_app(Settings(model_dir=tmp_path, reload_interval=0, max_body_bytes=1024))
    with caplog.at_level(logging.INFO, logger="service.access"):
        client = TestClient(app)
        assert client.post("/score", content=b"x" * 2000).status_code == 413
        metrics = client.get("/metrics").text
    assert [r.getMessage().split()[:3] for r in _access_lines(caplog)][0] == [
        "POST",
        "/score",
        "413",
    ]
    assert 'afm_request_duration_seconds_count{method="POST",route="/score",status="413"} 1.0' in (
        metrics
    )
