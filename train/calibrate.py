"""Data-dependent start of a fresh projector (`stage.calibrate_projector`).

A vision encoder that has not learnt anything yet (the tiny preset trained from scratch) emits
features dominated by one shared direction; the per-sample differences that answer questions are a
small part of every visual token, and a fresh LLM learns to read them slowly. Before the first step
the stage reads a few training batches, measures every channel of the visual tokens the model
would emit and folds the map "centre, scale to `target_std`" into the projector's last layer
(`VideoXL2ForCausalLM.standardize_projector_output`). Training then goes on from those weights:
nothing is added to the model and nothing changes at inference.

The statistics are summed over all ranks, so every rank starts from the same weights.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch

from train.engine import all_reduce_sum


@dataclass(frozen=True)
class ChannelMoments:
    """Per-channel sums of visual tokens: count, sum and sum of squares (float64)."""

    count: int
    total: torch.Tensor
    total_sq: torch.Tensor

    def mean_std(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-channel mean and (population) standard deviation."""
        if self.count < 2:
            raise ValueError(f"calibrate_projector: need at least 2 visual tokens, got {self.count}")
        mean = self.total / self.count
        var = (self.total_sq / self.count - mean * mean).clamp_min(0.0)
        return mean, var.sqrt()


def visual_token_moments(model: Any, batches: Iterable[dict[str, Any]], max_batches: int,
                         device: torch.device) -> ChannelMoments:
    """Moments of the visual tokens of up to `max_batches` batches (those without frames are skipped)."""
    width = int(model.projector[-1].out_features)
    total = torch.zeros(width, dtype=torch.float64, device=device)
    total_sq = torch.zeros(width, dtype=torch.float64, device=device)
    count = 0
    dtype = model.projector[-1].weight.dtype
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for i, batch in enumerate(batches):
                if i >= max_batches:
                    break
                pixels = batch["pixel_values"]
                if pixels.shape[0] == 0:
                    continue
                tokens = model.encode_frames(pixels.to(device=device, dtype=dtype))
                flat = tokens.reshape(-1, width).double()
                total += flat.sum(0)
                total_sq += (flat * flat).sum(0)
                count += flat.shape[0]
    finally:
        model.train(was_training)
    return ChannelMoments(count=count, total=total, total_sq=total_sq)


def all_reduce_moments(moments: ChannelMoments) -> ChannelMoments:
    """Sum the moments over all ranks (identity without torch.distributed)."""
    width = moments.total.numel()
    dev = moments.total.device
    summed = all_reduce_sum([*moments.total.tolist(), *moments.total_sq.tolist(), float(moments.count)], dev)
    packed = torch.tensor(summed, dtype=torch.float64, device=dev)
    return ChannelMoments(count=int(summed[-1]), total=packed[:width], total_sq=packed[width:2 * width])


def calibrate_projector(model: Any, batches: Iterable[dict[str, Any]], max_batches: int, target_std: float,
                        device: torch.device) -> dict[str, float]:
    """Standardise the projector's output on the given batches (summed over ranks); returns what was
    measured before, for the run's log."""
    moments = all_reduce_moments(visual_token_moments(model, batches, max_batches, device))
    mean, std = moments.mean_std()
    model.standardize_projector_output(mean.float(), std.float(), target_std)
    return {"tokens": float(moments.count), "mean_norm": float(mean.norm()), "std_mean": float(std.mean()),
            "target_std": float(target_std)}
