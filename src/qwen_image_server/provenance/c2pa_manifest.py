"""C2PA manifests ("Content Credentials") for generated images, signed and read with c2pa-python.

`ProvenanceSigner.sign` embeds a signed manifest into encoded PNG, JPEG or WebP bytes; `read_provenance`
(for `qwen-image verify`) says what a file's manifest claims and whether it validates.

The manifest says: made by AI (IPTC digital source type `trainedAlgorithmicMedia` on a `c2pa.created`
action, or on `c2pa.edited` after `c2pa.opened` for an edit), which model made it (the action's
`softwareAgent`: `{"name": model, "version": model_version}`, the field C2PA readers show as the tool
used), by which software (`claim_generator_info`: qwen-image-server and its version) and a title. An
edit's first input image is its `parentOf` ingredient; further inputs are `componentOf` ingredients
with a `c2pa.placed` action, since the C2PA spec allows one parent per manifest.

Design, with what was measured on c2pa-python 0.38.1 (native c2pa-rs 0.91.3):
- No network, ever: no timestamp authority (`ta_url=None`; the signing time is then only the claimed
  one), remote manifests and OCSP not fetched, `core.allowed_network_hosts` empty.
- No thumbnail: the library's default 1024-px thumbnail adds 40-88 KB (up to 2 MB on noisy images); a
  manifest without it adds about 2.8 KB to a PNG, JPEG or WebP (3.1 KB with a parent ingredient).
- At 1024x1024 (bench/c2pa_cost.py, one CPU core): sign 4.5 ms for a 1.9 MB PNG, 1.7 ms for JPEG and
  WebP; read and validate 2.5 / 0.9 ms. The library hashes the whole file: cost follows encoded size.
- The library refuses a signing certificate without an Authority Key Identifier ("the certificate is
  invalid"), self-signed or not; the self-signed one made here has it. A self-signed certificate reads
  back as state "Valid" with failure `signingCredential.untrusted`; given as a trust anchor, "Trusted".
- Thread safety: one settings `Context` is shared (the library guards it for concurrent shared use); a
  `Builder` and a `Signer` are made per call (a Builder signs once; a Signer costs ~0.15 ms).
"""

from __future__ import annotations

import contextlib
import datetime
import io
import json
import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal, TypeVar

import c2pa  # type: ignore[import-untyped]
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from PIL import Image

from qwen_image_server import __version__
from qwen_image_server.errors import InvalidImage, ProvenanceFailed

GENERATOR_NAME: Final = "qwen-image-server"
TRAINED_ALGORITHMIC_MEDIA: Final = "http://cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia"
SIGNABLE_TYPES: Final = frozenset({"image/png", "image/jpeg", "image/webp"})
CERT_FILE: Final = "cert.pem"
KEY_FILE: Final = "key.pem"
SELF_SIGNED_VALIDITY: Final = datetime.timedelta(days=3650)

# Offline and small: no thumbnail, nothing fetched. Verification after signing stays on (the default):
# a manifest that would not validate is refused at once rather than shipped.
OFFLINE_SETTINGS: Final[dict[str, Any]] = {
    "builder": {"thumbnail": {"enabled": False}},
    "verify": {"remote_manifest_fetch": False, "ocsp_fetch": False},
    "core": {"allowed_network_hosts": []},
}

ValidationState = Literal["Valid", "Trusted", "Invalid"]
T = TypeVar("T")


@dataclass(frozen=True)
class SigningCredentials:
    """A certificate chain (leaf first) and its private key, as PEM, and the C2PA algorithm for the key."""

    chain_pem: bytes
    key_pem: bytes
    algorithm: str  # a c2pa.C2paSigningAlg member name: ES256, ES384, ES512, PS256, ED25519


# ---- credentials -------------------------------------------------------------------------------


def load_credentials(cert_path: Path, key_path: Path) -> SigningCredentials:
    """Read a configured certificate chain and key; the algorithm follows the key (EC P-256/384/521 ->
    ES256/384/512, Ed25519 -> ED25519, RSA -> PS256)."""
    try:
        chain_pem, key_pem = cert_path.read_bytes(), key_path.read_bytes()
    except OSError as error:
        raise ProvenanceFailed(f"cannot read the C2PA signing certificate or key: {error}") from None
    return _credentials(chain_pem, key_pem, f"{cert_path} and {key_path}")


def _credentials(chain_pem: bytes, key_pem: bytes, where: str) -> SigningCredentials:
    try:
        leaf = x509.load_pem_x509_certificates(chain_pem)[0]
    except ValueError:
        raise ProvenanceFailed(f"the C2PA certificate in {where} is not a PEM certificate chain") from None
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError) as error:  # TypeError: the key is encrypted
        raise ProvenanceFailed(f"the C2PA private key in {where} is not an unencrypted PEM key: {error}") from None
    if _public_bytes(key.public_key()) != _public_bytes(leaf.public_key()):
        raise ProvenanceFailed(f"the C2PA private key in {where} does not belong to the certificate")
    # PKCS#8 whatever the file's form (the library reads only PKCS#8).
    return SigningCredentials(chain_pem=chain_pem, key_pem=_pkcs8(key), algorithm=_algorithm(key, where))


def _pkcs8(key: Any) -> bytes:
    return bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                   serialization.NoEncryption()))  # fmt: skip


def _public_bytes(public_key: Any) -> bytes:
    return bytes(public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo))


def _algorithm(key: Any, where: str) -> str:
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return "ED25519"
    if isinstance(key, rsa.RSAPrivateKey):
        return "PS256"
    if isinstance(key, ec.EllipticCurvePrivateKey):
        by_curve = {"secp256r1": "ES256", "secp384r1": "ES384", "secp521r1": "ES512"}
        if key.curve.name in by_curve:
            return by_curve[key.curve.name]
    raise ProvenanceFailed(f"the C2PA private key in {where} is of a kind C2PA cannot sign with "
                           "(use EC P-256/P-384/P-521, Ed25519 or RSA)")  # fmt: skip


def self_signed_credentials(folder: Path) -> SigningCredentials:
    """The server's own ES256 pair in `folder` (`key.pem`, mode 0600, and `cert.pem`), made on first use.

    Race-safe without locks: each file is written under a temporary name and hard-linked into place,
    which fails if another process got there first; the loser then reads the winner's file. The key
    goes first, so racers end up with the same key, and a certificate is made from whatever key is in
    place (so a crash between the two files heals on the next start)."""
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        key_path, cert_path = folder / KEY_FILE, folder / CERT_FILE
        if not key_path.exists():
            _publish(key_path, _pkcs8(ec.generate_private_key(ec.SECP256R1())), 0o600)
        if not cert_path.exists():
            key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
            certificate = _self_signed_certificate(key).public_bytes(serialization.Encoding.PEM)
            _publish(cert_path, certificate, 0o644)  # public: readers may take it as a trust anchor
    except OSError as error:
        raise ProvenanceFailed(f"cannot create the C2PA signing key and certificate in {folder}: {error}") from None
    return load_credentials(cert_path, key_path)


def _publish(path: Path, data: bytes, mode: int) -> None:
    """Put `data` at `path` unless a file is already there (then keep that one). The temporary file
    is made with mode 0600 (mkstemp), so a key is never readable by others, not even for a moment."""
    descriptor, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    temporary = Path(name)
    try:
        with os.fdopen(descriptor, "wb") as file:
            os.fchmod(file.fileno(), mode)
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        with contextlib.suppress(FileExistsError):  # another process won: its file is the one
            path.hardlink_to(temporary)
    finally:
        temporary.unlink()


def _self_signed_certificate(key: Any) -> x509.Certificate:
    name = x509.Name([
        x509.NameAttribute(NameOID.COMMON_NAME, f"{GENERATOR_NAME} (self-signed)"),
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, GENERATOR_NAME),
    ])  # fmt: skip
    now = datetime.datetime.now(datetime.UTC)
    usage = x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                          data_encipherment=False, key_agreement=False, key_cert_sign=False, crl_sign=False,
                          encipher_only=False, decipher_only=False)  # fmt: skip
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))  # a reader's clock may be a little behind
        .not_valid_after(now + SELF_SIGNED_VALIDITY)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(usage, critical=True)
        # C2PA's certificate profile: an EKU it knows (emailProtection is one), and an AKI (required).
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )


# ---- signing -----------------------------------------------------------------------------------


class ProvenanceSigner:
    """Signs encoded images with the configured pair (`cert_path` + `key_path`), or else the server's
    self-signed pair kept in `folder`. One per process; `sign` may run on several threads at once."""

    def __init__(self, folder: Path, cert_path: Path | None = None, key_path: Path | None = None) -> None:
        if (cert_path is None) != (key_path is None):
            raise ProvenanceFailed("configure both the C2PA certificate and its key, or neither")
        if cert_path is not None and key_path is not None:
            self.credentials = load_credentials(cert_path, key_path)
        else:
            self.credentials = self_signed_credentials(folder)
        self._context = _library_call("set up C2PA", lambda: c2pa.Context.from_dict(OFFLINE_SETTINGS))
        self._signer_info = c2pa.C2paSignerInfo(
            getattr(c2pa.C2paSigningAlg, self.credentials.algorithm),
            self.credentials.chain_pem,
            self.credentials.key_pem,
            None,  # no timestamp authority: nothing leaves the machine
        )
        self._probe()

    def _probe(self) -> None:
        """Fail at start, not at the first image, if the library will not sign with the pair (it checks
        the certificate's profile only when signing)."""
        probe = io.BytesIO()
        Image.new("RGB", (8, 8)).save(probe, "PNG")
        try:
            self.sign(probe.getvalue(), "image/png", model="probe", model_version="0", title="probe")
        except ProvenanceFailed as error:
            raise ProvenanceFailed(
                f"{error.message} (C2PA takes a certificate with keyUsage digitalSignature, an extended key usage "
                "such as emailProtection, and an Authority Key Identifier)"
            ) from None

    def sign(self, data: bytes, content_type: str, *, model: str, model_version: str, title: str,
             parents: Sequence[tuple[bytes, str]] = ()) -> bytes:  # fmt: skip
        """`data` (a PNG, JPEG or WebP) with a manifest embedded. `parents`: an edit's input images as
        (encoded bytes, mime type), the first one being the image edited."""
        if content_type not in SIGNABLE_TYPES:
            raise ProvenanceFailed(f"cannot sign {content_type!r} images (only {', '.join(sorted(SIGNABLE_TYPES))})")
        manifest = manifest_definition(model=model, model_version=model_version, title=title, inputs=len(parents))
        return _library_call("sign the C2PA manifest", lambda: self._sign(manifest, data, content_type, parents))

    def _sign(self, manifest: dict[str, Any], data: bytes, content_type: str,
              parents: Sequence[tuple[bytes, str]]) -> bytes:  # fmt: skip
        signed = io.BytesIO()
        with c2pa.Builder(manifest, self._context) as builder, c2pa.Signer.from_info(self._signer_info) as signer:
            intent = c2pa.C2paBuilderIntent.EDIT if parents else c2pa.C2paBuilderIntent.CREATE
            builder.set_intent(intent, c2pa.C2paDigitalSourceType.TRAINED_ALGORITHMIC_MEDIA)
            for index, (parent, parent_type) in enumerate(parents):
                builder.add_ingredient(_ingredient(index), parent_type, io.BytesIO(parent))
            builder.sign(signer, content_type, io.BytesIO(data), signed)
        return signed.getvalue()


def as_ingredient(data: bytes) -> tuple[bytes, str]:
    """An input image as C2PA takes an ingredient: as it came if PNG, JPEG or WebP, else re-encoded as
    PNG (its pixels; the manifest then records that copy)."""
    with Image.open(io.BytesIO(data)) as image:
        kind = Image.MIME.get(image.format or "")
        if kind in SIGNABLE_TYPES:
            return data, kind
        copy = io.BytesIO()
        image.convert("RGBA").save(copy, "PNG")
        return copy.getvalue(), "image/png"


def manifest_definition(*, model: str, model_version: str, title: str, inputs: int = 0) -> dict[str, Any]:
    """The manifest we sign: a creation, or with `inputs` images an edit of the first (placing the rest)."""
    agent = {"name": model, "version": model_version}
    if inputs == 0:
        actions = [{"action": "c2pa.created", "digitalSourceType": TRAINED_ALGORITHMIC_MEDIA, "softwareAgent": agent}]
    else:
        actions = [{"action": "c2pa.opened", "parameters": {"ingredientIds": [_ingredient_label(0)]}}]
        if inputs > 1:
            placed = [_ingredient_label(index) for index in range(1, inputs)]
            actions.append({"action": "c2pa.placed", "parameters": {"ingredientIds": placed}})
        actions.append({"action": "c2pa.edited", "digitalSourceType": TRAINED_ALGORITHMIC_MEDIA,
                        "softwareAgent": agent})  # fmt: skip
    return {
        "claim_generator_info": [{"name": GENERATOR_NAME, "version": __version__}],
        "title": title,
        "assertions": [{"label": "c2pa.actions", "data": {"actions": actions}}],
    }


def _ingredient_label(index: int) -> str:
    return f"input{index + 1}"


def _ingredient(index: int) -> dict[str, str]:
    return {
        "title": f"input image {index + 1}",
        "relationship": "parentOf" if index == 0 else "componentOf",
        "label": _ingredient_label(index),
    }


def _library_call(doing: str, call: Callable[[], T]) -> T:
    """Run a c2pa call, turning its errors into ours (the one place signing translates them)."""
    try:
        return call()
    except c2pa.C2paError as error:
        raise ProvenanceFailed(f"could not {doing}: {error}") from None


# ---- reading -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class IngredientSummary:
    title: str | None
    relationship: str | None  # parentOf, componentOf, inputTo


@dataclass(frozen=True)
class ProvenanceSummary:
    """What `qwen-image verify` reports about one image."""

    manifest_present: bool
    validation_state: ValidationState | None = None
    failures: tuple[str, ...] = ()  # validation codes, e.g. signingCredential.untrusted
    claim_generator: str | None = None  # "qwen-image-server 0.1.0"
    digital_source_type: str | None = None
    title: str | None = None
    model: str | None = None
    model_version: str | None = None
    signer: str | None = None  # the signing certificate's common name
    ingredients: tuple[IngredientSummary, ...] = ()
    error: str | None = None  # a manifest the library could not decode (then the state is Invalid)


def read_provenance(image: bytes | Path, *, trust_anchors_pem: bytes | None = None) -> ProvenanceSummary:
    """Read and validate the manifest of an image (bytes, or a file). With `trust_anchors_pem`
    (certificates, PEM), a manifest signed under one of them is "Trusted" rather than "Valid"."""
    data = _image_bytes(image)
    settings = OFFLINE_SETTINGS
    if trust_anchors_pem is not None:
        settings = {**OFFLINE_SETTINGS, "trust": {"user_anchors": trust_anchors_pem.decode()}}
    try:
        with c2pa.Context.from_dict(settings) as context, c2pa.Reader(None, io.BytesIO(data), context=context) as read:
            store: dict[str, Any] = json.loads(read.json())
    except c2pa.C2paError.ManifestNotFound:
        return ProvenanceSummary(manifest_present=False)
    except c2pa.C2paError as error:
        return _unreadable(error, data)
    return summarize(store)


def _unreadable(error: Any, data: bytes) -> ProvenanceSummary:
    """What a library error when reading says. Measured: a flipped byte inside a manifest raises
    Decoding or Other ("could not create valid JUMBF"), and bytes that are no image raise Other too;
    so a file that starts like an image has a damaged manifest, and anything else is not an image.
    (The signature, not Pillow, decides: Pillow refuses a PNG whose manifest chunk fails its CRC.)"""
    if isinstance(error, c2pa.C2paError.RemoteManifest):
        return ProvenanceSummary(manifest_present=True, error=f"the manifest is remote and was not fetched: {error}")
    if isinstance(error, c2pa.C2paError.NotSupported) or not _is_image(data):
        raise InvalidImage(f"not an image whose C2PA manifest can be read: {error}", param="image")
    return ProvenanceSummary(manifest_present=True, validation_state="Invalid", error=str(error))


def _is_image(data: bytes) -> bool:
    head = data[:12]
    return head.startswith(_IMAGE_SIGNATURES) or (head[:4] == b"RIFF" and head[8:12] == b"WEBP") or head[4:8] == b"ftyp"


_IMAGE_SIGNATURES = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF8", b"II*\x00", b"MM\x00*", b"\xff\x0a")


def _image_bytes(image: bytes | Path) -> bytes:
    if isinstance(image, bytes):
        return image
    try:
        return image.read_bytes()
    except OSError as error:
        raise InvalidImage(f"cannot read {image}: {error}", param="image") from None


def summarize(store: dict[str, Any]) -> ProvenanceSummary:
    """The summary of a manifest store as the library's `Reader.json()` gives it."""
    manifest: dict[str, Any] = store.get("manifests", {}).get(store.get("active_manifest"), {})
    action = _ai_action(manifest)
    agent = action.get("softwareAgent")
    agent = agent if isinstance(agent, dict) else {"name": agent}
    generator = (manifest.get("claim_generator_info") or [{}])[0]
    results = store.get("validation_results", {}).get("activeManifest", {})
    failures = [status["code"] for status in results.get("failure", store.get("validation_status", []))]
    return ProvenanceSummary(
        manifest_present=True,
        validation_state=store.get("validation_state"),
        failures=tuple(dict.fromkeys(failures)),
        claim_generator=" ".join(str(part) for part in (generator.get("name"), generator.get("version")) if part),
        digital_source_type=action.get("digitalSourceType"),
        title=manifest.get("title"),
        model=agent.get("name"),
        model_version=agent.get("version"),
        signer=manifest.get("signature_info", {}).get("common_name"),
        ingredients=tuple(
            IngredientSummary(title=item.get("title"), relationship=item.get("relationship"))
            for item in manifest.get("ingredients", [])
        ),
    )


def _ai_action(manifest: dict[str, Any]) -> dict[str, Any]:
    """The action that carries the digital source type (created or edited), else {}."""
    for assertion in manifest.get("assertions", []):
        if assertion.get("label", "").startswith("c2pa.actions"):
            for action in assertion.get("data", {}).get("actions", []):
                if action.get("digitalSourceType"):
                    return dict(action)
    return {}
