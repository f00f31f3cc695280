"""`VideoXL2ForCausalLM`: SigLIP -> DTS -> mlp2x_gelu projector -> 2x2 pool -> Qwen2 causal LM."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    GenerationMixin,
    PreTrainedModel,
    Qwen2ForCausalLM,
    SiglipVisionModel,
)
from transformers import initialization as init
from transformers.cache_utils import Cache
from transformers.modeling_outputs import CausalLMOutputWithPast

from .block_attention import block_plan, is_block_mask
from .config import VideoXL2Config
from .dts import DTS, RelativePositionTable, TemporalAttention, group_frames
from .packing import PACKED_SDPA
from .pooled_attention import POOLED_SDPA
from .projector import build_projector, pool_grid
from .sequence import IGNORE_INDEX
from .vision import resample_grid, siglip_features


class VideoXL2ForCausalLM(PreTrainedModel, GenerationMixin):
    """Video-XL-2 model; children `vision_tower`, `dts`, `projector`, `llm` (in that order of computation)."""

    config_class = VideoXL2Config
    config: VideoXL2Config
    base_model_prefix = ""
    main_input_name = "input_ids"
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _no_split_modules = ["SiglipEncoderLayer", "Qwen2DecoderLayer", "AttnBlock3D", "TemporalAttention",
                         "SamePadConv3d"]

    def __init__(self, config: VideoXL2Config) -> None:
        super().__init__(config)
        channels = config.vision_hidden_size
        self.vision_tower = SiglipVisionModel(config.vision_config)
        self.dts = DTS(
            channels=channels,
            frames=config.frames_per_group,
            groups=config.dts_norm_groups,
            eps=config.dts_norm_eps,
            max_relative_position=config.dts_max_relative_position,
            num_stages=config.dts_num_stages,
            transposed_key_positions=config.dts_layout == "released",
        )
        self.projector = build_projector(channels, int(config.text_config.hidden_size))
        self.llm = Qwen2ForCausalLM(config.text_config)
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        """Init of the modules this class owns (DTS, projector); sub-models initialise themselves."""
        if isinstance(module, DTS):
            init.normal_(module.temporal_encoding, std=0.02)
        elif isinstance(module, RelativePositionTable):
            init.xavier_uniform_(module.embeddings_table)
        elif isinstance(module, TemporalAttention):
            for conv in (module.qkv, module.proj_out):
                init.zeros_(conv.weight)
                init.zeros_(conv.bias)
        elif isinstance(module, nn.Conv3d) or (isinstance(module, nn.Linear) and self._is_projector_layer(module)):
            # fan-in scaled (PyTorch's default): the projector keeps the scale of the vision features instead
            # of shrinking them ~30x as a std-0.02 init would, so a fresh model can read its visual tokens.
            fan_in = module.weight[0].numel()
            init.kaiming_uniform_(module.weight, a=5**0.5)
            init.uniform_(module.bias, -(fan_in**-0.5), fan_in**-0.5)
        else:
            super()._init_weights(module)

    def _is_projector_layer(self, module: nn.Module) -> bool:
        return any(module is layer for layer in self.projector)

    # -- embeddings plumbing -------------------------------------------------------------------------
    def get_input_embeddings(self) -> nn.Module:
        return self.llm.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.llm.set_input_embeddings(value)

    def get_output_embeddings(self) -> nn.Module:
        return self.llm.get_output_embeddings()

    def set_output_embeddings(self, value: nn.Module) -> None:
        self.llm.set_output_embeddings(value)

    # -- visual path ---------------------------------------------------------------------------------
    def encode_frames(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """pixel_values (N, 3, S, S), N a multiple of frames_per_group -> (N // 4, tokens_per_group, d_llm)."""
        return self.project_groups(self.synthesize_groups(pixel_values))

    def synthesize_groups(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Vision tower + DTS: pixel_values (N, 3, S, S) -> one token map per group of frames_per_group
        frames, (N // 4, interp_grid**2, d_vision) row-major (the projector's input)."""
        cfg = self.config
        if pixel_values.dim() != 4 or pixel_values.shape[1] != 3:
            raise ValueError(f"pixel_values must be (N, 3, S, S), got {tuple(pixel_values.shape)}")
        if pixel_values.shape[-1] != cfg.image_size or pixel_values.shape[-2] != cfg.image_size:
            raise ValueError(
                f"pixel_values spatial size {tuple(pixel_values.shape[-2:])} != image_size {cfg.image_size}"
            )
        if pixel_values.shape[0] == 0 or pixel_values.shape[0] % cfg.frames_per_group:
            raise ValueError(
                f"pixel_values holds {pixel_values.shape[0]} frames, need a positive multiple of "
                f"frames_per_group={cfg.frames_per_group}"
            )
        feats = siglip_features(self.vision_tower, pixel_values)  # (N, P*P, C)
        if torch.is_grad_enabled():
            # post_layernorm is kept for checkpoint compatibility but never applied to the features: run it on
            # one token and add zero times the result, so it still gets a (zero) gradient like every weight
            # (through its own forward, so sharded-parameter hooks gather it).
            feats = feats + self.vision_tower.post_layernorm(feats[:1, :1]).sum() * 0.0
        maps = resample_grid(feats, cfg.interp_grid)  # (N, C, g, g)
        groups = group_frames(maps, cfg.frames_per_group, released_layout=cfg.dts_layout == "released")
        dts_dtype = self.dts.temporal_encoding.dtype
        synthesized = self.dts(groups.to(dts_dtype))  # (G, C, 1, g, g)
        return synthesized[:, :, 0].flatten(2).transpose(1, 2)  # (G, g*g, C) row-major

    def project_groups(self, group_tokens: torch.Tensor) -> torch.Tensor:
        """Projector + 2x2 pool: (G, interp_grid**2, d_vision) -> (G, tokens_per_group, d_llm)."""
        cfg = self.config
        if group_tokens.dim() != 3 or group_tokens.shape[1] != cfg.interp_grid**2:
            raise ValueError(f"group_tokens must be (G, {cfg.interp_grid**2}, C), got {tuple(group_tokens.shape)}")
        projected = self.projector(group_tokens.to(self.projector[0].weight.dtype))
        return pool_grid(projected, cfg.interp_grid, cfg.video_pool)

    @torch.no_grad()
    def standardize_projector_output(self, mean: torch.Tensor, std: torch.Tensor, target_std: float) -> None:
        """Fold a per-channel affine map into the projector's last Linear so that visual tokens whose
        channels had `mean` and `std` come out centred with std `target_std` (the 2x2 average pool
        after the projector is linear, so it keeps both)."""
        last = self.projector[-1]
        if not isinstance(last, nn.Linear):
            raise TypeError(f"projector: last layer is {type(last).__name__}, expected Linear")
        width = last.out_features
        for name, value in (("mean", mean), ("std", std)):
            if value.shape != (width,):
                raise ValueError(f"{name}: expected shape ({width},), got {tuple(value.shape)}")
            if not bool(torch.isfinite(value).all()):
                raise ValueError(f"{name}: holds non-finite values")
        if not bool((std > 0).all()):
            raise ValueError("std: every channel must be > 0 (a constant channel cannot be rescaled)")
        if not target_std > 0:
            raise ValueError(f"target_std: must be > 0, got {target_std}")
        scale = (target_std / std.double()).to(last.weight.dtype)
        last.weight.mul_(scale.unsqueeze(1))
        last.bias.sub_(mean.to(last.bias.dtype)).mul_(scale)

    def embed_inputs(self, input_ids: torch.Tensor, visual_embeds: torch.Tensor | None) -> torch.Tensor:
        """Token embeddings with `visual_embeds` (G, T, d) written over the <|vision_pad|> positions, row-major."""
        embeds = self.llm.get_input_embeddings()(input_ids)
        mask = input_ids == self.config.vision_pad_token_id
        num_pads = int(mask.sum())
        num_visual = 0 if visual_embeds is None else visual_embeds.shape[0] * visual_embeds.shape[1]
        if visual_embeds is not None and visual_embeds.shape[-1] != embeds.shape[-1]:
            raise ValueError(f"visual_embeds width {visual_embeds.shape[-1]} != LLM hidden size {embeds.shape[-1]}")
        if num_pads != num_visual:
            raise ValueError(
                f"input_ids hold {num_pads} <|vision_pad|> tokens (id {self.config.vision_pad_token_id}) "
                f"but {num_visual} visual embeddings were given"
            )
        if num_visual == 0:
            return embeds
        flat = visual_embeds.reshape(-1, embeds.shape[-1]).to(embeds.dtype)
        return embeds.masked_scatter(mask.unsqueeze(-1), flat)

    def _dummy_visual_term(self) -> torch.Tensor:
        """Zero-valued scalar that touches every visual weight (for ZeRO-3 when a batch has no frames)."""
        cfg = self.config
        weight = self.vision_tower.embeddings.patch_embedding.weight
        dummy = torch.zeros(cfg.frames_per_group, 3, cfg.image_size, cfg.image_size,
                            dtype=weight.dtype, device=weight.device)
        return self.encode_frames(dummy).sum() * 0.0

    def _video_embeds(self, input_ids: torch.Tensor, pixel_values: torch.Tensor | None,
                      group_tokens: torch.Tensor | None = None) -> torch.Tensor:
        """LLM input embeddings of `input_ids` with the frames' visual tokens in place, from `pixel_values`
        or from their precomputed `synthesize_groups` output `group_tokens` (training without frames adds
        a zero term that touches every visual weight)."""
        if group_tokens is not None:
            if pixel_values is not None:
                raise ValueError("give pixel_values or group_tokens, not both")
            return self.embed_inputs(input_ids, self.project_groups(group_tokens) if group_tokens.numel() else None)
        has_frames = pixel_values is not None and pixel_values.numel() > 0
        if has_frames or not (self.training and torch.is_grad_enabled()):
            return self.embed_inputs(input_ids, self.encode_frames(pixel_values) if has_frames else None)
        # The zero term runs before the text embedding, as the frames do above, so that the backward reaches the
        # weights in the same order with or without frames. ZeRO-2 reduces gradients in buckets filled in the
        # order their hooks fire; two ranks whose micro-batches differed in that order would sum one weight's
        # gradient with another's (tests/test_model.py, tests/test_packing.py).
        dummy = self._dummy_visual_term()
        embeds = self.embed_inputs(input_ids, None)
        return embeds + dummy.to(embeds.dtype)

    # -- forward -------------------------------------------------------------------------------------
    def lm_loss(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, labels: torch.Tensor,
                pixel_values: torch.Tensor | None = None, group_tokens: torch.Tensor | None = None,
                pooling: torch.Tensor | None = None, position_ids: torch.Tensor | None = None,
                reduction: str = "mean") -> torch.Tensor:
        """Mean next-token cross-entropy over the supervised positions (`labels` != -100): the value of
        `forward(..., labels=labels).loss`, with the LM head run on those positions only (a training
        sample supervises a fraction of its tokens, so this saves most of the head's FLOPs and logits memory).
        The frames come as `pixel_values` or, already through the vision tower and DTS, as `group_tokens`
        (`synthesize_groups` output, e.g. cached while those modules are frozen). `attention_mask` is the
        [B, L] padding mask or a [B, 1, L, L] boolean visibility mask used as is (model/visibility.py);
        with `pooling` [B, M, L] the mask is [B, 1, L, L + M] over the sequence plus M pooled entries
        (`bilevel_visibility`), which needs the LLM on `model.pooled_attention.POOLED_SDPA`.
        `position_ids` [B, L]: rotary positions (packed rows restart them per sample, model/packing.py).
        `reduction="sum"` returns the sum over the supervised positions instead of their mean (the
        trainer divides by the supervised-token count of the whole optimizer step).
        """
        if reduction not in ("mean", "sum"):
            raise ValueError(f"reduction: 'mean' or 'sum', got {reduction!r}")
        if labels.shape != input_ids.shape:
            raise ValueError(f"labels shape {tuple(labels.shape)} != input_ids shape {tuple(input_ids.shape)}")
        extra: dict[str, Any] = {}
        impl = self.llm.config._attn_implementation
        if pooling is not None:
            if impl != POOLED_SDPA:
                raise ValueError(f"pooling: the LLM attends with {impl!r}, which "
                                 f"ignores pooled entries; call llm.set_attn_implementation({POOLED_SDPA!r})")
            extra["pooling"] = pooling
        if impl in (POOLED_SDPA, PACKED_SDPA) and is_block_mask(attention_mask):
            extra["attention_blocks"] = block_plan(attention_mask)  # once for every layer (blockwise_sdpa)
        embeds = self._video_embeds(input_ids, pixel_values, group_tokens)
        hidden = self.llm.model(inputs_embeds=embeds, attention_mask=attention_mask, position_ids=position_ids,
                                use_cache=False, **extra).last_hidden_state
        targets = labels[:, 1:].to(hidden.device)
        supervised = targets != IGNORE_INDEX
        logits = self.llm.lm_head(hidden[:, :-1][supervised])
        return nn.functional.cross_entropy(logits.float(), targets[supervised], reduction=reduction)

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        past_key_values: Cache | None = None,
        use_cache: bool | None = None,
        inputs_embeds: torch.Tensor | None = None,
        cache: Cache | None = None,
        **kwargs,
    ) -> CausalLMOutputWithPast:
        """Causal-LM forward; frames in `pixel_values` fill the <|vision_pad|> positions of `input_ids`.

        `cache` and `past_key_values` are the same KV cache (the LLM's current and former name); give one.
        Extra keyword arguments (e.g. `logits_to_keep`) go to the LLM.
        """
        if cache is not None and past_key_values is not None:
            raise ValueError("give either cache or past_key_values, not both")
        cache = cache if cache is not None else past_key_values
        has_frames = pixel_values is not None and pixel_values.numel() > 0
        if inputs_embeds is None:
            if input_ids is None:
                raise ValueError("forward needs input_ids or inputs_embeds")
            inputs_embeds = self._video_embeds(input_ids, pixel_values)
        elif has_frames:
            raise ValueError("pass either inputs_embeds or pixel_values, not both")
        elif self.training and torch.is_grad_enabled():
            inputs_embeds = inputs_embeds + self._dummy_visual_term().to(inputs_embeds.dtype)
        out = self.llm(
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            use_cache=use_cache,
            labels=labels,
            **kwargs,
        )
        return CausalLMOutputWithPast(
            loss=out.loss,
            logits=out.logits,
            cache=out.cache,
            hidden_states=out.hidden_states,
            attentions=out.attentions,
        )

    def prepare_inputs_for_generation(self, input_ids: torch.Tensor, pixel_values: torch.Tensor | None = None,
                                      is_first_iteration: bool | None = False, **kwargs):
        """Frames are consumed by the first (prefill) step only."""
        inputs = super().prepare_inputs_for_generation(input_ids, is_first_iteration=is_first_iteration, **kwargs)
        if is_first_iteration and pixel_values is not None:
            inputs["pixel_values"] = pixel_values
        return inputs


    def generate(self, input_ids: torch.Tensor | None = None, pixel_values=None, **kwargs):
        """With frames (`pixel_values` tensor or frame callable), `visual_embeds` or a `layout`, forwards to
        `model.inference.generate_video` (returns its GenerationResult); otherwise plain text generation."""
        no_frames = pixel_values is None or (isinstance(pixel_values, torch.Tensor) and pixel_values.numel() == 0)
        if not no_frames or "layout" in kwargs or "visual_embeds" in kwargs:
            from .inference import generate_video

            return generate_video(self, input_ids, None if no_frames else pixel_values, **kwargs)
        if input_ids is not None:
            kwargs["inputs"] = input_ids
        return super().generate(**kwargs)


def register_auto_classes() -> None:
    """Register the config and model with AutoConfig / AutoModelForCausalLM (idempotent)."""
    AutoConfig.register(VideoXL2Config.model_type, VideoXL2Config, exist_ok=True)
    AutoModelForCausalLM.register(VideoXL2Config, VideoXL2ForCausalLM, exist_ok=True)
