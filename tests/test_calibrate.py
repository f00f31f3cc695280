"""Projector calibration: the folded affine map standardises the visual tokens, ranks agree."""

from __future__ import annotations

import pytest
import torch

from model import VideoXL2ForCausalLM, build_preset
from train.calibrate import ChannelMoments, calibrate_projector, visual_token_moments


def _model() -> VideoXL2ForCausalLM:
    torch.manual_seed(0)
    return VideoXL2ForCausalLM(build_preset("tiny")).eval()


def _batches(n: int, frames: int = 8, seed: int = 1) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [{"pixel_values": torch.rand(frames, 3, 64, 64, generator=g) * 2 - 1} for _ in range(n)]


def test_calibration_centres_and_scales_every_channel() -> None:
    model = _model()
    batches = _batches(4)
    with torch.no_grad():
        before = torch.cat([model.encode_frames(b["pixel_values"]) for b in batches]).flatten(0, 1)
    assert before.mean(0).norm() > 0.1  # a fresh tower's tokens share a large common part
    info = calibrate_projector(model, batches, max_batches=4, target_std=0.25, device=torch.device("cpu"))
    with torch.no_grad():
        after = torch.cat([model.encode_frames(b["pixel_values"]) for b in batches]).flatten(0, 1)
    assert info["tokens"] == before.shape[0]
    torch.testing.assert_close(after.mean(0), torch.zeros(after.shape[1]), atol=1e-4, rtol=0)
    torch.testing.assert_close(after.std(0, unbiased=False), torch.full((after.shape[1],), 0.25), atol=1e-4, rtol=0)
    # an affine map per channel: tokens keep their correlation with what they were
    corr = torch.corrcoef(torch.stack([before[:, 3], after[:, 3]]))[0, 1]
    assert corr > 0.9999


def test_moments_skip_frameless_batches_and_stop_at_max_batches() -> None:
    model = _model()
    batches = [{"pixel_values": torch.zeros(0, 3, 64, 64)}, *_batches(3)]
    moments = visual_token_moments(model, batches, max_batches=3, device=torch.device("cpu"))
    tokens_per_batch = 2 * model.config.tokens_per_group  # 8 frames = 2 groups
    assert moments.count == 2 * tokens_per_batch
    assert model.training is False  # left as it was


def test_moments_need_tokens() -> None:
    empty = ChannelMoments(count=0, total=torch.zeros(4, dtype=torch.float64),
                           total_sq=torch.zeros(4, dtype=torch.float64))
    with pytest.raises(ValueError, match="calibrate_projector"):
        empty.mean_std()


def test_standardize_rejects_bad_statistics() -> None:
    model = _model()
    width = model.projector[-1].out_features
    with pytest.raises(ValueError, match="std"):
        model.standardize_projector_output(torch.zeros(width), torch.zeros(width), 0.1)
    with pytest.raises(ValueError, match="mean"):
        model.standardize_projector_output(torch.zeros(width + 1), torch.ones(width), 0.1)
    with pytest.raises(ValueError, match="target_std"):
        model.standardize_projector_output(torch.zeros(width), torch.ones(width), 0.0)
