"""The live job page at ``GET /``: one HTML file, one script and one stylesheet from ``static/``,
no build step and nothing fetched from elsewhere. The page signs in with an API token kept in
``sessionStorage`` and calls the ``/v1`` API like any other client; this module only serves the
files, with a Content-Security-Policy that allows nothing but this origin.

Only the files named in ``_ASSETS`` are served, so no request path ever reaches the file system.
"""

from __future__ import annotations

from pathlib import Path

from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import Route

from shared.errors import ApiError

STATIC = Path(__file__).resolve().parent / "static"
CSP = (
    "default-src 'self'; style-src 'self'; script-src 'self'; connect-src 'self'; "
    "img-src 'self' data:; frame-ancestors 'none'"
)
_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    # Revalidate on every load (the ETag makes that cheap): a deploy is seen at once.
    "Cache-Control": "no-cache",
}
_ASSETS = {
    "app.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
}


def _file(name: str, media_type: str) -> Response:
    return FileResponse(STATIC / name, media_type=media_type, headers=_HEADERS)


async def index(request: Request) -> Response:
    return _file("index.html", "text/html; charset=utf-8")


async def asset(request: Request) -> Response:
    name = request.path_params["path"]
    media_type = _ASSETS.get(name)
    if media_type is None:
        raise ApiError(404, "not_found", "no such file")
    return _file(name, media_type)


def routes() -> list[Route]:
    """``GET /`` and ``GET /static/{path}``, for the producer's route list."""
    return [
        Route("/", index, methods=["GET"]),
        Route("/static/{path}", asset, methods=["GET"]),
    ]
