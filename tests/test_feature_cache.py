"""The memo of frozen vision tower + DTS outputs (train/feature_cache.py) and its use by TrainModule."""

from __future__ import annotations

import pytest
import torch
from test_model import make_batch

from helpers import assert_same_loss_and_grads
from model import VideoXL2ForCausalLM, build_preset
from train.feature_cache import FrozenFeatureCache
from train.objectives import TrainModule


@pytest.fixture()
def frozen_encoder() -> VideoXL2ForCausalLM:
    torch.manual_seed(0)
    model = VideoXL2ForCausalLM(build_preset("tiny"))
    model.vision_tower.requires_grad_(False)
    model.dts.requires_grad_(False)
    return model.train()


def frames(groups: int, size: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(4 * groups, 3, size, size, generator=gen) * 2 - 1


def test_cache_returns_synthesize_groups_and_counts_hits(frozen_encoder: VideoXL2ForCausalLM) -> None:
    model, size = frozen_encoder, frozen_encoder.config.image_size
    a, b = frames(2, size, seed=1), frames(1, size, seed=2)
    batch = torch.cat([a, b, a[4:]])  # the last group repeats the second one
    with torch.no_grad():
        expected = model.synthesize_groups(batch)
    cache = FrozenFeatureCache(max_bytes=2**20)
    got = cache.group_tokens(model, batch)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    assert (cache.hits, cache.misses) == (0, 4)
    per_group = expected[0].numel() * expected.element_size()
    assert cache.bytes == 3 * per_group  # three distinct groups stored once each
    again = cache.group_tokens(model, torch.cat([b, a]))  # same content, other order and batch
    torch.testing.assert_close(again, torch.cat([expected[2:3], expected[:2]]), rtol=1e-5, atol=1e-6)
    assert (cache.hits, cache.misses) == (3, 4)
    changed = batch.clone()
    changed[0, 0, 0, 0] += 0.5  # one pixel differs: a different key
    cache.group_tokens(model, changed)
    assert cache.misses == 5


def test_full_cache_stops_storing_but_stays_exact(frozen_encoder: VideoXL2ForCausalLM) -> None:
    model, size = frozen_encoder, frozen_encoder.config.image_size
    batch = frames(3, size, seed=3)
    with torch.no_grad():
        expected = model.synthesize_groups(batch)
    per_group = expected[0].numel() * expected.element_size()
    cache = FrozenFeatureCache(max_bytes=per_group)
    torch.testing.assert_close(cache.group_tokens(model, batch), expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(cache.group_tokens(model, batch), expected, rtol=1e-5, atol=1e-6)
    assert cache.bytes == per_group and (cache.hits, cache.misses) == (1, 5)
    with pytest.raises(ValueError, match="multiple of 4"):
        cache.group_tokens(model, batch[:6])
    with pytest.raises(ValueError, match="max_bytes"):
        FrozenFeatureCache(0)


def test_train_module_with_cache_gives_the_same_loss_and_gradients(frozen_encoder: VideoXL2ForCausalLM) -> None:
    model = frozen_encoder
    batch = make_batch(model.config, seed=7)
    plain = TrainModule(model, "lm")
    cached = TrainModule(model, "lm", feature_cache=FrozenFeatureCache(2**20))
    trained = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trained and not any(n.startswith(("vision_tower", "dts")) for n in trained)
    assert_same_loss_and_grads((plain, cached, cached), model, batch)  # the second cached pass is all hits
    assert cached.feature_cache.hits > 0
