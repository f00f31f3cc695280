"""Model presets: `conf/model/<name>.yaml` -> `VideoXL2Config`.

The YAML schema (also what a Hydra `model=<name>` group composes) is flat for the top-level
`VideoXL2Config` fields, with nested `vision_config` (SiglipVisionConfig fields) and `text_config`
(Qwen2Config fields, plus the shorthand `rope_theta`). `name` is informational; `tokenizer` may be
`???` (unset) until the user points it at a local tokenizer directory.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from transformers import Qwen2Config, SiglipVisionConfig

from .config import VideoXL2Config

MISSING_VALUE = "???"


def preset_dir() -> Path:
    """Directory holding the model preset YAML files (`<repo>/conf/model`)."""
    return Path(__file__).resolve().parents[1] / "conf" / "model"


def available_presets() -> list[str]:
    """Names of the shipped presets."""
    return sorted(p.stem for p in preset_dir().glob("*.yaml"))


def _field_names(cls: type) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)}


def _check_keys(section: str, data: Mapping[str, Any], allowed: set[str]) -> None:
    for key in data:
        if key not in allowed:
            raise ValueError(f"unknown model config key {section}{key!r}")


def _text_kwargs(data: Mapping[str, Any]) -> dict[str, Any]:
    _check_keys("text_config.", data, _field_names(Qwen2Config) | {"rope_theta"})
    kwargs = dict(data)
    theta = kwargs.pop("rope_theta", None)
    if theta is not None:
        if kwargs.get("rope_parameters") is not None:
            raise ValueError("text_config: give either rope_theta or rope_parameters, not both")
        kwargs["rope_parameters"] = {"rope_type": "default", "rope_theta": float(theta)}
    return kwargs


def config_from_dict(data: Mapping[str, Any] | DictConfig) -> VideoXL2Config:
    """Build a `VideoXL2Config` from a preset-schema mapping; unknown keys raise ValueError naming them."""
    if isinstance(data, DictConfig):
        data = OmegaConf.to_container(data, resolve=True, throw_on_missing=False)
    data = dict(data)
    top_allowed = (_field_names(VideoXL2Config) - _field_names(VideoXL2Config.__mro__[1])) | {"name"}
    top_allowed |= {"vision_config", "text_config", "tie_word_embeddings"}
    _check_keys("", data, top_allowed)
    data.pop("name", None)
    if data.get("tokenizer") == MISSING_VALUE:
        data["tokenizer"] = None
    vision = dict(data.pop("vision_config", None) or {})
    _check_keys("vision_config.", vision, _field_names(SiglipVisionConfig))
    text = _text_kwargs(data.pop("text_config", None) or {})
    return VideoXL2Config(vision_config=SiglipVisionConfig(**vision), text_config=Qwen2Config(**text), **data)


def load_preset_dict(name_or_path: str | Path) -> DictConfig:
    """The raw preset: a shipped name (`tiny`, `videoxl2_7b`) or a path to a YAML file."""
    path = Path(name_or_path)
    if path.suffix not in (".yaml", ".yml"):
        path = preset_dir() / f"{name_or_path}.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"model preset {str(name_or_path)!r} not found (shipped: {available_presets()})")
    cfg = OmegaConf.load(path)
    if not isinstance(cfg, DictConfig):
        raise ValueError(f"model preset {path} must be a mapping")
    return cfg


def build_preset(name_or_path: str | Path, **overrides: Any) -> VideoXL2Config:
    """Config for a preset with optional overrides (nested dicts merge, e.g. `text_config={"num_hidden_layers": 2}`)."""
    cfg = load_preset_dict(name_or_path)
    if overrides:
        cfg = OmegaConf.merge(cfg, OmegaConf.create(overrides))
    return config_from_dict(cfg)
