"""What a task's report says that its delivered images do not, told the same way in every dialect.

A dialect's answer lists the images it delivers; the report (`report.TaskReport`) knows more: the
options asked for and not applied, the images made and kept back, and the safety checker's verdict
on each. So that none of it is dropped silently, every dialect's answer carries, next to its list of
images (docs/provenance.md, "What each dialect reports"):

- `not_applied`: option -> why, the report's own (the server's option names, as the native report),
  which starts from what the dialect noted when it accepted the request (`GenerationRequest.not_applied`):
  so a poll, the result and the webhook say what the create answer said, and a task that has no report
  (queued, running, or failed or canceled before a run ended) still says that much (`report_of`);
- `withheld`: `[{index, reason}]`, each image made and not delivered (its index among the images made,
  0-based, as the native `report.images[].index`);
- the verdicts, one per entry of the dialect's image list and in its order: in the provider's own
  field where it has one (fal and kie `has_nsfw_concepts`, Novita `has_nsfw_contents`), else ours,
  `nsfw`; present only when a check ran.

Each is left out (or null, in dialects that print nulls) when there is nothing to say. Replicate's
`logs` also says it in words (`report_lines`).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Annotated, Any

from pydantic import BaseModel, Field
from pydantic_core import to_jsonable_python

from qwen_image_server.report import ImageNote, TaskReport
from qwen_image_server.tasks.model import Task


class WithheldOut(BaseModel):
    index: int = Field(description="The image's place among those the request made, 0-based.")
    reason: str = Field(description="Why it was not delivered (flagged by the safety checker, a failed check).")


NotApplied = Annotated[
    dict[str, str] | None,
    Field(description="Our addition: options asked for (or implied) and not applied, with the reason."),
]
Withheld = Annotated[
    list[WithheldOut] | None,
    Field(description="Our addition: images made and not delivered, with the reason."),
]
NsfwFlags = Annotated[
    list[bool] | None,
    Field(
        description="Our addition: per image listed, in the same order, whether the safety checker flagged it; "
        "absent when no check ran.",
    ),
]


def report_of(task: Task) -> TaskReport | None:
    """The task's report; for a task without one (not ended, or ended without a run's report: failed
    or canceled), a report of only the options its dialect noted as not applied at acceptance, if any."""
    if task.report is not None:
        return task.report
    accepted = dict(task.request.not_applied)
    return TaskReport(not_applied=accepted) if accepted else None


def not_applied(task: Task) -> dict[str, str] | None:
    report = report_of(task)
    return dict(report.not_applied) if report is not None and report.not_applied else None


def withheld(task: Task) -> list[WithheldOut] | None:
    notes = _notes(task).values()
    kept_back = [WithheldOut(index=note.index, reason=note.withheld) for note in notes if note.withheld]
    return kept_back or None


def additions(task: Task, *, verdicts: bool = True) -> dict[str, Any]:
    """`not_applied`, `withheld` and `nsfw` (the verdicts, only when `verdicts`), as keyword arguments
    of an answer model: for the dialects whose provider has no field of its own for any of them."""
    return {
        "not_applied": not_applied(task),
        "withheld": withheld(task),
        "nsfw": nsfw_flags(task) if verdicts else None,
    }


def extra_fields(task: Task) -> dict[str, Any]:
    """`not_applied` and `withheld` as JSON, each only when there is something to say: for the
    answers a dialect builds as plain dicts."""
    fields = additions(task, verdicts=False)
    return {name: to_jsonable_python(value) for name, value in fields.items() if value is not None}


def delivered_indices(task: Task) -> list[int]:
    """The indices of the delivered images, in the order the dialects list them."""
    return [image.index for image in task.results]


def nsfw_flags(task: Task, indices: Iterable[int] | None = None) -> list[bool] | None:
    """Per image of `indices` (by default the delivered ones), whether the checker flagged it; None
    when no check ran on the task."""
    report = task.report
    if report is None or not report.checked:
        return None
    notes = _notes(task)
    chosen = delivered_indices(task) if indices is None else indices
    return [bool(notes[index].nsfw) if index in notes else False for index in chosen]


def report_lines(task: Task) -> list[str]:
    """The report in words, for a dialect whose answer has a log: each flagged image and what it
    got, each withheld one, each option not applied."""
    report = report_of(task)
    if report is None:
        return []
    blurred = "safety_blur" in report.applied
    delivered = set(delivered_indices(task))
    lines = []
    for note in report.images:
        if note.nsfw and note.index in delivered:
            action = "blurred" if blurred else "delivered as made"
            lines.append(f"Flagged: image {note.index}{_score(note)}: {action}")
        if note.withheld:
            lines.append(f"Withheld: image {note.index}{_score(note)}: {note.withheld}")
    lines += [f"Not applied: {option}: {why}" for option, why in report.not_applied.items()]
    return lines


def _score(note: ImageNote) -> str:
    return f" (NSFW score {note.nsfw_score:.3f})" if note.nsfw_score is not None else ""


def _notes(task: Task) -> dict[int, ImageNote]:
    return {note.index: note for note in task.report.images} if task.report is not None else {}
