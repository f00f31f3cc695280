"""Per-step losses of short tiny fp32 `dts` and `sft` runs equal the recorded golden values.

Every other numerics test compares two computations of this code base with each other; this one pins
absolute values, so a change to label shifting, masking, initialisation, the schedule or the data
order fails here. Regenerate on purpose with `python tests/golden_losses.py` (see its docstring).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from golden_losses import ASSET, STAGES, STEPS, run_golden
from helpers import subprocess_env

pytestmark = pytest.mark.slow
# fp32 on CPU: the same kernels give the same values; different BLAS builds differ in the last bits
REL_TOL = 1e-4


def test_losses_equal_golden(synth: Path, tmp_path: Path) -> None:
    golden = json.loads(ASSET.read_text())
    assert golden["steps"] == STEPS and set(golden["losses"]) == set(STAGES)
    got = run_golden(synth, tmp_path, subprocess_env(WANDB_MODE="disabled"))
    for stage in STAGES:
        want = golden["losses"][stage]
        assert len(got[stage]) == len(want) == STEPS, stage
        for step, (g, w) in enumerate(zip(got[stage], want, strict=True), start=1):
            assert math.isclose(g, w, rel_tol=REL_TOL), f"{stage} step {step}: {g} != golden {w}"
