"""Resume a checkpoint on another number of ranks (a job requeued on fewer or more GPUs).

DeepSpeed's ZeRO files are partitioned for the data-parallel world size that wrote them; loading
them on another one fails. On such a resume the trainer (train/trainer.py) does, automatically:

1. rank 0 converts ``<checkpoint>/ds`` with DeepSpeed's own universal-checkpoint converter
   (``deepspeed.checkpoint.ds_to_universal``) into ``<checkpoint>/ds_universal`` (once; kept for the
   next resume), under the weights-only unpickler of train/checkpoint.py;
2. the engine is built with ``checkpoint: {load_universal: true}`` and loads that folder: weights
   (fp32 masters), Adam moments, per-group hyper-parameters and the LR schedule state;
3. the frozen parameters, which the universal load never restores (they have no optimizer
   state; under ZeRO-3 they are stored as per-rank pieces sized for the old world size), are
   reassembled from the original files and copied in (:func:`restore_frozen`);
4. the data position is remapped (data/reshard.py): within the running epoch no sample is seen
   twice and none is skipped;
5. the RNG cannot continue any old rank's stream, so each rank reseeds from (seed, rank, step).

The same command converts by hand: ``python -m train.reshard <checkpoint dir>``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from train import checkpoint as ckpt
from train.config import ConfigError

UNIVERSAL_TAG = "ds_universal"
_RANK_FILE = re.compile(r"^rank(\d{5})\.json$")
_ZERO3_MODEL = re.compile(r"^zero_pp_rank_(\d+)_mp_rank_00_model_states\.pt$")


@dataclass(frozen=True)
class Layout:
    """How a run was spread: all ranks (over which ZeRO partitions), and the data-parallel ranks, which
    read distinct data (world / sequence-parallel degree)."""

    world_size: int
    data_parallel: int

    @property
    def sequence_parallel(self) -> int:
        return self.world_size // self.data_parallel


def saved_layout(path: Path) -> Layout:
    """The layout that wrote checkpoint ``path`` (from trainer_state.json; older checkpoints: one
    rank file per rank, no sequence parallelism)."""
    state = json.loads((path / "trainer_state.json").read_text())
    ranks = sorted(int(m.group(1)) for p in path.iterdir() if (m := _RANK_FILE.match(p.name)))
    world = int(state.get("world_size", len(ranks)))
    if ranks != list(range(world)):
        raise RuntimeError(f"checkpoint {path}: rank files {ranks} do not cover its world size {world}")
    return Layout(world_size=world, data_parallel=int(state.get("data_parallel", world)))


def needs_reshard(saved: Layout, now: Layout) -> bool:
    """True when the ZeRO partitions (over all ranks) or the data streams (over data-parallel ranks)
    of `saved` do not fit `now`."""
    return saved != now


def convert_to_universal(path: Path) -> Path:
    """Convert ``path/ds`` into ``path/ds_universal`` with DeepSpeed's converter (no-op when done).

    Written under a temporary name and renamed, so an interrupted conversion is redone. Raises
    `UnsafeCheckpointError` when a file holds a pickled object other than plain data.
    """
    import pickle

    from deepspeed.checkpoint import ds_to_universal

    out = path / UNIVERSAL_TAG
    if out.is_dir():
        return out
    ranks = saved_layout(path).world_size
    found = len(list((path / "ds").glob("*zero_pp_rank_*_mp_rank_00_optim_states.pt")))
    if found != ranks:
        raise RuntimeError(f"{path / 'ds'} holds {found} ZeRO optimizer partitions, the run had {ranks} ranks")
    tmp = path / f".tmp-{UNIVERSAL_TAG}"
    if tmp.exists():
        shutil.rmtree(tmp)
    args = argparse.Namespace(input_folder=str(path / "ds"), output_folder=str(tmp), num_extract_workers=1,
                              num_merge_workers=1, keep_temp_folder=False, strict=True, inject_missing_state=True)
    try:
        with ckpt.weights_only_loading():
            ds_to_universal.main(args)
    except pickle.UnpicklingError as exc:
        raise ckpt.refused(f"checkpoint {path}", exc) from exc
    (path / "latest_universal").unlink(missing_ok=True)  # the converter's pointer to the temp name
    os.replace(tmp, out)
    return out


def prepare(path: Path, rank: int, world_size: int) -> None:
    """Collective: rank 0 converts `path` to a universal checkpoint, the others wait. A conversion
    that fails raises ConfigError (``checkpoint.resume``, one line saying why and how) on every rank."""
    failure = [None]
    if rank == 0:
        try:
            convert_to_universal(path)
        except Exception as exc:  # reported on every rank, as one line, below
            failure[0] = f"{type(exc).__name__}: {exc}".splitlines()[0]
    if torch.distributed.is_initialized():
        torch.distributed.broadcast_object_list(failure, src=0)
    if failure[0] is not None:
        saved = saved_layout(path).world_size
        raise ConfigError("checkpoint.resume", f"{path} was written by {saved} ranks and cannot be converted for "
                          f"{world_size} ({failure[0]}); resume it on {saved} ranks, or run `python -m "
                          "train.reshard` on it for the full error")


def _load(file: Path) -> dict[str, Any]:
    with ckpt.weights_only_loading():
        return torch.load(file, map_location="cpu", mmap=True)


def saved_frozen(ds_dir: Path, names: list[str]) -> dict[str, torch.Tensor]:
    """Full tensors of the frozen parameters `names` from a DeepSpeed checkpoint folder: ZeRO-3's
    per-rank flat pieces (``frozen_param_fragments``, rank ``r`` holding elements
    ``[r*k, (r+1)*k)`` of the padded flat parameter) concatenated in rank order and cut to shape;
    ZeRO-1/2's whole tensors from ``mp_rank_00_model_states.pt``."""
    pieces = sorted((int(m.group(1)), p) for p in ds_dir.iterdir() if (m := _ZERO3_MODEL.match(p.name)))
    if pieces:
        states = [_load(p) for _, p in pieces]
        shapes = states[0]["frozen_param_shapes"] or {}
        out = {}
        for name in names:
            flat = torch.cat([s["frozen_param_fragments"][name].reshape(-1) for s in states])
            shape = torch.Size(shapes[name])
            out[name] = flat[:shape.numel()].reshape(shape).clone()
        return out
    state = _load(ds_dir / "mp_rank_00_model_states.pt")
    source = state.get("frozen_param_fragments") or state["module"]
    return {name: source[name].clone() for name in names}


def restore_frozen(engine: Any, ds_dir: Path) -> int:
    """Copy the frozen parameters saved in `ds_dir` into `engine`'s module (a universal load
    leaves them as built). Collective under ZeRO-3. Returns how many were restored."""
    import deepspeed

    frozen = [(name, p) for name, p in engine.module.named_parameters() if not p.requires_grad]
    saved = saved_frozen(ds_dir, [name for name, _ in frozen])
    for name, param in frozen:
        value = saved[name]
        if hasattr(param, "ds_id"):  # ZeRO-3: gather, overwrite on rank 0, re-partition
            with deepspeed.zero.GatheredParameters([param], modifier_rank=0):
                param.data.copy_(value.to(param.dtype))
        else:
            param.data.copy_(value.to(param.dtype))
    return len(frozen)


def load_resharded(engine: Any, path: Path, rank: int, plan: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """Restore `engine` (built with ``load_universal``) from `path`'s universal folder and the
    frozen parameters, and return (trainer_state, this rank's remapped loader state) for the
    loader plan `plan` (data/loader.py StreamPlan of this rank)."""
    from data.reshard import remap_state

    saved = saved_layout(path)
    try:
        with ckpt.weights_only_loading():
            load_path, _ = engine.load_checkpoint(str(path), tag=UNIVERSAL_TAG, load_optimizer_states=True,
                                                  load_lr_scheduler_states=True)
    except Exception as exc:  # DeepSpeed's own errors are long tracebacks: one line with what to do
        reason = f"{type(exc).__name__}: {exc}".splitlines()[0]
        raise ConfigError("checkpoint.resume", f"{path} was written by {saved.world_size} ranks; loading its "
                          f"universal form {UNIVERSAL_TAG}/ failed ({reason}); delete {UNIVERSAL_TAG}/ to convert "
                          f"again, or resume it on {saved.world_size} ranks") from exc
    if load_path is None:
        raise RuntimeError(f"DeepSpeed found no state under {path}/{UNIVERSAL_TAG}")
    restore_frozen(engine, path / "ds")
    # one rank per data-parallel group holds each distinct data stream
    old_states = [json.loads((path / f"rank{d * saved.sequence_parallel:05d}.json").read_text())["loader"]
                  for d in range(saved.data_parallel)]
    trainer_state = json.loads((path / "trainer_state.json").read_text())
    try:
        return trainer_state, remap_state(plan, old_states)
    except (ValueError, RuntimeError) as exc:
        raise ConfigError("checkpoint.resume", f"{path}: the data position cannot be remapped to this world size "
                          f"({exc}); resume with the checkpoint's data config on {saved.world_size} ranks") from exc


def main(argv: list[str] | None = None) -> int:
    """``python -m train.reshard CHECKPOINT_DIR``: write CHECKPOINT_DIR/ds_universal (what a resume on
    another GPU count does by itself)."""
    parser = argparse.ArgumentParser(prog="python -m train.reshard", description=main.__doc__)
    parser.add_argument("checkpoint", type=Path, help="a complete step-XXXXXXXX checkpoint directory")
    args = parser.parse_args(argv)
    path: Path = args.checkpoint
    if not (path / ckpt.COMPLETE).is_file() or not (path / "ds").is_dir():
        print(f"checkpoint: {path} is not a complete checkpoint (no COMPLETE marker or ds/ folder)", file=sys.stderr)
        return 2
    out = convert_to_universal(path)
    print(f"wrote {out} (written by {saved_layout(path).world_size} ranks; loads on any number)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
