"""Layout parsing, chunk plans and the attention-pair count."""

from __future__ import annotations

import pytest
import torch

from dense_reference import dense_visibility, synthetic_layout
from model.inference.layout import Kind, VideoLayout, plan_chunked, plan_pairs


def test_spans_and_chunks() -> None:
    gen = torch.Generator().manual_seed(0)
    kind, group = synthetic_layout(gen, 10, 3, prefix=6, suffix=5, ts_tokens=2, inner_text=False)
    layout = VideoLayout.from_tensors(kind, group)
    assert layout.video_start == 6 and layout.suffix_length == 5 and layout.num_groups == 10
    assert layout.num_chunks(4) == 3
    bounds = layout.chunk_bounds(4)
    assert bounds[0][0] == 6 and bounds[-1][1] == layout.video_end
    assert [e - s for s, e in bounds] == [20, 20, 10]


@pytest.mark.parametrize("chunk_groups,prev_chunks", [(1, 0), (2, 1), (4, 3), (3, 5)])
def test_pair_count_equals_dense_mask(chunk_groups: int, prev_chunks: int) -> None:
    gen = torch.Generator().manual_seed(chunk_groups * 10 + prev_chunks)
    kind, group = synthetic_layout(gen, 9, 4)
    layout = VideoLayout.from_tensors(kind, group)
    dense = dense_visibility(kind, group, chunk_groups, prev_chunks)
    assert plan_pairs(plan_chunked(layout, chunk_groups, prev_chunks)) == int(dense.sum())


def test_text_inside_video_inherits_group() -> None:
    kind = torch.tensor([1, 1, 2, 3, 3, 0, 2, 3, 3, 4])
    group = torch.tensor([-1, -1, 0, 0, 0, -1, 1, 1, 1, -1])
    layout = VideoLayout.from_tensors(kind, group)
    assert layout.group_index.tolist() == [-1, -1, 0, 0, 0, 0, 1, 1, 1, -1]


def test_kind_matches_sequence_token_kind() -> None:
    sequence = pytest.importorskip("model.sequence")
    for k in Kind:
        assert int(sequence.TokenKind[k.name]) == int(k)


@pytest.mark.parametrize(
    "kind,group,match",
    [
        ([1, 1, 4], [-1, -1, -1], "no TIMESTAMP"),
        ([1, 3, 3], [-1, 0], "entries"),
        ([1, 3, 9], [-1, 0, -1], "outside"),
        ([1, 3, 3], [-1, 1, 0], "non-decreasing"),
        ([1, 3, 3], [-1, 0, 2], "gaps"),
        ([1, 3, 3], [-1, -1, 0], ">= 0"),
    ],
)
def test_bad_layouts_raise(kind: list[int], group: list[int], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        VideoLayout.from_tensors(torch.tensor(kind), torch.tensor(group))


def test_bad_plan_arguments_raise() -> None:
    layout = VideoLayout.from_tensors(torch.tensor([1, 2, 3, 4]), torch.tensor([-1, 0, 0, -1]))
    with pytest.raises(ValueError, match="chunk_groups"):
        plan_chunked(layout, 0, 1)
    with pytest.raises(ValueError, match="prev_chunks"):
        plan_chunked(layout, 1, -1)
    with pytest.raises(TypeError):
        VideoLayout.coerce("nope")
    with pytest.raises(ValueError, match="1-D"):
        VideoLayout.from_tensors(torch.zeros(1, 3), torch.zeros(1, 3))
