"""Typed data-mix configuration (``conf/data/*.yaml``) and per-source sample selection.

A split (train / val / test) is a list of sources ``{shards, weight, strategy}``:

- ``shards``: a glob, relative to ``root`` unless absolute; it must match at least one file.
- ``weight`` (> 0): in the looping (training) stream, sources are interleaved deterministically in
  proportion to their weights (each source loops over its own epochs); in a single pass every
  selected sample is seen once and weights only set the interleaving.
- ``strategy``: which samples of the source are used, in stored order (sorted shard paths, tar order):
  ``all``; ``first:N``; ``end:N``; ``random:N`` (a seeded subset, fixed for the whole run); ``N%``
  (a seeded random N percent); ``first:N%``, ``end:N%`` and ``random:N%`` take a percentage.
- ``tasks`` (optional): the json ``task`` values this source contributes (e.g. ``[needle]``); its other
  samples are skipped like those outside the stage's own task filter (``stage.data.tasks``), which still
  applies. Weights interleave raw samples, before either filter.
"""

from __future__ import annotations

import glob
import logging
import math
import os
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf

from data.shards import SHARD_READ_ERRORS, RawSample, iter_shard, iter_shard_keys

logger = logging.getLogger(__name__)

SPLITS: tuple[str, ...] = ("train", "val", "test")


@dataclass(frozen=True)
class Strategy:
    """A parsed sampling strategy: kind in all|first|end|random and a count or a percentage."""

    kind: str
    count: int | None = None
    percent: float | None = None

    def size(self, total: int) -> int:
        """How many of ``total`` samples this strategy keeps."""
        if self.kind == "all":
            return total
        if self.percent is not None:
            return min(total, math.ceil(self.percent * total / 100.0))
        assert self.count is not None
        return min(total, self.count)

    def select(self, total: int, rng: np.random.Generator) -> np.ndarray:
        """Sorted ordinals (0..total-1) kept by this strategy."""
        n = self.size(total)
        if self.kind in ("all",) or n == total:
            return np.arange(total)
        if self.kind == "first":
            return np.arange(n)
        if self.kind == "end":
            return np.arange(total - n, total)
        return np.sort(rng.choice(total, size=n, replace=False))


def parse_strategy(text: str, where: str) -> Strategy:
    """Parse a strategy string; errors name ``where`` (e.g. ``data.train[0].strategy``)."""
    if not isinstance(text, str):
        raise ValueError(f"{where}: must be a string, got {type(text).__name__}")
    s = text.strip()
    if s == "all":
        return Strategy("all")
    kind, sep, amount = s.partition(":")
    if not sep:
        kind, amount = "random", s
        if not amount.endswith("%"):
            raise ValueError(f"{where}: invalid strategy {text!r}; expected all | first:N | end:N | "
                             "random:N | N% (N may be a percentage after ':')")
    if kind not in ("first", "end", "random"):
        raise ValueError(f"{where}: invalid strategy kind {kind!r} in {text!r}; expected first, end or random")
    try:
        if amount.endswith("%"):
            pct = float(amount[:-1])
            if not 0 < pct <= 100:
                raise ValueError(f"{where}: percentage must be in (0, 100], got {text!r}")
            return Strategy(kind, percent=pct)
        count = int(amount)
    except ValueError as exc:
        raise ValueError(f"{where}: invalid amount in strategy {text!r}: {exc}") from exc
    if count < 1:
        raise ValueError(f"{where}: count must be >= 1, got {text!r}")
    return Strategy(kind, count=count)


@dataclass
class DataSource:
    """One source of a split: a shard glob, its mixing weight, sampling strategy and (optionally) the tasks
    it contributes (None: every task)."""

    shards: str
    weight: float = 1.0
    strategy: str = "all"
    tasks: list[str] | None = None

    def validate(self, where: str) -> Strategy:
        if not isinstance(self.shards, str) or not self.shards:
            raise ValueError(f"{where}.shards: must be a non-empty glob string, got {self.shards!r}")
        if not isinstance(self.weight, int | float) or not self.weight > 0:
            raise ValueError(f"{where}.weight: must be a number > 0, got {self.weight!r}")
        if self.tasks is not None and (not isinstance(self.tasks, list | tuple) or not self.tasks
                                       or not all(isinstance(t, str) and t for t in self.tasks)):
            raise ValueError(f"{where}.tasks: must be a non-empty list of task names or null (every task), "
                             f"got {self.tasks!r}")
        return parse_strategy(self.strategy, f"{where}.strategy")


@dataclass
class DataConfig:
    """A data mix: per-split sources, a root for relative globs, the sample shuffle buffer, and the
    per-sample decode time limit in seconds (``decode_timeout_s``, None = no limit; a sample whose
    decoding takes longer is skipped and counted as ``decode_timeout``, see :mod:`data.watchdog`)."""

    root: str = ""
    train: list[DataSource] = field(default_factory=list)
    val: list[DataSource] = field(default_factory=list)
    test: list[DataSource] = field(default_factory=list)
    shuffle_buffer: int = 256
    decode_timeout_s: float | None = None

    def validate(self) -> None:
        """Check every field (strategy strings, weights, buffer size, time limit); errors name the field."""
        if not isinstance(self.shuffle_buffer, int) or self.shuffle_buffer < 1:
            raise ValueError(f"data.shuffle_buffer: must be an int >= 1, got {self.shuffle_buffer!r}")
        t = self.decode_timeout_s
        if t is not None and (isinstance(t, bool) or not isinstance(t, int | float) or not math.isfinite(t) or t <= 0):
            raise ValueError(f"data.decode_timeout_s: must be a number of seconds > 0 or null (no limit), got {t!r}")
        for split in SPLITS:
            for i, src in enumerate(self.sources(split)):
                src.validate(f"data.{split}[{i}]")

    def sources(self, split: str) -> list[DataSource]:
        if split not in SPLITS:
            raise ValueError(f"split: must be one of {SPLITS}, got {split!r}")
        return getattr(self, split)

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any] | DictConfig) -> DataConfig:
        """Build and validate from a dict / Hydra node (``conf/data/<name>.yaml``)."""
        if isinstance(data, DictConfig):
            data = OmegaConf.to_container(data, resolve=True)  # type: ignore[assignment]
        if not isinstance(data, Mapping):
            raise ValueError(f"data: must be a mapping, got {type(data).__name__}")
        allowed = {"root", "shuffle_buffer", "decode_timeout_s", *SPLITS}
        unknown = sorted(set(data) - allowed)
        if unknown:
            raise ValueError(f"data: unknown fields {unknown}; allowed {sorted(allowed)}")
        splits: dict[str, list[DataSource]] = {}
        for split in SPLITS:
            items = data.get(split) or []
            if not isinstance(items, list):
                raise ValueError(f"data.{split}: must be a list of sources, got {type(items).__name__}")
            srcs = []
            for i, item in enumerate(items):
                if not isinstance(item, Mapping):
                    raise ValueError(f"data.{split}[{i}]: must be a mapping, got {type(item).__name__}")
                bad = sorted(set(item) - {"shards", "weight", "strategy", "tasks"})
                if bad:
                    raise ValueError(f"data.{split}[{i}]: unknown fields {bad}")
                if "shards" not in item:
                    raise ValueError(f"data.{split}[{i}].shards: missing")
                srcs.append(DataSource(**dict(item)))
            splits[split] = srcs
        cfg = cls(root=str(data.get("root", "") or ""), shuffle_buffer=data.get("shuffle_buffer", 256),
                  decode_timeout_s=data.get("decode_timeout_s"), **splits)
        cfg.validate()
        return cfg


@dataclass(frozen=True)
class ResolvedSource:
    """A source with its shard files and, when the strategy is not ``all``, the keys kept per shard."""

    name: str
    shards: tuple[str, ...]
    weight: float
    keep: dict[str, frozenset[str]] | None  # shard -> kept keys; None keeps everything
    tasks: frozenset[str] | None = None  # the tasks this source contributes; None: every task

    def task_filter(self, stage_tasks: Iterable[str] | None) -> frozenset[str] | None:
        """The tasks a sample of this source may have to be used: this source's `tasks` within
        `stage_tasks` (the stage's filter; None: no filter). None: every task."""
        if stage_tasks is None:
            return self.tasks
        stage = frozenset(stage_tasks)
        return stage if self.tasks is None else stage & self.tasks

    def kept_samples(self, shard: str) -> Iterator[RawSample]:
        """Raw samples of ``shard`` that this source's strategy keeps, in stored order (shard read
        errors propagate; a shard with no kept key is not opened)."""
        kept = None if self.keep is None else self.keep.get(shard, frozenset())
        if kept is not None and not kept:
            return
        for sample in iter_shard(shard):
            if kept is None or sample.key in kept:
                yield sample


def resolve_split(cfg: DataConfig, split: str, seed: int) -> list[ResolvedSource]:
    """Expand the globs of ``split``, apply strategies; missing shards -> error naming the glob."""
    cfg.validate()
    sources = cfg.sources(split)
    if not sources:
        raise ValueError(f"data.{split}: no sources configured")
    out = []
    for i, src in enumerate(sources):
        where = f"data.{split}[{i}]"
        strategy = src.validate(where)
        pattern = src.shards if os.path.isabs(src.shards) or not cfg.root else os.path.join(cfg.root, src.shards)
        shards = tuple(sorted(p for p in glob.glob(pattern) if os.path.isfile(p)))
        if not shards:
            raise FileNotFoundError(f"{where}.shards: glob {pattern!r} matches no shard file")
        keep = None
        if strategy.kind != "all":
            keep = _select_keys(shards, strategy, np.random.default_rng([seed, i, 7919]), where)
        out.append(ResolvedSource(name=f"{split}[{i}]", shards=shards, weight=float(src.weight), keep=keep,
                                  tasks=None if src.tasks is None else frozenset(src.tasks)))
    return out


def _select_keys(shards: tuple[str, ...], strategy: Strategy, rng: np.random.Generator,
                 where: str) -> dict[str, frozenset[str]]:
    """Apply ``strategy`` over the source's samples in stored order (tar headers only)."""
    refs: list[tuple[str, str]] = []
    for shard in shards:
        before = len(refs)
        try:
            refs.extend((shard, key) for key in iter_shard_keys(shard))
        except SHARD_READ_ERRORS as exc:  # the keys read before the damage are kept
            logger.warning("%s: shard %s is unreadable past %d samples while indexing (%s)",
                           where, shard, len(refs) - before, exc)
    chosen = strategy.select(len(refs), rng)
    keep: dict[str, set[str]] = {}
    for ordinal in chosen:
        shard, key = refs[int(ordinal)]
        keep.setdefault(shard, set()).add(key)
    return {s: frozenset(k) for s, k in keep.items()}
