"""``/docs`` and ``/redoc`` served from the installed packages: no CDN, so they work offline and air-gapped.

FastAPI's own pages load Swagger UI and ReDoc from a CDN; a server without internet access (or a browser that
blocks it) shows a blank page. The same assets ship inside the ``fastapi-offline`` wheel (only its static files
are used); they are read once, at start-up, and served with a long cache lifetime.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from importlib import resources

from fastapi import FastAPI
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import HTMLResponse, Response

STATIC = "/docs/static"
_ASSETS = {
    "swagger-ui-bundle.js": "text/javascript; charset=utf-8",
    "swagger-ui.css": "text/css; charset=utf-8",
    "redoc.standalone.js": "text/javascript; charset=utf-8",
    "favicon.png": "image/png",
}


def add_docs(app: FastAPI, openapi_url: str = "/openapi.json") -> None:
    """Add ``/docs``, ``/docs/oauth2-redirect``, ``/redoc`` and their assets to ``app`` (created with
    ``docs_url=None, redoc_url=None``), outside the OpenAPI schema."""
    folder = resources.files("fastapi_offline") / "static"
    assets = {name: (folder / name).read_bytes() for name in _ASSETS}
    title = app.title

    async def swagger_ui() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=openapi_url,
            title=f"{title} - Swagger UI",
            oauth2_redirect_url="/docs/oauth2-redirect",
            swagger_js_url=f"{STATIC}/swagger-ui-bundle.js",
            swagger_css_url=f"{STATIC}/swagger-ui.css",
            swagger_favicon_url=f"{STATIC}/favicon.png",
        )

    async def oauth2_redirect() -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()

    async def redoc() -> HTMLResponse:
        return get_redoc_html(
            openapi_url=openapi_url,
            title=f"{title} - ReDoc",
            redoc_js_url=f"{STATIC}/redoc.standalone.js",
            redoc_favicon_url=f"{STATIC}/favicon.png",
            with_google_fonts=False,
        )

    def asset(name: str) -> Callable[[], Awaitable[Response]]:
        """The endpoint of one asset (no parameters: nothing a client sends can pick another file)."""
        response = Response(
            assets[name], media_type=_ASSETS[name], headers={"Cache-Control": "public, max-age=86400"}
        )

        async def serve() -> Response:
            return response

        return serve

    app.add_api_route("/docs", swagger_ui, include_in_schema=False)
    app.add_api_route("/docs/oauth2-redirect", oauth2_redirect, include_in_schema=False)
    app.add_api_route("/redoc", redoc, include_in_schema=False)
    for name in _ASSETS:
        app.add_api_route(f"{STATIC}/{name}", asset(name), include_in_schema=False)
