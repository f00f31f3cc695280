"""Memo of the frozen vision tower + DTS output per group of frames.

While a stage trains neither the vision tower nor DTS, a group's `synthesize_groups` tokens are a
fixed function of its pixels, and a stage that loops over its data several times recomputes them
for every repeat. This cache keys each group by a SHA-256 of its pixel bytes (shape and dtype
included), so a hit is the same input by content, whatever sample, rank order or batch it came in.
It lives for one stage run and holds at most `max_bytes` of tokens; once full it stops adding.

Values equal a fresh computation up to float round-off (a group computed inside another batch may
differ in the last bits), so with the cache on a resumed run matches an uninterrupted one within
fp32 tolerance rather than bit for bit.
"""

from __future__ import annotations

import torch
from torch import nn

from model.memo import ContentMemo


class FrozenFeatureCache(ContentMemo):
    """Content-keyed memo (`model.memo.ContentMemo`) of `model.synthesize_groups` for frozen vision tower +
    DTS, one entry per group of frames."""

    def group_tokens(self, model: nn.Module, pixel_values: torch.Tensor) -> torch.Tensor:
        """`model.synthesize_groups(pixel_values)` (no grad), computing only the groups not cached yet."""
        frames = int(model.config.frames_per_group)
        if pixel_values.dim() != 4 or pixel_values.shape[0] % frames:
            raise ValueError(f"pixel_values: need (N, 3, S, S) with N a multiple of {frames}, "
                             f"got {tuple(pixel_values.shape)}")
        keys = [self.key(pixel_values[i:i + frames]) for i in range(0, pixel_values.shape[0], frames)]
        missing = [g for g, k in enumerate(keys) if k not in self]
        fresh: dict[bytes, torch.Tensor] = {}
        if missing:
            index = torch.tensor([g * frames + f for g in missing for f in range(frames)])
            with torch.no_grad():
                computed = model.synthesize_groups(pixel_values[index.to(pixel_values.device)])
            for g, tokens in zip(missing, computed, strict=True):
                fresh.setdefault(keys[g], tokens)
        self.hits += len(keys) - len(missing)
        self.misses += len(missing)
        for key, tokens in fresh.items():
            if not self.put(key, tokens.clone()):
                break
        return torch.stack([fresh[k] if k in fresh else self.get(k) for k in keys])
