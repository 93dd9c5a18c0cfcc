"""Acceleration levels: what `none`, `regular` and `high` run, applied around one engine call.

`plan_for` picks a level's plan; `accelerated` applies it to a transformer for one call and takes
it off again, so the next call (of any level) runs on the unhooked transformer and the `none`
image of a seed is the same before and after an accelerated call.

Both levels are diffusers' First Block Cache (`FirstBlockCacheConfig`, from ParaAttention): at each
step the first of the 60 blocks runs; when its output residual moved less than `threshold`
(relative mean absolute difference) since the last step that ran in full, the other 59 blocks are
skipped and their cached residual is added instead. It is dynamic (it skips where the picture
changes slowly, mostly the middle and late steps), needs no calibration per model, and diffusers
registers Qwen-Image's block for it. The thresholds come from the literature, not from the tiny
model (its random weights make the residuals move differently; docs/engine.md has both):

- `regular` = 0.08, ParaAttention's default for FLUX (diffusers' guide: about 2x on FLUX.1-dev
  "with very good quality"; cache-dit runs Qwen-Image at a similar 0.12);
- `high` = 0.2, the threshold of diffusers' own example (third-party FLUX.1-dev tables: about 3x,
  more drift from `none`), when the model has no Lightning LoRA.

`high` on a model with a Lightning LoRA configured (`lightning_loras`, the lightx2v
Qwen-Image-Lightning adapters distilled for 4 or 8 steps) runs that adapter instead: `lightning_steps`
steps, CFG off (the distilled model was trained without it: one transformer call per step), and the
scheduler settings its authors publish (exponential time shift with base and max shift log 3, no
terminal shift). At 8 steps without CFG against 50 with CFG that is 12.5x fewer transformer calls.
The request's own steps and CFG scale are replaced for the call (`call_request`); the adapter is
switched on for the call only (engine/adapters.py).

The hook keeps its state per cache context (`transformer.cache_context(name)`): our loop names one
context for a CFG call of both halves and "cond"/"uncond" for two passes, as the stock pipelines
do, and opens a fresh name when the rows of a batch change (a request canceled mid-run), because
the cached residuals have the old row count. One decision covers every row of a call, so a request
batched with others may skip other steps than it would alone.

Not with `compile`: the compiled blocks run `fullgraph=True`, and the hook's skip decision is a
graph break; such a server refuses `regular` and `high` with `InvalidParameter(param="acceleration")`.
"""

from __future__ import annotations

import contextlib
import itertools
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from qwen_image_server.domain import Acceleration, GenerationRequest
from qwen_image_server.engine.loras import LoraSpec, parse_lora_specs
from qwen_image_server.errors import InvalidParameter
from qwen_image_server.settings import Settings

REGULAR_THRESHOLD = 0.08
HIGH_THRESHOLD = 0.2
# The Lightning adapters' scheduler (FlowMatchEulerDiscreteScheduler), as their authors publish it:
# the shift no longer grows with the image size (base = max = log 3), exponential, no terminal shift.
LIGHTNING_SCHEDULER = {
    "base_shift": math.log(3),
    "max_shift": math.log(3),
    "time_shift_type": "exponential",
    "use_dynamic_shifting": True,
    "shift": 1.0,
    "shift_terminal": None,
}


@dataclass(frozen=True)
class Lightning:
    """A few-step distilled LoRA for one model, and the steps it was distilled for."""

    adapter: LoraSpec
    steps: int


@dataclass(frozen=True)
class AccelerationPlan:
    """What one level runs: a First Block Cache threshold, a Lightning adapter, or nothing (`none`)."""

    level: Acceleration
    first_block_cache_threshold: float | None = None
    lightning: Lightning | None = None

    @property
    def hooks(self) -> bool:
        return self.first_block_cache_threshold is not None

    def describe(self) -> str:
        if self.lightning is not None:
            return f"Lightning LoRA {self.lightning.adapter.source}, {self.lightning.steps} steps, no CFG"
        if not self.hooks:
            return "no acceleration"
        return f"first block cache, threshold {self.first_block_cache_threshold}"

    def call_request(self, request: GenerationRequest) -> GenerationRequest:
        """`request` as this plan runs it: with Lightning, its steps and no CFG."""
        if self.lightning is None:
            return request
        return request.model_copy(update={"num_inference_steps": self.lightning.steps, "true_cfg_scale": 1.0})


PLANS = {
    Acceleration.NONE: AccelerationPlan(Acceleration.NONE),
    Acceleration.REGULAR: AccelerationPlan(Acceleration.REGULAR, REGULAR_THRESHOLD),
    Acceleration.HIGH: AccelerationPlan(Acceleration.HIGH, HIGH_THRESHOLD),
}


def plan_for(request: GenerationRequest, settings: Settings) -> AccelerationPlan:
    """The plan of the request's level on this server, or `InvalidParameter` naming `acceleration`
    when the level cannot run here."""
    if request.acceleration is Acceleration.HIGH:
        for spec in parse_lora_specs(settings.lightning_loras):
            if spec.name == request.model.value:
                return AccelerationPlan(Acceleration.HIGH, lightning=Lightning(spec, settings.lightning_steps))
    plan = PLANS[request.acceleration]
    if plan.hooks and settings.compile:
        raise InvalidParameter(
            f"acceleration={request.acceleration.value} cannot run on this server: it runs with compile=true, "
            "whose compiled blocks cannot skip work step by step; use acceleration=none",
            param="acceleration",
        )
    return plan


@contextlib.contextmanager
def accelerated(transformer: Any, plan: AccelerationPlan) -> Iterator[None]:
    """`plan`'s hooks on `transformer` for the duration of one call, then off again (on errors and
    cancels too): nothing of one call's cache reaches the next."""
    if not plan.hooks:
        yield
        return
    from diffusers.hooks import FirstBlockCacheConfig

    if transformer.is_cache_enabled:  # left by a call that died in between: start clean
        transformer.disable_cache()
    transformer.enable_cache(FirstBlockCacheConfig(threshold=plan.first_block_cache_threshold or 0.0))
    try:
        yield
    finally:
        transformer.disable_cache()


@contextlib.contextmanager
def scheduled(pipeline: Any, plan: AccelerationPlan) -> Iterator[None]:
    """The pipeline with the Lightning scheduler for one call (its own again after)."""
    if plan.lightning is None:
        yield
        return
    from diffusers import FlowMatchEulerDiscreteScheduler

    own = pipeline.scheduler
    pipeline.scheduler = FlowMatchEulerDiscreteScheduler.from_config(own.config, **LIGHTNING_SCHEDULER)
    try:
        yield
    finally:
        pipeline.scheduler = own


class CacheContexts:
    """The cache context names of our loop's transformer calls. A new generation of names starts
    when the batch's rows change, so no state cached for the old rows is read with the new ones."""

    def __init__(self, transformer: Any) -> None:
        self.transformer = transformer
        self._generation = itertools.count()
        self._suffix = next(self._generation)

    def rows_changed(self) -> None:
        self._suffix = next(self._generation)

    def __call__(self, name: str) -> contextlib.AbstractContextManager[None]:
        """The context to run one transformer call in: `cfg` (both halves in one call), `cond` or
        `uncond`. The stock context manager costs nothing without hooks."""
        manager: contextlib.AbstractContextManager[None] = self.transformer.cache_context(f"{name}:{self._suffix}")
        return manager
