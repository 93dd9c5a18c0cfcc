"""`qwen-image verify IMAGE...`: what provenance marks an image carries.

For each file: its C2PA manifest (present, validation state and failures, who made it with which
model, its ingredients) and the invisible watermark's payload (this server's id hash and the
image's recipe hash, as `provenance/finishing.py` writes them). The exit status is 0 when every
image carries a mark (a manifest that validates, or a readable watermark), 1 when one carries none
or an invalid manifest, 2 for a file that cannot be read.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from qwen_image_server.cli.main import SERVER_ERROR_EXIT, app, friendly_errors, out
from qwen_image_server.errors import InvalidImage, InvalidParameter

if TYPE_CHECKING:
    from qwen_image_server.provenance.c2pa_manifest import ProvenanceSummary

FilesArg = Annotated[list[Path], typer.Argument(help="Image files (PNG, JPEG, WebP).", exists=False)]
TrustOpt = Annotated[
    Path | None,
    typer.Option(
        "--trust",
        help="A PEM certificate to trust as an anchor (e.g. the server's DATA_DIR/c2pa/cert.pem): then a "
        "manifest it signed reads Trusted.",
    ),
]
ServerOpt = Annotated[
    str | None,
    typer.Option("--server-id", help="Say whether the watermark names this server id (setting server_id)."),
]


@app.command()
def verify(files: FilesArg, trust: TrustOpt = None, server_id: ServerOpt = None) -> None:
    """Read the C2PA manifest and the invisible watermark of images; exit 0 when every one is marked."""
    with friendly_errors():
        anchors = _read(trust) if trust is not None else None
        unmarked = [path for path in files if not _report(path, _read(path), anchors, server_id)]
    if unmarked:
        raise typer.Exit(SERVER_ERROR_EXIT)


def _report(path: Path, data: bytes, anchors: bytes | None, server_id: str | None) -> bool:
    """Print what `path` carries; True when it carries a valid manifest or a readable watermark."""
    from PIL import Image, UnidentifiedImageError

    from qwen_image_server.provenance import invisible_mark
    from qwen_image_server.provenance.c2pa_manifest import read_provenance

    summary = read_provenance(data, trust_anchors_pem=anchors)
    try:
        payload = invisible_mark.detect(Image.open(io.BytesIO(data)))
    except (UnidentifiedImageError, OSError) as exc:
        raise InvalidImage(f"{path}: not an image Pillow can read ({exc})") from None
    out.print(f"[bold]{path}[/bold]", highlight=False, soft_wrap=True)
    if not summary.manifest_present:
        out.print("  C2PA: no manifest", highlight=False, soft_wrap=True)
    else:
        out.print(f"  C2PA: {summary.validation_state}" + (f" ({', '.join(summary.failures)})" if summary.failures
                  else ""), highlight=False, soft_wrap=True)  # fmt: skip
        for line in _manifest_lines(summary):
            out.print(f"    {line}", highlight=False, soft_wrap=True)
    if payload is None:
        out.print("  watermark: none readable", highlight=False, soft_wrap=True)
    else:
        out.print(f"  watermark: server {payload[:4].hex()}, image {payload[4:].hex()}" + _whose(payload, server_id),
                  highlight=False, soft_wrap=True)  # fmt: skip
    valid = summary.manifest_present and summary.validation_state in ("Valid", "Trusted")
    return valid or payload is not None


def _manifest_lines(summary: ProvenanceSummary) -> list[str]:
    lines = [
        f"made by: {summary.claim_generator}",
        f"model: {summary.model} ({summary.model_version})",
        f"source type: {summary.digital_source_type}",
        f"signed by: {summary.signer}",
    ]
    lines += [f"ingredient: {item.title} ({item.relationship})" for item in summary.ingredients]
    if summary.error:
        lines.append(f"error: {summary.error}")
    return lines


def _whose(payload: bytes, server_id: str | None) -> str:
    if server_id is None:
        return ""
    import hashlib

    ours = hashlib.sha256(server_id.encode()).digest()[:4] == payload[:4]
    return f" (server id {server_id!r}: {'matches' if ours else 'does not match'})"


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise InvalidParameter(f"cannot read {path}: {exc.strerror or exc}", param="files") from None
