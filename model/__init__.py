"""Video-XL-2-family model: config, presets, network, tokenizer, sequence building, inference."""

from __future__ import annotations

from importlib import import_module
from typing import Any

from .config import VideoXL2Config
from .modeling import VideoXL2ForCausalLM, register_auto_classes
from .presets import build_preset, config_from_dict

register_auto_classes()

_LAZY = {
    "load_tokenizer": "model.tokenizer",
}

__all__ = ["VideoXL2Config", "VideoXL2ForCausalLM", "build_preset", "config_from_dict", "load_tokenizer"]


def __getattr__(name: str) -> Any:
    """Lazily import names that live in optional sibling modules (e.g. `load_tokenizer`)."""
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'model' has no attribute {name!r}")
