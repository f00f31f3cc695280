"""DTS (Dynamic Token Synthesize): temporal compression of a group of frames' feature maps.

Input per group: (B, C, T, H, W) with T = frames_per_group; every stage halves T (4 -> 2 -> 1) and keeps H, W.
Submodule names follow the released checkpoint (`temporal_encoding`, `encoder.{0..}`) so its
`model.sae.*` weights load by dropping the prefix.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers.modeling_layers import GradientCheckpointingLayer


class AttnBlock3D(GradientCheckpointingLayer):
    """Single-head spatial self-attention over the H*W positions of each time slice, with residual.

    Recomputed in backward when the model's gradient checkpointing is on (as is TemporalAttention).
    """

    def __init__(self, channels: int, groups: int, eps: float) -> None:
        super().__init__()
        self.norm = nn.GroupNorm(groups, channels, eps=eps, affine=True)
        self.q = nn.Conv3d(channels, channels, kernel_size=1)
        self.k = nn.Conv3d(channels, channels, kernel_size=1)
        self.v = nn.Conv3d(channels, channels, kernel_size=1)
        self.proj_out = nn.Conv3d(channels, channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, C, T, H, W) -> same shape."""
        b, c, t, h, w = x.shape
        y = self.norm(x)

        def tokens(z: torch.Tensor) -> torch.Tensor:  # (B, C, T, H, W) -> (B*T, H*W, C)
            return z.permute(0, 2, 3, 4, 1).reshape(b * t, h * w, c)

        out = F.scaled_dot_product_attention(tokens(self.q(y)), tokens(self.k(y)), tokens(self.v(y)))
        out = out.reshape(b, t, h, w, c).permute(0, 4, 1, 2, 3)
        return x + self.proj_out(out)


class RelativePositionTable(nn.Module):
    """Learned embeddings for clipped relative distances in [-max_distance, max_distance]."""

    def __init__(self, num_units: int, max_distance: int) -> None:
        super().__init__()
        self.max_distance = max_distance
        # zeros, not torch.empty: a block built outside a model must hold finite values; the model's
        # _init_weights then draws the Xavier-uniform table (and drawing nothing here keeps the RNG stream)
        self.embeddings_table = nn.Parameter(torch.zeros(2 * max_distance + 1, num_units))

    def forward(self, distance: torch.Tensor) -> torch.Tensor:
        """distance: integer tensor of relative offsets -> (*distance.shape, num_units)."""
        index = distance.clamp(-self.max_distance, self.max_distance) + self.max_distance
        return self.embeddings_table[index]


class TemporalAttention(GradientCheckpointingLayer):
    """Single-head attention over time at each spatial location, with relative-position keys and values.

    Logits: (q_i . k_j + q_i . aK) / sqrt(C), outputs: sum_j p_ij (v_j + aV[j - i]). The faithful form
    uses aK = aK[j - i]; `transposed_key_positions=True` uses aK[i - j] as the released weights expect.
    qkv and proj_out start at zero, so a fresh block is the identity.
    """

    def __init__(self, channels: int, groups: int, eps: float, max_relative_position: int,
                 transposed_key_positions: bool = False) -> None:
        super().__init__()
        self.transposed_key_positions = transposed_key_positions
        self.norm = nn.GroupNorm(groups, channels, eps=eps, affine=True)
        self.qkv = nn.Conv1d(channels, 3 * channels, kernel_size=1)
        self.relative_position_k = RelativePositionTable(channels, max_relative_position)
        self.relative_position_v = RelativePositionTable(channels, max_relative_position)
        self.proj_out = nn.Conv1d(channels, channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, C, T, H, W) -> same shape."""
        b, c, t, h, w = x.shape
        seq = x.permute(0, 3, 4, 1, 2).reshape(b * h * w, c, t)
        q, k, v = self.qkv(self.norm(seq)).chunk(3, dim=1)  # each (BHW, C, T)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (BHW, T, C)
        pos = torch.arange(t, device=x.device)
        j_minus_i = pos[None, :] - pos[:, None]  # [i, j] = j - i
        key_dist = -j_minus_i if self.transposed_key_positions else j_minus_i
        rel_k = self.relative_position_k(key_dist).to(q.dtype)  # (T, T, C)
        rel_v = self.relative_position_v(j_minus_i).to(q.dtype)
        logits = q @ k.transpose(1, 2) + torch.einsum("bic,ijc->bij", q, rel_k)
        probs = torch.softmax(logits * c**-0.5, dim=-1)
        out = probs @ v + torch.einsum("bij,ijc->bic", probs, rel_v)  # (BHW, T, C)
        out = self.proj_out(out.transpose(1, 2))
        return x + out.reshape(b, h, w, c, t).permute(0, 3, 4, 1, 2)


class SamePadConv3d(nn.Module):
    """Conv3d kernel 3, stride (2, 1, 1) after replicate padding (time 1 before / 0 after, space 1 / 1)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv3d(channels, channels, kernel_size=3, stride=(2, 1, 1), padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, C, T, H, W) -> (B, C, ceil(T/2), H, W); padding is computed in fp32."""
        padded = F.pad(x.float(), (1, 1, 1, 1, 1, 0), mode="replicate").to(x.dtype)
        return self.conv(padded)


class DTS(nn.Module):
    """Temporal embedding, then `num_stages` x [AttnBlock3D, TemporalAttention, SamePadConv3d]."""

    def __init__(self, channels: int, frames: int, groups: int, eps: float, max_relative_position: int,
                 num_stages: int, transposed_key_positions: bool = False) -> None:
        super().__init__()
        self.frames = frames
        self.temporal_encoding = nn.Parameter(torch.zeros(frames, channels))
        blocks: list[nn.Module] = []
        for _ in range(num_stages):
            blocks.append(AttnBlock3D(channels, groups, eps))
            blocks.append(TemporalAttention(channels, groups, eps, max_relative_position, transposed_key_positions))
            blocks.append(SamePadConv3d(channels))
        self.encoder = nn.ModuleList(blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, C, T, H, W) with T = frames -> (B, C, 1, H, W) after all stages."""
        if x.dim() != 5 or x.shape[2] != self.frames:
            raise ValueError(f"DTS expects (B, C, {self.frames}, H, W), got {tuple(x.shape)}")
        x = x + self.temporal_encoding.t()[None, :, :, None, None].to(x.dtype)
        for block in self.encoder:
            x = block(x)
        return x


def group_frames(features: torch.Tensor, frames_per_group: int, released_layout: bool) -> torch.Tensor:
    """(N, C, H, W) frame features -> (N / frames_per_group, C, frames_per_group, H, W).

    The temporal layout puts the frames of a group on the time axis. The released layout reinterprets the
    contiguous memory with `.view`, so its "time" axis mixes channels of the group's frames.
    """
    n, c, h, w = features.shape
    if n % frames_per_group:
        raise ValueError(f"frame count {n} is not a multiple of frames_per_group={frames_per_group}")
    features = features.contiguous()
    if released_layout:
        return features.view(n // frames_per_group, c, frames_per_group, h, w)
    return features.view(n // frames_per_group, frames_per_group, c, h, w).permute(0, 2, 1, 3, 4)
