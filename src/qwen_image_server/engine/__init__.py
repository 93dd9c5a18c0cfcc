"""The inference engine: the only package that imports torch and diffusers, and only on first use."""

from qwen_image_server.engine.engine import Engine, LoadedModel, StepCallback

__all__ = ["Engine", "LoadedModel", "StepCallback"]
