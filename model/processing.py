"""Frame preprocessing: bicubic resize to S x S (no crop), scale 1/255, normalise; group padding."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

import numpy as np
import torch
import torch.nn.functional as F

ArrayOrTensor = TypeVar("ArrayOrTensor", np.ndarray, torch.Tensor)

_CHUNK_FRAMES = 16


def preprocess_frames(
    frames: np.ndarray,
    image_size: int,
    mean: Sequence[float] = (0.5, 0.5, 0.5),
    std: Sequence[float] = (0.5, 0.5, 0.5),
) -> torch.Tensor:
    """uint8 frames [N, H, W, 3] -> FloatTensor [N, 3, S, S].

    Bicubic resize (PIL-compatible antialiased kernel), rounded and clamped to the uint8 range as an
    image processor would, then ``(x / 255 - mean) / std``. Frames are processed in chunks so that
    long high-resolution videos do not need a float copy of the whole input.
    """
    if not isinstance(frames, np.ndarray):
        raise ValueError(f"frames: must be a numpy array, got {type(frames).__name__}")
    if frames.dtype != np.uint8:
        raise ValueError(f"frames: dtype must be uint8, got {frames.dtype}")
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames: shape must be [N, H, W, 3], got {list(frames.shape)}")
    if not isinstance(image_size, int | np.integer) or image_size < 1:
        raise ValueError(f"image_size: must be a positive int, got {image_size!r}")
    if len(mean) != 3 or len(std) != 3:
        raise ValueError(f"mean/std: need 3 values each, got {len(mean)} and {len(std)}")
    if any(s == 0 for s in std):
        raise ValueError(f"std: values must be non-zero, got {tuple(std)}")
    n, h, w, _ = frames.shape
    size = int(image_size)
    scale = torch.tensor([1.0 / (255.0 * s) for s in std], dtype=torch.float32).view(1, 3, 1, 1)
    shift = torch.tensor([m / s for m, s in zip(mean, std, strict=True)], dtype=torch.float32).view(1, 3, 1, 1)
    out = torch.empty((n, 3, size, size), dtype=torch.float32)
    src = torch.from_numpy(np.ascontiguousarray(frames))
    for start in range(0, n, _CHUNK_FRAMES):
        # convert while contiguous (NHWC), then view as NCHW: a strided uint8 -> float copy is slow
        chunk = src[start:start + _CHUNK_FRAMES].to(torch.float32).permute(0, 3, 1, 2)
        if (h, w) != (size, size):
            # antialias=True selects the PIL-compatible bicubic kernel (a = -0.5) in both directions
            chunk = F.interpolate(chunk, size=(size, size), mode="bicubic", align_corners=False,
                                  antialias=True)
            chunk = chunk.round_().clamp_(0.0, 255.0)
        out[start:start + _CHUNK_FRAMES] = chunk * scale - shift
    return out


def pad_frames_to_group(frames: ArrayOrTensor, group: int = 4) -> ArrayOrTensor:
    """Repeat the last frame (axis 0) until the count is a multiple of ``group``."""
    if group < 1:
        raise ValueError(f"group: must be >= 1, got {group}")
    n = int(frames.shape[0])
    if n == 0:
        raise ValueError("frames: cannot pad an empty frame list (no last frame to repeat)")
    missing = (-n) % group
    if missing == 0:
        return frames
    if isinstance(frames, torch.Tensor):
        return torch.cat([frames, frames[-1:].expand(missing, *frames.shape[1:])], dim=0)
    return np.concatenate([frames, np.repeat(frames[-1:], missing, axis=0)], axis=0)


def image_to_pseudo_video(frame: ArrayOrTensor, group: int = 4) -> ArrayOrTensor:
    """An image [H, W, C] (or [1, H, W, C]) repeated ``group`` times -> [group, H, W, C]."""
    if group < 1:
        raise ValueError(f"group: must be >= 1, got {group}")
    if frame.ndim == 4:
        if frame.shape[0] != 1:
            raise ValueError(f"frame: expected one image, got a batch of {frame.shape[0]}")
        frame = frame[0]
    if frame.ndim != 3:
        raise ValueError(f"frame: shape must be [H, W, C], got {list(frame.shape)}")
    if isinstance(frame, torch.Tensor):
        return frame.unsqueeze(0).repeat(group, 1, 1, 1)
    return np.repeat(frame[None], group, axis=0)
