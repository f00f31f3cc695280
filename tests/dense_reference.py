"""Test utility: the dense-masked reference for chunked prefill.

Builds the full T×T visibility matrix token by token from the visibility rules (independently of
``model.inference.layout``) and runs it through the stock transformers Qwen2 forward as a 4-D
additive mask, returning logits and the per-layer post-RoPE keys/values from its cache.
"""

from __future__ import annotations

import torch
from transformers import DynamicCache, Qwen2Config, Qwen2ForCausalLM

TEXT, SYSTEM, TIMESTAMP, VISUAL, QUESTION = 0, 1, 2, 3, 4


def dense_visibility(
    token_kind: torch.Tensor, group_index: torch.Tensor, chunk_groups: int, prev_chunks: int
) -> torch.Tensor:
    """BoolTensor[L, L]: ``[q, k]`` True when query q may attend to key k."""
    kinds = token_kind.tolist()
    groups = group_index.tolist()
    n = len(kinds)
    video = [i for i, k in enumerate(kinds) if k in (TIMESTAMP, VISUAL)]
    first, last = video[0], video[-1]
    role, chunk = [], []
    current = -1
    for i in range(n):
        if i < first:
            role.append("global")
            chunk.append(-1)
        elif i > last:
            role.append("suffix")
            chunk.append(-1)
        else:
            if kinds[i] in (TIMESTAMP, VISUAL):
                current = groups[i]
            role.append("ts" if kinds[i] == TIMESTAMP else "member")
            chunk.append(current // chunk_groups)
    mask = torch.zeros(n, n, dtype=torch.bool)
    for q in range(n):
        for k in range(q + 1):
            if role[q] in ("global", "suffix", "ts") or role[k] in ("global", "ts"):
                mask[q, k] = True
            elif chunk[q] - prev_chunks <= chunk[k] <= chunk[q]:
                mask[q, k] = True
    return mask


@torch.no_grad()
def dense_forward(
    llm: Qwen2ForCausalLM, embeds: torch.Tensor, visibility: torch.Tensor
) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
    """Stock HF forward of ``embeds [L, d]`` under ``visibility``: (logits [L, V], keys, values) with
    keys/values per layer shaped ``[kv_heads, L, head_dim]`` (post-RoPE, as cached by HF)."""
    dtype = embeds.dtype
    additive = torch.zeros(visibility.shape, dtype=dtype).masked_fill(~visibility, torch.finfo(dtype).min)
    cache = DynamicCache(config=llm.config)
    out = llm(inputs_embeds=embeds[None], attention_mask=additive[None, None], cache=cache, use_cache=True)
    keys = [layer.keys[0] for layer in cache.layers]
    values = [layer.values[0] for layer in cache.layers]
    return out.logits[0], keys, values


def tiny_qwen2(seed: int, hidden: int = 64, layers: int = 2, heads: int = 4, kv_heads: int = 2,
               vocab: int = 97) -> Qwen2ForCausalLM:
    """A random-weight Qwen2 LM small enough for exhaustive equivalence tests (float32, eval)."""
    torch.manual_seed(seed)
    cfg = Qwen2Config(
        vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=kv_heads, max_position_embeddings=4096,
        tie_word_embeddings=False,
    )
    return Qwen2ForCausalLM(cfg).eval()


def synthetic_layout(
    gen: torch.Generator, num_groups: int, tokens_per_group: int, prefix: int = 5, suffix: int = 4,
    ts_tokens: int = 2, inner_text: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(token_kind, group_index) for a random video prompt: system/text prefix, per group
    ``ts_tokens`` timestamp tokens + visual tokens (+ sometimes a text token), then a question."""
    kinds = [SYSTEM] * (prefix - 1) + [TEXT]
    groups = [-1] * prefix
    for g in range(num_groups):
        kinds += [TIMESTAMP] * ts_tokens + [VISUAL] * tokens_per_group
        groups += [g] * (ts_tokens + tokens_per_group)
        if inner_text and g < num_groups - 1 and bool(torch.rand((), generator=gen) < 0.3):
            kinds.append(TEXT)
            groups.append(-1)
    kinds += [QUESTION] * suffix
    groups += [-1] * suffix
    return torch.tensor(kinds), torch.tensor(groups)
