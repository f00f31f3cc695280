"""Bi-level KV decoding: question-driven chunk relevance, dense-chunk selection, KV compaction.

Relevance (computed by the model at run time): the question span is run once over the *full*
prefilled cache; at every layer its attention probabilities are summed over the keys of each video
chunk (visual and timestamp keys), then averaged over heads, question tokens and layers. The
``top_k`` highest-scoring chunks (other than the always-kept first and last chunk) are dense.

Compaction, per layer: the prefix (system block and text before the video), every timestamp/text
token, and all tokens of dense chunks are kept one-to-one; in sparse chunks each group's run of
visual tokens is average-pooled along the sequence in windows of ``kv_pool`` (the last window of a
run may be shorter). Keys are post-RoPE, so a pooled key is the mean of rotated keys (it sits at the
mean position, see docs/architecture.md); later tokens continue at position = full prompt length.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from model.inference.attention import forward_block
from model.inference.kv_cache import KVStore
from model.inference.layout import AttnPart, Kind, VideoLayout


@torch.no_grad()
def chunk_relevance(
    llm: torch.nn.Module, store: KVStore, layout: VideoLayout, chunk_groups: int, suffix_embeds: torch.Tensor
) -> torch.Tensor:
    """FloatTensor[num_chunks]: mean attention mass of the question on each chunk's keys.

    ``store`` must hold the full prefill of ``[0, video_end)``; the question's K/V are written to
    slots ``[video_end, video_end + S)`` (scratch, the caller compacts afterwards)."""
    v_end, s = layout.video_end, suffix_embeds.shape[0]
    if s == 0:
        raise ValueError("relevance scoring needs a non-empty question span")
    if store.capacity < v_end + s:
        raise ValueError("store too small for the scoring pass")
    n_chunks = layout.num_chunks(chunk_groups)
    # bucket n_chunks collects the prefix and the question's own keys (ignored)
    bucket = layout.chunk_of(chunk_groups)[:v_end].clone()
    bucket[bucket < 0] = n_chunks
    bucket = torch.cat([bucket, torch.full((s,), n_chunks, dtype=torch.long)])
    mass = torch.zeros(n_chunks + 1, dtype=torch.float64)

    def record(layer_idx: int, part: AttnPart, probs: torch.Tensor, keys: torch.Tensor) -> None:
        mass.index_add_(0, bucket[keys.cpu()], probs.sum(dim=(0, 1)).double().cpu())

    part = AttnPart(slice(0, s), (0, v_end + s), torch.arange(v_end, v_end + s))
    positions = torch.arange(v_end, v_end + s)
    forward_block(llm, suffix_embeds, positions, store, v_end, [part], recorder=record)
    heads = llm.config.num_attention_heads
    return (mass[:n_chunks] / (heads * s * llm.config.num_hidden_layers)).float()


def select_dense(
    num_chunks: int, top_k: int, scores: torch.Tensor | None = None, dense_chunks: Sequence[int] | None = None
) -> list[int]:
    """Sorted dense chunk ids: first + last chunk plus either ``dense_chunks`` (precomputed) or
    the ``top_k`` best-scoring other chunks."""
    if not isinstance(top_k, int) or top_k < 0:
        raise ValueError(f"top_k must be an int >= 0, got {top_k!r}")
    chosen = {0, num_chunks - 1}
    if dense_chunks is not None:
        for c in dense_chunks:
            if not 0 <= int(c) < num_chunks:
                raise ValueError(f"dense chunk index {c} outside 0..{num_chunks - 1}")
            chosen.add(int(c))
        return sorted(chosen)
    if scores is None or scores.numel() != num_chunks:
        raise ValueError("select_dense needs one score per chunk (or dense_chunks)")
    others = [c for c in torch.argsort(scores, descending=True, stable=True).tolist() if c not in chosen]
    chosen.update(others[:top_k])
    return sorted(chosen)


def compaction_map(
    layout: VideoLayout, chunk_groups: int, dense: Sequence[int], kv_pool: int
) -> tuple[torch.Tensor, int]:
    """``(dst [video_end], kept)``: kept slot of every prefilled token (pooled tokens share a slot)."""
    if not isinstance(kv_pool, int) or kv_pool < 1:
        raise ValueError(f"kv_pool must be a positive int, got {kv_pool!r}")
    v_end = layout.video_end
    kind = layout.token_kind[:v_end]
    group = layout.group_index[:v_end]
    chunk = layout.chunk_of(chunk_groups)[:v_end]
    sparse = torch.ones(layout.num_chunks(chunk_groups) + 1, dtype=torch.bool)
    sparse[list(dense)] = False
    sparse[-1] = False  # index -1 (outside the video) is never pooled
    pooled = (kind == Kind.VISUAL) & sparse[chunk]
    # rank of each visual token within its group's visual tokens -> pooling window id
    rank = torch.zeros(v_end, dtype=torch.long)
    vis = torch.nonzero(kind == Kind.VISUAL).reshape(-1)
    if vis.numel():
        _, counts = torch.unique_consecutive(group[vis], return_counts=True)
        starts = torch.repeat_interleave(torch.cumsum(counts, 0) - counts, counts)
        rank[vis] = torch.arange(vis.numel()) - starts
    window = torch.where(pooled, group * (layout.length + 1) + rank // kv_pool, torch.full_like(rank, -1))
    new_slot = torch.ones(v_end, dtype=torch.bool)
    same = pooled[1:] & pooled[:-1] & (window[1:] == window[:-1])
    new_slot[1:] = ~same
    dst = torch.cumsum(new_slot.long(), 0) - 1
    return dst, int(dst[-1]) + 1 if v_end else 0


@torch.no_grad()
def compact(store: KVStore, dst: torch.Tensor, kept: int, extra_capacity: int) -> KVStore:
    """A new store holding the compacted prefix ``[0, kept)`` and ``extra_capacity`` free slots.
    Layers are moved one at a time and released from ``store``."""
    n = dst.numel()
    k0 = store.keys[0]
    out = KVStore(store.num_layers, k0.shape[0], k0.shape[2], kept + extra_capacity, k0.dtype, k0.device)
    dst = dst.to(k0.device)
    counts = torch.bincount(dst, minlength=kept).to(k0.dtype)[None, :, None]
    for layer in range(store.num_layers):
        for src, tgt in ((store.keys, out.keys), (store.values, out.values)):
            summed = torch.zeros(k0.shape[0], kept, k0.shape[2], dtype=k0.dtype, device=k0.device)
            summed.index_add_(1, dst, src[layer][:, :n])
            tgt[layer][:, :kept] = summed / counts
        store.release_layer(layer)
    out.length = kept
    return out
