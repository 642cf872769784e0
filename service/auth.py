"""API keys: the dependency that protects the API routes when keys are configured.

``create_app`` adds ``ApiKeyDep`` to the protected routers only when ``AFM_API_KEYS`` or
``AFM_API_KEYS_FILE`` name keys, so with authentication off a request does no work for it.
A client sends ``X-API-Key: <key>`` or ``Authorization: Bearer <key>``; the two security
schemes are FastAPI's, so OpenAPI lists them on the protected operations and Swagger UI's
Authorize button sends them. The key sent is compared with every accepted key in constant
time and never logged or repeated.
"""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from service.errors import Unauthorized

API_KEY_HEADER = "X-API-Key"

api_key_header = APIKeyHeader(
    name=API_KEY_HEADER,
    scheme_name="apiKey",
    description="An API key of the service (AFM_API_KEYS or AFM_API_KEYS_FILE).",
    auto_error=False,
)
bearer = HTTPBearer(
    scheme_name="bearer",
    description="The same API key, as `Authorization: Bearer <key>`.",
    auto_error=False,
)


class ApiKeys:
    """The accepted keys, as bytes: ``hmac.compare_digest`` takes any bytes, while a str
    outside ASCII (a header may hold one) would make it raise."""

    def __init__(self, keys: tuple[str, ...]) -> None:
        if not keys:
            raise ValueError("ApiKeys needs at least one key")
        self._keys = tuple(key.encode() for key in keys)

    def accepts(self, key: str) -> bool:
        """Compared with every key, so the time taken says nothing about which one matched."""
        given = key.encode()
        matched = False
        for accepted in self._keys:
            matched |= hmac.compare_digest(accepted, given)
        return matched


async def require_api_key(
    request: Request,
    api_key: Annotated[str | None, Depends(api_key_header)],
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> None:
    """401 unless the request carries an accepted key (``X-API-Key`` first, else a bearer
    token)."""
    key = api_key if api_key is not None else credentials and credentials.credentials
    if not key:
        raise Unauthorized(
            f"this API needs a key: send it as {API_KEY_HEADER}: <key> "
            "or Authorization: Bearer <key>"
        )
    keys: ApiKeys = request.app.state.api_keys
    if not keys.accepts(key):
        raise Unauthorized("the API key sent is not one of this service's keys")


ApiKeyDep = Depends(require_api_key)
