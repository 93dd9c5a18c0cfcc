"""Safety checkers with real tiny models: the tiny ViT classifier loaded from its folder, and the tiny
Qwen2.5-VL text encoder asked about each picture."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image

from qwen_image_server.engine.safety import (
    ClassifierChecker,
    SafetyChecker,
    VisionLanguageChecker,
    answer_tokens,
    flagged,
)
from qwen_image_server.engine.tiny import build_tiny_components
from qwen_image_server.engine.tiny_safety import build_tiny_safety_checker, save_tiny_safety_checker
from qwen_image_server.engine.tiny_tokenizer import build_tiny_tokenizer
from qwen_image_server.errors import CheckpointUnavailable, SafetyCheckFailed

GANTMAN_LABELS = {0: "drawings", 1: "hentai", 2: "neutral", 3: "porn", 4: "sexy"}


def pictures() -> list[Image.Image]:
    """Different sizes and modes, so that batching must resize, convert and pad."""
    return [
        Image.new("RGB", (1024, 1024), (200, 30, 30)),
        Image.new("RGBA", (512, 768), (20, 40, 220, 255)),
        Image.linear_gradient("L").resize((300, 200)),
    ]


@pytest.fixture(scope="module")
def classifier_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_safety_checker(tmp_path_factory.mktemp("safety") / "tiny-nsfw")


@pytest.fixture(scope="module")
def components() -> dict[str, Any]:
    return build_tiny_components()


def assert_probabilities(scores: list[float], count: int) -> None:
    assert len(scores) == count
    assert all(0.0 <= score <= 1.0 for score in scores)


# The classifier.


def test_the_tiny_classifier_scores_a_batch(classifier_dir: Path) -> None:
    checker: SafetyChecker = ClassifierChecker.load(str(classifier_dir))
    scores = checker.check(pictures())
    assert_probabilities(scores, 3)
    assert len(set(scores)) == 3, "each picture is looked at"
    assert ClassifierChecker.load(str(classifier_dir)).check(pictures()) == scores
    assert checker.check([]) == []


def test_the_score_is_the_softmax_probability_of_the_unsafe_labels(tmp_path: Path) -> None:
    folder = save_tiny_safety_checker(tmp_path / "five", labels=GANTMAN_LABELS)
    checker = ClassifierChecker.load(str(folder))
    assert checker.unsafe_ids == [1, 3, 4]
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    model = AutoModelForImageClassification.from_pretrained(folder)
    inputs = AutoImageProcessor.from_pretrained(folder, backend="pil")(images=pictures()[:1], return_tensors="pt")
    with torch.inference_mode():
        probabilities = model(**inputs).logits.softmax(dim=-1)[0]
    expected = float(probabilities[1] + probabilities[3] + probabilities[4])
    assert checker.check(pictures()[:1]) == pytest.approx([expected], abs=1e-6)


def test_a_classifier_without_an_unsafe_label_is_refused(tmp_path: Path) -> None:
    folder = save_tiny_safety_checker(tmp_path / "safe-only", labels={0: "normal", 1: "neutral"})
    with pytest.raises(CheckpointUnavailable, match=r"no unsafe label; its labels are 0: 'normal', 1: 'neutral'"):
        ClassifierChecker.load(str(folder))


def test_unknown_labels_are_refused_unless_the_unsafe_ones_are_named(tmp_path: Path) -> None:
    folder = save_tiny_safety_checker(tmp_path / "animals", labels={0: "cat", 1: "nsfw", 2: "dog"})
    with pytest.raises(CheckpointUnavailable, match=r"labels it does not know \(cat, dog\)"):
        ClassifierChecker.load(str(folder))
    assert ClassifierChecker.load(str(folder), unsafe_labels=["NSFW"]).unsafe_ids == [1]
    with pytest.raises(CheckpointUnavailable, match="lack some of"):
        ClassifierChecker.load(str(folder), unsafe_labels=["gore"])


def test_a_missing_folder_is_refused(tmp_path: Path) -> None:
    with pytest.raises(CheckpointUnavailable, match="no safety classifier folder at"):
        ClassifierChecker.load(str(tmp_path / "nowhere"))
    with pytest.raises(CheckpointUnavailable, match=r"no config\.json"):
        ClassifierChecker.load(str(tmp_path))


def test_a_repo_id_loads_its_snapshot_of_safetensors_and_json(
    classifier_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import huggingface_hub

    asked: list[tuple[str, object]] = []

    def snapshot(repo_id: str, allow_patterns: object = None) -> str:
        asked.append((repo_id, allow_patterns))
        return str(classifier_dir)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot)
    scores = ClassifierChecker.load("owner/nsfw-classifier").check(pictures())
    assert scores == ClassifierChecker.load(str(classifier_dir)).check(pictures())
    assert asked == [("owner/nsfw-classifier", ["*.json", "*.safetensors"])]


def test_an_unreachable_repo_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub

    def offline(repo_id: str, allow_patterns: object = None) -> str:
        raise OSError("no network")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    with pytest.raises(CheckpointUnavailable, match=r"could not get the safety classifier owner/nsfw .*\(OSError\)"):
        ClassifierChecker.load("owner/nsfw")


def test_a_folder_without_safetensors_weights_is_refused(classifier_dir: Path, tmp_path: Path) -> None:
    for name in ("config.json", "preprocessor_config.json"):
        (tmp_path / name).write_bytes((classifier_dir / name).read_bytes())
    with pytest.raises(CheckpointUnavailable, match="could not load the safety classifier"):
        ClassifierChecker.load(str(tmp_path))


def test_a_failing_check_raises_safety_check_failed() -> None:
    from transformers.models.vit.image_processing_pil_vit import ViTImageProcessorPil

    model, _ = build_tiny_safety_checker()
    mismatched = ViTImageProcessorPil(size={"height": 64, "width": 64})  # the model takes 32x32 only
    with pytest.raises(SafetyCheckFailed, match="the safety classifier failed on 3 picture"):
        ClassifierChecker(model, mismatched).check(pictures())


# The vision-language checker.


def test_the_text_encoder_scores_pictures_of_different_sizes(components: dict[str, Any]) -> None:
    checker: SafetyChecker = VisionLanguageChecker.from_components(components)
    scores = checker.check(pictures())
    assert_probabilities(scores, 3)
    assert len(set(scores)) == 3
    assert checker.check(pictures()) == scores
    assert checker.check([]) == []


def test_a_batch_scores_as_each_picture_alone(components: dict[str, Any]) -> None:
    """Left padding keeps each prompt's last token last: a picture's score does not depend on its batch."""
    checker = VisionLanguageChecker.from_components(components)
    alone = [checker.check([picture])[0] for picture in pictures()]
    assert checker.check(pictures()) == pytest.approx(alone, abs=1e-5)


def test_without_a_processor_one_is_made_from_the_tokenizer(components: dict[str, Any]) -> None:
    text_to_image = {name: part for name, part in components.items() if name != "processor"}
    assert_probabilities(VisionLanguageChecker.from_components(text_to_image).check(pictures()), 3)


def test_large_pictures_are_scaled_down_before_asking(components: dict[str, Any]) -> None:
    big, small = Image.new("RGB", (2048, 1024), (9, 9, 9)), Image.new("RGB", (1024, 512), (9, 9, 9))
    checker = VisionLanguageChecker.from_components(components, max_pixels=64 * 32)
    assert checker.check([big]) == pytest.approx(checker.check([small]), abs=1e-6)


def test_yes_and_no_are_resolved_from_the_tiny_tokenizer() -> None:
    tokenizer = build_tiny_tokenizer()
    answers = answer_tokens(tokenizer)
    assert not answers.whole_words  # the tiny vocabulary has no whole `yes`: their first pieces are used
    assert {tokenizer.decode([i]).strip().lower() for i in answers.yes} == {"ye"}
    assert {tokenizer.decode([i]).strip().lower() for i in answers.no} == {"n"}


def test_whole_word_answer_tokens_are_preferred() -> None:
    tokenizer = build_tiny_tokenizer()
    tokenizer.add_tokens(["Yes", "No", "yes", "no"])
    answers = answer_tokens(tokenizer)
    assert answers.whole_words
    assert sorted(tokenizer.decode([i]) for i in answers.yes) == ["Yes", "yes"]
    assert sorted(tokenizer.decode([i]) for i in answers.no) == ["No", "no"]


def test_a_tokenizer_that_cannot_tell_yes_from_no_is_refused() -> None:
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    unknown_only = Tokenizer(models.WordLevel({"[UNK]": 0}, unk_token="[UNK]"))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=unknown_only, unk_token="[UNK]")
    with pytest.raises(CheckpointUnavailable, match="no token that begins 'yes' but not 'no'"):
        answer_tokens(tokenizer)


def test_a_failing_vision_language_check_raises_safety_check_failed(components: dict[str, Any]) -> None:
    checker = VisionLanguageChecker.from_components(components)
    with pytest.raises(SafetyCheckFailed, match="the vision-language safety check failed on 1 picture"):
        checker.check([Image.new("RGB", (0, 0))])


# Verdicts.


def test_verdicts_flag_scores_at_or_above_the_threshold() -> None:
    assert flagged(0.5) and not flagged(0.49)
    assert flagged(0.2, threshold=0.2) and not flagged(0.9, threshold=0.95)
    assert flagged(0.7) is True
    assert flagged(0.7, threshold=0.8) is False
