"""What a provider dialect is to the app: its routes, the paths it owns, and its error shape.

Each dialect package (api/<name>/) has `schemas.py` (wire shapes), `translate.py` (pure functions
to and from `GenerationRequest` / `Task`) and `routes.py` (thin routes), and exposes `DIALECT`.
Routes create tasks only through api/accept.py and reach them after that only through api/tasks.py;
they never touch the store or the engine. docs/development.md shows how to add one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

from fastapi import APIRouter, Request
from pydantic import BaseModel

from qwen_image_server.api.errors import ErrorRenderer
from qwen_image_server.api.rate_limit import check_request_rate
from qwen_image_server.errors import CallerError
from qwen_image_server.service import Service
from qwen_image_server.tasks.keys import ApiKey, Scope
from qwen_image_server.tasks.model import Task


@dataclass(frozen=True)
class Dialect:
    name: str
    prefixes: tuple[str, ...]  # request paths starting with these get this dialect's error shape
    router: Callable[[Service], APIRouter]
    render_error: ErrorRenderer
    error_model: type[BaseModel]  # the body `render_error` gives, declared in the OpenAPI spec
    key_header: str = "Authorization"  # where its clients send the API key (api/key_first.py reads it)
    key_scheme: str | None = "Bearer"  # the scheme before the key in that header; None for a bare key


class Unauthorized(CallerError):
    status = 401
    code = "invalid_api_key"


class Forbidden(CallerError):
    status = 403
    code = "insufficient_scope"


@dataclass(frozen=True)
class Caller:
    """Who is calling: a key id, or None when the server runs open (no API keys exist)."""

    key_id: str | None
    sees_all: bool  # open servers and admin keys see every task

    def owns(self, task: Task) -> bool:
        return self.sees_all or task.owner == self.key_id


def presented_key(request: Request, header: str, scheme: str | None = "Bearer") -> str | None:
    """The key from the provider's header (`Authorization: Bearer k`, `Api-Key: k`, ...)."""
    value = request.headers.get(header)
    if value is None:
        return None
    if scheme is not None:
        prefix = f"{scheme} "
        value = value[len(prefix) :] if value.lower().startswith(prefix.lower()) else value
    return value.strip() or None


async def authenticate(
    service: Service, request: Request, header: str, *, scheme: str | None = "Bearer", scope: Scope = Scope.GENERATE
) -> Caller:
    """Check the caller's key (read from its provider's header). Once any key exists every call
    needs a valid one; before that the server is open (and `serve` refuses to listen beyond
    loopback without `--open`). Every call let through counts against the request rate limit
    (`requests_per_minute`) of its key, or on an open server of its client address."""
    caller = await _identify(service, request, header, scheme, scope)
    if caller.key_id is not None:
        identity, who = f"key:{caller.key_id}", "this API key"
    else:  # behind a proxy, uvicorn's FORWARDED_ALLOW_IPS decides whose X-Forwarded-For is believed
        address = request.client.host if request.client else "unknown"
        identity, who = f"address:{address}", "this address"
    await check_request_rate(service.rate_limiter, identity, who=who)
    return caller


async def _identify(service: Service, request: Request, header: str, scheme: str | None, scope: Scope) -> Caller:
    token = presented_key(request, header, scheme)
    key = await _verified_key(service, request, header, token)
    if key is None:
        if not await service.keys.keys_required():
            # Open server: clients of providers always send some key; any (or none) is accepted.
            return Caller(key_id=None, sees_all=True)
        raise Unauthorized(unauthorized_message(header, token))
    if not key.allows(scope):
        raise Forbidden(f"this API key lacks the {scope} scope")
    return Caller(key_id=key.id, sees_all=Scope.ADMIN in key.scopes)


async def _verified_key(service: Service, request: Request, header: str, token: str | None) -> ApiKey | None:
    """The key `token` names: as api/key_first.py found it before the body was read, or looked up."""
    verified = getattr(request.state, VERIFIED_KEY, None)
    if verified is not None and verified[:2] == (header, token):
        return cast(ApiKey, verified[2])
    return await service.keys.authenticate(token) if token else None


def unauthorized_message(header: str, token: str | None) -> str:
    if token is None:
        return f"a valid API key is required in the {header} header"
    return "the API key is not valid (unknown, mistyped or revoked)"


VERIFIED_KEY = "verified_api_key"  # the request.state attribute api/key_first.py leaves for the route
