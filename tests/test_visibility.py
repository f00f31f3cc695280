"""Training visibility masks (model/visibility.py) against the token-by-token dense reference."""

from __future__ import annotations

import pytest
import torch
from test_model import make_batch

from dense_reference import dense_visibility, synthetic_layout, tiny_qwen2
from model import VideoXL2ForCausalLM, build_preset
from model.inference import generate_video
from model.pooled_attention import POOLED_SDPA
from model.sequence import TokenKind
from model.visibility import bilevel_visibility, causal_visibility, chunked_visibility
from train.config import ChunkedAttentionConfig
from train.objectives import TrainModule


def padded_batch(layouts: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, ...]:
    length = max(k.numel() for k, _ in layouts) + 3
    kind = torch.zeros(len(layouts), length, dtype=torch.long)
    group = torch.full((len(layouts), length), -1, dtype=torch.long)
    valid = torch.zeros(len(layouts), length, dtype=torch.bool)
    for i, (k, g) in enumerate(layouts):
        kind[i, :k.numel()], group[i, :k.numel()], valid[i, :k.numel()] = k, g, True
    return kind, group, valid


@pytest.mark.parametrize(("chunk_groups", "prev_chunks"), [(1, 0), (1, 1), (2, 1), (3, 2), (2, 5)])
def test_chunked_visibility_matches_the_dense_reference(chunk_groups: int, prev_chunks: int) -> None:
    gen = torch.Generator().manual_seed(chunk_groups * 10 + prev_chunks)
    layouts = [synthetic_layout(gen, num_groups=n, tokens_per_group=3, prefix=p, suffix=s)
               for n, p, s in ((5, 4, 3), (2, 6, 1), (7, 3, 5))]
    kind, group, valid = padded_batch(layouts)
    mask = chunked_visibility(kind, group, valid, chunk_groups, prev_chunks)
    assert mask.shape == (3, 1, kind.shape[1], kind.shape[1]) and mask.dtype == torch.bool
    for i, (k, g) in enumerate(layouts):
        n = k.numel()
        assert torch.equal(mask[i, 0, :n, :n], dense_visibility(k, g, chunk_groups, prev_chunks)), i
        assert not mask[i, 0, :n, n:].any()  # padding is never a key of a real token
        assert torch.equal(mask[i, 0, n:, :], torch.eye(kind.shape[1], dtype=torch.bool)[n:])


def test_rows_without_video_are_causal() -> None:
    kind = torch.tensor([[TokenKind.SYSTEM] * 3 + [TokenKind.TEXT] * 4 + [TokenKind.QUESTION] * 2])
    group = torch.full_like(kind, -1)
    valid = torch.ones_like(kind, dtype=torch.bool)
    valid[0, -1] = False
    assert torch.equal(chunked_visibility(kind, group, valid, 1, 0), causal_visibility(valid))
    assert torch.equal(causal_visibility(valid)[0, 0, :8, :8], torch.ones(8, 8, dtype=torch.bool).tril())


def test_bad_arguments_are_named() -> None:
    kind, group, valid = padded_batch([synthetic_layout(torch.Generator().manual_seed(0), 3, 2)])
    with pytest.raises(ValueError, match="chunk_groups"):
        chunked_visibility(kind, group, valid, 0, 1)
    with pytest.raises(ValueError, match="prev_chunks"):
        chunked_visibility(kind, group, valid, 1, -1)
    with pytest.raises(ValueError, match="same"):
        chunked_visibility(kind[:, 1:], group, valid, 1, 1)
    broken = group.clone()
    broken[kind == TokenKind.VISUAL] = -1
    with pytest.raises(ValueError, match="group_index"):
        chunked_visibility(kind, broken, valid, 1, 1)


def batch_layout(batch: dict[str, torch.Tensor], cfg) -> tuple[torch.Tensor, torch.Tensor]:
    """token_kind / group_index of tests.test_model.make_batch (3 timestamp tokens before each group)."""
    ids, t = batch["input_ids"], cfg.tokens_per_group
    visual = ids == cfg.vision_pad_token_id
    kind = torch.where(visual, int(TokenKind.VISUAL), int(TokenKind.TEXT))
    group = torch.where(visual, (visual.long().cumsum(1) - 1) // t, -1)
    for b in range(ids.shape[0]):
        for start in range(0, int(visual[b].sum()), t):
            first = int(torch.nonzero(visual[b])[start])
            kind[b, first - 3:first] = int(TokenKind.TIMESTAMP)
            group[b, first - 3:first] = start // t
    return kind, group


def test_training_under_a_visibility_mask() -> None:
    """The LLM uses a [B, 1, L, L] mask as is: causal_visibility gives the padding-mask loss, and a
    TrainModule with chunked_attention.fraction=1 trains every sample under chunked_visibility."""
    torch.manual_seed(0)
    cfg = build_preset("tiny")
    model = VideoXL2ForCausalLM(cfg).train()
    batch = make_batch(cfg, seed=2)
    kind, group = batch_layout(batch, cfg)
    ids, mask, labels, px = batch["input_ids"], batch["attention_mask"], batch["labels"], batch["pixel_values"]
    padded = model.lm_loss(ids, mask, labels, px)
    torch.testing.assert_close(model.lm_loss(ids, causal_visibility(mask.bool()), labels, px), padded,
                               rtol=1e-6, atol=1e-6)
    chunked = model.lm_loss(ids, chunked_visibility(kind, group, mask.bool(), 1, 0), labels, px)
    assert (chunked - padded).abs() > 1e-4  # the first sample has two groups: its second one sees less
    module = TrainModule(model, "lm", chunked_attention=ChunkedAttentionConfig(fraction=1.0, chunk_groups=1,
                                                                               prev_chunks=0))
    torch.testing.assert_close(module(ids, mask, labels, px, token_kind=kind, group_index=group), chunked)
    with pytest.raises(ValueError, match="token_kind"):
        module(ids, mask, labels, px)


@pytest.mark.parametrize(("dense_chunks", "kv_pool", "seed"), [([2], 4, 3), ([], 2, 4), ([1, 3], 3, 5)])
def test_bilevel_training_view_equals_inference_decoding(dense_chunks: list[int], kv_pool: int, seed: int) -> None:
    """The last prompt token's logits under bilevel_visibility + pooled attention are the first-token
    scores of generate_video with chunked prefill and bi-level decoding on the same dense chunks."""
    gen = torch.Generator().manual_seed(seed)
    kind, group = synthetic_layout(gen, 9, 6, ts_tokens=2, inner_text=True)
    llm = tiny_qwen2(seed, vocab=97)
    ids = torch.randint(5, 97, (kind.numel(),), generator=gen)
    vis = torch.randn(9, 6, 64, generator=gen)
    embeds = llm.get_input_embeddings()(ids).detach().clone()
    embeds[kind == TokenKind.VISUAL] = vis.reshape(-1, 64)
    ref = generate_video(llm, ids, None, (kind, group), visual_embeds=vis, eos_token_id=None, chunk_groups=2,
                         prev_chunks=1, prefill="chunked", decode="bilevel", dense_chunks=dense_chunks, top_k=0,
                         kv_pool=kv_pool, max_new_tokens=1, return_scores=True)
    dense = torch.zeros(1, 5, dtype=torch.bool)
    dense[0, [0, 4, *dense_chunks]] = True
    valid = torch.ones(1, kind.numel(), dtype=torch.bool)
    mask, pooling = bilevel_visibility(kind[None], group[None], valid, 2, 1, dense, kv_pool)
    sparse_groups = sum(1 for g in range(9) if not dense[0, g // 2])
    assert pooling.shape == (1, sparse_groups * -(-6 // kv_pool), kind.numel())  # windows per 6-token group
    torch.testing.assert_close(pooling.sum(-1), torch.ones(1, pooling.shape[1]))
    llm.set_attn_implementation(POOLED_SDPA)
    with torch.no_grad():
        logits = llm(inputs_embeds=embeds[None], attention_mask=mask, pooling=pooling).logits[0, -1]
    torch.testing.assert_close(logits, ref.scores[0], rtol=1e-5, atol=1e-5)
    with torch.no_grad():  # without pooled entries the suffix would see the raw keys: different logits
        plain = llm(inputs_embeds=embeds[None],
                    attention_mask=chunked_visibility(kind[None], group[None], valid, 2, 1)).logits[0, -1]
    assert (plain - logits).abs().max() > 1e-4


def test_train_module_bilevel_samples() -> None:
    """bilevel_fraction=1: every sample trains under bi-level decoding's view (a loss other than the
    chunked-only one, finite gradients); pooled entries without the pooled attention are refused."""
    torch.manual_seed(0)
    cfg = build_preset("tiny")
    model = VideoXL2ForCausalLM(cfg).train()
    groups, t, s = 4, cfg.tokens_per_group, cfg.image_size  # 4 one-group chunks: two of them sparse
    ids = torch.randint(6, cfg.text_config.vocab_size, (2, 4 + groups * (3 + t) + 6))
    for g in range(groups):
        ids[:, 4 + g * (3 + t) + 3:4 + (g + 1) * (3 + t)] = cfg.vision_pad_token_id
    mask = torch.ones_like(ids)
    mask[1, -2:] = 0
    labels = torch.where((ids == cfg.vision_pad_token_id) | (mask == 0), -100, ids)
    labels[:, :4] = -100
    px = torch.rand(2 * 4 * groups, 3, s, s) * 2 - 1
    kind, group = batch_layout({"input_ids": ids}, cfg)
    with pytest.raises(ValueError, match="pooling"):
        model.lm_loss(ids, mask, labels, px, pooling=torch.zeros(3, 1, ids.shape[1]))
    chunked = TrainModule(model, "lm", chunked_attention=ChunkedAttentionConfig(fraction=1.0, chunk_groups=1,
                                                                               prev_chunks=0))
    plain = chunked(ids, mask, labels, px, token_kind=kind, group_index=group)
    bilevel_cfg = ChunkedAttentionConfig(fraction=1.0, chunk_groups=1, prev_chunks=0, bilevel_fraction=1.0,
                                         top_k=0, kv_pool=4)
    module = TrainModule(model, "lm", chunked_attention=bilevel_cfg)
    att, pooling = module.visibility(mask, kind, group)
    assert pooling is not None and pooling.shape[1] > 0 and att.shape[-1] == ids.shape[1] + pooling.shape[1]
    loss = module(ids, mask, labels, px, token_kind=kind, group_index=group)
    assert (loss - plain).abs() > 1e-5
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
