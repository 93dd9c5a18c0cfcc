"""Commands that run the service: `serve` (API + in-process worker) and `worker` (a worker alone)."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from pydantic import ValidationError

from qwen_image_server.cli.main import app, err, friendly_errors, invalid_setting, out
from qwen_image_server.domain import ModelName
from qwen_image_server.errors import InvalidParameter
from qwen_image_server.settings import Settings, load_settings

if TYPE_CHECKING:
    from qwen_image_server.service import Service
    from qwen_image_server.worker.worker import GenerationEngine

DataDirOpt = Annotated[
    Path | None, typer.Option("--data-dir", help="Folder of the task database and result images [default: ./data].")
]
ModelSourceOpt = Annotated[
    str | None,
    typer.Option(
        "--model",
        "-m",
        help="Checkpoint for every served model: `tiny` (random weights; serves all three models), "
        "a local diffusers folder or a Hugging Face repo id.",
    ),
]
ModelsOpt = Annotated[
    str | None, typer.Option("--models", help="Models to serve, comma-separated [default: qwen-image].")
]
ConfigOpt = Annotated[Path | None, typer.Option("--config", help="A TOML file of settings (see docs/settings.md).")]


def _service_settings(
    config: Path | None, model: str | None, models: str | None, **flags: object
) -> tuple[Settings, list[str]]:
    """Settings for a serving process, and notes to print about where the models come from."""
    try:
        settings = load_settings(config, models=models, **flags)
    except ValidationError as exc:
        raise invalid_setting(exc) from None
    notes: list[str] = []
    if model is None and _no_gpu_and_no_weights(settings):
        model = "tiny"
        notes.append("no GPU and no Qwen-Image weights on this machine: serving the tiny model instead")
    if model is not None:
        served = tuple(ModelName) if model == "tiny" and models is None else settings.models
        settings = settings.model_copy(update={"models": served})
        for name in served:
            settings = settings.with_checkpoint(name, model)
    if any(settings.checkpoint_for(name) == "tiny" for name in settings.models):
        notes.append("the tiny model has random weights: its images are noise, made by the real pipelines")
    return settings, notes


def _no_gpu_and_no_weights(settings: Settings) -> bool:
    """True on a CPU-only machine whose configured checkpoints are hub ids not in the local cache."""
    from huggingface_hub import try_to_load_from_cache

    if settings.device not in ("auto", "cpu"):
        return False
    import torch

    if torch.cuda.is_available() or torch.backends.mps.is_available():
        return False
    for name in settings.models:
        checkpoint = settings.checkpoint_for(name)
        if checkpoint == "tiny" or Path(checkpoint).expanduser().is_dir():
            return False
        if isinstance(try_to_load_from_cache(checkpoint, "model_index.json"), str):
            return False
    return True


def _describe(settings: Settings, notes: list[str]) -> None:
    out.print(f"data: {settings.data_dir.resolve()}  (tasks: {settings.resolved_database_url})", highlight=False)
    for name in settings.models:
        out.print(f"model {name.value} from {settings.checkpoint_for(name)}", highlight=False)
    for note in notes:
        err.print(f"note: {note}", highlight=False, soft_wrap=True)


async def _refuse_open_exposure(settings: Settings) -> None:
    """Secure by default: beyond loopback, serve only with API keys (or when told `--open`)."""
    if settings.open or _is_loopback(settings.host):
        return
    from qwen_image_server.tasks.database import Database
    from qwen_image_server.tasks.keys import SqlKeyStore

    settings.data_dir.mkdir(parents=True, exist_ok=True)
    database = Database(settings.resolved_database_url, listen=False)
    await database.start()
    try:
        has_keys = await SqlKeyStore(database).keys_required()
    finally:
        await database.close()
    if not has_keys:
        raise InvalidParameter(
            f"refusing to listen on {settings.host} without API keys: create one with "
            "`qwen-image keys create --name NAME`, or pass --open to serve without authentication",
            param="host",
        )


def _is_loopback(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@app.command()
def serve(
    host: Annotated[str | None, typer.Option("--host", help="Address to listen on [default: 127.0.0.1].")] = None,
    port: Annotated[int | None, typer.Option("--port", help="Port to listen on [default: 8000].")] = None,
    data_dir: DataDirOpt = None,
    model: ModelSourceOpt = None,
    models: ModelsOpt = None,
    config: ConfigOpt = None,
    no_worker: Annotated[
        bool, typer.Option("--no-worker", help="Serve the API only; separate `qwen-image worker` processes run tasks.")
    ] = False,
    open_: Annotated[
        bool, typer.Option("--open", help="Allow serving beyond loopback without API keys (anyone can use it).")
    ] = False,
    api_workers: Annotated[
        int | None,
        typer.Option("--api-workers", min=1, help="API processes on the port (one per core) [default: 1]."),
    ] = None,
) -> None:
    """Run the HTTP API, with a worker in the same process unless --no-worker."""
    import uvicorn

    from qwen_image_server.api.app import create_app
    from qwen_image_server.service import Service

    with friendly_errors():
        worker = False if no_worker else None
        settings, notes = _service_settings(
            config,
            model,
            models,
            host=host,
            port=port,
            data_dir=data_dir,
            worker=worker,
            open=open_ or None,
            api_workers=api_workers,
        )
        _describe(settings, notes)
        asyncio.run(_refuse_open_exposure(settings))
        if settings.api_workers > 1:
            _serve_api_processes(settings)
            return
        service = Service.build(settings, run_worker=settings.worker)
        out.print(
            f"listening on http://{settings.host}:{settings.port}  (API reference at /docs)",
            highlight=False,
        )
        config_ = uvicorn.Config(create_app(service), host=settings.host, port=settings.port, log_level="warning")
        server = uvicorn.Server(config_)
        service.on_worker_failure = lambda: setattr(server, "should_exit", True)
        server.run()
    _exit_if_the_worker_failed(service)


@app.command()
def worker(
    data_dir: DataDirOpt = None,
    model: ModelSourceOpt = None,
    models: ModelsOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Run a worker alone against the data dir (or database) of a server; run several to share a queue."""
    with friendly_errors():
        settings, notes = _service_settings(config, model, models, data_dir=data_dir)
        _describe(settings, notes)
        service = asyncio.run(run_worker(settings))
    _exit_if_the_worker_failed(service)


async def run_worker(settings: Settings, engine: GenerationEngine | None = None) -> Service:
    """A worker until SIGTERM or SIGINT, then drained; `engine` replaces the real one (benchmarks'
    stand-in workers run exactly this)."""
    from qwen_image_server.service import Service

    service = Service.build(settings, engine=engine, run_worker=True)
    if settings.worker_metrics_port is not None:  # nothing else serves this process's metrics
        from qwen_image_server.metrics.scrape import serve_worker_metrics

        serve_worker_metrics(settings.host, settings.worker_metrics_port)
    stop = asyncio.Event()
    service.on_worker_failure = stop.set
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with service.running():
        out.print(f"worker {service.worker.id if service.worker else ''} running; Ctrl-C or SIGTERM drains it")
        await stop.wait()
        if not service.worker_failed:
            err.print("draining: the running task gets up to drain_seconds to finish")
    return service


def _serve_api_processes(settings: Settings) -> None:
    from qwen_image_server.cli.api_processes import serve_api_processes

    worker = "the worker in a process of its own" if settings.worker else "no worker"
    out.print(
        f"listening on http://{settings.host}:{settings.port} with {settings.api_workers} API processes and "
        f"{worker}  (API reference at /docs)",
        highlight=False,
    )
    if serve_api_processes(settings):
        err.print("the worker process ended; exiting with status 1")
        raise typer.Exit(1)


def _exit_if_the_worker_failed(service: Service) -> None:
    """A process whose worker died exits non-zero (a supervisor restarts it), rather than staying up
    with no worker: the queue would not move, and a `serve` would take tasks that never run."""
    if service.worker_failed:
        err.print("the worker stopped on the error above; exiting with status 1")
        raise typer.Exit(1)
