"""Every dialect maps every error by its class: an error that is the caller's fault is answered as
its provider answers a bad request, any other as a fault of the server. This holds for errors
raised while a request is answered and for the code a failed task keeps, whatever the code reads
like (the dialects once guessed from prefixes such as "invalid" and got both kinds wrong)."""

from __future__ import annotations

import json

import pytest
from fastapi.responses import Response

from qwen_image_server.api.app import all_dialects
from qwen_image_server.api.dashscope.errors import (
    DATA_INSPECTION_FAILED,
    INTERNAL_ERROR,
    INVALID_PARAMETER,
    task_error_code,
    task_error_status,
)
from qwen_image_server.api.errors import native_error
from qwen_image_server.api.kie.translate import fail_code
from qwen_image_server.api.openai.routes import TaskFailed
from qwen_image_server.errors import (
    ContentWithheld,
    LoraUnavailable,
    QwenImageError,
    RetryLater,
    StoreUnavailable,
    UrlNotAllowed,
)
from qwen_image_server.results.signing import InvalidSecretFile
from qwen_image_server.tasks.model import TaskError, TaskStatus
from tests.dialects.test_kie import make_task
from tests.unit.test_error_tree import error_classes


def an_instance(error_class: type[QwenImageError]) -> QwenImageError | None:
    """One error of the class; None for the few whose status and code are set per instance."""
    if issubclass(error_class, StoreUnavailable):
        return error_class("down", "the driver's line", retry_after=1)
    if issubclass(error_class, RetryLater):
        return error_class("try again shortly", retry_after=1)
    if error_class.__init__ is not QwenImageError.__init__:
        return None
    return error_class("what went wrong", param="prompt")


RAISED = [error for error in map(an_instance, error_classes()) if error is not None]
CLASS_OF_CODE = {cls.code: cls for cls in error_classes() if "code" in cls.__dict__}
# kie.ai's own envelope codes: the caller's (auth, credits, not found, validation, rate) and the
# server's (455 unavailable, 500, 501 generation failed or canceled, 505 model not enabled).
KIE_CALLERS_CODES = {401, 402, 404, 422, 429}
KIE_NAMED = {"generation_failed", "canceled", "feature_disabled", "model_unavailable"}  # their own codes


def answered_as_callers(dialect: str, response: Response) -> bool:
    if dialect == "kie":  # HTTP 200 for most errors: the envelope's code tells
        return json.loads(bytes(response.body))["code"] in KIE_CALLERS_CODES
    return response.status_code < 500


@pytest.mark.parametrize("error", RAISED, ids=lambda error: type(error).__qualname__)
def test_every_dialect_renders_every_error_by_its_fault(error: QwenImageError) -> None:
    renderers = {"native": native_error, **{dialect.name: dialect.render_error for dialect in all_dialects()}}
    if error.code in KIE_NAMED:
        del renderers["kie"]
    for name, render in renderers.items():
        assert answered_as_callers(name, render(error)) == error.caller_fault, name


@pytest.mark.parametrize("code", sorted(CLASS_OF_CODE))
def test_every_dialect_reports_a_failed_task_by_the_class_of_its_code(code: str) -> None:
    task = make_task(TaskStatus.FAILED, TaskError(code, "what went wrong"))
    callers = CLASS_OF_CODE[code].caller_fault
    assert TaskFailed(task).status == (400 if callers else 500)
    assert task_error_status(code) == (400 if callers else 500)
    assert task_error_code(code) in ({INVALID_PARAMETER, DATA_INSPECTION_FAILED} if callers else {INTERNAL_ERROR})
    if code not in KIE_NAMED:
        assert fail_code(task) == ("422" if callers else "500")


@pytest.mark.parametrize("code", [LoraUnavailable.code, UrlNotAllowed.code])
def test_a_callers_code_without_a_telltale_prefix_is_the_callers(code: str) -> None:
    """A LoRA URL that is no safetensors file fails the task in the worker: the request was at fault."""
    task = make_task(TaskStatus.FAILED, TaskError(code, "not a safetensors file"))
    failed = TaskFailed(task)
    assert (failed.status, failed.code) == (400, code)
    assert (task_error_status(code), task_error_code(code)) == (400, INVALID_PARAMETER)
    assert fail_code(task) == "422"


def test_a_server_fault_whose_code_reads_like_a_callers_is_the_servers() -> None:
    code = InvalidSecretFile.code  # "invalid_...", yet the server's configuration is at fault
    task = make_task(TaskStatus.FAILED, TaskError(code, "invalid request signing secret"))
    assert TaskFailed(task).status == 500
    assert (task_error_status(code), task_error_code(code)) == (500, INTERNAL_ERROR)
    assert fail_code(task) == "500"


def test_withheld_content_is_a_refusal_in_every_dialect() -> None:
    task = make_task(TaskStatus.FAILED, TaskError(ContentWithheld.code, "every image was withheld: nsfw"))
    failed = TaskFailed(task)
    assert (failed.status, failed.code) == (400, "moderation_blocked")
    assert (task_error_status(ContentWithheld.code), task_error_code(ContentWithheld.code)) == (
        400,
        DATA_INSPECTION_FAILED,
    )
    assert fail_code(task) == "422"


def test_a_task_canceled_elsewhere_is_no_fault_of_the_waiting_caller() -> None:
    task = make_task(TaskStatus.CANCELED, TaskError("canceled", "by the operator"))
    assert TaskFailed(task).status == 500
