"""Positional skip-wise training (train/position_skip.py): the drawn positions and what the LLM makes of them."""

from __future__ import annotations

import pytest
import torch
from test_model import make_batch
from test_packing import make_sample, pack, tensors

from data.collate import collate
from model import VideoXL2ForCausalLM, build_preset, load_tokenizer
from train.config import PositionSkipConfig
from train.objectives import TrainModule
from train.position_skip import skipped_packed_positions, skipped_positions, split_points


def jumps(row: torch.Tensor) -> list[tuple[int, int]]:
    """(index, size) of every step of a position row that is not +1."""
    steps = row[1:] - row[:-1]
    return [(int(i) + 1, int(steps[i])) for i in torch.nonzero(steps != 1).flatten()]


def test_every_picked_row_jumps_once_below_max_position() -> None:
    torch.manual_seed(0)
    mask = torch.ones(64, 40, dtype=torch.long)
    mask[::2, 30:] = 0  # right padding on every other row
    pos = skipped_positions(mask, 1.0, 500)
    assert pos is not None and pos.dtype == torch.long and pos.shape == (64, 40)
    sizes = []
    for b in range(64):
        assert int(pos[b, 0]) == 0
        assert int(pos[b].max()) < 500
        found = jumps(pos[b])
        assert len(found) <= 1
        if found:
            index, size = found[0]
            valid = int(mask[b].sum())
            assert 1 <= index < valid  # the split falls on a token after the first, never in the padding
            assert 1 < size <= 1 + 500 - 40
            sizes.append(size - 1)
    assert len(sizes) >= 60  # a jump of exactly 0 is possible but rare
    assert max(sizes) > 300 and min(sizes) < 150  # spread over 0 .. 460


def test_unpicked_rows_keep_default_positions() -> None:
    mask = torch.ones(200, 12, dtype=torch.long)
    assert skipped_positions(mask, 0.0, 100) is None
    torch.manual_seed(1)
    pos = skipped_positions(mask, 0.5, 100)
    assert pos is not None
    default = torch.arange(12)
    plain = [b for b in range(200) if torch.equal(pos[b], default)]
    assert 60 < len(plain) < 140
    # rows as long as max_position (or longer) have no room to jump
    torch.manual_seed(1)
    assert torch.equal(skipped_positions(torch.ones(4, 12, dtype=torch.long), 1.0, 12), default.expand(4, 12))


def test_the_draws_do_not_depend_on_the_content() -> None:
    """Three draws per row whatever is picked: the global random stream moves by the same amount."""
    for fraction in (0.0, 0.3, 1.0):
        torch.manual_seed(5)
        skipped_positions(torch.ones(7, 9, dtype=torch.long), fraction, 64)
        after = torch.rand(1)
        torch.manual_seed(5)
        torch.rand(21)
        assert torch.equal(torch.rand(1), after)


def test_bad_arguments_are_named() -> None:
    with pytest.raises(ValueError, match="fraction"):
        skipped_positions(torch.ones(1, 4), 1.5, 10)
    with pytest.raises(ValueError, match="max_position"):
        skipped_positions(torch.ones(1, 4), 0.5, 0)


def test_the_llm_reads_the_skipped_positions() -> None:
    """Rotary attention sees relative positions only: one shift of every position leaves the loss as it is,
    a jump inside the sample changes it; a TrainModule with position_skip trains on such positions and
    validates (eval mode) on the default ones."""
    torch.manual_seed(0)
    cfg = build_preset("tiny")
    model = VideoXL2ForCausalLM(cfg).train()
    batch = make_batch(cfg, seed=3)
    ids, mask, labels, px = batch["input_ids"], batch["attention_mask"], batch["labels"], batch["pixel_values"]
    default = torch.arange(ids.shape[1]).expand_as(ids)
    base = model.lm_loss(ids, mask, labels, px)
    shifted = (model.lm_loss(ids, mask, labels, px, position_ids=default + 700) - base).abs()
    jumped = default.clone()
    jumped[:, 10:] += 700
    moved = (model.lm_loss(ids, mask, labels, px, position_ids=jumped) - base).abs()
    assert shifted < 2e-5 and moved > 1e-4  # a fresh LLM attends almost uniformly: small, but far above rounding

    module = TrainModule(model, "lm", position_skip=PositionSkipConfig(fraction=1.0, max_position=2048))
    torch.manual_seed(4)
    drawn = skipped_positions(mask, 1.0, 2048)
    torch.manual_seed(4)
    torch.testing.assert_close(module(ids, mask, labels, px),
                               model.lm_loss(ids, mask, labels, px, position_ids=drawn))
    module.eval()
    torch.testing.assert_close(module(ids, mask, labels, px), base)


def packed_layout(lengths_per_row: list[list[int]], width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """position_ids and segment_ids [R, width] of rows packed with samples of these lengths (data/packing.py's
    layout: positions restart per sample and again over the padding, segment -1 on padding)."""
    pos = torch.zeros(len(lengths_per_row), width, dtype=torch.long)
    seg = torch.full((len(lengths_per_row), width), -1, dtype=torch.long)
    for r, lengths in enumerate(lengths_per_row):
        at = 0
        for j, n in enumerate(lengths):
            pos[r, at:at + n], seg[r, at:at + n] = torch.arange(n), j
            at += n
        pos[r, at:] = torch.arange(width - at)
    return pos, seg


def test_every_picked_packed_sample_jumps_once_on_its_own() -> None:
    pos, seg = packed_layout([[5, 7, 3], [12], [1, 9]], width=17)
    torch.manual_seed(0)
    moved = skipped_packed_positions(pos, seg, 1.0, 40)
    assert moved.dtype == torch.long and moved.shape == pos.shape
    assert torch.equal(moved[seg < 0], pos[seg < 0])  # the padding keeps its positions
    jumped = 0
    for r in range(seg.shape[0]):
        for j in seg[r].unique().tolist():
            if j < 0:
                continue
            mine, before = moved[r, seg[r] == j], pos[r, seg[r] == j]
            assert int(mine[0]) == 0 and int(mine.max()) < 40  # still starts its sample, below max_position
            found = jumps(mine)
            assert len(found) <= 1
            if before.numel() == 1:
                assert torch.equal(mine, before)  # a one-token sample has nowhere to split
            if found:
                assert 1 <= found[0][0] < mine.numel() and found[0][1] <= 1 + 40 - mine.numel()
                jumped += 1
    assert jumped >= 4
    torch.manual_seed(0)
    assert torch.equal(skipped_packed_positions(pos, seg, 0.0, 40), pos)


def test_one_sample_per_row_draws_as_the_unpacked_rows() -> None:
    """A packed row holding one sample and no padding is an unpacked row: the same seed, the same positions."""
    pos, seg = packed_layout([[30]] * 50, width=30)
    for fraction in (0.4, 1.0):
        torch.manual_seed(9)
        packed = skipped_packed_positions(pos, seg, fraction, 300)
        after = torch.rand(1)
        torch.manual_seed(9)
        alone = skipped_positions(torch.ones(50, 30, dtype=torch.long), fraction, 300)
        assert alone is not None and torch.equal(packed, alone)
        assert torch.equal(torch.rand(1), after)  # three draws per sample in both


def test_packed_bad_arguments_are_named() -> None:
    pos, seg = packed_layout([[3, 2]], width=6)
    with pytest.raises(ValueError, match="fraction"):
        skipped_packed_positions(pos, seg, -0.5, 10)
    with pytest.raises(ValueError, match="max_position"):
        skipped_packed_positions(pos, seg, 0.5, 0)
    with pytest.raises(ValueError, match="one shape"):
        skipped_packed_positions(pos, seg[:, :4], 0.5, 10)


def test_a_packed_row_trains_each_sample_at_its_skipped_positions() -> None:
    """With packing, the loss of a packed row under position_skip is the sum of its samples' losses alone at
    the positions drawn for each; validation (eval mode) reads the packed row's own positions."""
    cfg, tok = build_preset("tiny"), load_tokenizer("tiny")
    samples = [make_sample(tok, cfg, i, groups) for i, groups in enumerate([2, 1, 3])]
    batch = tensors(pack(samples, cfg, max_tokens=sum(int(s.input_ids.numel()) for s in samples), rows=1)[0])
    assert batch["input_ids"].shape[0] == 1
    torch.manual_seed(0)
    module = TrainModule(VideoXL2ForCausalLM(cfg).train(), "lm", packing=True,
                         position_skip=PositionSkipConfig(fraction=1.0, max_position=2048))
    torch.manual_seed(4)
    drawn = skipped_packed_positions(batch["position_ids"], batch["segment_ids"], 1.0, 2048)
    assert not torch.equal(drawn, batch["position_ids"])
    torch.manual_seed(4)
    packed = module(**batch, reduction="sum")
    alone = torch.zeros(())
    pad = cfg.text_config.pad_token_id
    for j, sample in enumerate(samples):
        one = collate([sample], pad, cfg.image_size)
        positions = drawn[0, batch["segment_ids"][0] == j][None]
        alone = alone + module.model.lm_loss(one["input_ids"], one["attention_mask"], one["labels"],
                                             one["pixel_values"], position_ids=positions, reduction="sum")
    torch.testing.assert_close(packed, alone, atol=1e-4, rtol=1e-5)
    module.eval()
    plain = module(**batch, reduction="sum")
    assert (plain - packed).abs() > 1e-4
    torch.manual_seed(4)
    torch.testing.assert_close(module(**batch, reduction="sum"), plain)  # no draw in eval mode


def test_split_points_are_tokens_or_group_boundaries() -> None:
    assert split_points(5).tolist() == [1, 2, 3, 4]
    # prefix, group 0 (timestamp + visual), group 1, question and answer
    groups = torch.tensor([-1, -1, 0, 0, 0, 1, 1, 1, -1, -1])
    assert split_points(10, groups, "group").tolist() == [2, 5, 8]
    assert split_points(4, torch.full((4,), -1), "group").tolist() == []  # no video: nowhere to split
    assert split_points(10, groups, "video").tolist() == [8]
    assert split_points(10, groups, "token").tolist() == list(range(1, 10))
    assert split_points(3, torch.tensor([-1, 0, 0]), "video").tolist() == []  # nothing after the video
    with pytest.raises(ValueError, match="split"):
        split_points(10, groups, "frame")
    with pytest.raises(ValueError, match="group_index"):
        split_points(3, groups, "group")


def test_group_split_jumps_only_between_groups() -> None:
    """With the group index, every jump starts at a group's first token or just after the video, in unpacked
    rows and in each packed sample; a sample without video keeps its positions."""
    one = [-1, -1, 0, 0, 0, 1, 1, 1, 2, 2, 2, -1, -1, -1]  # 14 tokens, boundaries 2, 5, 8, 11
    torch.manual_seed(3)
    rows = torch.tensor([one] * 40)
    pos = skipped_positions(torch.ones(40, 14, dtype=torch.long), 1.0, 200, rows, split="group")
    assert pos is not None
    starts = {jumps(pos[b])[0][0] for b in range(40) if jumps(pos[b])}
    assert starts == {2, 5, 8, 11}
    text = [-1] * 6
    ppos, pseg = packed_layout([[14, 6]] * 30, width=20)
    pgroups = torch.tensor([one + text] * 30)
    moved = skipped_packed_positions(ppos, pseg, 1.0, 200, pgroups, split="group")
    assert torch.equal(moved[:, 14:], ppos[:, 14:])  # the text-only sample
    assert {jumps(moved[r, :14])[0][0] for r in range(30) if jumps(moved[r, :14])} == {2, 5, 8, 11}
    torch.manual_seed(3)
    ends = skipped_positions(torch.ones(40, 14, dtype=torch.long), 1.0, 200, rows, split="video")
    assert ends is not None and {jumps(ends[b])[0][0] for b in range(40) if jumps(ends[b])} == {11}


def test_only_eligible_samples_jump_and_the_draws_stay_three_per_sample() -> None:
    eligible = torch.tensor([True, False] * 20)
    torch.manual_seed(2)
    pos = skipped_positions(torch.ones(40, 16, dtype=torch.long), 1.0, 300, eligible=eligible)
    after = torch.rand(1)
    assert pos is not None
    assert all(torch.equal(pos[b], torch.arange(16)) for b in range(1, 40, 2))
    assert sum(bool(jumps(pos[b])) for b in range(0, 40, 2)) >= 18
    torch.manual_seed(2)
    torch.rand(120)
    assert torch.equal(torch.rand(1), after)
    ppos, pseg = packed_layout([[6, 10]] * 10, width=16)
    moved = skipped_packed_positions(ppos, pseg, 1.0, 300, eligible=torch.tensor([False, True] * 10))
    assert torch.equal(moved[:, :6], ppos[:, :6]) and not torch.equal(moved[:, 6:], ppos[:, 6:])
    with pytest.raises(ValueError, match="eligible"):
        skipped_packed_positions(ppos, pseg, 1.0, 300, eligible=torch.ones(3, dtype=torch.bool))


def test_position_skip_tasks_pick_the_samples_by_task() -> None:
    """`position_skip.tasks`: samples of other tasks keep their positions; the batch must name its tasks."""
    cfg, tok = build_preset("tiny"), load_tokenizer("tiny")
    samples = [make_sample(tok, cfg, i, groups) for i, groups in enumerate([2, 1, 3])]  # task "caption"
    batch = tensors(pack(samples, cfg, max_tokens=sum(int(s.input_ids.numel()) for s in samples), rows=1)[0])
    torch.manual_seed(0)
    model = VideoXL2ForCausalLM(cfg).train()
    plain = TrainModule(model, "lm", packing=True)(**batch, reduction="sum")
    others = TrainModule(model, "lm", packing=True,
                         position_skip=PositionSkipConfig(fraction=1.0, max_position=2048, tasks=["needle"]))
    torch.manual_seed(4)
    torch.testing.assert_close(others(**batch, reduction="sum", tasks=["caption"] * 3), plain)
    mine = TrainModule(model, "lm", packing=True,
                       position_skip=PositionSkipConfig(fraction=1.0, max_position=2048, tasks=["caption"]))
    torch.manual_seed(4)
    assert (mine(**batch, reduction="sum", tasks=["caption"] * 3) - plain).abs() > 1e-4
    with pytest.raises(ValueError, match="position_skip.tasks"):
        mine(**batch, reduction="sum")
