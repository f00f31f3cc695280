"""model/block_attention.py: the diagonal blocks of a visibility mask, and SDPA run per block against the
whole-row call (values and gradients)."""

from __future__ import annotations

import pytest
import torch
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from model.block_attention import blockwise_sdpa, diagonal_blocks
from model.packing import block_causal_mask

# one packed row: samples of 40, 50, 3 and 45 tokens, then 10 padding tokens
SEGMENTS = [0] * 40 + [1] * 50 + [2] * 3 + [3] * 45 + [-1] * 10


class Heads(torch.nn.Module):
    """What transformers' SDPA reads off an attention layer: 4 query heads share 2 key/value heads."""

    num_key_value_groups = 2
    is_causal = True


def packed_mask(extra_per_sample: int) -> torch.Tensor:
    """BoolTensor[1, 1, L, L + M]: causal within each sample, plus `extra_per_sample` extra columns (pooled
    entries) per sample that only that sample's queries see, from its first query on."""
    seg = torch.tensor([SEGMENTS])
    mask = block_causal_mask(seg)
    length, samples = seg.shape[1], int(seg.max()) + 1
    extra = torch.zeros(1, 1, length, samples * extra_per_sample, dtype=torch.bool)
    for s in range(samples):
        rows = (seg[0] == s).nonzero().flatten()
        extra[0, 0, rows, s * extra_per_sample:(s + 1) * extra_per_sample] = True
    return torch.cat([mask, extra], dim=-1)


def test_blocks_follow_the_samples_and_join_short_ones() -> None:
    mask = packed_mask(2)[:, 0]
    length = len(SEGMENTS)
    # cuts at every sample end (40, 90, 93, 138) and between padding tokens (each sees only itself); the
    # 3-token sample joins the next one, the padding one block
    assert diagonal_blocks(mask, length) == [[(0, 40), (40, 90), (90, 138), (138, 148)]]
    assert diagonal_blocks(mask, length, min_block=1)[0][:4] == [(0, 40), (40, 90), (90, 93), (93, 138)]
    causal = torch.ones(1, length, length, dtype=torch.bool).tril()
    crossing = mask.clone()
    crossing[0, 100, 60] = True  # a query of the fourth sample sees a key of the second: no cut between them
    assert diagonal_blocks(torch.cat([causal, crossing[:, :, :length]]), length) == [
        [(0, length)], [(0, 40), (40, 138), (138, 148)]]
    with pytest.raises(ValueError, match="mask: expected a bool"):
        diagonal_blocks(mask.float(), length)


@pytest.mark.parametrize("extra_per_sample", [0, 3])
def test_blockwise_sdpa_equals_the_whole_row(extra_per_sample: int) -> None:
    torch.manual_seed(0)
    mask = packed_mask(extra_per_sample)
    whole_causal = torch.ones(1, 1, len(SEGMENTS), mask.shape[-1], dtype=torch.bool).tril()
    masks = torch.cat([mask, whole_causal])  # row 2 does not split: both rows in one call
    length, keys = masks.shape[2], masks.shape[3]
    q = torch.randn(2, 4, length, 8, requires_grad=True)
    k = torch.randn(2, 2, keys, 8, requires_grad=True)
    v = torch.randn(2, 2, keys, 8, requires_grad=True)
    out, _ = blockwise_sdpa(Heads(), q, k, v, masks, scaling=0.3)
    ref, _ = sdpa_attention_forward(Heads(), q, k, v, masks, scaling=0.3)
    assert out.shape == ref.shape == (2, length, 4, 8)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
    weights = torch.randn_like(ref)
    grads = torch.autograd.grad((out * weights).sum(), (q, k, v))
    ref_grads = torch.autograd.grad((ref * weights).sum(), (q, k, v))
    for g, r in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(g, r, rtol=1e-5, atol=1e-6)
