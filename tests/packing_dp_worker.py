"""One rank of tests/test_packing.py::test_packed_and_unpacked_on_two_ranks_equal_the_single_pass: DeepSpeed
ZeRO-2 or 3 (fp32), 2 ranks x 2 accumulated micro-batches (one of them text only), unpacked and packed, against the
token-mean loss and gradients of all samples in one plain torch pass.

    torchrun --nproc_per_node 2 tests/packing_dp_worker.py OUT.json ZERO_STAGE
"""

from __future__ import annotations

import copy
import json
import sys
from typing import Any

import torch
from test_packing import make_sample  # tests/ is this script's directory

from data.collate import collate
from data.packing import collate_packed
from model import VideoXL2ForCausalLM, build_preset, load_tokenizer
from model.packing import supervised_targets
from train.config import DeepSpeedConfig, LoopConfig, ScheduleConfig
from train.engine import build_engine, deepspeed_config, init_distributed, read_dist_env
from train.objectives import TrainModule
from train.optim import build_optimizer, build_schedule, param_groups, set_trainable
from train.trainer import LoopState, StepLoop

MODULES = ["vision_tower", "dts", "projector", "llm"]
KEYS = ("input_ids", "attention_mask", "labels", "pixel_values", "token_kind", "group_index", "position_ids",
        "segment_ids")


class Capture:
    """The engine, plus the full (all-reduced) gradients read at the accumulation boundary before the step."""

    def __init__(self, engine: Any) -> None:
        self.engine = engine
        self.optimizer = engine.optimizer
        self.grads: dict[str, torch.Tensor] = {}

    def __call__(self, **batch: Any) -> torch.Tensor:
        return self.engine(**batch)

    def backward(self, loss: torch.Tensor) -> None:
        self.engine.backward(loss)

    def step(self) -> None:
        from deepspeed.utils import safe_get_full_grad

        if self.engine.is_gradient_accumulation_boundary():
            self.grads = {n: safe_get_full_grad(p).detach().clone()
                          for n, p in self.engine.module.named_parameters() if p.requires_grad}
        self.engine.step()

    def get_global_grad_norm(self) -> Any:
        return self.engine.get_global_grad_norm()


def main(out_path: str, zero_stage: int) -> None:
    dist = read_dist_env()
    init_distributed(dist)
    cfg, tok = build_preset("tiny"), load_tokenizer("tiny")
    torch.manual_seed(0)
    base = VideoXL2ForCausalLM(cfg)
    # rank 1's first micro-batch is text only: its backward must reach the weights in the order a micro-batch with
    # frames does, or ZeRO-2 sums one weight's gradient with another's across the ranks (model/modeling.py)
    samples = [make_sample(tok, cfg, i, groups) for i, groups in enumerate([2, 1, 3, 1, 0, 2, 1, 2])]
    pad, size = cfg.text_config.pad_token_id, cfg.image_size
    mine = samples[4 * dist.rank: 4 * dist.rank + 4]
    layouts = {  # 2 micro-batches per rank, of unequal token counts
        "unpacked": [collate(mine[:1], pad, size), collate(mine[1:], pad, size)],
        "packed": [collate_packed([mine[:2], mine[2:3]], pad, size, 10**6), collate_packed([mine[3:]], pad, size, 10**6)],
    }
    result: dict[str, Any] = {}
    if dist.rank == 0:  # reference: every sample once, one plain pass, token mean
        ref = TrainModule(copy.deepcopy(base), "lm")
        set_trainable(ref.trainable_modules(), MODULES)
        ref.train()
        batch = collate(samples, pad, size)
        loss = ref(**{k: batch[k] for k in KEYS if k in batch}, reduction="sum") / supervised_targets(batch["labels"])
        loss.backward()
        result["reference_loss"] = float(loss.detach())
        ref_grads = {n: p.grad for n, p in ref.named_parameters() if p.requires_grad}
    for name, batches in layouts.items():
        module = TrainModule(copy.deepcopy(base), "lm")
        set_trainable(module.trainable_modules(), MODULES)
        opt = build_optimizer(param_groups(module.trainable_modules(), {m: 1e-3 for m in MODULES}, 0.0),
                              (0.9, 0.999), 1e-8)
        sched = build_schedule(ScheduleConfig(name="constant", warmup_ratio=0.0), 10)
        ds = DeepSpeedConfig(zero_stage=zero_stage, precision="fp32", zero_optimization={"contiguous_gradients": True})
        engine = build_engine(module, opt, sched, deepspeed_config(ds, LoopConfig(grad_accum=2, grad_clip=0.0)))
        engine.train()
        capture = Capture(engine)
        loop = StepLoop(capture, dist, torch.device(engine.device), grad_accum=2, max_consecutive_nonfinite=3,
                        vision_pad_token_id=cfg.vision_pad_token_id, flops=None, peak_flops_per_device=1.0,
                        token_weighted=True)
        metrics = loop.one_step(iter(batches), LoopState(), {})
        if dist.rank == 0:
            diffs = [float((capture.grads[n] - g).abs().max()) for n, g in ref_grads.items()]
            scale = max(float(g.abs().max()) for g in ref_grads.values())
            worst = max(zip(diffs, ref_grads, strict=True), key=lambda x: x[0])[1]
            result[name] = {"loss": metrics["loss"], "max_grad_diff": max(diffs), "grad_scale": scale, "worst": worst,
                            "params": len(diffs)}
    if dist.rank == 0:
        with open(out_path, "w") as f:
            json.dump(result, f)
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
