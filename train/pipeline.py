"""Run the stages in order, each starting from the previous stage's export.

`python -m train.pipeline model=tiny data=synth preset=tiny [--stages dts,align,sft,long] [overrides]`
The overrides apply to every stage; stage n+1 gets `stage.init_from=<stage n output_dir>/export`.
Works under torchrun / deepspeed launchers like `python -m train`.
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from train.build import check_run, compose_config
from train.config import STAGES, ConfigError, RunConfig, parse_run_config
from train.engine import shutdown_distributed
from train.trainer import LoopResult, train_stage


def compose_stage(stage: str, overrides: list[str], init_from: str | None) -> tuple[RunConfig, dict]:
    """Compose conf/config.yaml for `stage` with `overrides` (and init_from when chaining).

    Raises ConfigError("overrides", ...) with Hydra's first line for an override it cannot apply (an unknown
    key or group option), and ConfigError naming the field for a value the typed RunConfig refuses."""
    extra = [f"stage={stage}", *overrides]
    if init_from is not None:
        extra.append(f"stage.init_from={init_from}")
    raw = compose_config(extra, context=f"stage {stage}: ")
    return parse_run_config(raw), raw


def validate_stages(stages: list[str], overrides: list[str],
                    stage_overrides: Mapping[str, Sequence[str]] | None = None, check_paths: bool = True) -> None:
    """Compose and validate every stage before any trains (raises ConfigError naming the field).

    The first stage gets every check `python -m train` makes; a later stage starts from its
    predecessor's export, which does not exist yet, so its paths are not checked (the model group's
    config stands in for the export's) until it starts. ``check_paths=False`` checks no stage's paths
    (for a caller that writes the data afterwards).
    """
    previous: str | None = None
    for s in stages:
        run, _ = compose_stage(s, [*overrides, *(stage_overrides or {}).get(s, ())], previous)
        check_run(run, check_paths=check_paths and previous is None)
        previous = str(Path(run.output_dir) / "export")


@dataclass
class StageOutcome:
    """One trained stage: its resolved config, loop result, wall time and export directory."""

    run: RunConfig
    result: LoopResult
    wall_s: float
    export: str


def run_pipeline(stages: list[str], overrides: list[str],
                 stage_overrides: Mapping[str, Sequence[str]] | None = None) -> dict[str, StageOutcome]:
    """Train `stages` in order, each from the previous stage's export; `overrides` apply to every
    stage, `stage_overrides[stage]` to that stage only (after `overrides`)."""
    for s in stages:
        if s not in STAGES:
            raise ValueError(f"--stages: unknown stage {s!r} (known: {', '.join(STAGES)})")
    validate_stages(stages, overrides, stage_overrides)
    outcomes: dict[str, StageOutcome] = {}
    previous: str | None = None
    for s in stages:
        run, raw = compose_stage(s, [*overrides, *(stage_overrides or {}).get(s, ())], previous)
        start = time.perf_counter()
        result = train_stage(run, raw)
        previous = str(Path(run.output_dir) / "export")
        outcomes[s] = StageOutcome(run, result, time.perf_counter() - start, previous)
        if result.stopped_by_signal:
            break
        gc.collect()
    return outcomes


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Train the stages in order (Hydra overrides follow).")
    parser.add_argument("--stages", default=",".join(STAGES), help="comma-separated, in order")
    args, overrides = parser.parse_known_args(argv)
    stages = [s for s in args.stages.split(",") if s]
    unknown = [s for s in stages if s not in STAGES]
    if unknown or not stages:
        parser.error(f"--stages: unknown stage {unknown[0]!r} (known: {', '.join(STAGES)})" if unknown
                     else "--stages: no stage given")
    try:
        run_pipeline(stages, overrides)
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        sys.exit(2)
    shutdown_distributed()


if __name__ == "__main__":
    main()
