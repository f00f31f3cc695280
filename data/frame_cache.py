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

import numpy as np
import torch

from data.decoders import DEFAULT_DECODERS, VideoDecoder
from data.sampling import VideoBytes
from model.memo import ContentMemo


class DecodedFrameCache:
    """Byte-capped memo of decoded frames per video content; :meth:`open` stands in for
    :class:`data.sampling.VideoBytes`. The frames live in a :class:`model.memo.ContentMemo` (``frames``: its
    ``max_bytes``, ``bytes``, and ``hits`` / ``misses`` counted per :meth:`CachedVideo.read_unique` call).

    Raises ValueError if ``max_bytes`` <= 0."""

    def __init__(self, max_bytes: int) -> None:
        self.frames = ContentMemo(max_bytes)
        self._videos: dict[bytes, tuple[int, float, str]] = {}  # digest -> (frame count, fps, opening decoder)
        self._readers: dict[bytes, str] = {}  # frames key -> the decoder whose frames are stored

    def open(self, data: bytes, where: str, decoders: Sequence[VideoDecoder] = DEFAULT_DECODERS) -> CachedVideo:
        """The video of ``data`` (encoded bytes): opened with ``VideoBytes(data, where, decoders)`` unless a
        video with the same bytes was opened before. Raises what ``VideoBytes`` raises
        (:class:`~data.faults.SampleFault` for an empty or undecodable file)."""
        digest = hashlib.sha256(data).digest()
        video = None
        if digest not in self._videos:
            video = VideoBytes(data, where, decoders)
            self._videos[digest] = (video.num_frames, video.avg_fps, video.decoder)  # a few numbers per video
        return CachedVideo(self, digest, data, where, tuple(decoders), video)

    def _get(self, key: bytes) -> tuple[np.ndarray, str] | None:
        stored = self.frames.get(key)
        return None if stored is None else (stored.numpy(), self._readers[key])

    def _put(self, key: bytes, frames: np.ndarray, decoder: str) -> None:
        if self.frames.put(key, torch.from_numpy(frames)):
            self._readers[key] = decoder


class CachedVideo:
    """A video opened through :class:`DecodedFrameCache`: ``num_frames``, ``avg_fps``, ``decoder`` and
    ``read_unique`` as :class:`data.sampling.VideoBytes` has them. The file is opened only when a read
    misses the cache. Callers must not modify the frames returned (they may be the cache's own)."""

    def __init__(self, cache: DecodedFrameCache, digest: bytes, data: bytes, where: str,
                 decoders: tuple[VideoDecoder, ...], video: VideoBytes | None) -> None:
        self._cache = cache
        self._digest = digest
        self._data = data
        self._where = where
        self._decoders = decoders
        self._video = video
        self.num_frames, self.avg_fps, self.decoder = cache._videos[digest]

    def read_unique(self, indices: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """(uint8 frames [U, H, W, 3] of the distinct indices in order, ``inverse``), as
        ``VideoBytes.read_unique``; sets ``decoder`` to the decoder whose frames these are."""
        unique, inverse = np.unique(np.asarray(indices, dtype=np.int64), return_inverse=True)
        key = self._digest + unique.tobytes()
        stored = self._cache._get(key)
        if stored is not None:
            self._cache.frames.hits += 1
            frames, self.decoder = stored
            return frames, inverse.reshape(-1)
        self._cache.frames.misses += 1
        if self._video is None:
            self._video = VideoBytes(self._data, self._where, self._decoders)
        frames, _ = self._video.read_unique(unique.tolist())
        self.decoder = self._video.decoder
        self._cache._put(key, frames, self.decoder)
        return frames, inverse.reshape(-1)
