"""Positional skip-wise training: rotary positions with one random jump, so that short samples train the
relative distances of long ones.

A picked sample of row length ``L`` keeps its tokens and its causal (or chunked) visibility; only its
``position_ids`` change: every token from a drawn split index ``k`` on is moved ``s`` positions further, with
``s`` drawn uniformly from ``0 .. max_position - L``. Tokens on either side of the split then sit up to
``max_position - 1`` positions apart, as a question does from the first frames of a much longer video,
while the distances within each side (a group's tokens, the answer's) stay those of the sample. Rule from
Zhu et al., 2023, "PoSE: Efficient Context Window Extension of LLMs via Positional Skip-wise Training"
(there with several chunks; here one split, so the video's local structure is kept on both sides).
Packed rows (data/packing.py) jump per sample: each sample of a row is drawn, split and moved on its own,
as it would be alone in a row (:func:`skipped_packed_positions`).

The split falls on any token after the first (``split="token"``, PoSE's rule) or, given the tokens' group
index, only on a group boundary (``split="group"``): the first token of a group (its timestamp) or the first
token after the video. A group's timestamp and visual tokens then stay next to each other and the jump
lies between groups, or between the video and the text that follows it, as in a longer video. With
``split="video"`` it falls only after the video: the groups keep their distances to each other and all of
them move away from the question.
"""

from __future__ import annotations

import torch

__all__ = ["SPLITS", "skipped_packed_positions", "skipped_positions", "split_points"]


SPLITS = ("token", "group", "video")


def split_points(length: int, group_index: torch.Tensor | None = None, split: str = "token") -> torch.Tensor:
    """Indices (int64, ascending) in a sample of ``length`` tokens where a jump may start.

    ``split="token"`` (or no ``group_index``): every token after the first, ``1 .. length - 1``. With
    ``group_index`` [length] (the group of each timestamp / visual token, -1 elsewhere; model/sequence.py) and
    ``split="group"``: the first token of every group and the first token after the last group;
    ``split="video"``: only the first token after the last group. None when the sample has no video.

    Raises ValueError on a ``group_index`` of another length or an unknown ``split``.
    """
    if split not in SPLITS:
        raise ValueError(f"split: must be one of {SPLITS}, got {split!r}")
    if group_index is None or split == "token":
        return torch.arange(1, length, dtype=torch.long)
    if group_index.shape != (length,):
        raise ValueError(f"group_index: expected shape ({length},), got {tuple(group_index.shape)}")
    g = group_index.detach().to("cpu")
    if split == "video":
        video = torch.nonzero(g >= 0).flatten()
        last = int(video[-1]) + 1 if video.numel() else length
        return torch.arange(last, min(last + 1, length), dtype=torch.long)
    edge = (g[1:] != g[:-1]) & ((g[1:] >= 0) | (g[:-1] >= 0))
    return torch.nonzero(edge).flatten() + 1


def _check(fraction: float, max_position: int, split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"split: must be one of {SPLITS}, got {split!r}")
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction: must be in [0, 1], got {fraction}")
    if max_position < 1:
        raise ValueError(f"max_position: must be >= 1, got {max_position}")


def _eligible(picked: torch.Tensor, eligible: torch.Tensor | None) -> torch.Tensor:
    """``picked`` [N] limited to the ``eligible`` [N] rows or samples (all when None)."""
    if eligible is None:
        return picked
    if eligible.shape != picked.shape:
        raise ValueError(f"eligible: expected one flag per sample ({picked.numel()}), got {tuple(eligible.shape)}")
    return picked & eligible.detach().to("cpu", torch.bool)


def _split(tokens: torch.Tensor, split_u: float, group_index: torch.Tensor | None, split: str) -> int | None:
    """The row index where one sample's jump starts (``tokens``: its row indices, in order), or None."""
    points = split_points(tokens.numel(), None if group_index is None else group_index[tokens], split)
    if points.numel() == 0:
        return None
    return int(tokens[int(points[int(split_u * points.numel())])])


def skipped_positions(attention_mask: torch.Tensor, fraction: float, max_position: int,
                      group_index: torch.Tensor | None = None, split: str = "token",
                      eligible: torch.Tensor | None = None) -> torch.Tensor | None:
    """Rotary positions [B, L] (int64) in which a drawn ``fraction`` of the rows jump once, or None when
    no row was drawn (the LLM's default ``0 .. L-1`` then applies to every row).

    ``attention_mask`` [B, L]: 1 on tokens, 0 on padding. Unpicked rows get ``0 .. L-1`` exactly. A picked
    row's split index is drawn uniformly among its :func:`split_points` (every token after the first, or with
    ``group_index`` [B, L] those ``split`` names: its group boundaries or its video's end), and its jump
    ``s`` uniformly from ``0 .. max_position - L`` (no jump when ``L >= max_position``), so no position
    reaches ``max_position``. ``eligible`` [B] (bool, optional): only these rows may be picked. The draws use torch's
    global generator, three per row whatever is picked, so the random stream does not depend on the batch's
    content.

    Raises ValueError if ``fraction`` is outside [0, 1], ``max_position`` < 1 or ``split`` is unknown.
    """
    _check(fraction, max_position, split)
    bsz, length = attention_mask.shape
    picked = _eligible(torch.rand(bsz) < fraction, eligible)
    split_u = torch.rand(bsz)
    skip_u = torch.rand(bsz)
    if not bool(picked.any()):
        return None
    positions = torch.arange(length, dtype=torch.long).expand(bsz, length).clone()
    valid = attention_mask.detach().to("cpu").bool()
    groups = None if group_index is None else group_index.detach().to("cpu")
    for b in torch.nonzero(picked).flatten().tolist():
        k = _split(torch.nonzero(valid[b]).flatten(), float(split_u[b]), None if groups is None else groups[b], split)
        if k is not None and max_position > length:
            positions[b, k:] += int(skip_u[b] * (max_position - length + 1))
    return positions.to(attention_mask.device)


def skipped_packed_positions(position_ids: torch.Tensor, segment_ids: torch.Tensor, fraction: float,
                             max_position: int, group_index: torch.Tensor | None = None,
                             split: str = "token", eligible: torch.Tensor | None = None) -> torch.Tensor:
    """Rotary positions [B, L] (int64) of packed rows in which a drawn ``fraction`` of the samples jump once.

    ``position_ids`` [B, L]: restarting at 0 for every sample (data/packing.py); ``segment_ids`` [B, L]: the
    sample's index in its row, -1 on padding; ``group_index`` [B, L] (optional): split as ``split`` says.
    Each sample of ``n`` tokens is treated as an unpacked row of that length in :func:`skipped_positions`:
    if drawn, every token of it from one of its :func:`split_points` on moves ``s`` further, ``s`` uniform in
    ``0 .. max_position - n``; it still starts at 0, so the samples' boundaries stay where the position ids
    restart. Padding and undrawn samples keep their positions. ``eligible`` [S] (bool, optional, one per
    sample in row order, then sample order): only these samples may be picked. Three draws of torch's global
    generator per sample (in that order), whatever is picked.

    Raises ValueError if ``fraction`` is outside [0, 1], ``max_position`` < 1, ``split`` is unknown or the
    shapes differ.
    """
    _check(fraction, max_position, split)
    if position_ids.shape != segment_ids.shape or (group_index is not None and group_index.shape != segment_ids.shape):
        raise ValueError(f"position_ids {tuple(position_ids.shape)}, segment_ids {tuple(segment_ids.shape)} and "
                         "group_index must have one shape")
    segments = segment_ids.detach().to("cpu")
    samples = [(b, int(j)) for b in range(segments.shape[0]) for j in torch.unique(segments[b]).tolist() if j >= 0]
    picked = _eligible(torch.rand(len(samples)) < fraction, eligible)
    split_u = torch.rand(len(samples))
    skip_u = torch.rand(len(samples))
    positions = position_ids.detach().to("cpu", torch.long).clone()
    groups = None if group_index is None else group_index.detach().to("cpu")
    for i in torch.nonzero(picked).flatten().tolist():
        b, j = samples[i]
        tokens = torch.nonzero(segments[b] == j).flatten()
        k = _split(tokens, float(split_u[i]), None if groups is None else groups[b], split)
        if k is not None and max_position > tokens.numel():
            positions[b, tokens[tokens >= k]] += int(skip_u[i] * (max_position - tokens.numel() + 1))
    return positions.to(position_ids.device)
