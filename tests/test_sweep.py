"""Hydra multirun sweeps of `python -m train`: every job trains, each in its own output directory
(`<output_dir>/<job number>`), in one process and under torchrun (the process group outlives the jobs)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import REPO, free_port, last_losses, subprocess_env

RATES = (1e-4, 3e-4)
STEPS = 3


def train_args(synth: Path, root: Path, *extra: str, sweep: str | None = None) -> list[str]:
    """`-m train [--multirun] <overrides>` (`sweep`: the swept override)."""
    head = ["-m", "train"] if sweep is None else ["-m", "train", "--multirun", sweep]
    return [*head, "stage=dts", "model=tiny", "data=synth", f"data.root={synth}", "preset=tiny",
            "stage.init_from=null", f"output_root={root}", "deepspeed.precision=fp32", f"loop.max_steps={STEPS}",
            "loop.loader_workers=0", "logging.tqdm=false", "checkpoint.every_steps=2", *extra]


def run(cmd: list[str]) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(cmd, cwd=REPO, env=subprocess_env(WANDB_MODE="disabled"), capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


def check_jobs(root: Path) -> dict[int, dict[int, float]]:
    """Both jobs trained every step, exported and checkpointed in their own directory; returns their losses."""
    stage = root / "dts"
    assert sorted(p.name for p in stage.iterdir() if p.is_dir()) == ["0", "1"]
    assert not (stage / "metrics.jsonl").exists() and not (stage / "checkpoints").exists()
    losses = {}
    for job, rate in enumerate(RATES):
        out = stage / str(job)
        info = json.loads((out / "export" / "export_info.json").read_text())
        assert info["step"] == STEPS
        assert sorted(p.name for p in (out / "checkpoints").iterdir() if p.name.startswith("step-")) == [
            "step-00000002", "step-00000003"]
        text = (out / "train_config.yaml").read_text()
        assert f"output_dir: {out}\n" in text and f"dts: {rate}\n" in text  # the job's own dir and swept value
        losses[job] = last_losses(out)
        assert sorted(losses[job]) == list(range(1, STEPS + 1))
    return losses


@pytest.mark.slow
def test_two_job_sweep_in_one_process(synth: Path, tmp_path: Path) -> None:
    run([sys.executable, *train_args(synth, tmp_path / "sweep", sweep=f"stage.lr.dts={RATES[0]},{RATES[1]}")])
    losses = check_jobs(tmp_path / "sweep")
    assert losses[0] != losses[1]  # the rates differ
    # the second job is the run it would be on its own: nothing of the first job leaks into it
    run([sys.executable, *train_args(synth, tmp_path / "solo", f"stage.lr.dts={RATES[1]}")])
    assert last_losses(tmp_path / "solo" / "dts") == losses[1]


@pytest.mark.slow
def test_two_job_sweep_under_torchrun(synth: Path, tmp_path: Path) -> None:
    run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()),
         *train_args(synth, tmp_path, "loop.micro_batch_size=1", sweep=f"stage.lr.dts={RATES[0]},{RATES[1]}")])
    losses = check_jobs(tmp_path)
    assert losses[0] != losses[1]
