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

Decoding (:class:`VideoBytes`) reads videos from memory with decord, falling back to PyAV for what
decord cannot open or decode (:mod:`data.decoders`), and fetches only the sampled frames (each
distinct index once); images are decoded with PIL. The rule above and the timestamps are the same
whichever decoder reads the file; the frame rate when the metadata has none is
:func:`data.decoders.resolve_fps`'s.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

from data.decoders import (
    DECORD_ERRORS,
    DEFAULT_DECODERS,
    DecodeError,
    OpenedVideo,
    UnsupportedCodec,
    VideoDecoder,
    probe_codec,
)
from data.faults import BAD_IMAGE, BAD_VIDEO, EMPTY_MEDIA, UNSUPPORTED_CODEC, SampleFault
from model.processing import pad_frames_to_group
from model.sequence import timestamps_for_groups

__all__ = ["DECORD_ERRORS", "FrameSample", "VideoBytes", "read_image", "sample_image_frames", "sample_video_frames"]
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


def _detached(exc: DecodeError) -> DecodeError:
    """A copy of `exc` (same class and message) without its traceback or chained causes.

    A kept exception's traceback holds the frames that raised it, and through them this VideoBytes and
    the decoder's native reader: a reference cycle that only the cyclic garbage collector frees, in
    whatever thread happens to run it. decord is not thread-safe, and a reader freed by a loader worker's
    queue thread while the watchdog's decode thread reads another one aborted the process; without the
    cycle a reader is freed, by reference counting, by the thread that drops it."""
    return type(exc)(str(exc))


class VideoBytes:
    """An opened in-memory video: frame count, average fps, and batched frame reads.

    The decoders of ``decoders`` (default :data:`data.decoders.DEFAULT_DECODERS`: decord, then PyAV)
    are tried in order: the first that opens the bytes gives ``num_frames`` and ``avg_fps``; when it
    then cannot decode the asked frames, the next ones are opened in turn (they must report the same
    frame count and rate) and asked the same frames. :attr:`decoder` names the decoder that opened
    the file or, after a read, the one whose frames were returned. When none can: a
    :class:`~data.faults.SampleFault` ``unsupported_codec`` ("unsupported codec av1 in <file>") when
    every decoder lacks the codec, else ``bad_video`` with each decoder's reason.
    """

    def __init__(self, data: bytes, where: str, decoders: Sequence[VideoDecoder] = DEFAULT_DECODERS) -> None:
        if not data:
            raise SampleFault(EMPTY_MEDIA, f"{where}: zero-byte video")
        if not decoders:
            raise ValueError("decoders: need at least one video decoder")
        self.where = where
        self._data = data
        self._decoders = tuple(decoders)
        self._failures: list[tuple[str, DecodeError]] = []
        self._pos = -1
        self._video = self._open_next()
        self.num_frames = int(self._video.num_frames)
        self.avg_fps = float(self._video.avg_fps)

    @property
    def decoder(self) -> str:
        """Name of the decoder in use (the one whose frames the last read returned)."""
        return self._decoders[self._pos].name

    def _open_next(self) -> OpenedVideo:
        """Open the bytes with the next decoder of the chain that can; SampleFault when none is left."""
        while self._pos + 1 < len(self._decoders):
            self._pos += 1
            dec = self._decoders[self._pos]
            try:
                video = dec.open(self._data, self.where)
            except DecodeError as exc:
                self._failures.append((dec.name, _detached(exc)))
                continue
            if self._failures and hasattr(self, "num_frames") and (
                    video.num_frames != self.num_frames or abs(video.avg_fps - self.avg_fps) > 1e-3 * self.avg_fps):
                self._failures.append((dec.name, DecodeError(
                    f"{dec.name}: reads {video.num_frames} frames at {video.avg_fps:.3f} fps where the first decoder "
                    f"read {self.num_frames} at {self.avg_fps:.3f}")))
                continue
            return video
        raise self._fault()

    def _fault(self) -> SampleFault:
        reasons = "; ".join(str(exc) for _, exc in self._failures)
        if all(isinstance(exc, UnsupportedCodec) for _, exc in self._failures):
            codec = probe_codec(self._data)
            what = f"codec {codec}" if codec is not None else "codec (unknown to FFmpeg)"
            return SampleFault(UNSUPPORTED_CODEC, f"unsupported {what} in {self.where} ({reasons})")
        return SampleFault(BAD_VIDEO, f"{self.where}: cannot decode the video ({reasons})")

    def read_unique(self, indices: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """Decode each distinct index once: (uint8 frames [U, H, W, 3] in index order, ``inverse``)
        with ``frames[inverse]`` being the frames of ``indices`` (padding repeats cost nothing)."""
        unique, inverse = np.unique(np.asarray(indices, dtype=np.int64), return_inverse=True)
        while True:
            try:
                frames = self._video.read(unique.tolist())
            except DecodeError as exc:
                self._failures.append((self.decoder, _detached(exc)))
                self._video = self._open_next()
                continue
            if frames.shape[0] != unique.shape[0] or frames.ndim != 4 or frames.shape[-1] != 3:
                raise SampleFault(BAD_VIDEO, f"{self.where}: {self.decoder} returned frames of shape {frames.shape} "
                                             f"for {unique.shape[0]} indices")
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
