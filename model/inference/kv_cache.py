"""Per-layer key/value store with a fixed capacity (post-RoPE keys, batch size 1)."""

from __future__ import annotations

import torch


class KVStore:
    """Keys/values of every layer, ``[kv_heads, capacity, head_dim]`` each, filled by index.

    Keys are stored after RoPE, so an entry's position is baked in and the store index is free
    to differ from the token position (bi-level compaction relies on this).
    """

    def __init__(
        self, num_layers: int, kv_heads: int, head_dim: int, capacity: int, dtype: torch.dtype,
        device: torch.device | str = "cpu",
    ) -> None:
        if capacity < 0 or num_layers < 1:
            raise ValueError(f"bad KVStore shape: layers={num_layers}, capacity={capacity}")
        self.keys = [torch.empty(kv_heads, capacity, head_dim, dtype=dtype, device=device) for _ in range(num_layers)]
        self.values = [torch.empty_like(k) for k in self.keys]
        self.length = 0  # number of valid leading entries (bookkeeping for append-style use)

    @property
    def capacity(self) -> int:
        """Number of slots per layer."""
        return self.keys[0].shape[1]

    @property
    def num_layers(self) -> int:
        """Number of layers."""
        return len(self.keys)

    def write(self, layer: int, start: int, k: torch.Tensor, v: torch.Tensor) -> None:
        """Write ``k``/``v`` ``[kv_heads, n, head_dim]`` into slots ``[start, start + n)``."""
        n = k.shape[1]
        if start < 0 or start + n > self.capacity:
            raise IndexError(f"KV write [{start}, {start + n}) outside capacity {self.capacity}")
        self.keys[layer][:, start : start + n] = k
        self.values[layer][:, start : start + n] = v

    def read(self, layer: int, keys: torch.Tensor | tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys/values at a ``(start, end)`` range (view) or at sorted indices (gathered copy)."""
        if isinstance(keys, tuple):
            s, e = keys
            return self.keys[layer][:, s:e], self.values[layer][:, s:e]
        return self.keys[layer].index_select(1, keys), self.values[layer].index_select(1, keys)

    def bytes_per_token(self) -> int:
        """Bytes one cached token costs over all layers (keys + values)."""
        k = self.keys[0]
        return self.num_layers * 2 * k.shape[0] * k.shape[2] * k.element_size()

    def release_layer(self, layer: int) -> None:
        """Free one layer's tensors (used while compacting layer by layer)."""
        empty = self.keys[layer].new_empty(self.keys[layer].shape[0], 0, self.keys[layer].shape[2])
        self.keys[layer] = empty
        self.values[layer] = empty
