"""Training visibility masks (model/visibility.py) against the token-by-token dense reference."""

from __future__ import annotations

import pytest
import torch
from test_model import make_batch

from dense_reference import dense_visibility, synthetic_layout
from model import VideoXL2ForCausalLM, build_preset
from model.sequence import TokenKind
from model.visibility import causal_visibility, chunked_visibility
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
