"""Attention over the sequence's keys plus pooled entries, for training under bi-level decoding.

`pooled_sdpa` is registered with transformers' `AttentionInterface` as ``"videoxl2_pooled_sdpa"``.
Given `pooling` [B, M, L] (from :func:`model.visibility.bilevel_visibility`) it appends
`pooling @ K` and `pooling @ V` (post-RoPE, per layer, as bi-level decoding's compacted cache holds
them) after the L sequence keys, then runs transformers' SDPA attention with the [B, 1, L, L + M]
mask, per diagonal block of the mask (`model.block_attention`: the samples of a packed row apart); without
`pooling` it is that attention over the sequence's keys alone.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import AttentionInterface

from .block_attention import blockwise_sdpa

POOLED_SDPA = "videoxl2_pooled_sdpa"


def pooled_sdpa(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                attention_mask: torch.Tensor | None, pooling: torch.Tensor | None = None,
                **kwargs: Any) -> tuple[torch.Tensor, None]:
    """SDPA attention whose keys/values are extended by `pooling`-weighted averages of themselves."""
    if pooling is not None and pooling.shape[1] > 0:
        weights = pooling.to(key.dtype)[:, None]  # [B, 1, M, L] over key heads
        key = torch.cat([key, weights @ key], dim=2)
        value = torch.cat([value, weights @ value], dim=2)
    return blockwise_sdpa(module, query, key, value, attention_mask, **kwargs)


AttentionInterface.register(POOLED_SDPA, pooled_sdpa)
