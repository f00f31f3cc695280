"""Activation memory per rank of one long sample with and without Ulysses sequence parallelism.

    python -m train.bench_sp [--sp 2] [--frames 512] [--preset wide|tiny]

Runs one training forward + backward of a single sample (`--frames` frames, the whole prompt
supervised on its answer) on the bench preset (model/bench_prefill.py: `wide` = the tiny model with
a 512-wide, 8-head LLM and 36 visual tokens per group) in fp32 on CPU, once on 1 process and once
on `--sp` gloo processes sharing the sequence (train/sequence_parallel.py). Activation memory is
measured as the bytes of the distinct tensors autograd saves for backward during the forward
(saved-tensor hooks; parameters excluded), split into the LLM's layers (what sequence parallelism
shards) and the rest (vision tower, DTS, projector, LM head on the supervised tokens), and printed
per rank. Peak device memory on a GPU adds transient buffers on top of these figures.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from typing import Any

import torch
import torch.multiprocessing as mp


class SavedBytes:
    """Bytes of distinct storages saved for backward, per phase ("llm" while the LLM's decoder runs)."""

    def __init__(self, params: set[int]) -> None:
        self.params = params
        self.seen: set[int] = set()
        self.bytes = {"llm": 0, "other": 0}
        self.phase = "other"

    def pack(self, t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        ptr = storage.data_ptr()
        if ptr not in self.params and ptr not in self.seen and storage.nbytes():
            self.seen.add(ptr)
            self.bytes[self.phase] += storage.nbytes()
        return t


def _sample(cfg: Any, frames: int) -> dict[str, torch.Tensor]:
    from model.bench_prefill import _prompt

    built = _prompt(cfg, frames)
    ids = torch.as_tensor(built.input_ids).reshape(1, -1)
    labels = torch.full_like(ids, -100)
    labels[:, -16:] = ids[:, -16:]  # an answer at the end, as in SFT
    gen = torch.Generator().manual_seed(0)
    pixels = torch.rand(frames, 3, cfg.image_size, cfg.image_size, generator=gen) * 2 - 1
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels, "pixel_values": pixels}


def _measure(rank: int, world: int, port: int, preset: str, frames: int, out: str) -> None:
    import deepspeed

    from model import VideoXL2ForCausalLM
    from model.bench_prefill import preset_config
    from train import sequence_parallel as sp_mod

    torch.set_num_threads(1)
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    deepspeed.init_distributed(dist_backend="gloo", auto_mpi_discovery=False)
    torch.manual_seed(0)
    cfg = preset_config(preset)
    model = VideoXL2ForCausalLM(cfg).float().train()
    batch = _sample(cfg, frames)
    sp = None
    if world > 1:
        sp = sp_mod.new_group(rank, world, world)
        sp_mod.install(model.llm, sp)
    counter = SavedBytes({p.untyped_storage().data_ptr() for p in model.parameters()})
    model.llm.model.register_forward_pre_hook(lambda *_: setattr(counter, "phase", "llm"))
    model.llm.model.register_forward_hook(lambda *_: setattr(counter, "phase", "other"))
    with torch.autograd.graph.saved_tensors_hooks(counter.pack, lambda t: t):
        if sp is None:
            loss = model.lm_loss(batch["input_ids"], batch["attention_mask"], batch["labels"], batch["pixel_values"])
        else:
            loss = sp_mod.lm_loss(model, sp, batch["input_ids"], batch["attention_mask"], batch["labels"],
                                  batch["pixel_values"])
    loss.backward()
    with open(f"{out}/rank{rank}.txt", "w") as f:
        f.write(f"{counter.bytes['llm']} {counter.bytes['other']} {batch['input_ids'].shape[1]} {float(loss.detach()):.6f}\n")
    torch.distributed.destroy_process_group()


def run(world: int, preset: str, frames: int) -> list[tuple[int, int, int, float]]:
    """Per rank: (LLM saved bytes, other saved bytes, sequence length, loss)."""
    from train.engine import _free_port

    with tempfile.TemporaryDirectory() as out:
        mp.spawn(_measure, args=(world, _free_port(), preset, frames, out), nprocs=world, join=True)
        rows = []
        for rank in range(world):
            with open(f"{out}/rank{rank}.txt") as f:
                llm, other, length, loss = f.read().split()
            rows.append((int(llm), int(other), int(length), float(loss)))
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m train.bench_sp", description=__doc__.split("\n\n")[0])
    p.add_argument("--sp", type=int, default=2, help="sequence-parallel degree to compare with 1")
    p.add_argument("--frames", type=int, default=512)
    p.add_argument("--preset", default="wide", choices=["tiny", "wide"])
    args = p.parse_args(argv)
    if args.sp < 2 or args.frames < 4:
        print("--sp must be >= 2 and --frames >= 4", file=sys.stderr)
        return 2
    mib = 2**20
    for world in (1, args.sp):
        rows = run(world, args.preset, args.frames)
        for rank, (llm, other, length, loss) in enumerate(rows):
            print(f"P={world} rank {rank}: {length} tokens, activations saved for backward "
                  f"{(llm + other) / mib:.1f} MiB (LLM layers {llm / mib:.1f} MiB, vision/DTS/projector/head "
                  f"{other / mib:.1f} MiB), loss {loss:.6f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
