"""The demo's training: the four stages on this machine, in one process or in `ranks` processes.

    python -m torch.distributed.run --standalone --nproc_per_node=R -m demo.stages <demo_config.yaml>

is what :func:`train_in_ranks` starts when ``ranks > 1`` (every rank trains its share of each global
batch; rank 0 writes ``<out>/runs/stages.json``). On a few CPU cores, R single-threaded ranks beat one
process with R threads: each rank's small matrix products run on a core of their own.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from demo.overrides import flatten

STAGES_FILE = "stages.json"  # under <out>/runs: one summary per trained stage


def stage_overrides(cfg: DictConfig, stage: str, out: Path) -> list[str]:
    """Hydra overrides of conf/config.yaml for one stage of the demo."""
    base = [f"model={cfg.model}", "data=synth", f"data.root={out / 'data'}", f"output_root={out / 'runs'}",
            f"seed={cfg.seed}", "preset=none", *[str(g) for g in cfg.groups]]
    # `++` sets a key whether or not the recipe has it (e.g. an lr for a module the recipe does not train);
    # the typed RunConfig still rejects unknown keys.
    return base + [f"++{o}" for o in flatten(cfg.common) + flatten(cfg.stages[stage])]


def check_stage_configs(cfg: DictConfig, out: Path) -> None:
    """Compose and check every stage's run config as training will (`train.pipeline.validate_stages`)
    before any data exists, so a misspelt key or bad value under `common` or
    `stages.<stage>` fails at once. Paths (shards, the previous stage's export) are not checked: they are
    written later. Raises ConfigError naming the field."""
    from train.pipeline import validate_stages

    stages = [str(s) for s in cfg.stages]
    validate_stages(stages, [], {s: stage_overrides(cfg, s, out) for s in stages}, check_paths=False)


def train_stages(cfg: DictConfig, out: Path) -> list[dict[str, Any]]:
    """Train every stage in order in this process's world (train.pipeline.run_pipeline); one summary per stage."""
    from train.engine import read_dist_env
    from train.pipeline import run_pipeline

    world_size = read_dist_env().world_size
    stages = [str(s) for s in cfg.stages]
    per_stage = {s: stage_overrides(cfg, s, out) for s in stages}
    outcomes = run_pipeline(stages, [], per_stage)
    rows: list[dict[str, Any]] = []
    for stage in stages:
        if stage not in outcomes or outcomes[stage].result.stopped_by_signal:
            raise SystemExit(f"stage {stage} stopped by a signal")
        run, result = outcomes[stage].run, outcomes[stage].result
        rows.append({"stage": stage, "steps": result.state.step, "samples": result.state.samples,
                     "trainable": list(run.stage.trainable),
                     "lr": {k: v for k, v in run.stage.lr.items() if k in run.stage.trainable},
                     "frames_upbound": run.stage.frames_upbound, "tasks": run.stage.data.tasks,
                     "batch": run.loop.micro_batch_size * run.loop.grad_accum * world_size,
                     "packed_tokens": run.loop.packing.max_tokens if run.loop.packing is not None else None,
                     "ranks": world_size,
                     "first_loss": result.losses[0] if result.losses else None,
                     "final_loss": result.losses[-1] if result.losses else None,
                     "wall_s": outcomes[stage].wall_s, "output_dir": run.output_dir,
                     "export": outcomes[stage].export})
    return rows


def train_in_ranks(cfg: DictConfig, out: Path) -> list[dict[str, Any]]:
    """Train the stages with ``cfg.ranks`` processes of ``cfg.threads_per_rank`` torch threads each
    (``ranks: 1`` trains in this process, with its thread count); returns one summary per stage."""
    ranks, threads = int(cfg.ranks), int(cfg.threads_per_rank)
    if ranks < 1 or threads < 1:
        raise ValueError(f"ranks and threads_per_rank: must be >= 1, got {ranks} and {threads}")
    if ranks == 1:
        return train_stages(cfg, out)
    config_path = out / "demo_config.yaml"
    OmegaConf.save(cfg, config_path, resolve=True)
    rows_path = out / "runs" / STAGES_FILE
    rows_path.unlink(missing_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={ranks}",
           "-m", "demo.stages", str(config_path)]
    proc = subprocess.run(cmd, env=env, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"training ranks failed (exit status {proc.returncode}); command: {' '.join(cmd)}")
    return json.loads(rows_path.read_text())


def main(argv: list[str] | None = None) -> None:
    """Rank entry point: train the stages of the demo config at argv[0]; rank 0 writes the summaries."""
    from train.engine import read_dist_env, shutdown_distributed

    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        raise SystemExit("usage: python -m demo.stages <demo_config.yaml>")
    cfg = OmegaConf.load(args[0])
    assert isinstance(cfg, DictConfig)
    out = Path(str(cfg.out))
    rows = train_stages(cfg, out)
    if read_dist_env().is_main:  # read by the launching process once every rank has exited
        (out / "runs" / STAGES_FILE).write_text(json.dumps(rows, indent=1))
    shutdown_distributed()


if __name__ == "__main__":
    main()
