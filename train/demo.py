"""`make demo`: generate data, train the four stages, evaluate, sweep, and write the report.

    python -m train.demo [key=value ...]     # overrides of conf/demo.yaml (OmegaConf dotted keys)

Steps: data.synth into ``<out>/data`` (and, when ``short_data`` is set, a short-video set into
``<out>/data/short`` for the stages that name it); dts -> align -> sft -> long on the tiny preset, each from the
previous stage's export (train.pipeline.compose_stage + train.trainer.train_stage, in this process,
world size 1); every bench on the held-out test split with full attention and with chunked prefill
+ bi-level decoding; a needle sweep over longer generated videos; ``<out>/report.md``,
``<out>/metrics.json`` and PNG plots (train/report.py); a summary table on stdout.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from train.demo_eval import blind_baseline, evaluate_all, flatten, needle_sweep

REPO = Path(__file__).resolve().parents[1]
ENV_DEFAULTS = {"DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1",
                "TOKENIZERS_PARALLELISM": "false"}


def load_config(argv: list[str]) -> DictConfig:
    """conf/demo.yaml merged with dotted ``key=value`` overrides."""
    cfg = OmegaConf.load(REPO / "conf" / "demo.yaml")
    assert isinstance(cfg, DictConfig)
    return OmegaConf.merge(cfg, OmegaConf.from_dotlist(argv))  # type: ignore[return-value]


def generate_data(settings: DictConfig, out: Path) -> dict[str, Any]:
    """Generate one dataset (SynthConfig fields in `settings`) into `out`; reused when its manifest matches."""
    from data.synth import SynthConfig, generate

    args = OmegaConf.to_container(settings, resolve=True)
    assert isinstance(args, dict)
    if "tasks" in args:
        args["tasks"] = tuple(args["tasks"])
    synth = SynthConfig(out=str(out), **args)
    manifest_path = out / "manifest.json"
    if manifest_path.is_file():
        manifest = json.loads(manifest_path.read_text())
        wanted = {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(synth).items() if k != "out"}
        if manifest.get("config") == wanted:
            return manifest
        shutil.rmtree(out)
    return generate(synth)


def stage_overrides(cfg: DictConfig, stage: str, out: Path) -> list[str]:
    """Hydra overrides of conf/config.yaml for one stage of the demo."""
    base = [f"model={cfg.model}", "data=synth", f"data.root={out / 'data'}", f"output_root={out / 'runs'}",
            f"seed={cfg.seed}", "preset=none", *[str(g) for g in cfg.groups]]
    # `++` sets a key whether or not the recipe has it (e.g. an lr for a module the recipe does not train);
    # the typed RunConfig still rejects unknown keys.
    return base + [f"++{o}" for o in flatten(cfg.common) + flatten(cfg.stages[stage])]


def train_stages(cfg: DictConfig, out: Path) -> list[dict[str, Any]]:
    """Train every stage in order (train.pipeline.run_pipeline); returns one summary per stage."""
    from train.pipeline import run_pipeline

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
                     "batch": run.loop.micro_batch_size * run.loop.grad_accum,
                     "first_loss": result.losses[0] if result.losses else None,
                     "final_loss": result.losses[-1] if result.losses else None,
                     "wall_s": outcomes[stage].wall_s, "output_dir": run.output_dir,
                     "export": outcomes[stage].export})
    return rows


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the whole demo; returns the metrics written to metrics.json."""
    from train.report import print_summary, write_report

    for key, value in ENV_DEFAULTS.items():
        os.environ.setdefault(key, value)
    cfg = load_config(sys.argv[1:] if argv is None else argv)
    out = Path(str(cfg.out))
    out.mkdir(parents=True, exist_ok=True)
    walls: dict[str, float] = {}
    t0 = time.perf_counter()
    print(f"== data -> {out / 'data'}", flush=True)
    manifest = generate_data(cfg.data, out / "data")
    if cfg.get("short_data"):  # short videos for the stages before `long`: `data` with these fields replaced
        generate_data(OmegaConf.merge(cfg.data, cfg.short_data), out / "data" / "short")
    walls["data"] = time.perf_counter() - t0
    t = time.perf_counter()
    for stale in ("runs", "eval"):  # a rerun starts its stages fresh (metrics.jsonl files are appended to)
        shutil.rmtree(out / stale, ignore_errors=True)
    stages = train_stages(cfg, out)
    walls["train"] = time.perf_counter() - t
    export = Path(stages[-1]["export"])
    t = time.perf_counter()
    print("\n== evaluation (test split)", flush=True)
    evals = evaluate_all(export, out / "data", cfg.eval, out / "eval")
    blind = blind_baseline(out / "data")
    walls["eval"] = time.perf_counter() - t
    t = time.perf_counter()
    print("== needle sweep over video length", flush=True)
    sweep = needle_sweep(export, cfg.sweep, cfg.eval, cfg.data, out / "sweep")
    walls["sweep"] = time.perf_counter() - t
    walls["total"] = time.perf_counter() - t0
    metrics = write_report(out, cfg, manifest, stages, evals, sweep, walls, blind)
    print_summary(metrics)
    return metrics


if __name__ == "__main__":
    main()
