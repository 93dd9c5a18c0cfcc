"""C2PA manifests with the real c2pa library: what we sign reads back with the library's own Reader
(created by AI, our generator, the model, no thumbnail, a small overhead), validates as untrusted
(self-signed) or Trusted (given the anchor), breaks when a pixel byte changes, names an edit's inputs;
the signing pair is made once (race-free) or taken from configured files, with clear errors."""

from __future__ import annotations

import datetime
import io
import json
import stat
import threading
from pathlib import Path
from typing import Any

import c2pa  # type: ignore[import-untyped]
import numpy as np
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from PIL import Image

from qwen_image_server import __version__
from qwen_image_server.errors import InvalidImage, ProvenanceFailed
from qwen_image_server.provenance.c2pa_manifest import (
    TRAINED_ALGORITHMIC_MEDIA,
    IngredientSummary,
    ProvenanceSigner,
    load_credentials,
    read_provenance,
)

FORMATS = {"image/png": "PNG", "image/jpeg": "JPEG", "image/webp": "WEBP"}
MODEL = {"model": "qwen-image", "model_version": "Qwen/Qwen-Image-2512", "title": "a red fox in fresh snow"}


def encoded(content_type: str, seed: int = 0, side: int = 256) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (side // 8, side // 8, 3), dtype=np.uint8)
    picture = Image.fromarray(pixels).resize((side, side), Image.Resampling.BILINEAR)  # noisy, but compressible
    buffer = io.BytesIO()
    picture.save(buffer, FORMATS[content_type])
    return buffer.getvalue()


def library_read(data: bytes, content_type: str) -> dict[str, Any]:
    with c2pa.Reader(content_type, io.BytesIO(data)) as reader:
        store: dict[str, Any] = json.loads(reader.json())
    return store


def active(store: dict[str, Any]) -> dict[str, Any]:
    manifest: dict[str, Any] = store["manifests"][store["active_manifest"]]
    return manifest


def actions(manifest: dict[str, Any]) -> list[dict[str, Any]]:
    [assertion] = [a for a in manifest["assertions"] if a["label"].startswith("c2pa.actions")]
    found: list[dict[str, Any]] = assertion["data"]["actions"]
    return found


@pytest.fixture(scope="module")
def signer(tmp_path_factory: pytest.TempPathFactory) -> ProvenanceSigner:
    return ProvenanceSigner(tmp_path_factory.mktemp("c2pa"))


@pytest.mark.parametrize("content_type", list(FORMATS))
def test_a_signed_image_reads_back_as_ai_made_by_our_server(signer: ProvenanceSigner, content_type: str) -> None:
    original = encoded(content_type)
    signed = signer.sign(original, content_type, **MODEL)
    store = library_read(signed, content_type)
    manifest = active(store)
    assert store["validation_state"] == "Valid"
    failures = store["validation_results"]["activeManifest"]["failure"]
    assert "signingCredential.untrusted" in [status["code"] for status in failures]
    assert manifest["claim_generator_info"][0]["name"] == "qwen-image-server"
    assert manifest["claim_generator_info"][0]["version"] == __version__
    assert manifest["title"] == MODEL["title"]
    [created] = actions(manifest)
    assert created["action"] == "c2pa.created"
    assert created["digitalSourceType"] == TRAINED_ALGORITHMIC_MEDIA
    assert created["softwareAgent"] == {"name": "qwen-image", "version": "Qwen/Qwen-Image-2512"}
    assert "thumbnail" not in manifest and not any("thumbnail" in a["label"] for a in manifest["assertions"])
    assert 0 < len(signed) - len(original) < 20_000
    with Image.open(io.BytesIO(signed)) as after, Image.open(io.BytesIO(original)) as before:
        assert np.array_equal(np.asarray(after), np.asarray(before))  # the pixels are untouched


def test_our_reader_summarises_the_manifest(signer: ProvenanceSigner, tmp_path: Path) -> None:
    path = tmp_path / "fox.png"
    path.write_bytes(signer.sign(encoded("image/png"), "image/png", **MODEL))
    summary = read_provenance(path)
    assert summary.manifest_present and summary.validation_state == "Valid"
    assert summary.failures == ("signingCredential.untrusted",)
    assert summary.claim_generator == f"qwen-image-server {__version__}"
    assert summary.digital_source_type == TRAINED_ALGORITHMIC_MEDIA
    assert (summary.title, summary.model, summary.model_version) == tuple(MODEL[k] for k in ("title", "model",
                                                                                          "model_version"))  # fmt: skip
    assert summary.signer == "qwen-image-server (self-signed)"
    assert summary.ingredients == () and summary.error is None


def test_the_servers_own_certificate_as_trust_anchor_makes_it_trusted(signer: ProvenanceSigner) -> None:
    signed = signer.sign(encoded("image/jpeg"), "image/jpeg", **MODEL)
    summary = read_provenance(signed, trust_anchors_pem=signer.credentials.chain_pem)
    assert summary.validation_state == "Trusted" and summary.failures == ()


def test_a_changed_pixel_byte_makes_it_invalid(signer: ProvenanceSigner) -> None:
    signed = bytearray(signer.sign(encoded("image/png"), "image/png", **MODEL))
    signed[signed.index(b"IDAT") + 40] ^= 0x01  # inside the compressed pixels
    summary = read_provenance(bytes(signed))
    assert summary.validation_state == "Invalid"
    assert "assertion.dataHash.mismatch" in summary.failures


def test_a_damaged_manifest_reads_as_invalid_not_as_an_error(signer: ProvenanceSigner) -> None:
    signed = bytearray(signer.sign(encoded("image/png"), "image/png", **MODEL))
    signed[signed.index(b"caBX") + 150] ^= 0x01  # inside the manifest's claim (measured: undecodable)
    summary = read_provenance(bytes(signed))
    assert summary.manifest_present and summary.validation_state == "Invalid"


def test_an_edit_names_its_input_images_as_ingredients(signer: ProvenanceSigner) -> None:
    parent = signer.sign(encoded("image/png", seed=1), "image/png", **MODEL)  # itself signed, as a re-edit is
    reference = encoded("image/jpeg", seed=2)
    edit = {"model": "qwen-image-edit", "model_version": "2511", "title": "make it night"}
    signed = signer.sign(encoded("image/webp", seed=3), "image/webp", **edit,
                         parents=[(parent, "image/png"), (reference, "image/jpeg")])  # fmt: skip
    store = library_read(signed, "image/webp")
    manifest = active(store)
    assert store["validation_state"] == "Valid"
    relationships = [(i["title"], i["relationship"]) for i in manifest["ingredients"]]
    assert relationships == [("input image 1", "parentOf"), ("input image 2", "componentOf")]  # one parent at most
    assert "active_manifest" in manifest["ingredients"][0]  # the parent's own manifest came along
    assert [a["action"] for a in actions(manifest)] == ["c2pa.opened", "c2pa.placed", "c2pa.edited"]
    assert actions(manifest)[-1]["digitalSourceType"] == TRAINED_ALGORITHMIC_MEDIA
    assert read_provenance(signed).ingredients == (
        IngredientSummary(title="input image 1", relationship="parentOf"),
        IngredientSummary(title="input image 2", relationship="componentOf"),
    )


def test_a_plain_image_has_no_manifest() -> None:
    summary = read_provenance(encoded("image/png"))
    assert not summary.manifest_present and summary.validation_state is None


def test_bytes_that_are_no_image_are_refused() -> None:
    with pytest.raises(InvalidImage, match="C2PA"):
        read_provenance(b"hello, not an image" * 8)


def test_signing_from_several_threads_at_once(signer: ProvenanceSigner) -> None:
    images = [encoded("image/png", seed=seed) for seed in range(6)]
    signed: list[bytes] = [b""] * len(images)

    def sign(index: int) -> None:
        signed[index] = signer.sign(images[index], "image/png", **MODEL)

    threads = [threading.Thread(target=sign, args=(index,)) for index in range(len(images))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [read_provenance(data).validation_state for data in signed] == ["Valid"] * len(images)


def test_only_png_jpeg_and_webp_are_signed(signer: ProvenanceSigner) -> None:
    with pytest.raises(ProvenanceFailed, match="image/gif"):
        signer.sign(b"GIF89a", "image/gif", **MODEL)


# ---- the signing pair ----------------------------------------------------------------------------


def test_the_self_signed_pair_is_made_once_and_reused(tmp_path: Path) -> None:
    first = ProvenanceSigner(tmp_path / "c2pa")
    second = ProvenanceSigner(tmp_path / "c2pa")
    assert second.credentials == first.credentials
    assert (tmp_path / "c2pa" / "cert.pem").read_bytes() == first.credentials.chain_pem
    assert stat.S_IMODE((tmp_path / "c2pa" / "key.pem").stat().st_mode) == 0o600
    assert first.credentials.algorithm == "ES256"
    assert sorted(p.name for p in (tmp_path / "c2pa").iterdir()) == ["cert.pem", "key.pem"]


def test_concurrent_starts_end_with_one_pair(tmp_path: Path) -> None:
    count = 8
    barrier = threading.Barrier(count)
    made: list[bytes] = []

    def start() -> None:
        barrier.wait()
        made.append(ProvenanceSigner(tmp_path).credentials.chain_pem)

    threads = [threading.Thread(target=start) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(made) == count and len(set(made)) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cert.pem", "key.pem"]


def test_a_key_left_without_its_certificate_gets_one(tmp_path: Path) -> None:
    """A crash between the two files: the next start makes the certificate for the key in place."""
    key = ProvenanceSigner(tmp_path).credentials.key_pem
    (tmp_path / "cert.pem").unlink()
    assert ProvenanceSigner(tmp_path).credentials.key_pem == key


SIGNING_ONLY = x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                             data_encipherment=False, key_agreement=False, key_cert_sign=False, crl_sign=False,
                             encipher_only=False, decipher_only=False)  # fmt: skip


def write_pair(folder: Path, key: Any, *, cert_key: Any = None, key_usage: bool = True) -> tuple[Path, Path]:
    """A leaf certificate for `cert_key` (default: `key`) and the PEM of `key`, as C2PA accepts them."""
    cert_key = cert_key or key
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "configured signer")])
    now = datetime.datetime.now(datetime.UTC)
    public = cert_key.public_key()
    builder = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(public), critical=False)
    )  # fmt: skip
    if key_usage:
        builder = builder.add_extension(SIGNING_ONLY, critical=True)
    certificate = builder.sign(cert_key, None if isinstance(cert_key, ed25519.Ed25519PrivateKey) else hashes.SHA256())
    cert_path, key_path = folder / "chain.pem", folder / "signing.key"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    # The traditional ("EC PRIVATE KEY") form, which the library alone would not read.
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL
                                           if not isinstance(key, ed25519.Ed25519PrivateKey)
                                           else serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))  # fmt: skip
    return cert_path, key_path


def test_a_configured_es256_pair_is_used(tmp_path: Path) -> None:
    cert_path, key_path = write_pair(tmp_path, ec.generate_private_key(ec.SECP256R1()))
    signer = ProvenanceSigner(tmp_path / "unused", cert_path=cert_path, key_path=key_path)
    store = library_read(signer.sign(encoded("image/png"), "image/png", **MODEL), "image/png")
    assert active(store)["signature_info"]["common_name"] == "configured signer"
    assert active(store)["signature_info"]["alg"].lower() == "es256"
    assert not (tmp_path / "unused").exists()  # no self-signed pair made


@pytest.mark.parametrize(
    ("key", "algorithm"),
    [(ed25519.Ed25519PrivateKey.generate(), "ED25519"), (ec.generate_private_key(ec.SECP384R1()), "ES384"),
     (rsa.generate_private_key(public_exponent=65537, key_size=2048), "PS256")],
)  # fmt: skip
def test_the_algorithm_follows_the_key(tmp_path: Path, key: Any, algorithm: str) -> None:
    assert load_credentials(*write_pair(tmp_path, key)).algorithm == algorithm


def test_a_key_that_is_not_the_certificates_is_refused(tmp_path: Path) -> None:
    cert_path, key_path = write_pair(tmp_path, ec.generate_private_key(ec.SECP256R1()),
                                     cert_key=ec.generate_private_key(ec.SECP256R1()))  # fmt: skip
    with pytest.raises(ProvenanceFailed, match="does not belong to the certificate") as raised:
        ProvenanceSigner(tmp_path, cert_path=cert_path, key_path=key_path)
    assert raised.value.status == 500 and raised.value.code == "provenance_failed"


def test_an_unreadable_key_is_refused_with_its_path(tmp_path: Path) -> None:
    cert_path, key_path = write_pair(tmp_path, ec.generate_private_key(ec.SECP256R1()))
    key_path.write_text("not a key")
    with pytest.raises(ProvenanceFailed, match="not an unencrypted PEM key"):
        ProvenanceSigner(tmp_path, cert_path=cert_path, key_path=key_path)
    with pytest.raises(ProvenanceFailed, match=r"missing\.key"):
        ProvenanceSigner(tmp_path, cert_path=cert_path, key_path=tmp_path / "missing.key")


def test_a_certificate_c2pa_will_not_sign_with_is_refused_at_start(tmp_path: Path) -> None:
    cert_path, key_path = write_pair(tmp_path, ec.generate_private_key(ec.SECP256R1()), key_usage=False)
    with pytest.raises(ProvenanceFailed, match=r"certificate is invalid.*keyUsage digitalSignature"):
        ProvenanceSigner(tmp_path, cert_path=cert_path, key_path=key_path)


def test_a_certificate_without_its_key_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ProvenanceFailed, match="both"):
        ProvenanceSigner(tmp_path, cert_path=tmp_path / "chain.pem")
