"""`python -m train stage=<dts|align|sft|long> model=<tiny|videoxl2_7b> data=<synth|...> [overrides]`.

Works unchanged under `torchrun` and `deepspeed --no_local_rank` (rank/world come from the env).
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig, OmegaConf

from train.config import parse_run_config
from train.trainer import train_stage


@hydra.main(config_path="../conf", config_name="config", version_base=None)
def main(cfg: DictConfig) -> None:
    """Resolve, type-check and run one stage."""
    raw = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(raw, dict)
    run = parse_run_config(raw)
    train_stage(run, raw)


if __name__ == "__main__":
    main()
