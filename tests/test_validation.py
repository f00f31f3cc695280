"""Validation loss during training (train/validation.py, `loop.eval_every_steps`).

The in-process tests wrap the stage's module in a plain `nn.Module` standing in for the DeepSpeed engine
(no process group in the test process); the 2-rank test runs a real ZeRO-3 engine under torchrun through
the worker half of this file, and the CLI test trains through `python -m train`.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from torch import nn

from helpers import REPO, free_port, subprocess_env

SFT = ["stage=sft", "model=tiny", "data=synth", "preset=tiny", "stage.init_from=null", "deepspeed.precision=fp32",
       "loop.micro_batch_size=2", "loop.loader_workers=0", "logging.tqdm=false"]


def compose_run(synth: Path, *overrides: str) -> Any:
    from train.config import parse_run_config

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base=None):
        cfg = compose(config_name="config", overrides=[*SFT, f"data.root={synth}", "loop.eval_every_steps=1",
                                                       *overrides])
    raw = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(raw, dict)
    return parse_run_config(raw)


class PlainEngine(nn.Module):
    """What the validator uses of a DeepSpeed engine: `.module`, train/eval and the forward call."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, **inputs: torch.Tensor) -> torch.Tensor:
        return self.module(**inputs)


def build(run: Any) -> tuple[Any, Any, Any]:
    """(train module in training mode, validator, tokenizer) for `run`, weights seeded by run.seed."""
    from train.build import build_train_module, check_run
    from train.engine import DistEnv
    from train.trainer import seed_everything
    from train.validation import build_validator

    mcfg, tok = check_run(run)
    seed_everything(run.seed)
    module = build_train_module(run, mcfg).train_module
    module.train()
    validator = build_validator(run, tok, module.model.config, DistEnv(0, 1, 0), torch.device("cpu"))
    assert validator is not None
    return module, validator, tok


def reference_lm_loss(run: Any, module: Any, tok: Any) -> tuple[float, int, int]:
    """Mean next-token cross-entropy over every supervised token of the val split, one sample at a time
    through the model's full `forward` (logits of every position), summed by hand."""
    from data.loader import build_loader
    from train.build import data_config

    loader = build_loader(data_config(run), tok, module.model.config, split="val", batch_size=1, num_workers=0,
                          seed=run.seed, frames_upbound=run.stage.frames_upbound, max_length=run.stage.max_length,
                          loop=False, tasks=run.stage.data.tasks)
    total, tokens, samples = 0.0, 0, 0
    model = module.model
    was = model.training
    model.eval()
    with torch.no_grad():
        for batch in loader:
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                           pixel_values=batch["pixel_values"]).logits[0, :-1].double()
            targets = batch["labels"][0, 1:]
            keep = targets != -100
            total += float(nn.functional.cross_entropy(logits[keep], targets[keep], reduction="sum"))
            tokens += int(keep.sum())
            samples += 1
    model.train(was)
    return total / tokens, tokens, samples


def test_val_loss_is_the_token_mean_over_the_whole_split(synth: Path) -> None:
    run = compose_run(synth)
    module, validator, tok = build(run)
    rng = torch.get_rng_state()
    first = validator.run(PlainEngine(module))
    assert torch.equal(torch.get_rng_state(), rng)  # the training RNG stream is untouched
    assert module.training  # mode restored
    again = validator.run(PlainEngine(module))
    assert again == first  # deterministic: same weights, same value, bit for bit
    loss, tokens, samples = reference_lm_loss(run, module, tok)
    manifest = json.loads((synth / "manifest.json").read_text())
    assert first.samples == samples == manifest["splits"]["val"]["samples"]  # every val sample, once
    assert first.tokens == tokens and first.loss == pytest.approx(loss, rel=1e-5)
    assert set(first.metrics()) == {"val/loss", "val/tokens", "val/samples"}


def test_cap_tasks_chunked_attention_and_feature_cache(synth: Path) -> None:
    full = compose_run(synth, "stage.trainable=[projector,llm]")
    module, validator, tok = build(full)
    base = validator.run(PlainEngine(module))
    capped = build(compose_run(synth, "stage.trainable=[projector,llm]", "loop.eval_max_batches=1"))[1]
    assert capped.run(PlainEngine(module)).samples == full.loop.micro_batch_size < base.samples
    # the stage's task filter applies to the val split as to the training data
    only = compose_run(synth, "stage.trainable=[projector,llm]", "stage.data.tasks=[caption,mcq]")
    filtered = build(only)[1].run(PlainEngine(module))
    assert filtered.samples == 2 and filtered.loss == pytest.approx(reference_lm_loss(only, module, tok)[0], rel=1e-5)
    # chunked/bi-level training visibility draws nothing at validation: full attention, same value
    chunked_module, chunked, _ = build(compose_run(synth, "stage.trainable=[projector,llm]",
                                                   "+stage.chunked_attention={fraction: 1.0, chunk_groups: 1, "
                                                   "prev_chunks: 0}"))
    assert chunked_module.chunked_attention is not None  # same seeded weights, chunked training visibility
    assert chunked.run(PlainEngine(chunked_module)) == base
    # with a frozen-feature cache the pass uses one of its own: the training cache stays empty
    cached_run = compose_run(synth, "stage.trainable=[projector,llm]", "loop.frozen_feature_cache_mb=16")
    cached_module, cached_validator, _ = build(cached_run)
    values = [cached_validator.run(PlainEngine(cached_module)) for _ in range(2)]
    train_cache = cached_module.feature_cache
    assert train_cache.hits == train_cache.misses == train_cache.bytes == 0
    assert values[0] == values[1] and values[0].loss == pytest.approx(base.loss, rel=1e-5)


def test_dts_stage_scores_its_reconstruction_loss_deterministically(synth: Path) -> None:
    from train.objectives import masked_count

    run = compose_run(synth, "stage=dts")
    module, validator, _ = build(run)
    rng = torch.get_rng_state()
    first = validator.run(PlainEngine(module))
    assert torch.equal(torch.get_rng_state(), rng)
    assert validator.run(PlainEngine(module)) == first and math.isfinite(first.loss) and first.loss > 0
    per_frame = masked_count(module.model.config.interp_grid**2, run.stage.masking.mask_ratio)
    assert first.tokens > 0 and first.tokens % per_frame == 0  # masked encoder tokens of whole frames


@pytest.mark.parametrize(("override", "field"), [
    ("loop.eval_every_steps=0", "loop.eval_every_steps"),
    ("loop.eval_max_batches=0", "loop.eval_max_batches"),
    ("data.val=[]", "data.val"),
    ("stage.data.tasks=[needle]", "data.val"),  # the val split holds no needle sample
    ("data.val=[{shards: nothing.tar}]", "data.val[0].shards"),
])
def test_bad_validation_config_names_the_field(synth: Path, override: str, field: str) -> None:
    from train.build import check_run
    from train.config import ConfigError

    with pytest.raises(ConfigError) as err:
        check_run(compose_run(synth, override))
    assert err.value.field == field


# --------------------------------------------------------------------------- 2 ranks (torchrun)

def worker(synth: Path, out: Path) -> None:
    """Rank half: the val loss of the seeded initial weights under a real 2-rank ZeRO-3 engine."""
    from train import engine as eng
    from train.build import build_train_module, check_run
    from train.optim import build_optimizer, build_schedule, param_groups
    from train.trainer import seed_everything
    from train.validation import build_validator

    run = compose_run(synth, "deepspeed=zero3", "loop.micro_batch_size=1", "stage.data.tasks=[caption,grounding,mcq]")
    dist = eng.read_dist_env()
    mcfg, tok = check_run(run)
    eng.init_distributed(dist)
    seed_everything(run.seed)
    module = build_train_module(run, mcfg).train_module
    groups = param_groups(module.trainable_modules(), run.stage.lr, 0.0)
    engine = eng.build_engine(module, build_optimizer(groups, (0.9, 0.999), 1e-8), build_schedule(run.stage.schedule, 4),
                              eng.deepspeed_config(run.deepspeed, run.loop))
    engine.train()
    validator = build_validator(run, tok, module.model.config, dist, torch.device(engine.device))
    assert validator is not None and validator.lockstep
    results = [validator.run(engine) for _ in range(2)]
    (out / f"rank{dist.rank}.json").write_text(json.dumps([r.metrics() for r in results]))
    engine.destroy()
    eng.shutdown_distributed()


@pytest.mark.slow
def test_two_ranks_give_the_one_rank_value(synth: Path, tmp_path: Path) -> None:
    """3 val samples over 2 ranks of micro-batch 1: rank 1 runs out first and repeats its batch at weight 0."""
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                           str(free_port()), __file__], cwd=REPO, env=subprocess_env(
                              WANDB_MODE="disabled", VAL_SYNTH=str(synth), VAL_OUT=str(tmp_path)),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0] == ranks[1] and ranks[0][0] == ranks[0][1]  # every rank, every call: the same value
    run = compose_run(synth, "loop.micro_batch_size=1", "stage.data.tasks=[caption,grounding,mcq]")
    module, validator, _ = build(run)
    one = validator.run(PlainEngine(module)).metrics()
    assert ranks[0][0]["val/samples"] == one["val/samples"] == 3
    assert ranks[0][0]["val/tokens"] == one["val/tokens"]
    assert ranks[0][0]["val/loss"] == pytest.approx(one["val/loss"], rel=1e-5)


# --------------------------------------------------------------------------- through python -m train

def train_cli(synth: Path, root: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "train", *SFT, f"data.root={synth}", f"output_root={root}", "loop.max_steps=5",
           "checkpoint.every_steps=100", *extra]
    proc = subprocess.run(cmd, cwd=REPO, env=subprocess_env(WANDB_MODE="disabled"), capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


@pytest.mark.slow
def test_logged_every_n_steps_and_at_the_end_without_changing_training(synth: Path, tmp_path: Path) -> None:
    with_val = train_cli(synth, tmp_path / "val", "loop.eval_every_steps=2")
    train_cli(synth, tmp_path / "plain")
    records = [json.loads(line) for line in (tmp_path / "val" / "sft" / "metrics.jsonl").read_text().splitlines()]
    val = [r for r in records if "val/loss" in r]
    assert [r["step"] for r in val] == [2, 4, 5]  # every 2 steps, and the last step
    assert all(r["val/samples"] == 4 and r["val/tokens"] > 0 and "loss" not in r for r in val)
    assert len({r["val/loss"] for r in val}) == 3  # the weights moved between passes
    assert with_val.stderr.count("val/loss") == 3
    plain = [json.loads(line) for line in (tmp_path / "plain" / "sft" / "metrics.jsonl").read_text().splitlines()]
    # the training stream (data order, RNG, weights) is exactly the run without validation
    assert [r["loss"] for r in records if "loss" in r] == [r["loss"] for r in plain if "loss" in r]


if __name__ == "__main__":
    worker(Path(os.environ["VAL_SYNTH"]), Path(os.environ["VAL_OUT"]))
