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


def bilevel_visibility(token_kind: torch.Tensor, group_index: torch.Tensor, valid: torch.Tensor,
                       chunk_groups: int, prev_chunks: int, dense: torch.Tensor,
                       kv_pool: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Chunked prefill followed by bi-level decoding, as masks over the sequence plus pooled entries.

    `dense` [B, C] marks each sample's dense chunks (C >= its chunk count). The video tokens see what
    :func:`chunked_visibility` gives them; the tokens after the video see, instead of the visual tokens
    of each sparse chunk, one entry per window of `kv_pool` consecutive visual tokens of a group (the
    average of their keys and values, as `model.inference.bilevel.compact` stores them). Returns
    `(mask [B, 1, L, L + M], pooling [B, M, L])`: row m of `pooling` averages the positions of pooled
    entry m (zero rows pad samples with fewer entries); attention appends `pooling @ K` and
    `pooling @ V` after the L sequence keys (:func:`model.pooled_attention.pooled_sdpa`).
    """
    if not isinstance(kv_pool, int) or kv_pool < 1:
        raise ValueError(f"kv_pool: must be an int >= 1, got {kv_pool!r}")
    if dense.dim() != 2 or dense.shape[0] != valid.shape[0]:
        raise ValueError(f"dense: expected [B, C] with B = {valid.shape[0]}, got {tuple(dense.shape)}")
    base = chunked_visibility(token_kind, group_index, valid, chunk_groups, prev_chunks)
    bsz, length = valid.shape
    valid = valid.bool()
    windows: list[list[list[int]]] = []
    suffix_start: list[int] = []
    for b in range(bsz):
        kinds, groups, real = token_kind[b].tolist(), group_index[b].tolist(), valid[b].tolist()
        dense_b = dense[b].tolist()
        video = [i for i, k in enumerate(kinds) if real[i] and k in (TokenKind.TIMESTAMP, TokenKind.VISUAL)]
        suffix_start.append(video[-1] + 1 if video else length)
        sparse_by_group: dict[int, list[int]] = {}
        for i in video:
            if kinds[i] == TokenKind.VISUAL and not dense_b[groups[i] // chunk_groups]:
                sparse_by_group.setdefault(groups[i], []).append(i)
        windows.append([pos[j:j + kv_pool] for _, pos in sorted(sparse_by_group.items())
                        for j in range(0, len(pos), kv_pool)])
    pooled = max((len(w) for w in windows), default=0)
    pooling = torch.zeros(bsz, pooled, length, dtype=torch.float32, device=valid.device)
    extra = torch.zeros(bsz, 1, length, pooled, dtype=torch.bool, device=valid.device)
    mask = base.clone()
    positions = torch.arange(length, device=valid.device)
    for b, rows in enumerate(windows):
        after = (positions >= suffix_start[b]) & valid[b]
        hidden = torch.zeros(length, dtype=torch.bool, device=valid.device)
        for m, members in enumerate(rows):
            pooling[b, m, members] = 1.0 / len(members)
            hidden[members] = True
            extra[b, 0, after, m] = True
        mask[b, 0] &= ~(after[:, None] & hidden[None, :])
    return torch.cat([mask, extra], dim=-1), pooling
