"""The `qwen-image` application object, global options, and how errors reach the user.

User mistakes end as one line on stderr and exit code 2 (server-side failures: exit code 1); a
traceback appears only with `--debug`. Heavy imports (torch, diffusers) happen inside commands,
so `--help` is instant.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated

import typer
from pydantic import ValidationError
from rich.console import Console

from qwen_image_server import __version__
from qwen_image_server.errors import InvalidParameter, QwenImageError

app = typer.Typer(
    name="qwen-image",
    help="Generate and edit images with the Qwen-Image models, and serve them over HTTP.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
out = Console()
err = Console(stderr=True)
_state = {"debug": False}

USER_ERROR_EXIT = 2
SERVER_ERROR_EXIT = 1


def _version(value: bool) -> None:
    if value:
        out.print(f"qwen-image-server {__version__}")
        raise typer.Exit()


@app.callback()
def main_options(
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks and library logs.")] = False,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    _state["debug"] = debug
    logging.basicConfig(level=logging.INFO if debug else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")


@contextmanager
def friendly_errors() -> Iterator[None]:
    """Turn our exceptions into one line and an exit code; keep tracebacks for --debug."""
    try:
        yield
    except QwenImageError as exc:
        if _state["debug"]:
            raise
        err.print(f"[bold red]error:[/] {exc.message}", highlight=False, soft_wrap=True)
        raise typer.Exit(USER_ERROR_EXIT if exc.caller_fault else SERVER_ERROR_EXIT) from None
    except KeyboardInterrupt:
        err.print("interrupted")
        raise typer.Exit(130) from None


def first_line(exc: ValidationError) -> str:
    """pydantic's multi-line report as one line: the field and what is wrong with it."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return " ".join(lines[1:3]) if len(lines) > 1 else str(exc)


def invalid_setting(exc: ValidationError) -> InvalidParameter:
    return InvalidParameter(f"invalid setting: {first_line(exc)}")


def main() -> None:
    try:
        app()
    except QwenImageError as exc:  # raised outside a command body, e.g. while parsing settings
        err.print(f"error: {exc.message}", highlight=False)
        sys.exit(USER_ERROR_EXIT if exc.caller_fault else SERVER_ERROR_EXIT)
