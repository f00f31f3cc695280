"""DTS against an independent loop-based reimplementation of both layouts (temporal / released)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from model.dts import DTS, SamePadConv3d, TemporalAttention, group_frames

CHANNELS, GROUPS, EPS, MAX_REL, FRAMES = 16, 4, 1e-6, 64, 4


def ref_group_norm(x: torch.Tensor, groups: int, weight: torch.Tensor, bias: torch.Tensor, eps: float) -> torch.Tensor:
    """GroupNorm over (C/groups x all trailing dims) per sample, written out."""
    shape = x.shape
    xg = x.reshape(shape[0], groups, -1)
    mean = xg.mean(-1, keepdim=True)
    var = ((xg - mean) ** 2).mean(-1, keepdim=True)
    y = ((xg - mean) / torch.sqrt(var + eps)).reshape(shape)
    view = (1, -1) + (1,) * (len(shape) - 2)
    return y * weight.reshape(view) + bias.reshape(view)


def ref_group(feats: torch.Tensor, released: bool) -> torch.Tensor:
    """(N, C, H, W) -> (G, C, 4, H, W): released reads memory in order; temporal stacks frames on time."""
    n, c, h, w = feats.shape
    if released:
        flat = feats.contiguous().reshape(-1)
        return torch.stack([flat[i * c * 4 * h * w:(i + 1) * c * 4 * h * w].reshape(c, 4, h, w)
                            for i in range(n // 4)])
    return torch.stack([torch.stack([feats[4 * g + t] for t in range(4)], dim=1) for g in range(n // 4)])


def ref_dts(groups_in: torch.Tensor, w: dict[str, torch.Tensor], prefix: str, released: bool,
            norm_groups: int, eps: float, max_rel: int) -> torch.Tensor:
    """Loop-based DTS on (G, C, T, H, W) using official-style weight names `prefix + encoder.N.*`."""
    x = groups_in + w[prefix + "temporal_encoding"].t()[None, :, :, None, None]
    stages = sum(1 for k in w if k.startswith(prefix) and k.endswith(".conv.weight"))
    for s in range(stages):
        # spatial attention
        p = f"{prefix}encoder.{3 * s}."
        b, c, t, hh, ww = x.shape
        h = ref_group_norm(x, norm_groups, w[p + "norm.weight"], w[p + "norm.bias"], eps)

        def conv1(name: str, z: torch.Tensor, pp: str = p) -> torch.Tensor:
            weight = w[pp + name + ".weight"]
            return torch.einsum("oc,bcthw->bothw", weight.reshape(weight.shape[0], -1), z) \
                + w[pp + name + ".bias"][None, :, None, None, None]

        q, k, v = conv1("q", h), conv1("k", h), conv1("v", h)
        out = torch.zeros_like(x)
        for bi in range(b):
            for ti in range(t):
                qq = q[bi, :, ti].reshape(c, -1).t()
                kk = k[bi, :, ti].reshape(c, -1).t()
                vv = v[bi, :, ti].reshape(c, -1).t()
                att = torch.softmax(qq @ kk.t() / math.sqrt(c), dim=-1)
                out[bi, :, ti] = (att @ vv).t().reshape(c, hh, ww)
        x = x + conv1("proj_out", out)
        # temporal attention at every spatial location
        p = f"{prefix}encoder.{3 * s + 1}."
        seq = x.permute(0, 3, 4, 1, 2).reshape(-1, c, t)
        hn = ref_group_norm(seq, norm_groups, w[p + "norm.weight"], w[p + "norm.bias"], eps)
        qkv = torch.einsum("oc,nct->not", w[p + "qkv.weight"][:, :, 0], hn) + w[p + "qkv.bias"][None, :, None]
        q, k, v = qkv[:, :c], qkv[:, c:2 * c], qkv[:, 2 * c:]
        tk = w[p + "relative_position_k.embeddings_table"]
        tv = w[p + "relative_position_v.embeddings_table"]

        def row(d: int) -> int:
            return max(-max_rel, min(max_rel, d)) + max_rel

        logits = torch.zeros(seq.shape[0], t, t)
        for i in range(t):
            for j in range(t):
                dk = (i - j) if released else (j - i)
                logits[:, i, j] = (q[:, :, i] * k[:, :, j]).sum(1) + (q[:, :, i] * tk[row(dk)]).sum(1)
        probs = torch.softmax(logits / math.sqrt(c), dim=-1)
        att = torch.zeros_like(seq)
        for i in range(t):
            for j in range(t):
                att[:, :, i] += probs[:, i, j, None] * (v[:, :, j] + tv[row(j - i)])
        proj = torch.einsum("oc,nct->not", w[p + "proj_out.weight"][:, :, 0], att) + w[p + "proj_out.bias"][None, :, None]
        x = x + proj.reshape(b, hh, ww, c, t).permute(0, 3, 4, 1, 2)
        # strided conv with replicate padding (time 1 before / 0 after, space 1 / 1)
        p = f"{prefix}encoder.{3 * s + 2}."
        xp = F.pad(x, (1, 1, 1, 1, 1, 0), mode="replicate")
        x = F.conv3d(xp, w[p + "conv.weight"], w[p + "conv.bias"], stride=(2, 1, 1))
    return x


def randomize(module: torch.nn.Module, seed: int) -> dict[str, torch.Tensor]:
    """Fill every parameter with seeded random values (norm weights near 1); return the state dict."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in module.named_parameters():
            noise = torch.randn(param.shape, generator=gen) * 0.2
            param.copy_(1.0 + noise if name.endswith("norm.weight") else noise)
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def make_dts(released: bool) -> DTS:
    return DTS(CHANNELS, FRAMES, GROUPS, EPS, MAX_REL, num_stages=2, transposed_key_positions=released)


@pytest.mark.parametrize("released", [False, True])
def test_dts_matches_loop_reference(released: bool) -> None:
    torch.manual_seed(0)
    dts = make_dts(released)
    weights = randomize(dts, seed=1)
    feats = torch.randn(8, CHANNELS, 3, 3)
    grouped = group_frames(feats, FRAMES, released_layout=released)
    assert torch.equal(grouped, ref_group(feats, released))
    out = dts(grouped)
    assert out.shape == (2, CHANNELS, 1, 3, 3)
    ref = ref_dts(ref_group(feats, released), weights, "", released, GROUPS, EPS, MAX_REL)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)


def test_layouts_differ_on_same_weights() -> None:
    temporal, released = make_dts(False), make_dts(True)
    released.load_state_dict(randomize(temporal, seed=2))
    feats = torch.randn(4, CHANNELS, 3, 3)
    a = temporal(group_frames(feats, FRAMES, released_layout=False))
    b = released(group_frames(feats, FRAMES, released_layout=True))
    assert (a - b).abs().max() > 1e-3
    # the key-position convention alone also changes the result
    c = released(group_frames(feats, FRAMES, released_layout=False))
    assert (a - c).abs().max() > 1e-3


def test_temporal_grouping_puts_frames_on_time_axis() -> None:
    feats = torch.arange(8.0)[:, None, None, None].expand(8, CHANNELS, 2, 2)
    grouped = group_frames(feats, FRAMES, released_layout=False)
    assert grouped.shape == (2, CHANNELS, 4, 2, 2)
    assert torch.equal(grouped[1, 5, :, 0, 0], torch.tensor([4.0, 5.0, 6.0, 7.0]))
    mixed = group_frames(feats, FRAMES, released_layout=True)
    # memory view: the "time" slices of channel 0 all come from frame 0
    assert torch.equal(mixed[0, 0, :, 0, 0], torch.zeros(4))


def test_fresh_temporal_attention_is_identity() -> None:
    block = TemporalAttention(CHANNELS, GROUPS, EPS, MAX_REL)
    torch.nn.init.zeros_(block.qkv.weight), torch.nn.init.zeros_(block.qkv.bias)
    torch.nn.init.zeros_(block.proj_out.weight), torch.nn.init.zeros_(block.proj_out.bias)
    x = torch.randn(2, CHANNELS, 4, 3, 3)
    assert torch.equal(block(x), x)


def test_same_pad_conv_shapes_and_bf16_padding() -> None:
    conv = SamePadConv3d(CHANNELS)
    x = torch.randn(1, CHANNELS, 4, 5, 5)
    assert conv(x).shape == (1, CHANNELS, 2, 5, 5)
    assert conv(conv(x)).shape == (1, CHANNELS, 1, 5, 5)
    assert conv.to(torch.bfloat16)(x.bfloat16()).dtype == torch.bfloat16


def test_bad_group_sizes_raise() -> None:
    with pytest.raises(ValueError, match="multiple of frames_per_group"):
        group_frames(torch.randn(6, CHANNELS, 2, 2), FRAMES, released_layout=False)
    with pytest.raises(ValueError, match="DTS expects"):
        make_dts(False)(torch.randn(1, CHANNELS, 3, 2, 2))
