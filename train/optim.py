"""Trainable-module selection, per-module AdamW parameter groups, warmup + cosine schedule."""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
from torch import nn

from train.config import ScheduleConfig


def set_trainable(modules: dict[str, nn.Module], trainable: list[str]) -> dict[str, int]:
    """Freeze every module, then unfreeze exactly those named; return trainable counts per name."""
    unknown = [n for n in trainable if n not in modules]
    if unknown:
        raise ValueError(f"stage.trainable: unknown modules {unknown} (model has {sorted(modules)})")
    for module in modules.values():
        module.requires_grad_(False)
    counts: dict[str, int] = {}
    for name in trainable:
        modules[name].requires_grad_(True)
        counts[name] = sum(p.numel() for p in modules[name].parameters())
    return counts


def no_decay_types() -> tuple[type[nn.Module], ...]:
    """Module types whose parameters are never weight-decayed: normalisations and embeddings
    (the Qwen2 LLM's RMSNorm included)."""
    from transformers.models.qwen2.modeling_qwen2 import Qwen2RMSNorm

    return (nn.LayerNorm, nn.GroupNorm, nn.RMSNorm, Qwen2RMSNorm, nn.Embedding)


def no_decay_params(module: nn.Module) -> set[int]:
    """Ids of `module`'s parameters excluded from weight decay: those owned by a `no_decay_types`
    module, and every parameter with fewer than two dimensions (biases, scales, tokens)."""
    types = no_decay_types()
    out: set[int] = set()
    for sub in module.modules():
        for p in sub.parameters(recurse=False):
            if isinstance(sub, types) or p.ndim < 2:
                out.add(id(p))
    return out


def param_groups(modules: dict[str, nn.Module], lrs: dict[str, float],
                 weight_decay: float) -> list[dict]:
    """AdamW groups per trainable module, each with its lr: decayed and not decayed (biases, norms,
    embeddings) when `weight_decay` > 0, a single group otherwise.

    Frozen parameters (requires_grad False) are left out, so the optimizer never sees them.
    A parameter shared by two modules is assigned to the first module that lists it.
    """
    seen: set[int] = set()
    groups: list[dict] = []
    for module_name, module in modules.items():
        decay, no_decay = [], []
        excluded = no_decay_params(module)
        for p in module.parameters():
            if not p.requires_grad or id(p) in seen:
                continue
            seen.add(id(p))
            (no_decay if id(p) in excluded else decay).append(p)
        splits = ((decay, weight_decay, "decay"), (no_decay, 0.0, "no_decay"))
        if weight_decay == 0.0:  # identical hyper-parameters: one group (fewer optimizer launches)
            splits = ((decay + no_decay, 0.0, "all"),)
        for params, wd, suffix in splits:
            if params:
                groups.append({"params": params, "lr": lrs[module_name], "weight_decay": wd,
                               "name": f"{module_name}/{suffix}"})
    if not groups:
        raise ValueError("stage.trainable: no trainable parameters")
    return groups


@dataclass
class WarmupCosine:
    """Multiplier on each group's base lr: linear warmup to 1, then cosine to `min_ratio`."""

    total_steps: int
    warmup_steps: int
    min_ratio: float = 0.0
    cosine: bool = True

    def __call__(self, step: int) -> float:
        if self.warmup_steps > 0 and step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        if not self.cosine:
            return 1.0
        span = max(1, self.total_steps - self.warmup_steps)
        progress = min(1.0, (step - self.warmup_steps) / span)
        return self.min_ratio + (1.0 - self.min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_schedule(sched: ScheduleConfig, total_steps: int) -> WarmupCosine:
    """The multiplier function for `total_steps` optimizer steps."""
    warmup = int(math.ceil(sched.warmup_ratio * total_steps))
    return WarmupCosine(total_steps=total_steps, warmup_steps=warmup, min_ratio=sched.min_lr_ratio,
                        cosine=sched.name == "cosine")


def restore_schedule(scheduler: torch.optim.lr_scheduler.LambdaLR, schedule: WarmupCosine) -> int | None:
    """Put this run's `schedule` back into `scheduler` after a checkpoint load, which restores the saved
    multiplier's fields (LambdaLR saves a callable object's state) and so the saved run's total steps.

    The run's step count can legitimately differ from the checkpoint's: a larger `loop.max_steps`, or a
    resume on another world size (an epoch is then another number of steps). With the saved total the
    cosine would reach its floor early and train the extra steps at `min_lr_ratio` (0 by default).
    Each group's current lr is recomputed at the scheduler's step. Returns the saved total steps when it
    differed (None when the schedule was already this run's).

    Raises ValueError when `scheduler` holds the `schedule` object itself (its fields are then the saved ones).
    """
    if any(fn is schedule for fn in scheduler.lr_lambdas):
        raise ValueError("schedule: is the scheduler's own multiplier, which the checkpoint load has already "
                         "overwritten; give the scheduler a copy (train.engine.build_engine does)")
    saved = [fn for fn in scheduler.lr_lambdas if isinstance(fn, WarmupCosine) and fn != schedule]
    if not saved:
        return None
    scheduler.lr_lambdas = [copy.copy(schedule) for _ in scheduler.lr_lambdas]
    for group, base in zip(scheduler.optimizer.param_groups, scheduler.base_lrs, strict=True):
        group["lr"] = base * schedule(scheduler.last_epoch)
    scheduler._last_lr = [group["lr"] for group in scheduler.optimizer.param_groups]
    return saved[0].total_steps


def build_optimizer(groups: list[dict], betas: tuple[float, float], eps: float) -> torch.optim.AdamW:
    """Client AdamW (DeepSpeed wraps it for ZeRO)."""
    return torch.optim.AdamW(groups, betas=betas, eps=eps)
