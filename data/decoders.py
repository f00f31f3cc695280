"""Video decoders behind one interface: decord (the fast path) and PyAV (the fallback).

A *decoder* is an object with a ``name`` and ``open(data, where) -> OpenedVideo``; an opened video
reports ``num_frames`` and ``avg_fps`` and decodes a sorted list of distinct frame indices to uint8
RGB ``[U, H, W, 3]``. :class:`data.sampling.VideoBytes` tries the decoders of a chain in order
(default :data:`DEFAULT_DECODERS`: decord, then PyAV) and says which one produced the frames.

Frame ``i`` is the ``i``-th frame in presentation order for both decoders: decord indexes the
packets' timestamps when it opens a file; PyAV here demuxes the packets (without decoding them),
sorts their presentation timestamps, and decodes frame ``i`` by seeking to the last keyframe at or
before it (only when that keyframe lies ahead of what is already decoded) and decoding forward to
the frame whose timestamp is the ``i``-th. Streams without timestamps (raw ``.h264``/``.hevc``
elementary streams) cannot seek: they are decoded from the start up to the last asked frame.

Frame rate (:func:`resolve_fps`), the first that applies:

1. the container's average frame rate, when the container carries timestamps (decord reports the
   same value, so both decoders sample the same frames);
2. frames / duration, when the container carries timestamps and a duration but no average rate;
3. the rate the bitstream declares (H.264/HEVC VUI timing), e.g. for raw elementary streams, whose
   demuxers otherwise report FFmpeg's invented 25 fps;
4. :data:`DEFAULT_FPS` = 25: FFmpeg's own assumption for raw streams that declare nothing. A guess:
   the timestamps of such a video are only as right as it is (there is nothing better to go on).

decord reporting no usable rate counts as decord failing to open the file, so the rule above (in
the PyAV backend) is the only one.
"""

from __future__ import annotations

import bisect
import io
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import av
import decord
import numpy as np

DECORD = "decord"
PYAV = "pyav"
DEFAULT_FPS = 25.0

# What decord raises for bytes it cannot open or decode (it surfaces FFmpeg errors as RuntimeError).
DECORD_ERRORS: tuple[type[BaseException], ...] = (RuntimeError, decord.DECORDError)
# What PyAV raises for bytes it cannot open, demux or decode.
PYAV_ERRORS: tuple[type[BaseException], ...] = (av.FFmpegError, OSError, ValueError, EOFError)


class DecodeError(Exception):
    """A decoder cannot open these bytes or decode the asked frames (the message says why)."""


class UnsupportedCodec(DecodeError):
    """The decoder has no decoder for the video stream's codec."""


class OpenedVideo(Protocol):
    """An opened video: its decoder's name, frame count, average fps and a frame reader."""

    decoder: str
    num_frames: int
    avg_fps: float

    def read(self, indices: Sequence[int]) -> np.ndarray:
        """uint8 RGB frames [len(indices), H, W, 3] of distinct ascending ``indices``; DecodeError."""
        ...


class VideoDecoder(Protocol):
    """A decoder backend: ``open`` raises :class:`DecodeError` (or :class:`UnsupportedCodec`)."""

    name: str

    def open(self, data: bytes, where: str) -> OpenedVideo:
        ...


# decord prefixes its messages with "[hh:mm:ss] /path/file.cc:123: " (sometimes twice)
_DECORD_PREFIX = re.compile(r"\[\d\d:\d\d:\d\d\] \S+:\d+: ")


def _first_line(exc: BaseException, limit: int = 160) -> str:
    """The library's message in one short line (decord's source-location prefixes removed)."""
    text = _DECORD_PREFIX.sub("", str(exc)).strip().splitlines()
    line = text[0] if text else type(exc).__name__
    return line if len(line) <= limit else line[:limit] + "..."


def resolve_fps(*, container_rate: float | None, timed: bool, duration_s: float | None,
                codec_rate: float | None, num_frames: int) -> float:
    """Frames per second of a video by the rule of the module docstring (always > 0).

    ``container_rate``: the stream's average frame rate in the container (0/None when missing);
    ``timed``: whether the container gives the packets timestamps; ``duration_s``: the stream's
    duration in seconds (None when unknown); ``codec_rate``: the rate the bitstream declares.
    """
    def ok(x: float | None) -> bool:
        return x is not None and math.isfinite(x) and x > 0

    if timed and ok(container_rate):
        return float(container_rate)  # type: ignore[arg-type]
    if timed and ok(duration_s) and num_frames > 0:
        return num_frames / float(duration_s)  # type: ignore[arg-type]
    if ok(codec_rate):
        return float(codec_rate)  # type: ignore[arg-type]
    return DEFAULT_FPS


# --------------------------------------------------------------------------- decord


class _DecordVideo:
    decoder = DECORD

    def __init__(self, data: bytes) -> None:
        try:
            self._reader = decord.VideoReader(io.BytesIO(data), ctx=decord.cpu(0), num_threads=1)
            self.num_frames = len(self._reader)
            self.avg_fps = float(self._reader.get_avg_fps())
        except DECORD_ERRORS as exc:
            # decord reports a stream whose codec its FFmpeg cannot decode (AV1 in decord 0.6.0) as
            # finding no video stream
            if "cannot find video stream" in str(exc):
                raise UnsupportedCodec("decord: no decoder for the video stream") from exc
            raise DecodeError(f"decord: {_first_line(exc)}") from exc
        if self.num_frames <= 0:
            raise DecodeError(f"decord: the video has {self.num_frames} frames")
        if not (math.isfinite(self.avg_fps) and self.avg_fps > 0):
            raise DecodeError(f"decord: no usable frame rate in the metadata ({self.avg_fps})")

    def read(self, indices: Sequence[int]) -> np.ndarray:
        try:
            return self._reader.get_batch(list(indices)).asnumpy()
        except DECORD_ERRORS as exc:
            raise DecodeError(f"decord: cannot decode frames ({_first_line(exc)})") from exc


@dataclass(frozen=True)
class DecordDecoder:
    """decord ``VideoReader`` over in-memory bytes, one thread, frames by one ``get_batch``."""

    name: str = DECORD

    def open(self, data: bytes, where: str) -> OpenedVideo:
        return _DecordVideo(data)


# --------------------------------------------------------------------------- PyAV


def _best_video_stream(container: Any) -> Any:
    stream = container.streams.best("video")
    if stream is None:
        raise DecodeError("pyav: the file holds no video stream")
    if stream.codec_context is None:
        raise UnsupportedCodec("pyav: no decoder for the video stream")
    stream.codec_context.thread_count = 1
    return stream


class _PyAVVideo:
    decoder = PYAV

    def __init__(self, data: bytes) -> None:
        self._data = data
        self.frames_decoded = 0  # frames the reads decoded so far (seeking keeps this small)
        try:
            container = av.open(io.BytesIO(data), mode="r")
        except PYAV_ERRORS as exc:
            # FFmpeg's own text without PyAV's "[Errno N] ...: '<none>'" wrapping (the file is read from memory)
            reason = getattr(exc, "strerror", None) or _first_line(exc)
            raise DecodeError(f"pyav: cannot open the container ({reason})") from exc
        try:
            stream = _best_video_stream(container)
            self.codec = str(stream.codec_context.codec.canonical_name)
            self._index = stream.index
            pts: list[int | None] = []
            keys: list[int | None] = []
            try:
                for packet in container.demux(stream):
                    if packet.size == 0 or packet.is_discard:
                        continue
                    pts.append(packet.pts)
                    if packet.is_keyframe:
                        keys.append(packet.pts)
            except PYAV_ERRORS as exc:
                raise DecodeError(f"pyav: the container is damaged after {len(pts)} packets "
                                  f"({_first_line(exc)})") from exc
            if not pts:
                raise DecodeError("pyav: the video stream holds no frames")
            promised = int(stream.frames or 0)
            if promised > len(pts):
                raise DecodeError(f"pyav: the header promises {promised} frames, the file holds {len(pts)} "
                                  "(truncated?)")
            self.num_frames = len(pts)
            timed = all(p is not None for p in pts) and len(set(pts)) == len(pts)
            self._pts: list[int] | None = sorted(p for p in pts if p is not None) if timed else None
            self._keys = sorted(k for k in keys if k is not None) if timed else []
            tb = stream.time_base
            duration = float(stream.duration * tb) if stream.duration and tb else None
            if duration is None and timed and tb and self.num_frames > 1:
                step = (self._pts[-1] - self._pts[0]) / (self.num_frames - 1)  # type: ignore[index]
                duration = float((self._pts[-1] - self._pts[0] + step) * tb)  # type: ignore[index]
            codec_rate = stream.codec_context.framerate
            self.avg_fps = resolve_fps(
                container_rate=float(stream.average_rate) if stream.average_rate else None, timed=timed,
                duration_s=duration, codec_rate=float(codec_rate) if codec_rate else None,
                num_frames=self.num_frames)
        finally:
            container.close()

    def read(self, indices: Sequence[int]) -> np.ndarray:
        wanted = [int(i) for i in indices]
        self._at = -1  # the frame being sought (for error messages)
        if not wanted:
            raise DecodeError("pyav: no frame asked")
        if wanted[-1] >= self.num_frames or wanted[0] < 0:
            raise DecodeError(f"pyav: frame {wanted[-1]} asked of a {self.num_frames}-frame video")
        try:
            with av.open(io.BytesIO(self._data), mode="r") as container:
                stream = _best_video_stream(container)
                if self._pts is not None:
                    try:
                        return np.stack(self._read_seeking(container, stream, wanted))
                    except _SeekFailed:
                        pass
            with av.open(io.BytesIO(self._data), mode="r") as container:
                return np.stack(self._read_in_order(container, _best_video_stream(container), wanted))
        except PYAV_ERRORS as exc:
            at = f" (seeking frame {self._at})" if self._at >= 0 else ""
            raise DecodeError(f"pyav: cannot decode frames{at} ({_first_line(exc)})") from exc

    def _read_seeking(self, container: Any, stream: Any, wanted: list[int]) -> list[np.ndarray]:
        """Frames by timestamp: seek to the keyframe before a frame when that skips decoding work."""
        assert self._pts is not None
        out: list[np.ndarray] = []
        frames: Any = None
        last: int | None = None  # timestamp of the last decoded frame
        for i in wanted:
            self._at = i
            target = self._pts[i]
            k = bisect.bisect_right(self._keys, target) - 1
            key = self._keys[k] if k >= 0 else self._pts[0]
            if frames is None or (last is not None and key > last):
                try:
                    container.seek(key, stream=stream, backward=True, any_frame=False)
                except PYAV_ERRORS as exc:
                    raise _SeekFailed from exc
                frames, last = container.decode(stream), None
            for frame in frames:
                self.frames_decoded += 1
                if frame.pts is None:
                    raise _SeekFailed
                if last is None and frame.pts > target:  # the seek landed after the frame
                    raise _SeekFailed
                last = frame.pts
                if frame.pts >= target:
                    break
            else:
                raise DecodeError(f"pyav: frame {i} (timestamp {target}) is missing: the stream ended")
            if last != target:
                raise DecodeError(f"pyav: frame {i} (timestamp {target}) is missing: decoding went from "
                                  f"before it to timestamp {last}")
            out.append(frame.to_ndarray(format="rgb24"))
        return out

    def _read_in_order(self, container: Any, stream: Any, wanted: list[int]) -> list[np.ndarray]:
        """Frames by their position in decoding output, decoding from the start (no seeking)."""
        out: list[np.ndarray] = []
        want = iter(wanted)
        nxt = self._at = next(want)
        count = 0
        for count, frame in enumerate(container.decode(stream), start=1):
            self.frames_decoded += 1
            if count - 1 == nxt:
                out.append(frame.to_ndarray(format="rgb24"))
                nxt = self._at = next(want, -1)
                if nxt < 0:
                    return out
        raise DecodeError(f"pyav: frame {nxt} asked, but only {count} of {self.num_frames} frames decode")


class _SeekFailed(Exception):
    """Timestamps or seeking did not behave: read the frames in order instead."""


@dataclass(frozen=True)
class PyAVDecoder:
    """PyAV (FFmpeg) over in-memory bytes: any container and codec its FFmpeg build decodes."""

    name: str = PYAV

    def open(self, data: bytes, where: str) -> OpenedVideo:
        return _PyAVVideo(data)


DEFAULT_DECODERS: tuple[VideoDecoder, ...] = (DecordDecoder(), PyAVDecoder())


def probe_codec(data: bytes) -> str | None:
    """FFmpeg's name of the codec of the best video stream of ``data`` (``av1``, ``h264``, ...), or
    None when PyAV cannot open the bytes, finds no video stream, or has no decoder for it."""
    try:
        with av.open(io.BytesIO(data), mode="r") as container:
            stream = container.streams.best("video")
            if stream is None or stream.codec_context is None:
                return None
            return str(stream.codec_context.codec.canonical_name)
    except PYAV_ERRORS:
        return None
