"""`make demo`: generate data, train the four stages, evaluate, sweep, and write the report.

    python -m demo [key=value ...]     # overrides of demo/demo.yaml (OmegaConf dotted keys)

Steps: data.synth into ``<out>/data`` (and, when set, ``short_data`` into ``<out>/data/short`` and each
``train_data`` entry into ``<out>/data/<name>`` for the stages that name them; when ``long_data`` and
``eval.long_benches`` are set, a long-video set into ``<out>/data/long``; ``data_workers`` sets at a time,
demo/datasets.py); dts -> align -> sft -> long on the tiny preset, each from the
previous stage's export (train.pipeline.run_pipeline, in ``ranks`` processes: demo/stages.py);
every bench on the held-out test split with full attention and with chunked prefill
+ bi-level decoding (and ``eval.long_benches`` on the long set's test split); a needle sweep over longer
generated videos; ``<out>/report.md``, ``<out>/metrics.json`` and PNG plots (demo/report.py,
demo/plots.py); a summary table on stdout.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from demo.datasets import check_sets, data_sets, generate_all
from demo.evaluate import ModeJob, blind_baseline, evaluate_modes, make_sweep_data
from demo.stages import check_stage_configs, train_in_ranks
from train.engine import build_comm_ops

DEMO_CONFIG = Path(__file__).resolve().with_name("demo.yaml")
ENV_DEFAULTS = {"DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1",
                "TOKENIZERS_PARALLELISM": "false"}


# Sections whose keys are data.synth's SynthConfig fields, at this depth of the dotted key (train_data: under
# a set's name, which may be new).
_SYNTH_DEPTH = {"data": 1, "short_data": 1, "long_data": 1, "train_data": 2}
# Sections whose keys must be demo.yaml's; below `eval`, these keys may hold new entries (a new inference mode,
# Hydra overrides of conf/eval/evaluate.yaml, inference knobs).
_FIXED_SECTIONS = ("stages", "sweep", "eval")
_OPEN_EVAL_KEYS = ("modes", "overrides", "inference")


def _check_key(base: DictConfig, arg: str) -> None:
    """Refuse an override whose key the demo would not read: an unknown top-level key, a key below a plain
    setting, an unknown stage, sweep or eval key, or a video-set field that is not a `data.synth.SynthConfig`
    field (also among the keys of a mapping value such as ``short_data={videos: 5}``). Keys under `common`,
    `stages.<stage>`, `eval.overrides` and `eval.inference` are Hydra overrides of conf/, checked by
    `check_stage_configs` and the evaluation's typed config."""
    import dataclasses

    from data.synth import SynthConfig

    key = arg.split("=", 1)[0].strip().lstrip("+")
    parts = key.split(".")
    value = OmegaConf.select(OmegaConf.from_dotlist([arg]), key)
    # every dotted key the override sets: the key itself, or the key joined with each key of a mapping value
    keys = [parts + [str(k)] for k in value] if isinstance(value, DictConfig) and len(value) else [parts]
    for path in keys:
        top = path[0]
        if top not in base:
            raise ValueError(f"override {arg!r}: unknown key {top!r} (demo.yaml has {', '.join(map(str, base))})")
        if len(path) > 1 and not isinstance(base[top], DictConfig):
            raise ValueError(f"override {arg!r}: {top!r} is a setting, not a section")
        depth = _SYNTH_DEPTH.get(top)
        if depth is not None and len(path) > depth:
            fields = {f.name for f in dataclasses.fields(SynthConfig)} - {"out"}
            if path[depth] not in fields or len(path) > depth + 1:
                raise ValueError(f"override {arg!r}: {'.'.join(path[depth:])!r} is not a data.synth field "
                                 f"(known: {', '.join(sorted(fields))})")
        if top in _FIXED_SECTIONS and len(path) > 1 and path[1] not in base[top]:
            raise ValueError(f"override {arg!r}: unknown {top} key {path[1]!r} "
                             f"(demo.yaml has {', '.join(map(str, base[top]))})")
        if top == "eval" and len(path) > 2 and path[1] not in _OPEN_EVAL_KEYS:
            raise ValueError(f"override {arg!r}: eval.{path[1]} has no key {path[2]!r}")


def load_config(argv: list[str]) -> DictConfig:
    """demo/demo.yaml merged with dotted ``key=value`` overrides.

    Raises ValueError naming the argument when one is not ``key=value``, its value does not parse (e.g. an
    unclosed list) or its key is not one the demo reads (see `_check_key`)."""
    cfg = OmegaConf.load(DEMO_CONFIG)
    assert isinstance(cfg, DictConfig)
    for arg in argv:
        if "=" not in arg or arg.startswith("="):
            raise ValueError(f"argument {arg!r} is not a key=value override of {DEMO_CONFIG}")
        try:
            OmegaConf.from_dotlist([arg])
        except Exception as exc:  # omegaconf/yaml parse errors: one line, no traceback
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ValueError(f"cannot parse override {arg!r}: {first}") from None
        _check_key(cfg, arg)
    return OmegaConf.merge(cfg, OmegaConf.from_dotlist(argv))  # type: ignore[return-value]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the whole demo; returns the metrics written to metrics.json (``{}`` for ``--help``). A bad
    override exits with status 2 and one line on stderr."""
    from demo.report import print_summary, write_report

    args = sys.argv[1:] if argv is None else argv
    if any(a in ("-h", "--help") for a in args):
        print(__doc__)
        return {}
    for key, value in ENV_DEFAULTS.items():
        os.environ.setdefault(key, value)
    try:
        cfg = load_config(args)
        for name in ("ranks", "threads_per_rank", "data_workers"):
            if not isinstance(cfg.get(name), int) or cfg.get(name) < 1:
                raise ValueError(f"{name}: must be an integer >= 1, got {cfg.get(name)!r}")
        check_sets(data_sets(cfg, Path(str(cfg.out))))
        check_stage_configs(cfg, Path(str(cfg.out)))
    except ValueError as exc:  # train.config.ConfigError included
        print(f"config error: {exc}", file=sys.stderr)
        sys.exit(2)
    out = Path(str(cfg.out))
    out.mkdir(parents=True, exist_ok=True)
    walls: dict[str, float] = {}
    t0 = time.perf_counter()
    print(f"== data -> {out / 'data'}", flush=True)
    sets = data_sets(cfg, out)
    long_data = out / "data" / "long" if any(d == out / "data" / "long" for _, d in sets) else None
    with ThreadPoolExecutor(max_workers=1) as pool:
        comm_ops = pool.submit(build_comm_ops)  # DeepSpeed's JIT op compiles meanwhile
        manifest = generate_all(sets, int(cfg.get("data_workers", 1)))[0]
        walls["data"] = time.perf_counter() - t0
        t = time.perf_counter()
        comm_ops.result()  # re-raises a failed build
    for stale in ("runs", "eval"):  # a rerun starts its stages fresh (metrics.jsonl files are appended to)
        shutil.rmtree(out / stale, ignore_errors=True)
    stages = train_in_ranks(cfg, out)
    walls["train"] = time.perf_counter() - t
    export = Path(stages[-1]["export"])
    t = time.perf_counter()
    print("\n== evaluation (test splits) and needle sweep over video length", flush=True)
    sweep_dirs = make_sweep_data(cfg.sweep, cfg.data, out / "sweep" / "data")
    threads = max(1, torch.get_num_threads() // max(1, int(cfg.eval.workers)))
    jobs = [ModeJob(export, str(mode), cfg.eval, out / "data", long_data, sweep_dirs, out, threads, bar_position=i)
            for i, mode in enumerate(cfg.eval.modes)]
    done = evaluate_modes(jobs, int(cfg.eval.workers))
    evals = {j.mode: r["main"] for j, r in zip(jobs, done, strict=True)}
    long_evals = {j.mode: r["long"] for j, r in zip(jobs, done, strict=True)} if long_data is not None else None
    sweep = sorted((row for r in done for row in r["sweep"]), key=lambda row: row["frames"])
    blind = blind_baseline(out / "data")
    walls["eval"] = time.perf_counter() - t  # test splits and sweep, the modes at once
    walls["sweep_in_eval"] = max(r["sweep_s"] for r in done)  # of which the sweep (the slowest mode's)
    walls["total"] = time.perf_counter() - t0
    metrics = write_report(out, cfg, manifest, stages, evals, sweep, walls, blind, long_evals)
    print_summary(metrics)
    return metrics
