"""The error tree: whether an error is the caller's fault is a property of its class, and a failed
task's stored code is judged by the class that raises it, never by how the code is spelt."""

from __future__ import annotations

import pytest

from qwen_image_server.api.app import all_dialects
from qwen_image_server.errors import (
    CallerError,
    ContentWithheld,
    GenerationFailed,
    LoraUnavailable,
    PromptTooLong,
    QwenImageError,
    UrlNotAllowed,
    caller_fault_of,
)
from qwen_image_server.results.signing import InvalidSecretFile


def error_classes() -> list[type[QwenImageError]]:
    """Every class of the tree in the package (the dialects' modules are imported by `all_dialects`)."""
    all_dialects()
    found: list[type[QwenImageError]] = []
    waiting: list[type[QwenImageError]] = [QwenImageError]
    while waiting:
        current = waiting.pop()
        if current not in found:  # a class with two parents in the tree is met twice
            found.append(current)
            waiting.extend(current.__subclasses__())
    return [cls for cls in found if cls.__module__.startswith("qwen_image_server")]


@pytest.mark.parametrize("error_class", error_classes(), ids=lambda cls: cls.__qualname__)
def test_the_callers_fault_is_a_4xx_and_only_a_4xx(error_class: type[QwenImageError]) -> None:
    """Dialects render the status and choose their provider's code by the fault: the two agree."""
    assert error_class.caller_fault == (error_class.status < 500)
    assert error_class.caller_fault == issubclass(error_class, CallerError)


def test_every_code_is_named_by_one_class() -> None:
    named: dict[str, str] = {}
    for error_class in error_classes():
        if "code" in error_class.__dict__:
            assert error_class.code not in named, f"{error_class.code} is named by {named[error_class.code]} too"
            named[error_class.code] = error_class.__qualname__


@pytest.mark.parametrize(
    ("code", "callers"),
    [
        (PromptTooLong.code, True),
        (LoraUnavailable.code, True),  # no "invalid" or "prompt" in it: the old rules called it ours
        (UrlNotAllowed.code, True),
        (ContentWithheld.code, True),
        (InvalidSecretFile.code, False),  # reads like a caller's code; the class says it is the server's
        (GenerationFailed.code, False),
        ("worker_lost", False),  # a code no class raises: a fault of the server
    ],
)
def test_a_stored_code_is_judged_by_its_class(code: str, callers: bool) -> None:
    assert caller_fault_of(code) is callers
