"""The pages for people (/, /ui, /docs) and their static files, without a browser.

The page's behaviour in a real Chromium is tested in tests/integration/browser/.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from model.contracts.export_format import HISTORY_FIELD, USER_FIELDS
from service.app import create_app
from service.settings import Settings


@pytest.fixture
def client(tmp_path: Path) -> TestClient:
    """No lifespan: these pages need neither a model nor Redis."""
    return TestClient(create_app(Settings(model_dir=tmp_path, reload_interval=0)))


def test_index_links_the_page_and_the_docs(client: TestClient) -> None:
    response = client.get("/")
    assert response.headers["content-type"].startswith("text/html")
    assert 'href="ui"' in response.text and 'href="docs"' in response.text


def test_page_is_told_the_user_fields_and_its_files_are_served(client: TestClient) -> None:
    page = client.get("/ui")
    assert page.headers["content-type"].startswith("text/html")
    assert f'data-user-fields="{" ".join(USER_FIELDS)} last_watched"' in page.text
    assert f'data-history-field="{HISTORY_FIELD}"' in page.text
    assert "{{" not in page.text  # every placeholder filled
    assets = re.findall(r'(?:src|href)="(static/[^"]+)"', page.text)
    assert sorted(assets) == ["static/ui/app.js", "static/ui/style.css"]
    for asset in assets:
        assert client.get(f"/{asset}").status_code == 200


def test_docs_load_swagger_ui_from_this_service(client: TestClient) -> None:
    html = client.get("/docs").text
    urls = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert "/static/docs/swagger-ui-bundle.js" in urls
    assert all(url.startswith("/") for url in urls), urls  # nothing from another host
    for url in urls:
        assert client.get(url).status_code == 200
    assert "'validatorUrl': null" in html or '"validatorUrl": null' in html
    assert client.get("/redoc").status_code == 404


def test_pages_stay_out_of_the_api_schema(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    assert not {"/", "/ui", "/docs"} & set(paths)


def test_metrics_label_pages_and_files_by_route(client: TestClient) -> None:
    pages = ("/", "/ui", "/docs", "/openapi.json", "/static/ui/app.js")
    for path in (*pages, "/static/docs/swagger-ui.css", "/static/ui/nothing-here", "/nothing-here"):
        client.get(path)
    text = client.get("/metrics").text
    counted = re.findall(
        r'afm_request_duration_seconds_count\{[^}]*route="([^"]*)",status="(\d+)"\} (\S+)', text
    )
    labelled = {(route, status) for route, status, count in counted if float(count) > 0}
    assert labelled == {
        ("/", "200"),
        ("/ui", "200"),
        ("/docs", "200"),
        ("/openapi.json", "200"),
        ("/static/ui", "200"),
        ("/static/ui", "404"),  # a missing file under a mount is counted under the mount
        ("/static/docs", "200"),
        ("unmatched", "404"),
    }
