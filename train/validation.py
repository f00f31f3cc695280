"""Validation loss of a stage on the data mix's `val` split (`loop.eval_every_steps`).

Every `loop.eval_every_steps` optimizer steps and once at the end of the stage, `Validator.run` reads the
whole `val` split (at most `loop.eval_max_batches` batches per rank when set) and returns the stage's own
loss averaged over every position it scores, over all ranks together:

- lm stages: next-token cross-entropy, token-weighted over the supervised targets (labels != -100 after
  the shift): sum over batches of (batch mean x batch targets) / all targets, which is the mean over every
  supervised token of the split whatever the batching;
- dts_reconstruction: the masked-reconstruction error weighted by masked encoder tokens, with the masks
  drawn from a fixed seed (so the same weights score the same masks on every call; the masks depend on
  how samples fall into batches, so this value, unlike the lm one, changes with the number of ranks).

Samples are chosen as the stage chooses its training samples (`stage.data.tasks`, frames and length
bounds). Each rank reads a disjoint slice of the split (the loader's rank split: by shard, or by sample
when there are fewer shards than ranks); the sums of loss x positions, positions and samples are
all-reduced, so every rank gets the same value.

Determinism and resume: a pass is a fresh single pass over the split in a fixed order, in eval mode (no
dropout; `stage.chunked_attention` draws nothing, so lm stages are scored under full causal attention),
without grad, inside `torch.random.fork_rng` seeded with the run seed. The training loader, RNG streams
and weights are untouched, so a resumed run stays exact. A frozen-feature cache (`loop.frozen_feature_cache_mb`)
is replaced by a separate one of the same size during the pass, so validation neither fills nor reads the
training cache (and later passes reuse the val groups' features).

Under ZeRO-3 every forward gathers sharded weights on all ranks together, so ranks step in lockstep: a
rank whose slice has ended repeats its last batch with weight 0 until every rank is done.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch

from data.loader import StreamPlan, VideoLoader
from train.config import ConfigError, RunConfig, data_error
from train.engine import DistEnv, all_reduce_max, all_reduce_sum
from train.feature_cache import FrozenFeatureCache


@dataclass(frozen=True)
class ValidationResult:
    """One pass over the val split, summed over all ranks."""

    loss: float  # position-weighted mean loss (NaN when no position was scored)
    tokens: int  # positions the mean is over: supervised targets (lm) or masked encoder tokens (dts)
    samples: int

    def metrics(self) -> dict[str, float]:
        """The metrics.jsonl / wandb keys of this pass."""
        return {"val/loss": self.loss, "val/tokens": float(self.tokens), "val/samples": float(self.samples)}


class Validator:
    """Computes the validation loss of a DeepSpeed engine over this rank's slice of the val split.

    `plan` is the val loader's plan for this rank (single pass, see `build_validator`); `seed` seeds the
    RNG inside the pass; `lockstep` (ZeRO-3) makes ranks run the same number of forward passes;
    `replicas` ranks read each slice (the `loop.sequence_parallel` degree: a group's ranks score the same
    batches together), so the all-reduced sums are divided by it.
    """

    def __init__(self, plan: StreamPlan, dist: DistEnv, dev: torch.device, seed: int, *,
                 max_batches: int | None = None, lockstep: bool = False, replicas: int = 1) -> None:
        if plan.loop:
            raise ValueError("Validator: the val plan must be a single pass (loop=False)")
        self.plan = plan
        self.dist = dist
        self.dev = dev
        self.seed = int(seed)
        self.max_batches = max_batches
        self.lockstep = lockstep
        self.replicas = replicas  # ranks that read the same slice (a sequence-parallel group) and count it once
        self._cache: FrozenFeatureCache | None = None

    def _batches(self) -> Iterator[dict[str, Any]]:
        """This rank's val batches, the same ones in the same order on every call."""
        loader = VideoLoader(self.plan, num_workers=0)
        for taken, batch in enumerate(loader):
            if self.max_batches is not None and taken >= self.max_batches:
                return
            yield batch

    def _rng_fork(self) -> Any:
        devices = [] if self.dev.type == "cpu" else [self.dev.index or 0]
        return torch.random.fork_rng(devices=devices, device_type=self.dev.type)

    @contextmanager
    def _own_feature_cache(self, module: Any) -> Iterator[None]:
        """Give the module a cache of the validator's own for the pass (when it memoises frozen features)."""
        train_cache = getattr(module, "feature_cache", None)
        if train_cache is None:
            yield
            return
        if self._cache is None:
            self._cache = FrozenFeatureCache(train_cache.max_bytes)
        module.feature_cache = self._cache
        try:
            yield
        finally:
            module.feature_cache = train_cache

    def run(self, engine: Any) -> ValidationResult:
        """One pass: the engine's module (a `train.objectives.TrainModule`) scores every val batch of this
        rank; sums are all-reduced. Restores the module's train/eval mode. Collective: every rank calls it."""
        from train.trainer import _batch_inputs

        module = engine.module
        was_training = module.training
        loss_sum, positions, samples = 0.0, 0, 0
        previous: dict[str, Any] | None = None
        batches = self._batches()
        engine.eval()
        try:
            with self._rng_fork(), torch.no_grad(), self._own_feature_cache(module):
                torch.manual_seed(self.seed)
                while True:
                    batch = next(batches, None)
                    if self.lockstep:
                        if all_reduce_max(0.0 if batch is None else 1.0, self.dev) == 0:
                            break
                        if batch is None:  # this rank is done, another is not: run the same modules, weight 0
                            if previous is None:
                                raise RuntimeError(
                                    f"rank {self.dist.rank}: the val split has no batch for this rank while others "
                                    "have some; under ZeRO-3 every rank must take part in each forward pass "
                                    "(use more val samples/shards than ranks)")
                            engine(**_batch_inputs(previous, self.dev))
                            continue
                    elif batch is None:
                        break
                    previous = batch
                    loss = engine(**_batch_inputs(batch, self.dev))
                    count = module.loss_positions(batch["labels"], batch["pixel_values"])
                    samples += int(batch["input_ids"].shape[0])
                    if count:
                        loss_sum += float(loss.detach().double()) * count
                        positions += count
        finally:
            engine.train(was_training)
        total, tokens, count_samples = (v / self.replicas for v in
                                        all_reduce_sum([loss_sum, float(positions), float(samples)], self.dev))
        mean = total / tokens if tokens else math.nan
        return ValidationResult(loss=mean, tokens=int(tokens), samples=int(count_samples))


def build_validator(run: RunConfig, tokenizer: Any, model_cfg: Any, dist: DistEnv, dev: torch.device,
                    data_rank: tuple[int, int] | None = None) -> Validator | None:
    """The stage's validator (None when `loop.eval_every_steps` is null): the val split read with the
    stage's task filter, frames and length bounds, in micro-batches of `loop.micro_batch_size`.
    `data_rank` = (rank, world) of the data-parallel split (default: this rank of all ranks; with sequence
    parallelism the ranks of a group share one slice)."""
    dp_rank, dp_world = data_rank if data_rank is not None else (dist.rank, dist.world_size)
    if run.loop.eval_every_steps is None:
        return None
    from data.loader import build_loader
    from train import build

    loader = build_loader(build.data_config(run), tokenizer, model_cfg, split="val",
                          batch_size=run.loop.micro_batch_size, num_workers=0, rank=dp_rank,
                          world_size=dp_world, seed=run.seed, frames_upbound=run.stage.frames_upbound,
                          fps_upbound=run.stage.fps_upbound, max_length=run.stage.max_length, loop=False,
                          tasks=run.stage.data.tasks, frame_cache_bytes=run.loop.decoded_frame_cache_mb * 2**20)
    return Validator(loader.plan, dist, dev, run.seed, max_batches=run.loop.eval_max_batches,
                     lockstep=run.deepspeed.zero_stage == 3, replicas=dist.world_size // dp_world)


def check_val_split(run: RunConfig, check_paths: bool = True) -> None:
    """With `loop.eval_every_steps` set: the data mix has val sources and (with `check_paths`) their globs
    match shards holding at least one sample of the stage's `stage.data.tasks`. Raises ConfigError naming
    the field; reads tar headers and json members only, and stops at the first matching sample."""
    if run.loop.eval_every_steps is None:
        return
    if not run.data.val:
        raise ConfigError("data.val", "no sources; loop.eval_every_steps validates on the data mix's val split")
    if not check_paths:
        return
    from data.mix import resolve_split

    try:
        sources = resolve_split(run.data, "val", run.seed)
    except (ValueError, FileNotFoundError) as exc:
        raise data_error(exc, "data") from exc
    filters = [src.task_filter(run.stage.data.tasks) for src in sources]
    if all(f is not None for f in filters) and not any(_holds_task(src, f) for src, f in  # type: ignore[arg-type]
                                                       zip(sources, filters, strict=True)):
        raise ConfigError("data.val", f"holds no sample of the stage's tasks {run.stage.data.tasks} (stage.data.tasks) "
                                      f"and its sources' tasks {[sorted(f) for f in filters if f is not None]} "
                                      "to validate on (loop.eval_every_steps)")


def _holds_task(src: Any, tasks: frozenset[str]) -> bool:
    """Whether a resolved source keeps a readable sample whose json `task` is in `tasks`."""
    from data.collate import parse_record
    from data.faults import SampleFault
    from data.shards import SHARD_READ_ERRORS

    for shard in src.shards:
        try:
            for raw in src.kept_samples(shard):
                try:
                    if str(parse_record(raw).get("task", "unknown")) in tasks:
                        return True
                except SampleFault:
                    continue
        except SHARD_READ_ERRORS:
            continue
    return False
