"""LoRA through peft (train/lora.py), in process: config rules, where adapters land, the trainable set,
training, merged and adapter-only export, activation checkpointing, the frozen-feature cache, vocab width."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from test_model import make_batch
from torch import nn

from helpers import assert_same_loss_and_grads
from model import VideoXL2ForCausalLM, build_preset, load_tokenizer
from train import lora
from train.build import build_train_module, check_run
from train.config import ConfigError, LoraConfig, validate_lora
from train.engine import DistEnv
from train.export import export_stage
from train.feature_cache import FrozenFeatureCache
from train.objectives import TrainModule
from train.pipeline import compose_stage

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def save_base(path: Path, seed: int, **text: object) -> Path:
    """A random tiny model with its tokenizer, as a stage export would hold it."""
    torch.manual_seed(seed)
    cfg = build_preset("tiny")
    for key, value in text.items():
        setattr(cfg.text_config, key, value)
    VideoXL2ForCausalLM(cfg).save_pretrained(str(path))
    load_tokenizer("tiny").save_pretrained(str(path))
    return path


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_base(tmp_path_factory.mktemp("base"), seed=11)


def finetune_run(init_from: Path, *overrides: str):  # noqa: ANN201
    run, raw = compose_stage("finetune", ["model=tiny", "preset=tiny", "stage.data.train=null",
                                          "deepspeed.precision=fp32", *overrides], str(init_from))
    return run, raw


def build(init_from: Path, *overrides: str, seed: int = 5) -> TrainModule:
    run, _ = finetune_run(init_from, *overrides)
    torch.manual_seed(seed)
    return build_train_module(run, None).train_module


def expected_targets(model: nn.Module, parts: list[str], names: list[str]) -> set[str]:
    """Linear layers named as a target inside the listed parts, read off a model without adapters."""
    return {n for n, m in model.named_modules()
            if isinstance(m, nn.Linear) and n.split(".")[0] in parts and n.split(".")[-1] in names}


# --------------------------------------------------------------------------- config


def test_finetune_recipe_composes_with_lora_defaults(base_dir: Path) -> None:
    run, _ = compose_stage("finetune", ["model=tiny", "stage.data.train=null"], str(base_dir))
    assert run.stage.lora == LoraConfig(modules=["llm"], r=64, alpha=128.0, dropout=0.05, target_modules=TARGETS)
    assert run.stage.trainable == ["projector", "llm"]
    long_run, _ = compose_stage("long", ["model=tiny"], None)
    assert (run.stage.frames_upbound, run.stage.max_length, run.stage.fps_upbound) == (
        long_run.stage.frames_upbound, long_run.stage.max_length, long_run.stage.fps_upbound)
    assert long_run.stage.lora is None
    no_init, _ = compose_stage("finetune", ["model=tiny"], None)
    with pytest.raises(ConfigError, match=r"^stage.init_from: finetune starts from a trained model"):
        check_run(no_init)


def test_finetune_reads_make_shards_output_under_data_root(base_dir: Path, tmp_path: Path) -> None:
    shards = tmp_path / "shards"
    shards.mkdir()
    run, _ = compose_stage("finetune", ["model=tiny", f"data.root={shards}"], str(base_dir))
    with pytest.raises(ConfigError, match=r"^stage.data.train\[0\].shards: glob .*shard-\*\.tar"):
        check_run(run)
    (shards / "shard-000000.tar").write_bytes(b"")  # the name data.make_shards writes
    check_run(run)


@pytest.mark.parametrize(("change", "field"), [
    ({"modules": ["llm", "projectr"]}, "stage.lora.modules[1]"),
    ({"modules": ["vision_tower"]}, "stage.lora.modules[0]"),  # not in stage.trainable
    ({"modules": []}, "stage.lora.modules"),
    ({"modules": ["llm", "llm"]}, "stage.lora.modules"),
    ({"r": 0}, "stage.lora.r"),
    ({"alpha": 0.0}, "stage.lora.alpha"),
    ({"dropout": 1.0}, "stage.lora.dropout"),
    ({"target_modules": []}, "stage.lora.target_modules"),
    ({"target_modules": ["q_proj", "self_attn.k_proj"]}, "stage.lora.target_modules[1]"),
    ({"target_modules": ["q_proj", "q_proj"]}, "stage.lora.target_modules"),
])
def test_bad_lora_fields_are_named(change: dict, field: str) -> None:
    cfg = LoraConfig(**change)
    with pytest.raises(ConfigError) as err:
        validate_lora(cfg, ["projector", "llm"])
    assert err.value.field == field


def test_unknown_lora_key_is_rejected_by_the_parser(base_dir: Path) -> None:
    with pytest.raises(ConfigError, match=r"^stage.lora.rank: unknown field"):
        finetune_run(base_dir, "+stage.lora.rank=4")


# --------------------------------------------------------------------------- where adapters land


@pytest.mark.parametrize("parts", [["llm"], ["vision_tower", "llm"]])
def test_adapters_land_only_in_the_listed_parts(parts: list[str]) -> None:
    torch.manual_seed(0)
    model = VideoXL2ForCausalLM(build_preset("tiny"))
    expected = expected_targets(model, parts, TARGETS)
    assert any(n.startswith("vision_tower.") for n in expected_targets(model, ["vision_tower"], TARGETS))
    lora.apply_lora(model, LoraConfig(modules=parts, target_modules=TARGETS))
    got = set(lora.lora_layers(model))
    cfg = model.config
    per_llm_layer = 7 * cfg.text_config.num_hidden_layers
    per_vision_layer = 3 * cfg.vision_config.num_hidden_layers  # SigLIP has q/k/v_proj, no o/gate/up/down_proj
    assert len(got) == per_llm_layer + (per_vision_layer if "vision_tower" in parts else 0)
    assert got == expected


def test_a_part_without_targets_or_a_tied_target_is_a_config_error(tmp_path: Path) -> None:
    model = VideoXL2ForCausalLM(build_preset("tiny"))
    with pytest.raises(ConfigError, match=r"^stage.lora.modules\[0\]: no module inside 'projector'"):
        lora.apply_lora(model, LoraConfig(modules=["projector"], target_modules=TARGETS))
    cfg = build_preset("tiny")
    cfg.text_config.tie_word_embeddings = True
    tied = VideoXL2ForCausalLM(cfg)
    assert tied.llm.lm_head.weight is tied.llm.get_input_embeddings().weight
    with pytest.raises(ConfigError, match=r"^stage.lora.target_modules: llm.lm_head.weight is the same tensor"):
        lora.apply_lora(tied, LoraConfig(modules=["llm"], target_modules=["q_proj", "lm_head"]))


def test_trainable_set_is_exactly_the_adapters_and_the_declared_parts(base_dir: Path) -> None:
    module = build(base_dir)
    trainable = {n for n, p in module.named_parameters() if p.requires_grad}
    expect = {n for n, _ in module.named_parameters()
              if n.startswith("model.projector.")
              or (n.startswith("model.llm.") and (".lora_A." in n or ".lora_B." in n))}
    assert trainable == expect
    assert sum(".lora_A." in n for n in trainable) == 7 * module.model.config.text_config.num_hidden_layers
    counts = lora.parameter_counts(module)
    assert counts["trainable"] == sum(p.numel() for n, p in module.named_parameters() if n in expect)
    assert counts["total"] == sum(p.numel() for p in module.parameters())


def test_meta_device_count_matches_the_lora_formula() -> None:
    cfg = build_preset("tiny")
    tc = cfg.text_config
    lcfg = LoraConfig(r=8, target_modules=TARGETS)
    counts = lora.count_on_meta(cfg, lcfg, ["projector", "llm"])
    d, ff, kv = tc.hidden_size, tc.intermediate_size, tc.num_key_value_heads * (tc.hidden_size // tc.num_attention_heads)
    per_layer = 8 * ((d + d) * 2 + (d + kv) * 2 + (d + ff) * 3)  # r * (in + out) per adapted Linear
    assert counts["adapter"] == per_layer * tc.num_hidden_layers
    plain = VideoXL2ForCausalLM(cfg)
    assert counts["total"] == sum(p.numel() for p in plain.parameters()) + counts["adapter"]
    assert counts["trainable"] == counts["adapter"] + sum(p.numel() for p in plain.projector.parameters())


def test_count_cli_prints_counts_and_names_bad_flags(capsys: pytest.CaptureFixture[str]) -> None:
    assert lora.main(["--model", "tiny", "--r", "8"]) == 0
    counts = lora.count_on_meta(build_preset("tiny"), LoraConfig(r=8), ["projector", "llm"])
    out = capsys.readouterr().out
    assert f"trainable parameters: {counts['trainable']:,} " in out and f"of {counts['total']:,} total" in out
    assert lora.main(["--model", "tiny", "--modules", "llm,dts"]) == 2
    assert capsys.readouterr().err.startswith("error: --modules: 'dts' is not in stage.trainable")
    assert lora.main(["--model", "tiny", "--trainable", "projectr,llm"]) == 2
    assert capsys.readouterr().err.startswith("error: --trainable: unknown")


# --------------------------------------------------------------------------- training and export


def train_steps(module: TrainModule, batch: dict[str, torch.Tensor], steps: int, lr: float) -> list[float]:
    opt = torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=lr)
    losses = []
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        loss = module(**batch)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return losses


@pytest.fixture(scope="module")
def trained(base_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[TrainModule, Path, list[float]]:
    """A LoRA module trained 12 AdamW steps on one batch, exported as `train_stage` exports it."""
    module = build(base_dir, "stage.lora.r=4", "stage.lora.alpha=12")
    batch = make_batch(module.model.config, seed=3)
    losses = train_steps(module, batch, 12, lr=3e-3)
    out = tmp_path_factory.mktemp("export") / "export"
    run, raw = finetune_run(base_dir)
    export_stage(None, module, load_tokenizer(str(base_dir)), out, raw, 0, DistEnv(0, 1, 0), extra={})
    return module.eval(), out, losses


def test_loss_falls_and_only_trainable_weights_move(trained: tuple, base_dir: Path) -> None:
    module, _, losses = trained
    assert losses[-1] < 0.85 * losses[0], losses
    base = VideoXL2ForCausalLM.from_pretrained(str(base_dir)).state_dict()
    live = module.model.state_dict()
    for key, value in base.items():
        stored = key.replace(".weight", ".base_layer.weight").replace(".bias", ".base_layer.bias")
        live_value = live[stored] if stored in live and key not in live else live[key]
        if key.startswith("projector."):
            assert not torch.equal(live_value, value), key
        else:
            assert torch.equal(live_value, value), key  # frozen, bit for bit


def test_merged_export_is_plain_strict_and_equals_the_adapter_model(trained: tuple, base_dir: Path) -> None:
    module, out, _ = trained
    weights = load_file(str(out / "model.safetensors"))
    assert weights and all(v.numel() > 0 for v in weights.values())
    assert not [k for k in weights if "lora_" in k or "base_layer" in k]
    merged, info = VideoXL2ForCausalLM.from_pretrained(str(out), output_loading_info=True)
    assert not any(info.values()), info  # no missing, unexpected or mismatched keys
    assert not lora.is_adapted(merged)
    # W + (alpha / r) * B @ A from the live adapter tensors and the untouched base weights
    base = VideoXL2ForCausalLM.from_pretrained(str(base_dir)).state_dict()
    scale = 12 / 4
    for path, layer in lora.lora_layers(module.model).items():
        a, b = layer.lora_A["default"].weight, layer.lora_B["default"].weight
        assert b.abs().max() > 0, path  # trained away from peft's zero init
        expect = base[f"{path}.weight"] + scale * (b @ a)
        torch.testing.assert_close(weights[f"{path}.weight"], expect, rtol=0, atol=1e-6, msg=path)
    batch = make_batch(module.model.config, seed=9)
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "pixel_values")}
    with torch.no_grad():
        want = module.model(**inputs).logits
        got = merged.eval()(**inputs).logits
    assert got.shape[-1] == merged.config.text_config.vocab_size
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)


def test_adapter_export_is_peft_format_and_reloads_onto_the_base(trained: tuple, base_dir: Path) -> None:
    from peft import PeftModel

    module, out, _ = trained
    adapter = out / "adapter"
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert (config["r"], config["lora_alpha"], config["peft_type"]) == (4, 12, "LORA")
    tensors = load_file(str(adapter / "adapter_model.safetensors"))
    layers = lora.lora_layers(module.model)
    assert set(tensors) == {f"base_model.model.{p}.lora_{ab}.weight" for p in layers for ab in "AB"}
    for path, layer in layers.items():
        assert torch.equal(tensors[f"base_model.model.{path}.lora_B.weight"], layer.lora_B["default"].weight)
    trained_parts = load_file(str(adapter / lora.TRAINED_PARTS))
    assert {k.split(".")[0] for k in trained_parts} == {"projector"}
    base = VideoXL2ForCausalLM.from_pretrained(str(base_dir))
    missing, unexpected = base.load_state_dict(trained_parts, strict=False)
    assert not unexpected and all(not k.startswith("projector.") for k in missing)
    peft_model = PeftModel.from_pretrained(base, str(adapter)).eval()
    batch = make_batch(module.model.config, seed=4)
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "pixel_values")}
    with torch.no_grad():
        torch.testing.assert_close(peft_model(**inputs).logits, module.model(**inputs).logits, rtol=0, atol=1e-5)


def test_vocab_rows_beyond_the_tokenizer_are_kept(trained: tuple, base_dir: Path) -> None:
    _, out, _ = trained
    tokenizer = load_tokenizer(str(out))
    merged = VideoXL2ForCausalLM.from_pretrained(str(out))
    vocab = merged.config.text_config.vocab_size
    assert len(tokenizer) < vocab == VideoXL2ForCausalLM.from_pretrained(str(base_dir)).config.text_config.vocab_size
    assert merged.llm.get_input_embeddings().weight.shape[0] == vocab
    assert merged.llm.lm_head.weight.shape[0] == vocab


@pytest.mark.parametrize("tied", [False, True])
def test_head_keeps_its_values_in_the_merged_export(tmp_path: Path, tied: bool) -> None:
    base = save_base(tmp_path / "base", seed=2, tie_word_embeddings=tied)
    targets = "[q_proj,v_proj]" if tied else "[q_proj,v_proj,lm_head]"  # an adapter on a tied head is refused
    module = build(base, "stage.lora.r=4", "stage.lora.alpha=8", f"stage.lora.target_modules={targets}")
    train_steps(module, make_batch(module.model.config, seed=1), 3, lr=3e-3)
    out = tmp_path / "export"
    export_stage(None, module, None, out, {}, 0, DistEnv(0, 1, 0), extra={})
    merged = VideoXL2ForCausalLM.from_pretrained(str(out))
    source = VideoXL2ForCausalLM.from_pretrained(str(base))
    head, embed = merged.llm.lm_head.weight, merged.llm.get_input_embeddings().weight
    assert head.shape == embed.shape == source.llm.lm_head.weight.shape
    if tied:
        assert head.data_ptr() == embed.data_ptr() and torch.equal(head, source.llm.lm_head.weight)
    else:
        layer = lora.lora_layers(module.model)["llm.lm_head"]
        delta = 8 / 4 * layer.lora_B["default"].weight @ layer.lora_A["default"].weight  # alpha / r * B @ A
        assert delta.abs().max() > 0
        torch.testing.assert_close(head, source.llm.lm_head.weight + delta, rtol=0, atol=1e-6)
        assert torch.equal(embed, source.llm.get_input_embeddings().weight)


# --------------------------------------------------------------------------- checkpointing, cache


def test_activation_checkpointing_gives_the_adapters_the_same_gradients(base_dir: Path) -> None:
    # only the LLM trains (through its adapters): the frozen embeddings' output needs no gradient, the
    # case in which reentrant checkpointing hands the adapters nothing
    overrides = ("stage.trainable=[llm]", "stage.lora.r=4")
    grads = []
    for checkpointing in (False, True):
        module = build(base_dir, *overrides, f"loop.activation_checkpointing={str(checkpointing).lower()}", seed=8)
        for layer in lora.lora_layers(module.model).values():  # B away from zero, so A gets a gradient too
            nn.init.normal_(layer.lora_B["default"].weight, std=0.05, generator=torch.Generator().manual_seed(1))
        assert module.model.llm.model.is_activation_checkpointing == checkpointing
        torch.manual_seed(3)  # the same dropout masks in both runs
        module(**make_batch(module.model.config, seed=2)).backward()
        grads.append({n: p.grad for n, p in module.named_parameters() if p.requires_grad})
    plain, checkpointed = grads
    assert plain.keys() == checkpointed.keys() and len(plain) == 2 * 7 * 4
    for name, grad in plain.items():
        assert checkpointed[name] is not None and grad.abs().max() > 0, name
        torch.testing.assert_close(checkpointed[name], grad, rtol=1e-5, atol=1e-7, msg=name)


def test_frozen_feature_cache_gives_the_adapters_the_same_loss_and_gradients(base_dir: Path) -> None:
    module = build(base_dir, "stage.lora.r=4", "stage.lora.dropout=0.0")
    for layer in lora.lora_layers(module.model).values():
        nn.init.normal_(layer.lora_B["default"].weight, std=0.05)
    cached = TrainModule(module.model, "lm", feature_cache=FrozenFeatureCache(2**20))
    batch = make_batch(module.model.config, seed=6)
    assert_same_loss_and_grads((module, cached, cached), module.model, batch)  # the second cached pass: all hits
    assert cached.feature_cache.hits > 0
