"""Chunked/full blockwise prefill vs the dense-masked stock Qwen2 forward (logits and KV)."""

from __future__ import annotations

import pytest
import torch

from dense_reference import dense_forward, dense_visibility, synthetic_layout, tiny_qwen2
from model.inference.chunked_prefill import run_prefill
from model.inference.layout import VideoLayout, causal_pairs, plan_chunked, plan_full, plan_pairs


def _close(a: torch.Tensor, b: torch.Tensor) -> None:
    scale = b.abs().max().clamp(min=1e-6)
    assert float((a - b).abs().max() / scale) <= 1e-4


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_chunked_prefill_matches_dense_masked_reference(seed: int) -> None:
    gen = torch.Generator().manual_seed(100 + seed)
    num_groups = int(torch.randint(1, 14, (1,), generator=gen))
    chunk_groups = int(torch.randint(1, 4, (1,), generator=gen))
    prev_chunks = int(torch.randint(0, 4, (1,), generator=gen))
    kind, group = synthetic_layout(gen, num_groups, tokens_per_group=int(torch.randint(2, 7, (1,), generator=gen)),
                                   ts_tokens=int(torch.randint(1, 4, (1,), generator=gen)))
    llm = tiny_qwen2(seed, layers=2 + seed % 2, heads=4, kv_heads=2 if seed % 2 else 1)
    layout = VideoLayout.from_tensors(kind, group)
    embeds = torch.randn(layout.length, llm.config.hidden_size, generator=gen)
    visibility = dense_visibility(kind, group, chunk_groups, prev_chunks)
    ref_logits, ref_k, ref_v = dense_forward(llm, embeds, visibility)

    for block_chunks in (1, 1 + seed % 3):
        blocks = plan_chunked(layout, chunk_groups, prev_chunks, block_chunks=block_chunks)
        assert plan_pairs(blocks) == int(visibility.sum())
        res = run_prefill(llm, blocks, lambda s, e: embeds[s:e], layout.length + 3, return_all_logits=True)
        _close(res.all_logits, ref_logits)
        _close(res.last_logits, ref_logits[-1])
        for layer in range(llm.config.num_hidden_layers):
            _close(res.store.keys[layer][:, : layout.length], ref_k[layer])
            _close(res.store.values[layer][:, : layout.length], ref_v[layer])


def test_reference_detects_wrong_window() -> None:
    """The reference is sensitive to the window: a plan with another prev_chunks must disagree."""
    gen = torch.Generator().manual_seed(7)
    kind, group = synthetic_layout(gen, 8, 4)
    llm = tiny_qwen2(7)
    layout = VideoLayout.from_tensors(kind, group)
    embeds = torch.randn(layout.length, 64, generator=gen)
    ref_logits, _, _ = dense_forward(llm, embeds, dense_visibility(kind, group, 1, 1))
    res = run_prefill(llm, plan_chunked(layout, 1, 2), lambda s, e: embeds[s:e], layout.length,
                      return_all_logits=True)
    assert float((res.all_logits - ref_logits).abs().max()) > 1e-3


def test_full_plan_matches_plain_causal_forward() -> None:
    gen = torch.Generator().manual_seed(3)
    kind, group = synthetic_layout(gen, 5, 5)
    llm = tiny_qwen2(3)
    layout = VideoLayout.from_tensors(kind, group)
    embeds = torch.randn(layout.length, 64, generator=gen)
    with torch.no_grad():
        ref = llm(inputs_embeds=embeds[None]).logits[0]
    blocks = plan_full(layout, include_suffix=True)
    assert plan_pairs(blocks) == causal_pairs(layout.length)
    res = run_prefill(llm, blocks, lambda s, e: embeds[s:e], layout.length, return_all_logits=True)
    _close(res.all_logits, ref)


def test_prefill_rejects_bad_plans() -> None:
    gen = torch.Generator().manual_seed(4)
    kind, group = synthetic_layout(gen, 3, 3)
    layout = VideoLayout.from_tensors(kind, group)
    llm = tiny_qwen2(4)
    blocks = plan_chunked(layout, 1, 1)
    embeds = torch.randn(layout.length, 64)
    with pytest.raises(ValueError, match="capacity"):
        run_prefill(llm, blocks, lambda s, e: embeds[s:e], layout.length - 1)
    with pytest.raises(ValueError, match="contiguously"):
        run_prefill(llm, blocks[:1] + blocks[2:], lambda s, e: embeds[s:e], layout.length)
    with pytest.raises(ValueError, match="rows"):
        run_prefill(llm, blocks, lambda s, e: embeds[s : e + 1], layout.length)
