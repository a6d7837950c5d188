"""The API's own description: ``/v1/openapi.json`` and a Swagger UI page at ``/v1/docs`` whose assets are
served from the ``swagger-ui-bundle-v2`` package (no CDN: it works offline)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import HTMLResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from swagger_ui_bundle import swagger_ui_path

from server.openapi import openapi_document
from server.responses import JSONResponse

DOCS_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
  <meta charset="UTF-8">
  <title>hexdispatch API</title>
  <link rel="stylesheet" href="/v1/docs/assets/swagger-ui.css">
  <link rel="icon" type="image/png" href="/v1/docs/assets/favicon-32x32.png">
</head>
<body>
  <div id="swagger-ui"></div>
  <script src="/v1/docs/assets/swagger-ui-bundle.js"></script>
  <script>
    // validatorUrl null: no badge fetched from swagger.io (the page works offline).
    window.ui = SwaggerUIBundle({url: "/v1/openapi.json", dom_id: "#swagger-ui", deepLinking: true,
                                 persistAuthorization: true, validatorUrl: null});
  </script>
</body>
</html>
"""


async def openapi_json(request: Request) -> JSONResponse:
    """The OpenAPI 3.1 document of this app's routes (built once per app)."""
    state = request.app.state
    if getattr(state, "openapi", None) is None:
        state.openapi = openapi_document(request.app.routes)
    return JSONResponse(state.openapi)


async def docs_page(request: Request) -> HTMLResponse:
    return HTMLResponse(DOCS_PAGE)


ROUTES = [
    Route("/v1/openapi.json", openapi_json, methods=["GET"]),
    Route("/v1/docs", docs_page, methods=["GET"]),
    Mount("/v1/docs/assets", app=StaticFiles(directory=str(swagger_ui_path)), name="docs-assets"),
]
