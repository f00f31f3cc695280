"""Positional skip-wise training: rotary positions with one random jump, so that short samples train the
relative distances of long ones.

A picked sample of row length ``L`` keeps its tokens and its causal (or chunked) visibility; only its
``position_ids`` change: every token from a drawn split index ``k`` on is moved ``s`` positions further, with
``s`` drawn uniformly from ``0 .. max_position - L``. Tokens on either side of the split then sit up to
``max_position - 1`` positions apart, as a question does from the first frames of a much longer video,
while the distances within each side (a group's tokens, the answer's) stay those of the sample. Rule from
Zhu et al., 2023, "PoSE: Efficient Context Window Extension of LLMs via Positional Skip-wise Training"
(there with several chunks; here one split, so the video's local structure is kept on both sides).
"""

from __future__ import annotations

import torch

__all__ = ["skipped_positions"]


def skipped_positions(attention_mask: torch.Tensor, fraction: float, max_position: int) -> torch.Tensor | None:
    """Rotary positions [B, L] (int64) in which a drawn ``fraction`` of the rows jump once, or None when
    no row was drawn (the LLM's default ``0 .. L-1`` then applies to every row).

    ``attention_mask`` [B, L]: 1 on tokens, 0 on padding. Unpicked rows get ``0 .. L-1`` exactly. A picked
    row's split index is drawn uniformly among its tokens after its first one, and its jump ``s`` uniformly
    from ``0 .. max_position - L`` (no jump when ``L >= max_position``), so no position reaches
    ``max_position``. The draws use torch's global generator, three per row whatever is picked, so the
    random stream does not depend on the batch's content.

    Raises ValueError if ``fraction`` is outside [0, 1] or ``max_position`` < 1.
    """
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction: must be in [0, 1], got {fraction}")
    if max_position < 1:
        raise ValueError(f"max_position: must be >= 1, got {max_position}")
    bsz, length = attention_mask.shape
    picked = torch.rand(bsz) < fraction
    split_u = torch.rand(bsz)
    skip_u = torch.rand(bsz)
    if not bool(picked.any()):
        return None
    positions = torch.arange(length, dtype=torch.long).expand(bsz, length).clone()
    room = max(0, max_position - length)
    valid = attention_mask.detach().to("cpu").bool()
    for b in torch.nonzero(picked).flatten().tolist():
        tokens = torch.nonzero(valid[b]).flatten()
        if tokens.numel() < 2 or room == 0:
            continue
        k = int(tokens[1 + int(split_u[b] * (tokens.numel() - 1))])  # one of the tokens after the first
        s = int(skip_u[b] * (room + 1))
        positions[b, k:] += s
    return positions.to(attention_mask.device)
