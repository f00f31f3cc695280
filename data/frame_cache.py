"""Memo of decoded video frames, for training stages that read the same videos again.

A stage that loops over its data several times (the demo's align stage reads each video ~4 times)
decodes every video again on each pass, although the frames it asks for are the same: frame
sampling depends only on the video's frame count and rate and the stage's bounds. This cache keys
a video by the SHA-256 of its encoded bytes, so a hit is the same file by content, whatever shard,
sample or task it came with. It keeps the video's frame count, rate and decoder, and the uint8
frames of each set of frame indices read; a hit neither opens nor decodes the file. It holds at
most ``max_bytes`` of frames; once full it stops adding (what it holds stays).

The frames it returns are those a fresh decode returns, bit for bit (the same decoder read them), so
a run with the cache matches one without it exactly. One cache per loader process: loader workers
each build their own.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from data.decoders import DEFAULT_DECODERS, VideoDecoder
from data.sampling import VideoBytes


@dataclass
class _Entry:
    num_frames: int
    avg_fps: float
    decoder: str  # the decoder that opened the file
    reads: dict[tuple[int, ...], tuple[np.ndarray, str]] = field(default_factory=dict)  # unique indices ->
    # (uint8 frames [U, H, W, 3], the decoder whose frames they are)


class DecodedFrameCache:
    """Byte-capped memo of decoded frames per video content; :meth:`open` stands in for
    :class:`data.sampling.VideoBytes`. ``hits`` and ``misses`` count :meth:`CachedVideo.read_unique` calls.

    Raises ValueError if ``max_bytes`` <= 0."""

    def __init__(self, max_bytes: int) -> None:
        if max_bytes <= 0:
            raise ValueError(f"max_bytes: must be > 0, got {max_bytes}")
        self.max_bytes = int(max_bytes)
        self.bytes = 0
        self.hits = 0
        self.misses = 0
        self._videos: dict[bytes, _Entry] = {}

    def open(self, data: bytes, where: str, decoders: Sequence[VideoDecoder] = DEFAULT_DECODERS) -> CachedVideo:
        """The video of ``data`` (encoded bytes): opened with ``VideoBytes(data, where, decoders)`` unless a
        video with the same bytes was opened before. Raises what ``VideoBytes`` raises
        (:class:`~data.faults.SampleFault` for an empty or undecodable file)."""
        digest = hashlib.sha256(data).digest()
        entry = self._videos.get(digest)
        if entry is not None:
            return CachedVideo(self, entry, data, where, tuple(decoders), None)
        video = VideoBytes(data, where, decoders)
        entry = _Entry(video.num_frames, video.avg_fps, video.decoder)
        self._videos[digest] = entry  # a few numbers per video; only frames count against max_bytes
        return CachedVideo(self, entry, data, where, tuple(decoders), video)

    def _store(self, entry: _Entry, unique: tuple[int, ...], frames: np.ndarray, decoder: str) -> None:
        if self.bytes + frames.nbytes > self.max_bytes:
            return
        entry.reads[unique] = (frames, decoder)
        self.bytes += frames.nbytes


class CachedVideo:
    """A video opened through :class:`DecodedFrameCache`: ``num_frames``, ``avg_fps``, ``decoder`` and
    ``read_unique`` as :class:`data.sampling.VideoBytes` has them. The file is opened only when a read
    misses the cache. Callers must not modify the frames returned (they may be the cache's own)."""

    def __init__(self, cache: DecodedFrameCache, entry: _Entry, data: bytes, where: str,
                 decoders: tuple[VideoDecoder, ...], video: VideoBytes | None) -> None:
        self._cache = cache
        self._entry = entry
        self._data = data
        self._where = where
        self._decoders = decoders
        self._video = video
        self.num_frames = entry.num_frames
        self.avg_fps = entry.avg_fps
        self.decoder = entry.decoder

    def read_unique(self, indices: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """(uint8 frames [U, H, W, 3] of the distinct indices in order, ``inverse``), as
        ``VideoBytes.read_unique``; sets ``decoder`` to the decoder whose frames these are."""
        unique, inverse = np.unique(np.asarray(indices, dtype=np.int64), return_inverse=True)
        key = tuple(unique.tolist())
        stored = self._entry.reads.get(key)
        if stored is not None:
            self._cache.hits += 1
            frames, self.decoder = stored
            return frames, inverse.reshape(-1)
        self._cache.misses += 1
        if self._video is None:
            self._video = VideoBytes(self._data, self._where, self._decoders)
        frames, _ = self._video.read_unique(key)
        self.decoder = self._video.decoder
        self._cache._store(self._entry, key, frames, self.decoder)
        return frames, inverse.reshape(-1)
