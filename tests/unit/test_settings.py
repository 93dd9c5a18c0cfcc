from __future__ import annotations

from pathlib import Path

import pytest

from qwen_image_server.domain import ModelName
from qwen_image_server.settings import DEFAULT_CHECKPOINTS, Settings

DOCS = Path(__file__).parents[2] / "docs"


def test_defaults_point_at_the_official_checkpoints(clean_env: None) -> None:
    settings = Settings()
    for model in ModelName:
        assert settings.checkpoint_for(model) == DEFAULT_CHECKPOINTS[model]
    assert (settings.device, settings.dtype, settings.offload) == ("auto", "auto", "none")


def test_environment_overrides_defaults_and_flags_override_environment(
    clean_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("QWEN_IMAGE_CHECKPOINT_QWEN_IMAGE_EDIT", "/models/edit")
    monkeypatch.setenv("QWEN_IMAGE_OFFLOAD", "model")
    settings = Settings(offload="group")
    assert settings.checkpoint_for(ModelName.QWEN_IMAGE_EDIT) == "/models/edit"
    assert settings.offload == "group"


def test_a_bad_environment_value_is_refused(clean_env: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QWEN_IMAGE_OFFLOAD", "sometimes")
    with pytest.raises(ValueError, match="offload"):
        Settings()


def test_with_checkpoint_changes_only_that_model(clean_env: None) -> None:
    settings = Settings().with_checkpoint(ModelName.QWEN_IMAGE_EDIT_PLUS, "tiny")
    assert settings.checkpoint_for(ModelName.QWEN_IMAGE_EDIT_PLUS) == "tiny"
    assert settings.checkpoint_for(ModelName.QWEN_IMAGE) == DEFAULT_CHECKPOINTS[ModelName.QWEN_IMAGE]


def test_every_setting_is_documented() -> None:
    text = (DOCS / "settings.md").read_text()
    for name in Settings.model_fields:
        assert f"QWEN_IMAGE_{name.upper()}" in text, f"docs/settings.md does not explain {name}"
