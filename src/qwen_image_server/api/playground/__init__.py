"""The browser playground: a page at `/` that drives the native task API (docs/playground.md).

Three static files shipped in this package (package data), read once when the app is built and
served from memory: no build step, nothing fetched from the network. The page calls the same
`/v1/...` routes as any client, with the key the user enters; these routes need no key themselves
(the page holds no data), and they stay out of the OpenAPI description.
"""

from __future__ import annotations

from importlib.resources import files

from fastapi import APIRouter
from fastapi.responses import Response

ASSET_PREFIX = "/playground"
_ASSETS = {"index.html": "text/html", "app.js": "text/javascript", "style.css": "text/css"}
# Scripts, styles and API calls only from this server; images also from elsewhere, because result
# links may be presigned URLs of an S3 bucket, and from data:/blob: for the input images' thumbnails.
_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data: blob: https: http:; "
    "object-src 'none'; base-uri 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-cache",  # revalidate, so an upgraded server serves its own page
    "Referrer-Policy": "no-referrer",
}


def playground_router() -> APIRouter:
    folder = files(__package__)
    assets = {name: (folder.joinpath(name).read_bytes(), kind) for name, kind in _ASSETS.items()}
    router = APIRouter(include_in_schema=False)

    def serve(name: str) -> Response:
        body, kind = assets[name]
        return Response(body, media_type=f"{kind}; charset=utf-8", headers=_HEADERS)

    @router.get("/")
    async def playground_page() -> Response:
        return serve("index.html")

    @router.get(ASSET_PREFIX + "/app.js")
    async def playground_script() -> Response:
        return serve("app.js")

    @router.get(ASSET_PREFIX + "/style.css")
    async def playground_style() -> Response:
        return serve("style.css")

    return router
