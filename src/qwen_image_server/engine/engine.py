"""The engine: one blocking call from a `GenerationRequest` to encoded images.

This module imports no torch at import time, so that the CLI and the server start fast; the heavy
modules (loading, devices, tiny) are imported on first use. One generation runs at a time per
engine (a GPU is not shared between two pipelines), guarded by a lock.

Text-to-image runs our own denoising loop (`denoise.py`): the images of a request, and the requests
that share a `batch_key` (`render_batch`), in one batch, CFG as one transformer call. Edits and
inpainting run the stock diffusers pipelines (`run.py`), all images of a request in one call. Each
image starts from its own seed's noise, so image i of a request is reproduced by a request for one
image with seed i. Progress is reported after every denoising step; a cancel stops its request at
the next step, so nothing of it is decoded after a cancel.

Memory: with `offload=none` the transformers of the served models are kept on the device by a
least-recently-used policy (`residency.py`: `resident_models`, `evict_to`); the shared text encoder
and VAE stay. `render_batch` frees memory after a CUDA out-of-memory error and fails only that request
(`memory.recover_from_oom`).
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

from qwen_image_server.domain import BatchEntry, ImageResult, ModelName, PipelineMode, StepProgress
from qwen_image_server.errors import PromptTooLong, QwenImageError
from qwen_image_server.settings import Settings

if TYPE_CHECKING:
    from diffusers import DiffusionPipeline
    from PIL import Image

    from qwen_image_server.domain import GenerationRequest
    from qwen_image_server.engine.adapters import AdapterSwitch
    from qwen_image_server.engine.loading import Checkpoint, ComponentPool
    from qwen_image_server.engine.model_options import ModelOptions
    from qwen_image_server.engine.residency import Residency, ResidencyStats
    from qwen_image_server.provenance.finishing import Finishing, SafetyVerdict
    from qwen_image_server.report import RequestNotes

log = logging.getLogger(__name__)

StepCallback = Callable[[StepProgress], None]
PartialCallback = Callable[[ImageResult], None]
# One pipeline per model and mode (image-to-image and inpainting are other pipelines on the same weights).
PipelineKey = tuple[ModelName, PipelineMode]
P = ParamSpec("P")
R = TypeVar("R")


@dataclass(frozen=True)
class LoadedModel:
    name: ModelName
    checkpoint: str
    device: str
    dtype: str


class Engine:
    """Runs the Qwen-Image pipelines. Thread-safe; `generate` blocks (call it from a worker thread)."""

    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings or Settings()
        self._lock = threading.RLock()
        self._pool: ComponentPool | None = None
        self._residency: Residency | None = None
        self._pipelines: dict[PipelineKey, DiffusionPipeline] = {}
        self._checkpoints: dict[ModelName, Checkpoint] = {}
        self._active: PipelineKey | None = None
        self._placed_modules: set[int] = set()
        # Tokenizers used only to count tokens, copied at load: counting must not wait for the
        # generation lock, and the pipelines change their tokenizer's padding state while running.
        self._token_counters: dict[ModelName, Any] = {}
        self._counter_lock = threading.Lock()
        self._device: Any = None
        self._dtype: Any = None
        self._switch: AdapterSwitch | None = None
        self._finisher: Finishing | None = None
        self._options: ModelOptions | None = None

    # -- loading ---------------------------------------------------------------------------------

    def load(self, model: ModelName) -> LoadedModel:
        """Load `model` (and the components it shares) if it is not loaded yet, and set up what
        finishes its pictures (a C2PA pair that cannot sign stops the start here, not at the first image)."""
        with self._lock:
            self._pipeline(model)
            self._finishing()
            return self._describe(model)

    def pipeline(self, model: ModelName, mode: PipelineMode = PipelineMode.STANDARD) -> DiffusionPipeline:
        """The diffusers pipeline behind `model` in `mode`, loaded on first use (for inspection and tests)."""
        with self._lock:
            return self._pipeline(model, mode)

    def loaded(self) -> list[LoadedModel]:
        with self._lock:
            return [self._describe(model) for model in self._checkpoints]

    def _describe(self, model: ModelName) -> LoadedModel:
        return LoadedModel(
            model, self._checkpoints[model].ref, str(self._device), str(self._dtype).removeprefix("torch.")
        )

    def _pipeline(self, model: ModelName, mode: PipelineMode = PipelineMode.STANDARD) -> DiffusionPipeline:
        from qwen_image_server.engine.loading import resolve_checkpoint

        key = (model, mode)
        pool = self._component_pool()
        checkpoint = self._checkpoints.get(model) or resolve_checkpoint(self.settings.checkpoint_for(model))
        residency = self._residency_policy()
        residency.prepare(checkpoint)  # before loading: a new transformer may need the room
        if key not in self._pipelines:
            self._pipelines[key] = pool.pipeline(model, checkpoint, mode)
            if model not in self._checkpoints:
                self._checkpoints[model] = checkpoint
                self._token_counters[model] = copy.deepcopy(self._pipelines[key].tokenizer)
                log.info("loaded %s from %s", model, checkpoint.describe())
        pipeline = self._pipelines[key]
        residency.loaded(checkpoint, pipeline.transformer)
        self._activate(key, pipeline)
        return pipeline

    def _component_pool(self) -> ComponentPool:
        if self._pool is None:
            from qwen_image_server.engine import devices
            from qwen_image_server.engine.loading import ComponentPool, direct_load_device
            from qwen_image_server.engine.loras import ServerLoras, check_loras, parse_lora_specs
            from qwen_image_server.engine.speedups import check_speedups

            _quiet_libraries()
            self._device = devices.choose_device(self.settings.device)
            self._dtype = devices.choose_dtype(self.settings.dtype, self._device)
            devices.check_offload(self.settings.offload, self._device)
            lora_specs = parse_lora_specs(self.settings.loras)
            check_loras(self.settings)  # a configuration error, before any device check
            check_speedups(self.settings, self._device, self._dtype)
            self._pool = ComponentPool(
                self._dtype,
                share_components=self.settings.share_components,
                load_to=direct_load_device(self._device, self.settings.offload, self.settings.quantization),
                loras=ServerLoras(lora_specs),
            )
        return self._pool

    def _adapters(self) -> AdapterSwitch:
        if self._switch is None:
            from qwen_image_server.engine.adapters import AdapterSwitch
            from qwen_image_server.engine.lora_downloads import LoraDownloads

            downloads = None
            if self.settings.lora_downloads:
                downloads = LoraDownloads(
                    self.settings.data_dir / "lora-cache",
                    max_bytes=self.settings.lora_download_max_bytes,
                    cache_bytes=self.settings.lora_cache_bytes,
                    allowed_networks=self.settings.allowed_fetch_networks,
                )
            self._switch = AdapterSwitch(self.settings, downloads)
        return self._switch

    def _finishing(self) -> Finishing:
        """What is done to every picture after the pipeline (made once: the C2PA signer starts here)."""
        if self._finisher is None:
            from qwen_image_server.provenance.finishing import Finishing

            self._finisher = Finishing(self.settings, self._model_version)
        return self._finisher

    def _model_version(self, model: str) -> str:
        checkpoint = self._checkpoints.get(ModelName(model))
        return checkpoint.ref if checkpoint is not None else self.settings.checkpoint_for(ModelName(model))

    def _model_options(self) -> ModelOptions:
        if self._options is None:
            from qwen_image_server.engine.model_options import ModelOptions

            self._component_pool()  # the device and dtype
            self._options = ModelOptions(self.settings, self._device, self._dtype)
        return self._options

    def _residency_policy(self) -> Residency:
        if self._residency is None:
            from qwen_image_server.engine.residency import Residency

            self._residency = Residency(
                self._device,
                self._component_pool(),
                limit=self.settings.resident_models,
                evict_to=self.settings.evict_to,
                active=self.settings.offload == "none",
            )
        return self._residency

    def residency_stats(self) -> ResidencyStats:
        """Model swaps so far and their seconds, and which transformers are on the device (for
        benchmarks and logs)."""
        from qwen_image_server.engine.residency import ResidencyStats

        with self._lock:
            if self._residency is None:
                return ResidencyStats(0, 0.0, 0.0, ())
            return self._residency.stats()

    def _free_after_oom(self) -> None:
        """After an out-of-memory error: evict every transformer but the active model's."""
        if self._residency is None:
            return
        keep = self._checkpoints[self._active[0]].ref if self._active and self._active[0] in self._checkpoints else None
        evicted = self._residency.evict_idle(keep)
        if evicted:
            log.warning("out of GPU memory: evicted the idle models' transformers %s", ", ".join(evicted))

    def _activate(self, key: PipelineKey, pipeline: DiffusionPipeline) -> None:
        if self._active == key:
            return
        from qwen_image_server.engine.devices import place_pipeline
        from qwen_image_server.engine.speedups import apply_speedups, quantize_weights

        quantize_weights(pipeline.transformer, self.settings, self._device)  # before: never whole in bf16 there
        place_pipeline(pipeline, self._device, self.settings.offload, placed_modules=self._placed_modules)
        apply_speedups(pipeline.transformer, self.settings, self._device)  # once per transformer
        if self.settings.vae_tiling:
            pipeline.vae.enable_tiling()
        self._active = key

    # -- validation ------------------------------------------------------------------------------

    def is_loaded(self, model: ModelName) -> bool:
        return model in self._token_counters

    def count_tokens(self, model: ModelName, text: str) -> int:
        """How many tokens of the model's tokenizer `text` takes (the unit of max_sequence_length)."""
        if not self.is_loaded(model):
            self.load(model)
        with self._counter_lock:
            return len(self._token_counters[model](text, add_special_tokens=False).input_ids)

    def validate(self, request: GenerationRequest) -> None:
        """Checks that need the model (its tokenizer) or this server's settings: prompts fit in
        max_sequence_length tokens, the acceleration level and the adapters can run here."""
        from qwen_image_server.engine.acceleration import plan_for
        from qwen_image_server.engine.loras import check_request_loras

        plan_for(request, self.settings)
        check_request_loras(request, self.settings)
        limit = request.max_sequence_length
        for param, text in (("prompt", request.prompt), ("negative_prompt", request.negative_prompt)):
            if text is None:
                continue
            count = self.count_tokens(request.model, text)
            if count > limit:
                raise PromptTooLong(
                    f"{param} is {count} tokens long; the limit is {limit} tokens (max_sequence_length); shorten it",
                    param=param,
                )

    # -- generation ------------------------------------------------------------------------------

    def generate(
        self,
        request: GenerationRequest,
        *,
        on_step: StepCallback | None = None,
        on_partial: PartialCallback | None = None,
        cancel: threading.Event | None = None,
    ) -> list[ImageResult]:
        """Run `request` to completion and encode its images; raise `GenerationCanceled` if `cancel`
        is set meanwhile. `on_partial` receives the previews of `request.partial_images` as they are
        decoded."""
        rendered = self.render(request, on_step=on_step, on_partial=on_partial, cancel=cancel)
        return [picture.encode() for picture in rendered]

    def render(
        self,
        request: GenerationRequest,
        *,
        on_step: StepCallback | None = None,
        on_partial: PartialCallback | None = None,
        cancel: threading.Event | None = None,
    ) -> list[RenderedPicture]:
        """As `generate`, but the images come back not yet encoded: the engine is free again as soon
        as the last pipeline call returns, and the caller encodes them on another thread while the
        next request runs (the worker does; see docs/performance.md, duty cycle)."""
        [outcome] = self.render_batch([BatchEntry(request, on_step, on_partial, cancel)])
        if isinstance(outcome, QwenImageError):
            raise outcome
        return outcome

    def render_batch(self, entries: Sequence[BatchEntry]) -> list[list[RenderedPicture] | QwenImageError]:
        """Run several requests, those that share a `batch_key` as one call; per entry, its pictures
        or its own error (`InvalidParameter` from validation, `GenerationCanceled` for one canceled
        while the others went on, `GenerationFailed` for every entry of a call that failed)."""
        outcomes: dict[int, list[RenderedPicture] | QwenImageError] = {}
        fetched: list[int] = []
        for position, entry in enumerate(entries):
            try:  # adapter downloads before the engine is taken: a download never holds the GPU
                self._adapters().fetch(entry.request)
                fetched.append(position)
            except QwenImageError as exc:
                outcomes[position] = exc
        with self._lock:
            runnable: list[int] = []
            for position in fetched:
                try:
                    self.validate(entries[position].request)
                    runnable.append(position)
                except QwenImageError as exc:
                    outcomes[position] = exc
            for group in _calls(entries, runnable):
                outcomes.update(zip(group, self._run_call([entries[i] for i in group]), strict=True))
        return [outcomes[position] for position in range(len(entries))]

    def _run_call(self, entries: list[BatchEntry]) -> list[list[RenderedPicture] | QwenImageError]:
        """One pipeline call: text-to-image rows in our loop, or one request through a stock pipeline."""
        from qwen_image_server.engine.acceleration import accelerated, plan_for, scheduled
        from qwen_image_server.engine.denoise import TextToImageBatch
        from qwen_image_server.engine.memory import recover_from_oom
        from qwen_image_server.engine.run import StockGeneration, failures_translated

        first = entries[0].request
        # One level and one adapter set per call: both are part of the batch key, and a request
        # without a key runs alone.
        plan = plan_for(first, self.settings)
        options, finish = self._model_options(), self._finishing().finish
        notes = [options.notes_before(entry.request) for entry in entries]
        pictures: list[list[Image.Image] | QwenImageError]
        try:
            # One call above the functions whose locals hold the activations, so that an out-of-
            # memory error can free them (memory.py) and fail this call only.
            with failures_translated(), recover_from_oom(self.settings, free=self._free_after_oom):
                pipeline = self._pipeline(first.model, first.pipeline_mode)
                extended = [options.extend(pipeline, entry, note) for entry, note in zip(entries, notes, strict=True)]
                notes = [note for _, note in extended]
                calls = [
                    dataclasses.replace(
                        options.without_unchecked_previews(entry), request=plan.call_request(entry.request)
                    )
                    for entry, _ in extended
                ]
                adapters = self._adapters().adapters_for(first, plan.lightning.adapter if plan.lightning else None)
                with (
                    self._adapters().active(pipeline.transformer, adapters),
                    accelerated(pipeline.transformer, plan),
                    scheduled(pipeline, plan),
                ):
                    if first.batch_key is not None:
                        batch = TextToImageBatch(
                            pipeline, calls, cfg_batching=self.settings.cfg_batching, finish=finish
                        )
                        pictures = batch.run()
                    else:
                        pictures = [StockGeneration(pipeline, calls[0], finish).pictures()]
                verdicts = [
                    options.verdicts(pipeline, entry.request, made) if not isinstance(made, QwenImageError) else []
                    for entry, made in zip(entries, pictures, strict=True)
                ]
        except QwenImageError as exc:
            return [exc for _ in entries]
        return [
            self._rendered(entry, outcome, note, verdict)
            for entry, outcome, note, verdict in zip(entries, pictures, notes, verdicts, strict=True)
        ]

    def _rendered(
        self,
        entry: BatchEntry,
        outcome: list[Image.Image] | QwenImageError,
        notes: RequestNotes,
        verdicts: list[SafetyVerdict],
    ) -> list[RenderedPicture] | QwenImageError:
        if isinstance(outcome, QwenImageError):
            return outcome
        request, finishing = entry.request, self._finishing()
        return [
            RenderedPicture(request, picture, index, seed, finishing, verdict, notes)
            for index, (picture, seed, verdict) in enumerate(zip(outcome, request.image_seeds, verdicts, strict=True))
        ]

    def warm_up(self) -> None:
        """Generate each of `settings.warmup_sizes` once with each served model, through `render`, so
        that compilation and autotuning happen before the first request (engine/warmup.py); raises
        `EngineSetupError` if one fails."""
        from qwen_image_server.engine.warmup import warm_up

        warm_up(self.render, self.settings)


@dataclass(frozen=True)
class RenderedPicture:
    """One output image as the pipeline made it, not yet finished and encoded (`encode` releases the
    GIL while it compresses, so it overlaps the next pipeline call)."""

    request: GenerationRequest
    picture: Image.Image
    index: int
    seed: int
    finishing: Finishing
    verdict: SafetyVerdict
    notes: RequestNotes

    def encode(self) -> ImageResult:
        """The picture as the client gets it: safety action, watermarks, encoding, C2PA."""
        return self.finishing.finish(
            self.request, self.picture, self.index, self.seed,
            verdict=self.verdict, notes=self.notes,
        )  # fmt: skip


def _calls(entries: Sequence[BatchEntry], positions: list[int]) -> list[list[int]]:
    """The positions of `entries` grouped into pipeline calls: those of one `batch_key` together (in
    order), every request without a key alone."""
    calls: list[list[int]] = []
    by_key: dict[str, list[int]] = {}
    for position in positions:
        key = entries[position].request.batch_key
        if key is None:
            calls.append([position])
        elif key in by_key:
            by_key[key].append(position)
        else:
            by_key[key] = [position]
            calls.append(by_key[key])
    return calls


def _quiet_libraries() -> None:
    """The server and CLI show their own progress; silence the libraries' bars and chatter."""
    import diffusers
    import transformers

    diffusers.utils.logging.set_verbosity_error()
    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
