"""Assemble one stage run from a `RunConfig`: checks, model, trainable set, optimizer, engine, loader."""

from __future__ import annotations

import dataclasses
import math
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from data.mix import DataConfig, ResolvedSource
from train import checkpoint as ckpt
from train.config import FINETUNE, ConfigError, RunConfig, data_error, validate_run_config

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"


def compose_config(overrides: list[str], context: str = "") -> dict[str, Any]:
    """conf/config.yaml composed with Hydra `overrides` and resolved, as a plain dict.

    Raises ConfigError("overrides", `context` + Hydra's first line) for an override Hydra cannot apply (an
    unknown key or group option, a value that does not parse)."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
            cfg = compose(config_name="config", overrides=overrides)
        raw = OmegaConf.to_container(cfg, resolve=True)
    except (HydraException, OmegaConfBaseException) as exc:
        first = (str(exc).strip() or type(exc).__name__).splitlines()[0]
        raise ConfigError("overrides", f"{context}{first}") from exc
    assert isinstance(raw, dict)
    return raw


# Positions a timestamp text may take when no tokenizer is available (the released Video-XL-2
# recipe budgets about 152 positions per 144-token group, i.e. ~8 for the timestamp).
FALLBACK_TIMESTAMP_TOKENS = 8


def model_config(run: RunConfig, *, read_init_from: bool = True) -> Any:
    """The model config a run trains: `init_from`'s config.json if set (and `read_init_from`),
    else the `model` group's."""
    from model import VideoXL2Config, config_from_dict

    if run.stage.init_from and read_init_from:
        return VideoXL2Config.from_pretrained(run.stage.init_from)
    try:
        return config_from_dict(run.model)
    except (ValueError, TypeError) as exc:
        raise ConfigError("model", str(exc)) from exc


# Keys of a config's dict that record how it was saved, not the model's shape.
_BOOKKEEPING_KEYS = frozenset({"architectures", "dtype", "torch_dtype", "transformers_version", "_name_or_path",
                               "layer_types"})


def model_group_differences(run: RunConfig, init_cfg: Any) -> list[str]:
    """With `stage.init_from` set, the model trained is the one of init_from's config.json (`init_cfg`) and
    the `model` group is not used: the fields where the group's config differs from it, as
    ``"<field>: <group value> (model group), <init_from value> (init_from)"`` (dotted names, sorted; save
    bookkeeping such as dtype and architectures left out). Empty when they agree or the group does not
    build a config."""
    from model import config_from_dict

    try:
        group = config_from_dict(run.model)
    except (ValueError, TypeError):
        return []

    def flat(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in tree.items():
            if key in _BOOKKEEPING_KEYS:
                continue
            if isinstance(value, dict):
                out.update(flat(value, f"{prefix}{key}."))
            else:
                out[f"{prefix}{key}"] = value
        return out

    mine, theirs = flat(group.to_dict()), flat(init_cfg.to_dict())
    return [f"{k}: {mine.get(k)!r} (model group), {theirs.get(k)!r} (init_from)"
            for k in sorted(set(mine) | set(theirs)) if mine.get(k) != theirs.get(k)]


def tokenizer_name(run: RunConfig, model_cfg: Any) -> str | None:
    """Tokenizer: run override, else the exported dir of `init_from`, else the model preset's."""
    if run.tokenizer:
        return run.tokenizer
    if run.stage.init_from and (Path(run.stage.init_from) / "tokenizer_config.json").is_file():
        return run.stage.init_from
    name = getattr(model_cfg, "tokenizer", None) or run.model.get("tokenizer")
    return None if name in (None, "???") else str(name)


def timestamp_tokens(tokenizer: Any | None) -> int:
    """Worst-case length of a group's timestamp text (multi-hour timestamps)."""
    if tokenizer is None:
        return FALLBACK_TIMESTAMP_TOKENS
    from model.sequence import format_timestamp

    return len(tokenizer(format_timestamp(9999.9), add_special_tokens=False)["input_ids"])


def data_config(run: RunConfig) -> DataConfig:
    """The data mix with the stage's `train` sources (if any) replacing the data group's; a bad
    stage source raises ConfigError naming `stage.data.train[i]...`."""
    if run.stage.data.train is None:
        return run.data
    try:
        stage_train = DataConfig.from_mapping({"train": run.stage.data.train}).train
    except (ValueError, TypeError) as exc:
        raise data_error(exc, "stage.data") from exc
    return dataclasses.replace(run.data, train=stage_train)


def check_init_from(path: str) -> None:
    """`stage.init_from` is a VideoXL2ForCausalLM directory (exported, converted or assembled) whose
    config.json and safetensors files are readable, complete and hold every tensor of the model with its
    shape (headers only, `model.checks.check_videoxl2_dir`); raises
    ConfigError("stage.init_from", "<file>: <what is wrong>")."""
    from model.checks import ModelFileError, check_videoxl2_dir

    try:
        check_videoxl2_dir(path, what="stage.init_from (a VideoXL2ForCausalLM: a stage export, or made by "
                                      "model.convert_official or model.assemble)")
    except ModelFileError as exc:
        raise ConfigError("stage.init_from", str(exc)) from None


def check_run(run: RunConfig, *, check_paths: bool = True) -> tuple[Any, Any | None]:
    """Every check that needs no compute: config rules, model config, tokenizer, data paths,
    init_from (config kind, weights files' headers, lengths and tensor shapes: `check_init_from`). Returns
    (model_config, tokenizer or None).

    `check_paths=False` touches no path: `init_from` is not read (the `model` group's config
    stands in for it, e.g. for a later pipeline stage whose export does not exist yet), a missing
    tokenizer is not an error and data globs are not resolved.
    """
    validate_run_config(run)  # pure field rules first
    if check_paths and run.stage.name == FINETUNE and run.stage.init_from is None:
        raise ConfigError("stage.init_from", "finetune starts from a trained model: set stage.init_from to a "
                          "converted (model.convert_official), assembled (model.assemble) or exported model directory")
    if check_paths and run.stage.init_from is not None:
        check_init_from(run.stage.init_from)
    mcfg = model_config(run, read_init_from=check_paths)
    tok = None
    name = tokenizer_name(run, mcfg)
    if name is not None:
        from model import load_tokenizer

        try:
            tok = load_tokenizer(name)
        except (ValueError, OSError) as exc:
            if check_paths:
                raise ConfigError("tokenizer", str(exc)) from exc
    elif check_paths:
        raise ConfigError("tokenizer", "no tokenizer: set model.tokenizer or tokenizer= to a local directory")
    validate_run_config(run, frames_per_group=mcfg.frames_per_group, tokens_per_group=mcfg.tokens_per_group,
                        timestamp_tokens=timestamp_tokens(tok))
    if run.loop.sequence_parallel > 1:
        from train.sequence_parallel import check_degree

        text = mcfg.text_config
        check_degree(run.loop.sequence_parallel, text.num_attention_heads, text.num_key_value_heads)
    _check_data(run, check_paths)
    return mcfg, tok


def _check_data(run: RunConfig, check_paths: bool) -> None:
    """The stage's train split has sources, none whose `tasks` miss every task of `stage.data.tasks`, and,
    with `check_paths`, its shard globs match files; the val split too when the stage validates
    (train/validation.py)."""
    from data.mix import resolve_split

    cfg = data_config(run)
    prefix = "data" if run.stage.data.train is None else "stage.data"
    if not cfg.train:
        raise ConfigError(f"{prefix}.train", "no training sources")
    stage_tasks = run.stage.data.tasks
    for i, src in enumerate(cfg.train):
        if src.tasks is not None and stage_tasks is not None and not set(src.tasks) & set(stage_tasks):
            raise ConfigError(f"{prefix}.train[{i}].tasks", f"{list(src.tasks)} has no task of stage.data.tasks "
                              f"{list(stage_tasks)}: the source would give no sample")
    if check_paths:
        try:
            resolve_split(cfg, "train", run.seed)
        except (ValueError, FileNotFoundError) as exc:
            raise data_error(exc, prefix) from exc
    from train.validation import check_val_split

    check_val_split(run, check_paths)


def _count_tasks(src: ResolvedSource, tasks: frozenset[str]) -> int:
    """Samples of `src` whose json `task` is in `tasks`, read the way the loader reads them (known keys
    only; broken records and unreadable shards are not counted)."""
    from data.collate import parse_record
    from data.faults import SampleFault
    from data.shards import SHARD_READ_ERRORS

    total = 0
    for shard in src.shards:
        try:
            for raw in src.kept_samples(shard):
                try:
                    rec = parse_record(raw)
                except SampleFault:
                    continue
                total += str(rec.get("task", "unknown")) in tasks
        except SHARD_READ_ERRORS:
            continue
    return total


def count_train_samples(run: RunConfig) -> int:
    """Samples one epoch of the stage trains on: the train split after strategies, filtered by
    `stage.data.tasks` and each source's `tasks` like the loader (tar headers only when there is no task
    filter)."""
    from data.mix import resolve_split
    from data.shards import iter_shard_keys

    total = 0
    for src in resolve_split(data_config(run), "train", run.seed):
        tasks = src.task_filter(run.stage.data.tasks)
        if tasks is not None:
            total += _count_tasks(src, tasks)
        elif src.keep is not None:
            total += sum(len(v) for v in src.keep.values())
        else:
            total += sum(1 for shard in src.shards for _ in iter_shard_keys(shard))
    return total


def total_steps(run: RunConfig, world_size: int) -> int:
    """Optimizer steps of the stage: loop.max_steps, else stage.steps, else epochs over the data."""
    if run.loop.max_steps is not None:
        return run.loop.max_steps
    if run.stage.steps is not None:
        return run.stage.steps
    assert run.stage.epochs is not None
    per_step = run.loop.micro_batch_size * run.loop.grad_accum * world_size
    return max(1, math.floor(run.stage.epochs * count_train_samples(run) / per_step))


@dataclass
class StageParts:
    """The objects a stage's loop needs."""

    train_module: Any
    model_cfg: Any


def build_train_module(run: RunConfig, model_cfg: Any) -> StageParts:
    """Model (from `init_from` or fresh from config), LoRA adapters when `stage.lora` is set, stage heads,
    trainable set applied (the parts in `stage.lora.modules` train their adapters only)."""
    from model import VideoXL2ForCausalLM
    from train.feature_cache import FrozenFeatureCache
    from train.objectives import TrainModule
    from train.optim import set_trainable

    if run.stage.init_from:
        try:
            with ckpt.weights_only_loading():
                model = VideoXL2ForCausalLM.from_pretrained(run.stage.init_from, dtype=torch.float32)
        except pickle.UnpicklingError as exc:
            raise ckpt.refused(f"stage.init_from {run.stage.init_from}", exc) from exc
    else:
        model = VideoXL2ForCausalLM(model_cfg)
    lora_cfg = run.stage.lora
    if lora_cfg is not None:  # before checkpointing and the train module: peft swaps the target layers in place
        from train.lora import apply_lora

        apply_lora(model, lora_cfg, base_model=run.stage.init_from)
    if run.loop.activation_checkpointing:
        # non-reentrant: gradients reach the adapters even though the frozen embeddings' outputs need none
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    cache_mb = run.loop.frozen_feature_cache_mb
    dropout = float(getattr(model.config.vision_config, "attention_dropout", 0.0) or 0.0)
    if cache_mb and dropout > 0:
        raise ConfigError("loop.frozen_feature_cache_mb", f"the vision tower has attention_dropout={dropout}: "
                          "its training-mode outputs are not a fixed function of the pixels")
    cache = FrozenFeatureCache(cache_mb * 2**20) if cache_mb else None
    chunked = run.stage.chunked_attention
    module = TrainModule(model, run.stage.loss, run.stage.masking, feature_cache=cache,
                         chunked_attention=chunked if chunked.fraction else None,
                         packing=run.loop.packing is not None,
                         position_skip=run.stage.position_skip if run.stage.position_skip.fraction else None)
    set_trainable(module.trainable_modules(), run.stage.trainable)
    if lora_cfg is not None:
        from train.lora import freeze_base

        freeze_base(module.trainable_modules(), lora_cfg)
    return StageParts(train_module=module, model_cfg=model.config)
