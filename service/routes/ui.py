"""Pages for people: the explanation page at /ui, an index at /, and offline API docs.

Nothing here is part of the API (all of it is left out of the OpenAPI schema). The page is
plain HTML, CSS and JavaScript shipped in the package (``service/static/``) and reads the
public API like any client: ``GET /feature-set`` for sample users and popular movies,
``POST /score`` with ``explain`` for the ranking and every candidate's explanation.

/docs loads Swagger UI from this service, never from a CDN: its assets come from the pinned
``fastapi-offline`` package (Swagger UI 5, which renders FastAPI's OpenAPI 3.1;
``swagger-ui-bundle`` ships Swagger UI 4, which refuses 3.1 documents). There is no /redoc:
ReDoc's bundle fetches its logo from its CDN.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

import fastapi_offline
from fastapi import APIRouter, FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse
from fastapi.staticfiles import StaticFiles

from model.contracts.export_format import HISTORY_FIELD, LAST_WATCHED, USER_FIELDS

PAGES_DIR = Path(__file__).resolve().parent.parent / "static"
"""index.html and ui.html (a template), served by the routes below; ui/, the page's script
and style sheet, served as files under ASSETS_URL."""

DOCS_ASSETS_DIR = Path(fastapi_offline.__file__).parent / "static"
"""swagger-ui-bundle.js, swagger-ui.css, favicon.png (and ReDoc's bundle, unused)."""

ASSETS_URL = "/static/ui"
DOCS_ASSETS_URL = "/static/docs"
USER_FIELDS_PLACEHOLDER = "{{user_fields}}"
HISTORY_FIELD_PLACEHOLDER = "{{history_field}}"

router = APIRouter(include_in_schema=False)


def mount_static(app: FastAPI) -> None:
    """Serve the page's files and the docs' assets. Each mount is one ``route`` label in
    /metrics (``/static/ui``, ``/static/docs``), whatever file is asked for."""
    app.mount(ASSETS_URL, StaticFiles(directory=PAGES_DIR / "ui"), name="ui-assets")
    app.mount(DOCS_ASSETS_URL, StaticFiles(directory=DOCS_ASSETS_DIR), name="docs-assets")


@router.get("/")
async def index() -> FileResponse:
    """Links to the page, the API docs and the operations endpoints."""
    return FileResponse(PAGES_DIR / "index.html")


@router.get("/ui")
async def explanation_page() -> HTMLResponse:
    """The explanation page, told which fields describe the user (the contract's
    USER_FIELDS and LAST_WATCHED, in ``data-user-fields``) and which one holds what the user watched
    (HISTORY_FIELD, in ``data-history-field``) rather than keeping its own names."""
    return HTMLResponse(_page())


@cache
def _page() -> str:
    html = (PAGES_DIR / "ui.html").read_text(encoding="utf-8")
    html = html.replace(USER_FIELDS_PLACEHOLDER, " ".join((*USER_FIELDS, LAST_WATCHED)))
    return html.replace(HISTORY_FIELD_PLACEHOLDER, HISTORY_FIELD)


@router.get("/docs")
async def swagger_ui(request: Request) -> HTMLResponse:
    root = request.scope.get("root_path", "")
    return get_swagger_ui_html(
        openapi_url=f"{root}{request.app.openapi_url}",
        title=f"{request.app.title} - Swagger UI",
        swagger_js_url=f"{root}{DOCS_ASSETS_URL}/swagger-ui-bundle.js",
        swagger_css_url=f"{root}{DOCS_ASSETS_URL}/swagger-ui.css",
        swagger_favicon_url=f"{root}{DOCS_ASSETS_URL}/favicon.png",
        oauth2_redirect_url=None,
        # By default Swagger UI asks swagger.io's online validator about any host but localhost.
        swagger_ui_parameters={"validatorUrl": None},
    )
