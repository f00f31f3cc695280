"""Ulysses sequence parallelism for the LLM (`loop.sequence_parallel: P`).

Each sequence of a micro-batch is split into P contiguous shards, one per rank of a sequence-parallel
group (ranks ``[g*P, (g+1)*P)``); all ranks of a group read the same batches (the loader runs over
``world / P`` data-parallel ranks). The vision tower, DTS and projector run on the whole sample on
every rank of the group; only the LLM's tokens are sharded. Inside each attention layer DeepSpeed's
``UlyssesSPAttentionHF`` (deepspeed.runtime.sequence_parallel.ulysses_sp; Jacobs et al. 2023,
"DeepSpeed Ulysses") exchanges the shards so that each rank attends over the full sequence with
heads/P heads, then exchanges back.

What this module adds around DeepSpeed's class, and why:

- Attention is registered under its own name (:data:`ULYSSES_SDPA`) with transformers'
  ``AttentionInterface`` and set on the LLM only. DeepSpeed's ``register_with_transformers`` would
  overwrite ``"sdpa"`` for the whole process, and the SigLIP vision tower attends through ``"sdpa"``.
- DeepSpeed's wrapper drops every 4-D attention mask. Here the masks are handled: a right-padded
  batch needs none (causal attention never lets a real token see the padding after it); a 4-D
  visibility mask (``stage.chunked_attention``) is passed, over the full sequence, to the core SDPA
  after the exchange.
- SDPA ignores ``position_ids``; the LLM gets each shard's global positions, so rotary embeddings
  are those of the unsharded sequence.
- A length not divisible by P is right-padded (no label on the padding); a degree that does not
  divide the query heads, or neither divides nor is divided by the KV heads (then KV heads are
  replicated by DeepSpeed), is refused at setup (:func:`check_degree`).
- The loss is the token mean over the whole sequence: supervised-token counts and loss sums are
  summed over the group. Each rank back-propagates ``P * local_sum / count`` so that DeepSpeed's
  gradient average over all ranks equals the average over data-parallel groups of the full
  sample's gradient (a shard without supervised tokens contributes zero).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from train.config import ConfigError

ULYSSES_SDPA = "videoxl2_ulysses_sdpa"
IGNORE_INDEX = -100


def check_degree(degree: int, heads: int, kv_heads: int) -> None:
    """Raise ConfigError (field ``loop.sequence_parallel``) when Ulysses cannot split `heads` query and
    `kv_heads` key/value heads over `degree` ranks."""
    if degree == 1:
        return
    if heads % degree:
        raise ConfigError("loop.sequence_parallel", f"{degree} does not divide the LLM's {heads} attention heads "
                          "(each rank attends with heads / P of them)")
    if kv_heads % degree and degree % kv_heads:
        raise ConfigError("loop.sequence_parallel", f"{degree} neither divides the LLM's {kv_heads} key/value heads "
                          "nor is a multiple of them (KV heads can only be split or replicated evenly)")


@dataclass(frozen=True)
class SequenceGroup:
    """This rank's sequence-parallel group: its degree, this rank's shard index and the process group."""

    degree: int
    index: int
    group: Any

    def shard(self, length: int) -> slice:
        """Positions of this rank's shard of a sequence padded to `length` (a multiple of `degree`)."""
        size = length // self.degree
        return slice(self.index * size, (self.index + 1) * size)


def data_parallel(rank: int, world_size: int, degree: int) -> tuple[int, int]:
    """(data-parallel rank, data-parallel world size) of `rank`: groups are consecutive ranks."""
    if world_size % degree:
        raise ConfigError("loop.sequence_parallel", f"{degree} does not divide the world size {world_size}")
    return rank // degree, world_size // degree


def new_group(rank: int, world_size: int, degree: int) -> SequenceGroup:
    """Collective (every rank creates every group): the sequence-parallel group of `rank`."""
    data_parallel(rank, world_size, degree)
    mine = None
    for start in range(0, world_size, degree):
        group = torch.distributed.new_group(list(range(start, start + degree)))
        if start <= rank < start + degree:
            mine = group
    return SequenceGroup(degree=degree, index=rank % degree, group=mine)


class _Ulysses:
    """DeepSpeed's Ulysses attention for one LLM, one instance per micro-batch size."""

    def __init__(self, sp: SequenceGroup, config: Any) -> None:
        self.sp = sp
        self.heads = config.num_attention_heads
        self.kv_heads = config.num_key_value_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        self.layers = config.num_hidden_layers
        self._by_batch: dict[int, nn.Module] = {}

    def __call__(self, module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                 attention_mask: torch.Tensor | None, **kwargs: Any) -> tuple[torch.Tensor, Any]:
        from deepspeed.runtime.sequence_parallel.ulysses_sp import UlyssesSPAttentionHF
        from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

        batch = query.shape[0]
        if batch not in self._by_batch:
            self._by_batch[batch] = UlyssesSPAttentionHF(
                attn=ALL_ATTENTION_FUNCTIONS["sdpa"], batch_size=batch, attn_head_count=self.heads,
                attn_head_size=self.head_dim, kv_head_count=self.kv_heads, num_hidden_layers=self.layers,
                process_group=self.sp.group, seq_length_is_variable=True)
        return self._by_batch[batch](module, query, key, value, attention_mask, **kwargs)


def ulysses_sdpa(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                 attention_mask: torch.Tensor | None, **kwargs: Any) -> tuple[torch.Tensor, Any]:
    """The attention function registered as :data:`ULYSSES_SDPA`: query/key/value [B, H, L/P, D] of
    this rank's shard -> output [B, L/P, H*D]; `attention_mask` None (causal) or a [B, 1, L, L]
    boolean mask over the *whole* sequence."""
    handle = getattr(module, "sequence_parallel", None)
    if handle is None:
        raise RuntimeError(f"{ULYSSES_SDPA}: {type(module).__name__} has no sequence-parallel group; "
                           "set it up with train.sequence_parallel.install")
    return handle(module, query, key, value, attention_mask, **kwargs)


AttentionInterface.register(ULYSSES_SDPA, ulysses_sdpa)
AttentionMaskInterface.register(ULYSSES_SDPA, sdpa_mask)  # no mask -> causal (None); 4-D masks pass as given


def install(llm: nn.Module, sp: SequenceGroup) -> None:
    """Route `llm`'s attention layers (and nothing else) through Ulysses over `sp`. Raises ConfigError
    when the head counts do not split over the degree."""
    cfg = llm.config
    check_degree(sp.degree, cfg.num_attention_heads, cfg.num_key_value_heads)
    handle = _Ulysses(sp, cfg)
    for layer in llm.model.layers:
        layer.self_attn.sequence_parallel = handle
    llm.set_attn_implementation(ULYSSES_SDPA)


def _full_mask(attention_mask: torch.Tensor, length: int) -> torch.Tensor | None:
    """The mask the sharded LLM gets for a batch padded to `length`: None for a right-padded [B, L]
    mask (causal attention suffices), a [B, 1, length, length] boolean mask for a visibility mask."""
    if attention_mask.ndim == 2:
        seq = attention_mask.shape[1]
        lengths = attention_mask.long().sum(dim=1, keepdim=True)
        if not torch.equal(attention_mask.bool(), torch.arange(seq, device=lengths.device) < lengths):
            raise ValueError("sequence parallelism: attention_mask [B, L] must be right-padded (a prefix of ones)")
        return None
    if attention_mask.dtype != torch.bool or attention_mask.shape[1] != 1:
        raise ValueError(f"sequence parallelism: a 4-D attention_mask must be boolean [B, 1, L, L], got "
                         f"{tuple(attention_mask.shape)} {attention_mask.dtype}")
    bsz, _, seq, _ = attention_mask.shape
    out = torch.eye(length, dtype=torch.bool, device=attention_mask.device).expand(bsz, 1, length, length).clone()
    out[:, :, :seq, :seq] = attention_mask
    return out


def lm_loss(model: nn.Module, sp: SequenceGroup, input_ids: torch.Tensor, attention_mask: torch.Tensor,
            labels: torch.Tensor, pixel_values: torch.Tensor | None = None,
            group_tokens: torch.Tensor | None = None, reduction: str = "mean",
            position_ids: torch.Tensor | None = None) -> torch.Tensor:
    """`VideoXL2ForCausalLM.lm_loss` with the LLM sharded over `sp` (the LLM must be `install`-ed).

    input_ids/labels [B, L] (the same on every rank of the group), attention_mask [B, L] right-padded
    or [B, 1, L, L] boolean visibility (packed rows: the block-diagonal mask of `model.packing`, with
    `position_ids` [B, L] restarting per sample; default 0..L-1). Returns a scalar whose value is the mean next-token
    cross-entropy over all supervised tokens of the batch (identical on the group's ranks) and whose
    gradient is P times this shard's share (see the module docstring). NaN when no token is supervised.
    `reduction="sum"`: the value is the sum over those tokens instead (gradient again P times the shard's
    share), as the trainer's token-weighted loss asks of `VideoXL2ForCausalLM.lm_loss`.
    """
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
    if labels.shape != input_ids.shape:
        raise ValueError(f"labels shape {tuple(labels.shape)} != input_ids shape {tuple(input_ids.shape)}")
    embeds = model._video_embeds(input_ids, pixel_values, group_tokens)
    bsz, seq, _ = embeds.shape
    length = -(-seq // sp.degree) * sp.degree
    targets = torch.full((bsz, length), IGNORE_INDEX, dtype=labels.dtype, device=embeds.device)
    targets[:, :seq - 1] = labels[:, 1:].to(embeds.device)  # position t predicts token t + 1
    mask = _full_mask(attention_mask.to(embeds.device), length)
    embeds = nn.functional.pad(embeds, (0, 0, 0, length - seq))
    positions = torch.arange(length, device=embeds.device).expand(bsz, length).clone()
    if position_ids is not None:  # the padding up to `length` keeps counting (it attends to itself only)
        positions[:, :seq] = position_ids.to(embeds.device)
    part = sp.shard(length)
    hidden = model.llm.model(inputs_embeds=embeds[:, part], attention_mask=mask, position_ids=positions[:, part],
                             use_cache=False).last_hidden_state
    mine = targets[:, part]
    supervised = mine != IGNORE_INDEX
    logits = model.llm.lm_head(hidden[supervised])
    local = nn.functional.cross_entropy(logits.float(), mine[supervised], reduction="sum")
    totals = torch.stack([supervised.sum().to(local.dtype), local.detach()])
    torch.distributed.all_reduce(totals, group=sp.group)
    count, total = totals[0], totals[1]
    if reduction == "sum":
        scaled = local * sp.degree
        return scaled + (total - scaled).detach()
    scaled = local * (sp.degree / count)
    return scaled + (total / count - scaled).detach()
