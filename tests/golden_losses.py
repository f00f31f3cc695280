"""Golden per-step losses of short `dts` and `sft` runs on the tiny fp32 setup.

`python tests/golden_losses.py` regenerates `tests/assets/golden_losses.json` on purpose (after a change
that is meant to move the losses: label shifting, masking, init, schedule, data order, the test videos'
encoder). `tests/test_golden_losses.py` reruns the same commands and compares step by step, so any change
that moves them without a regeneration fails. The data is `python -m data.synth --videos 8 --seed 0`,
whose mp4s PyAV's libx264 encodes: `av` is pinned in setup.py so a fresh install reproduces them.
"""

from __future__ import annotations

import json
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ASSET = REPO / "tests" / "assets" / "golden_losses.json"
STEPS = 4
STAGES = ("dts", "sft")


def stage_command(stage: str, synth: Path, root: Path) -> list[str]:
    """`python -m train` for one golden stage: 1 process, ZeRO-2, fp32, 4 steps of micro-batch 2, fresh init."""
    return [sys.executable, "-m", "train", f"stage={stage}", "model=tiny", "data=synth", f"data.root={synth}",
            "preset=tiny", "stage.init_from=null", f"output_root={root}", "deepspeed=zero2",
            "deepspeed.precision=fp32", f"loop.max_steps={STEPS}", "loop.micro_batch_size=2",
            "loop.loader_workers=0", "logging.tqdm=false", "checkpoint.export=false"]


def stage_losses(stage_dir: Path) -> list[float]:
    """Per-step training losses (steps 1..n, in order) of a stage's metrics.jsonl."""
    recs = [json.loads(line) for line in (stage_dir / "metrics.jsonl").read_text().splitlines()]
    by_step = {r["step"]: r["loss"] for r in recs if "loss" in r}
    return [by_step[s] for s in sorted(by_step)]


def run_golden(synth: Path, root: Path, env: dict[str, str]) -> dict[str, list[float]]:
    """Run every golden stage on the dataset `synth`, writing under `root`; the per-step losses by stage.

    Raises RuntimeError with the run's stderr tail when a stage exits non-zero.
    """
    out: dict[str, list[float]] = {}
    for stage in STAGES:
        proc = subprocess.run(stage_command(stage, synth, root), cwd=REPO, env=env, capture_output=True,
                              text=True, timeout=600)
        if proc.returncode != 0:
            raise RuntimeError(f"golden stage {stage} failed:\n{proc.stderr[-4000:]}")
        out[stage] = stage_losses(root / stage)
    return out


def main() -> None:
    import av
    import torch

    sys.path.insert(0, str(REPO / "tests"))
    from helpers import SYNTH_ARGS, subprocess_env

    env = subprocess_env(WANDB_MODE="disabled")
    with tempfile.TemporaryDirectory() as tmp:
        synth = Path(tmp) / "synth"
        subprocess.run([sys.executable, "-m", "data.synth", "--out", str(synth), *SYNTH_ARGS], cwd=REPO, env=env,
                       check=True, capture_output=True, timeout=300)
        losses = run_golden(synth, Path(tmp) / "runs", env)
    record = {"steps": STEPS, "losses": losses,
              "made_with": {"torch": torch.__version__, "av": av.__version__, "machine": platform.machine()}}
    ASSET.parent.mkdir(parents=True, exist_ok=True)
    ASSET.write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(record))


if __name__ == "__main__":
    main()
