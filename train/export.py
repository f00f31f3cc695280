"""Final export: consolidated HF-format model (save_pretrained), tokenizer, resolved stage config.

Under ZeRO-3 each top-level child's parameters are gathered in turn
(`deepspeed.zero.GatheredParameters`) and copied to CPU on rank 0; under ZeRO-0/1/2 every rank
already holds the full module. Stage-only heads (the DTS decoder) are not part of the export.
A model with LoRA adapters (train/lora.py) is exported merged, as a plain model without adapter keys,
and its adapter alone goes to `<export>/adapter/` in peft's format, with the parts trained fully beside it.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf

from train import lora
from train.engine import DistEnv

EXPORT_INFO = "export_info.json"


def write_resolved_config(path: Path, raw_config: dict[str, Any]) -> None:
    """The fully resolved run config as YAML."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(OmegaConf.to_yaml(OmegaConf.create(raw_config)))


ChildState = Callable[[str, torch.nn.Module, dict[str, torch.Tensor]], dict[str, torch.Tensor]]


def consolidated_state_dict(model: torch.nn.Module, zero_stage: int, is_main: bool,
                            child_state: ChildState | None = None) -> dict[str, torch.Tensor]:
    """Full CPU state dict of `model` on rank 0 (empty dict elsewhere); collective under ZeRO-3.

    `child_state(name, child, state)`, if given, maps each top-level child's CPU state (keys relative to
    the child) to what is exported for it; it runs on rank 0 while the child's parameters are whole.
    """
    if zero_stage < 3 and child_state is None:
        if not is_main:
            return {}
        return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    import contextlib

    out: dict[str, torch.Tensor] = {}
    for child_name, child in model.named_children():
        if zero_stage < 3:
            gathered: Any = contextlib.nullcontext()
        else:
            import deepspeed

            gathered = deepspeed.zero.GatheredParameters(list(child.parameters()), modifier_rank=None)
        with gathered:
            if is_main:
                state = {key: value.detach().cpu().clone() for key, value in child.state_dict().items()}
                if child_state is not None:
                    state = child_state(child_name, child, state)
                for key, value in state.items():
                    out[f"{child_name}.{key}"] = value
    if is_main:
        for key, value in model.named_parameters(recurse=False):
            out[key] = value.detach().cpu().clone()
        for key, value in model.named_buffers(recurse=False):
            out[key] = value.detach().cpu().clone()
    return out


def export_stage(engine: Any, train_module: torch.nn.Module, tokenizer: Any, out_dir: Path,
                 raw_config: dict[str, Any], zero_stage: int, dist: DistEnv,
                 extra: dict[str, Any]) -> Path:
    """Write `out_dir` (collective): config.json + weights, tokenizer files, train_config.yaml; with LoRA
    adapters the weights are merged and `out_dir/adapter/` holds the adapter in peft's format."""
    model = train_module.model  # type: ignore[attr-defined]
    adapted = lora.is_adapted(model)
    adapter: dict[str, torch.Tensor] = {}
    trained: dict[str, torch.Tensor] = {}

    def merge(name: str, child: torch.nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        merged, child_adapter = lora.split_child_state(child, state)
        adapter.update({f"{name}.{k}": v for k, v in child_adapter.items()})
        if lora.trains_fully(child):
            trained.update({f"{name}.{k}": v for k, v in merged.items()})
        return merged

    state = consolidated_state_dict(model, zero_stage, dist.is_main, child_state=merge if adapted else None)
    if dist.is_main:
        empty = [k for k, v in state.items() if v.numel() == 0]
        if empty:
            raise RuntimeError(f"export: {len(empty)} empty tensors (e.g. {empty[0]}): parameters were not gathered")
        out_dir.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(str(out_dir), state_dict=state, safe_serialization=True)
        if adapted:
            lora.save_adapter(out_dir / lora.ADAPTER_DIR, model, adapter, trained)
        if tokenizer is not None:
            tokenizer.save_pretrained(str(out_dir))
        write_resolved_config(out_dir / "train_config.yaml", raw_config)
        (out_dir / EXPORT_INFO).write_text(json.dumps(extra, indent=1))
    if torch.distributed.is_initialized():
        torch.distributed.barrier()
    return out_dir
