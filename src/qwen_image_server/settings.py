"""All settings in one object, read once from flags, `QWEN_IMAGE_*` environment variables, an optional
TOML config file and defaults.

Precedence: values passed in code (the CLI's flags) over environment variables over the config file
over defaults. Every setting is documented in docs/settings.md; a test keeps the two in step.
"""

from __future__ import annotations

import socket
import tomllib
from ipaddress import IPv4Network, IPv6Network
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from qwen_image_server.callbacks.signing import secret_key
from qwen_image_server.domain import ModelName
from qwen_image_server.errors import InvalidParameter
from qwen_image_server.provenance.visible_mark import Corner
from qwen_image_server.results.store import parse_results_url

Offload = Literal["none", "model", "sequential", "group"]
DType = Literal["auto", "float32", "bfloat16", "float16"]
FLOAT16_REFUSED = (
    "float16 is refused: Qwen-Image's activations overflow its range and the images come out black "
    "(NaN); use bfloat16 (the default on a GPU) or float32"
)
EvictTo = Literal["host", "drop"]
Quantization = Literal["none", "fp8"]
NsfwAction = Literal["report", "blur", "withhold"]
ResultLinks = Literal["signed", "presigned"]
PRESIGN_MAX_SECONDS = 7 * 86_400  # the longest a SigV4 presigned URL may live

DEFAULT_CHECKPOINTS: dict[ModelName, str] = {
    ModelName.QWEN_IMAGE: "Qwen/Qwen-Image",
    ModelName.QWEN_IMAGE_EDIT: "Qwen/Qwen-Image-Edit",
    ModelName.QWEN_IMAGE_EDIT_PLUS: "Qwen/Qwen-Image-Edit-2509",
}


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="QWEN_IMAGE_", extra="forbid", frozen=True)

    checkpoint_qwen_image: str = Field(
        default=DEFAULT_CHECKPOINTS[ModelName.QWEN_IMAGE],
        description="Checkpoint of qwen-image: a Hugging Face repo id, a local diffusers folder, or `tiny`.",
    )
    checkpoint_qwen_image_edit: str = Field(
        default=DEFAULT_CHECKPOINTS[ModelName.QWEN_IMAGE_EDIT],
        description="Checkpoint of qwen-image-edit (one input image).",
    )
    checkpoint_qwen_image_edit_plus: str = Field(
        default=DEFAULT_CHECKPOINTS[ModelName.QWEN_IMAGE_EDIT_PLUS],
        description="Checkpoint of qwen-image-edit-plus (1-3 input images).",
    )
    device: str = Field(
        default="auto",
        description="`auto` (CUDA if present, else Apple MPS, else CPU), or a torch device such as `cuda:1`.",
    )
    dtype: DType = Field(
        default="auto",
        description="Weights and compute precision; `auto` is bfloat16 on a GPU, float32 on a CPU.",
    )
    offload: Offload = Field(
        default="none",
        description=(
            "Memory saving for smaller GPUs: `model` moves whole components to the GPU as they run, "
            "`sequential` streams layer by layer (least memory, slowest), `group` offloads groups of "
            "layers with prefetching on a CUDA stream."
        ),
    )
    vae_tiling: bool = Field(default=False, description="Decode in tiles to cut the VAE's peak memory at large sizes.")
    share_components: bool = Field(
        default=True,
        description="Load the text encoder and VAE once and share them between the models (they are the same).",
    )
    cfg_batching: bool = Field(
        default=True,
        description="Run the conditional and unconditional passes of true CFG as one transformer call of twice "
        "the batch (the shorter prompt padded and masked) instead of two calls.",
    )
    max_batch_size: int = Field(
        default=1,
        ge=1,
        le=64,
        description="Queued tasks a worker claims together and runs as one pipeline call when they can share it "
        "(text-to-image, same size on the model's grid, steps, CFG on or off). The images of one request always "
        "run as one call.",
    )
    resident_models: int = Field(
        default=0,
        ge=0,
        description="How many models' transformers stay on the GPU at once; the least recently used one leaves "
        "when another is needed. 0: as many as fit in the GPU's memory.",
    )
    evict_to: EvictTo = Field(
        default="host",
        description="Where a transformer that leaves the GPU goes: `host` (pinned host memory; back in seconds) or "
        "`drop` (freed; loaded again from disk when next needed).",
    )
    compile: bool = Field(
        default=False,
        description="`torch.compile` the transformer's repeated blocks (compiled once, with dynamic shapes, at the "
        "first generation; see warmup_sizes).",
    )
    attention_backend: str = Field(
        default="native",
        description="Attention kernel (diffusers' attention backends): `native` (PyTorch SDPA), `_native_cudnn`, "
        "`flash`, `_flash_3`, `sage`, ...; a backend whose package is missing stops the start with a message.",
    )
    quantization: Quantization = Field(
        default="none",
        description="`fp8`: FP8 dynamic quantization of the transformer's linear layers (torchao; GPUs with FP8, "
        "compute capability 8.9+), halving its memory.",
    )
    fp8_skip: Annotated[tuple[str, ...], NoDecode] = Field(
        default=("img_mlp",),
        description="Names (substrings of module paths) of linear layers kept in bf16 under `quantization=fp8`.",
    )
    loras: Annotated[tuple[str, ...], NoDecode] = Field(
        default=(),
        description="LoRA adapters put into every model's transformer at load, comma-separated "
        "`name=path-or-repo-id[:scale]` (a .safetensors file, a folder holding one, or a Hugging Face repo id; "
        "scale 1 by default). One adapter is fused into the weights; several stay as active adapters.",
    )
    request_loras: Annotated[tuple[str, ...], NoDecode] = Field(
        default=(),
        description='LoRA adapters that requests may ask for by name (`loras: [{"name": ...}]`), in the format of '
        "`loras`; the scale is the default when a request gives none. Loaded on first use, off for other requests.",
    )
    lora_downloads: bool = Field(
        default=True,
        description='Requests may give adapters as URLs of .safetensors files (`loras: [{"path": URL}]`): the '
        "worker downloads them through the safe fetcher (address checks, `allowed_fetch_networks`) into a cache.",
    )
    lora_download_max_bytes: int = Field(
        default=2 * 2**30, ge=1, description="The largest adapter file a request's URL may download (bytes)."
    )
    lora_cache_bytes: int = Field(
        default=20 * 2**30,
        ge=0,
        description="Disk room for downloaded adapters (DATA_DIR/lora-cache, by content hash); the least recently "
        "used files leave when it is exceeded.",
    )
    lightning_loras: Annotated[tuple[str, ...], NoDecode] = Field(
        default=(),
        description="Distilled few-step LoRAs (Qwen-Image-Lightning) per model, `model=path-or-repo-id[:scale]`: "
        "`acceleration=high` on that model runs `lightning_steps` steps with the adapter, CFG off, and its scheduler "
        "settings. Without one, `high` is the strongest cache setting.",
    )
    lightning_steps: int = Field(
        default=8, ge=2, le=16, description="The steps the Lightning LoRAs were distilled for (4 or 8)."
    )
    # -- what is done to every picture (docs/provenance.md) ---------------------------------------------
    watermark_text: str = Field(
        default="AI-generated · Qwen-Image",
        min_length=1,
        max_length=80,
        description="The visible watermark's text, drawn where a request asks for it (DashScope's `watermark`).",
    )
    watermark_position: Corner = Field(default="bottom-right", description="The corner of the visible watermark.")
    watermark_force: bool = Field(
        default=False, description="Draw the visible watermark on every image, whatever the request says."
    )
    invisible_watermark: bool = Field(
        default=True,
        description="An invisible mark in every image's luminance (8 bytes: this server's id and the task's hash), "
        "readable by `qwen-image verify` after JPEG and WebP re-encoding. Images under 256 pixels a side are "
        "marked by C2PA only.",
    )
    c2pa: bool = Field(
        default=True,
        description="A signed C2PA manifest (Content Credentials) in every image: made by AI, by which model; an "
        "edit's inputs as ingredients. Signed with `c2pa_cert` and `c2pa_key`, or a self-signed pair made once "
        "in DATA_DIR/c2pa.",
    )
    c2pa_cert: Path | None = Field(default=None, description="PEM certificate chain (leaf first) for C2PA signing.")
    c2pa_key: Path | None = Field(default=None, description="PEM private key of `c2pa_cert`.")
    server_id: str = Field(
        default_factory=socket.gethostname,
        min_length=1,
        description="Names this server in the invisible watermark (its hash); the host name by default.",
    )
    prompt_extension: bool = Field(
        default=True,
        description="Requests may ask for their prompt to be rewritten by the loaded Qwen2.5-VL (DashScope's "
        "`prompt_extend`); false: such requests are told it was not applied.",
    )
    prompt_extension_tokens: int = Field(
        default=200, ge=8, le=1024, description="The most tokens a prompt extension may generate."
    )
    safety_checker: str = Field(
        default="none",
        description="`none`; `qwen-vl` (the loaded Qwen2.5-VL answers a fixed question about each image: no extra "
        "memory); or an image classifier, a local folder or Hugging Face repo id (e.g. "
        "Falconsai/nsfw_image_detection). Requests that ask for a check on a server without one are told so.",
    )
    safety_check_force: bool = Field(
        default=False, description="Check every image with `safety_checker`, whatever the request says."
    )
    safety_threshold: float = Field(default=0.5, gt=0, lt=1, description="The score from which an image is flagged.")
    nsfw_action: NsfwAction = Field(
        default="withhold",
        description="What a flagged image gets: `report` (delivered, flagged), `blur` (delivered blurred) or "
        "`withhold` (not delivered; the task reports why per image).",
    )
    safety_fail_closed: bool = Field(
        default=True,
        description="When the checker fails on an image that was to be checked: withhold it (true) or deliver it "
        "unchecked (false); either way the report says so.",
    )
    warmup_sizes: Annotated[tuple[str, ...], NoDecode] = Field(
        default=(),
        description="Sizes (`1024x1024,1328x1328`) the worker generates once at start, before it reports ready, so "
        "the first request of each size does not pay compilation or autotuning.",
    )

    data_dir: Path = Field(
        default=Path("data"),
        description="Where the task database (SQLite), the result images and the URL-signing secret live.",
    )
    database_url: str | None = Field(
        default=None,
        description="SQLAlchemy URL of the task database; default: the SQLite file `tasks.db` in the data dir.",
    )
    sqlite_busy_timeout_seconds: float = Field(
        default=30.0,
        gt=0,
        le=3600,
        description="SQLite only: how long a statement waits for another process's write lock before it fails "
        "(then retried as a transient error: the API answers 503 with Retry-After, a worker backs off).",
    )
    host: str = Field(default="127.0.0.1", description="Address `serve` listens on.")
    port: int = Field(default=8000, ge=1, le=65535, description="Port `serve` listens on.")
    models: Annotated[tuple[ModelName, ...], NoDecode] = Field(
        default=(ModelName.QWEN_IMAGE,),
        description="Models this server or worker serves, comma-separated (e.g. `qwen-image,qwen-image-edit-plus`).",
    )
    public_url: str | None = Field(
        default=None,
        description="Base URL for result links (e.g. `https://images.example.com`); default: the URL the client used.",
    )
    url_secret: str | None = Field(
        default=None,
        min_length=16,
        description="Secret that signs result URLs; default: a random one kept in `DATA_DIR/url-secret`.",
    )
    result_ttl_seconds: int = Field(default=86_400, ge=60, description="How long result URLs and images live.")
    results_url: str | None = Field(
        default=None,
        description="Where result images are kept: `s3://bucket/prefix` for an S3-compatible bucket (needs the "
        "`s3` extra; region and credentials come from the AWS chain: AWS_* variables, profiles, roles); "
        "default: the folder `DATA_DIR/results`.",
    )
    s3_endpoint_url: str | None = Field(
        default=None,
        description="Endpoint of an S3-compatible service other than AWS (MinIO, Cloudflare R2...), e.g. "
        "`http://minio:9000`; path-style addressing is used then.",
    )
    results_links: ResultLinks = Field(
        default="signed",
        description="`signed`: result URLs are this server's signed links and the API streams the images; "
        "`presigned`: result URLs are presigned GET URLs of the S3 bucket (needs an s3:// results_url), "
        "expiring at the same time.",
    )
    task_retention_seconds: int = Field(
        default=7 * 86_400, ge=60, description="How long finished tasks are kept before they are deleted."
    )
    cleanup_interval_seconds: float = Field(default=300.0, gt=0, description="How often expired data is deleted.")
    lease_seconds: float = Field(
        default=30.0,
        gt=0,
        description="How long a worker may go silent before its task is given to another worker.",
    )
    max_attempts: int = Field(default=3, ge=1, le=20, description="Runs of a task before it fails for good.")
    retry_backoff_seconds: float = Field(
        default=5.0,
        gt=0,
        description="After a transient failure (results storage full or read-only, database busy), the wait "
        "before the task runs again; it doubles with each attempt, up to retry_backoff_max_seconds.",
    )
    retry_backoff_max_seconds: float = Field(
        default=300.0, gt=0, description="The longest wait before a task that failed for a transient reason runs again."
    )
    drain_seconds: float = Field(
        default=30.0, ge=0, description="On SIGTERM, how long the running task may take before it is requeued."
    )
    progress_interval_seconds: float = Field(
        default=0.25, gt=0, description="How often a worker writes progress (and SSE streams poll)."
    )
    poll_interval_seconds: float = Field(
        default=0.5, gt=0, description="How often an idle worker looks for work queued by another process."
    )
    max_wait_seconds: float = Field(
        default=120.0, ge=0, description="Upper bound of `?wait=` / `Prefer: wait` on task creation."
    )
    tasks_per_minute: int | None = Field(
        default=None,
        ge=1,
        description="Tasks one API key (or an open server's callers together) may create per minute.",
    )
    active_tasks_per_key: int | None = Field(
        default=None, ge=1, description="Queued plus running tasks one API key may have at once."
    )
    max_queue_depth: int | None = Field(
        default=None, ge=1, description="Queued tasks beyond which new ones are refused with 503 and Retry-After."
    )
    requests_per_minute: int | None = Field(
        default=None,
        ge=1,
        description=(
            "Requests one API key (on an open server: one client address) may make per minute on any "
            "authenticated endpoint: a burst of this many, then one every 60/N seconds."
        ),
    )
    redis_url: str | None = Field(
        default=None,
        pattern=r"^(redis|rediss|unix)://",
        description=(
            "Redis (e.g. `redis://127.0.0.1:6379/0`) that holds the request rate limit, shared by several "
            "API processes; default: none, the limit is kept in each process's memory."
        ),
    )
    redis_key_prefix: str = Field(
        default="qwen-image:",
        description="Prefix of every key this server writes in Redis (to share one Redis between deployments).",
    )
    max_request_bytes: int = Field(
        default=100 * 2**20,
        ge=1024,
        description="Largest request body accepted (413 beyond); room for three 20 MiB images in base64.",
    )
    worker: bool = Field(default=True, description="Whether `serve` runs a worker in the same process.")
    api_workers: int = Field(
        default=1,
        ge=1,
        le=64,
        description="API processes `serve` runs on its port (one per core to use); with more than one, "
        "the worker runs in a process of its own.",
    )
    open: bool = Field(
        default=False,
        description="Serve without API keys on a non-loopback address (refused by default).",
    )
    allowed_fetch_networks: Annotated[tuple[IPv4Network | IPv6Network, ...], NoDecode] = Field(
        default=(),
        description=(
            "Networks (CIDRs, comma-separated) that input-image URLs and callback URLs may reach although "
            "they are private, loopback or otherwise not public; for tests and private deployments. Default: none."
        ),
    )
    cors_allowed_origins: Annotated[tuple[str, ...], NoDecode] = Field(
        default=(),
        description=(
            "Origins (comma-separated, e.g. `https://app.example.com`, or `*`) whose browser pages may call "
            "the API (CORS). Default: none, and no CORS headers are sent."
        ),
    )
    metrics: bool = Field(default=True, description="Serve Prometheus metrics at /metrics (docs/metrics.md).")
    metrics_public: bool = Field(
        default=False,
        description="Serve /metrics without an API key even when keys exist (for a scraper on a private network).",
    )
    worker_metrics_port: int | None = Field(
        default=None,
        ge=1,
        le=65535,
        description="`qwen-image worker` serves its metrics on this port at `host` (no key; default: not served).",
    )
    callback_retry_seconds: Annotated[tuple[float, ...], NoDecode] = Field(
        default=(5, 300, 1800, 7200, 18000, 36000, 36000),
        description=(
            "Waits between callback attempts, comma-separated seconds; a callback is tried once more than "
            "the list is long. Default: Standard Webhooks' schedule (5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h)."
        ),
    )
    callback_timeout_seconds: float = Field(
        default=15.0, gt=0, le=300, description="How long one callback attempt may take (connect, send, answer)."
    )
    callback_concurrency: int = Field(
        default=32, ge=1, le=1024, description="How many callback attempts one process runs at the same time."
    )
    callback_destination_concurrency: int = Field(
        default=4,
        ge=1,
        le=1024,
        description=(
            "How many of them may go to one destination (scheme, host and port) at the same time, so that a slow "
            "receiver delays only its own callbacks."
        ),
    )
    callback_owner_concurrency: int = Field(
        default=8,
        ge=1,
        le=1024,
        description=(
            "How many of them may belong to the tasks of one API key at the same time, so that one tenant with many "
            "slow receivers (one host name each) cannot take every slot. Tasks made without a key are not capped."
        ),
    )
    webhook_secret: str | None = Field(
        default=None,
        description=(
            "`whsec_...` secret that signs callbacks of tasks made without an API key; default: a random one "
            "kept in `DATA_DIR/webhook-secret`. Set the same on every machine of a multi-machine deployment."
        ),
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, TomlConfigSettingsSource(settings_cls))

    @field_validator(
        "models",
        "allowed_fetch_networks",
        "cors_allowed_origins",
        "callback_retry_seconds",
        "fp8_skip",
        "warmup_sizes",
        "loras",
        "request_loras",
        "lightning_loras",
        mode="before",
    )
    @classmethod
    def _split_commas(cls, value: Any) -> Any:
        if isinstance(value, str):
            return tuple(part.strip() for part in value.split(",") if part.strip())
        return value

    @field_validator("callback_retry_seconds")
    @classmethod
    def _non_negative_waits(cls, value: tuple[float, ...]) -> tuple[float, ...]:
        if any(wait < 0 for wait in value):
            raise ValueError("callback waits cannot be negative")
        return value

    @field_validator("dtype")
    @classmethod
    def _no_float16(cls, value: DType) -> DType:
        if value == "float16":
            raise ValueError(FLOAT16_REFUSED)
        return value

    @field_validator("warmup_sizes")
    @classmethod
    def _sizes_parse(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        from qwen_image_server.domain import parse_size

        for text in value:
            try:
                parse_size(text)
            except InvalidParameter as exc:
                raise ValueError(exc.message) from None
        return value

    @field_validator("loras", "request_loras")
    @classmethod
    def _loras_parse(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        from qwen_image_server.engine.loras import parse_lora_specs

        parse_lora_specs(value)  # raises ValueError with what is wrong
        return value

    @field_validator("lightning_loras")
    @classmethod
    def _lightning_parse(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        from qwen_image_server.engine.loras import parse_lora_specs

        for spec in parse_lora_specs(value):
            if spec.name not in {model.value for model in ModelName}:
                names = ", ".join(model.value for model in ModelName)
                raise ValueError(f"lightning LoRA {spec.name!r}: name the model it is for ({names})")
        return value

    @field_validator("webhook_secret")
    @classmethod
    def _webhook_secret_format(cls, value: str | None) -> str | None:
        if value is not None:
            secret_key(value)  # raises ValueError with what is wrong
        return value

    @model_validator(mode="after")
    def _c2pa_pair(self) -> Settings:
        if (self.c2pa_cert is None) != (self.c2pa_key is None):
            raise ValueError("give both c2pa_cert and c2pa_key, or neither (a self-signed pair is made then)")
        return self

    @field_validator("results_url")
    @classmethod
    def _results_url_format(cls, value: str | None) -> str | None:
        if value is not None:
            parse_results_url(value)  # raises ValueError with what is wrong
        return value

    @model_validator(mode="after")
    def _presigned_needs_s3(self) -> Settings:
        if self.results_links == "presigned" and self.results_url is None:
            raise ValueError(
                "results_links=presigned needs an S3 results_url (s3://bucket/prefix); "
                "results in the local folder are served by the API's signed links"
            )
        if self.results_links == "presigned" and self.result_ttl_seconds > PRESIGN_MAX_SECONDS:
            raise ValueError(
                f"results_links=presigned: S3 presigned URLs live at most {PRESIGN_MAX_SECONDS} "
                "seconds (7 days); lower result_ttl_seconds"
            )
        return self

    @property
    def sqlite_busy_timeout_ms(self) -> int:
        return max(1, round(self.sqlite_busy_timeout_seconds * 1000))

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite+aiosqlite:///{self.data_dir / 'tasks.db'}"

    def checkpoint_for(self, model: ModelName) -> str:
        return {
            ModelName.QWEN_IMAGE: self.checkpoint_qwen_image,
            ModelName.QWEN_IMAGE_EDIT: self.checkpoint_qwen_image_edit,
            ModelName.QWEN_IMAGE_EDIT_PLUS: self.checkpoint_qwen_image_edit_plus,
        }[model]

    def with_checkpoint(self, model: ModelName, checkpoint: str) -> Settings:
        return self.model_copy(update={f"checkpoint_{model.value.replace('-', '_')}": checkpoint})


def load_settings(config_file: Path | None = None, **overrides: Any) -> Settings:
    """Settings from flags (`overrides`; None values are ignored), the environment and a TOML file.

    The file is `config_file`, else `QWEN_IMAGE_CONFIG` if set. Keys in the file are the setting
    names in lower case (`port = 8080`, `models = ["qwen-image"]`).
    """
    import os

    path = config_file or (Path(os.environ["QWEN_IMAGE_CONFIG"]) if os.environ.get("QWEN_IMAGE_CONFIG") else None)
    given = {key: value for key, value in overrides.items() if value is not None}
    if path is None:
        return Settings(**given)
    if not path.is_file():
        raise InvalidParameter(f"no config file at {path}", param="config")

    class FileSettings(Settings):
        model_config = SettingsConfigDict(toml_file=path)

    try:
        return FileSettings(**given)
    except tomllib.TOMLDecodeError as exc:
        raise InvalidParameter(f"{path} is not valid TOML: {exc}", param="config") from None
