"""LoRA adapters on parts of `VideoXL2ForCausalLM`, built with peft; merged and adapter-only export.

`apply_lora(model, cfg)` injects peft LoRA layers (`peft.inject_adapter_in_model`, in place: the model
keeps its class and its `llm`, `vision_tower`, ... children) into the linear layers whose last name is in
`cfg.target_modules` and that live inside one of `cfg.modules`. The peft config matches full module
paths with one regular expression (`target_pattern`), so a name that also exists elsewhere (SigLIP's
`q_proj/k_proj/v_proj` when only the LLM is listed) gets no adapter. `freeze_base` leaves only the
adapter weights of those parts trainable.

Export (`split_child_state`, called by train/export.py while a child's parameters are gathered): every
adapted layer's weight becomes W + peft's `get_delta_weight` = W + (alpha / r) * B @ A (Hu et al., 2021,
"LoRA: Low-Rank Adaptation of Large Language Models"), its keys lose peft's `base_layer.` segment and
the adapter tensors go to a separate dict that `save_adapter` writes in peft's own format
(adapter_config.json + adapter_model.safetensors, keys `base_model.model.<path>.lora_A.weight`), which
`peft.PeftModel.from_pretrained(base_model, dir)` loads. The parts a stage trains fully (the projector)
are not LoRA weights: they go beside it to `trained_parts.safetensors` (plain keys, load into the base model
first), like the separate non-LoRA weights of LLaVA's LoRA checkpoints.

`python -m train.lora --model videoxl2_7b` counts trainable and total parameters of a preset with a LoRA
config on the meta device (no memory, no weights).
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn

from train.config import MODEL_MODULES, ConfigError, LoraConfig

ADAPTER = "default"  # peft's adapter name inside the live model; stripped in the saved adapter
ADAPTER_DIR = "adapter"  # export/<ADAPTER_DIR>/: the adapter alone, in peft's format
TRAINED_PARTS = "trained_parts.safetensors"  # beside the adapter: the parts trained fully (plain model keys)
PEFT_PREFIX = "base_model.model."  # key prefix of a PeftModel's state dict (what PeftModel.from_pretrained reads)


def target_pattern(modules: list[str], target_modules: list[str]) -> str:
    """Regular expression that peft full-matches against module paths of the whole model: a module whose
    last name is one of `target_modules`, at any depth under one of the top-level `modules`."""
    parts = "|".join(re.escape(m) for m in modules)
    names = "|".join(re.escape(t) for t in target_modules)
    return rf"(?:{parts})\.(?:.*\.)?(?:{names})"


def peft_config(cfg: LoraConfig, base_model: str | None = None) -> Any:
    """The `peft.LoraConfig` for `cfg` (no bias training, adapter weights initialised as peft does:
    A Kaiming-uniform, B zero, so a fresh adapter leaves the model's outputs unchanged)."""
    import peft

    return peft.LoraConfig(r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout,
                           target_modules=target_pattern(cfg.modules, cfg.target_modules), bias="none",
                           base_model_name_or_path=base_model)


def _matched_modules(model: nn.Module, pattern: str) -> list[str]:
    return [name for name, _ in model.named_modules() if name and re.fullmatch(pattern, name)]


def _check_targets(model: nn.Module, cfg: LoraConfig, matched: list[str]) -> None:
    """Every listed part has at least one target, and no target's weight is shared with another module
    (a tied LM head and input embedding: merging an adapter into one would silently change the other)."""
    for i, part in enumerate(cfg.modules):
        if not any(name.startswith(part + ".") for name in matched):
            raise ConfigError(f"stage.lora.modules[{i}]",
                              f"no module inside {part!r} is named any of {cfg.target_modules} "
                              "(stage.lora.target_modules)")
    owners: dict[int, list[str]] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        owners.setdefault(id(param), []).append(name)
    for name in matched:
        for pname, param in model.get_submodule(name).named_parameters(recurse=False):
            others = [o for o in owners[id(param)] if o != f"{name}.{pname}"]
            if others:
                raise ConfigError("stage.lora.target_modules",
                                  f"{name}.{pname} is the same tensor as {others[0]} (tied weights): a merged "
                                  "adapter would change both; leave this module out of the targets")


def apply_lora(model: nn.Module, cfg: LoraConfig, base_model: str | None = None) -> Any:
    """Inject LoRA adapters into `model` in place (see the module docstring) and return the peft config.

    Raises ConfigError naming `stage.lora.*` when a listed part has no target, a target's weight is tied
    to another module, or peft cannot adapt a matched module's type.
    """
    import peft

    config = peft_config(cfg, base_model)
    matched = _matched_modules(model, config.target_modules)
    _check_targets(model, cfg, matched)
    try:
        peft.inject_adapter_in_model(config, model, adapter_name=ADAPTER)
    except ValueError as exc:  # e.g. a target of a layer type LoRA does not support
        raise ConfigError("stage.lora.target_modules", str(exc).splitlines()[0]) from exc
    return config


def lora_layers(module: nn.Module) -> dict[str, Any]:
    """Path -> peft LoRA layer for every adapted layer inside `module`."""
    from peft.tuners.lora import LoraLayer

    return {name: sub for name, sub in module.named_modules() if isinstance(sub, LoraLayer)}


def adapter_parameter_names(module: nn.Module) -> set[str]:
    """Names (relative to `module`) of the adapter parameters of every LoRA layer inside it."""
    out: set[str] = set()
    for path, layer in lora_layers(module).items():
        for attr in layer.adapter_layer_names:
            holder = getattr(layer, attr)
            for pname, _ in holder.named_parameters():
                out.add(f"{path}.{attr}.{pname}" if path else f"{attr}.{pname}")
    return out


def freeze_base(parts: dict[str, nn.Module], cfg: LoraConfig) -> None:
    """In each adapted part, only the adapter weights train; the base weights are frozen."""
    for name in cfg.modules:
        adapters = adapter_parameter_names(parts[name])
        for pname, param in parts[name].named_parameters():
            param.requires_grad_(pname in adapters)


def is_adapted(model: nn.Module) -> bool:
    """Whether `model` holds peft LoRA layers."""
    return bool(lora_layers(model))


@torch.no_grad()
def split_child_state(child: nn.Module, state: dict[str, torch.Tensor]
                      ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(merged plain state, adapter state) of one child of the model from its full `state` (keys relative
    to the child, CPU copies). Call while the child's parameters are whole (gathered under ZeRO-3).

    Merged: each adapted layer's `base_layer.weight` W (out, in) becomes `weight` = W + get_delta_weight
    (computed in fp32 and cast back to W's dtype), other `base_layer.*` tensors just lose that segment.
    Adapter: the LoRA tensors with their live keys (adapter name included).
    """
    layers = lora_layers(child)
    adapters = adapter_parameter_names(child)
    merged: dict[str, torch.Tensor] = {}
    adapter: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key in adapters:
            adapter[key] = value
        else:
            merged[key] = value
    for path, layer in layers.items():
        base = f"{path}.base_layer." if path else "base_layer."
        plain = f"{path}." if path else ""
        for key in [k for k in merged if k.startswith(base)]:
            merged[plain + key[len(base):]] = merged.pop(key)
        weight = merged[plain + "weight"]
        delta = layer.get_delta_weight(ADAPTER).detach().to("cpu", torch.float32)
        if delta.shape != weight.shape:
            raise RuntimeError(f"{plain}weight: adapter delta {tuple(delta.shape)} != weight {tuple(weight.shape)}")
        merged[plain + "weight"] = (weight.float() + delta).to(weight.dtype)
    return merged, adapter


def save_adapter(out_dir: Path, model: nn.Module, adapter_state: dict[str, torch.Tensor],
                 trained_state: dict[str, torch.Tensor]) -> Path:
    """Write `adapter_state` (live keys of the whole model) in peft's format to `out_dir`:
    adapter_config.json (the peft config injected into `model`) and adapter_model.safetensors; and
    `trained_state`, the parts the stage trained fully (e.g. the projector; plain model keys), to
    TRAINED_PARTS, so that base model + these weights + the adapter give the trained model."""
    from peft import get_peft_model_state_dict
    from safetensors.torch import save_file

    empty = [k for k, v in adapter_state.items() if v.numel() == 0]
    if empty:
        raise RuntimeError(f"adapter export: {len(empty)} empty tensors (e.g. {empty[0]}): parameters were not gathered")
    # adapter tensors only: an adapted lm_head/embedding's full base weight stays in the base model
    saved = get_peft_model_state_dict(model, state_dict=adapter_state, adapter_name=ADAPTER, save_embedding_layers=False)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.peft_config[ADAPTER].save_pretrained(str(out_dir))
    save_file({PEFT_PREFIX + k: v.contiguous() for k, v in saved.items()}, str(out_dir / "adapter_model.safetensors"),
              metadata={"format": "pt"})
    if trained_state:
        save_file({k: v.contiguous() for k, v in trained_state.items()}, str(out_dir / TRAINED_PARTS),
                  metadata={"format": "pt"})
    return out_dir


def trains_fully(child: nn.Module) -> bool:
    """Whether a part of the model has trainable weights of its own (not LoRA adapters)."""
    adapters = adapter_parameter_names(child)
    return any(p.requires_grad and n not in adapters for n, p in child.named_parameters())


def parameter_counts(module: nn.Module) -> dict[str, int]:
    """{"trainable": n, "total": n} parameters of `module` (each shared tensor once; the full size of a
    ZeRO-3 partitioned parameter)."""
    trainable = total = 0
    for param in module.parameters():
        n = int(getattr(param, "ds_numel", param.numel()))
        total += n
        trainable += n if param.requires_grad else 0
    return {"trainable": trainable, "total": total}


def count_on_meta(model_cfg: Any, lora: LoraConfig | None, trainable: list[str]) -> dict[str, int]:
    """Trainable/total parameters of a model built from `model_cfg` on the meta device (no memory), with
    `lora` adapters and the parts in `trainable` (adapted parts train their adapters only). Adds
    "adapter": the adapter parameters alone."""
    from model import VideoXL2ForCausalLM
    from train.optim import set_trainable

    with torch.device("meta"):
        model = VideoXL2ForCausalLM(model_cfg)
        if lora is not None:
            apply_lora(model, lora)
    parts = {name: getattr(model, name) for name in ("vision_tower", "dts", "projector", "llm")}
    set_trainable(parts, trainable)
    if lora is not None:
        freeze_base(parts, lora)
    adapter = sum(p.numel() for n, p in model.named_parameters() if n in adapter_parameter_names(model))
    return {**parameter_counts(model), "adapter": adapter}


def main(argv: list[str] | None = None) -> int:
    """CLI: trainable/total parameter counts of a preset with LoRA, on the meta device."""
    from model import build_preset

    defaults = LoraConfig()
    ap = argparse.ArgumentParser(prog="python -m train.lora", description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="videoxl2_7b", help="preset name or model YAML (conf/model/)")
    ap.add_argument("--trainable", default="projector,llm", help="parts the stage trains (comma-separated)")
    ap.add_argument("--modules", default=",".join(defaults.modules), help="parts that get adapters")
    ap.add_argument("--r", type=int, default=defaults.r)
    ap.add_argument("--alpha", type=float, default=defaults.alpha)
    ap.add_argument("--target-modules", default=",".join(defaults.target_modules))
    args = ap.parse_args(argv)
    from train.config import validate_lora

    trainable = [s for s in args.trainable.split(",") if s]
    cfg = LoraConfig(modules=[s for s in args.modules.split(",") if s], r=args.r, alpha=args.alpha, dropout=0.0,
                     target_modules=[s for s in args.target_modules.split(",") if s])
    flags = {"stage.lora.modules": "--modules", "stage.lora.r": "--r", "stage.lora.alpha": "--alpha",
             "stage.lora.target_modules": "--target-modules", "stage.trainable": "--trainable"}
    unknown = [name for name in trainable if name not in MODEL_MODULES]
    if unknown or not trainable:
        print(f"error: --trainable: unknown or no parts {unknown} (known: {', '.join(MODEL_MODULES)})", file=sys.stderr)
        return 2
    try:
        validate_lora(cfg, trainable)
        model_cfg = build_preset(args.model)
        counts = count_on_meta(model_cfg, cfg, trainable)
    except ConfigError as exc:
        flag = flags.get(exc.field.split("[")[0], exc.field)
        print(f"error: {flag}: {str(exc).split(': ', 1)[1]}", file=sys.stderr)
        return 2
    except (ValueError, OSError) as exc:
        print(f"error: --model: {exc}", file=sys.stderr)
        return 2
    share = counts["trainable"] / counts["total"]
    print(f"model {args.model}: LoRA r={cfg.r} alpha={cfg.alpha:g} on {cfg.modules} {cfg.target_modules}; "
          f"trains {trainable}")
    print(f"adapter parameters:   {counts['adapter']:,}")
    print(f"trainable parameters: {counts['trainable']:,} ({100 * share:.3f}% of {counts['total']:,} total)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
