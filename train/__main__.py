"""`python -m train stage=<dts|align|sft|long> model=<tiny|videoxl2_7b> data=<synth|...> [overrides]`.

Works unchanged under `torchrun` and `deepspeed --no_local_rank` (rank/world come from the env).
A Hydra multirun (`python -m train -m ... stage.lr.dts=1e-4,3e-4`) trains its jobs one after the other
in this process: the process group is created by the first job and left up for the next ones (each
job builds and releases its own DeepSpeed engine), and is torn down once, after the last job. Job n
writes under `hydra.sweep.dir/hydra.sweep.subdir` (conf/config.yaml: `<output_dir>/<n>`), so the jobs
of a sweep never share checkpoints or exports.
"""

from __future__ import annotations

import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from train.config import ConfigError, parse_run_config
from train.engine import shutdown_distributed
from train.trainer import train_stage


def job_output_dir(raw: dict, hydra_cfg: DictConfig | None) -> str:
    """Where this job writes: `output_dir`, or in a multirun the job's own directory
    (`hydra.runtime.output_dir`, i.e. `hydra.sweep.dir/hydra.sweep.subdir`)."""
    if hydra_cfg is not None and hydra_cfg.mode == RunMode.MULTIRUN:
        return str(hydra_cfg.runtime.output_dir)
    return str(raw["output_dir"])


@hydra.main(config_path="../conf", config_name="config", version_base=None)
def main(cfg: DictConfig) -> None:
    """Resolve, type-check and run one stage (one job of a multirun)."""
    raw = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(raw, dict)
    raw["output_dir"] = job_output_dir(raw, HydraConfig.get())
    try:
        run = parse_run_config(raw)
        train_stage(run, raw)
    except ConfigError as exc:  # a clean one-line message, no traceback: nothing has run yet
        print(f"config error: {exc}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
    shutdown_distributed()  # once, after every job of a multirun
