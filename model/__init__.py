"""Video-XL-2-family model: config, presets, network, tokenizer, checkpoint conversion."""

from __future__ import annotations

from .config import VideoXL2Config
from .modeling import VideoXL2ForCausalLM, register_auto_classes
from .presets import build_preset, config_from_dict
from .tokenizer import load_tokenizer

register_auto_classes()

__all__ = ["VideoXL2Config", "VideoXL2ForCausalLM", "build_preset", "config_from_dict", "load_tokenizer"]
