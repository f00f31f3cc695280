"""Attention of packed rows: several samples share a row, none attends across a sample boundary.

A packed row (data/packing.py) names the sample of every token in ``segment_ids`` [B, L] (0, 1, ... in
row order, -1 on padding) and restarts ``position_ids`` at 0 for every sample, so rotary positions are
those the sample has alone. The LLM then needs per-sample boundaries in its attention:

- with a flash-attention implementation, transformers' padding-free path: no attention mask, only the
  restarting ``position_ids`` (flash-attention varlen over the samples);
- with :data:`PACKED_SDPA` (registered with transformers' `AttentionInterface`, e.g. on CPU): no mask either;
  causal SDPA runs on each sample's slice of the row (the samples are found where the position ids restart
  at 0), so attention costs the sum of the samples' squared lengths, not the row's, and no L x L mask exists;
- otherwise (SDPA/eager) an explicit block-diagonal causal [B, 1, L, L] mask.
A 2-D all-ones mask would let every sample attend to the ones before it.

Per-sample visibility masks (``model.visibility``: chunked prefill, bi-level decoding) are composed
block-diagonally with :func:`compose_block_diagonal` from the same masks computed on the samples alone;
under such a mask :data:`PACKED_SDPA` (and ``model.pooled_attention``'s SDPA) attend per diagonal block, one
sample at a time (``model.block_attention``).
"""

from __future__ import annotations

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from .block_attention import blockwise_sdpa
from .sequence import IGNORE_INDEX

PACKED_SDPA = "videoxl2_packed_sdpa"


def sample_spans(segment_ids: torch.Tensor) -> list[list[tuple[int, int]]]:
    """Per row, the [start, end) token range of each sample in row order (``segment_ids`` [B, L])."""
    if segment_ids.dim() != 2:
        raise ValueError(f"segment_ids: expected [B, L], got shape {tuple(segment_ids.shape)}")
    spans: list[list[tuple[int, int]]] = []
    for row in segment_ids.tolist():
        out: list[tuple[int, int]] = []
        for pos, seg in enumerate(row):
            if seg < 0:
                continue
            if seg == len(out):
                out.append((pos, pos + 1))
            elif seg == len(out) - 1 and out[-1][1] == pos:
                out[-1] = (out[-1][0], pos + 1)
            else:
                raise ValueError(f"segment_ids: sample {seg} of a row is not one contiguous run numbered in order")
        spans.append(out)
    return spans


def block_causal_mask(segment_ids: torch.Tensor) -> torch.Tensor:
    """BoolTensor[B, 1, L, L] (True = may attend): causal within each sample, nothing across samples;
    a padding query (segment -1) sees only itself, so no row of the mask is empty."""
    if segment_ids.dim() != 2:
        raise ValueError(f"segment_ids: expected [B, L], got shape {tuple(segment_ids.shape)}")
    length = segment_ids.shape[1]
    valid = segment_ids >= 0
    same = (segment_ids[:, :, None] == segment_ids[:, None, :]) & valid[:, :, None]
    causal = torch.ones(length, length, dtype=torch.bool, device=segment_ids.device).tril()
    eye = torch.eye(length, dtype=torch.bool, device=segment_ids.device)
    return ((same & causal[None]) | (eye[None] & ~valid[:, :, None]))[:, None]


def unpack_rows(segment_ids: torch.Tensor, *tensors: torch.Tensor,
                fill: tuple[int, ...] | None = None) -> tuple[list[tuple[int, int, int]], list[torch.Tensor]]:
    """Cut packed [B, L] tensors into one row per sample, right-padded to the longest sample.

    Returns ``(places, unpacked)``: ``places[s] = (row, start, length)`` of sample s (row-major order)
    and each tensor as [S, L_max] (padding value ``fill[i]``, default 0) plus, last, the validity mask.
    """
    spans = sample_spans(segment_ids)
    places = [(r, a, b - a) for r, row in enumerate(spans) for a, b in row]
    if not places:
        raise ValueError("segment_ids: no sample in the batch")
    longest = max(n for _, _, n in places)
    fills = fill if fill is not None else (0,) * len(tensors)
    out = [t.new_full((len(places), longest), f) for t, f in zip(tensors, fills, strict=True)]
    valid = torch.zeros(len(places), longest, dtype=torch.bool, device=segment_ids.device)
    for s, (r, a, n) in enumerate(places):
        for src, dst in zip(tensors, out, strict=True):
            dst[s, :n] = src[r, a:a + n]
        valid[s, :n] = True
    return places, [*out, valid]


def compose_block_diagonal(places: list[tuple[int, int, int]], masks: torch.Tensor, shape: tuple[int, int],
                           pooling: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Per-sample visibility masks -> the packed rows' block-diagonal mask (and pooled entries).

    ``masks`` [S, 1, Ls, Ls (+ M)] are the samples' masks alone (:func:`unpack_rows` order), with M pooled
    columns when ``pooling`` [S, M, Ls] is given (``model.visibility.bilevel_visibility``; a sample's
    pooled entries are its non-zero rows, first). ``shape`` = (B, L) of the packed batch. Returns
    ``(mask [B, 1, L, L (+ M_row)], pooling [B, M_row, L] or None)``: each sample's block sits on the
    diagonal at its place, its pooled entries in its own columns after the L sequence keys; padding
    queries see themselves only.
    """
    bsz, length = shape
    dev = masks.device
    seq = masks.shape[2]
    counts = [0] * len(places)
    if pooling is not None:
        counts = (pooling.abs().sum(-1) > 0).sum(-1).tolist()
    per_row = [0] * bsz
    for (r, _, _), m in zip(places, counts, strict=True):
        per_row[r] += m
    pooled = max(per_row)
    out = torch.zeros(bsz, 1, length, length + pooled, dtype=torch.bool, device=dev)
    out_pool = torch.zeros(bsz, pooled, length, dtype=torch.float32, device=dev) if pooling is not None else None
    used = torch.zeros(bsz, length, dtype=torch.bool, device=dev)
    offset = [0] * bsz
    for s, ((r, a, n), m) in enumerate(zip(places, counts, strict=True)):
        out[r, 0, a:a + n, a:a + n] = masks[s, 0, :n, :n]
        used[r, a:a + n] = True
        if m:
            assert pooling is not None and out_pool is not None
            c = length + offset[r]
            out[r, 0, a:a + n, c:c + m] = masks[s, 0, :n, seq:seq + m]
            out_pool[r, offset[r]:offset[r] + m, a:a + n] = pooling[s, :m, :n]
            offset[r] += m
    idx = torch.arange(length, device=dev)
    out[:, 0, idx, idx] |= ~used  # padding sees itself
    return out, out_pool


def supervised_targets(labels: torch.Tensor) -> int:
    """Number of next-token targets of a [B, L] label batch (labels[:, 1:] != -100): the denominator of
    the token-mean loss (``VideoXL2ForCausalLM.lm_loss``)."""
    return int((labels[:, 1:] != IGNORE_INDEX).sum())


def packed_sdpa(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                position_ids: torch.Tensor | None = None, **kwargs) -> tuple[torch.Tensor, None]:
    """Attention of packed rows without a mask: causal SDPA per sample (a transformers attention function).

    query [B, H, L, D], key/value [B, H_kv, L, D], position_ids [B, L] restarting at 0 for every sample (and
    for the padding after the last one). Returns ([B, L, H, D], None). With an `attention_mask` (per-sample
    visibility, e.g. chunked prefill's) it is transformers' SDPA attention under that mask, run per diagonal
    block of it (`model.block_attention`); without `position_ids`, transformers' SDPA attention unchanged.
    """
    if attention_mask is not None:
        return blockwise_sdpa(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs)
    if position_ids is None:
        return sdpa_attention_forward(module, query, key, value, None, dropout=dropout, scaling=scaling, **kwargs)
    bsz, heads, length, _ = query.shape
    groups = heads // key.shape[1]
    pos = position_ids.expand(bsz, length)
    rows = []
    for b in range(bsz):
        starts = (pos[b] == 0).nonzero().flatten().tolist()
        if not starts or starts[0] != 0:
            raise ValueError("position_ids: a packed row must start a sample at position 0")
        pieces = []
        for a, e in zip(starts, [*starts[1:], length], strict=True):
            k, v = key[b:b + 1, :, a:e], value[b:b + 1, :, a:e]
            if groups > 1:
                k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
            pieces.append(torch.nn.functional.scaled_dot_product_attention(
                query[b:b + 1, :, a:e], k, v, dropout_p=dropout, is_causal=True, scale=scaling))
        rows.append(torch.cat(pieces, dim=2))
    return torch.cat(rows, dim=0).transpose(1, 2).contiguous(), None


def packed_sdpa_mask(*args, attention_mask: torch.Tensor | None = None, **kwargs) -> torch.Tensor | None:
    """The mask of :data:`PACKED_SDPA`: none for packed rows (no 2-D mask given), else SDPA's."""
    if attention_mask is None:
        return None
    return sdpa_mask(*args, attention_mask=attention_mask, **kwargs)


AttentionInterface.register(PACKED_SDPA, packed_sdpa)
AttentionMaskInterface.register(PACKED_SDPA, packed_sdpa_mask)
