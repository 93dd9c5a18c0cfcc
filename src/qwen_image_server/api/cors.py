"""Cross-origin requests from browsers (CORS), off unless `cors_allowed_origins` names origins.

Starlette's CORSMiddleware answers preflights (OPTIONS with Access-Control-Request-Method) and
adds the CORS headers to answers for allowed origins. The request headers let through are those
the dialects read (their key headers, idempotency, DashScope's async switch); the response headers
exposed are those a browser client needs beyond the safelisted ones.
"""

from __future__ import annotations

from fastapi import FastAPI
from starlette.middleware.cors import CORSMiddleware

# What the routes read: keys (Authorization for most dialects, Api-Key for Pixwith,
# Ocp-Apim-Subscription-Key for Pixazo), Idempotency-Key, Prefer (the native and Replicate waits),
# X-DashScope-Async, fal's X-Fal-* request headers (the queue priority is applied, the request
# timeout and runner hint reported as not applied: api/fal/routes.py), Range and If-Range for result
# downloads; and what the providers' own browser
# examples and SDKs send besides (Pixazo's Cache-Control, DashScope's other switches, X-Api-Key),
# which a preflight would otherwise refuse.
REQUEST_HEADERS = (
    "Authorization",
    "Api-Key",
    "X-Api-Key",
    "Ocp-Apim-Subscription-Key",
    "Content-Type",
    "Cache-Control",
    "Idempotency-Key",
    "Prefer",
    "X-DashScope-Async",
    "X-DashScope-SSE",
    "X-DashScope-WorkSpace",
    "X-Fal-Queue-Priority",
    "X-Fal-Request-Timeout",
    "X-Fal-Runner-Hint",
    "Range",
    "If-Range",
    "If-None-Match",
    "Last-Event-ID",
)
# Beyond the CORS-safelisted response headers: where a task is (Replicate's Location too), when to
# retry, which methods a path serves, the download headers of result images, and fal's error type
# (fal-client reads X-Fal-Error-Type when the body has none).
EXPOSED_HEADERS = (
    "Location",
    "Retry-After",
    "Allow",
    "ETag",
    "Content-Range",
    "Accept-Ranges",
    "Content-Length",
    "X-Fal-Error-Type",
)
# PUT: fal's `PUT .../requests/{id}/cancel`.
METHODS = ("GET", "HEAD", "POST", "PUT")
PREFLIGHT_CACHE_SECONDS = 600


def allow_cross_origin(app: FastAPI, origins: tuple[str, ...]) -> None:
    """Let browsers on `origins` (e.g. `https://app.example.com`, or `*` for any) call the API."""
    if not origins:
        return
    app.add_middleware(
        CORSMiddleware,
        allow_origins=list(origins),
        allow_methods=list(METHODS),
        allow_headers=list(REQUEST_HEADERS),
        expose_headers=list(EXPOSED_HEADERS),
        max_age=PREFLIGHT_CACHE_SECONDS,
    )
