"""Fault injection on the real trainer and loader (`python -m train` subprocesses, tiny preset, CPU).

- a SIGKILL that lands while a checkpoint is being written, or while an existing one is being
  replaced: the previous complete checkpoint is resumed, nothing half-written or half-deleted is
  loaded, and the resumed losses equal an uninterrupted run's;
- a SIGKILLed data-loader worker stops the run with the worker error (no hang); it resumes exactly;
- a fresh run in an output dir with an earlier run's checkpoints keeps its own (earlier ones set aside);
- corrupt inputs in a real shard set (truncated / zero-byte / text-as-mp4 videos, broken json, a
  truncated tar) are skipped and counted in metrics.jsonl and on the console; training exports;
- pickle payloads under `.pyd` / `.pickle` shard keys never run during training, and checkpoints or
  exported weights holding a pickled object are refused (the payload never runs);
- bad configs fail through the real entry point before DeepSpeed is even imported;
- 2 ranks x micro 1 and 1 rank x micro 1 x grad_accum 2 give the same per-step losses.

A SIGKILL during plain training steps followed by `checkpoint.resume=auto` is covered by
tests/test_trainer_resume.py (2 ranks, DTS stage); the mid-save case here also resumes exactly,
on one rank, the LM stage and with gradient accumulation.
"""

from __future__ import annotations

import json
import pickle
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import Any

import psutil
import pytest
import torch
from safetensors.torch import load_file
from test_faults import Payload, raw_tar

from data.shards import iter_shard
from helpers import free_port, kill_tree, last_losses, subprocess_env

REPO = Path(__file__).resolve().parents[1]
TOTAL = 6  # optimizer steps of the reference run
pytestmark = pytest.mark.slow


def run_env() -> dict[str, str]:
    """The shared subprocess environment (launcher variables stripped), wandb off: nothing here reads it."""
    return subprocess_env(WANDB_MODE="disabled")


def train_args(data_root: Path, out: Path, *extra: str) -> list[str]:
    """Hydra overrides of a short fp32 SFT run on the tiny preset, data read in stored order.

    `data.shuffle_buffer=1` keeps the stored sample order: the rank-equivalence and fault-count
    tests rely on knowing which samples a step sees (see their docstrings).
    """
    args = dict(a.split("=", 1) for a in (
        "stage=sft", "model=tiny", "data=synth", f"data.root={data_root}", "preset=tiny", "stage.init_from=null",
        f"output_root={out}", "deepspeed=zero2", "deepspeed.precision=fp32", f"loop.max_steps={TOTAL}",
        "data.shuffle_buffer=1", "logging.tqdm=false"))
    args.update(a.split("=", 1) for a in extra)  # a later value of the same key replaces the default
    return [f"{k}={v}" for k, v in args.items()]


def run_train(args: list[str], nproc: int = 1, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """`python -m train ARGS` (or under torchrun with `nproc` processes); output captured."""
    if nproc == 1:
        cmd = [sys.executable, "-m", "train", *args]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
               "--master_port", str(free_port()), "-m", "train", *args]
    return subprocess.run(cmd, cwd=REPO, env=run_env(), capture_output=True, text=True, timeout=timeout)


def records(stage_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (stage_dir / "metrics.jsonl").read_text().splitlines()]


def wait_for(pred: Any, proc: subprocess.Popen[Any], what: str, timeout: float = 300) -> None:
    """Poll `pred()` until true; fail if `proc` exits first or `timeout` seconds pass."""
    deadline = time.monotonic() + timeout
    while not pred():
        assert proc.poll() is None, f"the run exited (rc {proc.returncode}) before {what}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


@pytest.fixture(scope="module")
def reference(synth: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Uninterrupted 1-rank run, micro 1 x grad_accum 2; returns its stage directory."""
    out = tmp_path_factory.mktemp("reference")
    proc = run_train(train_args(synth, out, "loop.grad_accum=2", "checkpoint.every_steps=1000"))
    assert proc.returncode == 0, proc.stderr[-4000:]
    return out / "sft"


# --------------------------------------------------------------------------- data parallel


def test_two_ranks_equal_one_rank_with_grad_accum(synth: Path, reference: Path, tmp_path: Path) -> None:
    """Same global batch of 2 samples per step, split over ranks or over accumulation micro-steps.

    Data order: the train split is one shard, so with 2 ranks the loader splits by sample ordinal
    (rank r keeps samples r, r+2, ...), and with `shuffle_buffer=1` nothing is reordered. Rank 0
    and rank 1 then hold samples 2k and 2k+1 at step k, exactly the two micro-batches the single
    rank accumulates at step k. (1 rank x micro 2 would not match: the LM loss is a token mean
    over the micro-batch, which weights the two samples by their token counts.)
    """
    proc = run_train(train_args(synth, tmp_path, "loop.grad_accum=1", "checkpoint.every_steps=1000"), nproc=2)
    assert proc.returncode == 0, proc.stderr[-4000:]
    one, two = last_losses(reference), last_losses(tmp_path / "sft")
    assert sorted(one) == sorted(two) == list(range(1, TOTAL + 1))
    for step in one:
        assert two[step] == pytest.approx(one[step], rel=1e-5, abs=1e-6), step
    samples = {r["step"]: r["samples_per_s"] * r["step_time_s"] for r in records(tmp_path / "sft") if "loss" in r}
    assert all(round(n) == 2 for n in samples.values())  # both ranks contributed to every step
    a = load_file(str(reference / "export" / "model.safetensors"))
    b = load_file(str(tmp_path / "sft" / "export" / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=1e-5)


# --------------------------------------------------------------------------- SIGKILL mid-save

# Test-only hook: runs `python -m train` with torch.save wrapped so that the first file DeepSpeed
# writes into the temporary directory of checkpoint step BLOCK_STEP is cut to half its size, a
# marker is written, and the process blocks there until the test SIGKILLs it.
HOOK = r"""
import os, runpy, sys, threading, torch
from pathlib import Path
tmp_name, marker = ".tmp-step-%08d" % int(os.environ["FI_BLOCK_STEP"]), Path(os.environ["FI_MARKER"])
real_save = torch.save
def save(obj, f, *args, **kwargs):
    real_save(obj, f, *args, **kwargs)
    if isinstance(f, (str, os.PathLike)) and tmp_name in Path(f).parts:
        os.truncate(f, os.path.getsize(f) // 2)
        marker.write_text(str(f))
        threading.Event().wait(600)
        os._exit(3)
torch.save = save
sys.argv = ["train", *sys.argv[1:]]
runpy.run_module("train", run_name="__main__", alter_sys=True)
"""


# Test-only hook: the first shutil.rmtree of checkpoint directory step-BLOCK_STEP deletes only its
# ds/ subdirectory (as a real rmtree may, in directory order), writes a marker and blocks until killed.
RMTREE_HOOK = r"""
import os, runpy, shutil, sys, threading
from pathlib import Path
name, marker = "step-%08d" % int(os.environ["FI_BLOCK_STEP"]), Path(os.environ["FI_MARKER"])
real_rmtree = shutil.rmtree
def rmtree(path, *args, **kwargs):
    if Path(path).name == name:
        real_rmtree(Path(path) / "ds")
        marker.write_text(str(path))
        threading.Event().wait(600)
        os._exit(3)
    return real_rmtree(path, *args, **kwargs)
shutil.rmtree = rmtree
sys.argv = ["train", *sys.argv[1:]]
runpy.run_module("train", run_name="__main__", alter_sys=True)
"""


def test_sigkill_during_checkpoint_save_resumes_previous(synth: Path, reference: Path, tmp_path: Path) -> None:
    every, block = 2, 4  # checkpoints at 2 and 4; the save of step 4 is killed half-written
    args = train_args(synth, tmp_path, "loop.grad_accum=2", f"checkpoint.every_steps={every}")
    ckpts = tmp_path / "sft" / "checkpoints"
    marker = tmp_path / "in_save"
    proc = subprocess.Popen([sys.executable, "-c", HOOK, *args], cwd=REPO,
                            env={**run_env(), "FI_BLOCK_STEP": str(block), "FI_MARKER": str(marker)},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        tmp_dir = ckpts / f".tmp-step-{block:08d}"
        wait_for(lambda: tmp_dir.is_dir() and marker.exists(), proc, "the save of step 4 was under way")
    finally:
        kill_tree(proc)
    half = Path(marker.read_text())
    assert half.is_file() and tmp_dir in half.parents  # a half-written DeepSpeed file is on disk
    assert not (tmp_dir / "COMPLETE").exists() and not (ckpts / f"step-{block:08d}").exists()
    prev = ckpts / f"step-{every:08d}"
    assert (prev / "COMPLETE").is_file()
    # A directory with a step name but no COMPLETE marker (e.g. an interrupted copy) is no checkpoint
    # either: give it a higher step and trainer state, and half-written DeepSpeed files.
    decoy = ckpts / f"step-{block + 1:08d}"
    shutil.copytree(tmp_dir, decoy)
    (decoy / "trainer_state.json").write_text(json.dumps({"step": block + 1}))

    resumed = run_train([*args, "checkpoint.resume=auto"])
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    recs = records(tmp_path / "sft")
    at = next(i for i, r in enumerate(recs) if r.get("event") == "resume")
    assert recs[at]["step"] == every and Path(recs[at]["checkpoint"]) == prev
    after = {r["step"]: r["loss"] for r in recs[at + 1:] if "loss" in r}
    assert sorted(after) == list(range(every + 1, TOTAL + 1))  # the resumed run starts after step 2
    expect = last_losses(reference)
    assert after == {s: expect[s] for s in after}  # bit-identical to the uninterrupted run
    assert json.loads((tmp_path / "sft" / "export" / "export_info.json").read_text())["step"] == TOTAL
    a = load_file(str(reference / "export" / "model.safetensors"))
    b = load_file(str(tmp_path / "sft" / "export" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    # Phase 2: roll back to step 4 explicitly; the final save replaces the existing step-6, and the
    # kill lands while step-6 is being deleted (its DeepSpeed files already gone). It must no longer
    # count as complete: resume=auto goes back to step 4 and again reproduces the reference.
    marker.unlink()
    (tmp_path / "sft" / "export").rename(tmp_path / "export_phase1")
    proc = subprocess.Popen([sys.executable, "-c", RMTREE_HOOK, *args,
                             f"checkpoint.resume={ckpts / f'step-{block:08d}'}"], cwd=REPO,
                            env={**run_env(), "FI_BLOCK_STEP": str(TOTAL), "FI_MARKER": str(marker)},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(marker.exists, proc, "step-6 was being replaced")
    finally:
        kill_tree(proc)
    assert not (ckpts / f"step-{TOTAL:08d}" / "ds").exists()
    again = run_train([*args, "checkpoint.resume=auto"])
    assert again.returncode == 0, again.stderr[-4000:]
    recs = records(tmp_path / "sft")
    at = max(i for i, r in enumerate(recs) if r.get("event") == "resume")
    assert recs[at]["step"] == block, recs[at]
    after = {r["step"]: r["loss"] for r in recs[at + 1:] if "loss" in r}
    assert after == {s: expect[s] for s in range(block + 1, TOTAL + 1)}


def test_fresh_run_sets_an_earlier_runs_checkpoints_aside(synth: Path, reference: Path, tmp_path: Path) -> None:
    """A fresh run (resume=null) in an output dir that holds an earlier run's checkpoints at higher
    steps keeps its own newest ones (they are not pruned against the earlier steps), so a later
    resume=auto finds only its own; the earlier run's checkpoints are kept under another name."""
    ckpts = tmp_path / "sft" / "checkpoints"
    shutil.copytree(reference / "checkpoints", ckpts)
    earlier = sorted(p.parent.name for p in ckpts.glob("step-*/COMPLETE"))
    assert earlier and all(int(name[5:]) > 3 for name in earlier)
    proc = run_train(train_args(synth, tmp_path, "loop.max_steps=3", "loop.grad_accum=2", "checkpoint.every_steps=1",
                                "checkpoint.keep_last_k=2", "checkpoint.export=false"))
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert sorted(p.parent.name for p in ckpts.glob("step-*/COMPLETE")) == ["step-00000002", "step-00000003"]
    (moved,) = [d for d in ckpts.parent.iterdir() if d.name.startswith("checkpoints.")]
    assert sorted(p.parent.name for p in moved.glob("step-*/COMPLETE")) == earlier
    events = [r for r in records(tmp_path / "sft") if r.get("event") == "earlier_checkpoints_set_aside"]
    assert len(events) == 1 and Path(events[0]["moved_to"]) == moved


def test_sigkill_of_loader_worker_fails_fast_then_resumes(synth: Path, reference: Path, tmp_path: Path) -> None:
    """A data-loader worker killed mid-run makes the trainer exit with the worker error (no hang);
    resume=auto then continues from the last checkpoint and reproduces the reference losses."""
    args = train_args(synth, tmp_path, "loop.grad_accum=2", "checkpoint.every_steps=1", "loop.loader_workers=1")
    log = tmp_path / "stderr.txt"
    with log.open("w") as stderr:  # a file, not a pipe: nothing can block on a full pipe while we poll
        proc = subprocess.Popen([sys.executable, "-m", "train", *args], cwd=REPO, env=run_env(),
                                stdout=subprocess.DEVNULL, stderr=stderr)
    try:
        first = tmp_path / "sft" / "checkpoints" / f"step-{1:08d}" / "COMPLETE"
        wait_for(first.exists, proc, "the first checkpoint")
        workers = [c for c in psutil.Process(proc.pid).children(recursive=True) if c.name() == "pt_data_worker"]
        assert workers, "no data-loader worker process found"
        for w in workers:
            w.send_signal(signal.SIGKILL)
        proc.wait(timeout=120)  # bounded: a hang fails here
    finally:
        if proc.poll() is None:
            kill_tree(proc)
    err = log.read_text()
    assert proc.returncode != 0 and "DataLoader worker" in err and "killed" in err, err[-3000:]
    assert not (tmp_path / "sft" / "export").exists(), "the run finished before the worker was killed"

    resumed = run_train([*args, "checkpoint.resume=auto"])
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    recs = records(tmp_path / "sft")
    at = next(i for i, r in enumerate(recs) if r.get("event") == "resume")
    after = {r["step"]: r["loss"] for r in recs[at + 1:] if "loss" in r}
    expect = last_losses(reference)
    assert sorted(after) == list(range(recs[at]["step"] + 1, TOTAL + 1)) and after
    assert after == {s: expect[s] for s in after}


# --------------------------------------------------------------------------- corrupt / malicious shards


def faulty_shard_set(synth_root: Path, out: Path, marker: Path) -> tuple[int, dict[str, int]]:
    """One train shard: real synthetic samples, then one of each fault, then a tar cut mid-member.

    Returns (number of usable samples, expected skip counts for one pass over the shard). Every
    usable sample comes before every fault, so with micro batch 1 the first step of the second pass
    has met each fault exactly once.
    """
    real = [s for s in iter_shard(str(next(synth_root.glob("train-*.tar")))) if "mp4" in s.members]
    good, donor = real[:4], real[4]
    mp4 = donor.members["mp4"]
    payload = pickle.dumps(Payload(marker))
    members: list[tuple[str, bytes]] = []
    for s in good:
        members += [(f"{s.key}.{ext}", data) for ext, data in s.members.items()]
    members += [("evil.json", donor.members["json"]), ("evil.mp4", mp4), ("evil.pyd", payload)]
    expected = {"unknown_key": 1}
    faults = [("zero", donor.members["json"], b"", "empty_media"),
              ("truncmp4", donor.members["json"], mp4[: len(mp4) // 2], "bad_video"),
              ("textmp4", donor.members["json"], b"just some text, not a video\n" * 40, "bad_video"),
              ("badjson", donor.members["json"][: len(donor.members["json"]) // 2], mp4, "bad_json")]
    for key, js, video, reason in faults:
        members += [(f"{key}.json", js), (f"{key}.mp4", video)]
        expected[reason] = expected.get(reason, 0) + 1
    members.append(("evil2.pickle", payload))  # a sample made of nothing but a pickle
    expected["unknown_key"] += 1
    expected["missing_json"] = 1
    members += [("tail.json", donor.members["json"]), ("tail.mp4", mp4)]
    expected["bad_shard"] = 1
    out.mkdir(parents=True)
    shard = out / "train-000000.tar"
    raw_tar(shard, members)
    with tarfile.open(shard) as tar:
        tail = tar.getmember("tail.mp4")
    shard.write_bytes(shard.read_bytes()[: tail.offset_data + tail.size // 2])  # truncated tar
    return len(good) + 1, expected


def test_corrupt_and_malicious_shards_are_skipped_counted_and_never_run(synth: Path, tmp_path: Path) -> None:
    marker = tmp_path / "PWNED"
    probe = tmp_path / "probe"
    pickle.loads(pickle.dumps(Payload(probe)))  # the payload kind really runs when unpickled
    assert probe.exists()
    usable, expected = faulty_shard_set(synth, tmp_path / "data", marker)
    steps = usable + 1
    proc = run_train(train_args(tmp_path / "data", tmp_path / "out", f"loop.max_steps={steps}",
                                "loop.grad_accum=1", "loop.loader_workers=1", "checkpoint.every_steps=1000"))
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert not marker.exists()
    recs = [r for r in records(tmp_path / "out" / "sft") if "loss" in r]
    assert [r["step"] for r in recs] == list(range(1, steps + 1))
    skip_keys = sorted(k for k in recs[-1] if k.startswith("skipped/"))
    assert {k: int(recs[-1][k]) for k in skip_keys if recs[-1][k]} == {f"skipped/{k}": v for k, v in expected.items()}
    for prev, cur in zip(recs, recs[1:], strict=False):  # cumulative counts never go down
        assert all(cur[k] >= prev[k] for k in skip_keys)
    assert recs[-1]["decoder/decord"] > 0 and recs[-1]["decoder/pyav"] == 0  # samples each video decoder read
    console = [line for line in proc.stderr.splitlines() if line.startswith(f"step {steps} loss")]
    assert len(console) == 1, proc.stderr[-3000:]
    shown = console[0].split("skipped[", 1)[1].rstrip("]").split()
    assert dict(item.split("=") for item in shown) == {k: str(v) for k, v in expected.items()}
    export = tmp_path / "out" / "sft" / "export"
    assert json.loads((export / "export_info.json").read_text())["step"] == steps
    assert load_file(str(export / "model.safetensors"))
    assert not marker.exists()


# --------------------------------------------------------------------------- pickled checkpoints


def refusal(stderr: str, what: str) -> bool:
    """The trainer's refusal names what it was loading and the global the unpickler rejected."""
    return any(line.startswith(f"train.checkpoint.UnsafeCheckpointError: {what}: refused") and "exec" in line
               for line in stderr.splitlines())


def test_pickled_checkpoint_and_weights_are_refused(synth: Path, reference: Path, tmp_path: Path) -> None:
    """A resume checkpoint and an `init_from` export whose files carry a pickled object are refused
    (weights-only unpickling) with an error naming the offending global; the payload never runs."""
    marker = tmp_path / "PWNED"
    ckpt = tmp_path / "ckpt"
    shutil.copytree(reference / "checkpoints" / f"step-{TOTAL:08d}", ckpt)
    states = next((ckpt / "ds").glob("mp_rank_*_model_states.pt"))
    sd = torch.load(states, weights_only=False)  # our own file from the reference run
    sd["client_extra"] = Payload(marker)
    torch.save(sd, states)
    proc = run_train(train_args(synth, tmp_path / "resume", f"loop.max_steps={TOTAL + 2}",
                                "loop.grad_accum=2", f"checkpoint.resume={ckpt}"))
    assert proc.returncode != 0
    assert refusal(proc.stderr, f"checkpoint {ckpt}"), proc.stderr[-3000:]
    assert not marker.exists()
    assert not (tmp_path / "resume" / "sft" / "metrics.jsonl").exists()  # refused before any step

    export = tmp_path / "export"
    shutil.copytree(reference / "export", export)
    weights = load_file(str(export / "model.safetensors"))
    (export / "model.safetensors").unlink()
    torch.save({**weights, "evil": Payload(marker)}, export / "pytorch_model.bin")
    proc = run_train(train_args(synth, tmp_path / "init", "loop.max_steps=2", f"stage.init_from={export}"))
    assert proc.returncode != 0
    assert refusal(proc.stderr, f"stage.init_from {export}"), proc.stderr[-3000:]
    assert not marker.exists()
    assert not (tmp_path / "init" / "sft" / "metrics.jsonl").exists()


# --------------------------------------------------------------------------- bad configs via the CLI

BAD_CLI = [  # (overrides, exit code, what stderr must say)
    (["stage=pretrain"], 1, "Could not find 'stage/pretrain'"),  # Hydra: no such stage recipe
    (["stage.name=pretrain"], 2, "config error: stage.name: "),
    (["+stage.lr.mlp=1e-3"], 2, "config error: stage.lr.mlp: "),  # test_config.py: stage.trainable
    (["stage.frames_upbound=64", "stage.max_length=200"], 2, "config error: stage.frames_upbound: "),
    (["data.root={missing}"], 2, "config error: data.train[0].shards: "),
    (["stage.init_from={missing}"], 2, "config error: stage.init_from: "),
]


def test_bad_configs_fail_before_deepspeed_through_cli(synth: Path, tmp_path: Path) -> None:
    """`python -m train` exits non-zero naming the field (config errors: exit 2, one line), without
    importing DeepSpeed (checked with -X importtime), creating outputs or running a step."""
    missing = tmp_path / "missing"
    procs = []
    for i, (overrides, rc, message) in enumerate(BAD_CLI):
        out = tmp_path / f"out{i}"
        args = [a.format(missing=missing) for a in train_args(synth, out, *overrides)]
        cmd = [sys.executable, "-X", "importtime", "-m", "train", *args]
        procs.append((rc, message, out, time.monotonic(),
                      subprocess.Popen(cmd, cwd=REPO, env=run_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                       text=True)))
    for rc, message, out, t0, proc in procs:
        _, stderr = proc.communicate(timeout=300)
        lines = [ln for ln in stderr.splitlines() if not ln.startswith("import time:")]
        assert proc.returncode == rc, (message, lines[-20:])
        if rc == 2:  # the trainer's own config errors: exactly one line, starting with the field
            assert len(lines) == 1 and lines[0].startswith(message), (message, lines)
        else:
            assert any(message in ln for ln in lines), (message, lines)
        imported = {ln.split("|")[-1].strip() for ln in stderr.splitlines() if ln.startswith("import time:")}
        assert "hydra" in imported  # the import log was read
        assert not any(m.split(".")[0] == "deepspeed" for m in imported), message
        assert not out.exists(), message
        assert time.monotonic() - t0 < 120, message
