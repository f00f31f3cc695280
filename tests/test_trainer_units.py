"""Trainer mechanics in one process: schedule, param groups, step loop (non-finite handling),
checkpoint discovery/atomicity/RNG, signals, semantic-guided masking, FLOP model."""

from __future__ import annotations

import json
import math
import os
import pickle
import random
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from train import checkpoint as ckpt
from train.config import MaskingConfig, ScheduleConfig
from train.engine import DistEnv, read_dist_env
from train.logging_utils import FlopModel
from train.objectives import TrainModule, normalise_tokens, semantic_guided_mask
from train.optim import build_schedule, param_groups, set_trainable
from train.signals import StopRequest
from train.trainer import LoopState, NonFiniteLossError, StepLoop


def test_schedule_warmup_then_cosine() -> None:
    fn = build_schedule(ScheduleConfig(name="cosine", warmup_ratio=0.1, min_lr_ratio=0.2), 100)
    values = [fn(s) for s in range(100)]
    assert fn.warmup_steps == 10
    assert all(a < b for a, b in zip(values[:9], values[1:10], strict=True))  # rising warmup
    assert values[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(values[10:], values[11:], strict=False))  # decaying
    assert fn(100) == pytest.approx(0.2) and values[-1] > 0.2
    const = build_schedule(ScheduleConfig(name="constant", warmup_ratio=0.0), 10)
    assert [const(s) for s in range(10)] == [1.0] * 10


class Two(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4))
        self.b = nn.Linear(4, 1)


def test_param_groups_exclude_frozen_and_carry_lrs() -> None:
    m = Two()
    mods = {"a": m.a, "b": m.b}
    counts = set_trainable(mods, ["b"])
    assert counts == {"b": 5}
    assert not any(p.requires_grad for p in m.a.parameters())
    groups = param_groups({"b": m.b}, {"b": 0.5}, weight_decay=0.1)
    ids = {id(p) for g in groups for p in g["params"]}
    assert ids == {id(p) for p in m.b.parameters()}
    assert {g["lr"] for g in groups} == {0.5}
    assert {g["name"]: g["weight_decay"] for g in groups} == {"b/decay": 0.1, "b/no_decay": 0.0}
    with pytest.raises(ValueError, match="stage.trainable"):
        set_trainable(mods, ["c"])


def test_weight_decay_excludes_by_module_type_not_name() -> None:
    from transformers.models.qwen2.modeling_qwen2 import Qwen2RMSNorm

    m = nn.Module()
    m.tok = nn.Embedding(10, 4)  # an embedding whose name says nothing
    m.final = Qwen2RMSNorm(4)
    m.groups = nn.GroupNorm(2, 4)
    m.normalizer = nn.Linear(4, 4)  # a projection whose name contains "norm"
    set_trainable({"m": m}, ["m"])
    groups = {g["name"]: {id(p) for p in g["params"]} for g in param_groups({"m": m}, {"m": 1.0}, 0.1)}
    assert groups["m/decay"] == {id(m.normalizer.weight)}
    assert groups["m/no_decay"] == {id(p) for p in (m.tok.weight, m.final.weight, m.groups.weight,
                                                     m.groups.bias, m.normalizer.bias)}


class PlainEngine:
    """The engine surface StepLoop uses, over a plain module + AdamW (single process)."""

    def __init__(self, module: nn.Module, lr: float = 0.05) -> None:
        self.module = module
        self.optimizer = torch.optim.AdamW([{"params": list(module.parameters()), "lr": lr, "name": "m/decay"}])
        self.steps = 0

    def __call__(self, **batch: torch.Tensor) -> torch.Tensor:
        return self.module(**batch)

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def step(self) -> None:
        self.optimizer.step()
        self.optimizer.zero_grad()
        self.steps += 1

    def get_global_grad_norm(self) -> float:
        return 0.0


class Regress(nn.Module):
    """Loss = mean squared error of a linear map; a batch flagged `labels[0,0] < 0` yields NaN."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Linear(3, 1)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor,
                pixel_values: torch.Tensor) -> torch.Tensor:
        x = pixel_values.flatten(1)[:, :3]
        loss = (self.w(x).squeeze(-1) - 1.0).pow(2).mean()
        return loss * float("nan") if labels[0, 0] < 0 else loss


def batches(flags: list[bool]) -> list[dict[str, torch.Tensor]]:
    out = []
    g = torch.Generator().manual_seed(0)
    for bad in flags:
        out.append({"input_ids": torch.full((2, 5), 7), "attention_mask": torch.ones(2, 5, dtype=torch.long),
                    "labels": torch.full((2, 5), -1 if bad else 1),
                    "pixel_values": torch.randn(2, 3, 1, 1, generator=g)})
    return out


def make_loop(engine: PlainEngine, accum: int, max_bad: int) -> StepLoop:
    return StepLoop(engine, DistEnv(0, 1, 0), torch.device("cpu"), grad_accum=accum,
                    max_consecutive_nonfinite=max_bad, vision_pad_token_id=7, flops=None,
                    peak_flops_per_device=1.0)


def test_nonfinite_micro_batches_are_skipped_and_counted() -> None:
    engine = PlainEngine(Regress())
    loop = make_loop(engine, accum=2, max_bad=3)
    it = iter(batches([False, True, True, False, False, False]))
    state = LoopState()
    before = engine.module.w.weight.detach().clone()
    m1 = loop.one_step(it, state, {"bad_json": 2})
    assert engine.steps == 2 and state.step == 1  # the 2 NaN batches took no optimizer step
    assert state.nonfinite_total == 2 and m1["nonfinite_total"] == 2 and state.micro_batches == 4
    assert math.isfinite(m1["loss"]) and m1["skipped/bad_json"] == 2
    assert m1["visual_tokens_per_sample"] == 5 and m1["samples_per_s"] > 0
    assert not torch.equal(before, engine.module.w.weight)
    assert torch.isfinite(engine.module.w.weight).all()


def test_consecutive_nonfinite_stops_with_clear_error() -> None:
    loop = make_loop(PlainEngine(Regress()), accum=1, max_bad=3)
    with pytest.raises(NonFiniteLossError, match="max_consecutive_nonfinite=3"):
        loop.one_step(iter(batches([True, True, True, False])), LoopState(), {})
    loop = make_loop(PlainEngine(Regress()), accum=1, max_bad=3)
    state = LoopState()
    it = iter(batches([True, True, False, True, True, False]))
    loop.one_step(it, state, {})
    loop.one_step(it, state, {})  # the run of NaNs was broken by a finite batch
    assert state.step == 2 and state.nonfinite_total == 4


def test_exhausted_batches_raise_naming_the_rank() -> None:
    loop = StepLoop(PlainEngine(Regress()), DistEnv(3, 4, 3), torch.device("cpu"), grad_accum=2,
                    max_consecutive_nonfinite=3, vision_pad_token_id=7, flops=None, peak_flops_per_device=1.0)
    with pytest.raises(RuntimeError, match="rank 3: the train split's batch iterator ended"):
        loop.one_step(iter(batches([False])), LoopState(), {})


def test_one_step_reduces_once(monkeypatch: pytest.MonkeyPatch) -> None:
    import train.trainer as trainer

    calls: list[int] = []

    def counting_sum(values: list[float], dev: torch.device) -> list[float]:
        calls.append(len(values))
        return list(values)

    monkeypatch.setattr(trainer, "all_reduce_sum", counting_sum)
    metrics = make_loop(PlainEngine(Regress()), accum=2, max_bad=3).one_step(
        iter(batches([False, False])), LoopState(), {})
    assert len(calls) == 1 and math.isfinite(metrics["loss"])


def test_init_distributed_selects_the_local_rank_device(monkeypatch: pytest.MonkeyPatch) -> None:
    import deepspeed
    import deepspeed.accelerator

    from train.engine import init_distributed

    class FakeAccelerator:
        def __init__(self) -> None:
            self.selected: list[int] = []

        def device_name(self) -> str:
            return "cuda"

        def set_device(self, index: int) -> None:
            self.selected.append(index)

        def communication_backend_name(self) -> str:
            return "nccl"

    fake = FakeAccelerator()
    monkeypatch.setattr(deepspeed.accelerator, "get_accelerator", lambda: fake)
    monkeypatch.setattr(deepspeed, "init_distributed", lambda **_: None)
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: False)
    # init_distributed writes these into os.environ: register each with monkeypatch first (setenv,
    # then delenv) so that they are restored after the test even when they were unset before it
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR"):
        monkeypatch.setenv(key, "")
        monkeypatch.delenv(key)
    monkeypatch.setenv("MASTER_PORT", "29999")
    init_distributed(DistEnv(rank=5, world_size=8, local_rank=1))
    assert fake.selected == [1]


def test_discard_unmarks_before_deleting(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import shutil

    root = tmp_path / "checkpoints"
    d = root / ckpt.step_dir_name(6)
    (d / "ds").mkdir(parents=True)
    (d / ckpt.COMPLETE).write_text("ok")

    real_rmtree = shutil.rmtree

    def killed_mid_delete(path: Path, ignore_errors: bool = False) -> None:
        real_rmtree(Path(path) / "ds")
        raise KeyboardInterrupt  # the process dies here

    monkeypatch.setattr(ckpt.shutil, "rmtree", killed_mid_delete)
    with pytest.raises(KeyboardInterrupt):
        ckpt.discard(d)
    assert ckpt.list_complete(root) == []  # the half-deleted step is not resumable


def test_pickled_object_in_a_checkpoint_is_refused_naming_the_global(tmp_path: Path) -> None:
    class Payload:
        def __reduce__(self) -> tuple:
            return (exec, ("raise SystemExit('payload ran')",))

    path = tmp_path / "states.pt"
    torch.save({"w": torch.zeros(1), "evil": Payload()}, path)
    with pytest.raises(pickle.UnpicklingError) as raw:
        with ckpt.weights_only_loading():
            torch.load(path)
    err = ckpt.refused(f"checkpoint {tmp_path}", raw.value)
    assert isinstance(err, ckpt.UnsafeCheckpointError)
    assert str(err).startswith(f"checkpoint {tmp_path}: refused to unpickle exec")


def test_rng_state_round_trip() -> None:
    meta, tensors = ckpt.rng_state()
    json.dumps(meta)
    expect = (random.random(), float(np.random.rand()), float(torch.rand(1)))
    ckpt.set_rng_state(json.loads(json.dumps(meta)), tensors)
    assert (random.random(), float(np.random.rand()), float(torch.rand(1))) == expect


def test_resume_discovery_ignores_incomplete(tmp_path: Path) -> None:
    root = tmp_path / "checkpoints"
    assert ckpt.resolve_resume("auto", root) is None
    for step, complete in ((2, True), (4, True), (6, False)):
        d = root / ckpt.step_dir_name(step)
        d.mkdir(parents=True)
        if complete:
            (d / ckpt.COMPLETE).write_text("ok")
    (root / ".tmp-step-00000008").mkdir()
    assert ckpt.resolve_resume("auto", root) == root / ckpt.step_dir_name(4)
    assert ckpt.resolve_resume(None, root) is None
    assert [p.name for p in ckpt.list_complete(root)] == ["step-00000002", "step-00000004"]
    with pytest.raises(FileNotFoundError, match="checkpoint.resume"):
        ckpt.resolve_resume(str(root / ckpt.step_dir_name(6)), root)


class FakeSaver:
    def __init__(self, fail: bool) -> None:
        self.fail = fail

    def save_checkpoint(self, path: str, tag: str) -> None:
        (Path(path) / tag).mkdir()
        (Path(path) / tag / "state.bin").write_bytes(b"x")
        if self.fail:
            raise OSError("disk full")


def test_save_is_atomic_and_prunes(tmp_path: Path) -> None:
    root = tmp_path / "ck"
    for step in (1, 2, 3):
        ckpt.save_checkpoint(FakeSaver(False), root, step, {"a": step}, {"pos": step}, rank=0, keep_last_k=2)
    assert [p.name for p in ckpt.list_complete(root)] == ["step-00000002", "step-00000003"]
    assert json.loads((root / "step-00000003" / "trainer_state.json").read_text())["step"] == 3
    assert json.loads((root / "step-00000003" / "rank00000.json").read_text())["loader"] == {"pos": 3}
    with pytest.raises(OSError):
        ckpt.save_checkpoint(FakeSaver(True), root, 4, {}, {}, rank=0, keep_last_k=2)
    assert ckpt.resolve_resume("auto", root) == root / "step-00000003"  # the failed save is invisible


def test_stop_request_catches_sigterm() -> None:
    with StopRequest() as stop:
        assert not stop.requested
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.requested and stop.signum == signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL or callable(signal.getsignal(signal.SIGTERM))


def test_dist_env_from_launchers() -> None:
    assert read_dist_env({"RANK": "3", "WORLD_SIZE": "8", "LOCAL_RANK": "1"}) == DistEnv(3, 8, 1)
    assert read_dist_env({"SLURM_PROCID": "5", "SLURM_NTASKS": "6", "SLURM_LOCALID": "2"}) == DistEnv(5, 6, 2)
    assert read_dist_env({}) == DistEnv(0, 1, 0)


def test_semantic_guided_mask_mixes_saliency_and_random() -> None:
    torch.manual_seed(0)
    tokens = torch.randn(3, 4, 36, 8) * 0.1
    tokens[:, :, 5] += 10.0  # two clearly salient tokens per frame
    tokens[:, :, 17] -= 10.0
    mask = semantic_guided_mask(tokens, mask_ratio=0.5, semantic_fraction=0.25)
    assert mask.shape == (3, 4, 36) and (mask.sum(-1) == 18).all()
    assert mask[..., 5].all() and mask[..., 17].all()
    torch.manual_seed(1)
    other = semantic_guided_mask(tokens, mask_ratio=0.5, semantic_fraction=0.25)
    assert not torch.equal(mask, other)  # the random share differs with the seed
    assert other[..., 5].all() and other[..., 17].all()
    norm = normalise_tokens(tokens)
    assert torch.allclose(norm.mean(-1), torch.zeros(3, 4, 36), atol=1e-4)


def test_dts_objective_trains_only_declared_modules() -> None:
    from model import VideoXL2ForCausalLM, build_preset

    torch.manual_seed(0)
    module = TrainModule(VideoXL2ForCausalLM(build_preset("tiny")), "dts_reconstruction",
                         MaskingConfig(decoder_dim=32, decoder_heads=2))
    set_trainable(module.trainable_modules(), ["dts", "dts_decoder"])
    cfg = module.model.config
    pix = torch.randn(8, 3, cfg.image_size, cfg.image_size)
    ids = torch.zeros(1, 2, dtype=torch.long)
    loss = module(ids, ids, ids, pix)
    loss.backward()
    assert torch.isfinite(loss) and loss > 0
    grads = {n: any(p.grad is not None and p.grad.abs().sum() > 0 for p in m.parameters())
             for n, m in module.trainable_modules().items()}
    assert grads == {"vision_tower": False, "dts": True, "projector": False, "llm": False, "dts_decoder": True}
    empty = module(ids, ids, ids, pix[:0])
    assert float(empty.detach()) == 0.0
    assert not any(k.startswith("dts_decoder") for k in module.model.state_dict())


def test_flop_model_factors() -> None:
    fm = FlopModel(params={"vision_tower": 0, "dts": 0, "projector": 0, "llm": 1000}, trainable={"llm"},
                   patches_per_frame=4, vision_layers=1, vision_hidden=1, grid_tokens=4, frames_per_group=4,
                   llm_layers=2, llm_hidden=8)
    text = fm.step_flops(frames=0, tokens=10, seq_sq_sum=100)
    assert text == pytest.approx(6 * 1000 * 10 + 3 * 2 * 2 * 8 * 100)
    frozen_llm = FlopModel(**{**fm.__dict__, "trainable": {"projector"}})
    assert frozen_llm.step_flops(0, 10, 100) == pytest.approx(text * 2 / 3)  # activation grads only
    none = FlopModel(**{**fm.__dict__, "trainable": set()})
    assert none.step_flops(0, 10, 100) == pytest.approx(text / 3)


def test_epoch_based_steps_follow_the_data(tmp_path: Path) -> None:
    import subprocess
    import sys

    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from train.build import total_steps
    from train.config import parse_run_config

    repo = Path(__file__).resolve().parents[1]
    subprocess.run([sys.executable, "-m", "data.synth", "--out", str(tmp_path), "--videos", "6", "--seed", "2"],
                   cwd=repo, check=True, capture_output=True, timeout=300)
    split = json.loads((tmp_path / "manifest.json").read_text())["splits"]["train"]
    samples = split["samples"]
    with initialize_config_dir(config_dir=str(repo / "conf"), version_base=None):
        cfg = compose(config_name="config", overrides=["stage=sft", f"data.root={tmp_path}", "stage.epochs=2",
                                                       "stage.steps=null", "loop.micro_batch_size=2",
                                                       "loop.grad_accum=1"])
    run = parse_run_config(OmegaConf.to_container(cfg, resolve=True))
    assert total_steps(run, world_size=2) == (2 * samples) // 4
    run.loop.max_steps = 7
    assert total_steps(run, world_size=2) == 7
    run.loop.max_steps = None  # an epoch counts only the samples the stage's task filter keeps
    run.stage.data.tasks = ["caption", "image_caption"]
    captions = split["tasks"]["caption"] + split["tasks"]["image_caption"]
    assert captions < samples
    assert total_steps(run, world_size=2) == max(1, (2 * captions) // 4)
    # a source's own `tasks` narrows it further: two sources over the same shards, one giving only captions
    import dataclasses

    from data.mix import DataSource
    from train.build import check_run
    from train.config import ConfigError

    run.stage.data.tasks = None
    run.data = dataclasses.replace(run.data, train=[DataSource("train-*.tar"),
                                                     DataSource("train-*.tar", tasks=["caption"])])
    assert total_steps(run, world_size=2) == (2 * (samples + split["tasks"]["caption"])) // 4  # 2 epochs
    run.stage.data.tasks = ["mcq"]  # a source whose tasks the stage never keeps is refused before compute
    with pytest.raises(ConfigError) as err:
        check_run(run, check_paths=False)
    assert err.value.field == "data.train[1].tasks" and "['caption'] has no task of stage.data.tasks ['mcq']" in str(err.value)


def test_restore_schedule_follows_the_runs_step_count_after_a_checkpoint_load() -> None:
    """A checkpoint of a 7-step run resumed with 9 steps: the loaded LambdaLR state carries the saved
    multiplier (total 7, lr 0 from step 7 on); restore_schedule puts the 9-step cosine back."""
    from train.optim import WarmupCosine, restore_schedule

    def scheduler(total: int) -> torch.optim.lr_scheduler.LambdaLR:
        opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
        return torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda=WarmupCosine(total_steps=total, warmup_steps=1))

    old = scheduler(7)
    for _ in range(7):
        old.optimizer.step()
        old.step()
    new = scheduler(9)
    new.optimizer.load_state_dict(old.optimizer.state_dict())  # as a checkpoint load restores both
    new.load_state_dict(old.state_dict())
    assert new.lr_lambdas[0].total_steps == 7 and new.optimizer.param_groups[0]["lr"] == 0.0  # the trap
    wanted = WarmupCosine(total_steps=9, warmup_steps=1)
    assert restore_schedule(new, wanted) == 7
    assert new.optimizer.param_groups[0]["lr"] == pytest.approx(0.1 * wanted(7)) and wanted(7) > 0
    new.optimizer.step()
    new.step()
    assert new.optimizer.param_groups[0]["lr"] == pytest.approx(0.1 * wanted(8))
    assert restore_schedule(new, wanted) is None  # already this run's schedule


def test_a_build_waiting_on_a_lock_says_which_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """A step still running after `after_s` while a torch-extension build lock exists prints one line naming
    the lock; with no lock, or when the step ends in time, nothing is printed."""
    import time

    from train.engine import build_lock_note, extension_build_locks

    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    with build_lock_note(after_s=0.05):
        time.sleep(0.3)
    assert capsys.readouterr().err == "" and extension_build_locks() == []
    lock = tmp_path / "py311_cpu" / "deepspeed_shm_comm" / "lock"
    lock.parent.mkdir(parents=True)
    lock.touch()
    assert extension_build_locks() == [lock]
    with build_lock_note(after_s=5.0):
        pass  # ended in time: no note
    assert capsys.readouterr().err == ""
    with build_lock_note(after_s=0.05):
        time.sleep(0.3)
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and str(lock) in lines[0] and "delete the file" in lines[0]


def test_restore_schedule_refuses_the_schedulers_own_multiplier() -> None:
    """A scheduler built on the run's schedule object itself has had it overwritten by the checkpoint load:
    restore_schedule says so instead of finding "no difference"; build_engine hands LambdaLR a copy."""
    from train.optim import WarmupCosine, restore_schedule

    schedule = WarmupCosine(total_steps=9, warmup_steps=1)
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    with pytest.raises(ValueError, match="give the scheduler a copy"):
        restore_schedule(torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda=schedule), schedule)
