"""Non-finite losses under ZeRO-3 with 2 processes: a NaN on one rank drops that micro-batch on every
rank (same counters, finite weights, training goes on); a run of them stops with a clear error.

The worker half of this file runs under torchrun (`python -m torch.distributed.run <this file>`).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def worker(out_dir: Path, nan_calls: set[int], steps: int) -> None:
    import torch

    from model import VideoXL2ForCausalLM, build_preset
    from train import engine as eng
    from train import optim
    from train.config import DeepSpeedConfig, LoopConfig, ScheduleConfig
    from train.objectives import TrainModule
    from train.trainer import LoopState, NonFiniteLossError, StepLoop

    dist = eng.read_dist_env()
    eng.init_distributed(dist)
    torch.manual_seed(0)

    class NanOnRank1(TrainModule):
        calls = 0

        def forward(self, **kw: torch.Tensor) -> torch.Tensor:
            loss = super().forward(**kw)
            NanOnRank1.calls += 1
            return loss * float("nan") if dist.rank == 1 and NanOnRank1.calls in nan_calls else loss

    cfg = build_preset("tiny")
    module = NanOnRank1(VideoXL2ForCausalLM(cfg), "lm")
    names = ["vision_tower", "dts", "projector", "llm"]
    optim.set_trainable(module.trainable_modules(), names)
    groups = optim.param_groups(module.trainable_modules(), {n: 1e-3 for n in names}, 0.0)
    engine = eng.build_engine(module, optim.build_optimizer(groups, (0.9, 0.999), 1e-8),
                              optim.build_schedule(ScheduleConfig(), steps),
                              eng.deepspeed_config(DeepSpeedConfig(zero_stage=3, precision="bf16"),
                                                   LoopConfig(grad_accum=2)))
    engine.train()
    g = torch.Generator().manual_seed(dist.rank)

    def batches():
        while True:
            ids = torch.randint(10, 1000, (1, 30), generator=g)
            ids[0, 5:5 + 2 * cfg.tokens_per_group] = cfg.vision_pad_token_id
            yield {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone(),
                   "pixel_values": torch.randn(8, 3, cfg.image_size, cfg.image_size, generator=g)}

    loop = StepLoop(engine, dist, torch.device("cpu"), 2, 3, cfg.vision_pad_token_id, None, 1.0)
    state, losses, error = LoopState(), [], None
    it = batches()
    try:
        for _ in range(steps):
            losses.append(loop.one_step(it, state, {})["loss"])
    except NonFiniteLossError as exc:
        error = str(exc)
    (out_dir / f"rank{dist.rank}.json").write_text(json.dumps(
        {"losses": losses, "state": state.to_dict(), "error": error}))
    eng.shutdown_distributed()


def launch(tmp_path: Path, nan_calls: str, steps: int) -> dict[int, dict]:
    tmp_path.mkdir(parents=True, exist_ok=True)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1", "NONFINITE_OUT": str(tmp_path),
           "NONFINITE_CALLS": nan_calls, "NONFINITE_STEPS": str(steps), "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                           "--master_port", str(port), __file__], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return {r: json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)}


@pytest.mark.slow
def test_nan_on_one_rank_is_skipped_everywhere_then_limit_stops(tmp_path: Path) -> None:
    out = launch(tmp_path / "skip", "2,3", steps=3)
    for r in (0, 1):
        assert out[r]["error"] is None
        assert out[r]["state"] == {**out[0]["state"]}  # ranks agree
        assert out[r]["state"]["nonfinite_total"] == 2 and out[r]["state"]["step"] == 3
        assert out[r]["state"]["micro_batches"] == 3 * 2 + 2
    losses = out[0]["losses"]
    assert all(x == x for x in losses) and losses == out[1]["losses"]
    stop = launch(tmp_path / "stop", "2,3,4,5,6", steps=3)
    for r in (0, 1):
        assert stop[r]["error"] is not None and "max_consecutive_nonfinite=3" in stop[r]["error"]
        assert stop[r]["state"]["nonfinite_total"] == 3


if __name__ == "__main__":
    worker(Path(os.environ["NONFINITE_OUT"]),
           {int(x) for x in os.environ["NONFINITE_CALLS"].split(",") if x}, int(os.environ["NONFINITE_STEPS"]))
