"""Adapters switched per call: what a request's `loras` ask for, and Lightning for `acceleration=high`.

The server's own adapters (`loras`, `ServerLoras`) are put into a transformer once, at load. The
adapters here are loaded into a transformer on first use as named peft adapters, left in it (up to
`MAX_LOADED_ADAPTERS` per transformer, least recently used out), and made active only for the calls
that ask for them: `AdapterSwitch.active` sets exactly the call's set (the server's unfused adapters
plus the request's, with their scales) before the call and exactly the server's own after it, on
errors and cancels too. So a call never sees an adapter of the call before it (test: A, then B,
then none give the images of each alone).

What switching costs: a first use reads the file and injects its low-rank layers (about what
loading it at start would cost); later switches only set each LoRA layer's active adapters and
scales (a walk over the modules, no weights move). An active adapter adds its low-rank product at
every step; an inactive one costs nothing but memory. bench/lora_switching.py measures both.

Requests with other adapter sets are never batched together (the set is part of `batch_key`).
"""

from __future__ import annotations

import contextlib
import weakref
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qwen_image_server.domain import GenerationRequest, LoraChoice
from qwen_image_server.engine.loras import LoraSpec, load_adapter, parse_lora_specs, resolve_lora_file
from qwen_image_server.errors import CheckpointUnavailable, LoraUnavailable

if TYPE_CHECKING:
    from qwen_image_server.engine.lora_downloads import LoraDownloads
    from qwen_image_server.settings import Settings

# Request adapters kept loaded per transformer (a Qwen-Image LoRA of rank 64 holds ~0.6-1.7 GB).
MAX_LOADED_ADAPTERS = 4


@dataclass(frozen=True)
class Adapter:
    """One adapter to make active: its peft name in the transformer, its file and its scale."""

    name: str
    file: Path
    scale: float
    label: str  # for errors and logs
    from_request: bool = True  # a request's adapter: its faults are the request's (`LoraUnavailable`)


class AdapterSwitch:
    """Loads and activates the per-call adapters of one engine."""

    def __init__(self, settings: Settings, downloads: LoraDownloads | None) -> None:
        fixed = parse_lora_specs(settings.loras)
        # One server adapter is fused (nothing to keep active); several stay active on every call.
        self._fixed = fixed if len(fixed) > 1 else ()
        self._offered = {spec.name: spec for spec in parse_lora_specs(settings.request_loras)}
        self._downloads = downloads
        self._configured_files: dict[LoraSpec, Path] = {}
        self._recent: weakref.WeakKeyDictionary[Any, OrderedDict[str, None]] = weakref.WeakKeyDictionary()

    def fetch(self, request: GenerationRequest) -> None:
        """Download the request's URL adapters not in the cache yet (before the engine is taken, so
        that a download never holds the GPU)."""
        for lora in request.loras:
            if lora.path is not None:
                self._download(lora)

    def adapters_for(self, request: GenerationRequest, lightning: LoraSpec | None = None) -> tuple[Adapter, ...]:
        """The adapters a call of `request` runs with, besides the server's own: the request's, then
        the Lightning adapter of `acceleration=high` where the model has one."""
        chosen = tuple(self._adapter(lora) for lora in request.loras)
        if lightning is None:
            return chosen
        label = f"lightning for {lightning.name}: {lightning.source}"
        file = self._resolved_file(lightning)
        return (*chosen, Adapter(f"lightning-{lightning.name}", file, lightning.scale, label, from_request=False))

    @contextlib.contextmanager
    def active(self, transformer: Any, adapters: tuple[Adapter, ...]) -> Iterator[None]:
        """`adapters` (with the server's unfused ones) active in `transformer` for one call."""
        if not adapters and not self._loaded_any(transformer):
            yield  # nothing was ever switched into this transformer: it is as the server loaded it
            return
        for adapter in adapters:
            self._ensure_loaded(transformer, adapter)
        self._set(transformer, adapters)
        try:
            yield
        finally:
            self._set(transformer, ())

    def _set(self, transformer: Any, adapters: tuple[Adapter, ...]) -> None:
        names = [spec.name for spec in self._fixed] + [adapter.name for adapter in adapters]
        scales = [spec.scale for spec in self._fixed] + [adapter.scale for adapter in adapters]
        if names:
            transformer.enable_lora()
            transformer.set_adapters(names, scales)
        else:
            transformer.disable_lora()

    def _ensure_loaded(self, transformer: Any, adapter: Adapter) -> None:
        recent = self._recent.setdefault(transformer, OrderedDict())
        if adapter.name in getattr(transformer, "peft_config", {}):
            recent[adapter.name] = None
            recent.move_to_end(adapter.name)
            return
        refusal = LoraUnavailable if adapter.from_request else CheckpointUnavailable
        load_adapter(transformer, adapter.file, adapter_name=adapter.name, label=adapter.label, refusal=refusal)
        recent[adapter.name] = None
        while len(recent) > MAX_LOADED_ADAPTERS:
            oldest, _ = recent.popitem(last=False)
            transformer.delete_adapters([oldest])

    def _loaded_any(self, transformer: Any) -> bool:
        return bool(self._recent.get(transformer))

    def _adapter(self, lora: LoraChoice) -> Adapter:
        if lora.name is not None:
            spec = self._offered[lora.name]  # checked at submit and in Engine.validate
            scale = spec.scale if lora.scale is None else lora.scale
            return Adapter(f"offered-{spec.name}", self._resolved_file(spec), scale, f"{spec.name}: {spec.source}")
        blob = self._download(lora)
        scale = 1.0 if lora.scale is None else lora.scale
        return Adapter(f"url-{blob.stem[:32]}", blob, scale, str(lora.path))

    def _download(self, lora: LoraChoice) -> Path:
        if self._downloads is None:
            raise LoraUnavailable("this server does not download adapters (lora_downloads=false)", param="loras")
        return self._downloads.file_for(str(lora.path))

    def _resolved_file(self, spec: LoraSpec) -> Path:
        """The file of a configured adapter (a hub repo is looked up once)."""
        if spec not in self._configured_files:
            self._configured_files[spec] = resolve_lora_file(spec)
        return self._configured_files[spec]
