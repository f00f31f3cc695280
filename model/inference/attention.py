"""Run a block of tokens through the Qwen2 decoder layers with planned (sparse) attention.

Uses the Qwen2 modules' own weights (projections, norms, MLP, rotary embedding); only the choice of
which keys each query reads differs from the stock forward. Batch size 1; tensors are ``[n, d]``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from transformers.models.qwen2.modeling_qwen2 import apply_rotary_pos_emb

from model.inference.kv_cache import KVStore
from model.inference.layout import AttnPart

# recorder(layer_idx, part, probs[heads, n_queries, n_keys], key_index) — used by relevance scoring.
Recorder = Callable[[int, AttnPart, torch.Tensor, torch.Tensor], None]


def rope_tables(llm: torch.nn.Module, positions: torch.Tensor, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin ``[n, head_dim]`` for integer ``positions`` from the LLM's rotary embedding module."""
    cos, sin = llm.model.rotary_emb(like, positions.to(like.device)[None])
    return cos[0], sin[0]


def _key_index(part: AttnPart) -> torch.Tensor:
    if isinstance(part.keys, tuple):
        return torch.arange(part.keys[0], part.keys[1], device=part.query_index.device)
    return part.keys


def _on_device(part: AttnPart, device: torch.device) -> AttnPart:
    """The part with its index tensors on ``device``."""
    def move(t):
        return t.to(device) if isinstance(t, torch.Tensor) else t

    return AttnPart(move(part.rows), move(part.keys), move(part.query_index))


def part_mask(part: AttnPart) -> tuple[torch.Tensor | None, bool]:
    """``(bool mask [nq, nk] or None, is_causal)`` for ``keys <= query``; None when all visible."""
    q = part.query_index
    if isinstance(part.keys, tuple):
        s, e = part.keys
        nq = q.numel()
        if s == 0 and nq == e and bool((q == torch.arange(e, device=q.device)).all()):
            return None, True
        if e - 1 <= int(q.min()):
            return None, False
    else:
        if int(part.keys[-1]) <= int(q.min()):
            return None, False
    keys = _key_index(part)
    return keys[None, :] <= q[:, None], False


def _attend(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, part: AttnPart, mask_spec: tuple[torch.Tensor | None, bool],
    scale: float, layer_idx: int, recorder: Recorder | None,
) -> torch.Tensor:
    """Attention of ``q [H, nq, hd]`` over ``k/v [KVH, nk, hd]`` (GQA) under ``mask_spec`` (part_mask)."""
    mask, causal = mask_spec
    if recorder is None:
        return F.scaled_dot_product_attention(
            q[None], k[None], v[None], attn_mask=mask, is_causal=causal, scale=scale, enable_gqa=True
        )[0]
    kvh, nq, nk = k.shape[0], q.shape[1], k.shape[1]
    qg = q.reshape(kvh, -1, q.shape[2])  # heads grouped by their KV head: [KVH, rep * nq, hd]
    scores = torch.matmul(qg, k.transpose(1, 2)).mul_(scale).view(q.shape[0], nq, nk)
    if causal:
        mask = torch.ones(nq, nk, dtype=torch.bool, device=q.device).tril()
    if mask is not None:
        scores.masked_fill_(~mask, float("-inf"))
    probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
    recorder(layer_idx, part, probs, _key_index(part))
    return torch.matmul(probs.view(kvh, -1, nk), v).view(q.shape[0], nq, -1)


def layer_forward(
    layer: torch.nn.Module, layer_idx: int, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
    store: KVStore, write_start: int, parts: list[AttnPart], masks: list[tuple[torch.Tensor | None, bool]],
    recorder: Recorder | None = None,
) -> torch.Tensor:
    """One Qwen2 decoder layer over ``x [n, d]``; writes this block's K/V at ``write_start``.
    ``masks`` holds :func:`part_mask` of each part (computed once per block)."""
    attn = layer.self_attn
    n = x.shape[0]
    hd = attn.head_dim
    h = layer.input_layernorm(x)
    q = attn.q_proj(h).view(n, -1, hd).transpose(0, 1)
    k = attn.k_proj(h).view(n, -1, hd).transpose(0, 1)
    v = attn.v_proj(h).view(n, -1, hd).transpose(0, 1)
    q, k = apply_rotary_pos_emb(q, k, cos, sin, unsqueeze_dim=0)
    store.write(layer_idx, write_start, k, v)
    del k, v
    out = q.new_empty(q.shape)
    for part, spec in zip(parts, masks, strict=True):
        kk, vv = store.read(layer_idx, part.keys)
        out[:, part.rows] = _attend(q[:, part.rows], kk, vv, part, spec, attn.scaling, layer_idx, recorder)
    del q
    x = x + attn.o_proj(out.transpose(0, 1).reshape(n, -1))
    return x + layer.mlp(layer.post_attention_layernorm(x))


def forward_block(
    llm: torch.nn.Module, x: torch.Tensor, positions: torch.Tensor, store: KVStore, write_start: int,
    parts: list[AttnPart], recorder: Recorder | None = None,
) -> torch.Tensor:
    """Run ``x [n, d]`` (token positions ``positions``) through every layer; returns the final-norm
    hidden states ``[n, d]``. Store slots ``[write_start, write_start + n)`` receive the block's KV."""
    if x.dim() != 2 or x.shape[0] != positions.numel():
        raise ValueError(f"block embeddings {tuple(x.shape)} do not match {positions.numel()} positions")
    cos, sin = rope_tables(llm, positions, x)
    if parts and isinstance(parts[0].query_index, torch.Tensor) and parts[0].query_index.device != x.device:
        parts = [_on_device(p, x.device) for p in parts]
    masks = [part_mask(p) for p in parts]
    for i, layer in enumerate(llm.model.layers):
        x = layer_forward(layer, i, x, cos, sin, store, write_start, parts, masks, recorder)
    return llm.model.norm(x)
