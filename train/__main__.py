"""`python -m train stage=<dts|align|sft|long> model=<tiny|videoxl2_7b> data=<synth|...> [overrides]`.

Works unchanged under `torchrun` and `deepspeed --no_local_rank` (rank/world come from the env).
"""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig, OmegaConf

from train.config import ConfigError, parse_run_config
from train.engine import shutdown_distributed
from train.trainer import train_stage


@hydra.main(config_path="../conf", config_name="config", version_base=None)
def main(cfg: DictConfig) -> None:
    """Resolve, type-check and run one stage."""
    raw = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(raw, dict)
    try:
        run = parse_run_config(raw)
        train_stage(run, raw)
    except ConfigError as exc:  # a clean one-line message, no traceback: nothing has run yet
        print(f"config error: {exc}", file=sys.stderr)
        sys.exit(2)
    shutdown_distributed()


if __name__ == "__main__":
    main()
