"""Prefill a sequence block by block (dense or chunked plan) into a :class:`KVStore`.

Blocks are processed through *all* layers one after another (block-major), so only one block's
activations and one chunk's visual embeddings are alive at a time; the KV store is the only state
that grows with the number of frames.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch

from model.inference.attention import Recorder, forward_block
from model.inference.kv_cache import KVStore
from model.inference.layout import Block, part_pairs

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
    llm: torch.nn.Module, blocks: Iterable[Block], embed_fn: EmbedFn, capacity: int,
    return_all_logits: bool = False, recorder: Recorder | None = None,
) -> PrefillResult:
    """Run ``blocks`` (contiguous from token 0, in order; may be a lazy iterator) into a new store."""
    dtype = llm.get_input_embeddings().weight.dtype
    store = new_store(llm, capacity, dtype)
    logits: list[torch.Tensor] = []
    hidden = None
    end, pairs = 0, 0
    for block in blocks:
        if block.start != end:
            raise ValueError("prefill blocks must tile the sequence contiguously from token 0")
        if block.end > capacity:
            raise ValueError(f"store capacity {capacity} < prefill length {block.end}")
        x = embed_fn(block.start, block.end)
        if x.shape[0] != block.end - block.start:
            raise ValueError(f"embed_fn returned {x.shape[0]} rows for block [{block.start}, {block.end})")
        positions = torch.arange(block.start, block.end)
        hidden = forward_block(llm, x.to(dtype), positions, store, block.start, block.parts, recorder)
        if return_all_logits:
            logits.append(llm.lm_head(hidden))
        pairs += sum(part_pairs(p) for p in block.parts)
        end = block.end
        del x
    if hidden is None:
        raise ValueError("empty prefill plan")
    store.length = end
    last = llm.lm_head(hidden[-1:])[0]
    all_logits = torch.cat(logits) if return_all_logits else None
    return PrefillResult(store, end, last, all_logits, pairs)
