"""Server-level LoRA adapters: named in settings, read from safetensors only, put into every transformer.

`loras = "name=path-or-repo-id[:scale],..."`. The source is a `.safetensors` file, a folder holding
one (or `pytorch_lora_weights.safetensors` among several), or a Hugging Face repo id (only its
safetensors files are downloaded). Pickle files (`.bin`, `.pt`, `.ckpt`) are refused without being
opened: unpickling runs code. We read the tensors ourselves with `safetensors` (a corrupt file fails
there) and hand diffusers a dict, so its loaders never touch a file.

One adapter is fused into the weights at its scale and its LoRA layers removed: the transformer is a
plain one again, with no per-step cost. Several stay as named peft adapters, all active with their
scales (`set_adapters`), each adding its low-rank product at every step.

`ServerLoras.apply` is called by the component pool on every transformer it loads: a model's first
load, and a transformer dropped by the residency policy (`evict_to=drop`) and loaded again. An
evicted-to-host transformer keeps its fused weights or its adapters.

This module imports no torch at import time (settings.py parses the specs through it).
"""

from __future__ import annotations

import math
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from qwen_image_server.domain import LORA_NAME_PATTERN, GenerationRequest
from qwen_image_server.engine.hub import names_a_repo
from qwen_image_server.errors import CheckpointUnavailable, EngineSetupError, InvalidParameter, QwenImageError

if TYPE_CHECKING:
    import torch

    from qwen_image_server.settings import Settings

_NAME = re.compile(LORA_NAME_PATTERN)
PREFERRED_FILE = "pytorch_lora_weights.safetensors"  # the name diffusers' trainers save under
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


@dataclass(frozen=True)
class LoraSpec:
    """One server-level adapter as configured: `name=source[:scale]`."""

    name: str
    source: str
    scale: float = 1.0


def parse_lora_spec(text: str) -> LoraSpec:
    """`name=source[:scale]`; raises ValueError saying what is wrong (settings show it as is)."""
    name, sep, rest = text.partition("=")
    name, rest = name.strip(), rest.strip()
    if not sep or not rest:
        raise ValueError(f"LoRA {text!r} is not `name=path-or-repo-id[:scale]`")
    if not _NAME.match(name):
        raise ValueError(f"LoRA name {name!r} must be 1-64 letters, digits, `_` or `-`")
    source, scale = rest, 1.0
    head, colon, tail = rest.rpartition(":")
    if colon and head:
        try:
            scale = float(tail)
        except ValueError:
            pass  # a colon that is part of the path
        else:
            source = head.strip()
    if not math.isfinite(scale):
        raise ValueError(f"LoRA {name}: scale {tail!r} is not a finite number")
    return LoraSpec(name, source, scale)


def parse_lora_specs(texts: tuple[str, ...]) -> tuple[LoraSpec, ...]:
    specs = tuple(parse_lora_spec(text) for text in texts)
    names = [spec.name for spec in specs]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ValueError(f"LoRA names must be unique; repeated: {', '.join(duplicates)}")
    return specs


def check_loras(settings: Settings) -> None:
    """Refuse, at start, adapters this configuration cannot run: unfused adapters (several server
    adapters, offered ones, Lightning) under FP8 (the quantizer would convert their LoRA layers too;
    one adapter is fused before quantizing), adapters switched per call under `compile` (the
    compiled blocks would be traced again at every switch), and switched adapters (`request_loras`,
    `lightning_loras`) whose local file is missing, not safetensors or unreadable."""
    switched = [name for name in ("request_loras", "lightning_loras") if getattr(settings, name)]
    unfused = ["loras"] * (len(settings.loras) > 1) + switched
    if settings.quantization != "none" and unfused:
        _refuse(unfused[0], f"quantization={settings.quantization}")
    if settings.compile and switched:
        _refuse(switched[0], "compile=true")
    for setting in switched:
        for spec in parse_lora_specs(getattr(settings, setting)):
            _check_local_file(setting, spec)


def _check_local_file(setting: str, spec: LoraSpec) -> None:
    """A switched adapter's local file, found and its header read now: a wrong path would otherwise
    fail every task that asks for it (503) instead of the start. A hub repo id is looked up on first
    use (a download at start could be long, and the hub's cache may be filled later)."""
    if not _is_local(spec.source):
        return
    try:
        path = resolve_lora_file(spec)
        _read_header(path, f"{spec.name}: {spec.source}")
    except CheckpointUnavailable as exc:
        raise EngineSetupError(f"{setting}: {exc.message}") from exc


def _is_local(source: str) -> bool:
    path = Path(source).expanduser()
    named_file = path.suffix in (".safetensors", *PICKLE_SUFFIXES)
    return path.exists() or named_file or not names_a_repo(source)


def _read_header(path: Path, label: str) -> None:
    """The safetensors header of `path` (its tensor names), without reading the tensors."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            handle.keys()
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointUnavailable(f"LoRA {label}: {path} is not a readable safetensors file: {exc}") from exc


def _refuse(setting: str, conflict: str) -> None:
    raise EngineSetupError(
        f"{setting} (adapters kept unfused) cannot be combined with {conflict}: only a single server adapter "
        "(`loras`, fused into the weights) can; remove one of the two settings"
    )


def _per_call_conflict(settings: Settings) -> str | None:
    """The setting that rules out adapters switched per call, if one is on."""
    if settings.quantization != "none":
        return f"quantization={settings.quantization}"
    return "compile=true" if settings.compile else None


def check_request_loras(request: GenerationRequest, settings: Settings) -> None:
    """Refuse (`InvalidParameter`, param `loras...`) adapters a request asks for that this server
    cannot give it: a name it does not offer, a URL when downloads are off, any adapter under FP8 or
    `compile` (per-request adapters stay unfused)."""
    if not request.loras:
        return
    conflict = _per_call_conflict(settings)
    if conflict:
        raise InvalidParameter(
            f"this server cannot apply adapters per request: it runs with {conflict}; send no `loras`", param="loras"
        )
    offered = {spec.name for spec in parse_lora_specs(settings.request_loras)}
    for index, lora in enumerate(request.loras):
        if lora.name is not None and lora.name not in offered:
            names = ", ".join(sorted(offered)) or "none"
            raise InvalidParameter(
                f"LoRA {lora.name!r} is not offered here; this server offers: {names}", param=f"loras.{index}.name"
            )
        if lora.path is not None and not settings.lora_downloads:
            raise InvalidParameter(
                "this server does not download adapters (lora_downloads=false); name one it offers instead",
                param=f"loras.{index}.path",
            )


class ServerLoras:
    """The configured adapters; resolves each source once and puts them into transformers."""

    def __init__(self, specs: tuple[LoraSpec, ...]) -> None:
        self.specs = specs
        self._files: dict[str, Path] = {}

    def apply(self, transformer: torch.nn.Module) -> None:
        """Fuse the one adapter, or load several as active named adapters (nothing if none)."""
        if not self.specs:
            return
        for spec in self.specs:
            self._load_into(transformer, spec)
        peft_model = transformer  # QwenImageTransformer2DModel is a diffusers PeftAdapterMixin
        if len(self.specs) == 1:
            peft_model.fuse_lora(lora_scale=self.specs[0].scale)  # type: ignore[operator]
            peft_model.unload_lora()  # type: ignore[operator]  # keeps the fused weights, drops the LoRA layers
        else:
            peft_model.set_adapters(  # type: ignore[operator]
                [spec.name for spec in self.specs], [spec.scale for spec in self.specs]
            )

    def _load_into(self, transformer: torch.nn.Module, spec: LoraSpec) -> None:
        load_adapter(transformer, self._file(spec), adapter_name=spec.name, label=f"{spec.name}: {spec.source}")

    def _file(self, spec: LoraSpec) -> Path:
        if spec.name not in self._files:
            self._files[spec.name] = resolve_lora_file(spec)
        return self._files[spec.name]


def load_adapter(
    transformer: torch.nn.Module,
    file: Path,
    *,
    adapter_name: str,
    label: str,
    refusal: type[QwenImageError] = CheckpointUnavailable,
) -> None:
    """Read the safetensors `file` and load it into `transformer` as the peft adapter `adapter_name`
    (not fused; the caller activates it). `label` names the adapter in errors, which are `refusal`s:
    the server's configuration is wrong (the default), or a request's adapter (`LoraUnavailable`)."""
    from diffusers import QwenImagePipeline

    tensors = read_safetensors(file, label, refusal)
    try:
        # The pipeline class's reader converts other trainers' key layouts to diffusers' one.
        state_dict = QwenImagePipeline.lora_state_dict(tensors)
        if not state_dict or not all("lora" in key for key in state_dict):
            raise ValueError("its tensors are not LoRA weights (no `lora` in their names)")
        with warnings.catch_warnings():
            # peft warns on every adapter after the first that there will be several: we mean it.
            warnings.filterwarnings("ignore", message="Already found a `peft_config`", category=UserWarning)
            transformer.load_lora_adapter(state_dict, adapter_name=adapter_name, prefix="transformer")  # type: ignore[operator]
    except (ValueError, KeyError, RuntimeError, TypeError) as exc:
        raise refusal(f"LoRA {label} does not fit this model: {exc}") from exc


def resolve_lora_file(spec: LoraSpec) -> Path:
    """The safetensors file `spec.source` names: a file, a folder, or a hub repo id."""
    path = Path(spec.source).expanduser()
    if path.is_file():
        return _checked_suffix(path, spec)
    if path.is_dir():
        return _file_in_folder(path, spec)
    if not names_a_repo(spec.source):
        raise CheckpointUnavailable(f"LoRA {spec.name}: no file or folder at {path}, and it is not a repo id")
    return _file_in_folder(_hub_snapshot(spec), spec)


def _checked_suffix(path: Path, spec: LoraSpec) -> Path:
    if path.suffix != ".safetensors":
        why = " (pickle files can run code when loaded)" if path.suffix in PICKLE_SUFFIXES else ""
        raise CheckpointUnavailable(f"LoRA {spec.name}: {path} is not a .safetensors file{why}; convert it first")
    return path


def _file_in_folder(folder: Path, spec: LoraSpec) -> Path:
    files = sorted(folder.glob("*.safetensors"))
    if len(files) == 1:
        return files[0]
    if (folder / PREFERRED_FILE).is_file():
        return folder / PREFERRED_FILE
    if not files:
        raise CheckpointUnavailable(
            f"LoRA {spec.name}: {folder} holds no .safetensors file (pickle .bin/.pt adapters are refused)"
        )
    names = ", ".join(file.name for file in files)
    raise CheckpointUnavailable(f"LoRA {spec.name}: {folder} holds several .safetensors files ({names}); name one")


def _hub_snapshot(spec: LoraSpec) -> Path:
    from huggingface_hub import snapshot_download

    try:
        # Only safetensors files are downloaded: a repo's pickle files never reach the disk.
        return Path(snapshot_download(spec.source, allow_patterns=["*.safetensors"]))
    except Exception as exc:  # the hub client raises many unrelated types for "not reachable"
        raise CheckpointUnavailable(
            f"LoRA {spec.name}: could not get {spec.source} from the Hugging Face hub or its local cache "
            f"({type(exc).__name__}); download it first, or give a local file"
        ) from exc


def read_safetensors(
    path: Path, label: str, refusal: type[QwenImageError] = CheckpointUnavailable
) -> dict[str, torch.Tensor]:
    """The tensors of `path`, read by `safetensors` (no code runs); a damaged file is refused."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise refusal(f"LoRA {label}: {path} is not a readable safetensors file: {exc}") from exc
