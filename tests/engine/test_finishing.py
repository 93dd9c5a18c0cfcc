"""What is done to pictures after the pipeline, through the real pipelines (tiny model): the visible
watermark, the invisible mark, C2PA, prompt extension and the safety check, and what the request's
notes say of each."""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from qwen_image_server.domain import GenerationRequest, ImageResult
from qwen_image_server.engine import Engine
from qwen_image_server.engine.tiny_safety import save_tiny_safety_checker
from qwen_image_server.errors import SafetyCheckFailed
from qwen_image_server.provenance import invisible_mark
from qwen_image_server.provenance.c2pa_manifest import read_provenance
from qwen_image_server.settings import Settings
from tests.conftest import TINY_EVERYWHERE, UNMARKED, picture_bytes


def request(**fields: Any) -> GenerationRequest:
    base: dict[str, Any] = {"model": "qwen-image", "prompt": "a red fox", "width": 256, "height": 256, "seed": 5}
    return GenerationRequest.create(**(base | {"num_inference_steps": 2} | fields))


def pixels(result: ImageResult) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(result.data)).convert("RGB"), dtype=np.int16)


def engine_with(tmp_path: Path, **settings: Any) -> Engine:
    return Engine(Settings(**(UNMARKED | {"data_dir": tmp_path / "data"} | settings)))


@pytest.fixture(scope="module")
def plain(tmp_path_factory: pytest.TempPathFactory) -> Engine:
    return Engine(Settings(**UNMARKED, data_dir=tmp_path_factory.mktemp("plain"), c2pa=False))


def test_the_watermark_is_in_its_corner_and_nowhere_else(plain: Engine) -> None:
    [bare] = plain.generate(request())
    [marked] = plain.generate(request(watermark=True))
    changed = np.abs(pixels(marked) - pixels(bare)).max(axis=2) > 0
    rows, columns = np.nonzero(changed)
    assert rows.min() > 256 * 0.8 and columns.min() > 256 * 0.4, "bottom right"
    assert changed.mean() <= 0.03, "never over 3% of the picture"
    assert marked.notes.applied == ("watermark",) and bare.notes.applied == ()


def test_the_server_can_force_the_watermark(tmp_path: Path) -> None:
    [forced] = engine_with(tmp_path, watermark_force=True, c2pa=False).generate(request())
    assert "watermark" in forced.notes.applied


@pytest.mark.parametrize("fmt", ["png", "jpeg", "webp"])
def test_c2pa_manifests_validate_in_each_format(tmp_path: Path, fmt: str) -> None:
    [result] = engine_with(tmp_path).generate(request(output_format=fmt))
    summary = read_provenance(result.data)
    assert summary.manifest_present and summary.validation_state == "Valid"
    assert summary.failures == ("signingCredential.untrusted",)  # the self-signed pair of DATA_DIR/c2pa
    assert summary.digital_source_type.endswith("trainedAlgorithmicMedia")
    assert summary.model == "qwen-image" and summary.model_version == "tiny"
    trusted = read_provenance(result.data, trust_anchors_pem=(tmp_path / "data" / "c2pa" / "cert.pem").read_bytes())
    assert trusted.validation_state == "Trusted"
    assert "c2pa" in result.notes.applied


def test_an_edit_names_its_input_as_parent(tmp_path: Path) -> None:
    source = picture_bytes((256, 256))
    [result] = engine_with(tmp_path).generate(request(model="qwen-image-edit", images=(source,)))
    [parent] = read_provenance(result.data).ingredients
    assert parent.relationship == "parentOf"


def test_the_invisible_mark_survives_jpeg_75_through_the_pipeline(tmp_path: Path) -> None:
    engine = Engine(Settings(**TINY_EVERYWHERE, data_dir=tmp_path / "data", c2pa=False))
    [result] = engine.generate(request(width=512, height=512))
    assert "invisible_watermark" in result.notes.applied
    recompressed = io.BytesIO()
    Image.open(io.BytesIO(result.data)).convert("RGB").save(recompressed, "JPEG", quality=75)
    payload = invisible_mark.detect(Image.open(recompressed))
    assert payload is not None and payload == engine._finishing().payload(request(width=512, height=512), 5)


def test_the_mark_keeps_image_i_equal_to_a_one_image_request_of_its_seed(engine: Engine) -> None:
    _, second = engine.generate(request(num_images_per_prompt=2, seed=5))
    [alone] = engine.generate(request(seed=6))
    assert np.abs(pixels(second) - pixels(alone)).max() <= 1
    marks = [invisible_mark.detect(Image.open(io.BytesIO(result.data))) for result in (second, alone)]
    assert marks[0] is not None and marks[0] == marks[1], "the same recipe: the same mark"


def test_prompt_extension_rewrites_and_reports_the_prompt(plain: Engine) -> None:
    [extended] = plain.generate(request(prompt_extend=True))
    [as_given] = plain.generate(request())
    assert extended.notes.actual_prompt and extended.notes.actual_prompt != "a red fox"
    assert "prompt_extend" in extended.notes.applied
    assert as_given.notes.actual_prompt is None


def test_prompt_extension_off_on_the_server_is_reported_not_applied(tmp_path: Path, plain: Engine) -> None:
    [result] = engine_with(tmp_path, prompt_extension=False, c2pa=False).generate(request(prompt_extend=True))
    assert result.notes.actual_prompt is None
    assert "turned off on this server" in dict(result.notes.not_applied)["prompt_extend"]
    assert np.array_equal(pixels(result), pixels(plain.generate(request())[0])), "today's image"


class Flags:
    """A checker that gives every picture the same score, or fails."""

    def __init__(self, score: float | None) -> None:
        self.score = score

    def check(self, pictures: Sequence[Image.Image]) -> list[float]:
        if self.score is None:
            raise SafetyCheckFailed("the checker broke")
        return [self.score for _ in pictures]


def checked(tmp_path: Path, score: float | None, monkeypatch: pytest.MonkeyPatch, **settings: Any) -> list[ImageResult]:
    engine = engine_with(tmp_path, safety_checker="qwen-vl", c2pa=False, **settings)
    monkeypatch.setattr(type(engine._model_options()), "_checker", lambda self, pipeline: Flags(score))
    return engine.generate(request(safety_check=True, num_images_per_prompt=2))


def test_flagged_images_are_withheld_by_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    results = checked(tmp_path, 0.9, monkeypatch)
    assert all(result.withheld == "flagged by the safety checker" and result.data == b"" for result in results)
    assert all(result.nsfw for result in results)


def test_flagged_images_are_blurred_or_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, plain: Engine) -> None:
    clean = pixels(plain.generate(request(num_images_per_prompt=2))[0])
    blurred = checked(tmp_path, 0.9, monkeypatch, nsfw_action="blur")[0]
    reported = checked(tmp_path, 0.9, monkeypatch, nsfw_action="report")[0]
    assert blurred.withheld is None and "safety_blur" in blurred.notes.applied
    assert np.abs(pixels(blurred) - clean).mean() > 5 and pixels(blurred).std() < clean.std()
    assert reported.nsfw and np.array_equal(pixels(reported), clean)


def test_images_below_the_threshold_pass(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    results = checked(tmp_path, 0.1, monkeypatch)
    assert all(result.nsfw is False and result.withheld is None and result.data for result in results)


def test_a_failing_checker_withholds_when_fail_closed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    closed = checked(tmp_path, None, monkeypatch)
    assert all("the safety check failed" in (result.withheld or "") for result in closed)
    opened = checked(tmp_path, None, monkeypatch, safety_fail_closed=False)
    assert all(result.withheld is None and result.nsfw is None for result in opened)
    assert "the checker broke" in dict(opened[0].notes.not_applied)["safety_check"]


def test_no_checker_is_reported_not_applied(plain: Engine) -> None:
    [result] = plain.generate(request(safety_check=True))
    assert result.nsfw is None and "no safety checker" in dict(result.notes.not_applied)["safety_check"]


@pytest.mark.parametrize("checker", ["classifier", "qwen-vl"])
def test_the_real_checkers_score_every_picture(tmp_path: Path, checker: str) -> None:
    source = "qwen-vl"
    if checker == "classifier":
        save_tiny_safety_checker(tmp_path / "checker")
        source = str(tmp_path / "checker")
    results = engine_with(tmp_path, safety_checker=source, nsfw_action="report", c2pa=False).generate(
        request(safety_check=True, num_images_per_prompt=2)
    )
    assert all(result.nsfw is not None for result in results)
    assert "safety_check" not in dict(results[0].notes.not_applied)


def test_a_c2pa_pair_that_cannot_sign_stops_the_load(tmp_path: Path) -> None:
    from qwen_image_server.domain import ModelName
    from qwen_image_server.errors import ProvenanceFailed

    (tmp_path / "cert.pem").write_text("not a certificate")
    (tmp_path / "key.pem").write_text("not a key")
    engine = engine_with(tmp_path, c2pa_cert=tmp_path / "cert.pem", c2pa_key=tmp_path / "key.pem")
    with pytest.raises(ProvenanceFailed):
        engine.load(ModelName.QWEN_IMAGE)


def test_a_checked_request_sends_no_previews_and_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    engine = engine_with(tmp_path, safety_checker="qwen-vl", nsfw_action="report", c2pa=False)
    monkeypatch.setattr(type(engine._model_options()), "_checker", lambda self, pipeline: Flags(0.9))
    previews: list[ImageResult] = []
    [result] = engine.generate(request(safety_check=True, partial_images=1), on_partial=previews.append)
    assert previews == [], "a preview would leave the server before the check"
    assert "only checked pictures" in dict(result.notes.not_applied)["partial_images"]
    unchecked: list[ImageResult] = []
    engine.generate(request(partial_images=1), on_partial=unchecked.append)
    assert len(unchecked) == 1
