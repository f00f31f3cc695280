"""Typed evaluation config behind conf/eval (Hydra): `EvalConfig` and its parts, validated before any compute.

`parse_eval_config(raw)` builds the dataclasses from the composed mapping (unknown keys rejected, types
checked) and `validate_eval_config` checks the cross-field rules; every error is a
`train.config.ConfigError` whose message starts with the dotted name of the offending field.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from evaluation.answers import PROTOCOLS
from evaluation.prompts import BENCHMARK_FORMATS
from train.config import ConfigError, build_dataclass

BENCH_TASKS: dict[str, str] = {"mcq": "mcq", "grounding": "grounding", "niah": "needle", "needle": "needle"}
FORMATS: tuple[str, ...] = ("synth", "records", *BENCHMARK_FORMATS)
# the eval task each benchmark format holds
FORMAT_TASK: dict[str, str] = {"mlvu": "mcq", "videomme": "mcq", "lvbench": "mcq", "longvideobench": "mcq",
                               "charades": "grounding"}
DTYPES: tuple[str, ...] = ("float32", "bfloat16", "float16")


@dataclass
class InferenceConfig:
    """Sparse inference knobs (used by prefill=chunked / decode=bilevel; see model.inference)."""

    chunk_groups: int = 4
    prev_chunks: int = 3
    top_k: int = 4
    kv_pool: int = 4


@dataclass
class SettingConfig:
    """A benchmark's pinned settings (conf/eval/setting/*.yaml): frames, fps, protocol, inference."""

    name: str
    frames_upbound: int
    fps_upbound: float | None = 4.0
    max_length: int | None = None
    protocol: str = "official"
    inference: InferenceConfig = field(default_factory=InferenceConfig)


@dataclass
class BenchConfig:
    """What is asked and how it is scored (conf/eval/bench/*.yaml)."""

    name: str
    task: str
    max_new_tokens: int
    template: str


@dataclass
class EvalConfig:
    """`python -m evaluation` / `python -m train.evaluate` (conf/eval/evaluate.yaml)."""

    ckpt: str
    data: str
    bench: BenchConfig
    setting: SettingConfig
    format: str = "synth"
    split: str = "test"
    video_root: str | None = None
    durations: str | None = None
    strict: bool = False
    work_dir: str | None = None
    prefill: str = "full"
    decode: str = "full"
    out: str = "eval_results.json"
    predictions: str | None = None
    limit: int | None = None
    device: str = "auto"
    dtype: str = "float32"
    length_buckets: list[float] = field(default_factory=lambda: [0.0, 60.0, 180.0, 600.0, 1800.0, 3600.0])
    # MiB of encoded frames memoised per rank (model.inference.VisualCache): a video asked about by several
    # questions is encoded once; 0 = off. Same records either way.
    visual_cache_mb: int = 0

    @property
    def task(self) -> str:
        """The eval task of the bench (mcq | grounding | needle)."""
        return BENCH_TASKS[self.bench.task]


def parse_eval_config(raw: dict[str, Any]) -> EvalConfig:
    """`EvalConfig` from a resolved plain mapping (``hydra`` key ignored), then `validate_eval_config`."""
    raw = {k: v for k, v in raw.items() if k != "hydra"}
    for key in ("ckpt", "data"):
        if raw.get(key) == "???":
            raise ConfigError(key, "missing required value (pass it on the command line)")
    cfg: EvalConfig = build_dataclass(EvalConfig, raw, "")
    validate_eval_config(cfg)
    return cfg


def _positive(value: int | None, name: str, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if value is None or value < 1:
        raise ConfigError(name, f"must be a positive integer, got {value!r}")


def validate_eval_config(cfg: EvalConfig) -> None:
    """Cross-field rules; raises ConfigError naming the field. Pure: no I/O."""
    if cfg.bench.task not in BENCH_TASKS:
        raise ConfigError("bench.task", f"unknown task {cfg.bench.task!r} (known: {', '.join(BENCH_TASKS)})")
    if cfg.format not in FORMATS:
        raise ConfigError("format", f"unknown format {cfg.format!r} (known: {', '.join(FORMATS)})")
    if cfg.format in FORMAT_TASK and FORMAT_TASK[cfg.format] != cfg.task:
        raise ConfigError("bench", f"format {cfg.format} holds {FORMAT_TASK[cfg.format]} questions; "
                                   f"use bench={'grounding' if cfg.format == 'charades' else 'mcq'}")
    if cfg.format in BENCHMARK_FORMATS and not cfg.video_root:
        raise ConfigError("video_root", f"format={cfg.format} needs video_root=<folder of the videos>")
    if cfg.durations is not None and cfg.format != "charades":
        raise ConfigError("durations", "only format=charades reads a durations csv")
    if cfg.setting.protocol not in PROTOCOLS:
        raise ConfigError("setting.protocol", f"unknown protocol {cfg.setting.protocol!r} "
                                              f"(known: {', '.join(PROTOCOLS)})")
    if cfg.setting.protocol != "official" and cfg.format not in BENCHMARK_FORMATS:
        raise ConfigError("setting.protocol", f"{cfg.setting.protocol} is defined only for "
                                              f"{', '.join(BENCHMARK_FORMATS)}; format={cfg.format} uses official")
    if cfg.prefill not in ("full", "chunked"):
        raise ConfigError("prefill", f"must be full | chunked, got {cfg.prefill!r}")
    if cfg.decode not in ("full", "bilevel"):
        raise ConfigError("decode", f"must be full | bilevel, got {cfg.decode!r}")
    if cfg.dtype not in DTYPES:
        raise ConfigError("dtype", f"must be one of {', '.join(DTYPES)}, got {cfg.dtype!r}")
    if isinstance(cfg.visual_cache_mb, bool) or not isinstance(cfg.visual_cache_mb, int) or cfg.visual_cache_mb < 0:
        raise ConfigError("visual_cache_mb", f"must be an int >= 0 (MiB; 0 = off), got {cfg.visual_cache_mb!r}")
    _positive(cfg.bench.max_new_tokens, "bench.max_new_tokens")
    _positive(cfg.setting.frames_upbound, "setting.frames_upbound")
    _positive(cfg.setting.max_length, "setting.max_length", allow_none=True)
    _positive(cfg.limit, "limit", allow_none=True)
    if cfg.setting.fps_upbound is not None and cfg.setting.fps_upbound <= 0:
        raise ConfigError("setting.fps_upbound", f"must be > 0 or null, got {cfg.setting.fps_upbound}")
    inf = cfg.setting.inference
    for name in ("chunk_groups", "top_k", "kv_pool"):
        _positive(getattr(inf, name), f"setting.inference.{name}")
    if inf.prev_chunks < 0:
        raise ConfigError("setting.inference.prev_chunks", f"must be >= 0, got {inf.prev_chunks}")
    edges = cfg.length_buckets
    if not edges or any(b <= a for a, b in zip(edges, edges[1:], strict=False)):
        raise ConfigError("length_buckets", f"must be a non-empty increasing list of seconds, got {edges}")
