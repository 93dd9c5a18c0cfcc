"""What the client returns: plain frozen dataclasses read from the native API's JSON.

Unknown fields in an answer are ignored, so a newer server does not break an older client.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

TERMINAL = frozenset({"succeeded", "failed", "canceled"})


@dataclass(frozen=True, kw_only=True)
class ImageRef:
    """One result (or preview) of a task: where to download it and what it is. The URL is signed and
    needs no API key; it expires at `expires_at` (the image is deleted then)."""

    url: str
    width: int
    height: int
    seed: int
    content_type: str
    expires_at: str
    index: int
    partial_index: int | None = None

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ImageRef:
        return cls(
            url=data["url"],
            width=data["width"],
            height=data["height"],
            seed=data["seed"],
            content_type=data["content_type"],
            expires_at=data["expires_at"],
            index=data["index"],
            partial_index=data.get("partial_index"),
        )


@dataclass(frozen=True, kw_only=True)
class Image(ImageRef):
    """A result with its bytes, downloaded by `generate`, `edit` or `result`."""

    content: bytes = field(repr=False)

    def save(self, path: str | Path) -> Path:
        """Write the image's bytes (in the format asked for: PNG, JPEG or WebP) to `path`."""
        target = Path(path)
        target.write_bytes(self.content)
        return target

    def to_pil(self) -> Any:
        """The image as a `PIL.Image.Image` (needs Pillow)."""
        import io

        from PIL import Image as PILImage

        return PILImage.open(io.BytesIO(self.content))


@dataclass(frozen=True)
class Progress:
    step: int
    total: int
    percent: float


@dataclass(frozen=True)
class TaskError:
    code: str
    message: str


@dataclass(frozen=True)
class ImageNote:
    index: int
    seed: int
    nsfw: bool | None
    withheld: str | None
    nsfw_score: float | None = None


@dataclass(frozen=True)
class Report:
    """What the run did beyond the pictures (docs/api.md, "The report")."""

    actual_prompt: str | None
    applied: list[str]
    not_applied: dict[str, str]
    images: list[ImageNote]

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Report:
        notes = [
            ImageNote(n["index"], n["seed"], n.get("nsfw"), n.get("withheld"), n.get("nsfw_score"))
            for n in data.get("images", [])
        ]
        return cls(data.get("actual_prompt"), list(data.get("applied", [])), dict(data.get("not_applied", {})), notes)


@dataclass(frozen=True, kw_only=True)
class Task:
    """A task as `GET /v1/tasks/{id}` shows it. `request` is the server's echo of what it will run
    (sizes, steps, seed, ...), as a dict."""

    id: str
    model: str
    status: str
    progress: Progress
    queue_position: int | None
    attempts: int
    created_at: str
    started_at: str | None
    finished_at: str | None
    request: dict[str, Any]
    results: list[ImageRef]
    previews: list[ImageRef]
    error: TaskError | None
    report: Report | None

    @property
    def done(self) -> bool:
        """True once the task has ended (succeeded, failed or canceled)."""
        return self.status in TERMINAL

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Task:
        progress = data.get("progress") or {"step": 0, "total": 0, "percent": 0.0}
        error = data.get("error")
        report = data.get("report")
        return cls(
            id=data["id"],
            model=data["model"],
            status=data["status"],
            progress=Progress(progress["step"], progress["total"], progress["percent"]),
            queue_position=data.get("queue_position"),
            attempts=data.get("attempts", 0),
            created_at=data["created_at"],
            started_at=data.get("started_at"),
            finished_at=data.get("finished_at"),
            request=dict(data.get("request", {})),
            results=[ImageRef.from_json(item) for item in data.get("results", [])],
            previews=[ImageRef.from_json(item) for item in data.get("previews", [])],
            error=TaskError(error["code"], error["message"]) if error else None,
            report=Report.from_json(report) if report else None,
        )


@dataclass(frozen=True)
class Result:
    """A succeeded task with its images downloaded."""

    task: Task
    images: list[Image]

    @property
    def id(self) -> str:
        return self.task.id

    @property
    def status(self) -> str:
        return self.task.status

    @property
    def report(self) -> Report | None:
        return self.task.report

    @property
    def seeds(self) -> list[int]:
        return [image.seed for image in self.images]


# Events of `stream(task_id)`, one class per SSE event type.


@dataclass(frozen=True)
class Queued:
    task_id: str
    queue_position: int | None


@dataclass(frozen=True)
class Running:
    """A `progress` event: `progress.step` of `progress.total` denoising steps done."""

    task_id: str
    progress: Progress


@dataclass(frozen=True)
class Preview:
    """An intermediate image (tasks created with `partial_images`); download it with `download()`."""

    task_id: str
    image: ImageRef


@dataclass(frozen=True)
class Finished:
    """The last event: the whole task, `succeeded`, `failed` or `canceled`."""

    task: Task


Event = Queued | Running | Preview | Finished
