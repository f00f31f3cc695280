"""Parse a token layout (token_kind + group_index) into spans, chunks and attention plans.

The visibility rules of chunk-based prefill (as in the released Video-XL-2 evaluation):
- prefix (everything before the first timestamp/visual token: system turn and the user-turn text
  before the video) is global: every later token sees it;
- a timestamp token sees everything before it and is seen by every later token;
- a member token of video chunk ``c`` (visual tokens, and any text token inside the video span)
  sees the prefix, all earlier timestamp tokens, every token of chunks ``c - prev_chunks .. c - 1``
  and its own chunk causally;
- suffix tokens (after the video: the question and the assistant header) see everything before them.

A *plan* is a list of :class:`Block` objects processed in order. Each block is a contiguous token
range whose queries are split into :class:`AttnPart` groups, each attending to a set of key indices
(store index == sequence position during prefill) under the mask ``key <= query``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import torch

from model.sequence import TokenKind

Kind = TokenKind  # token kinds as written by model.sequence.build_sequence


@dataclass(frozen=True)
class VideoLayout:
    """Spans of one sequence: ``[0, video_start)`` prefix, ``[video_start, video_end)`` video,
    ``[video_end, length)`` suffix (question)."""

    token_kind: torch.Tensor  # LongTensor[L]
    group_index: torch.Tensor  # LongTensor[L]; group of every video-span token (text inherits)
    video_start: int
    video_end: int
    num_groups: int

    @property
    def length(self) -> int:
        """Total sequence length."""
        return int(self.token_kind.numel())

    @property
    def suffix_length(self) -> int:
        """Number of tokens after the video (the question span)."""
        return self.length - self.video_end

    @classmethod
    def from_tensors(cls, token_kind: torch.Tensor, group_index: torch.Tensor) -> VideoLayout:
        """Validate ``token_kind``/``group_index`` (1-D, equal length) and locate the spans."""
        if not (_is_1d(token_kind) and _is_1d(group_index)):
            raise ValueError("token_kind and group_index must be 1-D tensors (one sequence, batch size 1)")
        token_kind, group_index = token_kind.long(), group_index.long()
        if token_kind.numel() != group_index.numel():
            raise ValueError(
                f"token_kind has {token_kind.numel()} entries but group_index has {group_index.numel()}"
            )
        if token_kind.numel() == 0:
            raise ValueError("empty layout")
        if bool(((token_kind < 0) | (token_kind > int(Kind.QUESTION))).any()):
            raise ValueError("token_kind holds values outside TokenKind (0..4)")
        is_video = (token_kind == Kind.TIMESTAMP) | (token_kind == Kind.VISUAL)
        if not bool(is_video.any()):
            raise ValueError("layout has no TIMESTAMP/VISUAL tokens: nothing to chunk")
        where = torch.nonzero(is_video).reshape(-1)
        start, end = int(where[0]), int(where[-1]) + 1
        groups = group_index[where]
        if bool((groups < 0).any()):
            raise ValueError("TIMESTAMP/VISUAL tokens must carry group_index >= 0")
        if bool((groups[1:] < groups[:-1]).any()):
            raise ValueError("group_index must be non-decreasing along the video span")
        # Text tokens inside the video span inherit the group of the preceding video token.
        span_groups = group_index[start:end].clone()
        span_video = is_video[start:end]
        idx = torch.where(span_video, torch.arange(end - start), torch.zeros((), dtype=torch.long))
        idx = torch.cummax(idx, dim=0).values
        span_groups = span_groups[idx]
        full_groups = torch.full_like(group_index, -1)
        full_groups[start:end] = span_groups
        uniq = torch.unique(groups)
        num_groups = int(uniq.numel())
        if int(uniq.max()) != num_groups - 1:
            raise ValueError("group_index values of the video must be 0..G-1 without gaps")
        return cls(token_kind, full_groups, start, end, num_groups)

    @classmethod
    def coerce(cls, layout: object) -> VideoLayout:
        """Accept a VideoLayout, an object with ``token_kind``/``group_index`` (e.g. BuiltSequence),
        or a ``(token_kind, group_index)`` pair."""
        if isinstance(layout, VideoLayout):
            return layout
        if hasattr(layout, "token_kind") and hasattr(layout, "group_index"):
            return cls.from_tensors(layout.token_kind, layout.group_index)
        if isinstance(layout, (tuple, list)) and len(layout) == 2:
            return cls.from_tensors(layout[0], layout[1])
        raise TypeError(
            "layout must be a VideoLayout, an object with token_kind/group_index, or a (kind, group) pair"
        )

    def chunk_of(self, chunk_groups: int) -> torch.Tensor:
        """Chunk id per token (``group // chunk_groups``), -1 outside the video span."""
        _check_positive("chunk_groups", chunk_groups)
        out = torch.full_like(self.group_index, -1)
        inside = self.group_index >= 0
        out[inside] = self.group_index[inside] // chunk_groups
        return out

    def num_chunks(self, chunk_groups: int) -> int:
        """Number of video chunks."""
        _check_positive("chunk_groups", chunk_groups)
        return (self.num_groups + chunk_groups - 1) // chunk_groups

    def chunk_bounds(self, chunk_groups: int) -> list[tuple[int, int]]:
        """``[start, end)`` sequence range of each chunk (chunks tile the video span)."""
        chunk = self.chunk_of(chunk_groups)[self.video_start : self.video_end]
        n = self.num_chunks(chunk_groups)
        counts = torch.bincount(chunk, minlength=n)
        if bool((counts == 0).any()):
            raise ValueError("a chunk holds no tokens")
        ends = torch.cumsum(counts, 0) + self.video_start
        starts = ends - counts
        return [(int(s), int(e)) for s, e in zip(starts.tolist(), ends.tolist(), strict=True)]


@dataclass
class AttnPart:
    """Queries ``rows`` (indices into the block) attend to store entries ``keys`` (sorted) under
    the mask ``keys <= query_index``. ``keys`` may be a ``(start, end)`` range (a view, no copy)."""

    rows: torch.Tensor | slice
    keys: torch.Tensor | tuple[int, int]
    query_index: torch.Tensor  # store index of each query row (its own KV slot)


@dataclass
class Block:
    """A contiguous range ``[start, end)`` of tokens processed together through all layers."""

    start: int
    end: int
    parts: list[AttnPart]
    chunk: int = -1  # first video chunk of the block, -1 for prefix/suffix blocks


def _is_1d(t: object) -> bool:
    return isinstance(t, torch.Tensor) and t.dim() == 1


def _check_positive(name: str, value: int) -> None:
    if not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")


def _full_causal_part(start: int, end: int) -> AttnPart:
    """Rows of ``[start, end)`` over every earlier key plus themselves."""
    return AttnPart(slice(0, end - start), (0, end), torch.arange(start, end))


def plan_full(layout: VideoLayout, include_suffix: bool) -> list[Block]:
    """Dense causal prefill: one block over ``[0, end)``, end = L or video_end."""
    end = layout.length if include_suffix else layout.video_end
    return [Block(0, end, [_full_causal_part(0, end)])]


def iter_chunked_plan(
    layout: VideoLayout, chunk_groups: int = 4, prev_chunks: int = 3, include_suffix: bool = True,
    block_chunks: int = 1,
) -> Iterator[Block]:
    """Blockwise chunked prefill plan, generated lazily (memory stays flat in the chunk count):
    prefix block, video blocks of ``block_chunks`` consecutive chunks, then the suffix block.

    ``block_chunks`` only changes how work is batched (bigger matmuls), never who sees whom: each
    chunk keeps its own member part, and the block's timestamp rows share one part over the full past.
    """
    if not isinstance(prev_chunks, int) or prev_chunks < 0:
        raise ValueError(f"prev_chunks must be an int >= 0, got {prev_chunks!r}")
    _check_positive("block_chunks", block_chunks)
    bounds = layout.chunk_bounds(chunk_groups)
    is_ts = layout.token_kind == Kind.TIMESTAMP
    ts_pos = torch.nonzero(is_ts).reshape(-1)
    if layout.video_start > 0:
        yield Block(0, layout.video_start, [_full_causal_part(0, layout.video_start)])
    prefix = torch.arange(layout.video_start)
    for c0 in range(0, len(bounds), block_chunks):
        c1 = min(len(bounds), c0 + block_chunks)
        bs, be = bounds[c0][0], bounds[c1 - 1][1]
        parts = []
        for c in range(c0, c1):
            s, e = bounds[c]
            win_start = bounds[max(0, c - prev_chunks)][0]
            old_ts = ts_pos[: int(torch.searchsorted(ts_pos, win_start))]
            member_rows = torch.nonzero(~is_ts[s:e]).reshape(-1) + s
            if member_rows.numel():
                member_keys = torch.cat([prefix, old_ts, torch.arange(win_start, e)])
                parts.append(AttnPart(member_rows - bs, member_keys, member_rows))
        ts_rows = torch.nonzero(is_ts[bs:be]).reshape(-1)
        if ts_rows.numel():
            parts.append(AttnPart(ts_rows, (0, be), ts_rows + bs))
        yield Block(bs, be, parts, chunk=c0)
    if include_suffix and layout.suffix_length > 0:
        yield Block(layout.video_end, layout.length, [_full_causal_part(layout.video_end, layout.length)])


def plan_chunked(
    layout: VideoLayout, chunk_groups: int = 4, prev_chunks: int = 3, include_suffix: bool = True,
    block_chunks: int = 1,
) -> list[Block]:
    """:func:`iter_chunked_plan` as a list."""
    return list(iter_chunked_plan(layout, chunk_groups, prev_chunks, include_suffix, block_chunks))


def part_pairs(part: AttnPart) -> int:
    """Number of allowed (query, key) pairs of one part (keys <= query index)."""
    q = part.query_index
    if isinstance(part.keys, tuple):
        s, e = part.keys
        return int((torch.clamp(q + 1, max=e) - s).clamp(min=0).sum())
    return int(torch.searchsorted(part.keys, q, right=True).sum())


def plan_pairs(blocks: Iterable[Block]) -> int:
    """Allowed (query, key) pairs over a whole plan."""
    return sum(part_pairs(p) for b in blocks for p in b.parts)


def causal_pairs(length: int) -> int:
    """Pairs of a dense causal mask over ``length`` tokens."""
    return length * (length + 1) // 2
