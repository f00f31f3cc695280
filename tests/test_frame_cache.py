"""Decoded-frame cache (data/frame_cache.py): same batches as without it, no decoding on a hit, byte cap,
broken videos still fail the same way."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from test_loader import cfg_for, collect, write_dataset

from data.decoders import DecordDecoder, OpenedVideo
from data.faults import BAD_VIDEO, EMPTY_MEDIA, SampleFault
from data.frame_cache import DecodedFrameCache
from data.loader import build_loader
from helpers import grey_mp4
from model import build_preset, load_tokenizer


class _Counted:
    """An opened video that counts the frames read (a plain class: no reference cycle keeps the decord reader
    alive until a garbage collection, which could then run in a forked loader worker)."""

    def __init__(self, video: OpenedVideo, counter: list[int]) -> None:
        self.video, self.counter = video, counter
        self.num_frames, self.avg_fps = video.num_frames, video.avg_fps

    def read(self, indices: Sequence[int]) -> np.ndarray:
        self.counter[0] += len(indices)
        return self.video.read(indices)


@dataclass
class CountingDecoder:
    """decord, counting the files it opens and the frames it decodes."""

    name: str = "decord"
    opened: list[int] = field(default_factory=lambda: [0])
    frames: list[int] = field(default_factory=lambda: [0])

    def open(self, data: bytes, where: str) -> OpenedVideo:
        self.opened[0] += 1
        return _Counted(DecordDecoder().open(data, where), self.frames)


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], Any, Any]:
    root = tmp_path_factory.mktemp("fc")
    write_dataset(root / "a", 7, shard_size=3)
    return cfg_for(root, {"shards": "a/*.tar"}), load_tokenizer("tiny"), build_preset("tiny")


def two_passes(setup: tuple[dict[str, Any], Any, Any], cache_bytes: int, decoder: CountingDecoder) -> tuple[Any, list]:
    data, tok, mcfg = setup
    loader = build_loader(data, tok, mcfg, split="val", batch_size=2, num_workers=0, frames_upbound=8,
                          decoders=[decoder], frame_cache_bytes=cache_bytes)
    return loader, collect(loader) + collect(loader)  # the second pass is the next epoch (another order)


def test_cached_batches_equal_uncached_and_a_hit_decodes_nothing(setup: tuple[dict[str, Any], Any, Any]) -> None:
    plain, cached = CountingDecoder(), CountingDecoder()
    _, want = two_passes(setup, 0, plain)
    loader, got = two_passes(setup, 64 << 20, cached)
    assert len(got) == len(want) == 8
    for a, b in zip(want, got, strict=True):
        assert a["sample_ids"] == b["sample_ids"] and a["timestamps"] == b["timestamps"]
        for key in ("input_ids", "labels", "attention_mask", "frame_counts", "pixel_values"):
            assert torch.equal(a[key], b[key]), key
    # 7 videos: without the cache each pass opens and decodes every one; with it only the first pass does
    assert plain.opened[0] == 14 and cached.opened[0] == 7
    assert cached.frames[0] * 2 == plain.frames[0] > 0
    cache = loader.frame_cache
    assert (cache.frames.hits, cache.frames.misses) == (7, 7)
    assert loader.decoded == {"decord": 14}  # a hit still counts under the decoder that read the frames


def test_byte_cap_stops_adding_and_results_stay_the_same(setup: tuple[dict[str, Any], Any, Any]) -> None:
    _, want = two_passes(setup, 0, CountingDecoder())
    # room for one video's read: 3-4 distinct 32 x 32 RGB frames (1 fps of the 25-31-frame videos at 10 fps)
    loader, got = two_passes(setup, 4 * 32 * 32 * 3, CountingDecoder())
    cache = loader.frame_cache
    assert 0 < cache.frames.bytes <= cache.frames.max_bytes
    assert cache.frames.hits >= 1 and cache.frames.misses > 7  # some kept, the rest decoded again
    assert all(torch.equal(a["pixel_values"], b["pixel_values"]) for a, b in zip(want, got, strict=True))


def test_other_frames_of_the_same_video_are_decoded() -> None:
    data = grey_mp4([(5 * f) % 256 for f in range(12)], fps=4)
    dec = CountingDecoder()
    cache = DecodedFrameCache(1 << 20)
    first, inv = cache.open(data, "v.mp4", [dec]).read_unique([0, 4, 4, 8])
    again = cache.open(data, "v.mp4", [dec])
    assert dec.opened[0] == 1 and (again.num_frames, again.avg_fps) == (12, 4.0)
    frames, inv2 = again.read_unique([0, 8, 4])  # the same distinct frames in another order: a hit
    assert dec.opened[0] == 1 and np.array_equal(frames, first) and inv2.tolist() == [0, 2, 1]
    assert inv.tolist() == [0, 1, 1, 2]
    other, _ = cache.open(data, "v.mp4", [dec]).read_unique([1, 2])  # other frames: opened and decoded
    assert dec.opened[0] == 2 and other.shape[0] == 2 and (cache.frames.hits, cache.frames.misses) == (1, 2)


def test_broken_videos_fail_as_without_the_cache(tmp_path: Path) -> None:
    cache = DecodedFrameCache(1 << 20)
    with pytest.raises(SampleFault) as empty:
        cache.open(b"", "s.tar:k.mp4")
    assert empty.value.reason == EMPTY_MEDIA and "s.tar:k.mp4" in str(empty.value)
    with pytest.raises(SampleFault) as junk:
        cache.open(b"not a video" * 50, "s.tar:j.mp4")
    assert junk.value.reason == BAD_VIDEO and "s.tar:j.mp4" in str(junk.value)
    with pytest.raises(ValueError, match="max_bytes"):
        DecodedFrameCache(0)
