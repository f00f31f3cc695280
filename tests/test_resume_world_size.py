"""Resume on another world size through the real entry point (`python -m train`, tiny preset, CPU):
2 -> 1 -> 2 ranks under ZeRO-2 and 2 -> 1 under ZeRO-3, with frozen modules (vision tower, DTS).

The frozen weights in the checkpoints are overwritten with recognisable values first, so a resume
that rebuilt them from the initialisation instead of restoring them would fail; trainable weights
are compared with DeepSpeed's own files (ZeRO-2) or the writing run's export (ZeRO-3), and the
learning rate of every parameter group with the uninterrupted run's."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from helpers import free_port, subprocess_env
from train.checkpoint import weights_only_loading

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow
FROZEN = ("model.vision_tower.", "model.dts.")


def run(synth: Path, out: Path, ranks: int, *extra: str, expect: int = 0) -> str:
    args = ["stage=sft", "model=tiny", "data=synth", f"data.root={synth}", "preset=tiny", "stage.init_from=null",
            f"output_root={out}", "deepspeed.precision=fp32", "loop.micro_batch_size=1", "loop.loader_workers=0",
            "stage.trainable=[projector,llm]", "stage.lr={projector:2.0e-3,llm:1.0e-3}", "logging.tqdm=false",
            "checkpoint.keep_last_k=100", *extra]
    launch = [sys.executable, "-m", "train"] if ranks == 1 else [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(ranks), "--master_port",
        str(free_port()), "-m", "train"]
    proc = subprocess.run(launch + args, cwd=REPO, env=subprocess_env(WANDB_MODE="disabled"), capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == expect, proc.stderr[-4000:]
    return proc.stderr


def records(stage_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (stage_dir / "metrics.jsonl").read_text().splitlines()]


def lrs(stage_dir: Path) -> dict[int, dict[str, float]]:
    return {r["step"]: {k: v for k, v in r.items() if k.startswith("lr/")} for r in records(stage_dir) if "loss" in r}


def perturb_frozen(ds_dir: Path) -> dict[str, torch.Tensor]:
    """Overwrite the frozen parameters' saved values (every place DeepSpeed keeps them) with new
    ones; return the full new tensors by parameter name."""
    files = sorted(ds_dir.glob("*model_states.pt"))
    states = {}
    for f in files:
        with weights_only_loading():
            states[f] = torch.load(f, map_location="cpu")
    new: dict[str, torch.Tensor] = {}
    for f, st in states.items():
        for name, piece in st["frozen_param_fragments"].items():
            st["frozen_param_fragments"][name] = piece + 0.5 + 0.25 * files.index(f)
        if st.get("module"):
            for name in st["frozen_param_fragments"]:
                st["module"][name] = st["frozen_param_fragments"][name].clone()
        torch.save(st, f)
    shapes = states[files[0]]["frozen_param_shapes"]
    for name, shape in shapes.items():
        flat = torch.cat([st["frozen_param_fragments"][name].reshape(-1) for st in states.values()])
        new[name] = flat[:torch.Size(shape).numel()].reshape(shape)
    assert new and all(n.startswith(FROZEN) for n in new)
    return new


def exported(stage_dir: Path) -> dict[str, torch.Tensor]:
    return {f"model.{k}": v for k, v in load_file(str(stage_dir / "export" / "model.safetensors")).items()}


def test_zero2_two_ranks_to_one_and_back(synth: Path, tmp_path: Path) -> None:
    a, b, c, d = (tmp_path / x for x in "abcd")
    run(synth, a, 2, "deepspeed=zero2", "loop.max_steps=4", "checkpoint.every_steps=2", "checkpoint.export=false")
    ck = a / "sft" / "checkpoints" / "step-00000002"
    frozen = perturb_frozen(ck / "ds")
    with weights_only_loading():
        saved = torch.load(ck / "ds" / "mp_rank_00_model_states.pt", map_location="cpu")["module"]

    # weights as loaded on 1 rank: nothing trains (the checkpoint's step is already max_steps)
    run(synth, c, 1, "deepspeed=zero2", "loop.max_steps=2", f"checkpoint.resume={ck}")
    got = exported(c / "sft")
    for name, value in saved.items():
        if name in got:
            want = frozen.get(name, value)
            assert torch.equal(got[name], want), name
    assert set(frozen) <= set(got)
    assert (ck / "ds_universal").is_dir()  # converted once, kept

    # 2 -> 1, training on: per-group learning rates continue the schedule
    run(synth, b, 1, "deepspeed=zero2", "loop.max_steps=4", "checkpoint.every_steps=1", f"checkpoint.resume={ck}",
        "checkpoint.export=false")
    resume = [r for r in records(b / "sft") if r.get("event") == "resume"]
    assert resume and resume[0]["from_world_size"] == 2
    ref, one = lrs(a / "sft"), lrs(b / "sft")
    assert one[3] == ref[3] and one[4] == ref[4] and one[3]["lr/projector"] == 2 * one[3]["lr/llm"]

    # a checkpoint that cannot be converted (a ZeRO partition missing): one line saying why and how
    broken = tmp_path / "broken"
    shutil.copytree(a / "sft" / "checkpoints" / "step-00000004", broken)
    (broken / "ds" / "zero_pp_rank_1_mp_rank_00_optim_states.pt").unlink()
    err = run(synth, tmp_path / "e", 1, "deepspeed=zero2", "loop.max_steps=4", f"checkpoint.resume={broken}", expect=2)
    last = err.strip().splitlines()[-1]
    assert last.startswith("config error: checkpoint.resume:") and "written by 2 ranks" in last, last
    assert "resume it on 2 ranks" in last

    # 1 -> 2 from the resumed run's step 3: frozen values still the perturbed ones
    run(synth, d, 2, "deepspeed=zero2", "loop.max_steps=4", f"checkpoint.resume={b / 'sft' / 'checkpoints' / 'step-00000003'}")
    assert lrs(d / "sft")[4] == ref[4]
    got = exported(d / "sft")
    assert all(torch.equal(got[name], value) for name, value in frozen.items())


def test_resume_with_more_steps_follows_the_new_schedule(synth: Path, tmp_path: Path) -> None:
    """A 2-step run resumed with `loop.max_steps=4` trains steps 3 and 4 at the 4-step schedule's rates (those
    of an uninterrupted 4-step run), not at the 2-step cosine's floor (0) that the checkpoint carries."""
    short, full, resumed = tmp_path / "short", tmp_path / "full", tmp_path / "resumed"
    run(synth, short, 1, "deepspeed=zero2", "loop.max_steps=2", "checkpoint.every_steps=2", "checkpoint.export=false")
    run(synth, full, 1, "deepspeed=zero2", "loop.max_steps=4", "checkpoint.export=false")
    run(synth, resumed, 1, "deepspeed=zero2", "loop.max_steps=4", "checkpoint.export=false",
        f"checkpoint.resume={short / 'sft' / 'checkpoints' / 'step-00000002'}")
    resume = [r for r in records(resumed / "sft") if r.get("event") == "resume"]
    assert resume and resume[0]["schedule_steps_from"] == 2
    want, got = lrs(full / "sft"), lrs(resumed / "sft")
    assert sorted(got) == [3, 4] and got[3] == want[3] and got[4] == want[4]
    assert got[4]["lr/llm"] > 0 and lrs(short / "sft")[2]["lr/llm"] > 0


def test_zero3_frozen_pieces_two_ranks_to_one(synth: Path, tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    z3 = ("deepspeed=zero3", "deepspeed.zero_optimization.stage3_param_persistence_threshold=0")
    run(synth, a, 2, *z3, "loop.max_steps=2")
    ck = a / "sft" / "checkpoints" / "step-00000002"
    assert len(list((ck / "ds").glob("zero_pp_rank_*_model_states.pt"))) == 2
    frozen = perturb_frozen(ck / "ds")
    want = exported(a / "sft")
    shutil.rmtree(a / "sft" / "export")
    run(synth, b, 1, *z3, "loop.max_steps=2", f"checkpoint.resume={ck}")
    got = exported(b / "sft")
    assert got.keys() == want.keys()
    for name in got:
        assert torch.equal(got[name], frozen.get(name, want[name])), name
