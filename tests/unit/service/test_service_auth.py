"""API keys: the API routes need one when keys are configured; probes and pages never do.

The real app with the model, registry and store replaced as in test_service_routes.py.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import JSONResponse
from fastapi.testclient import TestClient
from pydantic import BaseModel, ValidationError

from service.auth import ApiKeyDep, ApiKeys
from service.deps import DirectRoute
from service.errors import install_error_handlers
from service.settings import Settings
from tests.unit.service.test_service_routes import FakeModel, FakeStore, _client

KEY_A, KEY_B = "key-a-2f9c81d7", "key-b-77e0c3aa"
PROTECTED = [
    ("POST", "/score", {"json": {"user_id": 1, "movie_ids": [1193]}}),
    ("GET", "/explain", {"params": {"user_id": 1, "movie_id": 1193}}),
    ("GET", "/feature-set", {}),
    ("GET", "/model", {}),
]
OPEN = [
    "/healthz",
    "/readyz",
    "/metrics",
    "/",
    "/ui",
    "/static/ui/app.js",
    "/docs",
    "/openapi.json",
]


@pytest.fixture(params=["list", "file"])
def keyed(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[TestClient]:
    """The app with KEY_A and KEY_B from AFM_API_KEYS, or from AFM_API_KEYS_FILE."""
    if request.param == "list":
        keys = {"api_keys": f"{KEY_A}, {KEY_B}"}
    else:
        path = tmp_path / "keys"
        path.write_text(f"{KEY_A}\n\n  {KEY_B}  \n")
        keys = {"api_keys_file": path}
    with _client(tmp_path, FakeModel(), FakeStore(), **keys) as client:
        yield client


def _call(client: TestClient, method: str, path: str, kwargs: dict, headers: dict | None):  # noqa: ANN202
    return client.request(method, path, headers=headers, **kwargs)


def _assert_401(response, detail_part: str) -> None:  # noqa: ANN001
    assert response.status_code == 401, response.text
    assert response.headers["www-authenticate"] == 'Bearer realm="afm-ctr"'
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert body["status"] == 401 and body["type"] == "urn:afm-ctr:problem:unauthorized"
    assert detail_part in body["detail"]


@pytest.mark.parametrize(("method", "path", "kwargs"), PROTECTED)
def test_protected_route_without_a_key_is_401(
    keyed: TestClient, method: str, path: str, kwargs: dict
) -> None:
    _assert_401(_call(keyed, method, path, kwargs, None), "X-API-Key: <key>")


@pytest.mark.parametrize(("method", "path", "kwargs"), PROTECTED)
@pytest.mark.parametrize(
    "headers",
    [
        {"X-API-Key": "key-c-00000000"},
        {"Authorization": "Bearer key-c-00000000"},
        {"Authorization": f"Basic {KEY_A}"},  # not a bearer token
        {"X-API-Key": KEY_A[:-1]},  # a prefix of a key
        {"X-API-Key": "clé-é"},  # not ASCII: refused, not a 500
    ],
)
def test_protected_route_with_a_wrong_key_is_401(
    keyed: TestClient, method: str, path: str, kwargs: dict, headers: dict
) -> None:
    response = _call(keyed, method, path, kwargs, {k: v.encode() for k, v in headers.items()})
    _assert_401(response, "")
    assert "key-c" not in response.text and KEY_A not in response.text


@pytest.mark.parametrize(("method", "path", "kwargs"), PROTECTED)
@pytest.mark.parametrize("key", [KEY_A, KEY_B])
@pytest.mark.parametrize("form", ["X-API-Key", "Bearer"])
def test_each_key_opens_each_route_in_either_header(
    keyed: TestClient, method: str, path: str, kwargs: dict, key: str, form: str
) -> None:
    headers = {"X-API-Key": key} if form == "X-API-Key" else {"Authorization": f"Bearer {key}"}
    assert _call(keyed, method, path, kwargs, headers).status_code == 200


@pytest.mark.parametrize("path", OPEN)
def test_probes_pages_and_docs_stay_open(keyed: TestClient, path: str) -> None:
    assert keyed.get(path).status_code == 200


def test_without_keys_the_api_is_open_and_documents_no_security(tmp_path: Path) -> None:
    with _client(tmp_path, FakeModel(), FakeStore()) as client:
        for method, path, kwargs in PROTECTED:
            assert _call(client, method, path, kwargs, None).status_code == 200, path
        schema = client.get("/openapi.json").json()
    assert "securitySchemes" not in schema.get("components", {})
    assert all(
        "401" not in op["responses"] for ops in schema["paths"].values() for op in ops.values()
    )


def test_a_key_never_reaches_the_logs(keyed: TestClient, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    keyed.post("/score", json={"user_id": 1, "movie_ids": [1193]}, headers={"X-API-Key": KEY_A})
    keyed.get("/model", headers={"Authorization": f"Bearer {KEY_B}"})
    keyed.get("/model", headers={"X-API-Key": "key-wrong-123"})
    access = [r.getMessage() for r in caplog.records if r.name == "service.access"]
    assert "POST /score 200" in access[0] and "GET /model 401" in access[2]
    assert not [r for r in caplog.records if any(k in r.getMessage() for k in (KEY_A, KEY_B))]
    assert "key-wrong" not in caplog.text and KEY_A not in caplog.text and KEY_B not in caplog.text


def test_settings_refuse_keys_that_would_silently_turn_authentication_off(
    tmp_path: Path,
) -> None:
    empty = tmp_path / "empty"
    empty.write_text("\n  \n")
    with pytest.raises(ValidationError, match="holds no key"):
        Settings(model_dir=tmp_path, api_keys_file=empty)
    with pytest.raises(ValidationError, match="cannot read the API keys file"):
        Settings(model_dir=tmp_path, api_keys_file=tmp_path / "missing")
    with pytest.raises(ValidationError, match="printable ASCII") as raised:
        Settings(model_dir=tmp_path, api_keys="good-key, bad key")
    assert "bad key" not in str(raised.value)  # the error never shows the keys
    assert Settings(model_dir=tmp_path).accepted_api_keys == ()
    assert Settings(model_dir=tmp_path, api_keys=" a1 ,b2,a1,").accepted_api_keys == ("a1", "b2")


def test_api_keys_compare_every_key() -> None:
    keys = ApiKeys(("alpha", "beta"))
    assert keys.accepts("beta") and keys.accepts("alpha")
    assert not keys.accepts("") and not keys.accepts("alph") and not keys.accepts("betaa")
    assert not keys.accepts("ünïcode")


class Body(BaseModel):
    n: int


def _routed(router_dependency: bool) -> TestClient:
    """An app whose one DirectRoute gets the key check from its router (``APIRouter(
    dependencies=...)``) or from its inclusion (``include_router(..., dependencies=...)``),
    with the security schemes as sub-dependencies, and a plain dependency cached per request."""
    calls: list[str] = []

    async def counted(request: Request) -> str:
        calls.append(request.url.path)
        return "counted"

    async def needs_counted(request: Request, value: str = Depends(counted)) -> str:  # noqa: B008
        return value + "!"

    async def endpoint(body: Body, a: str = Depends(counted), b: str = Depends(needs_counted)):  # noqa: ANN202, B008
        return JSONResponse({"n": body.n, "a": a, "b": b, "calls": len(calls)})

    router = APIRouter(dependencies=[ApiKeyDep] if router_dependency else [])
    router.add_api_route("/x", endpoint, methods=["POST"], route_class_override=DirectRoute)
    app = FastAPI()
    install_error_handlers(app)
    app.state.api_keys = ApiKeys((KEY_A,))
    app.include_router(router, dependencies=[] if router_dependency else [ApiKeyDep])
    return TestClient(app)


@pytest.mark.parametrize("router_dependency", [True, False])
def test_direct_route_runs_router_and_inclusion_dependencies(router_dependency: bool) -> None:
    client = _routed(router_dependency)
    _assert_401(client.post("/x", json={"n": 1}), "needs a key")
    _assert_401(client.post("/x", json={"n": "not checked before the key"}), "needs a key")
    answer = client.post("/x", json={"n": 2}, headers={"Authorization": f"Bearer {KEY_A}"})
    assert answer.json() == {"n": 2, "a": "counted", "b": "counted!", "calls": 1}
    schema = client.get("/openapi.json").json()
    assert schema["paths"]["/x"]["post"]["security"] == [{"apiKey": []}, {"bearer": []}]
