"""Building blocks for the wire shapes of provider dialects."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, model_validator


class LenientRequest(BaseModel):
    """A request object as providers accept them: unknown fields are ignored, and a JSON null means
    "the default" (clients that serialise every field send nulls for the ones they leave unset)."""

    model_config = ConfigDict(extra="ignore")

    @model_validator(mode="before")
    @classmethod
    def _nulls_are_defaults(cls, data: Any) -> Any:
        return {key: value for key, value in data.items() if value is not None} if isinstance(data, dict) else data
