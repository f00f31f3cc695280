"""Frame sampling against a plain re-statement of the sampling rule, and decoding of the sampled frames."""

from __future__ import annotations

import numpy as np
import pytest

from data.faults import BAD_VIDEO, EMPTY_MEDIA, SampleFault
from data.sampling import VideoBytes, sample_image_frames, sample_video_frames
from helpers import grey_mp4


def rule_reference(total: int, avg_fps: float, frames_upbound: int, fps_upbound: float | None,
                   scale: float | None = None) -> tuple[list[int], list[float]]:
    """The sampling rule of data.sampling, written out plainly (n = number of frames at 1 fps)."""
    step = round(avg_fps / 1)
    if step < 1:
        step = 1
    frame_idx = [i for i in range(0, total, step)]
    if fps_upbound:
        higher = min(frames_upbound // len(frame_idx), fps_upbound)
        if higher > 1:
            step = round(avg_fps / higher)
            if step < 1:
                step = 1
            frame_idx = [i for i in range(0, total, step)]
    if len(frame_idx) > frames_upbound:
        frame_idx = [int(x) for x in np.linspace(0, total - 1, frames_upbound, dtype=int)]
    times = [round(i / avg_fps, 1) for i in frame_idx]
    if scale is not None:
        times = [t * scale for t in times]
    while len(frame_idx) % 4 != 0:
        frame_idx.append(frame_idx[-1])
        times.append(times[-1])
    return frame_idx, times


CASES = [
    (1, 30.0, 16, None), (7, 25.0, 16, 4), (95, 30.0, 16, None), (95, 30.0, 16, 4), (300, 29.97, 16, 4),
    (3000, 30.0, 16, None), (3000, 30.0, 150, 4), (600, 60.0, 150, 4), (45, 10.0, 150, 2), (12, 1.0, 4, 4),
    (9, 0.5, 16, 4), (240, 24.0, 5, None), (1000, 23.976, 400, 4), (31, 30.0, 16, 4),
]


@pytest.mark.parametrize(("total", "fps", "upbound", "fps_up"), CASES)
def test_sampling_matches_rule_reference(total: int, fps: float, upbound: int, fps_up: float | None) -> None:
    got = sample_video_frames(total, fps, frames_upbound=upbound, fps_upbound=fps_up)
    ref_idx, ref_t = rule_reference(total, fps, upbound, fps_up)
    assert got.indices == ref_idx
    assert got.timestamps == ref_t
    assert len(got.indices) % 4 == 0 and all(0 <= i < total for i in got.indices)


def test_sampling_scale_and_group_timestamps() -> None:
    got = sample_video_frames(200, 25.0, frames_upbound=32, fps_upbound=None, scale=2.0)
    ref_idx, ref_t = rule_reference(200, 25.0, 32, None, scale=2.0)
    assert got.indices == ref_idx and got.timestamps == ref_t
    assert got.group_timestamps(4) == ref_t[::4]


def test_hand_worked_example() -> None:
    # 95 frames at 30 fps: 1 fps gives [0, 30, 60, 90] (n = 4); fps_upbound 4 and 16 // 4 = 4 -> 4 fps,
    # step round(7.5) = 8 -> 0, 8, ..., 88 (12 frames, already a multiple of 4).
    got = sample_video_frames(95, 30.0, frames_upbound=16, fps_upbound=4)
    assert got.indices == list(range(0, 95, 8))
    assert got.timestamps[:3] == [0.0, 0.3, 0.5]


def test_image_is_four_frame_pseudo_video() -> None:
    img = sample_image_frames()
    assert img.indices == [0, 0, 0, 0] and img.timestamps is None and img.group_timestamps() == []
    assert sample_image_frames(3).indices == [0, 0, 0]


@pytest.mark.parametrize("group", [1, 3, 4, 8])
def test_padding_and_group_timestamps_follow_the_model_helpers(group: int) -> None:
    """Index padding and group timestamps are the model's rules (one implementation of each)."""
    from model.processing import pad_frames_to_group
    from model.sequence import timestamps_for_groups

    got = sample_video_frames(95, 30.0, frames_upbound=16, fps_upbound=None, group=group)  # 4 raw indices
    assert got.indices == pad_frames_to_group(np.array([0, 30, 60, 90]), group).tolist()
    assert all(type(i) is int for i in got.indices) and all(type(t) is float for t in got.timestamps or [])
    assert got.group_timestamps(group) == timestamps_for_groups(got.timestamps or [], group)
    with pytest.raises(ValueError, match="frames_per_group must be >= 1"):
        got.group_timestamps(0)
    with pytest.raises(ValueError, match="group: must be >= 1"):
        sample_image_frames(0)


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="num_frames"):
        sample_video_frames(0, 30.0, frames_upbound=16)
    with pytest.raises(ValueError, match="avg_fps"):
        sample_video_frames(10, 0.0, frames_upbound=16)


def make_mp4(num_frames: int, fps: int, size: tuple[int, int] = (64, 48)) -> tuple[bytes, list[int]]:
    """An H.264 mp4 whose frame i is a flat grey of level (i * 8) % 256; returns bytes and levels."""
    levels = [(i * 8) % 256 for i in range(num_frames)]
    return grey_mp4(levels, fps, size), levels


def test_decode_reads_exactly_the_sampled_frames() -> None:
    data, levels = make_mp4(31, fps=10)
    video = VideoBytes(data, "t.mp4")
    assert video.num_frames == 31 and video.avg_fps == pytest.approx(10.0)
    sample = sample_video_frames(video.num_frames, video.avg_fps, frames_upbound=16, fps_upbound=4)
    frames = video.read(sample.indices)
    assert frames.shape == (len(sample.indices), 48, 64, 3) and frames.dtype == np.uint8
    means = frames.reshape(len(sample.indices), -1).mean(axis=1)
    expected = np.array([levels[i] for i in sample.indices], dtype=np.float64)
    assert np.abs(means - expected).max() < 4.0


def test_decode_errors_are_faults() -> None:
    data, _ = make_mp4(20, fps=10)
    with pytest.raises(SampleFault) as err:
        VideoBytes(b"", "zero.mp4")
    assert err.value.reason == EMPTY_MEDIA
    for broken in (data[: len(data) // 2], b"this is not a video at all" * 4):
        with pytest.raises(SampleFault) as err:
            VideoBytes(broken, "broken.mp4")
        assert err.value.reason == BAD_VIDEO and "broken.mp4" in str(err.value)
