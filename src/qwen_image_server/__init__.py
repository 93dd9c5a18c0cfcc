"""qwen-image-server: a self-hosted server for the Qwen-Image model family."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("qwen-image-server")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0"
