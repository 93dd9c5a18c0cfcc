"""`qwen-image verify`: an image the server made carries a valid manifest and its watermark; others not."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from tests.cli.test_cli import FAST, qwen_image


@pytest.fixture
def made(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("QWEN_IMAGE_DATA_DIR", str(tmp_path / "data"))
    path = tmp_path / "fox.jpg"
    code, _, stderr = qwen_image("generate", "a fox", *FAST, "--size", "512x512", "--seed", "3", "-o", path)
    assert code == 0, stderr
    return path


def test_an_image_of_the_server_is_marked(made: Path, tmp_path: Path) -> None:
    code, stdout, _ = qwen_image("verify", made, "--server-id", "someone-else")
    assert code == 0
    assert "C2PA: Valid (signingCredential.untrusted)" in stdout
    assert "model: qwen-image (tiny)" in stdout and "trainedAlgorithmicMedia" in stdout
    assert "watermark: server" in stdout and "does not match" in stdout
    code, stdout, _ = qwen_image("verify", made, "--trust", tmp_path / "data" / "c2pa" / "cert.pem")
    assert code == 0 and "C2PA: Trusted" in stdout


def test_an_unmarked_image_exits_1_and_a_missing_file_2(made: Path, tmp_path: Path) -> None:
    plain = tmp_path / "plain.png"
    Image.new("RGB", (300, 300), (90, 90, 90)).save(plain)
    code, stdout, _ = qwen_image("verify", made, plain)
    assert code == 1 and "C2PA: no manifest" in stdout and "watermark: none readable" in stdout
    code, _, stderr = qwen_image("verify", tmp_path / "gone.png")
    assert code == 2 and "cannot read" in stderr
