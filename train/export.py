"""Final export: consolidated HF-format model (save_pretrained), tokenizer, resolved stage config.

Under ZeRO-3 each top-level child's parameters are gathered in turn
(`deepspeed.zero.GatheredParameters`) and copied to CPU on rank 0; under ZeRO-0/1/2 every rank
already holds the full module. Stage-only heads (the DTS decoder) are not part of the export.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf

from train.engine import DistEnv

EXPORT_INFO = "export_info.json"


def write_resolved_config(path: Path, raw_config: dict[str, Any]) -> None:
    """The fully resolved run config as YAML."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(OmegaConf.to_yaml(OmegaConf.create(raw_config)))


def consolidated_state_dict(model: torch.nn.Module, zero_stage: int, is_main: bool) -> dict[str, torch.Tensor]:
    """Full CPU state dict of `model` on rank 0 (empty dict elsewhere); collective under ZeRO-3."""
    if zero_stage < 3:
        if not is_main:
            return {}
        return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    import deepspeed

    out: dict[str, torch.Tensor] = {}
    for child_name, child in model.named_children():
        params = list(child.parameters())
        with deepspeed.zero.GatheredParameters(params, modifier_rank=None):
            if is_main:
                for key, value in child.state_dict().items():
                    out[f"{child_name}.{key}"] = value.detach().cpu().clone()
    if is_main:
        for key, value in model.named_parameters(recurse=False):
            out[key] = value.detach().cpu().clone()
        for key, value in model.named_buffers(recurse=False):
            out[key] = value.detach().cpu().clone()
    return out


def export_stage(engine: Any, train_module: torch.nn.Module, tokenizer: Any, out_dir: Path,
                 raw_config: dict[str, Any], zero_stage: int, dist: DistEnv,
                 extra: dict[str, Any]) -> Path:
    """Write `out_dir` (collective): config.json + weights, tokenizer files, train_config.yaml."""
    model = train_module.model  # type: ignore[attr-defined]
    state = consolidated_state_dict(model, zero_stage, dist.is_main)
    if dist.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(str(out_dir), state_dict=state, safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(str(out_dir))
        write_resolved_config(out_dir / "train_config.yaml", raw_config)
        (out_dir / EXPORT_INFO).write_text(json.dumps(extra, indent=1))
    if torch.distributed.is_initialized():
        torch.distributed.barrier()
    return out_dir
