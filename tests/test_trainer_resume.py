"""Exact resume (2 processes, ZeRO-2, fp32, validating every 2 steps): an uninterrupted run == the same run
SIGKILLed after step >= K and resumed with resume=auto (per-step losses, validation losses and final weights
identical); SIGTERM checkpoints and exits cleanly."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from helpers import free_port, kill_when, last_losses, subprocess_env

REPO = Path(__file__).resolve().parents[1]
K = 3
TOTAL = 10
pytestmark = pytest.mark.slow


def torchrun_cmd(synth: Path, root: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
            str(free_port()), "-m", "train", "stage=dts", "model=tiny", "data=synth", f"data.root={synth}",
            "preset=tiny", "stage.init_from=null", f"output_root={root}", "deepspeed=zero2",
            "deepspeed.precision=fp32", f"loop.max_steps={TOTAL}", "checkpoint.keep_last_k=100",
            "loop.micro_batch_size=2", "loop.grad_accum=2", "loop.loader_workers=1", "logging.tqdm=false",
            "loop.eval_every_steps=2", *extra]


def last_val_losses(stage_dir: Path) -> dict[int, float]:
    """Per-step validation loss of a stage's metrics.jsonl (a step logged twice: the last one)."""
    records = map(json.loads, (stage_dir / "metrics.jsonl").read_text().splitlines())
    return {r["step"]: r["val/loss"] for r in records if "val/loss" in r}


def test_sigkill_then_resume_auto_is_exact(synth: Path, tmp_path: Path) -> None:
    ref, cut = tmp_path / "ref", tmp_path / "cut"
    proc = subprocess.run(torchrun_cmd(synth, ref, f"checkpoint.every_steps={K}"), cwd=REPO, env=subprocess_env(WANDB_MODE="disabled"), capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]

    # a checkpoint after every step, so that wherever the kill lands there is one to resume from
    killed = subprocess.Popen(torchrun_cmd(synth, cut, "checkpoint.every_steps=1"), cwd=REPO, env=subprocess_env(WANDB_MODE="disabled"), stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    marker = cut / "dts" / "checkpoints" / f"step-{K:08d}" / "COMPLETE"
    kill_when(killed, marker)
    assert not (cut / "dts" / "export").exists(), "the run finished before it was killed"

    resumed = subprocess.run(torchrun_cmd(synth, cut, "checkpoint.every_steps=1", "checkpoint.resume=auto"), cwd=REPO, env=subprocess_env(WANDB_MODE="disabled"),
                             capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    events = [json.loads(line) for line in (cut / "dts" / "metrics.jsonl").read_text().splitlines()]
    resume = [e for e in events if e.get("event") == "resume"]
    assert len(resume) == 1 and K <= resume[0]["step"] < TOTAL

    expect, got = last_losses(ref / "dts"), last_losses(cut / "dts")
    assert sorted(expect) == sorted(got) == list(range(1, TOTAL + 1))
    assert got == expect  # bit-identical per-step losses
    # validation passes (every 2 steps and at the end) neither perturb the run nor depend on the resume
    assert last_val_losses(cut / "dts") == last_val_losses(ref / "dts")
    assert sorted(last_val_losses(ref / "dts")) == [2, 4, 6, 8, 10]
    a = load_file(str(ref / "dts" / "export" / "model.safetensors"))
    b = load_file(str(cut / "dts" / "export" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_sigterm_saves_checkpoint_and_exits_cleanly(synth: Path, tmp_path: Path) -> None:
    root = tmp_path / "term"
    cmd = [sys.executable, "-m", "train", "stage=align", "model=tiny", "data=synth", f"data.root={synth}",
           "preset=tiny", "stage.init_from=null", "stage.trainable=[projector]", f"output_root={root}",
           "loop.max_steps=100000", "checkpoint.every_steps=100000", "logging.tqdm=false"]
    proc = subprocess.Popen(cmd, cwd=REPO, env=subprocess_env(WANDB_MODE="disabled"), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    metrics_file = root / "align" / "metrics.jsonl"
    deadline = time.monotonic() + 300
    while not (metrics_file.exists() and len(metrics_file.read_text().splitlines()) >= 2):
        assert proc.poll() is None, proc.stderr.read()[-3000:] if proc.stderr else ""
        assert time.monotonic() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-3000:]
    records = [json.loads(line) for line in metrics_file.read_text().splitlines()]
    stop = [r for r in records if r.get("event") == "signal_stop"]
    assert len(stop) == 1 and stop[0]["signal"] == signal.SIGTERM
    last_step = max(r["step"] for r in records if "loss" in r)
    ck = root / "align" / "checkpoints" / f"step-{last_step:08d}"
    assert (ck / "COMPLETE").is_file() and json.loads((ck / "trainer_state.json").read_text())["step"] == last_step
    assert not (root / "align" / "export").exists()
