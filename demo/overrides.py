"""Demo settings (nested mappings) written as Hydra command-line overrides, for the stage and eval configs."""

from __future__ import annotations

import re
from typing import Any

from omegaconf import DictConfig, OmegaConf


def flatten(tree: Any, prefix: str = "") -> list[str]:
    """Nested mapping -> Hydra ``a.b=value`` overrides (lists as ``[x,y]``, None as ``null``)."""
    if isinstance(tree, DictConfig):
        tree = OmegaConf.to_container(tree, resolve=True)
    out: list[str] = []
    for key, value in (tree or {}).items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.extend(flatten(value, name + "."))
        else:
            out.append(f"{name}={hydra_value(value)}")
    return out


def hydra_value(value: Any) -> str:
    """A plain value written as a Hydra override value."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(hydra_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}:{hydra_value(v)}" for k, v in value.items()) + "}"
    if isinstance(value, str) and not re.fullmatch(r"[\w.+\-/]*", value):
        return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
    return str(value)
