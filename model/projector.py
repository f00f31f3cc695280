"""mlp2x_gelu projector and the 2x2 video pooling that follows it."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def build_projector(in_features: int, out_features: int) -> nn.Sequential:
    """Linear(in -> out) -> GELU (exact) -> Linear(out -> out); indices 0 and 2 hold the weights."""
    return nn.Sequential(nn.Linear(in_features, out_features), nn.GELU(), nn.Linear(out_features, out_features))


def pool_grid(tokens: torch.Tensor, grid: int, pool: int) -> torch.Tensor:
    """(G, grid*grid, d) row-major tokens -> (G, (grid // pool)**2, d) by pool x pool average pooling."""
    g, count, d = tokens.shape
    if count != grid * grid:
        raise ValueError(f"expected {grid * grid} tokens per group, got {count}")
    maps = tokens.transpose(1, 2).reshape(g, d, grid, grid)
    pooled = F.avg_pool2d(maps, kernel_size=pool, stride=pool)
    return pooled.flatten(2).transpose(1, 2)
