"""Masked SDPA computed block by block along the diagonal of its mask.

The [B, 1, L, L + M] visibility mask of a packed row (model/packing.py: samples side by side, none attending
across a boundary, each under its own chunked or bi-level view) is block diagonal over the L sequence keys:
the row splits into ranges whose queries see sequence keys only inside their own range (the M extra columns,
bi-level decoding's pooled entries, belong to the sample whose queries see them). Attention over each range
alone, with the extra columns its queries may see, equals attention over the whole row under the mask, and
costs the sum of the ranges' squared lengths instead of the row's squared length.
"""

from __future__ import annotations

from typing import Any, TypeGuard

import torch
from transformers.integrations.sdpa_attention import sdpa_attention_forward

__all__ = ["block_plan", "blockwise_sdpa", "diagonal_blocks", "is_block_mask"]

MIN_BLOCK = 32  # tokens: a shorter range joins the next one (one SDPA call per range costs ~0.1 ms on CPU)


def diagonal_blocks(mask: torch.Tensor, length: int, min_block: int = MIN_BLOCK) -> list[list[tuple[int, int]]]:
    """Per row, [start, end) query ranges tiling ``0 .. length`` such that no query of a range sees a sequence
    key (column < ``length``) outside it, each at least ``min_block`` long except possibly the last.

    ``mask``: BoolTensor[B, length, length + M] (True = may attend). A cut at p is kept when no query at or
    after p sees a key before p and no query before p sees a key at or after p, so any mask is split exactly,
    a causal one with no boundary into the single range ``(0, length)``.
    Raises ValueError if ``mask`` is not 3-D bool with ``length`` rows and at least ``length`` columns.
    """
    if mask.dtype != torch.bool or mask.dim() != 3 or mask.shape[1] != length or mask.shape[2] < length:
        raise ValueError(f"mask: expected a bool [B, {length}, >= {length}] tensor, got {mask.dtype} "
                         f"{tuple(mask.shape)}")
    seq = mask[:, :, :length].to(torch.uint8)
    seen = seq.amax(-1) > 0
    first = torch.where(seen, seq.argmax(-1), length)  # argmax gives the first maximum
    last = torch.where(seen, length - 1 - seq.flip(-1).argmax(-1), -1)
    after_min = first.flip(-1).cummin(-1).values.flip(-1)  # lowest key seen by a query at or after p
    before_max = last.cummax(-1).values  # highest key seen by a query at or before p
    p = torch.arange(1, length, device=mask.device)
    cut = (after_min[:, 1:] >= p) & (before_max[:, :-1] < p)
    out = []
    for row in cut.tolist():
        blocks, start = [], 0
        for i, is_cut in enumerate(row, start=1):
            if is_cut and i - start >= min_block:
                blocks.append((start, i))
                start = i
        blocks.append((start, length))
        out.append(blocks)
    return out


def is_block_mask(attention_mask: torch.Tensor | None, length: int | None = None) -> TypeGuard[torch.Tensor]:
    """Whether `attention_mask` is the boolean [B, 1, L, L + M] visibility that `blockwise_sdpa` splits
    (``length``: the queries' L, checked when given)."""
    return attention_mask is not None and attention_mask.dim() == 4 and attention_mask.dtype == torch.bool \
        and attention_mask.shape[1] == 1 and (length is None or attention_mask.shape[2] == length)


def block_plan(attention_mask: torch.Tensor) -> list[list[tuple[int, int, torch.Tensor | None]]]:
    """Per row of a BoolTensor[B, 1, L, L + M] mask, its diagonal blocks (`diagonal_blocks`) as ``(start, end,
    key columns)``: None when the block's queries see only keys ``start .. end``, else the LongTensor of those
    keys followed by the extra columns (>= L) its queries see. The mask is the same in every layer, so a
    forward computes this once (`VideoXL2ForCausalLM.lm_loss`) and every layer's `blockwise_sdpa` reads it.
    Raises ValueError as `diagonal_blocks` does.
    """
    length = attention_mask.shape[2]
    blocks = diagonal_blocks(attention_mask[:, 0], length)
    if all(len(row) == 1 for row in blocks) or attention_mask.shape[3] == length:
        return [[(a, e, None) for a, e in row] for row in blocks]
    plan = []
    for b, row in enumerate(blocks):
        entries = []
        for a, e in row:  # the extra columns this range's queries see, after its own keys
            seen = attention_mask[b, 0, a:e, length:].any(0).nonzero().flatten() + length
            entries.append((a, e, torch.cat([torch.arange(a, e, device=seen.device), seen])))
        plan.append(entries)
    return plan


def blockwise_sdpa(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                   attention_mask: torch.Tensor | None,
                   attention_blocks: list[list[tuple[int, int, torch.Tensor | None]]] | None = None,
                   **kwargs: Any) -> tuple[torch.Tensor, None]:
    """transformers' SDPA attention (``sdpa_attention_forward``) run per diagonal block of a boolean mask.

    query [B, H, L, D], key/value [B, H_kv, L + M, D], attention_mask BoolTensor[B, 1, L, L + M];
    `attention_blocks`: the mask's `block_plan`, computed here when not given. Returns ([B, L, H, D], None),
    equal to the whole-row call up to float round-off. Without a 4-D boolean mask, or when no row splits, it
    is the whole-row call.
    """
    length = query.shape[2]
    if not is_block_mask(attention_mask, length):
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    plan = block_plan(attention_mask) if attention_blocks is None else attention_blocks
    if all(len(row) == 1 for row in plan):
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    rows = []
    for b, row in enumerate(plan):
        pieces = []
        for a, e, cols in row:
            mask, k, v = attention_mask[b:b + 1, :, a:e], key[b:b + 1], value[b:b + 1]
            if cols is None:
                mask, k, v = mask[..., a:e], k[:, :, a:e], v[:, :, a:e]
            else:
                mask, k, v = mask[..., cols], k[:, :, cols], v[:, :, cols]
            out, _ = sdpa_attention_forward(module, query[b:b + 1, :, a:e], k, v, mask, **kwargs)
            pieces.append(out)  # [1, e - a, H, D]
        rows.append(torch.cat(pieces, dim=1))
    return torch.cat(rows, dim=0), None
