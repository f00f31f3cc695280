"""LoRA fine-tuning through `python -m train stage=finetune` under ZeRO-3 (fp32): an uninterrupted run
equals the same run SIGKILLed after a checkpoint and resumed with resume=auto (per-step losses and both
exports bit for bit); the export is whole, loads strictly, and equals DeepSpeed's own consolidation of
the final checkpoint (the live weights); frozen weights equal init_from's; metrics report the counts.
Alongside: a ZeRO-2 (bf16) LoRA run with the frozen-feature cache and activation checkpointing. Under
ZeRO-2 (fp32): a run resumed from another run's checkpoint continues it bit for bit."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from test_lora import save_base

from helpers import kill_when, last_losses, subprocess_env
from model import VideoXL2ForCausalLM

REPO = Path(__file__).resolve().parents[1]
K = 2
TOTAL = 8  # steps after the kill point: the killed run must not reach its export before the kill lands
R, ALPHA = 4, 12.0
pytestmark = pytest.mark.slow


def train_cmd(synth: Path, base: Path, root: Path, *extra: str, zero: int = 3) -> list[str]:
    return [sys.executable, "-m", "train", "stage=finetune", "model=tiny", "data=synth", f"data.root={synth}",
            "preset=tiny", f"stage.init_from={base}", "stage.data.train=null", "stage.frames_upbound=8",
            f"stage.lora.r={R}", f"stage.lora.alpha={ALPHA}", "stage.lora.modules=[vision_tower,llm]",
            "stage.trainable=[vision_tower,projector,llm]", "+stage.lr.vision_tower=1e-3",
            f"output_root={root}", f"deepspeed=zero{zero}", "deepspeed.precision=fp32", f"loop.max_steps={TOTAL}",
            "loop.micro_batch_size=2", "loop.loader_workers=0", "checkpoint.every_steps=1",
            "checkpoint.keep_last_k=100", "logging.tqdm=false", *extra]


def zero2_cached_cmd(synth: Path, base: Path, root: Path) -> list[str]:
    """ZeRO-2, LoRA on the LLM only, with the frozen vision tower + DTS memoised and activation checkpointing."""
    return [sys.executable, "-m", "train", "stage=finetune", "model=tiny", "data=synth", f"data.root={synth}",
            "preset=tiny", f"stage.init_from={base}", "stage.data.train=null", "stage.frames_upbound=8",
            f"output_root={root}", "deepspeed=zero2", "loop.max_steps=3", "loop.micro_batch_size=2",
            "loop.loader_workers=0", "loop.frozen_feature_cache_mb=8", "loop.activation_checkpointing=true",
            "logging.tqdm=false"]


def test_zero3_lora_resume_is_exact_and_export_is_whole(synth: Path, tmp_path: Path) -> None:
    base = save_base(tmp_path / "base", seed=21)
    ref, cut = tmp_path / "ref", tmp_path / "cut"
    env = subprocess_env(WANDB_MODE="disabled")
    # a ZeRO-2 run with the feature cache, alongside (these runs spend most of their time starting up)
    logs = {name: (tmp_path / f"{name}.log").open("w") for name in ("zero2", "reference")}  # no pipe to fill up
    zero2 = subprocess.Popen(zero2_cached_cmd(synth, base, tmp_path / "zero2"), cwd=REPO, env=env,
                             stdout=subprocess.DEVNULL, stderr=logs["zero2"])
    reference = subprocess.Popen(train_cmd(synth, base, ref), cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                                 stderr=logs["reference"])
    killed = subprocess.Popen(train_cmd(synth, base, cut), cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    marker = cut / "finetune" / "checkpoints" / f"step-{K:08d}" / "COMPLETE"
    kill_when(killed, marker)
    assert not (cut / "finetune" / "export").exists(), "the run finished before it was killed"
    resumed = subprocess.run(train_cmd(synth, base, cut, "checkpoint.resume=auto"), cwd=REPO, env=env,
                             capture_output=True, text=True, timeout=600)
    reference.wait(timeout=600)
    assert reference.returncode == 0, (tmp_path / "reference.log").read_text()[-4000:]
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    assert "parameters: " in resumed.stderr and " trainable of " in resumed.stderr

    stage_ref, stage_cut = ref / "finetune", cut / "finetune"
    events = [json.loads(line) for line in (stage_cut / "metrics.jsonl").read_text().splitlines()]
    assert len([e for e in events if e.get("event") == "resume"]) == 1
    expect, got = last_losses(stage_ref), last_losses(stage_cut)
    assert sorted(expect) == list(range(1, TOTAL + 1)) and got == expect  # bit-identical fp32 losses
    files = ("model.safetensors", "adapter/adapter_model.safetensors", "adapter/trained_parts.safetensors")
    for name in files:
        a, b = load_file(str(stage_ref / "export" / name)), load_file(str(stage_cut / "export" / name))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name

    export = stage_cut / "export"
    merged = load_file(str(export / "model.safetensors"))
    adapter = load_file(str(export / "adapter" / "adapter_model.safetensors"))
    trained = load_file(str(export / "adapter" / "trained_parts.safetensors"))
    assert all(v.numel() > 0 for d in (merged, adapter, trained) for v in d.values())
    assert not [k for k in merged if "lora_" in k or "base_layer" in k]
    model, info = VideoXL2ForCausalLM.from_pretrained(str(export), output_loading_info=True)
    assert not any(info.values()), info

    # the live weights at the last step, consolidated by DeepSpeed's own tool from the final checkpoint
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    from train.checkpoint import weights_only_loading

    with weights_only_loading():
        live = get_fp32_state_dict_from_zero_checkpoint(str(stage_cut / "checkpoints" / f"step-{TOTAL:08d}"), tag="ds")
    live = {k.removeprefix("model."): v for k, v in live.items()}
    source = load_file(str(base / "model.safetensors"))
    paths = sorted(k.removesuffix(".lora_A.default.weight") for k in live if k.endswith(".lora_A.default.weight"))
    cfg = model.config
    assert len(paths) == 7 * cfg.text_config.num_hidden_layers + 3 * cfg.vision_config.num_hidden_layers
    for path in paths:
        a, b = live[f"{path}.lora_A.default.weight"], live[f"{path}.lora_B.default.weight"]
        assert torch.equal(adapter[f"base_model.model.{path}.lora_A.weight"], a)
        assert torch.equal(adapter[f"base_model.model.{path}.lora_B.weight"], b)
        assert b.abs().max() > 0, path
        assert torch.equal(live[f"{path}.base_layer.weight"], source[f"{path}.weight"])  # frozen after resume
        torch.testing.assert_close(merged[f"{path}.weight"], source[f"{path}.weight"] + ALPHA / R * (b @ a),
                                   rtol=0, atol=1e-6, msg=path)
    plain_live = {k.replace(".base_layer.", "."): v for k, v in live.items() if "lora_" not in k}
    assert set(plain_live) == set(merged)
    for key, value in merged.items():
        if key.startswith("projector."):
            assert torch.equal(trained[key], plain_live[key]) and torch.equal(value, plain_live[key]), key
            assert not torch.equal(value, source[key]), key
        elif key.removesuffix(".weight") not in paths:
            assert torch.equal(value, source[key]) and torch.equal(plain_live[key], source[key]), key
    counts = next(e for e in events if e.get("event") == "parameters")
    assert counts["trainable"] == sum(v.numel() for d in (adapter, trained) for v in d.values())
    assert counts["total"] == sum(v.numel() for v in merged.values()) + sum(v.numel() for v in adapter.values())

    zero2.wait(timeout=600)
    for log in logs.values():
        log.close()
    assert zero2.returncode == 0, (tmp_path / "zero2.log").read_text()[-4000:]
    stage2 = tmp_path / "zero2" / "finetune"
    records = [json.loads(line) for line in (stage2 / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if "loss" in r]
    assert len(steps) == 3 and all(r["feature_cache/mib"] > 0 for r in steps)  # the cache is in use
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in steps)
    exported = load_file(str(stage2 / "export" / "adapter" / "adapter_model.safetensors"))
    assert len(exported) == 2 * 7 * cfg.text_config.num_hidden_layers  # LLM only (the default)
    assert all(v.numel() > 0 for v in exported.values())
    assert not any("lora_" in k for k in load_file(str(stage2 / "export" / "model.safetensors")))


def test_zero2_lora_resume_from_a_checkpoint_is_exact(synth: Path, tmp_path: Path) -> None:
    """ZeRO-2 keeps the LoRA adapters' and the trained modules' optimizer state in its own partitions: a run
    resumed from step 2 of another continues it bit for bit (losses of the later steps, the exported adapter)."""
    base = save_base(tmp_path / "base", seed=22)
    ref, resumed = tmp_path / "ref", tmp_path / "resumed"
    env = subprocess_env(WANDB_MODE="disabled")
    first = subprocess.run(train_cmd(synth, base, ref, zero=2), cwd=REPO, env=env, capture_output=True, text=True,
                           timeout=600)
    assert first.returncode == 0, first.stderr[-4000:]
    checkpoint = ref / "finetune" / "checkpoints" / f"step-{2:08d}"
    second = subprocess.run(train_cmd(synth, base, resumed, f"checkpoint.resume={checkpoint}", zero=2), cwd=REPO,
                            env=env, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stderr[-4000:]
    expect, got = last_losses(ref / "finetune"), last_losses(resumed / "finetune")
    assert sorted(expect) == list(range(1, TOTAL + 1)) and sorted(got) == list(range(3, TOTAL + 1))
    assert all(got[k] == expect[k] for k in got)  # bit-identical fp32 losses
    for name in ("adapter/adapter_model.safetensors", "adapter/trained_parts.safetensors"):
        a = load_file(str(ref / "finetune" / "export" / name))
        b = load_file(str(resumed / "finetune" / "export" / name))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
