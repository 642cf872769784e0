"""CORS: pages on the origins in AFM_CORS_ORIGINS may call the API from a browser."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from service.settings import Settings
from tests.unit.service.test_service_routes import FakeModel, FakeStore, _client

ORIGIN = "https://app.example.com"
PREFLIGHT = {
    "Origin": ORIGIN,
    "Access-Control-Request-Method": "POST",
    "Access-Control-Request-Headers": "content-type, x-api-key, authorization",
}


def test_without_origins_a_preflight_gets_no_cors_headers(tmp_path: Path) -> None:
    with _client(tmp_path, FakeModel(), FakeStore()) as client:
        response = client.options("/score", headers=PREFLIGHT)
    assert response.status_code == 405
    assert not [name for name in response.headers if name.startswith("access-control-")]


def test_a_configured_origin_may_post_with_a_key(tmp_path: Path) -> None:
    settings = {"cors_origins": f"http://localhost:3000, {ORIGIN}", "api_keys": "k-1"}
    with _client(tmp_path, FakeModel(), FakeStore(), **settings) as client:
        preflight = client.options("/score", headers=PREFLIGHT)
        other = client.options("/score", headers={**PREFLIGHT, "Origin": "https://evil.example"})
        refused = client.post(
            "/score", json={"user_id": 1, "movie_ids": [1]}, headers={"Origin": ORIGIN}
        )
    assert preflight.status_code == 200
    assert preflight.headers["access-control-allow-origin"] == ORIGIN
    allowed = {
        h.strip().lower() for h in preflight.headers["access-control-allow-headers"].split(",")
    }
    assert {"content-type", "x-api-key", "authorization"} <= allowed
    assert "POST" in preflight.headers["access-control-allow-methods"]
    assert other.status_code == 400 and "access-control-allow-origin" not in other.headers
    # a 401 reaches the page's script, with the header saying why
    assert refused.status_code == 401
    assert refused.headers["access-control-allow-origin"] == ORIGIN
    assert "WWW-Authenticate" in refused.headers["access-control-expose-headers"]


@pytest.mark.parametrize("origin", ["https://app.example.com/", "app.example.com", "ftp://x"])
def test_an_origin_with_a_path_or_no_scheme_is_refused_at_startup(
    tmp_path: Path, origin: str
) -> None:
    with pytest.raises(ValidationError, match="is not an origin"):
        Settings(model_dir=tmp_path, cors_origins=origin)
