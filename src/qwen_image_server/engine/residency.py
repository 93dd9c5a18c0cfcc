"""Which models' transformers stay on the GPU: a least-recently-used set, and the moves.

Every served model has its own ~41 GB transformer (bf16), while the text encoder and VAE are shared
by all; so only the transformers move. Before a model runs (or loads), `Residency.prepare` makes
room by evicting the least recently used resident transformers, then brings the needed one back if
it had left. The policy (`choose_evictions`) is a pure function:

- `resident_models=N` (N > 0): at most N transformers on the device.
- `resident_models=0` (automatic): keep every transformer while the incoming one still fits in the
  device's free memory plus `ACTIVATION_HEADROOM_BYTES`; evict the least recently used until it
  does. On a device whose free memory we cannot read (the CPU, MPS) nothing moves, so the default
  never adds work where it cannot help.

An evicted transformer goes to host memory (`evict_to=host`) or is dropped (`evict_to=drop`): its
tensors are moved to the meta device, which frees them even if something (a compiled wrapper) still
holds the module, and on return fresh weights are loaded from the checkpoint and assigned into the
*same* module object, so the pipelines that hold it, its attention processors and any compilation
stay as they were. Sizes are the transformer's actual tensor bytes (inner tensors of quantized
tensor subclasses counted, so fp8 is seen at half size); a never-loaded checkpoint is estimated
from its files.

Residency applies with `offload=none` only: the offload modes keep weights off the GPU already.
Each swap is logged (what left, what came, bytes, seconds) and counted in `ResidencyStats`.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol

import torch
from torch import nn

from qwen_image_server.engine.speedups import weights_replaced
from qwen_image_server.settings import EvictTo

if TYPE_CHECKING:
    from qwen_image_server.engine.loading import Checkpoint

log = logging.getLogger(__name__)

GB = 1e9
# Kept free besides the incoming transformer in automatic mode: the transformer's activations at
# 1024x1024 with CFG batched are under 1 GB (flash/SDPA attention keeps no n^2 matrix), the VAE's
# decode of a 1024x1024 picture peaks at a few GB without tiling, and the text encoder's at well
# under 1 GB. Larger sizes or batches may need vae_tiling or an explicit resident_models.
ACTIVATION_HEADROOM_BYTES = 6 * 2**30

Where = Literal["device", "host", "dropped"]


class TransformerSource(Protocol):
    """Where transformers come from (the component pool): estimates before loading, and reloads."""

    def transformer_bytes(self, checkpoint: Checkpoint) -> int: ...

    def fresh_transformer(self, checkpoint: Checkpoint) -> nn.Module: ...


@dataclass(frozen=True)
class ResidencyStats:
    """Counters a benchmark can read: swaps so far, the last and total seconds spent swapping, and the
    checkpoints whose transformers are on the device now (least recently used first)."""

    swaps: int
    last_swap_seconds: float
    total_swap_seconds: float
    resident: tuple[str, ...]


def choose_evictions(
    resident: Sequence[tuple[str, int]], incoming_bytes: int, *, limit: int, free_bytes: int | None, headroom: int
) -> list[str]:
    """Which resident transformers (`(ref, bytes)`, least recently used first) leave so that one of
    `incoming_bytes` can come: under `limit` by count, or (limit 0) by `free_bytes` when known."""
    if limit > 0:
        excess = len(resident) + 1 - limit
        return [ref for ref, _ in resident[: max(excess, 0)]]
    if free_bytes is None:
        return []
    victims: list[str] = []
    available = free_bytes
    for ref, size in resident:
        if available >= incoming_bytes + headroom:
            break
        victims.append(ref)
        available += size
    return victims


def tensor_bytes(tensor: torch.Tensor) -> int:
    """Bytes a tensor holds; a tensor subclass (torchao's fp8 weights) by its inner tensors, since
    its own element size is that of the dtype it stands for."""
    flatten = getattr(tensor, "__tensor_flatten__", None)
    if flatten is not None and type(tensor) not in (torch.Tensor, nn.Parameter):
        names, _context = flatten()
        return sum(tensor_bytes(getattr(tensor, name)) for name in names)
    return tensor.numel() * tensor.element_size()


def module_bytes(module: nn.Module) -> int:
    return sum(tensor_bytes(t) for t in module.parameters()) + sum(tensor_bytes(t) for t in module.buffers())


def device_free_bytes(device: torch.device) -> int | None:
    """Free memory on a CUDA device, counting blocks PyTorch has cached but not used; None elsewhere."""
    if device.type != "cuda":
        return None
    free, _total = torch.cuda.mem_get_info(device)
    return int(free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device))


@dataclass
class _Entry:
    checkpoint: Checkpoint
    module: nn.Module
    where: Where
    bytes: int


class Residency:
    """The LRU set of transformers on the device. Not thread-safe: the engine calls it under its lock."""

    def __init__(
        self, device: torch.device, source: TransformerSource, *, limit: int, evict_to: EvictTo, active: bool
    ) -> None:
        self._device = device
        self._source = source
        self._limit = limit
        self._evict_to: EvictTo = evict_to
        self._active = active  # off under the offload modes
        self._entries: OrderedDict[str, _Entry] = OrderedDict()  # least recently used first
        self._swaps = 0
        self._last_swap_seconds = 0.0
        self._total_swap_seconds = 0.0

    def stats(self) -> ResidencyStats:
        resident = tuple(ref for ref, entry in self._entries.items() if entry.where == "device")
        return ResidencyStats(self._swaps, self._last_swap_seconds, self._total_swap_seconds, resident)

    def prepare(self, checkpoint: Checkpoint) -> None:
        """Before `checkpoint`'s transformer runs or loads: evict what must leave, bring it back."""
        ref = checkpoint.ref
        entry = self._entries.get(ref)
        if entry is not None:
            self._entries.move_to_end(ref)
        if not self._active or (entry is not None and entry.where == "device"):
            return
        incoming = entry.bytes if entry is not None else self._source.transformer_bytes(checkpoint)
        resident = [(r, module_bytes(e.module)) for r, e in self._entries.items() if e.where == "device"]
        victims = choose_evictions(
            resident,
            incoming,
            limit=self._limit,
            free_bytes=device_free_bytes(self._device),
            headroom=ACTIVATION_HEADROOM_BYTES,
        )
        if not victims and entry is None:
            return  # a first load with room to spare is a load, not a swap
        start = time.perf_counter()
        left = [(victim, self._evict(victim)) for victim in victims]
        if entry is not None:
            self._restore(entry)
        _synchronize(self._device)
        self._count_swap(left, ref, incoming, time.perf_counter() - start)

    def loaded(self, checkpoint: Checkpoint, module: nn.Module) -> None:
        """`checkpoint`'s transformer is in use on the device (registered on its first load)."""
        ref = checkpoint.ref
        if ref not in self._entries:
            self._entries[ref] = _Entry(checkpoint, module, "device", module_bytes(module))
        self._entries.move_to_end(ref)

    def evict_idle(self, keep: str | None) -> list[str]:
        """Evict every resident transformer except `keep`'s (after an out-of-memory error)."""
        if not self._active:
            return []
        idle = [ref for ref, entry in self._entries.items() if entry.where == "device" and ref != keep]
        for ref in idle:
            self._evict(ref)
        return idle

    def _evict(self, ref: str) -> int:
        entry = self._entries[ref]
        entry.bytes = module_bytes(entry.module)
        if self._evict_to == "host":
            _move_to_host(entry.module, pin=self._device.type == "cuda")
            entry.where = "host"
        else:
            entry.module.to("meta")  # frees the storage even if another reference to the module remains
            entry.where = "dropped"
        clear_rope_caches()
        return entry.bytes

    def _restore(self, entry: _Entry) -> None:
        if entry.where == "host":
            entry.module.to(self._device, non_blocking=True)
        else:
            fresh = self._source.fresh_transformer(entry.checkpoint)
            entry.module.load_state_dict(fresh.state_dict(), assign=True)
            entry.module.to(self._device)  # a no-op when the reload went straight to the device
            weights_replaced(entry.module)  # bf16 again: FP8 is applied again when it is activated
        entry.where = "device"

    def _count_swap(self, left: list[tuple[str, int]], came: str, came_bytes: int, seconds: float) -> None:
        self._swaps += 1
        self._last_swap_seconds = seconds
        self._total_swap_seconds += seconds
        gone = ", ".join(f"{ref} ({size / GB:.1f} GB)" for ref, size in left) or "nothing"
        log.info(
            "model swap: %s left (evict_to=%s), %s came (%.1f GB) in %.2f s",
            gone,
            self._evict_to,
            came,
            came_bytes / GB,
            seconds,
        )


def _move_to_host(module: nn.Module, *, pin: bool) -> None:
    """Copy every tensor to host memory; pinned (page-locked) when coming from a GPU, so that the way
    back runs at full PCIe speed (about twice pageable memory's) as asynchronous copies."""
    if not pin:
        module.to("cpu")
        return
    arena = PinnedArena()
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.data = arena.copy(parameter.data)
        for owner in module.modules():
            for name, buffer in owner.named_buffers(recurse=False):
                setattr(owner, name, arena.copy(buffer))
    torch.cuda.synchronize()


class PinnedArena:
    """Pinned host copies of tensors, packed into 1 GiB pinned chunks.

    PyTorch's pinned-memory allocator rounds every allocation up to a power of two, which would pin
    64.6 GB for the 40.9 GB transformer (its 19 and 75 MB weights round to 32 and 128 MiB); packed
    into chunks it pins 42.9 GB. Freed chunks stay in PyTorch's pinned cache and are reused by the
    next eviction, so repeated swaps do not page-lock memory again."""

    CHUNK_BYTES = 2**30
    ALIGNMENT = 256

    def __init__(self, *, pin: bool = True) -> None:
        self._pin = pin  # off only to test the packing on a machine without CUDA
        self._chunk: torch.Tensor | None = None
        self._used = 0

    def copy(self, tensor: torch.Tensor) -> torch.Tensor:
        if type(tensor) is not torch.Tensor:  # a tensor subclass (quantized weights) moves as it knows how
            return tensor.to("cpu")
        host = self._take(tensor.numel() * tensor.element_size(), tensor)
        return host.copy_(tensor, non_blocking=True)

    def _take(self, size: int, like: torch.Tensor) -> torch.Tensor:
        if size > self.CHUNK_BYTES:
            return torch.empty_like(like, device="cpu", pin_memory=self._pin, memory_format=torch.contiguous_format)
        offset = -(-self._used // self.ALIGNMENT) * self.ALIGNMENT
        if self._chunk is None or offset + size > self.CHUNK_BYTES:
            self._chunk = torch.empty(self.CHUNK_BYTES, dtype=torch.uint8, pin_memory=self._pin)
            offset = 0
        self._used = offset + size
        return self._chunk[offset : offset + size].view(like.dtype).view(like.shape)


def clear_rope_caches() -> None:
    """Empty diffusers' per-device caches of rotary-embedding tensors (`lru_cache` on the Qwen-Image
    rotary modules' methods). They hold device tensors, up to 128 sizes' worth, and the module
    objects themselves; the caches are per class, so this clears them for every model (they refill
    at the next step)."""
    from diffusers.models.transformers import transformer_qwenimage

    for cls in vars(transformer_qwenimage).values():
        if isinstance(cls, type) and issubclass(cls, nn.Module):
            for attribute in vars(cls).values():
                for cache in _lru_caches(attribute):
                    cache.cache_clear()


def _lru_caches(function: object) -> list[Any]:
    """The functools caches behind `function`: itself, or one its wrapper closes over (diffusers'
    `lru_cache_unless_export` hides the cache in a closure)."""
    if hasattr(function, "cache_clear"):
        return [function]
    caches: list[Any] = []
    for cell in getattr(function, "__closure__", None) or ():
        try:
            contents = cell.cell_contents
        except ValueError:  # an empty cell
            continue
        if hasattr(contents, "cache_clear"):
            caches.append(contents)
    return caches


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
