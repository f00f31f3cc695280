"""Rank-0 training logs: console line + tqdm bar, JSONL metrics file, wandb, and the FLOP/MFU estimate.

FLOP model (per optimizer step, summed over ranks), with "units" of 2·N·tokens for a forward pass:
  each module m in vision_tower -> dts -> projector -> llm costs  c_m · 2 · N_m · tokens_m  where
  c_m = 3 if m is trainable (forward + activation grads + weight grads), 2 if m is frozen but a
  trainable module sits before it or m trains LoRA adapters only (forward + activation grads),
  1 otherwise (forward only);
  tokens_m = frames·patches for the vision tower, frames·grid² for DTS, groups·grid² for the
  projector, text+visual sequence tokens for the LLM (N_llm excludes the input embedding table).
Attention adds c_m · 2 · L · d · S² per sequence of length S (QKᵀ and AV, 2·S²·d each, forward),
i.e. the usual 12·L·d·S per token for a trainable LLM. MFU = FLOPs / step seconds / (peak · world).
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ORDER = ("vision_tower", "dts", "projector", "llm")


def _factor(name: str, trainable: set[str], adapted: frozenset[str] = frozenset()) -> int:
    if name in trainable and name not in adapted:
        return 3
    if name in adapted:  # LoRA: frozen base weights, activation gradients (adapter FLOPs are negligible)
        return 2
    upstream = ORDER[: ORDER.index(name)]
    return 2 if any(u in trainable for u in upstream) else 1


@dataclass
class FlopModel:
    """Per-module parameter counts and shapes needed by the FLOP formula in the module docstring."""

    params: dict[str, int]
    trainable: set[str]
    patches_per_frame: int
    vision_layers: int
    vision_hidden: int
    grid_tokens: int
    frames_per_group: int
    llm_layers: int
    llm_hidden: int
    visual_only: bool = False  # DTS pretraining runs vision + DTS (+ decoder) only
    adapted: frozenset[str] = frozenset()  # parts trained through LoRA adapters (frozen base weights)

    def step_flops(self, frames: float, tokens: float, seq_sq_sum: float) -> float:
        """FLOPs of one optimizer step given its frames, tokens and Σ S² of sequences (pass totals
        over all ranks for the step's total, as the trainer does before dividing by world size)."""
        t, a = self.trainable, self.adapted
        total = 0.0
        f_v = _factor("vision_tower", t, a)
        total += f_v * 2 * self.params["vision_tower"] * frames * self.patches_per_frame
        total += f_v * 2 * self.vision_layers * self.vision_hidden * frames * self.patches_per_frame**2
        total += _factor("dts", t, a) * 2 * self.params["dts"] * frames * self.grid_tokens
        if self.visual_only:
            dec = self.params.get("dts_decoder", 0)
            return total + 3 * 2 * dec * frames * self.grid_tokens
        groups = frames / self.frames_per_group
        total += _factor("projector", t, a) * 2 * self.params["projector"] * groups * self.grid_tokens
        f_l = _factor("llm", t, a)
        total += f_l * 2 * self.params["llm"] * tokens
        total += f_l * 2 * self.llm_layers * self.llm_hidden * seq_sq_sum
        return total


def flop_model_for(train_module: Any, trainable: list[str], adapted: Sequence[str] = ()) -> FlopModel:
    """Build the FLOP model from a `TrainModule` (counted before DeepSpeed partitions weights); parts in
    `adapted` train LoRA adapters only (factor 2, their adapter parameters are not counted)."""
    model = train_module.model
    cfg = model.config
    from train.lora import adapter_parameter_names

    params = {}
    for name in ORDER:
        part = getattr(model, name)
        adapters = adapter_parameter_names(part)  # base weights only: the adapters' FLOPs are negligible
        params[name] = sum(p.numel() for n, p in part.named_parameters() if n not in adapters)
    params["llm"] -= model.llm.get_input_embeddings().weight.numel()
    if hasattr(train_module, "dts_decoder"):
        params["dts_decoder"] = sum(p.numel() for p in train_module.dts_decoder.parameters())
    vc, tc = cfg.vision_config, cfg.text_config
    return FlopModel(params=params, trainable=set(trainable),
                     patches_per_frame=(vc.image_size // vc.patch_size) ** 2,
                     vision_layers=vc.num_hidden_layers, vision_hidden=vc.hidden_size,
                     grid_tokens=cfg.interp_grid**2, frames_per_group=cfg.frames_per_group,
                     llm_layers=tc.num_hidden_layers, llm_hidden=tc.hidden_size,
                     visual_only=train_module.loss_name == "dts_reconstruction", adapted=frozenset(adapted))


def resolve_wandb_mode(configured: str | None) -> str:
    """Config value, else $WANDB_MODE, else offline."""
    return configured or os.environ.get("WANDB_MODE") or "offline"


class MetricsLogger:
    """Writes metrics on rank 0 to `<output_dir>/metrics.jsonl`, the console/tqdm and wandb."""

    def __init__(self, output_dir: Path, is_main: bool, total_steps: int, start_step: int,
                 wandb_mode: str, project: str, run_name: str, config: dict[str, Any],
                 console_every: int, use_tqdm: bool) -> None:
        self.is_main = is_main
        self.console_every = console_every
        self._wandb = None
        self._bar = None
        self._file = None
        if not is_main:
            return
        output_dir.mkdir(parents=True, exist_ok=True)
        self.path = output_dir / "metrics.jsonl"
        self._file = self.path.open("a", encoding="utf-8")
        if wandb_mode != "disabled":
            import wandb

            wandb_dir = output_dir / "wandb_runs"
            wandb_dir.mkdir(parents=True, exist_ok=True)
            self._wandb = wandb.init(project=project, name=run_name, dir=str(wandb_dir), mode=wandb_mode,
                                     config=config, resume="allow", reinit="finish_previous")
        if use_tqdm:
            from tqdm import tqdm

            self._bar = tqdm(total=total_steps, initial=start_step, desc=run_name, dynamic_ncols=True,
                             file=sys.stderr, mininterval=1.0)

    @property
    def wandb_dir(self) -> str | None:
        return None if self._wandb is None else str(self._wandb.dir)

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        if not self.is_main:
            return
        record = {"step": step, "time": time.time(), **metrics}
        assert self._file is not None
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        if self._wandb is not None:
            self._wandb.log({k: v for k, v in metrics.items() if isinstance(v, int | float)}, step=step)
        if self._bar is not None:
            self._bar.update(1)
            self._bar.set_postfix(loss=f"{metrics.get('loss', float('nan')):.4f}", refresh=False)
        if step % self.console_every == 0:
            line = self.format_line(step, metrics)
            if self._bar is not None:
                self._bar.write(line, file=sys.stderr)
            else:
                print(line, file=sys.stderr, flush=True)

    def log_eval(self, step: int, metrics: dict[str, float]) -> None:
        """A validation record (`val/...` keys, no `loss` key) at `step`: JSONL file, wandb, one console line."""
        if not self.is_main or self._file is None:
            return
        self._file.write(json.dumps({"step": step, "time": time.time(), **metrics}) + "\n")
        self._file.flush()
        if self._wandb is not None:
            self._wandb.log(dict(metrics), step=step)
        line = f"step {step} " + " ".join(f"{k} {v:.4f}" if k.endswith("loss") else f"{k} {v:.0f}"
                                          for k, v in metrics.items())
        if self._bar is not None:
            self._bar.write(line, file=sys.stderr)
        else:
            print(line, file=sys.stderr, flush=True)

    @staticmethod
    def format_line(step: int, m: dict[str, Any]) -> str:
        lrs = " ".join(f"{k[3:]}={v:.2e}" for k, v in m.items() if k.startswith("lr/"))
        skipped = " ".join(f"{k[8:]}={int(v)}" for k, v in m.items() if k.startswith("skipped/") and v)
        return (f"step {step} loss {m.get('loss', float('nan')):.4f} gnorm {m.get('grad_norm', float('nan')):.3f} "
                f"{lrs} tok/s {m.get('tokens_per_s', 0):.0f} samp/s {m.get('samples_per_s', 0):.2f} "
                f"vis/samp {m.get('visual_tokens_per_sample', 0):.0f} nonfinite {int(m.get('nonfinite_total', 0))} "
                f"mfu {m.get('mfu', 0) * 100:.3f}% skipped[{skipped}]")

    def event(self, name: str, step: int, **fields: Any) -> None:
        """A non-metric record in the JSONL file (e.g. resume, signal stop); has no `loss` key."""
        if not self.is_main or self._file is None:
            return
        self._file.write(json.dumps({"event": name, "step": step, "time": time.time(), **fields}) + "\n")
        self._file.flush()
        line = f"[{name}] step {step} {fields}"
        if self._bar is not None:
            self._bar.write(line, file=sys.stderr)
        else:
            print(line, file=sys.stderr, flush=True)

    def summary(self, values: dict[str, Any]) -> None:
        if self.is_main and self._wandb is not None:
            for k, v in values.items():
                self._wandb.summary[k] = v

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._wandb is not None:
            self._wandb.finish()
            self._wandb = None
