"""The training loop of one stage: DeepSpeed steps, non-finite skipping, checkpoints, signals, logs.

`train_stage(run, raw_config)` is what `python -m train` calls: it validates everything before any
compute, builds the model (calibrating a fresh projector when the stage asks, train/calibrate.py),
the engine and the loader (train/build.py, train/engine.py), resumes if asked, runs `StepLoop`, and
exports the model in HF format (train/export.py).
"""

from __future__ import annotations

import random
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from data.faults import metric_name
from model.packing import supervised_targets
from train import checkpoint as ckpt
from train import reshard
from train.config import RunConfig
from train.engine import DistEnv, all_reduce_max, all_reduce_sum
from train.feature_cache import FrozenFeatureCache
from train.logging_utils import FlopModel, MetricsLogger
from train.signals import StopRequest


class NonFiniteLossError(RuntimeError):
    """Raised after `loop.max_consecutive_nonfinite` non-finite losses in a row."""


@dataclass
class LoopState:
    """Counters saved with every checkpoint."""

    step: int = 0
    micro_batches: int = 0
    samples: int = 0
    tokens: int = 0
    nonfinite_total: int = 0
    oversize_samples: int = 0  # samples longer than loop.packing.max_tokens, each trained alone

    def to_dict(self) -> dict[str, int]:
        return dict(self.__dict__)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LoopState:
        return cls(**{k: int(d[k]) for k in cls().__dict__ if k in d})


@dataclass
class LoopResult:
    """What a finished (or interrupted) stage reports."""

    state: LoopState
    losses: list[float] = field(default_factory=list)
    stopped_by_signal: bool = False


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _batch_inputs(batch: dict[str, Any], dev: torch.device) -> dict[str, Any]:
    """The module's inputs: ids, mask, labels, frames, and the token layout when the batch has it, on `dev`;
    the samples' task names (a list, in the batch's sample order) when the batch has them."""
    keys = ("input_ids", "attention_mask", "labels", "pixel_values", "token_kind", "group_index", "position_ids",
            "segment_ids")
    inputs: dict[str, Any] = {k: batch[k].to(dev, non_blocking=True) for k in keys if k in batch}
    if "tasks" in batch:
        inputs["tasks"] = list(batch["tasks"])
    return inputs


class StepLoop:
    """Optimizer steps over a batch iterator with a DeepSpeed engine (generic in the module).

    One optimizer step = `grad_accum` finite micro-batches. A micro-batch whose loss is non-finite
    on any rank is dropped on all ranks (no backward, no engine step) and counted; the
    `max_consecutive_nonfinite`-th in a row raises `NonFiniteLossError`. A batch iterator that runs
    dry raises `RuntimeError` naming the rank (the loader loops, so this means it broke).

    `token_weighted` (the lm loss): the step's loss is the mean over every supervised token of its
    micro-batches on all ranks, whatever their split into micro-batches, rows or ranks (so packed and
    unpacked batches give the same loss and gradients). The step's micro-batches are fetched first, their
    supervised targets summed over ranks (N); each micro-batch's summed loss is scaled by
    grad_accum * world_size / N (DeepSpeed divides by both). A micro-batch that replaces a non-finite one
    keeps that N.
    """

    def __init__(self, engine: Any, dist: DistEnv, dev: torch.device, grad_accum: int,
                 max_consecutive_nonfinite: int, vision_pad_token_id: int | None,
                 flops: FlopModel | None, peak_flops_per_device: float,
                 skip_reasons: tuple[str, ...] = (), feature_cache: FrozenFeatureCache | None = None,
                 sequence_parallel: int = 1, token_weighted: bool = False) -> None:
        self.engine = engine
        self.sequence_parallel = sequence_parallel  # ranks that see the same batch (counted once in metrics)
        self.token_weighted = token_weighted
        self.feature_cache = feature_cache  # the module's memo of frozen features, reported in the metrics
        self.dist = dist
        self.dev = dev
        self.grad_accum = grad_accum
        self.max_nonfinite = max_consecutive_nonfinite
        self.vision_pad = vision_pad_token_id
        self.flops = flops
        self.peak = peak_flops_per_device
        self.consecutive_nonfinite = 0
        self.skip_reasons: tuple[str, ...] = skip_reasons

    def _group_lrs(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for group in self.engine.optimizer.param_groups:
            module = str(group.get("name", "group")).split("/")[0]
            out.setdefault(f"lr/{module}", float(group["lr"]))
        return out

    def one_step(self, batches: Iterator[dict[str, Any]], state: LoopState,
                 skipped: Mapping[str, int]) -> dict[str, float]:
        """Run micro-batches until one optimizer step is taken; return its metrics."""
        t0 = time.perf_counter()
        lrs = self._group_lrs()  # the rates this step applies
        done = 0
        loss_sum = 0.0
        local = {"samples": 0.0, "tokens": 0.0, "visual_tokens": 0.0, "frames": 0.0, "seq_sq": 0.0,
                 "slots": 0.0, "oversize": 0.0}
        ahead: list[dict[str, Any]] = []
        scale = 1.0
        if self.token_weighted:
            ahead = [self._fetch(batches, state) for _ in range(self.grad_accum)]
            targets = sum(supervised_targets(b["labels"]) for b in ahead)
            (total,) = all_reduce_sum([float(targets)], self.dev)
            scale = self.grad_accum * self.dist.world_size / max(total, 1.0)
        while done < self.grad_accum:
            batch = ahead.pop(0) if ahead else self._fetch(batches, state)
            inputs = _batch_inputs(batch, self.dev)
            if self.token_weighted:
                loss = self.engine(**inputs, reduction="sum") * scale
            else:
                loss = self.engine(**inputs)
            bad = all_reduce_max(0.0 if bool(torch.isfinite(loss.detach()).all()) else 1.0, self.dev)
            state.micro_batches += 1
            if bad > 0:
                state.nonfinite_total += 1
                self.consecutive_nonfinite += 1
                if self.consecutive_nonfinite >= self.max_nonfinite:
                    raise NonFiniteLossError(
                        f"{self.consecutive_nonfinite} consecutive non-finite losses (limit "
                        f"loop.max_consecutive_nonfinite={self.max_nonfinite}) at step {state.step}")
                continue
            self.consecutive_nonfinite = 0
            self.engine.backward(loss)
            self.engine.step()
            done += 1
            loss_sum += float(loss.detach().float())
            ids, mask = batch["input_ids"], batch["attention_mask"]
            lengths = batch.get("sample_lengths", mask.sum(dim=1)).double()  # per sample, packed or not
            local["samples"] += lengths.numel()
            local["tokens"] += float(lengths.sum())
            local["slots"] += float(ids.numel())
            local["oversize"] += float(batch.get("oversize", 0))
            local["seq_sq"] += float((lengths**2).sum())
            local["frames"] += float(batch["pixel_values"].shape[0])
            if self.vision_pad is not None:
                local["visual_tokens"] += float((ids == self.vision_pad).sum())
        keys = list(local)
        *sums, loss_total = all_reduce_sum([local[k] for k in keys] + [loss_sum], self.dev)
        reduced = {k: v / self.sequence_parallel for k, v in zip(keys, sums, strict=True)}
        loss_mean = loss_total / (self.grad_accum * self.dist.world_size)
        reasons = sorted(set(self.skip_reasons) | set(skipped))  # same keys, same order on every rank
        skipped_total = [c / self.sequence_parallel for c in
                         all_reduce_sum([float(skipped.get(r, 0)) for r in reasons], self.dev)] if reasons else []
        dt = time.perf_counter() - t0
        state.step += 1
        state.samples += int(reduced["samples"])
        state.tokens += int(reduced["tokens"])
        state.oversize_samples += int(reduced["oversize"])
        metrics: dict[str, float] = {"loss": loss_mean, "step_time_s": dt,
                                     "tokens_per_s": reduced["tokens"] / dt,
                                     "padding_fraction": 1.0 - reduced["tokens"] / max(1.0, reduced["slots"]),
                                     "oversize_samples": float(state.oversize_samples),
                                     "samples_per_s": reduced["samples"] / dt,
                                     "visual_tokens_per_sample": reduced["visual_tokens"] / max(1.0, reduced["samples"]),
                                     "nonfinite_total": float(state.nonfinite_total)}
        gnorm = self.engine.get_global_grad_norm()
        if gnorm is not None:
            metrics["grad_norm"] = float(gnorm)
        metrics.update(lrs)
        for reason, count in zip(reasons, skipped_total, strict=True):
            metrics[metric_name(reason)] = count  # skipped/<reason>, or decoder/<name> (samples it read)
        cache = self.feature_cache
        if cache is not None:  # this rank's memo of frozen vision + DTS outputs
            metrics["feature_cache/hit_rate"] = cache.hits / max(1, cache.hits + cache.misses)
            metrics["feature_cache/mib"] = cache.bytes / 2**20
        if self.flops is not None:
            step_flops = self.flops.step_flops(reduced["frames"], reduced["tokens"], reduced["seq_sq"])
            metrics["flops"] = step_flops
            metrics["mfu"] = step_flops / dt / (self.peak * self.dist.world_size)
        return metrics

    def _fetch(self, batches: Iterator[dict[str, Any]], state: LoopState) -> dict[str, Any]:
        """The next micro-batch; a dry iterator raises naming the rank."""
        with torch.random.fork_rng(devices=[]):  # data fetching never shifts the training RNG
            try:  # (a DataLoader draws its base seed when it starts)
                return next(batches)
            except StopIteration:
                raise RuntimeError(
                    f"rank {self.dist.rank}: the train split's batch iterator ended at step {state.step} "
                    f"(micro-batch {state.micro_batches}); the other ranks would wait forever in "
                    "the next all-reduce") from None


def _run_name(stage: str, out_dir: Path) -> str:
    return stage if out_dir.name == stage else f"{stage}-{out_dir.name}"


def _stop_agreed(stop: StopRequest, dev: torch.device) -> bool:
    return all_reduce_max(1.0 if stop.requested else 0.0, dev) > 0


def _calibrate_projector(run: RunConfig, module: Any, tokenizer: Any, model_cfg: Any,
                         dist: DistEnv) -> dict[str, float]:
    """Standardise the fresh projector's output on this stage's own first training batches
    (a separate, non-looping loader: the training loader's position is untouched)."""
    from deepspeed.accelerator import get_accelerator

    from train.calibrate import calibrate_projector

    device = torch.device(get_accelerator().current_device_name())
    module.to(device)
    cal = run.stage.calibrate_projector
    loader = _train_loader(run, tokenizer, model_cfg, dist, num_workers=0, loop=False)
    return calibrate_projector(module.model, iter(loader), cal.batches, cal.target_std, device)


def _train_loader(run: RunConfig, tokenizer: Any, model_cfg: Any, dist: DistEnv, *, num_workers: int,
                  loop: bool, data_rank: tuple[int, int] | None = None) -> Any:
    """This rank's loader of the stage's training data (its sources, tasks, frames and length bounds);
    `data_rank` = (rank, world) among the ranks that read distinct data (default: all ranks)."""
    from data.loader import build_loader
    from train import build

    rank, world = data_rank if data_rank is not None else (dist.rank, dist.world_size)
    return build_loader(build.data_config(run), tokenizer, model_cfg, split="train",
                        batch_size=run.loop.micro_batch_size, num_workers=num_workers, rank=rank,
                        world_size=world, seed=run.seed, frames_upbound=run.stage.frames_upbound,
                        fps_upbound=run.stage.fps_upbound, max_length=run.stage.max_length, loop=loop,
                        tasks=run.stage.data.tasks,
                        packing=run.loop.packing.max_tokens if run.loop.packing is not None else None,
                        frame_cache_bytes=run.loop.decoded_frame_cache_mb * 2**20)


def train_stage(run: RunConfig, raw_config: dict[str, Any]) -> LoopResult:
    """Run one stage end to end; see the module docstring."""
    from train import build, export
    from train.engine import build_engine, deepspeed_config, init_distributed, read_dist_env
    from train.logging_utils import flop_model_for, resolve_wandb_mode
    from train.lora import parameter_counts
    from train.optim import build_optimizer, build_schedule, param_groups, restore_schedule
    from train.sequence_parallel import data_parallel, install, new_group
    from train.validation import build_validator

    dist = read_dist_env()
    model_cfg, tokenizer = build.check_run(run)  # all config errors surface here, before any compute
    # init_from's config.json defines the model; a `model` group that differs is reported, not applied
    unused_model_fields = build.model_group_differences(run, model_cfg) if run.stage.init_from else []
    out_dir = Path(run.output_dir)
    ckpt_root = out_dir / "checkpoints"
    resume_path = ckpt.resolve_resume(run.checkpoint.resume, ckpt_root)
    earlier = None  # a fresh run must not mix its checkpoints with an earlier run's in the same dir
    if run.checkpoint.resume is None and dist.is_main and ckpt.list_complete(ckpt_root):
        earlier = ckpt.set_aside(ckpt_root)
    sp_degree = run.loop.sequence_parallel
    dp_rank, dp_world = data_parallel(dist.rank, dist.world_size, sp_degree)  # the loader's rank and world
    steps_total = build.total_steps(run, dp_world)
    layout = reshard.Layout(world_size=dist.world_size, data_parallel=dp_world)
    other_world = resume_path is not None and reshard.needs_reshard(reshard.saved_layout(resume_path), layout)

    init_distributed(dist)  # also selects this rank's device (LOCAL_RANK)
    if other_world:
        reshard.prepare(resume_path, dist.rank, dist.world_size)  # type: ignore[arg-type]
    seed_everything(run.seed)  # identical initial weights on every rank
    parts = build.build_train_module(run, model_cfg)
    module = parts.train_module
    calibration = None
    if run.stage.calibrate_projector.batches and resume_path is None:  # a resumed run loads calibrated weights
        calibration = _calibrate_projector(run, module, tokenizer, parts.model_cfg, dist)
    if sp_degree > 1:  # every rank creates every group, then the LLM (only) attends through Ulysses
        module.sequence_parallel = new_group(dist.rank, dist.world_size, sp_degree)
        install(module.model.llm, module.sequence_parallel)
    flops = flop_model_for(module, run.stage.trainable, adapted=run.stage.lora.modules if run.stage.lora else ())
    params = parameter_counts(module)  # before DeepSpeed partitions them
    trainable = {name: module.trainable_modules()[name] for name in run.stage.trainable}
    groups = param_groups(trainable, run.stage.lr, run.stage.weight_decay)
    optimizer = build_optimizer(groups, tuple(run.loop.adam_betas), run.loop.adam_eps)  # type: ignore[arg-type]
    schedule = build_schedule(run.stage.schedule, steps_total)
    ds_config = deepspeed_config(run.deepspeed, run.loop)
    if other_world:  # ZeRO partitions written for another world size: DeepSpeed's universal load
        ds_config["checkpoint"] = {"load_universal": True}
    engine = build_engine(module, optimizer, schedule, ds_config)
    engine.train()
    dev = torch.device(engine.device)  # where DeepSpeed put this rank's module

    from data.faults import REASONS

    loader = _train_loader(run, tokenizer, parts.model_cfg, dist, num_workers=run.loop.loader_workers, loop=True,
                           data_rank=(dp_rank, dp_world))
    validator = build_validator(run, tokenizer, parts.model_cfg, dist, dev,  # None unless loop.eval_every_steps
                                data_rank=(dp_rank, dp_world))
    state = LoopState()
    if resume_path is not None and other_world:
        trainer_state, loader_state = reshard.load_resharded(engine, resume_path, dist.rank, loader.plan)
        state = LoopState.from_dict(trainer_state)
        loader.load_state_dict(loader_state)
        seed_everything(run.seed + 1000 * dist.rank + 1 + 7919 * state.step)  # no old rank's stream fits
    elif resume_path is not None:
        trainer_state, loader_state = ckpt.load_checkpoint(engine, resume_path, dist.rank)
        state = LoopState.from_dict(trainer_state)
        loader.load_state_dict(loader_state)
    else:
        seed_everything(run.seed + 1000 * dist.rank + 1)  # per-rank randomness (masking, dropout)
    saved_total = restore_schedule(engine.lr_scheduler, schedule) if resume_path is not None else None

    if dist.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        export.write_resolved_config(out_dir / "train_config.yaml", raw_config)
    logger = MetricsLogger(out_dir, dist.is_main, steps_total, state.step,
                           resolve_wandb_mode(run.logging.wandb_mode), run.logging.wandb_project,
                           run.logging.run_name or _run_name(run.stage.name, out_dir), raw_config,
                           run.logging.every_steps, run.logging.tqdm)
    if unused_model_fields:
        logger.event("model_group_not_used", state.step, init_from=run.stage.init_from,
                     differs=unused_model_fields)
    step_loop = StepLoop(engine, dist, dev, run.loop.grad_accum, run.loop.max_consecutive_nonfinite,
                         getattr(parts.model_cfg, "vision_pad_token_id", None), flops,
                         run.logging.peak_tflops_per_device * 1e12, skip_reasons=REASONS,
                         feature_cache=parts.train_module.feature_cache, sequence_parallel=sp_degree,
                         token_weighted=run.stage.loss == "lm")
    result = LoopResult(state=state)
    logger.event("parameters", state.step, **params)
    logger.summary({f"parameters/{k}": v for k, v in params.items()})
    if dist.is_main:
        print(f"parameters: {params['trainable']:,} trainable of {params['total']:,} "
              f"({100 * params['trainable'] / max(1, params['total']):.3f}%)", file=sys.stderr, flush=True)
    if resume_path is not None:
        extra = {"from_world_size": reshard.saved_layout(resume_path).world_size} if other_world else {}
        if saved_total is not None:  # the lr schedule follows this run's step count, not the checkpoint's
            extra["schedule_steps_from"] = saved_total
        logger.event("resume", state.step, checkpoint=str(resume_path), **extra)
    if calibration is not None:
        logger.event("projector_calibrated", state.step, **calibration)
    if earlier is not None:
        logger.event("earlier_checkpoints_set_aside", state.step, moved_to=str(earlier))

    def save() -> None:
        saved = {**state.to_dict(), "world_size": layout.world_size, "data_parallel": layout.data_parallel}
        ckpt.save_checkpoint(engine, ckpt_root, state.step, saved, loader.state_dict(), dist.rank,
                             run.checkpoint.keep_last_k)

    def validate() -> None:
        assert validator is not None
        logger.log_eval(state.step, validator.run(engine).metrics())

    every_eval = run.loop.eval_every_steps or steps_total
    batches = iter(loader)
    try:
        with StopRequest() as stop:
            while state.step < steps_total:
                metrics = step_loop.one_step(batches, state, loader.counts)
                result.losses.append(metrics["loss"])
                logger.log(state.step, metrics)
                last = state.step >= steps_total
                if validator is not None and (last or state.step % every_eval == 0):  # before a checkpoint
                    validate()
                if not last and _stop_agreed(stop, dev):  # on the last step, finish and export instead
                    save()
                    logger.event("signal_stop", state.step, signal=stop.signum)
                    result.stopped_by_signal = True
                    break
                if state.step % run.checkpoint.every_steps == 0 and not last:
                    save()
    finally:
        logger.summary({"final_step": state.step, "nonfinite_total": state.nonfinite_total})
        logger.close()
    if not result.stopped_by_signal:
        save()
        if run.checkpoint.export:
            export.export_stage(engine, module, tokenizer, out_dir / "export", raw_config,
                                run.deepspeed.zero_stage, dist, extra={"step": state.step,
                                                                      "stage": run.stage.name,
                                                                      "trainable": run.stage.trainable})
    if torch.distributed.is_initialized():
        torch.distributed.barrier()
    engine.destroy()  # release the engine's hooks and buffers: the next job of a sweep builds its own
    return result
