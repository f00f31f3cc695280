"""Released-checkpoint conversion on a synthetic tiny checkpoint written under the official tensor names."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from test_dts import ref_dts, ref_group
from transformers import AutoModelForCausalLM, Qwen2ForCausalLM, SiglipVisionModel

from model import VideoXL2Config, VideoXL2ForCausalLM, build_preset
from model.convert_official import config_from_released, convert, main

VISION_PREFIX = "model.vision_tower.vision_tower.vision_model."


def official_name(local: str) -> str:
    """This project's tensor name -> the released checkpoint's name (written out by hand)."""
    if local.startswith("vision_tower."):
        return VISION_PREFIX + local[len("vision_tower."):]
    if local.startswith("dts."):
        return "model.sae." + local[len("dts."):]
    if local.startswith("projector."):
        return "model.mm_projector." + local[len("projector."):]
    if local.startswith("llm.lm_head."):
        return local[len("llm."):]
    assert local.startswith("llm.model."), local
    return local[len("llm."):]


def synthetic_official(cfg: VideoXL2Config, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random weights (every DTS block non-trivial) under official names, plus the unused text_mlp."""
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in VideoXL2ForCausalLM(cfg).state_dict().items()}
    gen = torch.Generator().manual_seed(seed)
    tensors = {}
    for local, shape in shapes.items():
        noise = torch.randn(shape, generator=gen) * 0.1
        is_norm = local.endswith(("norm.weight", "layernorm.weight", "layer_norm1.weight", "layer_norm2.weight"))
        tensors[official_name(local)] = 1.0 + noise if is_norm else noise
    d = cfg.text_config.hidden_size
    tensors["model.text_mlp.0.weight"] = torch.randn(d, d, generator=gen)
    tensors["model.text_mlp.0.bias"] = torch.randn(d, generator=gen)
    return tensors


def write_checkpoint(tensors: dict[str, torch.Tensor], root: Path) -> Path:
    """Two shards (LLM / everything else) plus model.safetensors.index.json."""
    root.mkdir(parents=True, exist_ok=True)
    llm = {k: v for k, v in tensors.items() if k.startswith(("model.layers", "model.embed", "model.norm", "lm_head"))}
    rest = {k: v for k, v in tensors.items() if k not in llm}
    weight_map = {}
    for name, part in (("model-00001-of-00002.safetensors", llm), ("model-00002-of-00002.safetensors", rest)):
        save_file(part, str(root / name), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(part, name))
    (root / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return root


def reference_logits(cfg: VideoXL2Config, w: dict[str, torch.Tensor], input_ids: torch.Tensor,
                     pixel_values: torch.Tensor) -> torch.Tensor:
    """Released-model logits from official weights, built from library parts and the loop DTS reference."""
    tower = SiglipVisionModel(cfg.vision_config)
    tower.load_state_dict({k[len(VISION_PREFIX):]: v for k, v in w.items() if k.startswith(VISION_PREFIX)})
    llm = Qwen2ForCausalLM(cfg.text_config)
    llm.load_state_dict({k: v for k, v in w.items() if k.startswith(("model.layers", "model.embed", "model.norm",
                                                                     "lm_head"))})
    tower.eval(), llm.eval()
    with torch.no_grad():
        feats = tower(pixel_values, output_hidden_states=True).hidden_states[-1]
        n, count, c = feats.shape
        p = int(count**0.5)
        maps = F.interpolate(feats.transpose(1, 2).reshape(n, c, p, p), size=cfg.interp_grid, mode="bilinear")
        synth = ref_dts(ref_group(maps, released=True), w, "model.sae.", True, cfg.dts_norm_groups,
                        cfg.dts_norm_eps, cfg.dts_max_relative_position)[:, :, 0]
        tokens = synth.flatten(2).transpose(1, 2)
        proj = F.gelu(tokens @ w["model.mm_projector.0.weight"].t() + w["model.mm_projector.0.bias"])
        proj = proj @ w["model.mm_projector.2.weight"].t() + w["model.mm_projector.2.bias"]
        g, k = cfg.interp_grid, cfg.video_pool
        pooled = proj.reshape(-1, g // k, k, g // k, k, proj.shape[-1]).mean(dim=(2, 4)).flatten(1, 2)
        embeds = w["model.embed_tokens.weight"][input_ids].clone()
        embeds[input_ids == cfg.vision_pad_token_id] = pooled.reshape(-1, pooled.shape[-1])
        return llm(inputs_embeds=embeds).logits


@pytest.fixture(scope="module")
def tiny_cfg() -> VideoXL2Config:
    return build_preset("tiny")


@pytest.fixture(scope="module")
def official(tiny_cfg: VideoXL2Config) -> dict[str, torch.Tensor]:
    return synthetic_official(tiny_cfg)


def video_inputs(cfg: VideoXL2Config) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(3)
    t = cfg.tokens_per_group
    ids = torch.randint(6, cfg.text_config.vocab_size, (1, 2 * t + 10), generator=gen)
    ids[0, 3:3 + t] = cfg.vision_pad_token_id
    ids[0, 6 + t:6 + 2 * t] = cfg.vision_pad_token_id
    return ids, torch.rand(8, 3, cfg.image_size, cfg.image_size, generator=gen) * 2 - 1


def test_convert_matches_reference(tmp_path: Path, tiny_cfg: VideoXL2Config, official) -> None:
    src = write_checkpoint(official, tmp_path / "released")
    report = convert(src, tmp_path / "out", config=tiny_cfg)
    assert report.missing == [] and report.unexpected == []
    assert sorted(report.unused) == ["model.text_mlp.0.bias", "model.text_mlp.0.weight"]
    assert report.converted == len(official) - 2
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    assert isinstance(model, VideoXL2ForCausalLM) and model.config.dts_layout == "released"
    ids, px = video_inputs(tiny_cfg)
    with torch.no_grad():
        logits = model(input_ids=ids, pixel_values=px).logits
    torch.testing.assert_close(logits, reference_logits(tiny_cfg, official, ids, px), rtol=1e-4, atol=1e-4)

    # the faithful temporal layout on the same weights gives a different visual encoding
    temporal = VideoXL2ForCausalLM(tiny_cfg).eval()
    temporal.load_state_dict(model.state_dict())
    with torch.no_grad():
        diff = (temporal.encode_frames(px) - model.encode_frames(px)).abs().max()
    assert diff > 1e-3


def test_shape_mismatch_names_the_key(tmp_path: Path, tiny_cfg: VideoXL2Config, official) -> None:
    bad = dict(official)
    key = "model.sae.encoder.4.relative_position_k.embeddings_table"
    bad[key] = torch.zeros(7, tiny_cfg.vision_config.hidden_size)
    src = write_checkpoint(bad, tmp_path / "bad")
    with pytest.raises(ValueError, match=rf"shape mismatch for {key}.*\[7, 64\]"):
        convert(src, tmp_path / "out", config=tiny_cfg)
    assert main(["--src", str(src), "--dst", str(tmp_path / "out2"), "--config", "tiny"]) == 2
    assert main(["--src", str(src), "--dst", str(tmp_path / "out3"), "--config", "bogus"]) == 2  # no such preset
    assert not (tmp_path / "out3").exists()


def test_missing_and_unexpected_keys_reported(tmp_path: Path, tiny_cfg: VideoXL2Config, official, capsys) -> None:
    partial = {k: v for k, v in official.items() if k != "model.sae.temporal_encoding"}
    partial["model.some_future_head.weight"] = torch.zeros(2)
    src = write_checkpoint(partial, tmp_path / "partial")
    with pytest.raises(ValueError, match="dts.temporal_encoding"):
        convert(src, tmp_path / "out", config=tiny_cfg)
    report = convert(src, tmp_path / "out", config=tiny_cfg, allow_missing=True)
    assert report.missing == ["dts.temporal_encoding"]
    assert report.unexpected == ["model.some_future_head.weight"]
    model = VideoXL2ForCausalLM.from_pretrained(tmp_path / "out")
    assert torch.isfinite(model.dts.temporal_encoding).all()
    assert torch.equal(model.dts.encoder[1].qkv.weight, official["model.sae.encoder.1.qkv.weight"])


def test_cli_single_file(tmp_path: Path, tiny_cfg: VideoXL2Config, official, capsys) -> None:
    src = tmp_path / "single"
    src.mkdir()
    save_file(official, str(src / "model.safetensors"), metadata={"format": "pt"})
    assert main(["--src", str(src), "--dst", str(tmp_path / "out"), "--config", "tiny"]) == 0
    assert "unused (2)" in capsys.readouterr().out
    loaded = VideoXL2ForCausalLM.from_pretrained(tmp_path / "out")
    assert torch.equal(loaded.projector[2].weight, official["model.mm_projector.2.weight"])


def test_config_from_released_json(tiny_cfg: VideoXL2Config, official) -> None:
    released = {
        "architectures": ["LlavaQwenForCausalLM"], "model_type": "qwen2", "hidden_size": 128,
        "intermediate_size": 384, "num_hidden_layers": 4, "num_attention_heads": 4, "num_key_value_heads": 2,
        "vocab_size": 1024, "rms_norm_eps": 1e-6, "rope_theta": 10000.0, "max_position_embeddings": 4096,
        "tie_word_embeddings": False, "mm_hidden_size": 64, "mm_projector_type": "mlp2x_gelu",
    }
    shapes = {k: tuple(v.shape) for k, v in official.items()}
    base = build_preset("tiny", text_config={"hidden_size": 256}, vision_config={"num_hidden_layers": 5})
    cfg = config_from_released(released, shapes, base)
    assert cfg.dts_layout == "released"
    assert cfg.text_config.hidden_size == 128 and cfg.text_config.max_position_embeddings == 4096
    assert cfg.text_config.rope_parameters["rope_theta"] == 10000.0
    assert cfg.vision_config.num_hidden_layers == tiny_cfg.vision_config.num_hidden_layers
    with pytest.raises(ValueError, match="mm_projector_type"):
        config_from_released({**released, "mm_projector_type": "linear"}, shapes, base)
    with pytest.raises(ValueError, match="mm_hidden_size"):
        config_from_released({**released, "mm_hidden_size": 32}, shapes, base)
