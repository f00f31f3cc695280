"""Bi-level KV decoding: compaction, dense-chunk selection, relevance and position consistency."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import DynamicCache

from dense_reference import TIMESTAMP, VISUAL, synthetic_layout, tiny_qwen2
from model.inference import generate_video
from model.inference.bilevel import chunk_relevance, compaction_map, select_dense
from model.inference.chunked_prefill import run_prefill
from model.inference.layout import VideoLayout, plan_full


def _setup(seed: int, groups: int = 9, tpg: int = 6):
    gen = torch.Generator().manual_seed(seed)
    kind, group = synthetic_layout(gen, groups, tpg, ts_tokens=2, inner_text=False)
    llm = tiny_qwen2(seed, vocab=97)
    ids = torch.randint(5, 97, (kind.numel(),), generator=gen)
    vis = torch.randn(groups, tpg, 64, generator=gen)
    emb = llm.get_input_embeddings()(ids).detach().clone()
    emb[kind == VISUAL] = vis.reshape(-1, 64)
    return llm, kind, group, ids, vis, emb


def _gen(llm, ids, kind, group, vis, **kw):
    kw.setdefault("max_new_tokens", 6)
    return generate_video(llm, ids, None, (kind, group), visual_embeds=vis, eos_token_id=None,
                          chunk_groups=2, prev_chunks=1, **kw)


@pytest.mark.parametrize("prefill", ["full", "chunked"])
def test_bilevel_without_compression_equals_full_decoding(prefill: str) -> None:
    llm, kind, group, ids, vis, _ = _setup(1)
    kw = dict(prefill=prefill, max_new_tokens=10, return_scores=True)
    full = _gen(llm, ids, kind, group, vis, decode="full", **kw)
    no_pool = _gen(llm, ids, kind, group, vis, decode="bilevel", top_k=0, kv_pool=1, **kw)
    all_dense = _gen(llm, ids, kind, group, vis, decode="bilevel", top_k=99, kv_pool=4, **kw)
    pooled = _gen(llm, ids, kind, group, vis, decode="bilevel", top_k=0, kv_pool=4, **kw)
    for other in (no_pool, all_dense):
        assert torch.equal(full.token_ids, other.token_ids)
        torch.testing.assert_close(other.scores, full.scores, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(pooled.scores[0], full.scores[0], rtol=1e-4, atol=1e-5)
    assert no_pool.stats.kv_ratio == 1.0 and all_dense.stats.kv_ratio == 1.0


def _manual_pooled_cache(cache_k, cache_v, kind, group, dense_chunk_of_group, pool):
    """Independent pooling: lists of source indices per kept entry, built token by token."""
    entries, cur = [], None
    for i in range(len(kind)):
        g = int(group[i])
        if int(kind[i]) == VISUAL and g >= 0 and not dense_chunk_of_group(g):
            if cur is not None and cur[0] == g and len(cur[1]) < pool:
                cur[1].append(i)
                continue
            cur = (g, [i])
            entries.append(cur[1])
        else:
            cur = None
            entries.append([i])
    ks = [torch.stack([k[:, idx].mean(1) for idx in entries], 1) for k in cache_k]
    vs = [torch.stack([v[:, idx].mean(1) for idx in entries], 1) for v in cache_v]
    return ks, vs, len(entries)


def test_bilevel_matches_hf_decoding_on_manually_pooled_cache() -> None:
    llm, kind, group, ids, vis, emb = _setup(2)
    layout = VideoLayout.from_tensors(kind, group)
    v_end, length, s = layout.video_end, layout.length, layout.suffix_length
    dense = [2]  # plus first (0) and last (4) chunk of 2 groups each
    res = _gen(llm, ids, kind, group, vis, prefill="full", decode="bilevel", kv_pool=4, dense_chunks=dense,
               max_new_tokens=6, return_scores=True)
    assert res.stats.dense_chunks == [0, 2, 4]

    with torch.no_grad():
        cache = DynamicCache(config=llm.config)
        llm(inputs_embeds=emb[None, :v_end], cache=cache, use_cache=True)
        ks = [layer.keys[0] for layer in cache.layers]
        vs = [layer.values[0] for layer in cache.layers]
        pk, pv, kept = _manual_pooled_cache(ks, vs, kind[:v_end], group[:v_end],
                                            lambda g: g // 2 in (0, 2, 4), 4)
        pooled = DynamicCache(config=llm.config)
        for i in range(len(pk)):
            pooled.update(pk[i][None], pv[i][None], i)
        mask = torch.zeros(1, 1, s, kept + s)
        mask[0, 0, :, kept:] = torch.triu(torch.full((s, s), torch.finfo(torch.float32).min), 1)
        out = llm(inputs_embeds=emb[None, v_end:], position_ids=torch.arange(v_end, length)[None],
                  attention_mask=mask, cache=pooled, use_cache=True)
        tokens = [int(out.logits[0, -1].argmax())]
        ref_scores = [out.logits[0, -1]]
        for step in range(5):
            n = kept + s + step + 1
            out = llm(input_ids=torch.tensor([[tokens[-1]]]), position_ids=torch.tensor([[length + step]]),
                      attention_mask=torch.zeros(1, 1, 1, n), cache=pooled, use_cache=True)
            tokens.append(int(out.logits[0, -1].argmax()))
            ref_scores.append(out.logits[0, -1])
    assert res.token_ids.tolist() == tokens
    ref = torch.stack(ref_scores)
    assert float((res.scores - ref).abs().max() / ref.abs().max()) <= 1e-4
    bpt = res.stats.full_kv_bytes // length
    assert res.stats.kept_kv_bytes == (kept + s) * bpt


def test_relevance_equals_hf_attention_mass() -> None:
    llm, kind, group, ids, vis, emb = _setup(3)
    layout = VideoLayout.from_tensors(kind, group)
    v_end = layout.video_end
    res = run_prefill(llm, plan_full(layout, include_suffix=False), lambda s, e: emb[s:e], layout.length)
    scores = chunk_relevance(llm, res.store, layout, 2, emb[v_end:])
    llm.set_attn_implementation("eager")
    with torch.no_grad():
        attn = llm(inputs_embeds=emb[None], output_attentions=True).attentions
    chunk = torch.full((v_end,), -1)
    inside = group[:v_end] >= 0
    chunk[inside] = group[:v_end][inside] // 2
    ref = torch.zeros(layout.num_chunks(2))
    for a in attn:
        rows = a[0, :, v_end:, :v_end]
        for c in range(ref.numel()):
            ref[c] += rows[..., chunk == c].sum(-1).mean()
    ref /= len(attn)
    assert torch.allclose(scores, ref, rtol=1e-4, atol=1e-6)


def test_select_dense() -> None:
    scores = torch.tensor([0.9, 0.1, 0.5, 0.3, 0.8])
    assert select_dense(5, 2, scores) == [0, 2, 3, 4]
    assert select_dense(5, 0, scores) == [0, 4]
    assert select_dense(5, 9, scores) == [0, 1, 2, 3, 4]
    assert select_dense(5, 2, dense_chunks=[1]) == [0, 1, 4]
    with pytest.raises(ValueError, match="outside"):
        select_dense(5, 2, dense_chunks=[5])
    with pytest.raises(ValueError, match="top_k"):
        select_dense(5, -1, scores)
    with pytest.raises(ValueError, match="one score"):
        select_dense(5, 1, torch.ones(3))


@pytest.mark.parametrize("pool", [1, 2, 4, 5])
def test_compaction_map_counts(pool: int) -> None:
    gen = torch.Generator().manual_seed(pool)
    kind, group = synthetic_layout(gen, 7, 9, ts_tokens=3)
    layout = VideoLayout.from_tensors(kind, group)
    dense = [0, 3]
    dst, kept = compaction_map(layout, 1, dense, pool)
    v_end = layout.video_end
    sparse_groups = [g for g in range(7) if g not in dense]
    expected = v_end - sum(9 - math.ceil(9 / pool) for _ in sparse_groups)
    assert kept == expected
    counts = torch.bincount(dst, minlength=kept)
    assert int(counts.max()) <= pool and int(counts.sum()) == v_end
    # timestamps and prefix are never merged with anything
    single = (kind[:v_end] == TIMESTAMP) | (group[:v_end] < 0)
    assert bool((counts[dst[single]] == 1).all())
    with pytest.raises(ValueError, match="kv_pool"):
        compaction_map(layout, 1, dense, 0)
