"""`python -m model.assemble`: a model from tiny pretrained parts written with `save_pretrained` (SigLIP
full / bare / prefixed, Qwen2 in several shards with the real Qwen2 tokenizer). Copied tensors equal their
sources bit for bit, a text-only prompt gives exactly the source LLM's logits, the vision features are the
source's second-to-last layer output, and bad parts fail with one line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from transformers import Qwen2ForCausalLM, SiglipModel

from assemble_parts import VISION, prefix_siglip, save_clip, save_llama, save_qwen2, save_siglip
from model import VideoXL2ForCausalLM, build_preset, load_tokenizer
from model.assemble import assemble, fresh_tensors, main, target_config, vision_config_of
from model.checks import ModelFileError, check_videoxl2_dir
from model.weights import TensorShapeError, expected_shapes

LAST = VISION["num_hidden_layers"] - 1  # the dropped SigLIP layer
PREPROCESSOR = {"image_processor_type": "SiglipImageProcessor", "image_mean": [0.25, 0.5, 0.75],
                "image_std": [0.5, 0.4, 0.3], "size": {"height": 64, "width": 64}}


@pytest.fixture(scope="module")
def parts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("parts")
    out = {"siglip": save_siglip(root / "siglip", bare=False), "bare": save_siglip(root / "bare", bare=True, seed=5),
           "qwen": save_qwen2(root / "qwen", vocab=152064, tied=False),
           "qwen_tied": save_qwen2(root / "qwen_tied", vocab=151936, tied=True, seed=4)}
    out["prefixed"] = prefix_siglip(out["bare"], root / "prefixed")
    (out["siglip"] / "preprocessor_config.json").write_text(json.dumps(PREPROCESSOR))
    return out


@pytest.fixture(scope="module")
def assembled(parts: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("assembled") / "model"
    assemble(parts["siglip"], parts["qwen"], out, config="tiny")
    return out


def source_vision(parts: dict[str, Path], kind: str) -> dict[str, torch.Tensor]:
    """The vision tower's tensors as the source stores them, under SiglipVisionModel names."""
    tensors = load_file(str(parts[kind] / "model.safetensors"))
    if kind == "bare":
        return tensors
    return {k[len("vision_model."):]: v for k, v in tensors.items() if k.startswith("vision_model.")}


def kept(name: str) -> bool:
    return not name.startswith((f"encoder.layers.{LAST}.", "head."))


def test_parts_copied_bit_for_bit(parts: dict[str, Path], assembled: Path) -> None:
    model, info = VideoXL2ForCausalLM.from_pretrained(assembled, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    cfg = model.config
    assert cfg.vision_config.num_hidden_layers == VISION["num_hidden_layers"] - 1
    assert cfg.text_config.num_hidden_layers == 2 and cfg.interp_grid == 6  # from the LLM / from --config tiny
    assert cfg.image_mean == PREPROCESSOR["image_mean"] and cfg.image_std == PREPROCESSOR["image_std"]
    src_vision = source_vision(parts, "siglip")
    tower = model.vision_tower.state_dict()
    assert set(tower) == {k for k in src_vision if kept(k)}
    assert all(torch.equal(tower[k], src_vision[k]) for k in tower)
    src_llm = Qwen2ForCausalLM.from_pretrained(parts["qwen"]).state_dict()
    llm = model.llm.state_dict()
    assert set(llm) == set(src_llm) and all(torch.equal(llm[k], src_llm[k]) for k in llm)
    # the embedding keeps every row: vocab_size = embedding rows = head rows > tokenizer tokens
    tok = load_tokenizer(assembled)
    rows = model.llm.model.embed_tokens.weight.shape[0]
    assert rows == model.llm.lm_head.weight.shape[0] == cfg.text_config.vocab_size == 152064 > len(tok)
    assert cfg.vision_pad_token_id == tok.convert_tokens_to_ids("<|vision_pad|>") == 151654
    assert model.llm.lm_head.weight.data_ptr() != model.llm.model.embed_tokens.weight.data_ptr()
    info = json.loads((assembled / "assemble_info.json").read_text())
    assert info["vision"]["missing"] == info["llm"]["missing"] == []
    unused = set(info["vision"]["unused"])
    assert {"logit_scale", "logit_bias", f"vision_model.encoder.layers.{LAST}.mlp.fc1.weight",
            "vision_model.head.probe"} <= unused and any(k.startswith("text_model.") for k in unused)
    assert len(json.loads((assembled / "model.safetensors.index.json").read_text())["weight_map"]) == \
        len(model.state_dict())


def test_text_logits_and_features_equal_the_sources(parts: dict[str, Path], assembled: Path) -> None:
    model = VideoXL2ForCausalLM.from_pretrained(assembled).eval()
    tok = load_tokenizer(assembled)
    ids = tok.apply_chat_template([{"role": "user", "content": "What colour is the square?"}],
                                  add_generation_prompt=True, return_tensors="pt", return_dict=True)["input_ids"]
    src_llm = Qwen2ForCausalLM.from_pretrained(parts["qwen"]).eval()
    src_vision = SiglipModel.from_pretrained(parts["siglip"]).vision_model.eval()
    px = torch.rand(4, 3, 64, 64, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, src_llm(input_ids=ids).logits)
        from model.vision import siglip_features

        feats = siglip_features(model.vision_tower, px)
        hidden = src_vision(pixel_values=px, output_hidden_states=True).hidden_states
    assert len(hidden) == VISION["num_hidden_layers"] + 1
    torch.testing.assert_close(feats, hidden[-2], rtol=0, atol=0)  # second-to-last layer, no post-layernorm
    assert not torch.equal(feats, hidden[-1])


def test_video_forward_and_training_step(assembled: Path) -> None:
    model = VideoXL2ForCausalLM.from_pretrained(assembled).train()
    cfg = model.config
    gen = torch.Generator().manual_seed(1)
    t = cfg.tokens_per_group
    ids = torch.randint(0, 151643, (1, 2 * t + 12), generator=gen)
    ids[0, 2:2 + 2 * t] = cfg.vision_pad_token_id
    labels = ids.clone()
    labels[0, : 2 * t + 4] = -100
    px = torch.rand(8, 3, cfg.image_size, cfg.image_size, generator=gen) * 2 - 1
    opt = torch.optim.AdamW([p for n, p in model.named_parameters() if n.startswith(("projector", "dts"))], lr=1e-3)
    before = model.projector[0].weight.detach().clone()
    loss = model(input_ids=ids, pixel_values=px, labels=labels).loss
    assert torch.isfinite(loss)
    loss.backward()
    assert model.projector[0].weight.grad.abs().sum() > 0 and model.dts.temporal_encoding.grad is not None
    opt.step()
    assert not torch.equal(before, model.projector[0].weight)


@pytest.mark.parametrize("kind", ["bare", "prefixed"])
def test_vision_prefix_variants_and_tied_head(parts: dict[str, Path], tmp_path: Path, kind: str) -> None:
    """A bare SiglipVisionModel without prefix, or with `vision_model.` (transformers 4 layout); a tied
    Qwen2 head stays tied; bf16 casts every tensor."""
    report = assemble(parts[kind], parts["qwen_tied"], tmp_path / "out", config="tiny", dtype="bf16", seed=3)
    assert report.vision_prefix == ("" if kind == "bare" else "vision_model.") and report.tied_head
    assert report.llm.unused == [] and report.vision.unexpected == []
    model = VideoXL2ForCausalLM.from_pretrained(tmp_path / "out", dtype=torch.bfloat16)
    src = {k: v for k, v in source_vision(parts, "bare").items() if kept(k)}
    tower = model.vision_tower.state_dict()
    assert set(tower) == set(src) and all(torch.equal(tower[k], src[k].to(torch.bfloat16)) for k in src)
    assert model.llm.lm_head.weight is model.llm.model.embed_tokens.weight
    assert model.llm.model.embed_tokens.weight.shape[0] == model.config.text_config.vocab_size == 151936
    src_llm = Qwen2ForCausalLM.from_pretrained(parts["qwen_tied"], dtype=torch.bfloat16).eval()
    assert all(torch.equal(v, src_llm.state_dict()[k]) for k, v in model.llm.state_dict().items())
    with safe_open(str(next((tmp_path / "out").glob("model-*.safetensors"))), framework="pt") as f:
        assert all(f.get_slice(k).get_dtype() == "BF16" for k in f.keys())
    ids = torch.tensor([[151644, 872, 198, 3838, 151645]])
    with torch.no_grad():
        assert torch.equal(model.eval()(input_ids=ids).logits, src_llm(input_ids=ids).logits)


def test_fresh_modules_follow_the_seed(assembled: Path) -> None:
    model = VideoXL2ForCausalLM.from_pretrained(assembled)
    state = model.state_dict()
    same = fresh_tensors(model.config, 0, torch.float32)  # the fixture's seed
    other = fresh_tensors(model.config, 1, torch.float32)
    assert set(same) == {k for k in state if k.startswith(("dts.", "projector."))}
    assert all(torch.equal(state[k], v) for k, v in same.items())
    assert not torch.equal(same["projector.0.weight"], other["projector.0.weight"])
    assert all(torch.isfinite(v).all() for v in same.values()) and same["projector.0.weight"].std() > 0


def test_shape_mismatch_names_tensor_and_both_shapes(parts: dict[str, Path], tmp_path: Path, capsys) -> None:
    llm = tmp_path / "qwen"
    shutil.copytree(parts["qwen"], llm)
    cfg = json.loads((llm / "config.json").read_text())
    cfg["vocab_size"] = 151936  # the weights have 152064 rows
    (llm / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(TensorShapeError, match=r"model\.embed_tokens\.weight -> llm\.model\.embed_tokens\.weight: "
                                               r".*\[152064, 32\], model \[151936, 32\]"):
        assemble(parts["siglip"], llm, tmp_path / "out", config="tiny")
    assert not (tmp_path / "out").exists()  # nothing written before every check passed
    assert main(["--vision", str(parts["siglip"]), "--llm", str(llm), "--out", str(tmp_path / "o"),
                 "--config", "tiny"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "shape mismatch" in err[0] and "[152064, 32]" in err[0]


# --------------------------------------------------------------------------- bad input: one line, exit 2


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def bad_parts(parts: dict[str, Path], root: Path) -> list[tuple[str, list[str], str]]:
    """(case, CLI args, what the line must say) for each kind of bad input."""
    cases = []

    def copy(name: str, kind: str) -> Path:
        return Path(shutil.copytree(parts[kind], root / name))

    llm = copy("llm_truncated", "qwen")
    shard = sorted(llm.glob("model-*.safetensors"))[0]
    truncate(shard)
    cases.append(("truncated llm shard", ["--vision", str(parts["siglip"]), "--llm", str(llm)],
                  f"{shard}: truncated: the header declares"))
    vision = copy("vision_corrupt", "siglip")
    raw = bytearray((vision / "model.safetensors").read_bytes())
    raw[8:40] = b"\xff" * 32
    (vision / "model.safetensors").write_bytes(bytes(raw))
    cases.append(("corrupt vision header", ["--vision", str(vision), "--llm", str(parts["qwen"])],
                  f"{vision / 'model.safetensors'}: corrupt: the safetensors header is not valid JSON"))
    vision = copy("vision_cut_header", "bare")
    (vision / "model.safetensors").write_bytes((vision / "model.safetensors").read_bytes()[:100])
    cases.append(("truncated vision header", ["--vision", str(vision), "--llm", str(parts["qwen"])],
                  f"{vision / 'model.safetensors'}: truncated: the header declares"))
    llm = copy("llm_lost_shard", "qwen")
    lost = sorted(llm.glob("model-*.safetensors"))[-1]
    lost.unlink()
    cases.append(("index lists a missing shard", ["--vision", str(parts["siglip"]), "--llm", str(llm)],
                  f"{llm / 'model.safetensors.index.json'}: lists shard {lost.name!r}"))
    llm = copy("llm_no_tokenizer", "qwen")
    for name in ("tokenizer.json", "vocab.json", "merges.txt"):
        (llm / name).unlink()
    cases.append(("missing tokenizer", ["--vision", str(parts["siglip"]), "--llm", str(llm)],
                  f"{llm}: holds no tokenizer files (tokenizer.json, or vocab.json + merges.txt); pass --tokenizer"))
    llama = save_llama(root / "llama")
    cases.append(("llama as --llm", ["--vision", str(parts["siglip"]), "--llm", str(llama)],
                  f"{llama / 'config.json'}: model_type 'llama' (architectures ['LlamaForCausalLM']): --llm"))
    clip = save_clip(root / "clip")
    cases.append(("clip as --vision", ["--vision", str(clip), "--llm", str(parts["qwen"])],
                  f"{clip / 'config.json'}: model_type 'clip_vision_model'"))
    vision = root / "vision_other_prefix"
    vision.mkdir()
    shutil.copy(parts["bare"] / "config.json", vision / "config.json")
    save_file({"siglip." + k: v for k, v in load_file(str(parts["bare"] / "model.safetensors")).items()},
              str(vision / "model.safetensors"))
    cases.append(("no vision tensor under a known prefix", ["--vision", str(vision), "--llm", str(parts["qwen"])],
                  f"{vision}: holds no SigLIP vision tensors"))
    return cases


def test_bad_parts_fail_with_one_line(parts: dict[str, Path], tmp_path: Path, capsys) -> None:
    cases = bad_parts(parts, tmp_path)
    capsys.readouterr()
    for i, (case, args, message) in enumerate(cases):
        out = tmp_path / f"out{i}"
        assert main([*args, "--out", str(out), "--config", "tiny"]) == 2, case
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(f"assemble failed: {message}"), (case, err)
        assert not out.exists(), case


def test_videoxl2_dir_checks(parts: dict[str, Path], assembled: Path, tmp_path: Path) -> None:
    """What `stage.init_from` and an evaluation `ckpt` go through: the assembled directories pass (a tied
    head may be absent from the files); a missing tensor, a shape config.json does not describe, a part of
    another kind and unloadable tokenizer files fail with one line naming the file."""
    check_videoxl2_dir(assembled, tokenizer=True)
    tied = tmp_path / "tied"
    assemble(parts["bare"], parts["qwen_tied"], tied, config="tiny")
    check_videoxl2_dir(tied)

    lacking = Path(shutil.copytree(assembled, tmp_path / "lacking"))
    index = json.loads((lacking / "model.safetensors.index.json").read_text())
    shard = lacking / index["weight_map"].pop("dts.temporal_encoding")
    tensors = load_file(str(shard))
    del tensors["dts.temporal_encoding"]
    save_file(tensors, str(shard))
    (lacking / "model.safetensors.index.json").write_text(json.dumps(index))
    other = Path(shutil.copytree(assembled, tmp_path / "other_shape"))
    cfg = json.loads((other / "config.json").read_text())
    cfg["text_config"]["intermediate_size"] = 96
    (other / "config.json").write_text(json.dumps(cfg))
    broken_tok = Path(shutil.copytree(assembled, tmp_path / "broken_tokenizer"))
    (broken_tok / "tokenizer.json").write_text('{"version": "1.0", "model": ')
    for model_dir, message in (
            (lacking, f"{lacking}: the weights lack 1 tensors of the model config.json describes, "
                      "e.g. ['dts.temporal_encoding']"),
            (other, f"{other}: tensor llm.model.layers.0.mlp.gate_proj.weight is [64, 32] in the weights, "
                    "config.json describes [96, 32]"),
            (parts["qwen"], f"{parts['qwen'] / 'config.json'}: model_type 'qwen2'"),
            (broken_tok, f"{broken_tok}: tokenizer files do not load")):
        with pytest.raises(ModelFileError) as err:
            check_videoxl2_dir(model_dir, tokenizer=model_dir == broken_tok)
        assert str(err.value).startswith(message) and "\n" not in str(err.value), str(err.value)


# The config.json files of google/siglip-so400m-patch14-384 and Qwen/Qwen2.5-7B-Instruct as published.
SO400M = {"architectures": ["SiglipModel"], "initializer_factor": 1.0, "model_type": "siglip",
          "text_config": {"hidden_size": 1152, "intermediate_size": 4304, "model_type": "siglip_text_model",
                          "num_attention_heads": 16, "num_hidden_layers": 27},
          "torch_dtype": "float32",
          "vision_config": {"hidden_size": 1152, "image_size": 384, "intermediate_size": 4304,
                            "model_type": "siglip_vision_model", "num_attention_heads": 16, "num_hidden_layers": 27,
                            "patch_size": 14}}
QWEN25_7B = {"architectures": ["Qwen2ForCausalLM"], "attention_dropout": 0.0, "bos_token_id": 151643,
             "eos_token_id": 151645, "hidden_act": "silu", "hidden_size": 3584, "initializer_range": 0.02,
             "intermediate_size": 18944, "max_position_embeddings": 32768, "max_window_layers": 28,
             "model_type": "qwen2", "num_attention_heads": 28, "num_hidden_layers": 28, "num_key_value_heads": 4,
             "rms_norm_eps": 1e-06, "rope_theta": 1000000.0, "sliding_window": 131072, "tie_word_embeddings": False,
             "torch_dtype": "bfloat16", "use_cache": True, "use_sliding_window": False, "vocab_size": 152064}


def test_released_parts_give_the_7b_preset() -> None:
    """The public so400m + Qwen2.5-7B-Instruct configs assemble into exactly the `videoxl2_7b` preset's
    tensors (26 of 27 SigLIP layers kept), built on the meta device."""
    vision_cfg, layers = vision_config_of(SO400M, Path("config.json"))
    assert (layers, vision_cfg.num_hidden_layers) == (27, 26)
    target = target_config(vision_cfg, QWEN25_7B, 151654)
    preset = build_preset("videoxl2_7b")
    assert expected_shapes(target) == expected_shapes(preset)
    for name in ("hidden_act", "layer_norm_eps", "image_size", "patch_size"):
        assert getattr(target.vision_config, name) == getattr(preset.vision_config, name), name
    for name in ("rope_parameters", "rms_norm_eps", "tie_word_embeddings", "eos_token_id", "vocab_size"):
        assert getattr(target.text_config, name) == getattr(preset.text_config, name), name
