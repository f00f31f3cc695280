"""Greedy generation for one video prompt: full/chunked prefill, full/bi-level KV decoding."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from model.inference.attention import forward_block
from model.inference.bilevel import chunk_relevance, compact, compaction_map, select_dense
from model.inference.chunked_prefill import run_prefill
from model.inference.kv_cache import KVStore
from model.inference.layout import AttnPart, VideoLayout, causal_pairs, iter_chunked_plan, plan_full
from model.inference.stats import GenerationStats, PeakMemory
from model.inference.visual import FrameSource, PromptEmbedder, VisualCache


@dataclass
class GenerationResult:
    """Generated ids (LongTensor[n], eos included when hit), what it cost, and (on request) the
    logits each id was chosen from (FloatTensor[n, vocab])."""

    token_ids: torch.Tensor
    stats: GenerationStats
    scores: torch.Tensor | None = None


def _eos_set(llm: torch.nn.Module, eos_token_id: int | Sequence[int] | None | str) -> set[int]:
    if eos_token_id == "auto":
        eos_token_id = llm.config.eos_token_id
    if eos_token_id is None:
        return set()
    if isinstance(eos_token_id, int):
        return {eos_token_id}
    return {int(e) for e in eos_token_id}


@torch.no_grad()
def greedy_decode(
    llm: torch.nn.Module, embedder: PromptEmbedder, store: KVStore, logits: torch.Tensor,
    next_slot: int, next_position: int, max_new_tokens: int, eos: set[int],
    scores: list[torch.Tensor] | None = None,
) -> list[int]:
    """Greedy loop: each new token attends to every stored entry and itself. Appends the logits of
    every step to ``scores`` when given."""
    out: list[int] = []
    for step in range(max_new_tokens):
        if scores is not None:
            scores.append(logits)
        tok = int(torch.argmax(logits))
        out.append(tok)
        if tok in eos or step == max_new_tokens - 1:
            break
        x = embedder.text(torch.tensor([tok]))
        part = AttnPart(slice(0, 1), (0, next_slot + 1), torch.tensor([next_slot]))
        hidden = forward_block(llm, x, torch.tensor([next_position]), store, next_slot, [part])
        logits = llm.lm_head(hidden[-1])
        next_slot += 1
        next_position += 1
    return out


def _validate(input_ids: torch.Tensor, layout: VideoLayout, prefill: str, decode: str,
              max_new_tokens: int, knobs: dict[str, int]) -> torch.Tensor:
    for name, value in knobs.items():
        low = 0 if name in ("prev_chunks", "top_k") else 1
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
    if prefill not in ("full", "chunked"):
        raise ValueError(f"prefill must be 'full' or 'chunked', got {prefill!r}")
    if decode not in ("full", "bilevel"):
        raise ValueError(f"decode must be 'full' or 'bilevel', got {decode!r}")
    if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be a positive int, got {max_new_tokens!r}")
    if input_ids.dim() == 2:
        if input_ids.shape[0] != 1:
            raise ValueError(f"generate_video handles batch size 1, got {input_ids.shape[0]}")
        input_ids = input_ids[0]
    if input_ids.dim() != 1 or input_ids.numel() != layout.length:
        raise ValueError(f"input_ids of shape {tuple(input_ids.shape)} do not match layout length {layout.length}")
    if decode == "bilevel" and layout.suffix_length == 0:
        raise ValueError("decode='bilevel' needs the QUESTION span after the video in the layout")
    return input_ids


@torch.no_grad()
def generate_video(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    pixel_values: FrameSource | None = None,
    layout: object = None,
    prefill: str = "chunked",
    decode: str = "bilevel",
    max_new_tokens: int = 32,
    chunk_groups: int = 4,
    prev_chunks: int = 3,
    top_k: int = 4,
    kv_pool: int = 4,
    eos_token_id: int | Sequence[int] | None | str = "auto",
    dense_chunks: Sequence[int] | None = None,
    visual_embeds: torch.Tensor | None = None,
    block_chunks: int = 2,
    return_scores: bool = False,
    visual_cache: VisualCache | None = None,
) -> GenerationResult:
    """Greedy generation for one video prompt (batch size 1).

    ``model``: a VideoXL2ForCausalLM (or a bare Qwen2 LM together with ``visual_embeds``).
    ``pixel_values``: frames ``[G * frames_per_group, 3, S, S]`` or a callable ``(g0, g1) -> frames``
    (see :mod:`model.inference.visual`); ``visual_embeds [G, T, d]`` bypasses vision instead.
    ``layout``: a BuiltSequence, VideoLayout or ``(token_kind, group_index)``.
    ``dense_chunks``: precomputed dense chunk ids for bi-level decoding (skips relevance scoring).
    ``eos_token_id``: ``"auto"`` uses the LM config's eos; None never stops early.
    ``block_chunks``: chunks batched per prefill block (execution only; same visibility and result).
    ``return_scores``: also return the logits of every generated step.
    ``visual_cache``: a memo of encoded frame batches shared across prompts (same result, encoded once).
    """
    if layout is None:
        raise ValueError("generate_video needs layout= (token_kind + group_index, e.g. the BuiltSequence)")
    layout = VideoLayout.coerce(layout)
    knobs = dict(chunk_groups=chunk_groups, prev_chunks=prev_chunks, top_k=top_k, kv_pool=kv_pool,
                 block_chunks=block_chunks)
    input_ids = _validate(torch.as_tensor(input_ids), layout, prefill, decode, max_new_tokens, knobs)
    llm = model.llm if hasattr(model, "llm") else model
    embedder = PromptEmbedder(model, input_ids, layout, pixel_values, visual_embeds,
                              encode_groups=chunk_groups * block_chunks, cache=visual_cache)
    length, v_end, s = layout.length, layout.video_end, layout.suffix_length
    bilevel = decode == "bilevel"
    if prefill == "full":
        blocks = plan_full(layout, include_suffix=not bilevel)
    else:
        blocks = iter_chunked_plan(layout, chunk_groups, prev_chunks, not bilevel, block_chunks)
    dense: list[int] | None = None
    device = next(llm.parameters()).device
    with PeakMemory(device) as pre:
        res = run_prefill(llm, blocks, embedder, capacity=length + max_new_tokens)
    store, logits, kept, next_slot = res.store, res.last_logits, length, length
    # the question sees every earlier token (it is scored over the full cache in bilevel mode)
    pairs = res.pairs + (s * v_end + causal_pairs(s) if bilevel else 0)
    del res
    eos = _eos_set(llm, eos_token_id)
    with PeakMemory(device) as dec:
        if bilevel:
            question = embedder(v_end, length)
            n_chunks = layout.num_chunks(chunk_groups)
            scores = None if dense_chunks is not None else chunk_relevance(llm, store, layout, chunk_groups, question)
            dense = select_dense(n_chunks, top_k, scores, dense_chunks)
            dst, kept_video = compaction_map(layout, chunk_groups, dense, kv_pool)
            store = compact(store, dst, kept_video, extra_capacity=s + max_new_tokens)
            kept, next_slot = kept_video + s, kept_video + s
            part = AttnPart(slice(0, s), (0, next_slot), torch.arange(kept_video, next_slot))
            hidden = forward_block(llm, question, torch.arange(v_end, length), store, kept_video, [part])
            logits = llm.lm_head(hidden[-1])
        scores: list[torch.Tensor] | None = [] if return_scores else None
        tokens = greedy_decode(llm, embedder, store, logits, next_slot, length, max_new_tokens, eos, scores)
    bpt = store.bytes_per_token()
    stats = GenerationStats(
        prefill=prefill, decode=decode, prompt_tokens=length,
        pair_density=pairs / causal_pairs(length),
        kept_kv_bytes=kept * bpt, full_kv_bytes=length * bpt,
        prefill_seconds=pre.seconds, decode_seconds=dec.seconds, prefill_cpu_seconds=pre.cpu_seconds,
        decode_cpu_seconds=dec.cpu_seconds, vision_seconds=embedder.vision_seconds,
        prefill_peak_bytes=pre.peak_bytes, decode_peak_bytes=dec.peak_bytes, memory_method=pre.method,
        dense_chunks=dense,
    )
    return GenerationResult(torch.tensor(tokens, dtype=torch.long), stats,
                            torch.stack(scores) if return_scores else None)
