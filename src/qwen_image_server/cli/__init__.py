"""The `qwen-image` command line. Each module registers its commands on the one `app`."""

from qwen_image_server.cli import callbacks, images, keys, serve, verify
from qwen_image_server.cli.main import app, main

__all__ = ["app", "callbacks", "images", "keys", "main", "serve", "verify"]
