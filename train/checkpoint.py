"""Atomic, resumable training checkpoints.

Layout of `<output_dir>/checkpoints/step-00000042/`:
  ds/                      DeepSpeed engine state (module, ZeRO optimizer partitions, lr schedule)
  trainer_state.json       step counters (rank 0)
  rank00000.json           this rank's data-loader state and python/numpy RNG
  rank00000_rng.safetensors this rank's torch RNG state
  COMPLETE                 written last; a directory without it is ignored

Everything is first written under `.tmp-step-...` and renamed once all ranks finished, so a
crash mid-save never leaves a directory that looks complete. Loading never unpickles arbitrary
objects: DeepSpeed's files are read with torch's weights-only unpickler (forced through
`TORCH_FORCE_WEIGHTS_ONLY_LOAD` for the duration of the load) with an explicit allow-list; a
file holding anything else raises `UnsafeCheckpointError` naming the rejected global. A replaced
or pruned checkpoint loses its COMPLETE marker before any of its files are deleted.
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import random
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

COMPLETE = "COMPLETE"
_STEP_DIR = re.compile(r"^step-(\d{8})$")


def step_dir_name(step: int) -> str:
    return f"step-{step:08d}"


def list_complete(ckpt_root: Path) -> list[Path]:
    """Complete checkpoints under `ckpt_root`, oldest first."""
    if not ckpt_root.is_dir():
        return []
    found = []
    for p in ckpt_root.iterdir():
        m = _STEP_DIR.match(p.name)
        if m and (p / COMPLETE).is_file():
            found.append((int(m.group(1)), p))
    return [p for _, p in sorted(found)]


def set_aside(ckpt_root: Path) -> Path:
    """Rename an earlier run's `ckpt_root` to `<name>.earlier-N` (first free N) and return it, so a
    fresh run in the same output directory neither prunes its own checkpoints against the earlier
    run's higher steps nor gets resumed (`resume=auto`) from them. Nothing is deleted."""
    n = 1
    while (dest := ckpt_root.with_name(f"{ckpt_root.name}.earlier-{n}")).exists():
        n += 1
    os.replace(ckpt_root, dest)
    return dest


def resolve_resume(resume: str | None, ckpt_root: Path) -> Path | None:
    """`None` -> no resume; `"auto"` -> newest complete checkpoint (or None); else that path."""
    if resume is None:
        return None
    if resume == "auto":
        done = list_complete(ckpt_root)
        return done[-1] if done else None
    path = Path(resume)
    if not (path / COMPLETE).is_file():
        raise FileNotFoundError(f"checkpoint.resume: {path} is not a complete checkpoint")
    return path


# --------------------------------------------------------------------------- RNG


def rng_state() -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Python/numpy RNG as JSON-able data, torch RNG states as tensors."""
    py_version, py_state, py_gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    meta = {
        "python": [py_version, list(py_state), py_gauss],
        "numpy": [np_name, np_keys.tolist(), int(np_pos), int(np_has_gauss), float(np_gauss)],
    }
    tensors = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        tensors["torch_cuda"] = torch.cuda.get_rng_state()
    return meta, tensors


def set_rng_state(meta: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
    """Inverse of `rng_state`."""
    version, state, gauss = meta["python"]
    random.setstate((version, tuple(state), gauss))
    name, keys, pos, has_gauss, cached = meta["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(tensors["torch_cpu"])
    if "torch_cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors["torch_cuda"])


# --------------------------------------------------------------------------- safe loading


def _deepspeed_safe_globals() -> list[Any]:
    """Non-tensor types that appear in DeepSpeed ZeRO checkpoints (plain data holders only)."""
    import collections

    found: list[Any] = [collections.OrderedDict, collections.defaultdict, torch.Size]
    with contextlib.suppress(ImportError):
        from deepspeed.runtime.fp16.loss_scaler import LossScaler, DynamicLossScaler  # noqa: I001

        found += [LossScaler, DynamicLossScaler]
    with contextlib.suppress(ImportError):
        from deepspeed.utils.tensor_fragment import fragment_address

        found.append(fragment_address)
    with contextlib.suppress(ImportError):
        from deepspeed.runtime.zero.config import ZeroStageEnum

        found.append(ZeroStageEnum)
    return found


class UnsafeCheckpointError(RuntimeError):
    """A checkpoint or weights file holds a pickled object the weights-only unpickler refuses."""


def refused(what: str, exc: pickle.UnpicklingError) -> UnsafeCheckpointError:
    """The error for `what` (e.g. "checkpoint <dir>") naming the global the unpickler rejected."""
    found = re.search(r"Unsupported global: GLOBAL (\S+)", str(exc))
    name = found.group(1) if found else "a disallowed global"
    return UnsafeCheckpointError(f"{what}: refused to unpickle {name} (weights-only loading accepts "
                                 "tensors and plain data only)")


@contextlib.contextmanager
def weights_only_loading() -> Iterator[None]:
    """Force torch.load into weights-only mode with the DeepSpeed allow-list, then restore."""
    previous = os.environ.get("TORCH_FORCE_WEIGHTS_ONLY_LOAD")
    os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = "1"
    try:
        with torch.serialization.safe_globals(_deepspeed_safe_globals()):
            yield
    finally:
        if previous is None:
            os.environ.pop("TORCH_FORCE_WEIGHTS_ONLY_LOAD", None)
        else:
            os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = previous


# --------------------------------------------------------------------------- save / load


def discard(path: Path, ignore_errors: bool = False) -> None:
    """Delete a checkpoint directory, its COMPLETE marker first: a kill mid-delete leaves a
    directory that is no longer complete, never a complete-looking one with files missing."""
    (path / COMPLETE).unlink(missing_ok=True)
    shutil.rmtree(path, ignore_errors=ignore_errors)


def _barrier() -> None:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()


def save_checkpoint(engine: Any, ckpt_root: Path, step: int, trainer_state: dict[str, Any],
                    loader_state: dict[str, Any], rank: int, keep_last_k: int) -> Path:
    """Collective: every rank writes its part into a temp dir; rank 0 marks it complete,
    renames it into place and prunes old checkpoints beyond `keep_last_k`."""
    final = ckpt_root / step_dir_name(step)
    tmp = ckpt_root / f".tmp-{step_dir_name(step)}"
    if rank == 0:
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
    _barrier()
    engine.save_checkpoint(str(tmp), tag="ds")
    meta, tensors = rng_state()
    per_rank = {"loader": loader_state, "rng": meta}
    (tmp / f"rank{rank:05d}.json").write_text(json.dumps(per_rank))
    save_file(tensors, str(tmp / f"rank{rank:05d}_rng.safetensors"))
    _barrier()
    if rank == 0:
        (tmp / "trainer_state.json").write_text(json.dumps({**trainer_state, "step": step}, indent=1))
        (tmp / COMPLETE).write_text("ok\n")
        if final.exists():
            discard(final)
        os.replace(tmp, final)
        for old in list_complete(ckpt_root)[:-keep_last_k]:
            discard(old, ignore_errors=True)
    _barrier()
    return final


def load_checkpoint(engine: Any, path: Path, rank: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """Restore engine, RNG and return (trainer_state, loader_state) for this rank."""
    try:
        with weights_only_loading():
            load_path, _ = engine.load_checkpoint(str(path), tag="ds", load_optimizer_states=True,
                                                  load_lr_scheduler_states=True)
    except pickle.UnpicklingError as exc:
        raise refused(f"checkpoint {path}", exc) from exc
    if load_path is None:
        raise RuntimeError(f"DeepSpeed found no state under {path}/ds")
    per_rank_file = path / f"rank{rank:05d}.json"
    if not per_rank_file.is_file():
        raise RuntimeError(f"{per_rank_file} missing: was the checkpoint written with another world size?")
    per_rank = json.loads(per_rank_file.read_text())
    set_rng_state(per_rank["rng"], load_file(str(path / f"rank{rank:05d}_rng.safetensors")))
    trainer_state = json.loads((path / "trainer_state.json").read_text())
    return trainer_state, per_rank["loader"]
