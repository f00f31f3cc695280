"""Typed run configuration behind the Hydra YAML (conf/), with validation before any compute.

`parse_run_config(raw)` turns the composed mapping into `RunConfig`, rejecting unknown keys;
`validate_run_config(run, ...)` checks the cross-field rules. Every error is a `ConfigError`
whose message starts with the dotted name of the offending field.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from dataclasses import dataclass, field
from typing import Any

from data.mix import DataConfig

STAGES: tuple[str, ...] = ("dts", "align", "sft", "long")  # the pretraining pipeline, in order
FINETUNE: str = "finetune"  # conf/stage/finetune.yaml: adapting a trained model, outside the pipeline
MODEL_MODULES: tuple[str, ...] = ("vision_tower", "dts", "projector", "llm")
DTS_DECODER: str = "dts_decoder"
LOSSES: tuple[str, ...] = ("lm", "dts_reconstruction")
PRECISIONS: tuple[str, ...] = ("bf16", "fp32")
SCHEDULES: tuple[str, ...] = ("cosine", "constant")
WANDB_MODES: tuple[str, ...] = ("offline", "online", "disabled")


class ConfigError(ValueError):
    """A configuration error; `field` is the dotted path of the offending field."""

    def __init__(self, field_name: str, message: str) -> None:
        super().__init__(f"{field_name}: {message}")
        self.field = field_name


@dataclass
class ScheduleConfig:
    """Learning-rate schedule: linear warmup then cosine decay (or constant)."""

    name: str = "cosine"
    warmup_ratio: float = 0.03
    min_lr_ratio: float = 0.0


@dataclass
class MaskingConfig:
    """DTS pretraining: semantic-guided masking and the light reconstruction decoder (defaults are
    the recipe of conf/stage/dts.yaml and docs/dts_pretraining.md)."""

    mask_ratio: float = 0.5
    semantic_fraction: float = 0.5
    decoder_dim: int = 512
    decoder_layers: int = 2
    decoder_heads: int = 8


@dataclass
class StageDataConfig:
    """Which data a stage reads: `train` sources ({shards, weight, strategy}) replacing the data
    config's train split when set, and a task filter on the samples' json `task` (None = all)."""

    train: list[dict[str, Any]] | None = None
    tasks: list[str] | None = None


@dataclass
class ProjectorCalibrationConfig:
    """Data-dependent projector start (train/calibrate.py): before the first step, `batches` training
    batches per rank set every channel of the visual tokens to mean 0 and std `target_std`
    (0 batches: off). For a projector in front of a vision encoder that has not learnt anything yet."""

    batches: int = 0
    target_std: float = 0.1


@dataclass
class ChunkedAttentionConfig:
    """Train a `fraction` of the samples (drawn per sample and step) under the visibility that chunked
    prefill gives at inference (model/visibility.py): chunks of `chunk_groups` groups that see
    `prev_chunks` earlier chunks. 0 (default): every sample trains with full causal attention."""

    fraction: float = 0.0
    chunk_groups: int = 4
    prev_chunks: int = 3
    # of those samples, the share whose tokens after the video see bi-level decoding's cache instead:
    # the first, the last and `top_k` random other chunks in full, the other chunks' visual keys and
    # values averaged in windows of `kv_pool` (model/visibility.py, bilevel_visibility)
    bilevel_fraction: float = 0.0
    top_k: int = 4
    kv_pool: int = 4


@dataclass
class PositionSkipConfig:
    """Train a `fraction` of the samples (drawn per sample and step) with rotary positions that jump once, at
    a random token, by a random amount that keeps every position below `max_position` (train/position_skip.py,
    Zhu et al., 2023, "PoSE"): short samples then train the relative distances of prompts up to
    `max_position` tokens. 0 (default): positions 0 .. L-1. `split`: where the jump may fall, "token" (any
    token after the first, PoSE's rule), "group" (a group boundary or the end of the video, so a group's
    timestamp and visual tokens stay adjacent) or "video" (the end of the video only). `tasks`: only samples
    of these tasks may be drawn (null: every sample)."""

    fraction: float = 0.0
    max_position: int = 4096
    split: str = "token"
    tasks: list[str] | None = None


@dataclass
class LoraConfig:
    """LoRA adapters (built with peft, train/lora.py) on the `target_modules` linear layers inside the
    model parts listed in `modules`. The base weights of those parts are frozen; the adapters train at
    the part's `stage.lr`. Merged output: W + (alpha / r) * B @ A (Hu et al., 2021, "LoRA")."""

    modules: list[str] = field(default_factory=lambda: ["llm"])
    r: int = 64
    alpha: float = 128.0
    dropout: float = 0.05
    target_modules: list[str] = field(default_factory=lambda: [
        "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])


@dataclass
class StageConfig:
    """One training stage: what is trained, how, on what, and where it starts from."""

    name: str = "sft"
    loss: str = "lm"
    trainable: list[str] = field(default_factory=list)
    lr: dict[str, float] = field(default_factory=dict)
    weight_decay: float = 0.0
    frames_upbound: int = 16
    fps_upbound: float | None = None
    max_length: int = 8192
    data: StageDataConfig = field(default_factory=StageDataConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    steps: int | None = None
    epochs: float | None = None
    init_from: str | None = None
    masking: MaskingConfig = field(default_factory=MaskingConfig)
    calibrate_projector: ProjectorCalibrationConfig = field(default_factory=ProjectorCalibrationConfig)
    chunked_attention: ChunkedAttentionConfig = field(default_factory=ChunkedAttentionConfig)
    position_skip: PositionSkipConfig = field(default_factory=PositionSkipConfig)
    lora: LoraConfig | None = None  # null: the `trainable` modules train fully


@dataclass
class DeepSpeedConfig:
    """ZeRO stage, precision and extra `zero_optimization` keys for DeepSpeed."""

    zero_stage: int = 2
    precision: str = "bf16"
    zero_optimization: dict[str, Any] = field(default_factory=dict)


@dataclass
class PackingConfig:
    """Sample packing (data/packing.py): whole samples, first fit, into micro-batches of
    `loop.micro_batch_size` rows of at most `max_tokens` tokens each; attention stays within a sample.
    A sample longer than `max_tokens` trains alone (counted in the metric `oversize_samples`)."""

    max_tokens: int = 8192


@dataclass
class LoopConfig:
    """The optimisation loop: batch sizes, clipping, AdamW, failure handling."""

    micro_batch_size: int = 1
    grad_accum: int = 1
    grad_clip: float = 1.0
    activation_checkpointing: bool = False
    max_consecutive_nonfinite: int = 5
    adam_betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    adam_eps: float = 1e-8
    max_steps: int | None = None
    loader_workers: int = 1
    # MiB of frozen vision tower + DTS outputs memoised per rank (train/feature_cache.py); 0 = off. Only for
    # lm stages that train neither module, below ZeRO-3 (where every rank must run the same modules).
    frozen_feature_cache_mb: int = 0
    # MiB of decoded video frames memoised per loader process (data/frame_cache.py); 0 = off. A stage that reads
    # its videos several times then decodes each once; the samples are the same either way
    decoded_frame_cache_mb: int = 0
    # validation loss on the data mix's val split (train/validation.py) every N optimizer steps and at the end
    # of the stage; None = off. `eval_max_batches` caps the batches each rank reads per pass (None: the whole split)
    eval_every_steps: int | None = None
    eval_max_batches: int | None = None
    # ranks that share one sequence (Ulysses, train/sequence_parallel.py); data parallelism runs over world / P
    sequence_parallel: int = 1
    # pack whole samples into rows of at most packing.max_tokens tokens (null: right-pad each micro-batch)
    packing: PackingConfig | None = None


@dataclass
class CheckpointConfig:
    """Periodic checkpoints and resume; `resume` is None, "auto" or a checkpoint directory."""

    every_steps: int = 100
    keep_last_k: int = 2
    resume: str | None = None
    export: bool = True


@dataclass
class LoggingConfig:
    """Rank-0 logging: console/tqdm, JSONL metrics, wandb, MFU reference peak."""

    every_steps: int = 1
    tqdm: bool = True
    wandb_mode: str | None = None
    wandb_project: str = "videoxl2"
    run_name: str | None = None
    peak_tflops_per_device: float = 989.0


@dataclass
class RunConfig:
    """Everything one `python -m train` run needs.

    `data` is parsed into `data.mix.DataConfig` here (errors name `data.<field>`). `model` stays
    the mapping of the model group: `model.config_from_dict` owns its schema and validates it when
    `build.check_run` builds the model config (errors name `model`), and a stage with `init_from`
    takes its model config from the export instead.
    """

    stage: StageConfig
    model: dict[str, Any]
    data: DataConfig
    deepspeed: DeepSpeedConfig = field(default_factory=DeepSpeedConfig)
    loop: LoopConfig = field(default_factory=LoopConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    output_root: str = "outputs"
    output_dir: str = "outputs/run"
    tokenizer: str | None = None
    seed: int = 1234


# --------------------------------------------------------------------------- parsing


def _is_optional(tp: Any) -> tuple[bool, Any]:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(tp)) == 2:
            return True, args[0]
    return False, tp


def _coerce(value: Any, tp: Any, path: str) -> Any:
    """Convert a plain YAML value to the annotated type, or raise ConfigError naming `path`."""
    optional, inner = _is_optional(tp)
    if value is None:
        if optional or tp is Any:
            return None
        raise ConfigError(path, "must not be null")
    tp = inner
    if tp is Any:
        return value
    if tp is DataConfig:
        try:
            return DataConfig.from_mapping(value)
        except (ValueError, TypeError) as exc:
            raise data_error(exc, path) from exc
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(path, f"expected a mapping, got {type(value).__name__}")
        return build_dataclass(tp, value, path)
    origin = typing.get_origin(tp)
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(path, f"expected a list, got {type(value).__name__}")
        return [_coerce(v, item_tp, f"{path}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        key_tp, val_tp = typing.get_args(tp)
        if not isinstance(value, dict):
            raise ConfigError(path, f"expected a mapping, got {type(value).__name__}")
        return {_coerce(k, key_tp, path): _coerce(v, val_tp, f"{path}.{k}") for k, v in value.items()}
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(path, f"expected true/false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(path, f"expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(path, f"expected a number, got {value!r}")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(path, f"expected a number, got {value!r}") from None
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(path, f"expected a string, got {value!r}")
        return value
    raise ConfigError(path, f"unsupported type {tp}")


def data_error(exc: Exception, prefix: str) -> ConfigError:
    """A data-mix error (its message starts with `data.<field>: ` when it names one) as a
    ConfigError whose field starts with `prefix` instead of `data`."""
    text = str(exc)
    head, sep, rest = text.partition(": ")
    if sep and (head == "data" or head.startswith(("data.", "data["))):
        return ConfigError(prefix + head[len("data"):], rest)
    return ConfigError(prefix, text)


def build_dataclass(cls: type, raw: dict[str, Any], path: str) -> Any:
    """An instance of the dataclass `cls` from the mapping `raw`, each value coerced to its field's type
    (nested dataclasses, lists, dicts, optionals). Raises ConfigError naming `path.<field>` for an unknown
    key or a value of the wrong type."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for key in raw:
        if key not in names:
            where = f"{path}.{key}" if path else str(key)
            raise ConfigError(where, f"unknown field (known: {', '.join(sorted(names))})")
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name in raw:
            sub = f"{path}.{f.name}" if path else f.name
            kwargs[f.name] = _coerce(raw[f.name], hints[f.name], sub)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{path}.{f.name}" if path else f.name, "missing required field")
    return cls(**kwargs)


def parse_run_config(raw: dict[str, Any]) -> RunConfig:
    """Build a `RunConfig` from a resolved plain mapping (presets were merged by Hydra's defaults list)."""
    raw = dict(raw)
    raw.pop("hydra", None)
    run: RunConfig = build_dataclass(RunConfig, raw, "")
    return run


# --------------------------------------------------------------------------- validation


def visual_tokens_for_frames(frames: int, frames_per_group: int, tokens_per_group: int,
                             timestamp_tokens: int) -> int:
    """Sequence positions taken by a video of `frames` frames (padded up to whole groups)."""
    groups = -(-frames // frames_per_group)
    return groups * (tokens_per_group + timestamp_tokens)


def validate_run_config(run: RunConfig, *, frames_per_group: int | None = None,
                        tokens_per_group: int | None = None, timestamp_tokens: int = 0) -> None:
    """Check cross-field rules; raise ConfigError naming the field. Pure: no compute, no I/O.

    The visual-length rule runs only when the model's group sizes are given (`build.check_run`
    passes them); trainable names are checked against `MODEL_MODULES` (+ the DTS decoder).
    """
    st = run.stage
    if st.name not in (*STAGES, FINETUNE):
        raise ConfigError("stage.name", f"unknown stage {st.name!r} (known: {', '.join((*STAGES, FINETUNE))})")
    if st.loss not in LOSSES:
        raise ConfigError("stage.loss", f"unknown loss {st.loss!r} (known: {', '.join(LOSSES)})")
    if not st.trainable:
        raise ConfigError("stage.trainable", "no trainable module declared")
    allowed = set(MODEL_MODULES)
    if st.loss == "dts_reconstruction":
        allowed.add(DTS_DECODER)
    for i, name in enumerate(st.trainable):
        if name not in allowed:
            raise ConfigError(f"stage.trainable[{i}]",
                              f"unknown module {name!r} (known: {', '.join(sorted(allowed))})")
    if len(set(st.trainable)) != len(st.trainable):
        raise ConfigError("stage.trainable", "a module is listed twice")
    if st.loss == "dts_reconstruction" and DTS_DECODER not in st.trainable:
        raise ConfigError("stage.trainable", f"dts_reconstruction trains {DTS_DECODER!r}; list it")
    for name in st.trainable:
        if name not in st.lr:
            raise ConfigError(f"stage.lr.{name}", "missing learning rate for a trainable module")
        if not st.lr[name] > 0:
            raise ConfigError(f"stage.lr.{name}", f"learning rate must be > 0, got {st.lr[name]}")
    for name in st.lr:
        if name not in allowed:
            raise ConfigError(f"stage.lr.{name}", f"unknown module {name!r}")
    if st.weight_decay < 0:
        raise ConfigError("stage.weight_decay", "must be >= 0")
    if st.schedule.name not in SCHEDULES:
        raise ConfigError("stage.schedule.name", f"unknown schedule {st.schedule.name!r}")
    if not 0.0 <= st.schedule.warmup_ratio < 1.0:
        raise ConfigError("stage.schedule.warmup_ratio", "must be in [0, 1)")
    if st.frames_upbound < 1:
        raise ConfigError("stage.frames_upbound", "must be >= 1")
    if st.fps_upbound is not None and st.fps_upbound <= 0:
        raise ConfigError("stage.fps_upbound", "must be > 0 or null")
    if st.max_length < 1:
        raise ConfigError("stage.max_length", "must be >= 1")
    if frames_per_group is not None and tokens_per_group is not None:
        need = visual_tokens_for_frames(st.frames_upbound, frames_per_group, tokens_per_group,
                                        timestamp_tokens)
        if need > st.max_length:
            raise ConfigError(
                "stage.frames_upbound",
                f"{st.frames_upbound} frames take {need} positions "
                f"({-(-st.frames_upbound // frames_per_group)} groups x ({tokens_per_group} visual + "
                f"{timestamp_tokens} timestamp tokens)) > stage.max_length={st.max_length}")
    if st.steps is None and st.epochs is None and run.loop.max_steps is None:
        raise ConfigError("stage.steps", "set stage.steps or stage.epochs")
    if st.steps is not None and st.steps < 1:
        raise ConfigError("stage.steps", "must be >= 1")
    if st.epochs is not None and st.epochs <= 0:
        raise ConfigError("stage.epochs", "must be > 0")
    if not 0.0 < st.masking.mask_ratio < 1.0:
        raise ConfigError("stage.masking.mask_ratio", "must be in (0, 1)")
    if not 0.0 <= st.masking.semantic_fraction <= 1.0:
        raise ConfigError("stage.masking.semantic_fraction", "must be in [0, 1]")
    cal = st.calibrate_projector
    if cal.batches < 0:
        raise ConfigError("stage.calibrate_projector.batches", "must be >= 0 (0 turns calibration off)")
    if not cal.target_std > 0:
        raise ConfigError("stage.calibrate_projector.target_std", f"must be > 0, got {cal.target_std}")
    if cal.batches and ("projector" not in st.trainable or st.loss != "lm"):
        raise ConfigError("stage.calibrate_projector.batches",
                          "calibrates a projector that this stage trains with the lm loss; "
                          f"this stage trains {st.trainable} with {st.loss!r}")
    chunked = st.chunked_attention
    for name in ("fraction", "bilevel_fraction"):
        if not 0.0 <= getattr(chunked, name) <= 1.0:
            raise ConfigError(f"stage.chunked_attention.{name}", f"must be in [0, 1], got {getattr(chunked, name)}")
    for name, low in (("chunk_groups", 1), ("prev_chunks", 0), ("top_k", 0), ("kv_pool", 1)):
        if getattr(chunked, name) < low:
            raise ConfigError(f"stage.chunked_attention.{name}", f"must be >= {low}, got {getattr(chunked, name)}")
    if chunked.fraction and st.loss != "lm":
        raise ConfigError("stage.chunked_attention.fraction", f"applies to the lm loss, not {st.loss!r}")
    skip = st.position_skip
    if not 0.0 <= skip.fraction <= 1.0:
        raise ConfigError("stage.position_skip.fraction", f"must be in [0, 1], got {skip.fraction}")
    if skip.max_position < 1:
        raise ConfigError("stage.position_skip.max_position", f"must be >= 1, got {skip.max_position}")
    if skip.split not in ("token", "group", "video"):
        raise ConfigError("stage.position_skip.split", f"must be 'token', 'group' or 'video', got {skip.split!r}")
    if skip.tasks is not None and (not skip.tasks or not all(isinstance(t, str) and t for t in skip.tasks)):
        raise ConfigError("stage.position_skip.tasks", f"must be a non-empty list of task names or null, got {skip.tasks!r}")
    if skip.fraction and st.loss != "lm":
        raise ConfigError("stage.position_skip.fraction", f"applies to the lm loss, not {st.loss!r}")
    if skip.fraction and run.loop.sequence_parallel > 1:
        raise ConfigError("stage.position_skip.fraction", "not with loop.sequence_parallel > 1 (each rank draws its "
                          "own positions, and the ranks sharing a sequence must agree on them)")
    if st.lora is not None:
        validate_lora(st.lora, st.trainable)
    ds = run.deepspeed
    if ds.zero_stage not in (0, 1, 2, 3):
        raise ConfigError("deepspeed.zero_stage", f"must be 0..3, got {ds.zero_stage}")
    if ds.precision not in PRECISIONS:
        raise ConfigError("deepspeed.precision", f"must be one of {PRECISIONS}, got {ds.precision!r}")
    lp = run.loop
    for name in ("micro_batch_size", "grad_accum", "max_consecutive_nonfinite"):
        if getattr(lp, name) < 1:
            raise ConfigError(f"loop.{name}", "must be >= 1")
    if lp.loader_workers < 0:
        raise ConfigError("loop.loader_workers", "must be >= 0 (0 loads in the training process)")
    if lp.grad_clip < 0:
        raise ConfigError("loop.grad_clip", "must be >= 0 (0 disables clipping)")
    if len(lp.adam_betas) != 2:
        raise ConfigError("loop.adam_betas", "needs two values")
    if lp.max_steps is not None and lp.max_steps < 1:
        raise ConfigError("loop.max_steps", "must be >= 1")
    for name in ("eval_every_steps", "eval_max_batches"):
        if getattr(lp, name) is not None and getattr(lp, name) < 1:
            raise ConfigError(f"loop.{name}", f"must be >= 1 or null (null: {'off' if name == 'eval_every_steps' else 'the whole val split'}), got {getattr(lp, name)}")
    if lp.packing is not None:
        if lp.packing.max_tokens < 1:
            raise ConfigError("loop.packing.max_tokens", f"must be >= 1, got {lp.packing.max_tokens}")
        if st.loss != "lm":
            raise ConfigError("loop.packing", f"packs samples for the lm loss, not {st.loss!r}")
        if st.steps is None and lp.max_steps is None:
            raise ConfigError("loop.packing", "a packed micro-batch holds a varying number of samples, so "
                              "stage.epochs cannot be turned into steps; set stage.steps or loop.max_steps")
    if lp.decoded_frame_cache_mb < 0:
        raise ConfigError("loop.decoded_frame_cache_mb", "must be >= 0 (0 turns the cache off)")
    if lp.frozen_feature_cache_mb < 0:
        raise ConfigError("loop.frozen_feature_cache_mb", "must be >= 0 (0 turns the cache off)")
    if lp.frozen_feature_cache_mb:
        trained = sorted({"vision_tower", "dts"} & set(st.trainable))
        if st.loss != "lm" or trained:
            raise ConfigError("loop.frozen_feature_cache_mb",
                              "memoises a frozen vision tower + DTS for the lm loss; this stage trains "
                              f"{st.trainable} with {st.loss!r}")
        if ds.zero_stage == 3:
            raise ConfigError("loop.frozen_feature_cache_mb",
                              "not with deepspeed.zero_stage=3: a cache hit skips modules whose sharded "
                              "parameters every rank must gather together")
    if lp.sequence_parallel < 1:
        raise ConfigError("loop.sequence_parallel", "must be >= 1 (1 = off)")
    if lp.sequence_parallel > 1 and st.loss != "lm":
        raise ConfigError("loop.sequence_parallel", f"shards the LLM's tokens; stage.loss {st.loss!r} runs no LLM")
    if lp.sequence_parallel > 1 and st.chunked_attention.bilevel_fraction > 0:
        raise ConfigError("loop.sequence_parallel", "not with stage.chunked_attention.bilevel_fraction > 0 (the "
                          "pooled entries of bi-level training have no sequence-parallel attention)")
    if lp.sequence_parallel > 1 and 0 < st.chunked_attention.fraction < 1:
        raise ConfigError("loop.sequence_parallel", "not with 0 < stage.chunked_attention.fraction < 1 (each rank "
                          "draws which samples see chunked visibility, and the ranks sharing a sequence must agree); "
                          "use fraction 0 or 1")
    ck = run.checkpoint
    if ck.every_steps < 1:
        raise ConfigError("checkpoint.every_steps", "must be >= 1")
    if ck.keep_last_k < 1:
        raise ConfigError("checkpoint.keep_last_k", "must be >= 1")
    if run.logging.wandb_mode is not None and run.logging.wandb_mode not in WANDB_MODES:
        raise ConfigError("logging.wandb_mode", f"must be one of {WANDB_MODES} or null")
    if run.logging.every_steps < 1:
        raise ConfigError("logging.every_steps", "must be >= 1")


_MODULE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def validate_lora(lora: LoraConfig, trainable: list[str]) -> None:
    """Field rules of `stage.lora`: parts of the model that the stage trains, r >= 1, alpha > 0,
    dropout in [0, 1), target names that are plain module names (matched against the last component
    of a module's dotted path). Raises ConfigError naming the field."""
    if not lora.modules:
        raise ConfigError("stage.lora.modules", "empty: list the model parts that get adapters (e.g. [llm])")
    for i, name in enumerate(lora.modules):
        if name not in MODEL_MODULES:
            raise ConfigError(f"stage.lora.modules[{i}]",
                              f"unknown module {name!r} (known: {', '.join(MODEL_MODULES)})")
        if name not in trainable:
            raise ConfigError(f"stage.lora.modules[{i}]",
                              f"{name!r} is not in stage.trainable {trainable}: list it there too (its adapters "
                              f"train at stage.lr.{name}; its base weights stay frozen)")
    if len(set(lora.modules)) != len(lora.modules):
        raise ConfigError("stage.lora.modules", "a module is listed twice")
    if lora.r < 1:
        raise ConfigError("stage.lora.r", f"must be >= 1, got {lora.r}")
    if not lora.alpha > 0:
        raise ConfigError("stage.lora.alpha", f"must be > 0, got {lora.alpha}")
    if not 0.0 <= lora.dropout < 1.0:
        raise ConfigError("stage.lora.dropout", f"must be in [0, 1), got {lora.dropout}")
    if not lora.target_modules:
        raise ConfigError("stage.lora.target_modules", "empty: list module names such as q_proj, v_proj")
    for i, name in enumerate(lora.target_modules):
        if not _MODULE_NAME.fullmatch(name):
            raise ConfigError(f"stage.lora.target_modules[{i}]",
                              f"{name!r} is not a module name (letters, digits, _; no dots or patterns)")
    if len(set(lora.target_modules)) != len(lora.target_modules):
        raise ConfigError("stage.lora.target_modules", "a name is listed twice")
