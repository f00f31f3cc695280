"""train.evaluate: sample loading, rank gathering, and an end-to-end run on a tiny random model."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from data.niah import build_grid, write_mp4
from train.evaluate import load_samples

REPO = Path(__file__).resolve().parent.parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", WANDB_MODE="offline", HF_HUB_OFFLINE="1",
               TOKENIZERS_PARALLELISM="false", PYTHONPATH=str(REPO))
    env.update(extra)
    return env


def test_gather_records_over_gloo(tmp_path: Path) -> None:
    """Two ranks with different record counts: rank 0 receives all of them, intact and rank-ordered."""
    script = textwrap.dedent("""
        import json, os, sys
        import torch.distributed as dist
        from train.evaluate import dist_info_from_env, gather_records
        info = dist_info_from_env()
        dist.init_process_group("gloo", rank=info.rank, world_size=info.world)
        recs = [{"id": f"r{info.rank}-{i}", "text": "é" * (i + 3 * info.rank), "x": [i, 0.5]}
                for i in range(2 + 3 * info.rank)]
        merged = gather_records(recs, info)
        if info.rank == 0:
            open(sys.argv[1], "w").write(json.dumps(merged))
        else:
            assert merged is None
        dist.destroy_process_group()
    """)
    out = tmp_path / "merged.json"
    port = str(_free_port())
    procs = [subprocess.Popen([sys.executable, "-c", script, str(out)], cwd=REPO,
                              env=_env(RANK=str(r), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=port))
             for r in range(2)]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    merged = json.loads(out.read_text())
    expected = [{"id": f"r{r}-{i}", "text": "é" * (i + 3 * r), "x": [i, 0.5]} for r in range(2) for i in range(2 + 3 * r)]
    assert merged == expected


def _cfg(**kw: object) -> OmegaConf:
    base = {"format": "records", "data": None, "video_root": None, "split": "test", "durations": None,
            "limit": None, "bench": {"task": "needle"}}
    base.update(kw)
    return OmegaConf.create(base)


def test_load_samples_filters_and_limits(tmp_path: Path) -> None:
    import numpy as np

    hay = tmp_path / "hay.mp4"
    write_mp4(np.full((4, 16, 16, 3), 90, dtype=np.uint8), hay, 2.0)
    build_grid(hay, tmp_path / "niah", [4, 8], [0.0, 1.0], seed=0)
    ann = tmp_path / "niah" / "annotations.json"
    samples = load_samples(_cfg(data=str(ann)), tmp_path)
    assert len(samples) == 4 and all(s.task == "needle" for s in samples)
    assert len(load_samples(_cfg(data=str(ann), limit=3), tmp_path)) == 3
    with pytest.raises(ValueError, match="no 'mcq' samples"):
        load_samples(_cfg(data=str(ann), bench={"task": "mcq"}), tmp_path)
    with pytest.raises(ValueError, match="unknown format"):
        load_samples(_cfg(data=str(ann), format="nope"), tmp_path)
    with pytest.raises(ValueError, match="video_root"):
        load_samples(_cfg(data=str(ann), format="mlvu"), tmp_path)
