"""Memory planner: its figure against the measured peak memory of real CPU training steps, the CLI."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from helpers import REPO, subprocess_env

WIDE = ["model.interp_grid=12", "model.text_config.hidden_size=512", "model.text_config.intermediate_size=1536",
        "model.text_config.num_attention_heads=8", "model.text_config.num_key_value_heads=2"]
RUN = ["stage=sft", "stage.init_from=null", "deepspeed=zero2", "deepspeed.precision=fp32", "stage.max_length=8192",
       "deepspeed.zero_optimization.reduce_bucket_size=5000000",
       "stage.steps=2"]


@pytest.mark.slow
@pytest.mark.parametrize("shape", [["model=tiny", "stage.frames_upbound=512"],
                                   ["model=tiny", *WIDE, "stage.frames_upbound=128"]], ids=["tiny", "wide"])
def test_plan_matches_measured_peak_within_20_percent(shape: list[str]) -> None:
    proc = subprocess.run([sys.executable, str(REPO / "tests" / "plan_measure.py"), *shape, *RUN], cwd=REPO,
                          env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert abs(result["planned"] - result["measured"]) <= 0.2 * result["measured"], result


@pytest.mark.slow
def test_plan_cli_prints_parts_and_frames() -> None:
    proc = subprocess.run([sys.executable, "-m", "train.plan", "model=tiny", "stage=sft", "stage.init_from=null",
                           "gpus=2", "gpu_mem_gb=0.5", "loop.activation_checkpointing=true"], cwd=REPO,
                          env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    for part in ("parameters", "gradients", "optimizer states", "vision tower + DTS", "LLM", "total per GPU"):
        assert part in out
    line = next(line for line in out.splitlines() if "frames" in line and "largest" in line)
    assert int(line.split(":")[1].split()[0]) > 0
    bad = subprocess.run([sys.executable, "-m", "train.plan", "model=tiny", "gpus=0"], cwd=REPO,
                         env=subprocess_env(), capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and bad.stderr.strip().splitlines()[-1].startswith("config error: gpus")


def test_plan_says_which_model_it_plans(tmp_path) -> None:
    """With an existing `stage.init_from` the plan is for that directory's config.json, as training would be, and
    says so with a field where the `model` group differs; without one, for the model group."""
    from model import build_preset
    from train.plan import compose_run, model_source

    build_preset("tiny", text_config={"num_hidden_layers": 3}).save_pretrained(tmp_path)
    run, model_cfg, _ = compose_run(["model=tiny", "stage=sft", f"stage.init_from={tmp_path}"])
    line = model_source(run, model_cfg)
    assert model_cfg.text_config.num_hidden_layers == 3
    assert str(tmp_path) in line and "text_config.num_hidden_layers: 4 (model group), 3 (init_from)" in line, line
    run, model_cfg, _ = compose_run(["model=tiny", "stage=sft", "stage.init_from=null"])
    assert model_cfg.text_config.num_hidden_layers == 4 and "is null" in model_source(run, model_cfg)
    run, model_cfg, _ = compose_run(["model=tiny", "stage=sft", f"stage.init_from={tmp_path / 'later'}"])
    assert f"{tmp_path / 'later'} has no config.json yet" in model_source(run, model_cfg)
