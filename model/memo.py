"""A byte-capped memo of tensors keyed by the content of an input tensor (its bytes, shape and dtype).

The training's frozen-feature cache (train/feature_cache.py) and the evaluation's visual cache
(model.inference.VisualCache) are both such memos: a hit is the same input by content, whatever sample it
came with.
"""

from __future__ import annotations

import hashlib

import torch


class ContentMemo:
    """``key(tensor)`` -> stored tensor, holding at most `max_bytes` of values; once full it stops adding.
    `hits` and `misses` are counted by the users of the memo."""

    def __init__(self, max_bytes: int) -> None:
        if max_bytes <= 0:
            raise ValueError(f"max_bytes: must be > 0, got {max_bytes}")
        self.max_bytes = int(max_bytes)
        self.bytes = 0
        self.hits = 0
        self.misses = 0
        self._store: dict[bytes, torch.Tensor] = {}

    @staticmethod
    def key(tensor: torch.Tensor) -> bytes:
        """SHA-256 of the tensor's shape, dtype and bytes (copied to host memory)."""
        digest = hashlib.sha256(f"{tuple(tensor.shape)}{tensor.dtype}".encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
        return digest.digest()

    def __contains__(self, key: bytes) -> bool:
        return key in self._store

    def get(self, key: bytes) -> torch.Tensor | None:
        """The value stored under `key`, or None."""
        return self._store.get(key)

    def put(self, key: bytes, value: torch.Tensor) -> bool:
        """Store `value` unless that would pass `max_bytes`; True when stored."""
        size = value.numel() * value.element_size()
        if self.bytes + size > self.max_bytes:
            return False
        self._store[key] = value
        self.bytes += size
        return True
