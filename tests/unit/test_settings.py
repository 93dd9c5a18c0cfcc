from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

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


def test_a_config_file_sits_below_the_environment_and_flags(
    clean_env: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from qwen_image_server.settings import load_settings

    config = tmp_path / "qwen-image.toml"
    config.write_text('port = 9001\nhost = "0.0.0.0"\nmodels = ["qwen-image-edit-plus"]\nlease_seconds = 12\n')
    monkeypatch.setenv("QWEN_IMAGE_HOST", "10.0.0.5")
    settings = load_settings(config, port=9100)
    assert settings.port == 9100  # flag over file
    assert settings.host == "10.0.0.5"  # environment over file
    assert settings.models == (ModelName.QWEN_IMAGE_EDIT_PLUS,)  # file over default
    assert settings.lease_seconds == 12
    monkeypatch.setenv("QWEN_IMAGE_CONFIG", str(config))
    assert load_settings().port == 9001


def test_models_accept_a_comma_separated_list(clean_env: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QWEN_IMAGE_MODELS", "qwen-image, qwen-image-edit")
    assert Settings().models == (ModelName.QWEN_IMAGE, ModelName.QWEN_IMAGE_EDIT)
    monkeypatch.setenv("QWEN_IMAGE_MODELS", "qwen-image,dall-e")
    with pytest.raises(ValueError, match="models"):
        Settings()


def test_the_default_database_is_sqlite_in_the_data_dir(clean_env: None, tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    assert settings.resolved_database_url == f"sqlite+aiosqlite:///{tmp_path / 'tasks.db'}"


def test_a_missing_config_file_is_an_error(clean_env: None, tmp_path: Path) -> None:
    from qwen_image_server.errors import InvalidParameter
    from qwen_image_server.settings import load_settings

    with pytest.raises(InvalidParameter, match="no config file"):
        load_settings(tmp_path / "nope.toml")
    broken = tmp_path / "broken.toml"
    broken.write_text("port = = 1\n")
    with pytest.raises(InvalidParameter, match="not valid TOML"):
        load_settings(broken)


def test_every_command_is_documented() -> None:
    from qwen_image_server.cli import app

    text = (DOCS / "cli.md").read_text()
    for command in app.registered_commands:
        name = command.name or (command.callback.__name__ if command.callback else "")
        assert f"`qwen-image {name}" in text, f"docs/cli.md does not explain {name}"


def test_float16_is_refused_with_the_reason(clean_env: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QWEN_IMAGE_DTYPE", "float16")
    with pytest.raises(ValueError, match=r"black.*bfloat16"):
        Settings()


def test_warmup_sizes_are_read_as_sizes(clean_env: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QWEN_IMAGE_WARMUP_SIZES", "1024x1024, 16:9")
    assert Settings().warmup_sizes == ("1024x1024", "16:9")
    monkeypatch.setenv("QWEN_IMAGE_WARMUP_SIZES", "big")
    with pytest.raises(ValueError, match="WIDTHxHEIGHT"):
        Settings()


def test_loras_parse_names_sources_and_scales(clean_env: None) -> None:
    from qwen_image_server.engine.loras import LoraSpec, parse_lora_specs

    settings = Settings(loras="style=/x/style.safetensors:0.8, detail=owner/repo ,win=C:/w.safetensors")
    assert parse_lora_specs(settings.loras) == (
        LoraSpec("style", "/x/style.safetensors", 0.8),
        LoraSpec("detail", "owner/repo", 1.0),
        LoraSpec("win", "C:/w.safetensors", 1.0),  # a colon in the path, not a scale
    )


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("/x/a.safetensors", "is not `name=path-or-repo-id"),
        ("bad name=/x/a.safetensors", "must be 1-64 letters"),
        ("a=/x/a.safetensors:nan", "not a finite number"),
        ("a=/x/1.safetensors,a=/x/2.safetensors", "repeated: a"),
    ],
)
def test_bad_loras_are_refused_with_what_is_wrong(clean_env: None, value: str, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        Settings(loras=value)


def test_request_loras_are_read_like_loras(clean_env: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QWEN_IMAGE_REQUEST_LORAS", "style=/x/style.safetensors:0.8,detail=owner/repo")
    assert Settings().request_loras == ("style=/x/style.safetensors:0.8", "detail=owner/repo")
    with pytest.raises(ValidationError, match="must be 1-64 letters"):
        Settings(request_loras="bad name=/x/a.safetensors")


def test_lightning_loras_name_a_model(clean_env: None) -> None:
    assert Settings(lightning_loras="qwen-image=/x/l8.safetensors").lightning_loras == ("qwen-image=/x/l8.safetensors",)
    with pytest.raises(ValidationError, match="lightning LoRA 'qwen': name the model it is for"):
        Settings(lightning_loras="qwen=/x/l8.safetensors")
    with pytest.raises(ValidationError, match="lightning_steps"):
        Settings(lightning_steps=1)
