"""Routes every deployment has, whatever the dialects: health, readiness, models, result images."""

from __future__ import annotations

from collections.abc import Collection
from typing import Literal

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from qwen_image_server.api.byte_ranges import content_range, requested_range
from qwen_image_server.api.native.schemas import ModelListOut, ModelOut
from qwen_image_server.domain import MODEL_SPECS, ModelName, OutputFormat
from qwen_image_server.errors import UnknownModel
from qwen_image_server.results.store import ResultNotFound, is_valid_key
from qwen_image_server.service import Service, models_ready, worker_problems
from qwen_image_server.tasks.model import utcnow

RESULT_PATH = "/v1/results/{task_id}/{name}"
_CONTENT_TYPES = {fmt.extension: fmt.content_type for fmt in OutputFormat}


class ReadinessOut(BaseModel):
    status: Literal["ready", "loading", "degraded"]
    waiting_for: list[str]  # the served models with no live, healthy worker that has them loaded
    problems: list[str] = []  # what keeps workers from finishing tasks (results storage full...)


def common_router(service: Service) -> APIRouter:
    router = APIRouter()

    @router.get("/healthz", tags=["operations"])
    async def healthz() -> dict[str, str]:
        """The process is up and answering."""
        return {"status": "ok"}

    @router.get(
        "/readyz",
        tags=["operations"],
        response_model=ReadinessOut,
        responses={503: {"model": ReadinessOut, "description": "A served model has no live worker yet"}},
    )
    async def readyz() -> JSONResponse:
        """200 once every served model is loaded by at least one live worker without problems; else
        503: `loading` while models load, `degraded` when a worker reports a problem (`problems`)."""
        workers = await service.live_workers()  # one read for both
        ready, problems = models_ready(workers), worker_problems(workers)
        missing = [model.value for model in service.settings.models if model not in ready]
        status = "ready" if not missing else "degraded" if problems else "loading"
        body = {"status": status, "waiting_for": missing, "problems": problems}
        return JSONResponse(body, status_code=200 if not missing else 503)

    @router.get("/v1/models", response_model=ModelListOut, tags=["models"])
    async def models() -> ModelListOut:
        """The models this server accepts tasks for, and whether a worker has each loaded."""
        ready = await service.ready_models()
        return ModelListOut(data=[_model_out(model, ready) for model in service.settings.models])

    @router.get("/v1/models/{model_id}", response_model=ModelOut, tags=["models"])
    async def model(model_id: str) -> ModelOut:
        """One model of the list (OpenAI's `models.retrieve`); 404 `model_not_found` for any other."""
        served = {model.value: model for model in service.settings.models}
        if model_id not in served:
            raise UnknownModel(f"The model '{model_id}' does not exist here; GET /v1/models lists those that do.")
        return _model_out(served[model_id], await service.ready_models())

    # Two decorators, not one api_route with both methods: each operation needs its own id.
    @router.head(RESULT_PATH, tags=["results"], response_class=Response, operation_id="result_image_headers")
    @router.get(RESULT_PATH, tags=["results"], response_class=Response)
    async def result_image(task_id: str, name: str, request: Request) -> Response:
        """A result image at its signed URL: 403 for a bad signature, 410 once expired. HEAD gives
        the headers alone; a single byte `Range` gives 206 (416 past the end)."""
        key = f"{task_id}/{name}"
        if not is_valid_key(key):
            raise ResultNotFound("no such result")
        expiry = service.signer.verify(key, request.query_params.get("expires"), request.query_params.get("sig"))
        # The bytes under a key never change, so the key itself is a strong validator.
        etag = f'"{key.replace("/", "-")}"'
        max_age = max(int(expiry - utcnow().timestamp()), 0)
        headers = {"ETag": etag, "Cache-Control": f"private, max-age={max_age}, immutable", "Accept-Ranges": "bytes"}
        if request.headers.get("if-none-match") == etag:
            return Response(status_code=304, headers=headers)
        data = await service.results.read(key)
        media_type = _CONTENT_TYPES[name.rsplit(".", 1)[1]]
        status, start, end = 200, 0, len(data)
        if request.headers.get("if-range", etag) == etag:  # a range of another version is no use
            wanted = requested_range(request.headers.get("range"), len(data))
            if wanted is not None:
                (start, end), status = wanted, 206
                headers["Content-Range"] = content_range(start, end, len(data))
        headers["Content-Length"] = str(end - start)
        body = b"" if request.method == "HEAD" else data[start:end]
        return Response(body, status_code=status, media_type=media_type, headers=headers)

    return router


def _model_out(model: ModelName, ready: Collection[ModelName]) -> ModelOut:
    spec = MODEL_SPECS[model]
    return ModelOut(
        id=model.value,
        description=spec.description,
        ready=model in ready,
        max_input_images=spec.max_input_images,
    )
