"""Where a prompt's input embeddings come from: token ids plus streamed visual embeddings.

Frames can be given as a tensor ``[N, 3, S, S]`` (sliced per chunk, so encoder tokens exist for one
chunk at a time) or as a callable ``frames(g0, g1) -> FloatTensor[(g1 - g0) * frames_per_group, 3, S, S]``
that loads/decodes only the requested groups (then pixels are never all resident either).
Precomputed ``visual_embeds [G, T, d]`` bypass the vision path. A :class:`VisualCache` shared by the
prompts of one evaluation run encodes each batch of frames once, however many questions ask about it.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

from model.inference.layout import Kind, VideoLayout
from model.memo import ContentMemo

FrameSource = torch.Tensor | Callable[[int, int], torch.Tensor]


class VisualCache(ContentMemo):
    """Content-keyed memo (`model.memo.ContentMemo`) of ``model.encode_frames`` per batch of frames, for the
    prompts of one evaluation run (several questions about one video, or several benches over the same
    videos).

    A hit is the same frames in the same batch, so the value is bit-identical to encoding them again (the
    embedder batches a video's groups the same way for every prompt with the same chunking). Holds at most
    ``max_bytes`` of embeddings. Hashing copies the frames to host memory, so it pays where encoding costs
    more than that copy (CPU, or large encoders).
    """

    def encode(self, model: torch.nn.Module, frames: torch.Tensor) -> torch.Tensor:
        """``model.encode_frames(frames)`` (``[N, 3, S, S]`` -> ``[N / frames_per_group, T, d]``), from the
        memo when these frames were encoded before."""
        key = self.key(frames)
        hit = self.get(key)
        if hit is not None:
            self.hits += 1
            return hit
        self.misses += 1
        out = model.encode_frames(frames)
        self.put(key, out)
        return out


class PromptEmbedder:
    """``embedder(start, end) -> FloatTensor[end - start, d]`` for one prompt (batch size 1).

    A block must contain whole groups (chunk and full plans do). Vision runs in batches of at most
    ``encode_groups`` groups, through ``cache`` when given. ``vision_seconds`` accumulates the time spent
    encoding frames.
    """

    def __init__(
        self, model: torch.nn.Module, input_ids: torch.Tensor, layout: VideoLayout,
        frames: FrameSource | None = None, visual_embeds: torch.Tensor | None = None, encode_groups: int = 4,
        cache: VisualCache | None = None,
    ) -> None:
        if (frames is None) == (visual_embeds is None):
            raise ValueError("give exactly one of pixel frames or visual_embeds")
        if visual_embeds is not None and (visual_embeds.dim() != 3 or visual_embeds.shape[0] != layout.num_groups):
            raise ValueError(
                f"visual_embeds must be [G={layout.num_groups}, T, d], got {tuple(visual_embeds.shape)}"
            )
        if isinstance(frames, torch.Tensor):
            fpg = _frames_per_group(model)
            if frames.dim() != 4 or frames.shape[0] != layout.num_groups * fpg:
                raise ValueError(
                    f"pixel_values must be [{layout.num_groups} groups x {fpg} frames, 3, S, S], "
                    f"got {tuple(frames.shape)}"
                )
        if frames is not None and not hasattr(model, "encode_frames"):
            raise ValueError("pixel frames need a model with encode_frames (VideoXL2ForCausalLM)")
        self.model = model
        self.input_ids = input_ids
        self.layout = layout
        self.frames = frames
        self.visual_embeds = visual_embeds
        self.encode_groups = encode_groups
        self.cache = cache
        self.vision_seconds = 0.0

    def visual(self, g0: int, g1: int) -> torch.Tensor:
        """Visual embeddings ``[g1 - g0, T, d]`` of groups ``[g0, g1)``."""
        if self.visual_embeds is not None:
            return self.visual_embeds[g0:g1]
        t0 = time.perf_counter()
        fpg = _frames_per_group(self.model)
        out = []
        for a in range(g0, g1, self.encode_groups):
            b = min(g1, a + self.encode_groups)
            if isinstance(self.frames, torch.Tensor):
                px = self.frames[a * fpg : b * fpg]
            else:
                px = self.frames(a, b)
                if not isinstance(px, torch.Tensor) or px.shape[0] != (b - a) * fpg:
                    raise ValueError(f"frame source returned a bad batch for groups [{a}, {b})")
            out.append(self.model.encode_frames(px) if self.cache is None else self.cache.encode(self.model, px))
        self.vision_seconds += time.perf_counter() - t0
        return torch.cat(out) if len(out) > 1 else out[0]

    def __call__(self, start: int, end: int) -> torch.Tensor:
        ids = self.input_ids[start:end]
        kind = self.layout.token_kind[start:end]
        groups = self.layout.group_index[start:end][kind == Kind.VISUAL]
        vis = None
        if groups.numel():
            g0, g1 = int(groups.min()), int(groups.max()) + 1
            vis = self.visual(g0, g1)
        return embed_block(self.model, ids, kind, vis)

    def text(self, ids: torch.Tensor) -> torch.Tensor:
        """Embeddings of text-only ids (decoded tokens)."""
        emb = _llm(self.model).get_input_embeddings()
        return emb(ids.to(emb.weight.device))


def _frames_per_group(model: torch.nn.Module) -> int:
    return int(getattr(model.config, "frames_per_group", 4))


def _llm(model: torch.nn.Module) -> torch.nn.Module:
    return model.llm if hasattr(model, "llm") else model


def embed_block(
    model: torch.nn.Module, ids: torch.Tensor, kind: torch.Tensor, visual: torch.Tensor | None
) -> torch.Tensor:
    """Embeddings ``[n, d]``: via ``model.embed_inputs`` (pads located by id) when the model has it,
    else (a bare Qwen2 LM) token embeddings with VISUAL rows (by token_kind) replaced in order."""
    if hasattr(model, "embed_inputs"):
        return model.embed_inputs(ids[None], visual)[0]
    x = model.get_input_embeddings()(ids)
    rows = (kind == Kind.VISUAL).to(x.device)
    n_vis = int(rows.sum())
    got = 0 if visual is None else visual.shape[0] * visual.shape[1]
    if n_vis != got:
        raise ValueError(f"block has {n_vis} VISUAL tokens but {got} visual embeddings")
    if n_vis:
        x = x.clone()
        x[rows] = visual.reshape(-1, x.shape[-1]).to(device=x.device, dtype=x.dtype)
    return x
