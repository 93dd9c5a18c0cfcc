"""Model residency: the LRU policy (pure), sizes, and an engine that swaps two models' transformers
through the real pipelines with the tiny model (on the CPU the moves are real for `drop` and
in-place for `host`; the policy and the images are what is checked)."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from qwen_image_server.domain import GenerationRequest
from qwen_image_server.engine import Engine
from qwen_image_server.engine.residency import (
    PinnedArena,
    choose_evictions,
    clear_rope_caches,
    module_bytes,
    tensor_bytes,
)
from tests.conftest import picture_bytes
from tests.engine.conftest import EDIT, TEXT, two_model_settings

# -- the policy -------------------------------------------------------------------------------------


def test_a_count_limit_evicts_the_least_recently_used() -> None:
    resident = [("old", 10), ("recent", 10)]
    assert choose_evictions(resident, 10, limit=2, free_bytes=None, headroom=0) == ["old"]
    assert choose_evictions(resident, 10, limit=1, free_bytes=None, headroom=0) == ["old", "recent"]
    assert choose_evictions(resident, 10, limit=3, free_bytes=0, headroom=0) == []


def test_automatic_evicts_until_the_incoming_one_fits_with_headroom() -> None:
    resident = [("old", 4), ("recent", 20)]
    assert choose_evictions(resident, 10, limit=0, free_bytes=12, headroom=2) == []
    assert choose_evictions(resident, 10, limit=0, free_bytes=8, headroom=2) == ["old"]
    assert choose_evictions(resident, 10, limit=0, free_bytes=5, headroom=2) == ["old", "recent"]


def test_automatic_moves_nothing_where_free_memory_is_unknown() -> None:
    assert choose_evictions([("a", 10**12)], 10**12, limit=0, free_bytes=None, headroom=0) == []


def test_sizes_count_the_inner_tensors_of_quantized_weights() -> None:
    class Float8Like:  # what torchao's fp8 weights expose: the data and scale inside
        qdata = torch.zeros(100, dtype=torch.float8_e4m3fn)
        scale = torch.ones(1)

        def __tensor_flatten__(self) -> tuple[list[str], None]:
            return ["qdata", "scale"], None

    fake: Any = Float8Like()
    assert tensor_bytes(fake) == 100 + 4
    assert module_bytes(torch.nn.Linear(10, 10, dtype=torch.bfloat16)) == (100 + 10) * 2


def test_host_copies_are_packed_into_shared_aligned_chunks() -> None:
    arena = PinnedArena(pin=False)
    arena.CHUNK_BYTES = 4096  # type: ignore[misc]
    sources = [torch.randn(10, 7), torch.arange(450, dtype=torch.int64), torch.ones((), dtype=torch.bfloat16)]
    copies = [arena.copy(tensor) for tensor in sources]
    for source, copy in zip(sources, copies, strict=True):
        assert torch.equal(source, copy) and copy.dtype == source.dtype and copy.shape == source.shape
        assert copy.storage_offset() * copy.element_size() % PinnedArena.ALIGNMENT == 0
    pointers = {copy.untyped_storage().data_ptr() for copy in copies}
    assert len(pointers) == 2  # 280 bytes; 3600 more at offset 512 do not fit in 4096; then 2 bytes do
    big = torch.randn(2000)  # larger than a chunk: its own allocation
    assert torch.equal(arena.copy(big), big)


def test_rope_caches_are_emptied(engine: Engine) -> None:
    from diffusers.models.transformers.transformer_qwenimage import QwenEmbedRope

    from qwen_image_server.engine.residency import _lru_caches

    engine.generate(
        GenerationRequest.create(
            model="qwen-image", prompt="a fox", width=256, height=256, num_inference_steps=2, seed=1
        )
    )
    [cache] = _lru_caches(QwenEmbedRope._compute_video_freqs)
    assert cache.cache_info().currsize > 0
    clear_rope_caches()
    assert cache.cache_info().currsize == 0


# -- an engine serving two checkpoints --------------------------------------------------------------


def alternate(engine: Engine) -> list[np.ndarray]:
    """Text, edit, text, edit: each return of a model follows the other's use."""
    requests = {
        TEXT: GenerationRequest.create(
            model=TEXT, prompt="a fox", width=256, height=256, num_inference_steps=2, seed=4
        ),
        EDIT: GenerationRequest.create(
            model=EDIT,
            prompt="make it blue",
            width=256,
            height=256,
            num_inference_steps=2,
            seed=4,
            images=(picture_bytes((96, 96)),),
        ),
    }
    return [pixels(engine.generate(requests[model])[0].data) for model in (TEXT, EDIT, TEXT, EDIT)]


def pixels(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


@pytest.fixture(scope="module")
def unswapped(other_checkpoint: Path) -> list[np.ndarray]:
    """The images with every transformer resident (automatic: on the CPU nothing moves)."""
    engine = Engine(two_model_settings(other_checkpoint))
    images = alternate(engine)
    assert engine.residency_stats().swaps == 0
    assert len(engine.residency_stats().resident) == 2
    return images


@pytest.mark.parametrize("evict_to", ["drop", "host"])
def test_one_resident_model_swaps_and_makes_the_same_images(
    other_checkpoint: Path, unswapped: list[np.ndarray], evict_to: str
) -> None:
    engine = Engine(two_model_settings(other_checkpoint, resident_models=1, evict_to=evict_to))
    text_transformer = engine.pipeline(TEXT).transformer

    images = alternate(engine)

    assert not np.array_equal(unswapped[0], unswapped[1])  # the two models differ
    for swapped, reference in zip(images, unswapped, strict=True):
        assert np.array_equal(swapped, reference)
    stats = engine.residency_stats()
    assert stats.swaps == 3  # the edit model's first load evicts; each return after that swaps
    assert stats.resident == (str(other_checkpoint),)
    assert stats.last_swap_seconds > 0
    assert next(text_transformer.parameters()).device.type == ("meta" if evict_to == "drop" else "cpu")
    assert engine.pipeline(TEXT).transformer is text_transformer  # came back into the same module


def test_a_dropped_transformer_is_reloaded_from_its_checkpoint(other_checkpoint: Path) -> None:
    engine = Engine(two_model_settings(other_checkpoint, resident_models=1, evict_to="drop"))
    edit_transformer = engine.pipeline(EDIT).transformer
    weights = {name: tensor.clone() for name, tensor in edit_transformer.state_dict().items()}
    engine.pipeline(TEXT)
    assert next(edit_transformer.parameters()).is_meta
    engine.pipeline(EDIT)
    assert all(torch.equal(weights[name], tensor) for name, tensor in edit_transformer.state_dict().items())
