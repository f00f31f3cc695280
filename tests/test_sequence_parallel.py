"""Ulysses sequence parallelism (train/sequence_parallel.py) on 2 CPU ranks (gloo): loss and gradients
equal the single-process `lm_loss` within fp32 tolerance, with padding, an odd length, a chunked
visibility mask, a shard without supervised tokens and a packed row; the vision tower keeps plain SDPA; bad degrees
and configs are refused with one line."""

from __future__ import annotations

import copy
import os
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from helpers import free_port
from model import VideoXL2ForCausalLM, build_preset
from train.config import ConfigError
from train.sequence_parallel import ULYSSES_SDPA, check_degree, data_parallel


def test_degree_checks_name_the_field() -> None:
    check_degree(2, 28, 4)  # Qwen2.5-7B: 28 query heads, 4 KV heads
    check_degree(4, 28, 4)
    with pytest.raises(ConfigError, match=r"loop.sequence_parallel: 3 does not divide the LLM's 28 attention heads"):
        check_degree(3, 28, 4)
    with pytest.raises(ConfigError, match="loop.sequence_parallel: 7 neither divides"):
        check_degree(7, 28, 4)
    check_degree(8, 16, 4)  # KV heads replicated x2
    assert data_parallel(5, 8, 2) == (2, 4)
    with pytest.raises(ConfigError, match="does not divide the world size 6"):
        data_parallel(0, 6, 4)


def _batch(cfg, seed: int) -> dict[str, torch.Tensor]:
    """Two samples, 2 groups of frames each, lengths 31 and 25 (odd, right-padded), labels on their tails."""
    g = torch.Generator().manual_seed(seed)
    tokens = cfg.tokens_per_group
    rows, lengths = [], (31, 25)
    for n in lengths:
        ids = torch.randint(4, cfg.text_config.vocab_size, (n,), generator=g)
        ids[2:2 + 2 * tokens] = cfg.vision_pad_token_id
        rows.append(ids)
    length = max(lengths)
    input_ids = torch.zeros(2, length, dtype=torch.long)
    mask = torch.zeros(2, length, dtype=torch.long)
    labels = torch.full((2, length), -100)
    for i, (ids, n) in enumerate(zip(rows, lengths, strict=True)):
        input_ids[i, :n], mask[i, :n] = ids, 1
    labels[0, 24:31] = input_ids[0, 24:31]
    labels[1, 21:25] = input_ids[1, 21:25]
    pixels = torch.randn(2 * 2 * cfg.frames_per_group, 3, cfg.image_size, cfg.image_size, generator=g)
    return {"input_ids": input_ids, "attention_mask": mask, "labels": labels, "pixel_values": pixels}


def _visibility(mask: torch.Tensor) -> torch.Tensor:
    """A [B, 1, L, L] boolean mask: causal, over real tokens, with keys 5..9 hidden from queries >= 22."""
    seq = mask.shape[1]
    causal = torch.tril(torch.ones(seq, seq, dtype=torch.bool))
    vis = causal & mask.bool()[:, None, None, :]
    vis[:, :, 22:, 5:10] = False
    return vis | torch.eye(seq, dtype=torch.bool)


def _packed(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`_batch`'s two samples packed into one row of 31 + 25 = 56 tokens: position ids restart at the second
    sample, the block-diagonal causal mask of `model.packing` keeps each sample to itself."""
    from model.packing import block_causal_mask

    lengths = batch["attention_mask"].sum(dim=1).tolist()
    row = {k: torch.cat([batch[k][i, :n] for i, n in enumerate(lengths)])[None] for k in ("input_ids", "labels")}
    segments = torch.cat([torch.full((n,), i) for i, n in enumerate(lengths)])[None]
    positions = torch.cat([torch.arange(n) for n in lengths])[None]
    return {**row, "attention_mask": block_causal_mask(segments), "position_ids": positions,
            "pixel_values": batch["pixel_values"]}


def _worker(rank: int, world: int, port: int, out: str) -> None:
    import deepspeed

    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    deepspeed.init_distributed(dist_backend="gloo", auto_mpi_discovery=False)  # Ulysses uses deepspeed.comm
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    from train import sequence_parallel as sp_mod

    torch.manual_seed(0)
    cfg = build_preset("tiny")
    model = VideoXL2ForCausalLM(cfg).float().train()
    reference = copy.deepcopy(model)
    sdpa_before = ALL_ATTENTION_FUNCTIONS["sdpa"]
    sp = sp_mod.new_group(rank, world, world)
    sp_mod.install(model.llm, sp)
    results: dict[str, torch.Tensor] = {}
    # the vision tower is untouched: its own attention, the process-wide "sdpa" unchanged
    results["vision_impl_ok"] = torch.tensor(float(
        model.vision_tower.config._attn_implementation == "sdpa" and ALL_ATTENTION_FUNCTIONS["sdpa"] is sdpa_before
        and model.llm.config._attn_implementation == ULYSSES_SDPA))
    for case, seed in (("padded", 1), ("visibility", 2), ("empty_shard", 3), ("packed", 4)):
        batch = _batch(cfg, seed)
        if case == "packed":
            batch = _packed(batch)
        mask = batch["attention_mask"]
        if case == "visibility":
            mask = _visibility(mask)
        if case == "empty_shard":  # every supervised token in the first of the 2 shards (16 positions each)
            batch["labels"][:, 6:] = -100
            batch["labels"][0, 4:6] = batch["input_ids"][0, 4:6]
            batch["labels"][1, 3:5] = batch["input_ids"][1, 3:5]
        for net in (model, reference):
            net.zero_grad(set_to_none=True)
        positions = batch.get("position_ids")
        loss = sp_mod.lm_loss(model, sp, batch["input_ids"], mask, batch["labels"], batch["pixel_values"],
                              position_ids=positions)
        loss.backward()
        ref = reference.lm_loss(batch["input_ids"], mask, batch["labels"], batch["pixel_values"], position_ids=positions)
        ref.backward()
        results[f"{case}/loss"] = loss.detach()
        results[f"{case}/ref_loss"] = ref.detach()
        for (name, p), (_, q) in zip(model.named_parameters(), reference.named_parameters(), strict=True):
            grad = p.grad.detach().clone()
            torch.distributed.all_reduce(grad)  # DeepSpeed averages over all ranks: mean = sum / P
            results[f"{case}/grad/{name}"] = grad / world
            results[f"{case}/ref_grad/{name}"] = q.grad.detach()
    torch.save(results, f"{out}/rank{rank}.pt")
    torch.distributed.destroy_process_group()


@pytest.mark.slow
def test_two_rank_loss_and_grads_equal_single_process(tmp_path: Path) -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    mp.spawn(_worker, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True)
    for rank in range(2):
        res = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        assert res["vision_impl_ok"].item() == 1.0
        for case in ("padded", "visibility", "empty_shard", "packed"):
            torch.testing.assert_close(res[f"{case}/loss"], res[f"{case}/ref_loss"], rtol=1e-5, atol=1e-6)
            names = [k.split("/grad/", 1)[1] for k in res if k.startswith(f"{case}/grad/")]
            assert names
            for name in names:
                torch.testing.assert_close(res[f"{case}/grad/{name}"], res[f"{case}/ref_grad/{name}"],
                                           rtol=1e-4, atol=1e-6, msg=f"{case} {name}")
    first = torch.load(tmp_path / "rank0.pt", weights_only=True)
    assert not torch.isclose(first["visibility/loss"], first["padded/loss"])  # the mask changed something


@pytest.mark.parametrize("overrides", [
    ["stage=sft", "loop.sequence_parallel=0"],
    ["stage=dts", "loop.sequence_parallel=2"],  # no LLM in the DTS reconstruction loss
    ["stage=long", "loop.sequence_parallel=2", "+stage.chunked_attention={fraction: 0.5, bilevel_fraction: 0.5}"],
    ["stage=long", "loop.sequence_parallel=2", "+stage.chunked_attention.fraction=0.5"],  # ranks would disagree
    ["stage=sft", "loop.sequence_parallel=3"],  # the tiny LLM has 4 heads
])
def test_bad_sequence_parallel_config_is_one_line(overrides: list[str]) -> None:
    from test_config import composed

    from train.build import check_run
    from train.config import parse_run_config

    with pytest.raises(ConfigError) as err:
        check_run(parse_run_config(composed(["model=tiny", *overrides])), check_paths=False)
    assert err.value.field == "loop.sequence_parallel" and "\n" not in str(err.value)


def _train(synth: Path, out: Path, ranks: int, *extra: str) -> dict[int, dict]:
    import json
    import subprocess
    import sys

    from helpers import subprocess_env

    args = ["stage=sft", "model=tiny", "data=synth", f"data.root={synth}", "preset=tiny", "stage.init_from=null",
            f"output_root={out}", "deepspeed.precision=fp32", "loop.max_steps=2", "loop.micro_batch_size=2",
            "loop.loader_workers=0", "logging.tqdm=false", "checkpoint.export=false", *extra]
    launch = [sys.executable, "-m", "train"] if ranks == 1 else [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(ranks), "--master_port",
        str(free_port()), "-m", "train"]
    proc = subprocess.run(launch + args, cwd=Path(__file__).resolve().parents[1],
                          env=subprocess_env(WANDB_MODE="disabled"), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    merged: dict[int, dict] = {}  # a step's training record and, when validated, its val record
    for r in map(json.loads, (out / "sft" / "metrics.jsonl").read_text().splitlines()):
        if "loss" in r or "val/loss" in r:
            merged.setdefault(r["step"], {}).update(r)
    return merged


@pytest.mark.slow
def test_trainer_two_ranks_one_sequence_equals_one_rank(synth: Path, tmp_path: Path) -> None:
    """`python -m train` with loop.sequence_parallel=2 on 2 ranks (one data-parallel group, so the same
    batches) gives the single-rank run's per-step losses and gradient norms, under ZeRO-2 and ZeRO-3, and
    the same validation loss over the same val samples (the group's ranks score one slice, counted once);
    with packed rows too (under ZeRO-3)."""
    ref = _train(synth, tmp_path / "one", 1, "deepspeed=zero2", "loop.eval_every_steps=1")
    for zero in ("zero2", "zero3"):
        got = _train(synth, tmp_path / zero, 2, f"deepspeed={zero}", "loop.sequence_parallel=2",
                     "loop.eval_every_steps=1")
        assert sorted(got) == sorted(ref) == [1, 2]
        for step in ref:
            for key in ("loss", "grad_norm", "val/loss"):
                assert got[step][key] == pytest.approx(ref[step][key], rel=1e-5), (zero, step, key)
            assert got[step]["val/samples"] == ref[step]["val/samples"] > 0
            assert got[step]["samples_per_s"] * got[step]["step_time_s"] == pytest.approx(2.0)  # counted once
    # packed rows (loop.packing): each sample's positions and block-diagonal attention survive the sharding,
    # with ZeRO-3 gathering the sharded weights
    packing = "loop.packing={max_tokens: 1024}"
    ref = _train(synth, tmp_path / "one_packed", 1, "deepspeed=zero2", packing)
    got = _train(synth, tmp_path / "packed", 2, "deepspeed=zero3", "loop.sequence_parallel=2", packing)
    assert sorted(got) == sorted(ref) == [1, 2]
    for step in ref:
        for key in ("loss", "grad_norm"):
            assert got[step][key] == pytest.approx(ref[step][key], rel=1e-5), ("packed", step, key)
        assert got[step]["samples_per_s"] == pytest.approx(ref[step]["samples_per_s"] * ref[step]["step_time_s"]
                                                           / got[step]["step_time_s"])  # counted once
