"""Stage objectives: causal-LM loss, and DTS masked reconstruction with semantic-guided masking.

DTS pretraining (see docs/dts_pretraining.md): the frozen vision tower gives each frame's encoder
tokens on the interpolated grid; a fraction of them is replaced by a learned mask token, chosen
partly by saliency (the most distinctive tokens of the frame) and partly at random; DTS compresses
the 4 masked frames into one token map; a light decoder expands that map back to 4 frames and is
scored by MSE against the per-token-normalised original tokens, on masked positions only.
"""

from __future__ import annotations

import functools
from typing import Any

import torch
from torch import nn

from model.dts import group_frames
from model.packing import PACKED_SDPA, block_causal_mask, compose_block_diagonal, unpack_rows
from model.pooled_attention import POOLED_SDPA
from model.sequence import IGNORE_INDEX
from model.visibility import bilevel_visibility, causal_visibility, chunked_visibility
from model.vision import resample_grid, siglip_features
from train import sequence_parallel
from train.config import ChunkedAttentionConfig, MaskingConfig, PositionSkipConfig
from train.feature_cache import FrozenFeatureCache
from train.position_skip import skipped_packed_positions, skipped_positions


class DTSDecoder(nn.Module):
    """Light decoder: DTS output (G, P, C) -> (G, F, P, C) reconstructed encoder tokens.

    Also owns the mask token that replaces masked encoder tokens at the DTS input. It exists only
    during DTS pretraining and is never part of the exported model.
    """

    def __init__(self, channels: int, frames: int, tokens: int, dim: int, layers: int, heads: int) -> None:
        super().__init__()
        self.frames = frames
        self.mask_token = nn.Parameter(torch.zeros(channels))
        self.inp = nn.Linear(channels, dim)
        self.frame_embed = nn.Parameter(torch.randn(frames, dim) * 0.02)
        self.pos_embed = nn.Parameter(torch.randn(tokens, dim) * 0.02)
        self.blocks = nn.ModuleList(
            nn.TransformerEncoderLayer(dim, heads, dim_feedforward=2 * dim, dropout=0.0, activation="gelu",
                                       batch_first=True, norm_first=True)
            for _ in range(layers)
        )
        self.norm = nn.LayerNorm(dim)
        self.out = nn.Linear(dim, channels)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        g, p, _ = z.shape
        h = self.inp(z)[:, None] + self.frame_embed[None, :, None] + self.pos_embed[None, None]
        h = h.reshape(g * self.frames, p, -1)
        for block in self.blocks:
            h = block(h)
        return self.out(self.norm(h)).reshape(g, self.frames, p, -1)


def masked_count(tokens_per_frame: int, mask_ratio: float) -> int:
    """Tokens `semantic_guided_mask` masks in each frame of `tokens_per_frame` tokens (at least 1, at most all
    but one)."""
    return max(1, min(tokens_per_frame - 1, round(mask_ratio * tokens_per_frame)))


def semantic_guided_mask(tokens: torch.Tensor, mask_ratio: float, semantic_fraction: float) -> torch.Tensor:
    """Boolean mask (..., P) over tokens (..., P, C): `mask_ratio * P` tokens per frame, of which a
    `semantic_fraction` share are the most salient and the rest drawn uniformly from the others.

    Saliency = distance of a token from its frame's mean token (distinctive content scores high).
    """
    p = tokens.shape[-2]
    k = masked_count(p, mask_ratio)
    k_sem = min(k, round(semantic_fraction * k))
    with torch.no_grad():
        saliency = (tokens - tokens.mean(dim=-2, keepdim=True)).float().norm(dim=-1)
        scores = torch.rand(saliency.shape, device=tokens.device)
        if k_sem > 0:
            top = saliency.topk(k_sem, dim=-1).indices
            scores.scatter_(-1, top, 2.0)  # always chosen before any random pick (rand < 1)
        chosen = scores.topk(k, dim=-1).indices
        mask = torch.zeros_like(saliency, dtype=torch.bool)
        mask.scatter_(-1, chosen, True)
    return mask


def normalise_tokens(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Per-token standardisation over channels (reconstruction targets)."""
    x = x.float()
    return (x - x.mean(-1, keepdim=True)) / torch.sqrt(x.var(-1, keepdim=True, unbiased=False) + eps)


class TrainModule(nn.Module):
    """What DeepSpeed wraps: the model plus stage-only heads; `forward(batch)` returns the loss.

    Children: `model` (VideoXL2ForCausalLM) and, for DTS pretraining, `dts_decoder`.
    """

    def __init__(self, model: nn.Module, loss: str, masking: MaskingConfig | None = None,
                 feature_cache: FrozenFeatureCache | None = None,
                 chunked_attention: ChunkedAttentionConfig | None = None, packing: bool = False,
                 position_skip: PositionSkipConfig | None = None) -> None:
        super().__init__()
        self.model = model
        self.loss_name = loss
        self.masking = masking
        self.feature_cache = feature_cache
        self.chunked_attention = chunked_attention
        self.position_skip = position_skip
        self.sequence_parallel: Any = None  # a train.sequence_parallel.SequenceGroup once the LLM is sharded
        if chunked_attention is not None and chunked_attention.bilevel_fraction > 0:
            model.llm.set_attn_implementation(POOLED_SDPA)  # SDPA that also reads the pooled entries
        elif packing and model.llm.config._attn_implementation == "sdpa":
            model.llm.set_attn_implementation(PACKED_SDPA)  # SDPA per sample of a packed row, no mask
        if loss == "dts_reconstruction":
            cfg = model.config
            if masking is None:
                raise ValueError("stage.masking is required for dts_reconstruction")
            self.dts_decoder = DTSDecoder(cfg.vision_hidden_size, cfg.frames_per_group, cfg.interp_grid**2,
                                          masking.decoder_dim, masking.decoder_layers, masking.decoder_heads)
        elif loss != "lm":
            raise ValueError(f"stage.loss: unknown loss {loss!r}")

    def trainable_modules(self) -> dict[str, nn.Module]:
        """Name -> module for every module a stage may list in `trainable`."""
        mods = {name: getattr(self.model, name) for name in ("vision_tower", "dts", "projector", "llm")}
        if self.loss_name == "dts_reconstruction":
            mods["dts_decoder"] = self.dts_decoder
        return mods

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor,
                pixel_values: torch.Tensor, token_kind: torch.Tensor | None = None,
                group_index: torch.Tensor | None = None, position_ids: torch.Tensor | None = None,
                segment_ids: torch.Tensor | None = None, reduction: str = "mean",
                tasks: list[str] | None = None) -> torch.Tensor:
        """The stage's loss of one micro-batch. Packed rows (data/packing.py) come with `segment_ids` and
        `position_ids` [B, L] and attend within each sample only (`packed_visibility`). In training, with
        `position_skip`, a drawn share of the unpacked rows, or of a packed row's samples, get rotary
        positions that jump once (train/position_skip.py); `tasks` (the samples' task names, in batch order)
        serve its task filter. `reduction="sum"`: the lm loss summed over supervised tokens (the DTS loss is
        always its micro-batch mean)."""
        if self.loss_name == "lm":
            if segment_ids is not None:
                if position_ids is None:
                    raise ValueError("segment_ids: packed rows need position_ids restarting per sample")
                attention_mask, pooling = self.packed_visibility(segment_ids, token_kind, group_index)
                position_ids = self.skip_positions(None, position_ids, segment_ids, group_index, tasks)
            else:
                padding = attention_mask
                attention_mask, pooling = self.visibility(attention_mask, token_kind, group_index)
                position_ids = self.skip_positions(padding, position_ids, None, group_index, tasks)
            lm_loss: Any = self.model.lm_loss
            extra: dict[str, Any] = {"reduction": reduction, "position_ids": position_ids}
            if self.sequence_parallel is not None:  # pooling (bi-level) is refused with it (config)
                lm_loss = functools.partial(sequence_parallel.lm_loss, self.model, self.sequence_parallel)
            else:
                extra["pooling"] = pooling
            if self.feature_cache is not None and pixel_values.numel():
                tokens = self.feature_cache.group_tokens(self.model, pixel_values)
                return lm_loss(input_ids, attention_mask, labels, group_tokens=tokens, **extra)
            return lm_loss(input_ids, attention_mask, labels, pixel_values, **extra)
        return self.dts_reconstruction(pixel_values)

    def skip_positions(self, padding: torch.Tensor | None, position_ids: torch.Tensor | None,
                       segment_ids: torch.Tensor | None, group_index: torch.Tensor | None,
                       tasks: list[str] | None) -> torch.Tensor | None:
        """The rotary positions [B, L] a training forward uses under `position_skip` (train/position_skip.py):
        packed rows (`segment_ids`) jump per sample from their `position_ids`; unpacked rows (`padding`, the
        [B, L] attention mask) jump from ``0 .. L-1`` unless the caller gave `position_ids`. The split uses
        `group_index` [B, L] unless `position_skip.split` is "token"; `position_skip.tasks` picks the samples
        by `tasks` (their names, one per row or packed sample in batch order). Without position skip, or in
        eval mode, `position_ids` as given.

        Raises ValueError when the split needs `group_index` or the task filter needs `tasks` and the batch
        lacks them."""
        skip = self.position_skip
        if skip is None or not self.training or (segment_ids is None and position_ids is not None) \
                or (segment_ids is not None and skip.fraction == 0):
            return position_ids
        groups = None
        if skip.split != "token":
            if group_index is None:
                raise ValueError(f"position_skip.split: {skip.split!r} needs the batch's group_index "
                                 "(data.collate adds it)")
            groups = group_index
        eligible = None
        if skip.tasks is not None:
            if tasks is None:
                raise ValueError("position_skip.tasks: the batch does not name its samples' tasks "
                                 "(data.collate's `tasks`)")
            eligible = torch.tensor([t in skip.tasks for t in tasks], dtype=torch.bool)
        if segment_ids is not None:
            assert position_ids is not None  # forward refuses packed rows without them
            return skipped_packed_positions(position_ids, segment_ids, skip.fraction, skip.max_position, groups,
                                            skip.split, eligible)
        assert padding is not None
        return skipped_positions(padding, skip.fraction, skip.max_position, groups, skip.split, eligible)

    def packed_visibility(self, segment_ids: torch.Tensor, token_kind: torch.Tensor | None,
                          group_index: torch.Tensor | None) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """The LLM's attention mask for packed rows, per sample as `visibility` gives it to the sample alone.

        Without chunked attention: None on a flash-attention or `PACKED_SDPA` LLM (both find the samples
        where the position ids restart), else the block-diagonal causal [B, 1, L, L] mask. With it: each sample's
        drawn view (chunked / bi-level / causal) on the diagonal (model/packing.py)."""
        cfg = self.chunked_attention
        if cfg is None or cfg.fraction == 0:
            impl = str(self.model.llm.config._attn_implementation)
            if impl.startswith("flash_attention") or impl == PACKED_SDPA:
                return None, None
            return block_causal_mask(segment_ids), None
        if token_kind is None or group_index is None:
            raise ValueError("chunked_attention: the batch lacks token_kind/group_index (data.collate adds them)")
        places, (kinds, groups, valid) = unpack_rows(segment_ids, token_kind, group_index, fill=(0, -1))
        mask, pooling = self.visibility(valid.long(), kinds, groups)
        if mask.dim() == 2:  # no sample drawn: plain causal per sample
            mask = causal_visibility(valid)
        return compose_block_diagonal(places, mask, tuple(segment_ids.shape), pooling)

    def loss_positions(self, labels: torch.Tensor, pixel_values: torch.Tensor) -> int:
        """How many positions `forward`'s loss is the mean over, for one batch: the supervised next-token
        targets (labels [B, L] != -100 after the shift, as `lm_loss` selects them) for the lm loss, the masked
        encoder tokens (frames of pixel_values [N, 3, S, S] x `masked_count` per frame) for dts_reconstruction.
        Batch loss x this count summed over batches, divided by the summed counts, is the position-weighted
        mean over all of them (train/validation.py)."""
        if self.loss_name == "lm":
            return int((labels[:, 1:] != IGNORE_INDEX).sum())
        assert self.masking is not None
        return int(pixel_values.shape[0]) * masked_count(self.model.config.interp_grid**2, self.masking.mask_ratio)

    def visibility(self, attention_mask: torch.Tensor, token_kind: torch.Tensor | None,
                   group_index: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The LLM's attention mask and pooled-entry weights (None when there are none).

        Without `chunked_attention`, or in eval mode (validation scores every sample under full causal
        attention, without random draws): the [B, L] padding mask. With it, a [B, 1, L, L(+M)] mask in which a
        drawn `fraction` of the samples see what chunked prefill shows them and, of those, a drawn
        `bilevel_fraction` decode after the video from bi-level decoding's cache (random dense chunks).
        """
        cfg = self.chunked_attention
        if cfg is None or cfg.fraction == 0 or not self.training:
            return attention_mask, None
        if token_kind is None or group_index is None:
            raise ValueError("chunked_attention: the batch lacks token_kind/group_index (data.collate adds them)")
        bsz = attention_mask.shape[0]
        picked = torch.rand(bsz) < cfg.fraction
        pooled = picked & (torch.rand(bsz) < cfg.bilevel_fraction)
        if not bool(picked.any()):
            return attention_mask, None
        valid = attention_mask.bool()
        mask = causal_visibility(valid)
        chunked = (picked & ~pooled).to(valid.device)
        if bool(chunked.any()):
            mask[chunked] = chunked_visibility(token_kind[chunked], group_index[chunked], valid[chunked],
                                               cfg.chunk_groups, cfg.prev_chunks)
        if not bool(pooled.any()):
            return mask, None
        rows = pooled.to(valid.device)
        # drawn for every row, so the random stream does not depend on which rows were picked
        dense = self._draw_dense(group_index, cfg.chunk_groups, cfg.top_k).to(valid.device)[rows]
        sub_mask, sub_pooling = bilevel_visibility(token_kind[rows], group_index[rows], valid[rows],
                                                   cfg.chunk_groups, cfg.prev_chunks, dense, cfg.kv_pool)
        mask = nn.functional.pad(mask, (0, sub_pooling.shape[1]))  # pooled columns: hidden from other rows
        mask[rows] = sub_mask
        pooling = sub_pooling.new_zeros(bsz, *sub_pooling.shape[1:])
        pooling[rows] = sub_pooling
        return mask, pooling

    @staticmethod
    def _draw_dense(group_index: torch.Tensor, chunk_groups: int, top_k: int) -> torch.Tensor:
        """BoolTensor[B, C]: per sample its first and last chunk plus `top_k` random others."""
        chunks = (group_index.max(dim=1).values.clamp(min=0) // chunk_groups + 1).tolist()
        dense = torch.zeros(len(chunks), max(chunks), dtype=torch.bool)
        for b, n in enumerate(chunks):
            dense[b, [0, n - 1]] = True
            others = torch.randperm(max(0, n - 2))[:top_k] + 1
            dense[b, others] = True
        return dense

    def dts_reconstruction(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Masked reconstruction loss of the 4 frames' interpolated encoder tokens from the DTS output."""
        cfg = self.model.config
        masking = self.masking
        assert masking is not None
        empty = pixel_values.numel() == 0
        if empty:  # every rank runs the same modules (ZeRO-3); the loss is then exactly zero
            weight = self.model.vision_tower.embeddings.patch_embedding.weight
            pixel_values = torch.zeros(cfg.frames_per_group, 3, cfg.image_size, cfg.image_size,
                                       dtype=weight.dtype, device=weight.device)
        tower = self.model.vision_tower
        with torch.set_grad_enabled(torch.is_grad_enabled() and any(p.requires_grad for p in tower.parameters())):
            maps = resample_grid(siglip_features(tower, pixel_values), cfg.interp_grid)  # (N, C, g, g)
        n, c, g, _ = maps.shape
        frames = cfg.frames_per_group
        tokens = maps.flatten(2).transpose(1, 2).reshape(n // frames, frames, g * g, c)  # (G, F, P, C)
        mask = semantic_guided_mask(tokens, masking.mask_ratio, masking.semantic_fraction)
        mask_token = self.dts_decoder.mask_token.to(tokens.dtype)
        masked = torch.where(mask[..., None], mask_token, tokens)
        masked_maps = masked.reshape(n, g * g, c).transpose(1, 2).reshape(n, c, g, g)
        grouped = group_frames(masked_maps, frames, released_layout=cfg.dts_layout == "released")
        dts_dtype = self.model.dts.temporal_encoding.dtype
        z = self.model.dts(grouped.to(dts_dtype))[:, :, 0].flatten(2).transpose(1, 2)  # (G, P, C)
        pred = self.dts_decoder(z.to(self.dts_decoder.inp.weight.dtype)).float()
        per_token = (pred - normalise_tokens(tokens)).pow(2).mean(-1)
        loss = (per_token * mask).sum() / mask.sum().clamp(min=1)
        return loss * 0.0 if empty else loss

