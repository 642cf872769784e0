"""What ``/openapi.json`` says beyond FastAPI's own schema, for client generators and fuzzers.

FastAPI builds the schema once and caches it; ``document(app)`` rewrites that cached copy:

- Error bodies are listed under the media type they are sent with. FastAPI documents every
  ``responses={...: {"model": Problem}}`` as ``application/json``; the handlers in
  ``service/errors.py`` send ``application/problem+json``.
- Integer bounds are integers. FastAPI's OpenAPI model holds ``minimum`` and ``maximum`` as
  floats, so a model's ``le=2**63 - 1`` would read ``9.223372036854776e+18``, a bound no
  64-bit client type holds (the float is 2**63). Ids' bound, ``ID_MAX``, is given back exactly.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

from service.errors import PROBLEM_MEDIA_TYPE
from service.schemas import ID_MAX

_BOUNDS = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum")


def document(app: FastAPI) -> None:
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        schema = generate()  # FastAPI caches it: the rewrites below run on the cached copy
        _problems_as_problem_json(schema)
        _integer_bounds(schema)
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def _problems_as_problem_json(schema: dict[str, Any]) -> None:
    for operations in schema.get("paths", {}).values():
        for operation in operations.values():
            for response in operation.get("responses", {}).values():
                content = response.get("content", {})
                body = content.get("application/json", {}).get("schema", {})
                if body.get("$ref", "").endswith("/Problem"):
                    response["content"] = {PROBLEM_MEDIA_TYPE: content.pop("application/json")}


def _integer_bounds(node: Any) -> None:
    """Every integer schema's float bounds back to integers, anywhere in ``node``."""
    if isinstance(node, dict):
        if node.get("type") == "integer":
            for bound in _BOUNDS:
                value = node.get(bound)
                if isinstance(value, float):
                    node[bound] = ID_MAX if value == float(ID_MAX) else int(value)
        for child in node.values():
            _integer_bounds(child)
    elif isinstance(node, list):
        for child in node:
            _integer_bounds(child)
