"""Replicate's predictions API. Thin: parse, translate, call api.accept / api.tasks, translate back."""

from __future__ import annotations

from functools import partial
from urllib.parse import urlencode

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import JSONResponse

from qwen_image_server import __version__
from qwen_image_server.api.accept import Order, accept
from qwen_image_server.api.dialect import Caller, authenticate
from qwen_image_server.api.replicate.schemas import (
    ModelInfoOut,
    ModelPredictionBody,
    PredictionBody,
    PredictionInput,
    PredictionOut,
    PredictionPage,
    VersionOut,
    WebhookSecretOut,
)
from qwen_image_server.api.replicate.translate import (
    COMPLETED_ONLY,
    DIALECT_NAME,
    OWNER,
    REPLICATE_MODELS,
    input_image_refs,
    model_of_ref,
    model_of_version,
    named_as_sent,
    problem,
    to_generation_request,
    to_prediction,
    version_id,
)
from qwen_image_server.api.tasks import ResultLinks, owned_task, public_base, requested_wait, wait_for_end
from qwen_image_server.domain import MODEL_SPECS
from qwen_image_server.errors import InvalidParameter, QwenImageError
from qwen_image_server.service import Service, server_webhook_secret
from qwen_image_server.tasks.keys import Scope
from qwen_image_server.tasks.model import Task
from qwen_image_server.tasks.store import TaskConflict

PREDICTIONS = "/v1/predictions"
MODELS = f"/v1/models/{OWNER}"  # the other owners' paths are OpenAI's (/v1/models/{id}): 404 there
# Replicate holds a `Prefer: wait` answer at most 60 s, and replicate-python reads for 60.5 s (N + 0.5
# for `wait=N`): a longer hold (our `max_wait_seconds`) would end in the client's read timeout.
MAX_WAIT = 60.0
PAGE_SIZE = 100  # Replicate's page; `?limit=` (an extension) asks for fewer
VERSION_CREATED = "2025-08-04T00:00:00Z"  # Qwen-Image's release: the version ids name the models, not a build


def replicate_router(service: Service) -> APIRouter:
    router = APIRouter(tags=["replicate"])

    async def caller_of(request: Request, scope: Scope = Scope.READ) -> Caller:
        return await authenticate(service, request, "Authorization", scope=scope)

    def render(task: Task, request: Request, *, just_created: bool = False) -> PredictionOut:
        links, base = ResultLinks(service, request), public_base(service, request)
        return to_prediction(task, links, base, just_created=just_created)

    async def create(ref: str, body: ModelPredictionBody, request: Request, response: Response) -> PredictionOut:
        caller = await caller_of(request, Scope.GENERATE)
        callback = _webhook_of(body)
        wait = min(requested_wait(request, service), MAX_WAIT)
        fields = body.input
        if fields.go_fast and service.settings.compile:
            message = "input.go_fast: this server runs compiled blocks, which cannot skip steps; send go_fast false"
            raise InvalidParameter(message, param="input.go_fast")
        build = partial(to_generation_request, ref, fields, fast_by_default=not service.settings.compile)
        order = Order(build, input_image_refs(ref, fields), callback_url=callback)
        try:
            task = await accept(service, request, caller, order, dialect=DIALECT_NAME)
        except QwenImageError as exc:
            named_as_sent(exc)
            raise
        if wait:
            task = await wait_for_end(service, task, wait)
        response.status_code = 201
        response.headers["Location"] = f"{public_base(service, request).rstrip('/')}{PREDICTIONS}/{task.id}"
        return render(task, request, just_created=True)

    @router.post(PREDICTIONS, status_code=201, response_model=PredictionOut)
    async def create_prediction(body: PredictionBody, request: Request, response: Response) -> PredictionOut:
        """Start a prediction of the model `version` names. `Prefer: wait` (or `wait=N`) holds the
        answer up to 60 (N) seconds for the prediction to finish."""
        return await create(model_of_version(body.version), body, request, response)

    @router.post(MODELS + "/{name}/predictions", status_code=201, response_model=PredictionOut)
    async def create_model_prediction(
        name: str, body: ModelPredictionBody, request: Request, response: Response
    ) -> PredictionOut:
        """Start a prediction of qwen/qwen-image, qwen/qwen-image-edit or qwen/qwen-image-edit-plus."""
        return await create(model_of_ref(f"{OWNER}/{name}"), body, request, response)

    @router.get(PREDICTIONS, response_model=PredictionPage)
    async def list_predictions(
        request: Request, cursor: str | None = None, limit: int = Query(default=PAGE_SIZE, ge=1, le=PAGE_SIZE)
    ) -> PredictionPage:
        """The caller's predictions (tasks made through any API), newest first; `next` is the full
        URL of the next page."""
        caller = await caller_of(request)
        owner = None if caller.sees_all else caller.key_id
        page = await service.store.list_tasks(owner=owner, limit=limit, cursor=cursor)
        following = None
        if page.next_cursor is not None:
            query = {"cursor": page.next_cursor, **({"limit": str(limit)} if limit != PAGE_SIZE else {})}
            following = f"{public_base(service, request).rstrip('/')}{PREDICTIONS}?{urlencode(query)}"
        return PredictionPage(next=following, results=[render(task, request) for task in page.tasks])

    @router.get(PREDICTIONS + "/{prediction_id}", response_model=PredictionOut)
    async def get_prediction(prediction_id: str, request: Request) -> PredictionOut:
        return render(await owned_task(service, prediction_id, await caller_of(request)), request)

    @router.post(PREDICTIONS + "/{prediction_id}/cancel", response_model=PredictionOut)
    async def cancel_prediction(prediction_id: str, request: Request) -> PredictionOut:
        """A starting prediction is canceled at once, a processing one at its next step; a finished
        one is answered as it is."""
        caller = await caller_of(request)  # the scope the native cancel needs
        task = await owned_task(service, prediction_id, caller)
        if not task.status.is_terminal:
            try:
                task = await service.store.request_cancel(task.id)
            except TaskConflict:  # it ended meanwhile
                task = await owned_task(service, prediction_id, caller)
        return render(task, request)

    @router.get("/v1/webhooks/default/secret", response_model=WebhookSecretOut)
    async def webhook_secret(request: Request) -> WebhookSecretOut:
        """The secret that signs the webhooks of the caller's key (of every task, on an open server)."""
        caller = await caller_of(request)
        if caller.key_id is None:
            return WebhookSecretOut(key=server_webhook_secret(service.settings))
        return WebhookSecretOut(key=await service.keys.webhook_secret(caller.key_id))

    @router.get(MODELS + "/{name}", response_model=ModelInfoOut)
    async def get_model(name: str, request: Request) -> ModelInfoOut:
        await caller_of(request)
        ref = model_of_ref(f"{OWNER}/{name}")
        return ModelInfoOut(
            url=f"{public_base(service, request).rstrip('/')}{MODELS}/{name}",
            owner=OWNER,
            name=name,
            description=MODEL_SPECS[REPLICATE_MODELS[ref]].description,
            latest_version=_version(ref),
        )

    @router.get(MODELS + "/{name}/versions/{version}", response_model=VersionOut)
    async def get_version(name: str, version: str, request: Request) -> VersionOut:
        """The model's one version (replicate-python reads it in `run("owner/name:version")`)."""
        await caller_of(request)
        ref = model_of_ref(f"{OWNER}/{name}")
        if version != version_id(ref):
            model_of_version(f"{ref}:{version}")  # any version of a model runs it, as a create does
        return _version(ref)

    return router


def _version(ref: str) -> VersionOut:
    schemas = {
        "Input": PredictionInput.model_json_schema(),
        "Output": {"type": "array", "items": {"type": "string", "format": "uri"}, "title": "Output"},
    }
    return VersionOut(
        id=version_id(ref),
        created_at=VERSION_CREATED,
        cog_version=f"qwen-image-server {__version__}",  # not a cog version: the client skips its old-cog rules
        openapi_schema={"openapi": "3.0.2", "info": {"title": ref}, "paths": {}, "components": {"schemas": schemas}},
    )


def _webhook_of(body: ModelPredictionBody) -> str | None:
    """The callback URL. Only the `completed` event is delivered (by the durable outbox); a filter
    asking for others is refused rather than half honoured."""
    if body.stream:
        raise InvalidParameter("stream is not offered here; poll the prediction or use a webhook", param="stream")
    if body.webhook and body.webhook_completed and body.webhook != body.webhook_completed:
        raise InvalidParameter("give webhook or webhook_completed, not two different URLs", param="webhook")
    url = body.webhook or body.webhook_completed
    events = body.webhook_events_filter
    if events is not None and set(events) != set(COMPLETED_ONLY):
        others = ", ".join(sorted(set(events) - set(COMPLETED_ONLY))) or "none"
        raise InvalidParameter(
            f'webhook_events_filter: only the completed event is sent here (asked for: {others}); send ["completed"]',
            param="webhook_events_filter",
        )
    if events is not None and url is None:
        raise InvalidParameter("webhook_events_filter needs a webhook URL", param="webhook_events_filter")
    return url


def render_error(exc: QwenImageError) -> Response:
    status, body = problem(exc)
    return JSONResponse(body.model_dump(exclude_none=True), status_code=status, headers=exc.headers)
