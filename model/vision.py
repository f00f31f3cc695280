"""Vision features: SigLIP last hidden state before post-layernorm, resampled to the DTS grid."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers import SiglipVisionModel


def siglip_features(tower: SiglipVisionModel, pixel_values: torch.Tensor) -> torch.Tensor:
    """pixel_values (N, 3, S, S) -> (N, P*P, C): the encoder's last hidden state (post_layernorm not applied)."""
    embeds = tower.embeddings(pixel_values.to(tower.embeddings.patch_embedding.weight.dtype))
    return tower.encoder(inputs_embeds=embeds).last_hidden_state


def resample_grid(tokens: torch.Tensor, grid: int) -> torch.Tensor:
    """(N, P*P, C) tokens -> (N, C, grid, grid) by bilinear interpolation in fp32 (align_corners=False)."""
    n, count, c = tokens.shape
    side = int(round(count**0.5))
    if side * side != count:
        raise ValueError(f"vision tokens per frame ({count}) do not form a square grid")
    maps = tokens.transpose(1, 2).reshape(n, c, side, side)
    out = F.interpolate(maps.float(), size=(grid, grid), mode="bilinear", align_corners=False)
    return out.to(tokens.dtype).contiguous()
