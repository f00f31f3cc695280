"""Positional skip-wise training (train/position_skip.py): the drawn positions and what the LLM makes of them."""

from __future__ import annotations

import pytest
import torch
from test_model import make_batch

from model import VideoXL2ForCausalLM, build_preset
from train.config import PositionSkipConfig
from train.objectives import TrainModule
from train.position_skip import skipped_positions


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
