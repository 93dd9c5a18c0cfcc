"""What a provider dialect is to the app: its routes, the paths it owns, and its error shape.

Each dialect package (api/<name>/) has `schemas.py` (wire shapes), `translate.py` (pure functions
to and from `GenerationRequest` / `Task`) and `routes.py` (thin routes), and exposes `DIALECT`.
Routes reach tasks only through api/tasks.py; they never touch the store or the engine.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from fastapi import APIRouter, Request

from qwen_image_server.api.errors import ErrorRenderer
from qwen_image_server.service import Service


@dataclass(frozen=True)
class Dialect:
    name: str
    prefixes: tuple[str, ...]  # request paths starting with these get this dialect's error shape
    router: Callable[[Service], APIRouter]
    render_error: ErrorRenderer


def api_key(request: Request, header: str, scheme: str | None = "Bearer") -> str | None:
    """The caller's key from the provider's header (`Authorization: Bearer k`, `Api-Key: k`, ...).

    Keys are read but not yet enforced: any key (or none) is accepted until API keys exist."""
    value = request.headers.get(header)
    if value is None:
        return None
    if scheme is not None:
        prefix = f"{scheme} "
        value = value[len(prefix) :] if value.lower().startswith(prefix.lower()) else value
    return value.strip() or None
