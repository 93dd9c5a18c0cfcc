"""What a run did to a request beyond making its pictures, as the task keeps and the APIs report it.

A client that asks for an option the server did not apply must be told, never left to assume it
happened: every option that can be asked for and not honoured (`prompt_extend` on a server that
turned it off, a safety check with no checker configured...) lands in `not_applied` with the reason;
what was applied (a visible watermark, provenance marks, a safety check) in `applied`. The prompt the
model really saw, when extension rewrote it, is `actual_prompt`. Per image: the safety verdict
(`nsfw`, None when not checked) and, for an image kept back, why (`withheld`).

The engine fills `RequestNotes` (one per request) and the per-image fields of each picture; encoding
adds what it applied; the worker folds the encoded images into one `TaskReport` and stores it with
the results.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from qwen_image_server.errors import ContentWithheld

# The error of a task whose every image the safety checker kept back (there is nothing to deliver).
CONTENT_WITHHELD = ContentWithheld.code


@dataclass(frozen=True)
class RequestNotes:
    """What happened to one request, shared by its pictures."""

    actual_prompt: str | None = None  # the prompt after extension; None: used as given
    applied: tuple[str, ...] = ()
    not_applied: tuple[tuple[str, str], ...] = ()  # (option, why)

    def with_applied(self, *options: str) -> RequestNotes:
        fresh = tuple(option for option in options if option not in self.applied)
        return RequestNotes(self.actual_prompt, self.applied + fresh, self.not_applied)

    def with_not_applied(self, option: str, why: str) -> RequestNotes:
        return RequestNotes(self.actual_prompt, self.applied, (*self.not_applied, (option, why)))


NO_NOTES = RequestNotes()


@dataclass(frozen=True)
class ImageNote:
    index: int
    seed: int
    nsfw: bool | None = None  # None: not checked
    withheld: str | None = None  # why the image was kept back; None: delivered
    nsfw_score: float | None = None  # the checker's probability that it is NSFW


class Noted(Protocol):
    """An encoded image as the report reads it (domain.ImageResult)."""

    @property
    def notes(self) -> RequestNotes: ...

    @property
    def note(self) -> ImageNote: ...


@dataclass(frozen=True)
class TaskReport:
    actual_prompt: str | None = None
    applied: tuple[str, ...] = ()
    not_applied: dict[str, str] = field(default_factory=dict)
    images: tuple[ImageNote, ...] = ()

    @classmethod
    def from_images(cls, images: Sequence[Noted]) -> TaskReport:
        """One request's images folded into its report: the options applied to any of them."""
        notes = [image.notes for image in images]
        applied = dict.fromkeys(option for note in notes for option in note.applied)
        not_applied = {option: why for note in notes for option, why in note.not_applied}
        return cls(notes[0].actual_prompt, tuple(applied), not_applied, tuple(image.note for image in images))

    def nsfw_flags(self) -> list[bool]:
        """Per image, whether the checker flagged it (False where it did not run)."""
        return [bool(image.nsfw) for image in self.images]

    @property
    def checked(self) -> bool:
        return any(image.nsfw is not None for image in self.images)

    def to_json(self) -> str:
        return json.dumps(
            {
                "actual_prompt": self.actual_prompt,
                "applied": list(self.applied),
                "not_applied": self.not_applied,
                "images": [
                    {
                        "index": i.index,
                        "seed": i.seed,
                        "nsfw": i.nsfw,
                        "withheld": i.withheld,
                        "nsfw_score": i.nsfw_score,
                    }
                    for i in self.images
                ],
            }
        )

    @classmethod
    def from_json(cls, text: str | None) -> TaskReport | None:
        if not text:
            return None
        data = json.loads(text)
        images = tuple(
            ImageNote(item["index"], item["seed"], item.get("nsfw"), item.get("withheld"), item.get("nsfw_score"))
            for item in data["images"]
        )
        return cls(data.get("actual_prompt"), tuple(data.get("applied", ())), dict(data.get("not_applied", {})), images)
