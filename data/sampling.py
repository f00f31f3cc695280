"""Frame sampling for videos and pseudo-videos, as in the released Video-XL-2 recipe.

The rule (``n`` is the number of frames sampled at ~1 fps):

1. ``step = max(1, round(avg_fps / 1))`` and the 1-fps indices are ``range(0, num_frames, step)``;
   ``n = len`` of that list.
2. If ``fps_upbound`` is set (> 0) and ``r = min(frames_upbound // n, fps_upbound) > 1``, resample at
   ``r`` fps: ``step = max(1, round(avg_fps / r))``, indices ``range(0, num_frames, step)``.
3. If more than ``frames_upbound`` indices remain (and ``frames_upbound > 0``), replace them by
   ``numpy.linspace(0, num_frames - 1, frames_upbound)`` truncated to int (uniform over the video).
4. Timestamps are ``round(index / avg_fps, 1)`` seconds, multiplied by ``scale`` when the
   annotation carries one.
5. The index list (and its timestamps) is padded to a multiple of ``group`` (4) by repeating the last
   (`model.processing.pad_frames_to_group`, the one implementation of that rule).

Images become a 4-frame pseudo-video: indices ``[0, 0, 0, 0]`` and no timestamps. A group's
timestamp is that of its first frame (`model.sequence.timestamps_for_groups`).

Decoding reads videos with ``decord.VideoReader`` over in-memory bytes and fetches only the sampled
frames with one ``get_batch`` (each distinct index once); images are decoded with PIL.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass

import decord
import numpy as np
from PIL import Image

from data.faults import BAD_IMAGE, BAD_VIDEO, EMPTY_MEDIA, SampleFault
from model.processing import pad_frames_to_group
from model.sequence import timestamps_for_groups

# What decord raises for bytes it cannot open or decode (it surfaces FFmpeg errors as RuntimeError).
DECORD_ERRORS: tuple[type[BaseException], ...] = (RuntimeError, decord.DECORDError)
# What PIL raises for undecodable / truncated / oversized images.
IMAGE_ERRORS: tuple[type[BaseException], ...] = (Image.UnidentifiedImageError, Image.DecompressionBombError,
                                                  OSError, SyntaxError, ValueError)


@dataclass(frozen=True)
class FrameSample:
    """Sampled frame indices (padded to a multiple of the group size) and their timestamps."""

    indices: list[int]
    timestamps: list[float] | None  # None for images (no timestamps)

    def group_timestamps(self, group: int = 4) -> list[float]:
        """Timestamp of the first frame of each group ([] for images)."""
        if self.timestamps is None:
            return []
        return timestamps_for_groups(self.timestamps, group)


def sample_video_frames(
    num_frames: int,
    avg_fps: float,
    *,
    frames_upbound: int,
    fps_upbound: float | None = None,
    scale: float | None = None,
    group: int = 4,
) -> FrameSample:
    """Sample frame indices of a ``num_frames`` video decoded at ``avg_fps`` (see module docstring)."""
    if num_frames <= 0:
        raise ValueError(f"num_frames must be positive, got {num_frames}")
    if not avg_fps > 0:
        raise ValueError(f"avg_fps must be positive, got {avg_fps}")
    if group <= 0:
        raise ValueError(f"group must be positive, got {group}")
    step = max(1, round(avg_fps / 1))
    indices = list(range(0, num_frames, step))
    if fps_upbound and frames_upbound > 0:
        rate = min(frames_upbound // len(indices), fps_upbound)
        if rate > 1:
            step = max(1, round(avg_fps / rate))
            indices = list(range(0, num_frames, step))
    if frames_upbound > 0 and len(indices) > frames_upbound:
        indices = [int(i) for i in np.linspace(0, num_frames - 1, frames_upbound, dtype=int)]
    timestamps = [round(i / avg_fps, 1) for i in indices]
    if scale is not None:
        timestamps = [t * scale for t in timestamps]
    return FrameSample(indices=pad_frames_to_group(np.asarray(indices, dtype=np.int64), group).tolist(),
                       timestamps=pad_frames_to_group(np.asarray(timestamps, dtype=np.float64), group).tolist())


def sample_image_frames(group: int = 4) -> FrameSample:
    """An image as a pseudo-video: the single frame repeated ``group`` times, no timestamps."""
    return FrameSample(indices=pad_frames_to_group(np.zeros(1, dtype=np.int64), group).tolist(), timestamps=None)


class VideoBytes:
    """An opened in-memory video: frame count, average fps, and batched frame reads."""

    def __init__(self, data: bytes, where: str) -> None:
        if not data:
            raise SampleFault(EMPTY_MEDIA, f"{where}: zero-byte video")
        self.where = where
        try:
            self._reader = decord.VideoReader(io.BytesIO(data), ctx=decord.cpu(0), num_threads=1)
            self.num_frames = len(self._reader)
            self.avg_fps = float(self._reader.get_avg_fps())
        except DECORD_ERRORS as exc:
            raise SampleFault(BAD_VIDEO, f"{where}: cannot open video ({str(exc)[:200]})") from exc
        if self.num_frames <= 0 or not self.avg_fps > 0:
            raise SampleFault(BAD_VIDEO, f"{where}: video has {self.num_frames} frames at {self.avg_fps} fps")

    def read_unique(self, indices: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """Decode each distinct index once: (uint8 frames [U, H, W, 3] in index order, ``inverse``)
        with ``frames[inverse]`` being the frames of ``indices`` (padding repeats cost nothing)."""
        unique, inverse = np.unique(np.asarray(indices, dtype=np.int64), return_inverse=True)
        try:
            frames = self._reader.get_batch(unique.tolist()).asnumpy()
        except DECORD_ERRORS as exc:
            raise SampleFault(BAD_VIDEO, f"{self.where}: cannot decode frames ({str(exc)[:200]})") from exc
        if frames.shape[0] != unique.shape[0] or frames.ndim != 4 or frames.shape[-1] != 3:
            raise SampleFault(BAD_VIDEO, f"{self.where}: decoder returned frames of shape {frames.shape}")
        return frames, inverse.reshape(-1)

    def read(self, indices: Sequence[int]) -> np.ndarray:
        """uint8 frames [len(indices), H, W, 3]; each distinct index is decoded once."""
        frames, inverse = self.read_unique(indices)
        return frames[inverse]


def read_image(data: bytes, where: str) -> np.ndarray:
    """Decode image bytes to uint8 RGB [H, W, 3]."""
    if not data:
        raise SampleFault(EMPTY_MEDIA, f"{where}: zero-byte image")
    try:
        with Image.open(io.BytesIO(data)) as img:
            return np.array(img.convert("RGB"), dtype=np.uint8)  # writable copy
    except IMAGE_ERRORS as exc:
        raise SampleFault(BAD_IMAGE, f"{where}: cannot decode image ({str(exc)[:200]})") from exc
