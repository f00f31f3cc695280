"""DeepSpeed setup: process-group init from the launcher's environment and engine construction."""

from __future__ import annotations

import copy
import os
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from train.config import DeepSpeedConfig, LoopConfig


@dataclass(frozen=True)
class DistEnv:
    """Rank/world of this process as given by torchrun, the deepspeed launcher or SLURM."""

    rank: int
    world_size: int
    local_rank: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def read_dist_env(environ: dict[str, str] | None = None) -> DistEnv:
    """Read RANK/WORLD_SIZE/LOCAL_RANK (falling back to SLURM_* and then to a single process)."""
    env = os.environ if environ is None else environ
    rank = int(env.get("RANK", env.get("SLURM_PROCID", "0")))
    world = int(env.get("WORLD_SIZE", env.get("SLURM_NTASKS", "1")))
    local = int(env.get("LOCAL_RANK", env.get("SLURM_LOCALID", "0")))
    return DistEnv(rank=rank, world_size=world, local_rank=local)


# Seconds a DeepSpeed op build may wait before the run names any torch-extension build lock it may wait on.
BUILD_LOCK_NOTE_AFTER_S = 180.0


def extension_build_locks() -> list[Path]:
    """The torch-extension build locks present now (``<TORCH_EXTENSIONS_DIR or ~/.cache/torch_extensions>/
    [<python-device tag>/]<op>/lock``). A build holds its op's lock while it compiles; a run stopped during a
    build leaves it behind, and every later build of that op then waits on it without end."""
    from torch.utils.cpp_extension import get_default_build_root

    root = Path(os.environ.get("TORCH_EXTENSIONS_DIR") or get_default_build_root())
    return sorted(p for p in [*root.glob("*/lock"), *root.glob("*/*/lock")] if p.is_file())


@contextmanager
def build_lock_note(after_s: float = BUILD_LOCK_NOTE_AFTER_S) -> Iterator[None]:
    """Around a step that may build a DeepSpeed op: if it is still running after `after_s` seconds while a
    build lock exists (`extension_build_locks`), print one line to stderr naming the lock file(s), so a wait
    on a lock left by a stopped run is not silent. The step itself is not interrupted."""
    done = threading.Event()

    def note() -> None:
        if done.wait(after_s):
            return
        locks = extension_build_locks()
        if locks:
            print(f"note: waiting {after_s:.0f} s so far for a DeepSpeed op build; build lock(s) "
                  f"{', '.join(map(str, locks))}: if no other build is running (a run stopped while compiling "
                  "leaves its lock), delete the file", file=sys.stderr, flush=True)

    watcher = threading.Thread(target=note, name="build-lock-note", daemon=True)
    watcher.start()
    try:
        yield
    finally:
        done.set()
        watcher.join()


def init_distributed(dist_env: DistEnv) -> None:
    """Select this rank's accelerator device, then initialise torch.distributed through DeepSpeed
    (nccl on GPUs, gloo on CPU).

    `deepspeed.init_distributed` does not select a device, so without `select_device` every rank
    of a node would allocate on device 0. A lone process without a launcher gets a local
    rendezvous so the same code path runs.
    """
    import deepspeed

    select_device(dist_env.local_rank)

    os.environ.setdefault("RANK", str(dist_env.rank))
    os.environ.setdefault("WORLD_SIZE", str(dist_env.world_size))
    os.environ.setdefault("LOCAL_RANK", str(dist_env.local_rank))
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    if "MASTER_PORT" not in os.environ:
        if dist_env.world_size > 1:
            raise RuntimeError("MASTER_PORT is not set; launch with torchrun/deepspeed or set it")
        os.environ["MASTER_PORT"] = str(_free_port())
    if not torch.distributed.is_initialized():
        with build_lock_note():  # the first init builds DeepSpeed's CPU communication op
            deepspeed.init_distributed(dist_backend=_backend(), auto_mpi_discovery=False)


def shutdown_distributed() -> None:
    """Leave the process group cleanly at the end of a rank's program: every rank meets, then the group is
    destroyed, so no communication thread is still running while the interpreter exits (which can abort
    a rank and fail the launcher)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


def build_comm_ops() -> None:
    """Compile (or load from the extension cache) the communication op that DeepSpeed's first
    `init_distributed` builds on this accelerator (the CPU one JIT-compiles a shared-memory op, ~30 s);
    called early, the compile can overlap other work."""
    from deepspeed.comm.torch import build_shm_op

    with build_lock_note():
        build_shm_op()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _backend() -> str:
    from deepspeed.accelerator import get_accelerator

    return get_accelerator().communication_backend_name()


def select_device(local_rank: int) -> None:
    """Make device `local_rank` this process's current accelerator device (no-op on CPU)."""
    from deepspeed.accelerator import get_accelerator

    accelerator = get_accelerator()
    if accelerator.device_name() != "cpu":
        accelerator.set_device(local_rank)


def deepspeed_config(ds: DeepSpeedConfig, loop: LoopConfig) -> dict[str, Any]:
    """The DeepSpeed JSON config for this run (client AdamW, no DeepSpeed scheduler)."""
    zero = {"stage": ds.zero_stage, **ds.zero_optimization}
    return {
        "train_micro_batch_size_per_gpu": loop.micro_batch_size,
        "gradient_accumulation_steps": loop.grad_accum,
        "gradient_clipping": loop.grad_clip,
        "zero_optimization": zero,
        "bf16": {"enabled": ds.precision == "bf16"},
        "fp16": {"enabled": False},
        "zero_allow_untested_optimizer": True,
        "zero_force_ds_cpu_optimizer": False,
        "steps_per_print": 2**31 - 1,
        "wall_clock_breakdown": False,
    }


def build_engine(module: nn.Module, optimizer: torch.optim.Optimizer, schedule_fn: Any,
                 ds_config: dict[str, Any]) -> Any:
    """Wrap `module` and the client optimizer in a DeepSpeed engine with a LambdaLR schedule.

    The scheduler gets its own copy of `schedule_fn`: a checkpoint load updates a callable multiplier's
    fields in place (LambdaLR's state dict), and the caller's object must keep this run's schedule so that
    `train.optim.restore_schedule` can put it back.
    """
    import deepspeed

    def make_scheduler(opt: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LambdaLR:
        return torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda=copy.copy(schedule_fn))

    engine, _, _, _ = deepspeed.initialize(model=module, optimizer=optimizer,
                                           lr_scheduler=make_scheduler, config=ds_config)
    return engine


def all_reduce_max(value: float, dev: torch.device) -> float:
    """Max of a scalar over all ranks (used to agree on skip/stop decisions)."""
    t = torch.tensor([float(value)], dtype=torch.float64, device=dev)
    if torch.distributed.is_initialized():
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
    return float(t.item())


def all_reduce_sum(values: list[float], dev: torch.device) -> list[float]:
    """Element-wise sum of a small float vector over all ranks."""
    t = torch.tensor(values, dtype=torch.float64, device=dev)
    if torch.distributed.is_initialized():
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.SUM)
    return t.tolist()
