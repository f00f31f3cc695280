"""Measure one real CPU training step's peak memory and print it next to train.plan's figure (JSON).

    python tests/plan_measure.py OVERRIDE...   (Hydra overrides of `python -m train`, e.g. model=tiny)

The process builds the batch and runs a small warm-up step first, records its resident set size, then builds the stage's module and
DeepSpeed engine (world size 1) and runs 2 optimizer steps; the measured figure is the high-water mark of
the resident set (getrusage ru_maxrss) minus that baseline: everything the model states and activations
took, whatever allocator (torch's CPU allocator returns large blocks to the OS, so the mark is their peak).
"""

from __future__ import annotations

import ctypes
import gc
import json
import os
import resource
import sys

import psutil
import torch


def main(overrides: list[str]) -> None:
    from train.bench import make_batch
    from train.build import build_train_module
    from train.engine import build_engine, deepspeed_config, init_distributed, read_dist_env
    from train.optim import build_optimizer, build_schedule, param_groups
    from train.plan import SUPERVISED_TOKENS, TEXT_TOKENS, compose_run, make_plan

    run, model_cfg, ts = compose_run(overrides)
    plan = make_plan(run, model_cfg, 1, 1000.0, ts)
    init_distributed(read_dist_env())
    frames = run.stage.frames_upbound
    batch = make_batch(model_cfg, frames, TEXT_TOKENS + (frames // 4) * ts, seed=0)
    labels = batch["labels"]
    keep = (labels != -100).nonzero()[:, 1][-SUPERVISED_TOKENS:]
    masked = torch.full_like(labels, -100)
    masked[0, keep] = labels[0, keep]
    batch["labels"] = masked
    # warm-up: one forward/backward of a 4-frame batch through a throwaway copy initialises what the first
    # compute allocates once (thread pools, kernel workspaces); its freed heap goes back to the OS
    warm = build_train_module(run, model_cfg).train_module.train()
    warm(**make_batch(model_cfg, 4, TEXT_TOKENS, seed=1)).backward()
    del warm
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    base = psutil.Process().memory_info().rss
    parts = build_train_module(run, model_cfg)
    module = parts.train_module
    groups = param_groups({n: module.trainable_modules()[n] for n in run.stage.trainable}, run.stage.lr, 0.0)
    opt = build_optimizer(groups, (0.9, 0.999), 1e-8)
    engine = build_engine(module, opt, build_schedule(run.stage.schedule, 10), deepspeed_config(run.deepspeed, run.loop))
    engine.train()
    after_setup = psutil.Process().memory_info().rss
    for _ in range(2):
        loss = engine(**batch)
        engine.backward(loss)
        engine.step()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"measured": peak - base, "planned": plan.total, "states": plan.states.total,
                      "activations": plan.acts.total, "tokens": int(batch["input_ids"].shape[1]),
                      "setup": after_setup - base}))


if __name__ == "__main__":
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    main(sys.argv[1:])
