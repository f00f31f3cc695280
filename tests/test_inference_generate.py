"""generate_video end to end: equality with HF greedy decoding, streamed vision, stats, errors."""

from __future__ import annotations

import pytest
import torch

from dense_reference import VISUAL, synthetic_layout, tiny_qwen2
from model.inference import GenerationResult, generate_video


def test_full_full_equals_hf_generate_bare_llm() -> None:
    gen = torch.Generator().manual_seed(11)
    kind, group = synthetic_layout(gen, 6, 5)
    llm = tiny_qwen2(11)
    ids = torch.randint(5, 97, (kind.numel(),), generator=gen)
    vis = torch.randn(6, 5, 64, generator=gen)
    res = generate_video(llm, ids[None], None, (kind, group), prefill="full", decode="full",
                         max_new_tokens=12, visual_embeds=vis, eos_token_id=None, return_scores=True)
    emb = llm.get_input_embeddings()(ids).detach().clone()
    emb[kind == VISUAL] = vis.reshape(-1, 64)
    ref = llm.generate(inputs_embeds=emb[None], max_new_tokens=12, do_sample=False, eos_token_id=None,
                       pad_token_id=0, output_scores=True, return_dict_in_generate=True)
    assert res.token_ids.tolist() == ref.sequences[0].tolist()
    ref_scores = torch.cat(ref.scores)
    assert float((res.scores - ref_scores).abs().max() / ref_scores.abs().max()) <= 1e-4
    assert res.stats.pair_density == 1.0 and res.stats.kv_ratio == 1.0


def test_eos_stops_generation() -> None:
    gen = torch.Generator().manual_seed(12)
    kind, group = synthetic_layout(gen, 4, 3)
    llm = tiny_qwen2(12)
    ids = torch.randint(5, 97, (kind.numel(),), generator=gen)
    vis = torch.randn(4, 3, 64, generator=gen)
    free = generate_video(llm, ids, None, (kind, group), prefill="full", decode="full", max_new_tokens=8,
                          visual_embeds=vis, eos_token_id=None)
    stop = free.token_ids[2].item()
    first = free.token_ids.tolist().index(stop)
    cut = generate_video(llm, ids, None, (kind, group), prefill="full", decode="full", max_new_tokens=8,
                         visual_embeds=vis, eos_token_id=stop)
    assert cut.token_ids.tolist() == free.token_ids.tolist()[: first + 1]


@pytest.fixture(scope="module")
def tiny_video():
    model_pkg = pytest.importorskip("model")
    from model.sequence import build_sequence

    torch.manual_seed(0)
    cfg = model_pkg.build_preset("tiny")
    model = model_pkg.VideoXL2ForCausalLM(cfg).eval()
    tok = model_pkg.load_tokenizer("tiny")
    groups = 7
    built = build_sequence(tok, [{"from": "human", "value": "<image>\nWhat happens in the video?"}],
                           [4.0 * g for g in range(groups)], groups, cfg.tokens_per_group, for_generation=True)
    frames = torch.randn(groups * cfg.frames_per_group, 3, cfg.image_size, cfg.image_size)
    return model, built, frames


def test_full_full_equals_hf_generate_videoxl2(tiny_video) -> None:
    model, built, frames = tiny_video
    res = model.generate(built.input_ids[None], frames, layout=built, prefill="full", decode="full",
                         max_new_tokens=8, eos_token_id=None, return_scores=True)
    assert isinstance(res, GenerationResult)
    with torch.no_grad():
        emb = model.embed_inputs(built.input_ids[None], model.encode_frames(frames))
        ref = model.llm.generate(inputs_embeds=emb, max_new_tokens=8, do_sample=False, eos_token_id=None,
                                 pad_token_id=0, output_scores=True, return_dict_in_generate=True)
    assert res.token_ids.tolist() == ref.sequences[0].tolist()
    ref_scores = torch.cat(ref.scores)
    assert float((res.scores - ref_scores).abs().max() / ref_scores.abs().max()) <= 1e-4


def test_streamed_frames_callable_matches_tensor(tiny_video) -> None:
    model, built, frames = tiny_video
    fpg = model.config.frames_per_group
    calls: list[tuple[int, int]] = []

    def source(g0: int, g1: int) -> torch.Tensor:
        calls.append((g0, g1))
        return frames[g0 * fpg : g1 * fpg]

    kw = dict(layout=built, prefill="chunked", decode="bilevel", max_new_tokens=5, chunk_groups=2,
              prev_chunks=1, top_k=1, kv_pool=4, eos_token_id=None, block_chunks=1)
    a = generate_video(model, built.input_ids, frames, **kw)
    b = generate_video(model, built.input_ids, source, **kw)
    assert a.token_ids.tolist() == b.token_ids.tolist()
    assert max(g1 - g0 for g0, g1 in calls) <= 2 and sum(g1 - g0 for g0, g1 in calls) == 7
    assert a.stats.pair_density < 1.0 and a.stats.kv_ratio < 1.0 and a.stats.dense_chunks[0] == 0
    assert a.stats.vision_seconds > 0 and a.stats.prefill_seconds >= a.stats.vision_seconds


def test_visual_cache_encodes_each_frame_batch_once_and_changes_nothing(tiny_video) -> None:
    """Two questions about the same frames with a shared VisualCache: the second encodes nothing, and both
    give the tokens and logits of a run without the cache; other frames miss; a full cache stops adding."""
    from model.inference import VisualCache

    model, built, frames = tiny_video
    kw = dict(layout=built, prefill="chunked", decode="bilevel", max_new_tokens=5, chunk_groups=2,
              prev_chunks=1, top_k=1, kv_pool=4, eos_token_id=None, block_chunks=1, return_scores=True)
    plain = generate_video(model, built.input_ids, frames, **kw)
    cache = VisualCache(max_bytes=2**20)
    first = generate_video(model, built.input_ids, frames, visual_cache=cache, **kw)
    batches = cache.misses
    assert batches == 4 and cache.hits == 0  # 7 groups in batches of 2
    second = generate_video(model, built.input_ids, frames, visual_cache=cache, **kw)
    assert cache.misses == batches and cache.hits == batches
    for res in (first, second):
        assert res.token_ids.tolist() == plain.token_ids.tolist() and torch.equal(res.scores, plain.scores)
    generate_video(model, built.input_ids, frames + 1.0, visual_cache=cache, **kw)
    assert cache.misses == 2 * batches
    small = VisualCache(max_bytes=1)
    generate_video(model, built.input_ids, frames, visual_cache=small, **kw)
    generate_video(model, built.input_ids, frames, visual_cache=small, **kw)
    assert small.bytes == 0 and small.hits == 0 and small.misses == 2 * batches
    with pytest.raises(ValueError, match="max_bytes"):
        VisualCache(0)


def test_generate_errors(tiny_video) -> None:
    model, built, frames = tiny_video
    ids = built.input_ids
    with pytest.raises(ValueError, match="prefill"):
        generate_video(model, ids, frames, layout=built, prefill="dense")
    with pytest.raises(ValueError, match="decode"):
        generate_video(model, ids, frames, layout=built, decode="sparse")
    with pytest.raises(ValueError, match="layout"):
        generate_video(model, ids, frames)
    with pytest.raises(ValueError, match="batch size 1"):
        generate_video(model, ids[None].repeat(2, 1), frames, layout=built)
    with pytest.raises(ValueError, match="layout length"):
        generate_video(model, ids[:-1], frames, layout=built)
    with pytest.raises(ValueError, match="pixel_values"):
        generate_video(model, ids, frames[:-4], layout=built)
    for knob in ("chunk_groups", "kv_pool"):
        with pytest.raises(ValueError, match=knob):
            generate_video(model, ids, frames, layout=built, **{knob: 0})
    with pytest.raises(ValueError, match="top_k"):
        generate_video(model, ids, frames, layout=built, top_k=-1)
    with pytest.raises(ValueError, match="max_new_tokens"):
        generate_video(model, ids, frames, layout=built, max_new_tokens=0)
    with pytest.raises(ValueError, match="exactly one"):
        generate_video(model, ids, None, layout=built)
    last_video = int((built.token_kind == 3).nonzero().max()) + 1
    cut = (built.token_kind[:last_video], built.group_index[:last_video])
    with pytest.raises(ValueError, match="QUESTION"):
        generate_video(model, ids[:last_video], frames, layout=cut, decode="bilevel")


def test_image_layout_single_group(tiny_video) -> None:
    """An image prompt (one group, no timestamp tokens) goes through every mode."""
    from model import load_tokenizer
    from model.sequence import build_sequence

    model, _, frames = tiny_video
    built = build_sequence(load_tokenizer("tiny"), [{"from": "human", "value": "<image>\nDescribe."}], None, 1,
                           model.config.tokens_per_group, for_generation=True)
    px = frames[: model.config.frames_per_group]
    out = {(p, d): generate_video(model, built.input_ids, px, layout=built, prefill=p, decode=d,
                                  max_new_tokens=4, eos_token_id=None).token_ids.tolist()
           for p in ("full", "chunked") for d in ("full", "bilevel")}
    assert len({tuple(v) for v in out.values()}) == 1  # one chunk: dense window, always kept dense
