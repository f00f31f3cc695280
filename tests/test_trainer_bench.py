"""`python -m train.bench` runs both loops on the same model and batch and reports their ratio."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_bench_reports_ratio() -> None:
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "train.bench", "--steps", "3", "--warmup", "1"], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    m = re.search(r"median bare ([\d.]+) / framework ([\d.]+) ms \(ratio ([\d.]+)\)", proc.stdout)
    assert m, proc.stdout
    assert "device=cpu " in proc.stdout  # both loops run on the engine's device
    bare, fw, ratio = map(float, m.groups())
    assert bare > 0 and fw > 0 and abs(ratio - fw / bare) < 0.01
