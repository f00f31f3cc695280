"""Dense (query, key) visibility masks for training: plain causal, or the chunk-based prefill rule.

Training a model under the visibility that chunked prefill gives it at inference (see
`model.inference.layout` for the rule and the blockwise prefill that never builds this matrix) takes
an explicit mask: a [B, 1, L, L] boolean tensor (True = may attend) that the LLM's attention uses as
is. It costs L² booleans per sample, so it suits training lengths, not long-video inference.
"""

from __future__ import annotations

import torch

from model.sequence import TokenKind


def causal_visibility(valid: torch.Tensor) -> torch.Tensor:
    """BoolTensor[B, 1, L, L]: causal over the `valid` [B, L] tokens (right padding); a padded query
    sees only itself, so no row is empty."""
    if valid.dim() != 2:
        raise ValueError(f"valid: expected [B, L], got shape {tuple(valid.shape)}")
    valid = valid.bool()
    length = valid.shape[1]
    causal = torch.ones(length, length, dtype=torch.bool, device=valid.device).tril()
    mask = causal[None] & valid[:, None, :] & valid[:, :, None]
    eye = torch.eye(length, dtype=torch.bool, device=valid.device)
    return (mask | (eye[None] & ~valid[:, :, None]))[:, None]


def chunked_visibility(token_kind: torch.Tensor, group_index: torch.Tensor, valid: torch.Tensor,
                       chunk_groups: int, prev_chunks: int) -> torch.Tensor:
    """BoolTensor[B, 1, L, L]: what each token sees under chunk-based prefill.

    Per row: tokens before the first timestamp/visual token (prefix) and after the last one (suffix)
    see everything before them, as do timestamp tokens; every token sees the prefix and the earlier
    timestamps; a member of video chunk c (visual tokens and text inside the video span, which takes
    the group of the video token before it) also sees the members of chunks c - prev_chunks .. c,
    causally. Rows without visual tokens are plain causal. Padding as in :func:`causal_visibility`.
    """
    if not isinstance(chunk_groups, int) or chunk_groups < 1:
        raise ValueError(f"chunk_groups: must be an int >= 1, got {chunk_groups!r}")
    if not isinstance(prev_chunks, int) or prev_chunks < 0:
        raise ValueError(f"prev_chunks: must be an int >= 0, got {prev_chunks!r}")
    if token_kind.shape != valid.shape or group_index.shape != valid.shape:
        raise ValueError(f"token_kind {tuple(token_kind.shape)}, group_index {tuple(group_index.shape)} and "
                         f"valid {tuple(valid.shape)} must have the same [B, L] shape")
    valid = valid.bool()
    length = valid.shape[1]
    pos = torch.arange(length, device=valid.device).expand_as(valid)
    is_ts = (token_kind == TokenKind.TIMESTAMP) & valid
    is_video = (is_ts | (token_kind == TokenKind.VISUAL)) & valid
    has_video = is_video.any(dim=1, keepdim=True)
    start = torch.where(is_video, pos, length).amin(dim=1, keepdim=True)
    end = torch.where(is_video, pos + 1, 0).amax(dim=1, keepdim=True)
    inside = (pos >= start) & (pos < end) & has_video
    # the group of the latest video token at or before each position (text inside the span inherits it)
    last_video = torch.where(is_video, pos, -1).cummax(dim=1).values.clamp(min=0)
    chunk = torch.where(inside, group_index.gather(1, last_video) // chunk_groups, -1)
    member = inside & ~is_ts
    if bool((chunk[member] < 0).any()):
        raise ValueError("group_index: timestamp/visual tokens must carry a group >= 0")
    near = (chunk[:, :, None] - chunk[:, None, :] <= prev_chunks) & (chunk[:, None, :] <= chunk[:, :, None])
    allowed = ~member[:, :, None] | ~member[:, None, :] | near
    return causal_visibility(valid) & allowed[:, None]
