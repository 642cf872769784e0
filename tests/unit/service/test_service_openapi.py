"""/openapi.json as client generators read it: valid OpenAPI, integer ids, typed problems,
the 503s' Retry-After, and the API key's security schemes on the API routes."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from openapi_spec_validator import validate

from service.schemas import ID_MAX
from tests.unit.service.test_service_routes import FakeModel, FakeStore, _client

PROTECTED = [
    ("/score", "post"),
    ("/events", "post"),
    ("/explain", "get"),
    ("/feature-set", "get"),
    ("/model", "get"),
]


@pytest.fixture(scope="module")
def spec(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The schema of the app with API keys configured, validated."""
    with _client(tmp_path_factory.mktemp("m"), FakeModel(), FakeStore(), api_keys="k-1") as c:
        schema = c.get("/openapi.json").json()
    validate(schema)  # raises OpenAPIValidationError, naming the offending path
    return schema


def test_the_schema_without_keys_is_valid_too(tmp_path: Path) -> None:
    with _client(tmp_path, FakeModel(), FakeStore()) as client:
        validate(client.get("/openapi.json").json())


def _integer_schemas(node: Any) -> Iterator[dict[str, Any]]:
    if isinstance(node, dict):
        if node.get("type") == "integer":
            yield node
        for child in node.values():
            yield from _integer_schemas(child)
    elif isinstance(node, list):
        for child in node:
            yield from _integer_schemas(child)


def test_the_score_body_is_a_named_schema(spec: dict) -> None:
    body = spec["paths"]["/score"]["post"]["requestBody"]["content"]["application/json"]
    assert body["schema"] == {"$ref": "#/components/schemas/ScoreRequest"}


def test_id_limits_are_integers_everywhere(spec: dict) -> None:
    request = spec["components"]["schemas"]["ScoreRequest"]["properties"]
    explain = {p["name"]: p["schema"] for p in spec["paths"]["/explain"]["get"]["parameters"]}
    ids = [
        request["user_id"],
        request["movie_ids"]["items"],
        request["model_version"]["anyOf"][0],
        explain["user_id"],
        explain["movie_id"],
        explain["model_version"]["anyOf"][0],
    ]
    for schema in ids:
        assert schema["type"] == "integer"
        assert schema["minimum"] == 0 and type(schema["minimum"]) is int
        assert schema["maximum"] == ID_MAX and type(schema["maximum"]) is int
    for schema in _integer_schemas(spec):
        bounds = [schema[b] for b in ("minimum", "maximum") if b in schema]
        assert all(type(bound) is int for bound in bounds), schema


def test_problem_errors_are_typed(spec: dict) -> None:
    schemas = spec["components"]["schemas"]
    errors = schemas["Problem"]["properties"]["errors"]["anyOf"][0]
    assert errors == {"type": "array", "items": {"$ref": "#/components/schemas/FieldError"}}
    field_error = schemas["FieldError"]
    assert field_error["required"] == ["field", "message"]
    assert {p["type"] for p in field_error["properties"].values()} == {"string"}


def test_every_503_declares_retry_after(spec: dict) -> None:
    found = []
    for path, operations in spec["paths"].items():
        for operation in operations.values():
            if "503" in operation["responses"]:
                header = operation["responses"]["503"]["headers"]["Retry-After"]
                assert header["schema"]["type"] == "integer"
                found.append(path)
    assert sorted(found) == ["/events", "/explain", "/feature-set", "/model", "/readyz", "/score"]


def test_only_a_route_with_a_body_documents_413(spec: dict) -> None:
    assert "413" in spec["paths"]["/score"]["post"]["responses"]
    assert "413" in spec["paths"]["/events"]["post"]["responses"]
    assert "413" not in spec["paths"]["/explain"]["get"]["responses"]


def test_the_api_routes_name_the_key_schemes(spec: dict) -> None:
    schemes = spec["components"]["securitySchemes"]
    assert schemes["apiKey"] == {
        "type": "apiKey",
        "in": "header",
        "name": "X-API-Key",
        "description": schemes["apiKey"]["description"],
    }
    assert schemes["bearer"]["type"] == "http" and schemes["bearer"]["scheme"] == "bearer"
    for path, method in PROTECTED:
        operation = spec["paths"][path][method]
        assert operation["security"] == [{"apiKey": []}, {"bearer": []}], path
        assert "WWW-Authenticate" in operation["responses"]["401"]["headers"]
        assert list(operation["responses"]["401"]["content"]) == ["application/problem+json"]
    for path in ("/healthz", "/readyz"):
        assert "security" not in spec["paths"][path]["get"], path


def test_events_are_documented_with_examples(spec: dict) -> None:
    """The body is a list of Event (an invalid entry is refused alone, but documented as
    what to send); the 202 answers per event, each refusal a typed problem."""
    operation = spec["paths"]["/events"]["post"]
    body = operation["requestBody"]["content"]["application/json"]["schema"]
    assert body == {"$ref": "#/components/schemas/EventsRequest"}
    schemas = spec["components"]["schemas"]
    request = schemas["EventsRequest"]
    assert request["properties"]["events"]["items"] == {"$ref": "#/components/schemas/Event"}
    assert request["examples"] and schemas["Event"]["examples"]
    assert schemas["Event"]["properties"]["type"]["enum"] == ["click", "view", "skip"]
    assert set(operation["responses"]) >= {"202", "401", "413", "422", "503"}
    accepted = operation["responses"]["202"]["content"]["application/json"]["schema"]
    assert accepted == {"$ref": "#/components/schemas/EventsResponse"}
    assert schemas["EventsResponse"]["examples"]
    result = schemas["EventResult"]["properties"]
    assert result["outcome"]["enum"] == ["accepted", "duplicate", "refused"]
    score = schemas["ScoreResponse"]
    assert "impression_id" in score["properties"] and "impression_id" in score["examples"][0]
    assert schemas["ScoreRequest"]["properties"]["log"]["type"] == "boolean"
