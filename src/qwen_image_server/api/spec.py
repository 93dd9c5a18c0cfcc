"""The error responses in the OpenAPI spec, as they are really given.

FastAPI documents a 422 with its own validation-error body on every operation that takes input;
this server answers malformed requests with 400, and every error in the shape of the dialect that
owns the path (api/errors.py). So the spec declares, on every operation, `4XX` and `5XX` responses
whose body is that dialect's error model, chosen by the same path-prefix rule that renders errors.
A client generated from the spec, and the fuzz run in tests/fuzz/, then see what the server does.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel

_FASTAPI_VALIDATION_SCHEMAS = ("HTTPValidationError", "ValidationError")


# A 200 answered as Server-Sent Events: each event has a name and its data (a JSON text).
EVENT_STREAM: dict[int | str, dict[str, Any]] = {
    200: {
        "content": {
            "text/event-stream": {
                "schema": {
                    "type": "object",
                    "properties": {"event": {"type": "string"}, "data": {"type": "string"}},
                    "required": ["data"],
                }
            }
        }
    }
}


class ErrorDetail(BaseModel):
    code: str
    message: str
    param: str | None


class ErrorBody(BaseModel):
    """The native error shape: `{"error": {"code", "message", "param"}}`."""

    error: ErrorDetail


def document_errors(app: FastAPI, models: dict[str, type[BaseModel]], default: type[BaseModel] = ErrorBody) -> None:
    """Declare 4XX and 5XX responses on every operation of `app`, with the error model of the
    longest prefix in `models` that the path starts with (else `default`), instead of FastAPI's 422."""
    generate = app.openapi
    longest_first = sorted(models, key=len, reverse=True)  # nested prefixes: the longest owns the path

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        spec = generate()
        schemas: dict[str, Any] = spec.setdefault("components", {}).setdefault("schemas", {})
        for path, operations in spec.get("paths", {}).items():
            model = next((models[prefix] for prefix in longest_first if path.startswith(prefix)), default)
            reference = _component(schemas, model)
            for operation in operations.values():
                responses = operation.setdefault("responses", {})
                responses.pop("422", None)
                for status, description in (("4XX", "A refused request"), ("5XX", "A failure of the server")):
                    body = {"schema": {"$ref": reference}}
                    responses[status] = {"description": description, "content": {"application/json": body}}
        for name in _FASTAPI_VALIDATION_SCHEMAS:  # referenced only by the 422s just removed
            schemas.pop(name, None)
        app.openapi_schema = spec
        return spec

    app.openapi = openapi  # type: ignore[method-assign]  # FastAPI's documented way to extend the spec


def _component(schemas: dict[str, Any], model: type[BaseModel]) -> str:
    """Add `model` (and the models it nests) to the spec's components; its reference."""
    schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
    for name, nested in schema.pop("$defs", {}).items():
        schemas.setdefault(name, nested)
    name = model.__name__
    if name in schemas and schemas[name] != schema:
        name = f"{model.__module__.rsplit('.', 2)[-2].title()}{name}"  # e.g. two dialects' ErrorOut
    schemas.setdefault(name, schema)
    return f"#/components/schemas/{name}"
