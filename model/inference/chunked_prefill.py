"""Prefill a sequence block by block (dense or chunked plan) into a :class:`KVStore`.

Blocks are processed through *all* layers one after another (block-major), so only one block's
activations and one chunk's visual embeddings are alive at a time; the KV store is the only state
that grows with the number of frames.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from model.inference.attention import Recorder, forward_block
from model.inference.kv_cache import KVStore
from model.inference.layout import Block, plan_pairs

# embed_fn(start, end) -> FloatTensor[end - start, d]: input embeddings of sequence tokens [start, end).
EmbedFn = Callable[[int, int], torch.Tensor]


@dataclass
class PrefillResult:
    """Output of :func:`run_prefill`."""

    store: KVStore
    length: int  # tokens prefilled; store slots [0, length) are valid and equal their positions
    last_logits: torch.Tensor  # [vocab] logits of the last prefilled token
    all_logits: torch.Tensor | None  # [length, vocab] when requested
    pairs: int  # allowed (query, key) pairs attended


def new_store(llm: torch.nn.Module, capacity: int, dtype: torch.dtype) -> KVStore:
    """An empty store shaped for ``llm`` (a transformers Qwen2ForCausalLM)."""
    cfg = llm.config
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    device = next(llm.parameters()).device
    return KVStore(cfg.num_hidden_layers, cfg.num_key_value_heads, head_dim, capacity, dtype, device)


@torch.no_grad()
def run_prefill(
    llm: torch.nn.Module, blocks: list[Block], embed_fn: EmbedFn, capacity: int,
    return_all_logits: bool = False, recorder: Recorder | None = None,
) -> PrefillResult:
    """Run ``blocks`` (contiguous, starting at 0, in order) and return the filled store."""
    if not blocks or blocks[0].start != 0:
        raise ValueError("a prefill plan must start at token 0")
    for a, b in zip(blocks, blocks[1:], strict=False):
        if a.end != b.start:
            raise ValueError("prefill blocks must tile the sequence contiguously")
    length = blocks[-1].end
    if capacity < length:
        raise ValueError(f"store capacity {capacity} < prefill length {length}")
    dtype = llm.get_input_embeddings().weight.dtype
    store = new_store(llm, capacity, dtype)
    logits: list[torch.Tensor] = []
    hidden = None
    for block in blocks:
        x = embed_fn(block.start, block.end)
        if x.shape[0] != block.end - block.start:
            raise ValueError(f"embed_fn returned {x.shape[0]} rows for block [{block.start}, {block.end})")
        positions = torch.arange(block.start, block.end)
        hidden = forward_block(llm, x.to(dtype), positions, store, block.start, block.parts, recorder)
        if return_all_logits:
            logits.append(llm.lm_head(hidden))
        del x
    store.length = length
    last = llm.lm_head(hidden[-1:])[0]
    all_logits = torch.cat(logits) if return_all_logits else None
    return PrefillResult(store, length, last, all_logits, plan_pairs(blocks))
